"""The scoreboard: bars centred on their task and labelled with their value; both times in both tables, and the
machine they were measured on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from pipeline import report

BARS = {"sst2": {"pretrained": 76.8, "scratch": 78.7, "majority class": 50.9, "TF-IDF + LR": 80.5},
        "trec": {"pretrained": 91.8, "scratch": 83.2, "majority class": 18.8, "TF-IDF + LR": 87.0},
        "squad": {"pretrained": 9.3, "scratch": 8.9}}  # QA has no baselines: only two bars


def test_bars_sit_on_their_tick_and_carry_their_value():
    ax = report.bar_figure(BARS).axes[0]
    centres = {}  # task → bar centres
    for container in ax.containers:
        for bar in container:
            x = bar.get_x() + bar.get_width() / 2
            centres.setdefault(round(x), []).append((x, bar.get_height()))
    assert [t.get_text() for t in ax.get_xticklabels()] == list(BARS)
    for tick, (task, scores) in zip(ax.get_xticks(), BARS.items()):
        found = centres[round(tick)]
        assert len(found) == len(scores), task
        assert sum(x for x, _ in found) / len(found) == pytest.approx(tick), task
        assert sorted(h for _, h in found) == sorted(scores.values())
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == sorted(f"{v:.1f}" for scores in BARS.values() for v in scores.values())


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_every_trained_row_shows_training_and_wall_time(tmp_path):
    runs = tmp_path / "runs"
    _write(runs / "pretrain" / "cpu" / "run.json", {"parameters": 1000, "tokens": 5000, "train_seconds": 60,
                                                     "wall_seconds": 125, "tokens_per_s": 83.3})
    _write(runs / "finetune" / "sst2" / "eval.json",
           {"task": "sst2", "train_seconds": 30, "wall_seconds": 95,
            "evaluation": {"examples": 872, "metrics": {"accuracy": 0.768, "f1": 0.767}}})
    _write(runs / "finetune" / "squad" / "eval.json",
           {"task": "squad", "train_seconds": 170, "wall_seconds": 177,
            "evaluation": {"examples": 1975, "metrics": {"f1": 9.3, "exact_match": 2.9}}})
    text = report.write(runs, tmp_path / "reports").read_text()
    headers = [line for line in text.splitlines()
               if line.startswith(("| run |", "| task | model |")) and "| published |" not in line]
    assert len(headers) == 3 and all("| training time | wall time |" in h for h in headers), headers
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()
            if line.startswith(("| cpu |", "| sst2 | pretrained", "| squad | pretrained"))}
    assert "| 1m 00s | 2m 05s |" in rows["cpu"]
    assert "| 30s | 1m 35s |" in rows["sst2"]
    assert "| 2m 50s | 2m 57s |" in rows["squad"]
    assert (tmp_path / "reports" / "scores.png").is_file()
    assert "Measured on:" not in text  # records without a machine (older runs) claim none


def test_the_scoreboard_names_the_machine_its_times_were_measured_on(tmp_path):
    zen4 = {"cpu_model": "AMD EPYC", "cpu_features": ["avx2", "avx512f", "avx512_bf16"], "isa_limits": {}, "gpu": None}
    runs = tmp_path / "runs"
    _write(runs / "pretrain" / "cpu" / "run.json", {"train_seconds": 60, "machine": {**zen4, "torch_threads": 2},
                                                     "precision": {"mode": "bf16"}})
    for name in ("sst2", "sst2-scratch", "trec"):
        _write(runs / "finetune" / name / "eval.json",
               {"task": name.split("-")[0], "train_seconds": 30, "machine": {**zen4, "torch_threads": 1},
                "precision": {"mode": "no"}, "evaluation": {"examples": 872, "metrics": {"accuracy": 0.8, "f1": 0.8}}})
    text = report.write(runs, tmp_path / "reports").read_text()
    assert ("Measured on: 1 pretraining run on 2 threads of AMD EPYC (avx2, avx512f, avx512_bf16), bf16; "
            "3 fine-tuning runs on 1 thread of AMD EPYC (avx2, avx512f, avx512_bf16), fp32.") in text.splitlines()


def test_published_figures_note_the_ag_news_sample_the_recipe_takes():
    n = yaml.safe_load((ROOT / "recipes/finetune/ag_news.yaml").read_text())["max_train_samples"]
    assert f"a seeded {n:,}-row sample" in report.SPLIT_DIFFERS["ag_news"]
