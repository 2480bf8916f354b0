"""The optimizer and its schedule, built once for every training stage.

Parameter groups carry what the recipe asks for:
- weight decay on matrices only (norm gains and biases are left alone);
- discriminative learning rates (ULMFiT): a new task head trains at `head_learning_rate`, the
  pretrained body at `learning_rate` at its top, and each layer below at `layer_lr_decay` times
  the one above it, down to the embeddings. A decay of 1 gives every body layer the same rate.
The body is the model's `base_model` (what a checkpoint supplies); everything else is the head.
A causal LM has no head: its LM head shares the embedding matrix.
Only parameters that require gradients are grouped: LoRA (pipeline/adapters.py) freezes the rest.

`optimizer: muon` (as in modded-nanogpt) trains the 2-D weight matrices of the transformer layers
(attention and MLP projections) with torch.optim.Muon at `muon_learning_rate`, and everything else
(embeddings and the tied LM head, norms, biases, task heads, LoRA's low-rank matrices) with AdamW as
above. Layer decay applies to the Muon groups too: layer i trains at muon_learning_rate ×
layer_lr_decay^(top − depth). The two are stepped as one optimizer (CombinedOptimizer), so the loop,
accelerate, the schedule (it scales every group of both) and the checkpoint see a single optimizer.
The blocks are found by structure (Llama's `layers`, GPT-2's `h`); a body without a list of them
trains with AdamW alone, and says so.

Schedules are transformers.get_scheduler's; `wsd` (warmup_stable_decay) warms up linearly over
warmup_steps, stays constant, and decays to 0 over the last `decay_fraction` of the steps in the
1-sqrt shape (Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
Durations": better than a linear cooldown at the same length). A time budget may re-time the decay
while it runs (pipeline/budget.py): from the step it is re-timed at, the decay goes on from the progress
it had reached and spreads the rest over the steps now left, so the rate never jumps and still ends at 0.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler

from pipeline.adapters import lora_factors
from pipeline.config import TrainConfig
from pipeline.errors import PipelineError
from pipeline.heads import transformer_blocks


def parameter_depths(model: torch.nn.Module) -> dict[str, int | None]:
    """Each trainable parameter's depth in the body: 0 for the embeddings (tokens, and GPT-2's positions),
    i+1 for transformer block i, the number of blocks + 1 for what sits above them (the final norm);
    None for the head. Blocks are found by structure (heads.transformer_blocks), so GPT-2's `h.1.attn`
    sits at depth 2 as Llama's `layers.1.self_attn` does; a body without them has depths 0 and 1 only."""
    body = model.base_model
    blocks = transformer_blocks(body) or []
    in_body = {id(p) for p in body.parameters()}
    embeddings = [m for m in body.modules()  # LoRA's wrapper of an embedding (base_layer) holds its factors
                  if isinstance(m, torch.nn.Embedding) or isinstance(getattr(m, "base_layer", None), torch.nn.Embedding)]
    depth_of = {id(p): 0 for m in embeddings for p in m.parameters()}
    depth_of.update({id(p): i + 1 for i, block in enumerate(blocks) for p in block.parameters()})
    above = len(blocks) + 1
    return {name: depth_of.get(id(p), above) if id(p) in in_body else None
            for name, p in model.named_parameters() if p.requires_grad}


def hidden_matrices(model: torch.nn.Module) -> set[int]:
    """ids of the 2-D weights inside the body's transformer blocks: what Muon trains with optimizer=muon.

    GPT-2's Conv1D stores a weight as [in, out], transposed against nn.Linear's [out, in]. Muon's
    orthogonalised update is the same for a matrix and its transpose, but its sqrt(max(1, rows/cols))
    scale reads the shape: on GPT-2 the ×2 of a 4×-wide MLP goes to the down projection (c_proj,
    [4d, d]) instead of the up projection (c_fc), and q, k and v are orthogonalised as one [d, 3d]
    matrix (c_attn) where Llama's are three.
    """
    blocks = transformer_blocks(model.base_model) or []
    # LoRA's A [r, in] and B [out, r] train with AdamW, as in the LoRA paper and peft. Muon's update has a
    # fixed spectral size whatever the gradient's, scaled by sqrt(rows/cols): B (zero at the start, out ≫ r)
    # would take steps ~sqrt(out/r) times larger than a full matrix's at the same rate, and a rate tuned for
    # full weights says nothing about a factor of a product. A pooling block's trained matrices (its attention)
    # are full weights: Muon takes them.
    low_rank = lora_factors(model)
    return {id(p) for block in blocks for p in block.parameters()
            if p.ndim == 2 and p.requires_grad and id(p) not in low_rank}


def parameter_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """Groups, one per (optimizer, learning rate, weight decay), each named for the logs and tests.

    Each group's "optimizer" says which optimizer takes it: "muon" for the layers' weight matrices
    when cfg.optimizer is muon (named "muon-depth-N"), "adamw" for everything else; LoRA's factors are
    "lora-depth-N". With LoRA, lora_learning_rate takes learning_rate's place.
    """
    depths, hidden, low_rank = parameter_depths(model), hidden_matrices(model), lora_factors(model)
    top = max((d for d in depths.values() if d is not None), default=0)
    # Under LoRA (only a FinetuneConfig's finetune_method=lora makes factors) what trains below the head is the
    # factors and a pooling block's new weights: lora_learning_rate replaces the rate tuned for full weights.
    body_lr = cfg.lora_learning_rate if low_rank else cfg.learning_rate
    head_lr = cfg.head_learning_rate if cfg.head_learning_rate is not None else body_lr
    groups: dict[tuple, list] = defaultdict(list)
    for name, p in model.named_parameters():
        if name not in depths:
            continue
        depth = depths[name]
        muon = cfg.optimizer == "muon" and id(p) in hidden
        lora = id(p) in low_rank
        peak = cfg.muon_learning_rate if muon else body_lr
        lr = head_lr if depth is None else peak * cfg.layer_lr_decay ** (top - depth)
        decay = cfg.weight_decay if p.ndim >= 2 else 0.0
        label = "head" if depth is None else f"{'muon-' if muon else 'lora-' if lora else ''}depth-{depth}"
        groups[("muon" if muon else "adamw", label, lr, decay)].append(p)
    return [{"name": name, "optimizer": kind, "params": params, "lr": lr, "weight_decay": decay}
            for (kind, name, lr, decay), params in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1]))]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg)
    adamw = torch.optim.AdamW([g for g in groups if g["optimizer"] == "adamw"], lr=cfg.learning_rate,
                              betas=(cfg.adam_beta1, cfg.adam_beta2),
                              fused=True)  # one kernel for the whole update, on CPU as on GPU
    if cfg.optimizer == "adamw":
        return adamw
    if not any(g["optimizer"] == "muon" for g in groups):
        if transformer_blocks(model.base_model) is None:
            print(f"optimizer=muon: {type(model.base_model).__name__} has no list of transformer blocks to take weight "
                  "matrices from; using optimizer=adamw", flush=True)
        else:  # finetune_method=lora without a pooling block
            print("optimizer=muon: no full weight matrix of the transformer blocks trains (LoRA's matrices train with "
                  "AdamW); using optimizer=adamw", flush=True)
        return adamw
    # Muon's decoupled weight decay is lr-scaled like AdamW's (p ← p·(1 − lr·wd)), at Muon's larger rate.
    # Its update is scaled by sqrt(max(1, rows/cols)) (Keller Jordan's "original" adjustment).
    muon = torch.optim.Muon([g for g in groups if g["optimizer"] == "muon"], lr=cfg.muon_learning_rate,
                            momentum=cfg.muon_momentum, nesterov=True, weight_decay=cfg.weight_decay)
    return CombinedOptimizer(adamw, muon)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of tensors in the optimizer's state (AdamW's two moments, Muon's momentum): what a method that
    trains fewer parameters saves besides their gradients."""
    def walk(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(walk(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(walk(v) for v in value)
        return 0

    return walk(optimizer.state_dict())


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, stepped, zeroed, scheduled and saved as one.

    Like accelerate's AcceleratedOptimizer, it owns nothing: `param_groups` is the inner optimizers'
    groups (the same dicts, so a scheduler's rates reach them) and the state is theirs. Its state
    dict is a list of theirs: plain tensors and numbers, loadable with torch.load(weights_only=True).
    """

    def __init__(self, *optimizers: torch.optim.Optimizer):  # no super().__init__: nothing of its own
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict]:  # read on every access: load_state_dict replaces the inner dicts
        return [group for opt in self.optimizers for group in opt.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    @property
    def defaults(self) -> dict:
        return self.optimizers[0].defaults

    def add_param_group(self, param_group: dict) -> None:
        raise NotImplementedError("add the group to one of CombinedOptimizer.optimizers")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("optimizers") if isinstance(state_dict, dict) else None
        if saved is None or len(saved) != len(self.optimizers):
            # e.g. a checkpoint of an optimizer=adamw run resumed with optimizer=muon
            raise PipelineError(f"the checkpoint's optimizer state is not that of {self!r} (was it saved with another "
                                "`optimizer`?): resume with the run's own recipe, or start over with overwrite=true")
        for opt, sd in zip(self.optimizers, saved):
            opt.load_state_dict(sd)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(type(o).__name__ for o in self.optimizers)})"


def is_wsd(cfg: TrainConfig) -> bool:
    return cfg.lr_scheduler_type in ("wsd", "warmup_stable_decay")


def wsd_decay_steps(cfg: TrainConfig, max_steps: int) -> int:
    """How many of `max_steps` the wsd schedule spends decaying: the last decay_fraction of them."""
    return min(max(1, round(cfg.decay_fraction * max_steps)), max(0, max_steps - cfg.warmup_steps))


def wsd_decay_progress(cfg: TrainConfig, max_steps: int, step: int, anchor: tuple[int, float] = (0, 0.0)) -> float:
    """How far (0..1) the wsd decay of a `max_steps` run has gone at schedule index `step`.

    `anchor` = (step, progress) where a time budget re-timed the decay (0: never): from there the
    progress goes on linearly to 1 at max_steps, whatever the step count was before.
    """
    anchor_step, anchor_progress = anchor
    if anchor_step and step >= anchor_step:
        return anchor_progress + (1.0 - anchor_progress) * (step - anchor_step) / max(1, max_steps - anchor_step)
    decay = wsd_decay_steps(cfg, max_steps)
    return max(0.0, (step - (max_steps - decay)) / max(1, decay))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, max_steps: int, done_steps: int = 0,
                    decay_anchor: tuple[int, float] = (0, 0.0)):
    """The recipe's schedule over `max_steps`, fast-forwarded to `done_steps` (a resumed run).

    `decay_anchor` (wsd only): where a time budget re-timed the decay (wsd_decay_progress).
    The schedule is a pure function of the step, so replaying it restores it exactly without
    unpickling anything (accelerate would pickle a registered scheduler).
    """
    name, extra = cfg.lr_scheduler_type, None
    if is_wsd(cfg):
        name = "warmup_stable_decay"
        extra = {"num_decay_steps": wsd_decay_steps(cfg, max_steps), "decay_type": "1-sqrt", "warmup_type": "linear"}
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=max_steps,
                              scheduler_specific_kwargs=extra)
    schedule = scheduler.lr_lambdas[0]
    if is_wsd(cfg) and decay_anchor[0]:
        schedule = _re_timed_decay(schedule, cfg, max_steps, decay_anchor)
        scheduler = LambdaLR(optimizer, schedule)
    if cfg.freeze_body_steps:
        scheduler = _frozen_body_first(optimizer, schedule, cfg.freeze_body_steps, cfg.warmup_steps)
    with warnings.catch_warnings():
        # torch warns that scheduler.step() ran before optimizer.step(): harmless here, since the
        # replay only moves the schedule to where the interrupted run left it.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
        for _ in range(done_steps):
            scheduler.step()
    return scheduler


def _re_timed_decay(schedule, cfg: TrainConfig, max_steps: int, anchor: tuple[int, float]):
    """wsd's 1-sqrt decay from the anchor on (transformers' own before it, for the steps already taken)."""
    def factor(step: int) -> float:
        if step < anchor[0]:
            return schedule(step)
        return max(0.0, 1.0 - math.sqrt(min(1.0, wsd_decay_progress(cfg, max_steps, step, anchor))))

    return factor


def _frozen_body_first(optimizer, schedule, frozen: int, warmup: int) -> LambdaLR:
    """The head follows `schedule`; every other group trains at rate 0 for `frozen` steps, then
    follows `schedule` with a warmup of its own, so the body never jumps to its peak rate."""
    def body(step: int) -> float:
        return 0.0 if step < frozen else schedule(step) * min(1.0, (step - frozen + 1) / max(1, warmup))

    return LambdaLR(optimizer, [schedule if group.get("name") == "head" else body for group in optimizer.param_groups])
