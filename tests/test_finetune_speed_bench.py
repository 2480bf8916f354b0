"""make bench-finetune: the fine-tuning throughput variants, on the tiny checkpoint and slices of real SST-2."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from conftest import ROOT


def test_finetune_speed_bench_reports_every_variant(tiny_pretrain, tmp_path):
    runs, report = tmp_path / "runs", tmp_path / "speed"
    variants = ["sst2, batch 32, unbucketed", "sst2, batch 128, bucketed"]
    cmd = [sys.executable, "bench/finetune_speed.py", "--ckpt", str(tiny_pretrain / "final"), "--runs", str(runs),
           "--report", str(report), "--variants", *variants, "max_steps=3", "max_eval_samples=16"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = json.loads(report.with_suffix(".json").read_text())["rows"]
    assert [r["variant"] for r in rows] == variants
    for row, batch, bucketed in zip(rows, (32, 128), (False, True)):
        config = yaml.safe_load((runs / row["run"].split("/")[-1] / "config.yaml").read_text())
        assert (config["global_batch_size"], config["group_by_length"]) == (batch, bucketed)
        assert config["max_steps"] == row["steps"] == 3  # the command line's override wins
        assert row["tokens"] > 3 * batch and row["overall_tokens_per_s"] > 0
    text = report.with_suffix(".md").read_text()
    assert all(f"| {v} | 3 |" in text for v in variants)
