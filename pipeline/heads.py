"""Task heads on a pretrained body, with proof that the body really came from the checkpoint.

transformers' `from_pretrained` matches weights by prefix, and some heads use a different one
than the causal LM (Llama's and Qwen2's QA heads say `transformer.` where their causal LMs say
`model.`): it then re-initialises the whole body with only a warning. So the head is built from
the checkpoint's config and the body is loaded by name from the safetensors files, strictly:
the causal LM's own prefix (`model.`, or GPT-2's `transformer.`) is stripped, every weight of
`model.base_model` must be found, and only the head stays new. Any family transformers has the
head for works: Llama, Mistral, Qwen2, GPT-2 and others, with the checkpoint's own tokenizer.

The levers that reach inside the body (mean pooling's extra block, Muon's and layer decay's depths)
find its transformer blocks by structure (`transformer_blocks`), not by Llama's parameter names.
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
    if type(config) not in head_class._model_mapping:
        raise PipelineError(f"{ckpt} is a {config.model_type} model, for which transformers has no "
                            f"{head_class.__name__.removeprefix('AutoModelFor')} head: pass a causal LM of a family "
                            "that has one (Llama, Mistral, Qwen2, GPT-2, ...)")
    tokenizer = load_tokenizer(ckpt, config)
    _set_pad_token(tokenizer, ckpt)
    config = AutoConfig.from_pretrained(ckpt, pad_token_id=tokenizer.pad_token_id, **head_config)
    torch.manual_seed(seed)  # the head (and, for init=scratch, the body) start from seeded random weights
    model = head_class.from_config(config, attn_implementation=attn_implementation_for(config, attn_implementation))
    if init == "pretrained":
        load_body(model, ckpt, config)
    return model, tokenizer


def _set_pad_token(tokenizer, ckpt: Path) -> None:
    """Batches are padded; a tokenizer saved without a pad token (GPT-2's, Llama's) pads with EOS.

    Padding is hidden by the attention mask, the QA labels never point at it, and the
    classification head reads the last token that is not padding, which is the text's own.
    """
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is None:
        raise PipelineError(f"{ckpt}: the tokenizer has neither a pad nor an eos token, so batches cannot be "
                            "padded: add one (tokenizer.pad_token = ...) and save it with tokenizer.save_pretrained()")
    tokenizer.pad_token = tokenizer.eos_token


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


def transformer_blocks(body: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The body's transformer blocks, found by structure: its one ModuleList child of
    config.num_hidden_layers blocks of a single type (Llama's, Mistral's and Qwen2's `layers`, GPT-2's
    `h`); None if it has no such list, so that callers can fall back rather than guess by name."""
    found = [child for child in body.children() if isinstance(child, torch.nn.ModuleList)
             and len(child) == getattr(body.config, "num_hidden_layers", None) and len({type(b) for b in child}) == 1]
    return found[0] if len(found) == 1 else None
