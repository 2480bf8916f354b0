"""Mean pooling for a decoder's classification head, in weights that plain transformers can load.

A decoder's sequence-classification head reads the last token. A pretrained causal LM tunes that
token's state to predict the next word from the last few, so a classifier must first re-learn
attention before it can use the whole text; a random-init model, whose attention is near uniform,
gets an average of the text for free. `pooling: mean` gives the pretrained body the same start:

one more decoder layer on top of the checkpoint's, with its query and key projections set to zero.
Every attention score is then 0, the softmax is uniform over the tokens a position may see, and the
last token receives the mean of the (normed, projected) states of the whole text, BOS included
(the linear probe's `mean`, pipeline/features.py, leaves BOS out: see there why). Zero queries and
keys also get zero gradients (each one's gradient is proportional to the other), so the layer stays
an exact mean while its value/output projections and MLP train. The saved model is an ordinary
Llama/Mistral/Qwen2/GPT-2 with one more layer: `pipeline("text-classification", model=...)` still loads it.

GPT-2 computes q, k and v with one Conv1D (`c_attn`): its q and k parts are zeroed, to the same end.
Its attention dropout (attn_pdrop) perturbs the mean while training, as it does every GPT-2 block's
attention; in eval mode the mean is exact.
"""

from __future__ import annotations

import torch
from transformers.pytorch_utils import Conv1D

from pipeline.heads import transformer_blocks

POOLED_TO_RESIDUAL = 2.0  # the mean's RMS over the last token's own residual RMS after calibration


def add_mean_pooling_layer(model, calibration: dict | None = None) -> torch.nn.Module | None:
    """Append the mean-pooling layer to `model`'s body (in place), record it in its config, and return it.

    A pretrained residual stream is large (RMS ≈ 9 at the last token of the `cpu` checkpoint) while a
    mean of normed states is about 0.3 (bench/residual_rms.py measures both): added as is, the mean would be drowned out by the last
    token's own state once the final norm rescales both. With a `calibration` batch (a few training
    examples), the output projection is scaled so that the mean's RMS is POOLED_TO_RESIDUAL times the
    residual's at the last tokens, and the head mostly reads the mean from the first step.

    A body whose blocks are of neither kind keeps last-token pooling, says so in one line, and returns None.
    """
    body, config = model.base_model, model.config
    blocks = transformer_blocks(body)
    init = _mean_init_for(blocks[-1]) if blocks is not None else None
    if init is None:
        print(f"pooling=mean: {type(body).__name__} has no list of Llama- or GPT-2-style transformer blocks to add "
              "a mean-pooling block to; using pooling=last", flush=True)
        return None
    index = len(blocks)
    config.num_hidden_layers = index + 1
    if getattr(config, "layer_types", None) is not None:  # Qwen2/Mistral-style per-layer attention kinds
        config.layer_types = [*config.layer_types[:index], "full_attention"]
    layer = type(blocks[-1])(config, layer_idx=index)
    output_projection = init(layer, config)
    blocks.append(layer.to(next(body.parameters()).dtype))
    if calibration is not None:
        _calibrate(model, layer, output_projection, calibration)
    return layer


def lora_parts(layer) -> tuple[list[torch.nn.Module], list[torch.nn.Module]]:
    """Under LoRA, the mean-pooling `layer`'s (train_in_full, keep_frozen) parts (pipeline/adapters.py).

    Its attention (values, output projection) and norms train in full: they are new weights with nothing
    to adapt. Its MLP stays the no-op it starts as, and its zero query and key projections stay zero (they
    get no gradient anyway): trained in full, the MLP was 9% of the default 5.8M model's parameters and
    bought nothing (emotion, one seed: 82.60 with it, 82.75 without)."""
    frozen = [layer.mlp]
    attn = getattr(layer, "self_attn", None)
    if attn is not None:  # GPT-2's q and k share c_attn with v: they train with it, and keep a zero gradient
        frozen += [attn.q_proj, attn.k_proj]
    kept = {id(p) for module in frozen for p in module.parameters()}
    in_full = [m for m in layer.modules()
               if any(id(p) not in kept for p in m.parameters(recurse=False))]
    return in_full, frozen


def _mean_init_for(block):
    """How to make a new copy of `block` a mean: separate q/k/v/o projections (Llama, Mistral, Qwen2)
    or GPT-2's fused c_attn; None for any other kind of block."""
    attn, mlp = getattr(block, "self_attn", None), getattr(block, "mlp", None)
    split = ((attn, "q_proj"), (attn, "k_proj"), (attn, "v_proj"), (attn, "o_proj"), (mlp, "down_proj"))
    if all(isinstance(getattr(module, name, None), torch.nn.Linear) for module, name in split):
        return _init_split_as_mean
    attn = getattr(block, "attn", None)
    fused = ((attn, "c_attn"), (attn, "c_proj"), (mlp, "c_proj"))
    if all(isinstance(getattr(module, name, None), Conv1D) for module, name in fused):
        return _init_fused_as_mean
    return None


@torch.no_grad()
def _calibrate(model, layer, output_projection, batch: dict) -> None:
    seen = {}
    hook = layer.register_forward_hook(
        lambda module, args, kwargs, out: seen.update(x=kwargs.get("hidden_states", args[0] if args else None),
                                                      y=out[0] if isinstance(out, tuple) else out), with_kwargs=True)
    was_training = model.training
    model.eval()
    try:
        model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        hook.remove()
        model.train(was_training)
    rows = torch.arange(len(batch["input_ids"]))
    last = batch["attention_mask"].sum(1) - 1  # right padding: the last real token of each row
    x, y = seen["x"][rows, last].float(), seen["y"][rows, last].float()
    residual, pooled = x.pow(2).mean(-1).sqrt().mean(), (y - x).pow(2).mean(-1).sqrt().mean()
    output_projection.weight.mul_(POOLED_TO_RESIDUAL * residual / pooled)  # its bias is zero


@torch.no_grad()
def _init_split_as_mean(layer, config) -> torch.nn.Module:
    attn, mlp = layer.self_attn, layer.mlp
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = attn.head_dim
    for proj in (attn.q_proj, attn.k_proj):
        proj.weight.zero_()
        if proj.bias is not None:
            proj.bias.zero_()
    # Values: orthonormal rows, so the kv heads together keep a kv_heads × head_dim slice of the
    # mean intact. Output: each query head writes its kv head's slice back into the residual stream,
    # shared among the heads that read it, so the layer adds the projected mean, unscaled.
    torch.nn.init.orthogonal_(attn.v_proj.weight)
    if attn.v_proj.bias is not None:
        attn.v_proj.bias.zero_()
    v = attn.v_proj.weight.view(kv_heads, head_dim, -1)
    group = heads // kv_heads
    attn.o_proj.weight.copy_(torch.cat([v[h // group].T for h in range(heads)], dim=1) / group)
    if attn.o_proj.bias is not None:
        attn.o_proj.bias.zero_()
    mlp.down_proj.weight.zero_()  # the MLP starts as a no-op and learns from there
    if mlp.down_proj.bias is not None:
        mlp.down_proj.bias.zero_()
    return attn.o_proj


@torch.no_grad()
def _init_fused_as_mean(layer, config) -> torch.nn.Module:
    """GPT-2: c_attn is one Conv1D whose [in, 3·d] weight yields q, k and v side by side (every head
    has its own k and v). Its q and k columns and biases are zeroed; the value columns V are orthogonal
    and the output projection c_proj is V.T. Conv1D computes x @ W + b (W is [in, out], transposed against
    nn.Linear), so the block adds mean @ V @ V.T: the mean of the ln_1-normed states itself."""
    attn, d = layer.attn, config.hidden_size
    attn.c_attn.weight[:, :2 * d].zero_()
    attn.c_attn.bias.zero_()
    v = torch.nn.init.orthogonal_(torch.empty(d, d))
    attn.c_attn.weight[:, 2 * d:].copy_(v)
    attn.c_proj.weight.copy_(v.T)
    attn.c_proj.bias.zero_()
    layer.mlp.c_proj.weight.zero_()  # the MLP starts as a no-op and learns from there
    layer.mlp.c_proj.bias.zero_()
    return attn.c_proj
