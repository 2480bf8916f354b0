"""make bench-qa: the SQuAD sweep and learning curve, on the tiny checkpoint and slices of real SQuAD."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT, run_cli


def test_qa_bench_sweeps_and_draws_the_curve(tiny_pretrain, tmp_path):
    runs, report = tmp_path / "runs", tmp_path / "qa"
    cmd = [sys.executable, "bench/qa.py", "--ckpt", str(tiny_pretrain / "final"), "--runs", str(runs),
           "--full-runs", str(tmp_path / "finetune"), "--report", str(report), "--sizes", "32", "8595",
           "--variants", "adamw 5e-4", "muon 0.005",
           # Tiny: these win over the bench's own settings (anywhere on the line, even after a list option).
           "max_train_samples=48", "max_length=128", "doc_stride=32", "max_steps=3", "max_eval_samples=16",
           "save_steps=1000"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = json.loads(report.with_suffix(".json").read_text())["rows"]
    assert [(r["part"], r.get("variant"), r.get("questions"), r["init"]) for r in rows] == [
        ("sweep", "adamw 5e-4", None, "pretrained"), ("sweep", "muon 0.005", None, "pretrained"),
        ("curve", None, 32, "pretrained"), ("curve", None, 32, "scratch"),
        ("curve", None, 8595, "pretrained"), ("curve", None, 8595, "scratch")]
    assert all(0 <= r["f1"] <= 100 and r["steps"] == 3 for r in rows)
    config = {Path(r["run"]).name: yaml.safe_load((Path(r["run"]) / "config.yaml").read_text()) for r in rows}
    assert config["adamw-5e-4-e1"]["optimizer"] == "adamw" and config["muon-0.005-e1"]["optimizer"] == "muon"
    assert config["n32-scratch"]["init"] == "scratch" and config["n32-pretrained"]["init"] == "pretrained"
    # The all-questions point is make all's own run folder: squad and squad-scratch.
    assert {Path(r["run"]).parent for r in rows[4:]} == {tmp_path / "finetune"}
    assert sorted(Path(r["run"]).name for r in rows[4:]) == ["squad", "squad-scratch"]
    text = report.with_suffix(".md").read_text()
    assert "| adamw 5e-4" in text and "| muon 0.005" in text and "| 8,595 |" in text
    assert report.with_suffix(".png").stat().st_size > 10_000


def test_qa_decoding_bench_reproduces_make_evaluate(tiny_qa, tmp_path):
    """bench/qa_decoding.py loads a run as `make evaluate` does, so its whole-word row is evaluate's figure."""
    run = tmp_path / "squad"
    shutil.copytree(tiny_qa, run, ignore=shutil.ignore_patterns("checkpoints"))
    evaluated = run_cli("evaluate", "--ckpt", run / "final")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    expected = json.loads((run / "eval.json").read_text())["evaluation"]["metrics"]

    report = tmp_path / "qa_decoding"
    done = subprocess.run([sys.executable, "bench/qa_decoding.py", str(run), "--report", str(report)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    [record] = json.loads(report.with_suffix(".json").read_text())["runs"]
    assert record["examples"] == 24 and record["init"] == "pretrained"
    assert set(record["scores"]) >= {"token edges", "whole words"}
    assert record["scores"]["whole words"] == {"f1": expected["f1"], "exact_match": expected["exact_match"]}
    assert f"| {run} | pretrained |" in report.with_suffix(".md").read_text()
