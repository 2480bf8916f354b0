"""LoRA fine-tuning through peft: the body frozen, low-rank updates of its blocks' linear layers trained.

A 0.5B-1B checkpoint cannot be fine-tuned in full on a small CPU: AdamW keeps 8 bytes of state per
trained parameter. `finetune_method: lora` (Hu et al. 2021) freezes every weight of the body and adds
B·A·lora_alpha/lora_r to each target layer, A [r, in] random and B [out, r] zero, so that step 0 is the
checkpoint. The targets are found by structure (heads.transformer_blocks): every linear layer inside
the body's transformer blocks (Llama's, Mistral's and Qwen2's attention and MLP projections, GPT-2's
Conv1D c_attn, c_proj and c_fc), as peft's "all-linear" but never the task head; `lora_target_modules`
narrows them by name. `lora_embedding` (the default) adapts the input token embedding too: a classifier
of few labels leans on what a handful of words mean (emotion: 82.75 without it, 89.25 with it, full
fine-tuning 89.15, one seed). The vocabulary is unchanged, so the adapter never stores the embedding itself.
The task head and the trained parts of the mean-pooling block (pipeline/pooling.py) are new weights:
they train in full, as peft's `modules_to_save` (layer by layer, so that the block keeps its type and
the levers that find blocks by structure still find it); the parts that `keep_frozen` names stay as
initialised, neither trained nor adapted.

peft injects its layers into the model in place: the loop (pipeline/trainer.py) trains the same
transformers model object as for full fine-tuning, and only the optimizer's groups differ (trainable
parameters only, pipeline/optim.py). At the end final/adapter/ holds the adapter alone (peft's
save_pretrained: adapter_config.json, adapter_model.safetensors) and final/ the merged model, a plain
transformers folder.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from pipeline import checkpoint
from pipeline.config import FinetuneConfig
from pipeline.errors import PipelineError
from pipeline.heads import transformer_blocks

ADAPTER_DIR = "adapter"  # inside final/: the adapter alone, for a base shared by many adapters


def check_targets(ckpt: Path, cfg: FinetuneConfig) -> None:
    """Refuse `lora_target_modules` that name no layer of `ckpt`'s blocks, before anything is written.

    The causal LM is built on the meta device (no memory, no weights): its body is the heads' body. A folder that
    is no causal LM is left to heads.load_head, which says so."""
    config = checkpoint.inspect_model_folder(ckpt)
    if checkpoint.model_kind(config) != "causal_lm" or type(config) not in AutoModelForCausalLM._model_mapping:
        return
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    target_modules(model, cfg.lora_target_modules, where=ckpt)


def target_modules(model, names: list[str], excluded_modules=(), where: Path | str = "the model") -> list[str]:
    """Full names of the layers LoRA adapts: the linear layers of the body's transformer blocks (of the whole
    body where it has no list of blocks) outside `excluded_modules`, those whose path ends with one of `names`
    if any are given."""
    body = model.base_model
    scope = transformer_blocks(body) or [body]
    excluded = {id(m) for module in excluded_modules for m in module.modules()}
    linear = {id(m) for block in scope for m in block.modules()
              if isinstance(m, (torch.nn.Linear, Conv1D)) and id(m) not in excluded}
    found = [name for name, m in model.named_modules() if id(m) in linear]
    unmatched = [n for n in names if not any(_ends_with(full, n) for full in found)]
    if unmatched:
        known = dict.fromkeys(_in_block(full) for full in found)
        raise PipelineError(f"recipe key 'lora_target_modules' = {names!r} is invalid: {', '.join(unmatched)} names no "
                            f"linear layer of {where}'s transformer blocks, which has {', '.join(known)}")
    return [full for full in found if not names or any(_ends_with(full, n) for n in names)]


def _ends_with(full: str, name: str) -> bool:
    return full == name or full.endswith("." + name)


def _in_block(full: str) -> str:
    """'model.layers.3.self_attn.q_proj' -> 'self_attn.q_proj': a layer's path inside its block."""
    parts = full.split(".")
    digits = [i for i, part in enumerate(parts) if part.isdigit()]
    return ".".join(parts[digits[-1] + 1:]) if digits else full


def wrap(model, cfg: FinetuneConfig, train_in_full=(), keep_frozen=()):
    """Freeze `model` but LoRA's new matrices, its head and the modules `train_in_full` (in place); return the
    PeftModel around it, which save_final needs. The model itself is what trains. LoRA adapts the linear layers
    of target_modules outside `train_in_full` and `keep_frozen`, and the input embedding if cfg.lora_embedding;
    `keep_frozen` stays as it is."""
    from peft import LoraConfig, get_peft_model

    targets = target_modules(model, cfg.lora_target_modules, [*train_in_full, *keep_frozen])
    layers = dict(model.named_modules())
    # GPT-2's Conv1D stores [in, out]: peft transposes the update for it (an embedding's update never needs it)
    fan_in_fan_out = all(isinstance(layers[t], Conv1D) for t in targets)
    if cfg.lora_embedding:
        embedding = model.get_input_embeddings()
        targets += [name for name, m in layers.items() if m is embedding]
    body = model.base_model
    head = [name for name, child in model.named_children()
            if child is not body and any(True for _ in child.parameters())]
    # Each layer of a module trained in full (not the module whole): a block keeps its type and its place
    # in the list of blocks, where parameter_depths and Muon look for it.
    owned = {id(m): name for name, m in model.named_modules()}
    in_full = [owned[id(m)] for module in train_in_full for m in module.modules()
               if any(True for _ in m.parameters(recurse=False))]
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                        target_modules=targets, modules_to_save=head + in_full, fan_in_fan_out=fan_in_fan_out)
    with warnings.catch_warnings():  # peft still asks transformers 5 for the deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        # A task head has no output embedding for the input one to be tied to, so merging the update is safe
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings=True.*tied_target_modules.*")
        return get_peft_model(model, config)


def parameter_counts(model, method: str) -> dict:
    """What trains: trainable and total parameters in memory while training (LoRA's matrices included)."""
    params = list(model.parameters())
    return {"trainable": sum(p.numel() for p in params if p.requires_grad), "total": sum(p.numel() for p in params),
            "method": method}


def lora_factors(model: torch.nn.Module) -> set[int]:
    """ids of LoRA's A and B matrices in `model` (pipeline/optim.py gives them to AdamW, never to Muon)."""
    if "peft" not in sys.modules:  # wrap() imports peft: a model it never saw has none (pretraining skips the import)
        return set()
    from peft.tuners.lora import LoraLayer

    return {id(p) for m in model.modules() if isinstance(m, LoraLayer)
            for name in m.adapter_layer_names for p in getattr(m, name).parameters()}


def save_final(accelerator, lora, tokenizer, folder: Path) -> None:
    """final/adapter/: the adapter alone, saved first; final/: the model with it merged in, plain transformers.

    After this, `lora`'s model is the merged one (merge_and_unload), as final/ holds it."""
    staged = folder.with_name(f".tmp-{folder.name}-{ADAPTER_DIR}")
    if accelerator.is_main_process:
        shutil.rmtree(staged, ignore_errors=True)
        lora.save_pretrained(staged, safe_serialization=True, save_embedding_layers=False)  # the vocabulary is as it was
    merged = lora.merge_and_unload()
    checkpoint.save_final(accelerator, merged, tokenizer, folder, extra_dirs={ADAPTER_DIR: staged})
