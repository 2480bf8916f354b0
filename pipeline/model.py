"""The Llama-style decoder: transformers' LlamaConfig (RMSNorm, RoPE, SwiGLU, GQA) sized by a recipe.

Llama has no sliding-window attention; with `model.sliding_window` set the model is a Mistral,
which is exactly Llama plus a window (same modules, same `model.` weight prefix), so the
checkpoint still loads with AutoModelForCausalLM and under every Auto fine-tuning head.
"""

from __future__ import annotations

import torch
from transformers import (AutoModelForCausalLM, LlamaConfig, MistralConfig, PreTrainedConfig, PreTrainedModel,
                          PreTrainedTokenizerFast)

from pipeline.attention import attn_implementation_for
from pipeline.config import ModelConfig


def llama_config(m: ModelConfig, tokenizer: PreTrainedTokenizerFast, seq_len: int,
                 attn_implementation: str) -> PreTrainedConfig:
    intermediate = m.intermediate_size or 64 * -(-(8 * m.hidden_size // 3) // 64)
    variant = {}
    if m.sliding_window is not None:
        variant["sliding_window"] = m.sliding_window
    if m.attention_scale is not None:  # saved in config.json, so a loader can see it (attn_implementation_for)
        variant["attention_scale"] = m.attention_scale
    config = (MistralConfig if m.sliding_window is not None else LlamaConfig)(
        vocab_size=len(tokenizer),
        hidden_size=m.hidden_size,
        intermediate_size=intermediate,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_kv_heads or m.num_heads,
        max_position_embeddings=seq_len,
        initializer_range=m.initializer_range,
        rms_norm_eps=1e-5,
        tie_word_embeddings=m.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": m.rope_theta},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **variant,
    )
    config._attn_implementation = attn_implementation_for(config, attn_implementation)
    return config


def build_causal_lm(config: PreTrainedConfig, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)  # the same recipe and seed give the same initial weights
    return AutoModelForCausalLM.from_config(config, attn_implementation=config._attn_implementation)


def parameter_counts(model: PreTrainedModel) -> dict[str, int]:
    """All parameters, and those doing matmuls per token (the embedding lookup does none)."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    tied = model.config.tie_word_embeddings
    # With tied embeddings the LM head reuses the embedding matrix, so it still multiplies.
    return {"total": total, "non_embedding": total - embed, "matmul": total if tied else total - embed}


def training_flops_per_token(model: PreTrainedModel, seq_len: int) -> float:
    """Forward+backward FLOPs per token: 6·N for the weights, plus causal attention.

    QKᵀ and AV cost 2·2·d FLOPs per attended key forward, and backward doubles forward: 12·L·d
    per key. Causal attention attends to T/2 keys on average; a sliding window W < T to
    W − W²/2T (W for every query past the first W, fewer before).
    """
    cfg = model.config
    n = parameter_counts(model)["matmul"]
    w = min(getattr(cfg, "sliding_window", None) or seq_len, seq_len)
    keys = w - w * w / (2 * seq_len)
    attn = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * keys
    return 6 * n + attn
