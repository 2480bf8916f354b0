"""Several fine-tuning seeds: `make all` runs each task at every seed of SEEDS, and the scoreboard averages them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from pipeline import report


def test_make_all_runs_every_seed_two_at_a_time_but_squad_once(tmp_path):
    # Stand-ins: a python that runs `-m pipeline study` (the runner) for real and echoes the scoreboard
    # step, and a launcher that echoes each stage with the threads it was given. A finished run and a
    # killed one are already there.
    stub, launch = tmp_path / "py", tmp_path / "launch"
    stub.write_text(f'#!/bin/bash\nif [ "$3" != evaluate ]; then exec {sys.executable} "$@"; fi\necho py "$@"\n')
    launch.write_text('#!/bin/bash\necho "launch threads=${OMP_NUM_THREADS:-all} $*"\n')
    for script in (stub, launch):
        script.chmod(0o755)
    (tmp_path / "runs/finetune/trec").mkdir(parents=True)
    (tmp_path / "runs/finetune/trec/eval.json").write_text("{}")
    (tmp_path / "runs/finetune/emotion-seed8/checkpoints").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("MFLAGS", "OMP_NUM_THREADS") and not k.startswith("MAKE")}
    result = subprocess.run(["make", "-s", "--no-print-directory", "-f", str(ROOT / "Makefile"), "all",
                             f"PY={stub}", f"LAUNCH={launch} -m", "SEEDS=7 8", "JOBS=2"],
                            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == ("launch threads=all -m pipeline pretrain --recipe recipes/pretrain/cpu.yaml "
                        "--out runs/pretrain/cpu overwrite=true")
    assert "runs/finetune/trec: finished, skipped" in lines
    stages = [line for line in lines if " finetune " in line]
    threads = max(1, os.cpu_count() // 2)  # each of the two parallel fine-tunes gets half the cores
    assert all(line.startswith(f"launch threads={threads} -m pipeline finetune") for line in stages), stages
    assert all("--ckpt runs/pretrain/cpu/final" in line for line in stages)
    runs = {line.split("--out ")[1] for line in stages}
    assert "runs/finetune/sst2 overwrite=true seed=7" in runs and "runs/finetune/sst2-seed8 overwrite=true seed=8" in runs
    assert "runs/finetune/sst2-scratch overwrite=true seed=7 init=scratch" in runs
    assert "runs/finetune/sst2-scratch-seed8 overwrite=true seed=8 init=scratch" in runs
    assert "runs/finetune/emotion-seed8 resume=true seed=8" in runs  # killed: it continues
    assert {r for r in runs if r.startswith("runs/finetune/squad")} == {
        "runs/finetune/squad overwrite=true seed=7", "runs/finetune/squad-scratch overwrite=true seed=7 init=scratch"}
    assert len(stages) == len(runs) == 6 * 2 * 2 + 2 - 1  # six classification tasks at both seeds, SQuAD at the first
    assert lines[-1] == "py -m pipeline evaluate --report runs/reports"


def test_make_all_fails_without_a_scoreboard_when_a_stage_fails(tmp_path):
    fail = tmp_path / "launch"
    fail.write_text('#!/bin/bash\n[[ "$*" == *sst2-scratch* ]] && exit 2\necho "$*"\n')
    fail.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "MFLAGS" and not k.startswith("MAKE")}
    result = subprocess.run(["make", "-s", "--no-print-directory", "-f", str(ROOT / "Makefile"), "all",
                             f"PY={sys.executable}", f"LAUNCH={fail}", "SEEDS=7"],
                            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "error: run failed (2):" in result.stderr and "runs/finetune/sst2-scratch " in result.stderr
    assert "pipeline evaluate" not in result.stdout  # no scoreboard from a half-finished study


def _eval(folder: Path, accuracy: float, train_seconds: float = 60, adapt: dict | None = None) -> None:
    folder.mkdir(parents=True)
    n = 100
    right = round(accuracy * n)
    confusion = [[right // 2, (n - right) // 2], [n - right - (n - right) // 2, right - right // 2]]
    (folder / "eval.json").write_text(json.dumps(
        {"task": "sst2", "checkpoint": "runs/pretrain/cpu/final", "train_seconds": train_seconds,
         "wall_seconds": train_seconds + 5, "adapt": adapt,
         "evaluation": {"examples": n, "metrics": {"accuracy": accuracy, "f1": accuracy,
                                                   "confusion_matrix": confusion}}}))


def test_scoreboard_averages_seeds(tmp_path):
    runs = tmp_path / "runs"
    for folder, accuracy in (("sst2", 0.80), ("sst2-seed1338", 0.84), ("sst2-seed1339", 0.82),
                             ("sst2-scratch", 0.78), ("sst2-scratch-seed1338", 0.76),
                             ("trec", 0.90), ("trec-scratch", 0.91)):
        _eval(runs / "finetune" / folder, accuracy)
    text = report.write(runs, tmp_path / "reports").read_text()
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[3:-1]]
            for line in text.splitlines() if line.startswith(("| sst2 |", "| trec |"))}
    pre, scratch = rows["sst2", "pretrained"], rows["sst2", "scratch"]
    assert pre[0] == "82.0" and pre[1] == "2.0 (3)"  # mean and sd of 80, 84, 82
    assert scratch[0] == "77.0" and scratch[1] == "1.4 (2)"
    assert pre[4] == "+5.0"  # 82.0 - 77.0
    assert rows["trec", "pretrained"][1] == "— (1)" and rows["trec", "pretrained"][4] == "-1.0"
    # The interval is the recipe-seed run's (80 of 100 right), not that of the mean.
    low, high = (float(x) for x in pre[2].split("–"))
    assert low < 80 < high and high - low > 10
    assert "Mean gain from pretraining over 2 classification tasks: +2.0 points** (worst: -1.0, trec)" in text


@pytest.mark.parametrize("folders, expected", [
    (["sst2", "sst2-seed2", "sst2-scratch", "sst2-scratch-seed2", "sst2-seedx", "sst2x"], ["sst2", "sst2-seed2"]),
    (["sst2-seed3"], ["sst2-seed3"]),
])
def test_seed_folders(tmp_path, folders, expected):
    runs = {f: tmp_path / f for f in folders}
    assert [p.name for p in report.seed_folders("sst2", "pretrained", runs)] == expected


def test_scoreboard_times_include_task_adaptive_training(tmp_path):
    """A pretrained run that first adapted its body took that time too: the row shows both, the scratch row its own."""
    runs = tmp_path / "runs"
    _eval(runs / "finetune" / "sst2", 0.80, adapt={"steps": 100, "train_seconds": 100, "wall_seconds": 110})
    _eval(runs / "finetune" / "sst2-scratch", 0.78)
    text = report.write(runs, tmp_path / "reports").read_text()
    rows = {c[2].strip(): [x.strip() for x in c] for c in (line.split("|") for line in text.splitlines())
            if len(c) > 3 and c[1].strip() == "sst2"}
    assert rows["pretrained"][-3:-1] == ["2m 40s", "2m 55s"]  # 60 + 100 s training, 65 + 110 s wall
    assert rows["scratch"][-3:-1] == ["1m 00s", "1m 05s"]
