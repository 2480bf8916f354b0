"""Where a pretraining step's time goes: torch.profiler over the `cpu` recipe's training steps.

Runs the recipe's model on its packed corpus exactly as the loop does (autocast, fused AdamW,
optional torch.compile), profiles a few optimizer steps after a warm-up, and sorts every
operator's self time into buckets: matmuls (split into the LM head and the rest, by shape),
attention, the cross-entropy, the optimizer and everything else (norms, activations, RoPE,
copies). Writes the table to reports/bench/profile.md and a Chrome trace next to it.

    make bench-profile                                       # the cpu recipe, compiled, 2 steps
    .venv/bin/python bench/profile_step.py compile=false          # eager: every op visible by name
    .venv/bin/python bench/profile_step.py --steps 1 doc_masking=true
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for `pipeline`
from pipeline import corpus, precision  # noqa: E402
from pipeline.config import PretrainConfig  # noqa: E402
from pipeline.recipe import load_recipe  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.lm import PackedCollator  # noqa: E402
from pipeline.model import build_causal_lm, llama_config  # noqa: E402

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_mkl_mm", "mkldnn::_linear_pointwise", "aten::linear")
ATTENTION = ("scaled_dot_product", "flash_attention", "aten::_softmax", "aten::_softmax_backward_data")
LOSS = ("log_softmax", "nll_loss", "cross_entropy")


def bucket(name: str, shapes: list, vocab: int, tokens: int) -> str:
    if any(name.startswith(m) for m in MATMUL):
        # An LM-head matmul has the vocabulary among its (m, k, n); when a micro-batch holds
        # exactly `vocab` tokens, a layer's matmul has one such dimension and the head's two.
        mats = [s for s in shapes if isinstance(s, list) and len(s) == 2]
        mkn = [mats[0][0], mats[0][1], mats[1][1]] if len(mats) >= 2 else []
        head = mkn.count(vocab) >= (2 if tokens == vocab else 1)
        return "matmul: LM head" if head else "matmul: layers"
    if any(a in name for a in ATTENTION):
        return "attention"
    if any(x in name for x in LOSS):
        return "cross-entropy"
    if "adam" in name.lower():
        return "optimizer"
    if "CompiledFxGraph" in name or name.startswith("cpp_fused"):  # inductor's kernels; its matmuls are aten ops
        return "compiled kernels (fused elementwise)"
    return "other ops (norms, activations, RoPE, copies)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/pretrain/cpu.yaml")
    ap.add_argument("--steps", type=int, default=2, help="profiled optimizer steps")
    ap.add_argument("--warmup", type=int, default=2, help="unprofiled steps first (compilation)")
    ap.add_argument("--out", default="reports/bench/profile.md")
    ap.add_argument("overrides", nargs="*", help="recipe key=value overrides")
    a = ap.parse_args()

    cfg = load_recipe(PretrainConfig, a.recipe, a.overrides)
    data = corpus.build(cfg)
    model = build_causal_lm(llama_config(cfg.model, data.tokenizer, cfg.seq_len, cfg.attn_implementation), cfg.seed)
    vocab = model.config.vocab_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, fused=True)
    step_model = torch.compile(model) if cfg.compile else model
    collate = PackedCollator(data.tokenizer.eos_token_id, cfg.doc_masking)
    accum = cfg.gradient_accumulation_steps(1)
    bf16 = precision.resolve(cfg.mixed_precision, torch.device("cpu")).mode == "bf16"  # as the trainer would
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    batches = (collate([data.train[i] for i in range(s, s + cfg.micro_batch_size)])
               for s in range(0, len(data.train), cfg.micro_batch_size))

    def step():
        for _ in range(accum):
            with autocast:
                loss = step_model(**next(batches), use_cache=False).loss
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    print(f"profile: {a.warmup} warm-up steps, then {a.steps} profiled "
          f"({cfg.micro_batch_size}×{cfg.seq_len} tokens × {accum} micro-batches each, compile={cfg.compile})")
    for _ in range(a.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(a.steps):
            step()

    events = prof.key_averages(group_by_input_shape=True)
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        totals[bucket(e.key, e.input_shapes, vocab, cfg.micro_batch_size * cfg.seq_len)] += e.self_cpu_time_total / 1e6
    wall = sum(totals.values())
    top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:15]

    lines = [f"# Profile of `{a.recipe}` ({' '.join(a.overrides) or 'as shipped'})", "",
             f"{a.steps} optimizer steps of {cfg.global_batch_size}×{cfg.seq_len} tokens, "
             f"{cfg.mixed_precision}, compile={cfg.compile}, attn={cfg.attn_implementation}, "
             f"doc_masking={cfg.doc_masking}, {torch.get_num_threads()} threads; self CPU time per step.", "",
             "| bucket | s/step | share |", "|---|---:|---:|"]
    for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {seconds / a.steps:.3f} | {seconds / wall:.1%} |")
    lines.append(f"| **total** | **{wall / a.steps:.3f}** | |")
    lines += ["", "Top operators:", "", "| operator | calls/step | s/step |", "|---|---:|---:|"]
    lines += [f"| `{e.key}` | {e.count // a.steps} | {e.self_cpu_time_total / 1e6 / a.steps:.3f} |" for e in top]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    prof.export_chrome_trace(str(out.with_suffix(".trace.json")))
    print(f"→ {out} and {out.with_suffix('.trace.json')} (open in chrome://tracing or ui.perfetto.dev)")


if __name__ == "__main__":
    try:
        main()
    except PipelineError as e:
        sys.exit(f"error: {e}")
