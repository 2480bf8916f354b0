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


def test_transfer_bench_on_todays_recipe(tiny_pretrain, tmp_path):
    """--recipe: variants on top of the task's recipe file; a pretrained-only lever (LoRA) is compared
    with the recipe's own scratch runs, and the report shows the dev score a choice may rest on."""
    runs, report = tmp_path / "runs", tmp_path / "transfer_recipe"
    cmd = [sys.executable, "bench/transfer.py", "--recipe", "--tasks", "trec", "--seeds", "1",
           "--variants", "LoRA", "body lr 1e-3", "--ckpt", str(tiny_pretrain / "final"),
           "--runs", str(runs), "--report", str(report), "max_steps=3", "eval_steps=3", "save_steps=1000",
           "max_train_samples=200", "max_eval_samples=64"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = json.loads(report.with_suffix(".json").read_text())["rows"]
    assert sorted((r["variant"], r["init"]) for r in rows) == [
        ("LoRA", "pretrained"), ("body lr 1e-3", "pretrained"), ("body lr 1e-3", "scratch"),
        ("the recipe", "pretrained"), ("the recipe", "scratch")]  # the recipe joins: LoRA's scratch side
    trec = yaml.safe_load((ROOT / "recipes" / "finetune" / "trec.yaml").read_text())
    for r in rows:
        config = yaml.safe_load((Path(r["run"]) / "config.yaml").read_text())
        assert config["pooling"] == trec["pooling"] and config["dev_fraction"] == trec["dev_fraction"]  # not V1's
        assert config["learning_rate"] == (1e-3 if r["variant"] == "body lr 1e-3" else trec["learning_rate"])
        assert config["finetune_method"] == ("lora" if r["variant"] == "LoRA" else "full")
        assert 0 <= r["dev"] <= 1 and r["dev"] == json.loads((Path(r["run"]) / "eval.json").read_text())["best_dev"]["accuracy"]
    text = report.with_suffix(".md").read_text()
    recipe_scratch = next(r for r in rows if r["variant"] == "the recipe" and r["init"] == "scratch")
    lora_row = next(line for line in text.splitlines() if line.startswith("| LoRA |")).split(" | ")
    assert lora_row[2] == f"{100 * recipe_scratch['accuracy']:.1f} ± 0.0"  # scratch column: the recipe's scratch run
    assert "as it is today, plus the variant" in text and "LoRA: pretrained runs only" in text
