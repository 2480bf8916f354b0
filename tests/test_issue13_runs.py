"""Run folders: a finished run refuses resume=true, and overwrite=true clears everything a run wrote."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import FINETUNE_TINY, TINY, bad_input_line, run_cli
from pipeline.checkpoint import RUN_FILES, SAMPLES_FILE, clear_run_dir


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_resume_of_a_finished_run_is_bad_input(stage, tiny_pretrain, request, tmp_path, capsys):
    """Its last checkpoint is its last step: resuming it used to exit 0 and empty its eval.json."""
    finished = tmp_path / "finished"
    if stage == "pretrain":
        shutil.copytree(tiny_pretrain, finished)
        argv = ["pretrain", "--recipe", str(TINY), "max_steps=60"]
    else:
        shutil.copytree(request.getfixturevalue("tiny_classifier"), finished)
        argv = ["finetune", "--task", "sst2", "--recipe", str(FINETUNE_TINY), "--ckpt", str(tiny_pretrain / "final"),
                "max_train_samples=128", "max_steps=40"]
    assert (finished / "checkpoints").is_dir()  # a checkpoint exists: the old check let this through
    before = _tree(finished)

    line = bad_input_line([*argv, "--out", finished, "resume=true"], capsys)

    assert "finished run" in line and "overwrite=true" in line
    assert _tree(finished) == before


def test_clear_run_dir_clears_every_run_file(tmp_path):
    for name in RUN_FILES:
        (tmp_path / name).write_text("old")
    (tmp_path / "checkpoints").unlink()
    (tmp_path / "checkpoints" / "step-1").mkdir(parents=True)
    (tmp_path / "unrelated.txt").write_text("the user's")
    clear_run_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unrelated.txt"]


def test_runs_write_only_listed_files(tiny_pretrain, tiny_qa):
    """What clear_run_dir does not know about would survive overwrite=true."""
    for run in (tiny_pretrain, tiny_qa):
        assert {p.name for p in run.iterdir()} <= set(RUN_FILES), run


def test_overwrite_leaves_nothing_of_the_old_run(tiny_pretrain, tmp_path):
    out = tmp_path / "rerun"
    shutil.copytree(tiny_pretrain, out)
    assert (out / SAMPLES_FILE).is_file()
    result = run_cli("pretrain", "--recipe", TINY, "--out", out, "overwrite=true", "max_steps=2", "num_samples=0",
                     "eval_steps=2", "save_steps=2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (out / SAMPLES_FILE).exists()  # this run wrote no samples: any left are the old run's
    assert json.loads((out / "run.json").read_text())["steps"] == 2
    assert max(json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()) == 2
