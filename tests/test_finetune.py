"""Fine-tuning end to end from the tiny checkpoint, head loading, and bad input."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

from conftest import FINETUNE_TINY, bad_input_line, read_metrics, run_cli
from pipeline.errors import PipelineError
from pipeline.heads import load_head


def test_classifier_end_to_end(tiny_classifier):
    train = read_metrics(tiny_classifier, "train")
    assert train[-1]["loss"] < train[0]["loss"] - 0.05
    report = json.loads((tiny_classifier / "eval.json").read_text())
    assert report["task"] == "sst2" and report["init"] == "pretrained" and report["eval_split"] == "validation"
    assert 0.0 <= report["metrics"]["accuracy"] <= 1.0
    assert sum(map(sum, report["metrics"]["confusion_matrix"])) == report["eval"]["examples"] == 64
    assert report["machine"]["cpu_model"] and "isa_limits" in report["machine"]  # its times name their machine
    classify = transformers.pipeline("text-classification", model=str(tiny_classifier / "final"))
    assert classify("a gripping, beautiful film")[0]["label"] in {"negative", "positive"}


def test_qa_end_to_end(tiny_qa):
    train = read_metrics(tiny_qa, "train")
    assert train[-1]["loss"] < train[0]["loss"] - 0.5
    report = json.loads((tiny_qa / "eval.json").read_text())
    assert {"exact_match", "f1"} <= report["metrics"].keys() and 0 <= report["metrics"]["f1"] <= 100
    predictions = json.loads((tiny_qa / "predictions.json").read_text())
    assert len(predictions) == 24 and all(isinstance(v, str) for v in predictions.values())
    model = AutoModelForQuestionAnswering.from_pretrained(tiny_qa / "final")
    assert model.config.architectures == ["LlamaForQuestionAnswering"]
    result = run_cli("predict", "--task", "squad", "--ckpt", tiny_qa / "final", "--question", "Who wrote it?",
                     "--context", "The book was written by John Smith in 1990.")
    assert result.returncode == 0, result.stderr
    context = "The book was written by John Smith in 1990."
    answer, score, start, end = result.stdout.strip().split("\t")  # text, score, character offsets
    assert context[int(start):int(end)].strip() == answer and answer in context and float(score)


@pytest.mark.parametrize("head", [AutoModelForSequenceClassification, AutoModelForQuestionAnswering])
def test_pretrained_body_comes_from_checkpoint_and_scratch_does_not(tiny_pretrain, head):
    final = tiny_pretrain / "final"
    saved = load_file(final / "model.safetensors")
    extra = {"num_labels": 2} if head is AutoModelForSequenceClassification else {}
    pretrained, _ = load_head(final, head, "pretrained", 0, "sdpa", **extra)
    scratch, _ = load_head(final, head, "scratch", 0, "sdpa", **extra)
    prefix = pretrained.base_model_prefix + "."
    body = {k: v for k, v in pretrained.state_dict().items() if k.startswith(prefix)}
    assert len(body) == sum(k.startswith("model.") for k in saved)
    for name, value in body.items():
        assert torch.equal(value, saved["model." + name[len(prefix):]]), name
        if value.ndim == 2:  # norms start at 1 either way; matrices must differ from scratch
            assert not torch.equal(value, scratch.state_dict()[name]), name
    new = [n for n, _ in pretrained.named_parameters() if not n.startswith(prefix)]
    assert new == (["score.weight"] if extra else ["qa_outputs.weight", "qa_outputs.bias"])


def test_fine_tuned_checkpoint_is_the_wrong_kind_to_fine_tune(tiny_classifier, tmp_path):
    with pytest.raises(PipelineError, match="is a classifier checkpoint"):
        load_head(tiny_classifier / "final", AutoModelForSequenceClassification, "pretrained", 0, "sdpa")


@pytest.mark.parametrize("task, overrides, ckpt, message", [
    ("nope", [], None, "unknown task 'nope'"),
    ("sst2", ["dataset=fancyzhx/ag_news", "eval_split=test"], None, "has no column 'sentence'"),
    ("sst2", ["eval_split=test"], None, "has label -1, outside 0..1"),
    ("sst2", ["eval_split=dev"], None, "has no split 'dev'"),
    ("sst2", [], "empty", "is not a checkpoint (no config.json)"),
    ("sst2", [], "missing", "does not exist"),
    ("squad", ["max_length=32", "doc_stride=16"], None, "leaving"),
])
def test_bad_finetune_input_exits_2(tiny_pretrain, tmp_path, capsys, task, overrides, ckpt, message):
    folder = {"empty": tmp_path / "empty", "missing": tmp_path / "missing"}.get(ckpt, tiny_pretrain / "final")
    (tmp_path / "empty").mkdir()
    line = bad_input_line(["finetune", "--task", task, "--ckpt", folder, "--recipe", FINETUNE_TINY,
                           "--out", tmp_path / "out", *overrides], capsys)
    assert message in line
    assert not (tmp_path / "out").exists()
