"""Attention backends: what each needs, checked before any work starts (never a silent fallback)."""

from __future__ import annotations

import torch

from pipeline.errors import PipelineError


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
