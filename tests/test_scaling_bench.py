"""make bench-scaling: time-budgeted pretraining runs side by side, a table, a plot."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT, TINY


def test_scaling_bench_runs_budgeted_variants_and_reports_them(tmp_path):
    runs, report = tmp_path / "runs", tmp_path / "scaling"
    cmd = [sys.executable, "bench/scaling.py", "--recipe", str(TINY), "--minutes", "0.1", "--runs", str(runs),
           "--report", str(report), "warmup_steps=0", "model.hidden_size=64", "model.num_heads=2", "eval_steps=10",
           "--variants", "baseline", "256x4 muon"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = json.loads(report.with_suffix(".json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["baseline", "256x4 muon"]
    for row in rows:
        assert math.isfinite(row["bits_per_byte"]) and row["tokens"] > 0
        run = json.loads((Path(row["run"]) / "run.json").read_text())
        assert run["budget"]["max_train_minutes"] == 0.1  # every row trained for the same time budget
    configs = [yaml.safe_load((runs / name / "config.yaml").read_text()) for name in ("baseline-0.1min",
                                                                                       "256x4-muon-0.1min")]
    assert [c["optimizer"] for c in configs] == ["adamw", "muon"]
    assert [c["model"]["num_layers"] for c in configs] == [6, 4]  # the variant's depth, the override's width
    assert [c["model"]["hidden_size"] for c in configs] == [64, 64]
    table = report.with_suffix(".md").read_text()
    assert "| old default: 384×6, AdamW + cosine |" in table and "+0.000 |" in table
    assert report.with_suffix(".png").stat().st_size > 10_000

    # A second seed reruns nothing of the first: its run is read back, the new one goes beside it.
    first = (runs / "baseline-0.1min" / "run.json").stat().st_mtime
    done = subprocess.run([*cmd[:-1], "--seeds", "2"], cwd=ROOT, capture_output=True, text=True)  # baseline only
    assert done.returncode == 0, done.stderr[-3000:]
    assert (runs / "baseline-0.1min" / "run.json").stat().st_mtime == first
    rows = json.loads(report.with_suffix(".json").read_text())["rows"]
    assert [(r["variant"], r["seed"]) for r in rows] == [("baseline", 1337), ("baseline", 1338)]
    assert yaml.safe_load((runs / "baseline-0.1min-seed1338" / "config.yaml").read_text())["seed"] == 1338
    mean = (rows[0]["bits_per_byte"] + rows[1]["bits_per_byte"]) / 2
    table = report.with_suffix(".md").read_text()
    assert f"| {mean:.4f} | +0.000 |" in table  # the mean of the seeds
    assert f"{rows[0]['bits_per_byte']:.4f}, {rows[1]['bits_per_byte']:.4f} |" in table  # and each seed's figure
