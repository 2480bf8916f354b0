"""The probe stage: frozen features of the tiny checkpoint, pretrained against random init, on real data slices."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.preprocessing import StandardScaler

from conftest import FINETUNE_TINY, bad_input_line, run_cli
from pipeline.config import FinetuneConfig
from pipeline.recipe import load_recipe
from pipeline import features
from pipeline.features import POOLINGS, PROBE_CS, pooled_hidden_states
from pipeline.heads import load_head
from pipeline.stages import probe
from pipeline.tasks import get_task


def test_probe_writes_every_init_layer_and_pooling(tiny_pretrain, tmp_path):
    final, out = tiny_pretrain / "final", tmp_path / "probe"
    result = run_cli("probe", "--task", "trec", "--ckpt", final, "--recipe", FINETUNE_TINY, "--out", out,
                     "max_train_samples=160", "max_eval_samples=48")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "probe.json").read_text())
    layers = json.loads((final / "config.json").read_text())["num_hidden_layers"] + 1  # embeddings too
    assert report["task"] == "trec" and report["layers"] == layers
    assert (report["train_examples"], report["eval_examples"]) == (160, 48)
    found = {(r["init"], r["layer"], r["pooling"]) for r in report["results"]}
    assert found == {(i, layer, p) for i in ("pretrained", "random") for layer in range(layers) for p in POOLINGS}
    assert len(report["results"]) == len(found)
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["f1"] <= 1 for r in report["results"])
    for name in ("pretrained", "random"):
        best, mine = report["best"][name], [r for r in report["results"] if r["init"] == name]
        assert best["init"] == name and best["accuracy"] == max(r["accuracy"] for r in mine)
    table = (out / "probe.md").read_text()
    assert sum(line[2:3].isdigit() for line in table.splitlines()) == len(POOLINGS) * layers
    assert "| layer | pooling | pretrained acc | random acc | Δ acc" in result.stdout
    assert (out / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def spy_on_rows(monkeypatch, rows: dict):
    """spy(cls, method, key): record in rows[key] how many rows each call of cls.method receives."""
    def spy(cls, method, key):
        original = getattr(cls, method)

        def record(self, X, *args, **kwargs):
            rows.setdefault(key, []).append(len(X))
            return original(self, X, *args, **kwargs)
        monkeypatch.setattr(cls, method, record)
    return spy


def test_probe_is_fit_on_the_train_sample_only(tiny_pretrain, tmp_path, monkeypatch):
    rows = {"scaler fit": [], "fit": [], "predict": []}
    spy = spy_on_rows(monkeypatch, rows)

    spy(StandardScaler, "fit", "scaler fit")
    # The cross-validation that picks C runs inside LogisticRegressionCV.fit, on the rows it is given.
    spy(LogisticRegressionCV, "fit", "fit")
    spy(LogisticRegressionCV, "predict", "predict")
    cfg = load_recipe(FinetuneConfig, FINETUNE_TINY, ["max_train_samples=96", "max_eval_samples=40"])
    report = probe.run("sst2", cfg, tiny_pretrain / "final", tmp_path / "probe")
    fits = 2 * report["layers"] * len(POOLINGS)  # inits × layers × poolings
    assert rows == {"scaler fit": [96] * fits, "fit": [96] * fits, "predict": [40] * fits}
    assert {r["C"] for r in report["results"]} <= set(PROBE_CS)


def test_a_large_train_sample_chooses_c_on_a_subsample_then_refits_on_all(tiny_pretrain, tmp_path, monkeypatch):
    monkeypatch.setattr(features, "PROBE_CV_ROWS", 64)
    rows = {}
    spy = spy_on_rows(monkeypatch, rows)
    spy(LogisticRegressionCV, "fit", "cross-validated")
    spy(LogisticRegression, "fit", "refit")  # LogisticRegressionCV overrides fit: only the refit lands here
    cfg = load_recipe(FinetuneConfig, FINETUNE_TINY, ["max_train_samples=96", "max_eval_samples=40"])
    report = probe.run("sst2", cfg, tiny_pretrain / "final", tmp_path / "probe")
    fits = 2 * report["layers"] * len(POOLINGS)
    assert rows == {"cross-validated": [64] * fits, "refit": [96] * fits}
    assert {r["C"] for r in report["results"]} <= set(PROBE_CS)


def test_pooled_features_are_what_the_head_reads_and_ignore_padding(tiny_pretrain):
    task, final = get_task("sst2"), tiny_pretrain / "final"
    cfg = load_recipe(FinetuneConfig, FINETUNE_TINY, ["max_train_samples=12"])
    hub_id, split, rows = task.load(cfg, "train")
    labels = task.label_names(rows, hub_id, split)
    model, tokenizer = load_head(final, task.head, "pretrained", 0, "sdpa", **task.head_config(labels))
    features, _ = task.preprocess(rows, tokenizer, cfg, hub_id, split, labels, True)
    collate, cpu = task.collator(tokenizer), torch.device("cpu")
    pooled = pooled_hidden_states(model.base_model, features, collate, 12, cpu, tokenizer.bos_token_id)
    # The top layer's `last` feature is the sequence-classification head's input: after the final norm.
    batch = collate([{k: features[i][k] for k in ("input_ids", "attention_mask")} for i in range(len(features))])
    with torch.no_grad():
        logits = model(**batch).logits
        torch.testing.assert_close(model.score(torch.from_numpy(pooled["last"][-1])), logits, rtol=1e-4, atol=1e-4)
    # One row alone (no padding) gives the same features; `mean` averages its text tokens, BOS left out.
    i = int(np.argmin([len(x) for x in features["input_ids"]]))
    alone = pooled_hidden_states(model.base_model, features.select([i]), collate, 1, cpu, tokenizer.bos_token_id)
    for pooling in POOLINGS:
        np.testing.assert_allclose(alone[pooling][:, 0], pooled[pooling][:, i], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        states = model.base_model(torch.tensor([features[i]["input_ids"]]), output_hidden_states=True).hidden_states
    assert features[i]["input_ids"][0] == tokenizer.bos_token_id
    np.testing.assert_allclose(alone["mean"][:, 0], torch.stack(states)[:, 0, 1:].mean(1).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("task, ckpt, message", [
    ("nosuch", "final", "unknown task 'nosuch'"),
    ("sst2", "empty", "is not a checkpoint (no config.json)"),
    ("sst2", "missing", "does not exist"),
    ("squad", "final", "classification tasks only"),
])
def test_bad_probe_input_exits_2_and_writes_nothing(tiny_pretrain, tmp_path, capsys, task, ckpt, message):
    (tmp_path / "empty").mkdir()
    folder = tiny_pretrain / "final" if ckpt == "final" else tmp_path / ckpt
    line = bad_input_line(["probe", "--task", task, "--ckpt", folder, "--recipe", FINETUNE_TINY,
                           "--out", tmp_path / "out"], capsys)
    assert message in line
    assert not (tmp_path / "out").exists()
