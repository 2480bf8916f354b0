"""Attention backends: what each needs, checked before any work starts (never a silent fallback).

`attn_implementation` picks one of transformers' own backends: eager (the reference: plain
matmuls and softmax), sdpa (torch's fused scaled_dot_product_attention), flex_attention
(compiled on first use; forward only on CPU) or flash_attention_2 (CUDA and flash-attn only).

One more is registered here for the `model.attention_scale` ablation: `scaled_sdpa`, which is
SDPA with the scale read from the model config instead of 1/sqrt(head_dim). transformers
builds no mask at all for an attention name it has no mask function for (it assumes a kernel
that masks itself), which would silently drop padding and document masks; so the name is
registered for masks too, with SDPA's.

And one for packed documents on a CPU, `blocksparse_sdpa` (see `blocksparse_sdpa_forward`).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from pipeline import machine
from pipeline.errors import PipelineError

SCALED_SDPA = "scaled_sdpa"
BLOCKSPARSE_SDPA = "blocksparse_sdpa"
QUERY_CHUNK = 256  # queries per SDPA call in blocksparse_sdpa: smaller skips more keys, but makes more calls


def scaled_sdpa_forward(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """SDPA with `config.attention_scale` in place of the model's 1/sqrt(head_dim)."""
    return sdpa_attention_forward(module, query, key, value, attention_mask,
                                  scaling=module.config.attention_scale, **kwargs)


@torch.compiler.disable  # key ranges depend on the data: run eagerly, also inside a compiled model
def blocksparse_sdpa_forward(module, query, key, value, attention_mask, **kwargs):
    """SDPA in chunks of queries, each over only the keys its mask lets it see.

    With document masking a packed block's mask is block-diagonal, and causal within each
    document. One SDPA call with that mask still computes every query × key tile and then throws
    most away (only a plain causal call, with no mask, skips the upper triangle). Every query
    in a chunk sees keys from the start of the chunk's first document to the chunk's end, one
    contiguous range: SDPA over that range with the matching slice of the mask gives the same
    output, and the work follows the documents instead of the block. A sliding window is cut the
    same way. This is what varlen flash attention does on a GPU, and flex block masks can't do
    it here: flex has no CPU backward. Without a mask (plain causal) this is plain SDPA.
    """
    seq = query.shape[2]
    if attention_mask is None or attention_mask.dtype != torch.bool or seq <= QUERY_CHUNK or key.shape[2] != seq:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    mask = attention_mask.expand(query.shape[0], -1, -1, -1)  # [batch, 1, queries, keys]
    rows = []
    for b in range(query.shape[0]):
        chunks = []
        for q0 in range(0, seq, QUERY_CHUNK):
            sub = mask[b:b + 1, :, q0:q0 + QUERY_CHUNK]
            seen = sub.any(dim=2).flatten().nonzero()
            lo, hi = (int(seen[0]), int(seen[-1]) + 1) if len(seen) else (0, seq)  # nothing seen: as one call
            out, _ = sdpa_attention_forward(module, query[b:b + 1, :, q0:q0 + QUERY_CHUNK], key[b:b + 1, :, lo:hi],
                                            value[b:b + 1, :, lo:hi], sub[..., lo:hi], **kwargs)
            chunks.append(out)  # [1, chunk, heads, head_dim]
        rows.append(torch.cat(chunks, dim=1))
    return torch.cat(rows, dim=0), None


AttentionInterface.register(SCALED_SDPA, scaled_sdpa_forward)
AttentionMaskInterface.register(SCALED_SDPA, sdpa_mask)
AttentionInterface.register(BLOCKSPARSE_SDPA, blocksparse_sdpa_forward)
AttentionMaskInterface.register(BLOCKSPARSE_SDPA, sdpa_mask)  # a real mask: the ranges are read from it


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
    if name == "flex_attention" and device.type == "cpu" and not flex_attention_is_right_on_cpu():
        raise PipelineError("attn_implementation=flex_attention computes wrong attention on this CPU (its compiled "
                            "kernel failed a self-check against sdpa): use sdpa or eager here")


FLEX_CHECK_TOLERANCE = 1e-3


def flex_attention_is_right_on_cpu() -> bool:
    """Whether flex attention computes what SDPA does on this CPU, at this thread count: measured once, cached.

    The CPU kernel that inductor generates for flex attention (torch 2.13) can be wrong with no error:
    on an AVX2-only EPYC it returned NaN for more than half of the logits; on a Zen 4 it is right on 2
    threads and off by up to 0.13 in the logits on one. A backend that can be wrong is checked before it
    is trusted, in the state the run will use: the thread count is part of the cache key.
    """
    key = f"flex_attention_cpu_{torch.get_num_threads()}_threads"
    return bool(machine.probed(key, lambda: {"right": flex_logit_error() < FLEX_CHECK_TOLERANCE})["right"])


def flex_logit_error() -> float:
    """The largest logit difference between flex attention and SDPA (inf: flex failed or gave NaN) for a tiny
    Llama (grouped-query heads, a short causal batch) run through transformers, same weights: the path a
    run takes, since flex's own kernel can be right where the model's call is not. On a CPU, the figures
    above: `OMP_NUM_THREADS=1 python -c "from pipeline.attention import flex_logit_error as e; print(e())"`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(0))
    logits = {}
    for name in ("sdpa", "flex_attention"):
        torch.manual_seed(0)
        model = LlamaForCausalLM._from_config(config, attn_implementation=name).eval()
        with torch.no_grad():
            try:
                logits[name] = model(input_ids=ids, use_cache=False).logits
            except Exception:  # noqa: BLE001 - compiled flex failing outright on this CPU is a "no", not a crash
                return float("inf")
    got, want = logits["flex_attention"], logits["sdpa"]
    return (got - want).abs().max().item() if bool(torch.isfinite(got).all()) else float("inf")


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
