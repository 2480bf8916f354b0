"""The optimizer and its schedule, built once for every training stage.

Parameter groups carry what the recipe asks for:
- weight decay on matrices only (norm gains and biases are left alone);
- discriminative learning rates (ULMFiT): a new task head trains at `head_learning_rate`, the
  pretrained body at `learning_rate` at its top, and each layer below at `layer_lr_decay` times
  the one above it, down to the embeddings. A decay of 1 gives every body layer the same rate.
The body is the model's `base_model` (what a checkpoint supplies); everything else is the head.
A causal LM has no head: its LM head shares the embedding matrix.
"""

from __future__ import annotations

import re
import warnings
from collections import defaultdict

import torch
from transformers import get_scheduler

from pipeline.config import TrainConfig

LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def parameter_depths(model: torch.nn.Module) -> dict[str, int | None]:
    """Each trainable parameter's depth in the body: 0 for embeddings, i+1 for layer i, the number
    of layers + 1 for what sits above the last layer (the final norm); None for the head."""
    body = {id(p) for p in model.base_model.parameters()}
    n_layers = model.config.num_hidden_layers
    depths = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) not in body:
            depths[name] = None
        elif (match := LAYER.search(name)) is not None:
            depths[name] = int(match.group(1)) + 1
        elif "embed" in name or "wte" in name or "wpe" in name:
            depths[name] = 0
        else:
            depths[name] = n_layers + 1  # the final norm, and any layer added above the checkpoint's
    return depths


def parameter_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups, one per (learning rate, weight decay) pair, each named for the logs and tests."""
    depths = parameter_depths(model)
    top = max((d for d in depths.values() if d is not None), default=0)
    head_lr = cfg.head_learning_rate if cfg.head_learning_rate is not None else cfg.learning_rate
    groups: dict[tuple, list] = defaultdict(list)
    for name, p in model.named_parameters():
        if name not in depths:
            continue
        depth = depths[name]
        lr = head_lr if depth is None else cfg.learning_rate * cfg.layer_lr_decay ** (top - depth)
        decay = cfg.weight_decay if p.ndim >= 2 else 0.0
        groups[("head" if depth is None else f"depth-{depth}", lr, decay)].append(p)
    return [{"name": name, "params": params, "lr": lr, "weight_decay": decay}
            for (name, lr, decay), params in sorted(groups.items(), key=lambda kv: str(kv[0][0]))]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameter_groups(model, cfg), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             fused=True)  # one kernel for the whole update, on CPU as on GPU


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, max_steps: int, done_steps: int = 0):
    """The recipe's schedule over `max_steps`, fast-forwarded to `done_steps` (a resumed run).

    The schedule is a pure function of the step, so replaying it restores it exactly without
    unpickling anything (accelerate would pickle a registered scheduler).
    """
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=max_steps)
    with warnings.catch_warnings():
        # torch warns that scheduler.step() ran before optimizer.step(): harmless here, since the
        # replay only moves the schedule to where the interrupted run left it.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
        for _ in range(done_steps):
            scheduler.step()
    return scheduler
