"""`make curves` on a tiny budget: the fine-tunes, TF-IDF on the same examples, the table and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conftest import run_cli
from pipeline import curves
from pipeline.baselines import tfidf_lr
from pipeline.config import FinetuneConfig
from pipeline.recipe import load_recipe
from pipeline.tasks import TASKS


def test_curves_write_the_table_and_the_plot(tiny_pretrain, tmp_path):
    out = tmp_path / "curves"
    result = run_cli("curves", "--ckpt", tiny_pretrain / "final", "--tasks", "trec", "--sizes", "100", "--seeds", "2",
                     "--runs", tmp_path / "no-runs", "--out", out, "max_steps=6", "eval_steps=3", "max_eval_samples=50",
                     "mixed_precision=no")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((out / "curves.json").read_text())["rows"]
    models = sorted((r["init"], r["seed"]) for r in rows)
    assert models == sorted((m, s) for m in ("pretrained", "scratch", "TF-IDF + LR") for s in (1337, 1338))
    assert all(r["n"] == 100 and 0 <= r["accuracy"] <= 1 for r in rows)
    for run in (out / "trec").iterdir():  # every label trains; the final weights are the ones scored
        report = json.loads((run / "eval.json").read_text())
        assert report["train"]["examples"] == 100 and report["dev_examples"] == 0 and report["best_step"] is None
        assert not (run / "best").exists()
    lines = curves.section(out / "curves.json", tmp_path)
    table = [line for line in lines if line.startswith("| trec |")]
    assert len(table) == 1 and "| 100 |" in table[0] and " ± " in table[0]
    assert (tmp_path / "transfer.png").stat().st_size > 10_000


def test_tfidf_trains_on_the_fine_tunes_own_sample():
    """The seeded sample TF-IDF is fit on is the one a fine-tune with that seed trains on."""
    task = TASKS["trec"]
    cfg = load_recipe(FinetuneConfig, "recipes/finetune/trec.yaml", ["max_train_samples=100", "seed=1338"])
    _, _, sample = task.load(cfg, "train")
    seen = {}
    real = curves.tfidf_lr

    def spy(texts, labels, eval_texts):
        seen.setdefault("texts", list(texts))
        return real(texts, labels, eval_texts)

    curves.tfidf_lr = spy
    try:
        rows = curves.tfidf_rows("trec", "recipes/finetune/trec.yaml", sizes=(100,), seeds=2)
    finally:
        curves.tfidf_lr = real
    assert [r["n"] for r in rows] == [100, 100]
    assert seen["texts"] != list(sample["text"])  # the first call is seed 1337, another sample
    again = load_recipe(FinetuneConfig, "recipes/finetune/trec.yaml", ["max_train_samples=100", "seed=1337"])
    assert seen["texts"] == list(task.load(again, "train")[2]["text"])
    assert np.mean([r["accuracy"] for r in rows]) > 0.3  # it learned something from 100 questions


def test_recipe_point_stays_apart_from_the_curve_cell_of_the_same_size(tmp_path):
    """IMDB's recipe trains on 1,000 reviews: its make-all run is not a fourth seed of the 1,000-label cell."""
    curve = [{"task": "imdb", "n": 1000, "init": init, "seed": 1337 + s, "accuracy": acc + s / 100}
             for init, acc in (("pretrained", 0.66), ("scratch", 0.60)) for s in range(3)]
    recipe = [{"task": "imdb", "n": 1000, "init": "pretrained", "seed": None, "accuracy": 0.75},
              {"task": "imdb", "n": 1000, "init": "scratch", "seed": None, "accuracy": 0.65}]
    path = tmp_path / "curves.json"
    path.write_text(json.dumps({"budget": "tiny", "rows": curve + recipe}))
    cells = curves.summary(curve + recipe)
    assert cells["imdb", 1000, False, "pretrained"] == (67.0, 1.0, 3)
    assert cells["imdb", 1000, True, "pretrained"] == (75.0, 0.0, 1)
    table = [line for line in curves.section(path, tmp_path) if line.startswith("| imdb |")]
    assert table == ["| imdb | 1,000 | 67.0 ± 1.0 | 61.0 ± 1.0 | — | +6.0 |",
                     "| imdb | 1,000 (recipe) | 75.0 | 65.0 | — | +10.0 |"]


def test_curves_start_from_the_checkpoint_make_all_fine_tuned(tmp_path):
    """The full-budget points come from make all's runs, so by default the small sizes share their checkpoint."""
    def run(name, ckpt):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps({"checkpoint": ckpt, "metrics": {}}))

    assert curves.full_budget_checkpoint(tmp_path) is None  # no make all yet: the CLI falls back to the newest
    run("sst2", "runs/pretrain/cpu/final")
    run("sst2-scratch", "runs/pretrain/cpu/final")  # scratch runs name it too: its tokenizer
    assert curves.full_budget_checkpoint(tmp_path) == Path("runs/pretrain/cpu/final")
    run("trec", "runs/pretrain/other/final")
    assert curves.full_budget_checkpoint(tmp_path) is None  # two checkpoints: no single answer to default to


def test_tfidf_is_reproducible():
    """The baseline a fine-tune is judged against gives the same predictions on every run."""
    cfg = load_recipe(FinetuneConfig, "recipes/finetune/rotten_tomatoes.yaml", ["max_train_samples=1000"])
    task = TASKS["rotten_tomatoes"]
    _, _, train = task.load(cfg, "train")
    _, _, evals = task.load(cfg, "eval")
    runs = [tfidf_lr(train["text"], np.asarray(train["label"]), evals["text"]) for _ in range(3)]
    assert len(runs[0]) == len(evals) and all(np.array_equal(runs[0], r) for r in runs[1:])


def test_the_cells_decide_task_adaptive_training_whatever_a_recipe_block_asks(stated, tmp_path):
    """On a CPU where auto is fp32, Rotten Tomatoes' recipe asks for 100 adaptation steps; 100 labels are too
    few texts to adapt on, and the 1,000-label cell adapts 60 steps: each cell says so itself."""
    stated(False)
    for job in curves.plan(curves.classification_tasks(), tmp_path, seeds=1):
        cfg = load_recipe(FinetuneConfig, f"recipes/finetune/{job.task}.yaml", job.overrides)
        assert cfg.adapt_steps == (0 if job.labels["n"] == 100 else 60), (job.task, job.labels)
