"""The evaluate stage on tiny checkpoints of every kind, its skipping, the baselines and the report."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from conftest import bad_input_line, built_once, finetune, run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _fingerprints(files) -> dict[str, list]:
    return {str(p): [hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns] for p in files}


def _evaluate_three_times(folder: Path, tiny_pretrain: Path, tiny_classifier: Path, tiny_qa: Path) -> None:
    """A runs/ tree with one run of each kind plus an init=scratch control, evaluated three times:
    by --ckpt, then everything (which writes the report), then everything again. Each pass's stdout
    and the eval.json files between the last two passes are kept beside it."""
    runs = folder / "runs"
    for src, dst in ((tiny_pretrain, "pretrain/tiny"), (tiny_classifier, "finetune/sst2"), (tiny_qa, "finetune/squad")):
        shutil.copytree(src, runs / dst, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    # The control: tiny_classifier's recipe, from random weights.
    scratch = finetune("sst2", tiny_pretrain / "final", runs / "finetune/sst2-scratch", "init=scratch",
                       "max_train_samples=128", "max_steps=40")
    assert scratch.returncode == 0, scratch.stderr[-3000:]

    finals = [runs / "pretrain/tiny/final", runs / "finetune/sst2/final", runs / "finetune/squad/final"]
    passes = {"by_ckpt": ("--ckpt", *finals), "first": ("--runs", runs, "--report", folder / "reports"),
              "second": ("--runs", runs, "--report", folder / "reports")}
    for name, args in passes.items():
        if name == "second":
            (folder / "before.json").write_text(json.dumps(_fingerprints(sorted(runs.glob("*/*/eval.json")))))
        result = run_cli("evaluate", *args)
        assert result.returncode == 0, result.stderr[-3000:]
        (folder / f"{name}.stdout").write_text(result.stdout)


@pytest.fixture(scope="module")
def evaluated(tiny_pretrain, tiny_classifier, tiny_qa, tmp_path_factory):
    """The evaluated runs/ tree, built once for all workers (tests only read it), and each pass's stdout."""
    folder = built_once(tmp_path_factory, "evaluated", lambda out: _evaluate_three_times(
        out, tiny_pretrain, tiny_classifier, tiny_qa))
    return SimpleNamespace(runs=folder / "runs", reports=folder / "reports",
                           before=json.loads((folder / "before.json").read_text()),
                           **{name: (folder / f"{name}.stdout").read_text() for name in ("by_ckpt", "first", "second")})


def _eval(run) -> dict:
    return json.loads((run / "eval.json").read_text())


def test_every_kind_writes_eval_json(evaluated):
    runs = evaluated.runs
    assert evaluated.by_ckpt.count("eval.json") == 3

    lm = _eval(runs / "pretrain/tiny")
    assert lm["kind"] == "pretrain" and lm["evaluation"]["model_kind"] == "causal_lm"
    metrics = lm["evaluation"]["metrics"]
    assert math.isclose(metrics["perplexity"], math.exp(metrics["loss"]), rel_tol=1e-9)
    assert 0 < metrics["bits_per_byte"] < 8 and metrics["eval_tokens"] > 0
    assert lm["evaluation"]["fingerprint"].startswith("sha256:")
    assert all(s["text"].startswith(s["prompt"]) for s in lm["evaluation"]["samples"])

    clf = _eval(runs / "finetune/sst2")
    assert (clf["task"], clf["init"]) == ("sst2", "pretrained") and clf["train_seconds"] > 0  # fine-tuning's fields
    evaluation = clf["evaluation"]
    assert evaluation["model_kind"] == "classifier" and evaluation["split"] == "validation"
    assert sum(map(sum, evaluation["metrics"]["confusion_matrix"])) == evaluation["examples"] == 64
    assert 0 <= evaluation["metrics"]["f1"] <= 1
    # The same model on the same rows as fine-tuning's last evaluation (which ran in bf16).
    assert abs(evaluation["metrics"]["accuracy"] - clf["metrics"]["accuracy"]) <= 3 / 64

    qa = _eval(runs / "finetune/squad")
    assert qa["evaluation"]["model_kind"] == "qa" and qa["evaluation"]["examples"] == 24
    assert 0 <= qa["evaluation"]["metrics"]["exact_match"] <= qa["evaluation"]["metrics"]["f1"] <= 100
    assert len(json.loads((runs / "finetune/squad/predictions.json").read_text())) == 24


def test_unchanged_checkpoints_are_skipped(evaluated):
    runs = ["pretrain/tiny", "finetune/sst2", "finetune/squad", "finetune/sst2-scratch"]
    # --ckpt evaluated three of them; fine-tuning itself recorded the fourth (its last evaluation is of
    # exactly these weights), so the first full pass re-evaluates nothing.
    assert [r for r in runs if f"{r}: eval.json is up to date, skipped" in evaluated.first] == runs
    assert _eval(evaluated.runs / runs[3])["evaluation"]["model_kind"] == "classifier"
    assert all(f"{r}: eval.json is up to date, skipped" in evaluated.second for r in runs)
    after = _fingerprints(map(Path, evaluated.before))  # the second pass rewrote nothing
    assert after == evaluated.before and len(after) == 4


def test_a_run_scored_by_an_older_decoding_is_scored_again(evaluated, tmp_path):
    # A SQuAD run whose eval.json predates whole-word spans: same weights, but scored the old way.
    runs = tmp_path / "runs"
    shutil.copytree(evaluated.runs / "finetune/squad", runs / "finetune/squad")
    record = _eval(runs / "finetune/squad")
    assert record["evaluation"]["scoring"] == "whole-word spans"
    del record["evaluation"]["scoring"]
    (runs / "finetune/squad/eval.json").write_text(json.dumps(record))
    again = run_cli("evaluate", "--runs", runs, "--report", tmp_path / "reports")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "up to date" not in again.stdout and "finetune/squad: exact_match" in again.stdout
    assert _eval(runs / "finetune/squad")["evaluation"]["scoring"] == "whole-word spans"


def test_tfidf_beats_majority_on_sst2(evaluated):
    baseline = json.loads((evaluated.runs / "baselines/sst2.json").read_text())
    # The whole train split, and the same 64 evaluation examples as the fine-tuned runs.
    assert (baseline["train_examples"], baseline["eval_examples"]) == (67349, 64)
    assert baseline["tfidf_lr"]["accuracy"] > baseline["majority"]["accuracy"] + 0.1
    assert not (evaluated.runs / "baselines/squad.json").exists()  # QA has no classification baselines


def test_report_tables_gain_baselines_and_plots(evaluated):
    text = (evaluated.reports / "scoreboard.md").read_text()
    loss = _eval(evaluated.runs / "pretrain/tiny")["evaluation"]["metrics"]["loss"]
    assert "| tiny | " in text and f"| {loss:.3f} |" in text
    pre, scratch = (_eval(evaluated.runs / f"finetune/{r}")["evaluation"]["metrics"]["accuracy"] * 100
                    for r in ("sst2", "sst2-scratch"))
    assert f"| sst2 | pretrained | {pre:.1f} |" in text and f"| sst2 | scratch | {scratch:.1f} |" in text
    assert f"| {pre - scratch:+.1f} |" in text
    baseline = json.loads((evaluated.runs / "baselines/sst2.json").read_text())
    assert f"| sst2 | majority class | {baseline['majority']['accuracy'] * 100:.1f} |" in text
    assert f"| sst2 | TF-IDF + LR | {baseline['tfidf_lr']['accuracy'] * 100:.1f} |" in text
    f1 = _eval(evaluated.runs / "finetune/squad")["evaluation"]["metrics"]["f1"]
    assert f"| squad | pretrained | {f1:.1f} |" in text
    assert "| imdb | — | — |" in text  # not fine-tuned yet
    # Every run's own figures beside the tables: what a committed scoreboard keeps of its runs.
    records = json.loads((evaluated.reports / "runs.json").read_text())
    assert records["finetune"]["sst2"]["metrics"]["accuracy"] * 100 == pytest.approx(pre)
    assert (records["finetune"]["sst2-scratch"]["init"], records["finetune"]["sst2-scratch"]["seed"]) == ("scratch", 1337)
    assert records["finetune"]["squad"]["scoring"] == "whole-word spans" and records["finetune"]["squad"]["steps"] > 0
    assert records["pretrain"]["tiny"]["metrics"]["loss"] == loss and records["pretrain"]["tiny"]["tokens"] > 0
    assert "`runs.json`" in text
    anchors = text[text.index("## Published reference figures"):]
    assert "| sst2 | BERT-base (cased) | accuracy | 92.3 |" in anchors and "8,000-row sample" in anchors
    for name in ("pretrain_loss.png", "finetune_loss.png", "scores.png"):
        assert f"]({name})" in text
        path = evaluated.reports / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) > 100


def test_not_a_checkpoint_exits_2(tmp_path, capsys):
    assert "is not a checkpoint" in bad_input_line(["evaluate", "--ckpt", tmp_path], capsys)
