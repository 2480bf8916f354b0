"""Checkpoints of a model with tied embeddings: saved without accelerate's shared-tensor warning, restored whole."""

from __future__ import annotations

import logging

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.errors import PipelineError


def _tied_lm(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def test_tied_weights_save_quietly_and_restore(tmp_path, caplog):
    acc = Accelerator(cpu=True)
    model = acc.prepare(_tied_lm(0))
    with caplog.at_level(logging.WARNING):
        path = save_checkpoint(acc, tmp_path, 1, {"step": 1}, keep=1)
    assert not [r for r in caplog.records if "shared tensor" in r.getMessage()], caplog.text
    assert "lm_head.weight" not in load_file(path / "model.safetensors")  # stored once, as the embedding

    restored = acc.prepare(_tied_lm(1))
    acc._models = [restored]  # load_state fills the models accelerate knows, in order
    assert load_checkpoint(acc, path, restored) == {"step": 1}
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name
    assert restored.lm_head.weight is restored.model.embed_tokens.weight


def test_frozen_parameters_stay_out_of_a_checkpoint_and_come_back_from_the_start(tmp_path):
    """A body frozen as LoRA freezes it is not saved: the resumed run rebuilt it from the starting checkpoint.
    What trains is saved, restored exactly, and a file without it is refused."""
    def partly_frozen(seed: int) -> LlamaForCausalLM:
        model = _tied_lm(0)  # the same starting weights, like a resume from the same --ckpt
        torch.manual_seed(seed)
        for name, p in model.named_parameters():
            p.requires_grad = "layers.0.mlp" in name
            if p.requires_grad:  # what training changed
                p.data.normal_()
        return model

    acc = Accelerator(cpu=True)
    model = acc.prepare(partly_frozen(1))
    path = save_checkpoint(acc, tmp_path, 1, {"step": 1}, keep=1)
    saved = load_file(path / "model.safetensors")
    assert saved.keys() == {n for n, p in model.named_parameters() if p.requires_grad}

    restored = acc.prepare(partly_frozen(2))
    acc._models = [restored]
    assert load_checkpoint(acc, path, restored) == {"step": 1}
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name

    wider = acc.prepare(partly_frozen(3))
    wider.model.norm.weight.requires_grad = True  # trains, but the checkpoint has no copy of it
    acc._models = [wider]
    with pytest.raises(PipelineError, match="lacks 1 trained parameters, e.g. model.norm.weight"):
        load_checkpoint(acc, path, wider)
