"""Bring your own checkpoint: a Hugging Face causal-LM folder of another family fine-tunes like ours.

Tiny models of each family are built from configs (no downloads) and saved with save_pretrained;
the body of each head must be exactly the saved body, whatever the family's prefix (`model.` or
GPT-2's `transformer.`), and both task families must fine-tune from it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForQuestionAnswering, AutoModelForSequenceClassification

from conftest import FINETUNE_TINY
from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.heads import load_head
from pipeline.tokenizer import train_tokenizer

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
FAMILIES = {
    "llama": lambda v: transformers.LlamaConfig(vocab_size=v, **SIZES),
    "mistral": lambda v: transformers.MistralConfig(vocab_size=v, sliding_window=None, **SIZES),
    "qwen2": lambda v: transformers.Qwen2Config(vocab_size=v, **SIZES),
    "gpt2": lambda v: transformers.GPT2Config(vocab_size=v, n_embd=32, n_layer=2, n_head=4, n_positions=512),
}
HEADS = {"classifier": (AutoModelForSequenceClassification, {"num_labels": 2}),
         "qa": (AutoModelForQuestionAnswering, {})}


@pytest.fixture(scope="module")
def texts() -> list[str]:
    squad = datasets.load_dataset(str(Path(os.environ["PIPELINE_DATA_DIR"]) / "local/squad_v1.1_dev_split"),
                                  split="train")
    rows = squad.select(range(100))
    return list(rows["context"]) + list(rows["question"])


def _save_byo(folder: Path, family: str, texts: list[str], pad: bool = True, eos: bool = True) -> Path:
    tokenizer = train_tokenizer(texts, 400)
    if not pad:  # like GPT-2's, Llama's and Mistral's own tokenizers
        tokenizer.pad_token = None
    if not eos:
        tokenizer.eos_token = None
    config = FAMILIES[family](len(tokenizer))
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", FAMILIES)
def test_body_is_the_saved_body(family, head, texts, tmp_path):
    folder = _save_byo(tmp_path / family, family, texts, pad=family != "gpt2")
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


def test_tokenizer_without_pad_or_eos_is_bad_input(texts, tmp_path):
    folder = _save_byo(tmp_path / "llama", "llama", texts, pad=False, eos=False)
    with pytest.raises(PipelineError, match="neither a pad nor an eos token"):
        load_head(folder, AutoModelForSequenceClassification, "pretrained", 0, "sdpa", num_labels=2)


@pytest.mark.parametrize("family", FAMILIES)
def test_both_task_families_fine_tune(family, texts, tmp_path):
    folder = _save_byo(tmp_path / "byo", family, texts, pad=family != "gpt2")
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
    config = transformers.CohereConfig(vocab_size=300, **SIZES)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(PipelineError, match="is a cohere model, for which transformers has no QuestionAnswering head"):
        load_head(tmp_path, AutoModelForQuestionAnswering, "pretrained", 0, "sdpa")
