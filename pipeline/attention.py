"""Attention backends: what each needs, checked before any work starts (never a silent fallback).

`attn_implementation` picks one of transformers' own backends: eager (the reference: plain
matmuls and softmax), sdpa (torch's fused scaled_dot_product_attention), flex_attention
(compiled on first use; forward only on CPU) or flash_attention_2 (CUDA and flash-attn only).

One more is registered here for the `model.attention_scale` ablation: `scaled_sdpa`, which is
SDPA with the scale read from the model config instead of 1/sqrt(head_dim). transformers
builds no mask at all for an attention name it has no mask function for (it assumes a kernel
that masks itself), which would silently drop padding and document masks; so the name is
registered for masks too, with SDPA's.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from pipeline.errors import PipelineError

SCALED_SDPA = "scaled_sdpa"


def scaled_sdpa_forward(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """SDPA with `config.attention_scale` in place of the model's 1/sqrt(head_dim)."""
    return sdpa_attention_forward(module, query, key, value, attention_mask,
                                  scaling=module.config.attention_scale, **kwargs)


AttentionInterface.register(SCALED_SDPA, scaled_sdpa_forward)
AttentionMaskInterface.register(SCALED_SDPA, sdpa_mask)


def check_backend(name: str, device: torch.device, training: bool) -> None:
    if name == "flash_attention_2":
        if device.type != "cuda":
            raise PipelineError("attn_implementation=flash_attention_2 needs a CUDA GPU: use sdpa on this machine")
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            raise PipelineError("attn_implementation=flash_attention_2 needs the flash-attn package: "
                                "pip install flash-attn, or use sdpa / flex_attention") from None
    if name == "flex_attention" and training and device.type == "cpu":
        raise PipelineError("attn_implementation=flex_attention has no backward pass on CPU in this torch: "
                            "train with sdpa or eager, and use flex_attention for evaluation only")


def attn_implementation_for(config, requested: str) -> str:
    """The backend name to build a model of `config` with, when the user asked for `requested`.

    A config with `attention_scale` (saved in config.json) needs `scaled_sdpa`; loading it with a
    plain backend would quietly switch back to 1/sqrt(head_dim), so anything but sdpa is refused.
    """
    if getattr(config, "attention_scale", None) is None:
        return requested
    if requested not in ("sdpa", SCALED_SDPA):
        raise PipelineError(f"model.attention_scale={config.attention_scale} is implemented on sdpa only, "
                            f"not attn_implementation={requested}: set attn_implementation=sdpa")
    return SCALED_SDPA
