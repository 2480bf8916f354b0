"""make bench-transfer's --labels mode: the levers measured on make curves' own small-label cell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT


def test_transfer_bench_on_the_curve_cell(tiny_pretrain, tmp_path):
    runs, report = tmp_path / "runs", tmp_path / "transfer_n100"
    cmd = [sys.executable, "bench/transfer.py", "--labels", "100", "--tasks", "trec", "--seeds", "1",
           "--variants", "the curve cell", "no adapt, layer decay 0.8", "--ckpt", str(tiny_pretrain / "final"),
           "--runs", str(runs), "--report", str(report), "max_steps=3", "save_steps=1000", "max_eval_samples=64"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = json.loads(report.with_suffix(".json").read_text())["rows"]
    assert sorted((r["variant"], r["init"]) for r in rows) == sorted(
        (variant, init) for variant in ("the curve cell", "no adapt, layer decay 0.8") for init in ("pretrained", "scratch"))
    assert all(r["steps"] == 3 and 0 <= r["accuracy"] <= 1 for r in rows)
    for r in rows:  # each run is the curve's own 100-label plan, plus its variant
        config = yaml.safe_load((Path(r["run"]) / "config.yaml").read_text())
        assert config["max_train_samples"] == 100 and config["dev_fraction"] == 0
        assert config["global_batch_size"] == 16 and config["pooling"] == "mean"  # curves.BUDGET and the recipe
        assert config["layer_lr_decay"] == (0.8 if r["variant"] == "no adapt, layer decay 0.8" else 1.0)
        assert json.loads((Path(r["run"]) / "eval.json").read_text())["train"]["examples"] == 100
    text = report.with_suffix(".md").read_text()
    assert "100-label cell" in text and "| no adapt, layer decay 0.8 |" in text and "| the curve cell |" in text
