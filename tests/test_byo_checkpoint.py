"""Bring your own checkpoint: a Hugging Face causal-LM folder of another family fine-tunes like ours.

Tiny models of each family are built from configs (no downloads) and saved with save_pretrained;
the body of each head must be exactly the saved body, whatever the family's prefix (`model.` or
GPT-2's `transformer.`), and both task families must fine-tune from it.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForQuestionAnswering, AutoModelForSequenceClassification

from conftest import BYO_FAMILIES, BYO_SIZES, FINETUNE_TINY, save_byo
from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.heads import load_head

HEADS = {"classifier": (AutoModelForSequenceClassification, {"num_labels": 2}),
         "qa": (AutoModelForQuestionAnswering, {})}


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", BYO_FAMILIES)
def test_body_is_the_saved_body(family, head, byo_texts, tmp_path):
    folder = save_byo(tmp_path / family, family, byo_texts, pad=family != "gpt2")
    saved = load_file(folder / "model.safetensors")
    head_class, head_config = HEADS[head]
    model, tokenizer = load_head(folder, head_class, "pretrained", 0, "sdpa", **head_config)
    prefix = "transformer." if family == "gpt2" else "model."
    body = {k.removeprefix(prefix): v for k, v in saved.items() if k.startswith(prefix)}
    loaded = model.base_model.state_dict()
    assert body and body.keys() == loaded.keys()
    for name, tensor in body.items():
        assert torch.equal(loaded[name], tensor), name
    assert tokenizer.pad_token_id is not None and model.config.pad_token_id == tokenizer.pad_token_id
    if family == "gpt2":  # it had no pad token: padding uses eos, which the attention mask hides
        assert tokenizer.pad_token == tokenizer.eos_token


def test_tokenizer_without_pad_or_eos_is_bad_input(byo_texts, tmp_path):
    folder = save_byo(tmp_path / "llama", "llama", byo_texts, pad=False, eos=False)
    with pytest.raises(PipelineError, match="neither a pad nor an eos token"):
        load_head(folder, AutoModelForSequenceClassification, "pretrained", 0, "sdpa", num_labels=2)


@pytest.mark.parametrize("family", BYO_FAMILIES)
def test_both_task_families_fine_tune(family, byo_texts, tmp_path):
    folder = save_byo(tmp_path / "byo", family, byo_texts, pad=family != "gpt2")
    common = ["--ckpt", str(folder), "--recipe", str(FINETUNE_TINY), "max_steps=2", "eval_steps=2", "save_steps=2",
              "max_train_samples=32", "max_eval_samples=8"]
    main(["finetune", "--task", "sst2", "--out", str(tmp_path / "sst2"), *common])
    main(["finetune", "--task", "squad", "--out", str(tmp_path / "squad"), *common, "max_length=256", "doc_stride=32"])
    # The fine-tuned folders load back whole: evaluate refuses a model with missing weights.
    main(["evaluate", "--ckpt", str(tmp_path / "sst2" / "final"), str(tmp_path / "squad" / "final")])
    for task, metric in (("sst2", "accuracy"), ("squad", "f1")):
        assert metric in json.loads((tmp_path / task / "eval.json").read_text())["evaluation"]["metrics"], task


def test_family_without_the_head_is_bad_input(tmp_path):
    """transformers has causal LMs without a QA or classification head (Cohere, CodeGen, ...)."""
    config = transformers.CohereConfig(vocab_size=300, **BYO_SIZES)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(PipelineError, match="is a cohere model, for which transformers has no QuestionAnswering head"):
        load_head(tmp_path, AutoModelForQuestionAnswering, "pretrained", 0, "sdpa")
