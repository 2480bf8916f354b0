"""Task heads on a pretrained body, with proof that the body really came from the checkpoint.

transformers' `from_pretrained` matches weights by prefix, and some heads use a different one
than the causal LM (Llama's QA head says `transformer.` where the checkpoint says `model.`):
it then re-initialises the whole body with only a warning. So the head is built from the
checkpoint's config and the body is loaded by name from the safetensors files, strictly:
every body weight must be found, and only the head stays new.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from pipeline.attention import attn_implementation_for
from pipeline.checkpoint import inspect_model_folder, load_tokenizer, model_kind
from pipeline.errors import PipelineError


def load_head(ckpt: str | Path, head_class, init: str, seed: int, attn_implementation: str, **head_config):
    """(model, tokenizer): `head_class` on the causal LM in `ckpt`, pretrained or freshly initialised."""
    ckpt = Path(ckpt)
    config = inspect_model_folder(ckpt)
    kind = model_kind(config)
    if kind != "causal_lm":
        raise PipelineError(f"{ckpt} is a {kind} checkpoint; fine-tuning starts from a pretrained causal LM: "
                            "pass a pretrain final/ folder as --ckpt")
    tokenizer = load_tokenizer(ckpt, config)
    config = AutoConfig.from_pretrained(ckpt, pad_token_id=tokenizer.pad_token_id, **head_config)
    torch.manual_seed(seed)  # the head (and, for init=scratch, the body) start from seeded random weights
    model = head_class.from_config(config, attn_implementation=attn_implementation_for(config, attn_implementation))
    if init == "pretrained":
        load_body(model, ckpt, config)
    return model, tokenizer


def load_body(model, ckpt: Path, config) -> None:
    lm_prefix = AutoModelForCausalLM._model_mapping[type(config)].base_model_prefix + "."
    state = {}
    for shard in sorted(ckpt.glob("*.safetensors")):
        state.update(load_file(shard))
    body = {k[len(lm_prefix):]: v for k, v in state.items() if k.startswith(lm_prefix)}
    missing, unexpected = model.base_model.load_state_dict(body, strict=False)
    if not body or missing or unexpected:
        raise PipelineError(
            f"{ckpt}: the {type(model).__name__} body does not match the checkpoint (missing {list(missing)[:3]}, "
            f"unexpected {list(unexpected)[:3]}): pass a checkpoint of the same architecture"
        )

