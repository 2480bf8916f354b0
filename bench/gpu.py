"""GPU pretraining throughput: tokens/s, MFU against this GPU's measured matmul peak, and peak memory.

Each variant is a pretraining recipe with overrides (attention backend, document masking, micro
batch), trained by the project's own Trainer exactly as `make pretrain` sets it up (bench/pretrain.py
`run_pipeline`: same accelerator, collator, optimizer, schedule, torch.compile), for `--warmup`
untimed steps (compilation) and `--steps` timed ones. MFU divides the achieved model FLOPs
(`training_flops_per_token`, causal attention counted as T/2 keys) by the bf16 `torch.mm` peak
measured on the same GPU in the same run (bench/peak.py), not by the datasheet.

The gpt2-small rows train on the gpu-small corpus (16,384-token vocabulary) with gpt2-small's
32,768-row embedding: the same FLOPs and memory as its own corpus, without a second tokenizer
build on the GPU machine. They measure speed only. Their global batch is cut to 128 sequences
(gradient accumulation of 8 or 4) so that a step takes about a second: MFU does not depend on it.

    .venv/bin/python bench/gpu.py                      # every variant, within --deadline seconds
    .venv/bin/python bench/gpu.py --only gpu-small/sdpa-causal-mb64 --steps 10

Writes reports/bench/gpu.{json,md} (or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import time
import traceback
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for `pipeline`
from peak import matmul_gflops  # noqa: E402
from pretrain import NEVER, reset_state, run_pipeline, timed_rate  # noqa: E402

from pipeline import corpus, machine  # noqa: E402
from pipeline.config import PretrainConfig  # noqa: E402
from pipeline.recipe import load_recipe  # noqa: E402
from pipeline.json_files import write_json  # noqa: E402
from pipeline.model import build_causal_lm, llama_config, parameter_counts, training_flops_per_token  # noqa: E402

SPEC_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense bf16 datasheet figures, for reference only
SMALL, GPT2 = "recipes/pretrain/gpu-small.yaml", "recipes/pretrain/gpt2-small.yaml"
CORPUS = SMALL  # every variant reads this recipe's corpus (see the docstring)
# name → (recipe, overrides). Run in this order, so the most telling rows come first if time runs out.
VARIANTS = {
    "gpu-small/flex-docmask-mb64": (SMALL, ["attn_implementation=flex_attention", "doc_masking=true",
                                            "micro_batch_size=64"]),
    "gpt2-small/flex-docmask-mb32": (GPT2, ["attn_implementation=flex_attention", "doc_masking=true",
                                            "micro_batch_size=32", "global_batch_size=128"]),
    "gpu-small/sdpa-causal-mb64": (SMALL, ["attn_implementation=sdpa", "doc_masking=false", "micro_batch_size=64"]),
    "gpt2-small/sdpa-causal-mb32": (GPT2, ["attn_implementation=sdpa", "doc_masking=false", "micro_batch_size=32",
                                           "global_batch_size=128"]),
    "gpu-small/flex-causal-mb64": (SMALL, ["attn_implementation=flex_attention", "doc_masking=false",
                                           "micro_batch_size=64"]),
    "gpu-small/sdpa-causal-mb32": (SMALL, ["attn_implementation=sdpa", "doc_masking=false", "micro_batch_size=32"]),
    "gpt2-small/sdpa-causal-mb16": (GPT2, ["attn_implementation=sdpa", "doc_masking=false", "micro_batch_size=16",
                                           "global_batch_size=128"]),
    "gpu-small/sdpa-docmask-mb64": (SMALL, ["attn_implementation=sdpa", "doc_masking=true", "micro_batch_size=64"]),
    "gpu-small/flash2-docmask-mb64": (SMALL, ["attn_implementation=flash_attention_2", "doc_masking=true",
                                              "micro_batch_size=64"]),
}


def measure(name: str, recipe: str, overrides: list[str], data, steps: int, warmup: int, peak_gflops: float) -> dict:
    cfg = load_recipe(PretrainConfig, recipe, overrides)
    cfg = dataclasses.replace(cfg, max_steps=warmup + steps + 1, eval_steps=NEVER, save_steps=NEVER, num_samples=0,
                              max_train_minutes=None, resume=False)
    vocab = cfg.vocab_size  # the recipe's embedding size, whatever corpus feeds it
    config = llama_config(cfg.model, data.tokenizer, cfg.seq_len, cfg.attn_implementation)
    config.vocab_size = max(config.vocab_size, vocab)
    model = build_causal_lm(config, cfg.seed)
    counts, flops = parameter_counts(model), training_flops_per_token(model, cfg.seq_len)
    cuda = torch.cuda.is_available()  # measure() also runs on a CPU, for checking this script without a GPU
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    marks = run_pipeline(cfg, data, model)
    tokens_per_step = cfg.global_batch_size * cfg.seq_len
    tok_s, step_s, step_med = timed_rate(marks, warmup, steps, tokens_per_step)
    row = {
        "variant": name, "recipe": recipe, "overrides": overrides, "attn_implementation": cfg.attn_implementation,
        "doc_masking": cfg.doc_masking, "micro_batch_size": cfg.micro_batch_size,
        "global_batch_size": cfg.global_batch_size, "seq_len": cfg.seq_len, "vocab_size": config.vocab_size,
        "parameters": counts["total"], "flops_per_token": flops, "tokens_per_s": tok_s,
        "seconds_per_step": step_s, "median_seconds_per_step": step_med,
        "mfu": tok_s * flops / (peak_gflops * 1e9), "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "first_steps_seconds": marks[warmup - 1] - started,  # set-up + compilation + warm-up steps
    }
    reset_state()
    return row


def write_report(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), report)
    rows = report["rows"]
    peak, spec = report["peak_tflops_bf16"], report["spec_tflops_bf16"]
    lines = [
        "# GPU pretraining throughput",
        "",
        f"{report['gpu']}, torch {report['torch']}, transformers {report['transformers']}, {report['timestamp']}. "
        f"Measured bf16 matmul peak: **{peak:.0f} TFLOP/s** (best `torch.mm` at 4096² and 8192²)"
        + (f"; datasheet {spec:.0f}." if spec else "."),
        f"Command: `{report['command']}` ({report['warmup']} untimed + {report['steps']} timed optimizer steps "
        "each, the project's Trainer with torch.compile and bf16 autocast).",
        "",
        "| variant | attention | doc masking | micro × accum | params | tokens/s | MFU (measured peak) |"
        + (" MFU (datasheet) |" if spec else "") + " peak memory | set-up + compile |",
        "|---|---|---|---|---:|---:|---:|" + ("---:|" if spec else "") + "---:|---:|",
    ]
    for r in rows:
        accum = r["global_batch_size"] // r["micro_batch_size"]
        lines.append(
            f"| {r['variant']} | {r['attn_implementation']} | {'yes' if r['doc_masking'] else 'no'} "
            f"| {r['micro_batch_size']} × {accum} | {r['parameters'] / 1e6:.0f}M | {r['tokens_per_s']:,.0f} "
            f"| {r['mfu']:.1%} |" + (f" {r['tokens_per_s'] * r['flops_per_token'] / (spec * 1e12):.1%} |" if spec else "")
            + f" {r['peak_memory_gib']:.1f} GiB | " + (f"{r['first_steps_seconds']:.0f} s |" if r.get("first_steps_seconds")
                                                       is not None else "— |"))
    for name, error in report["failed"].items():
        lines.append(f"| {name} | failed: {error} |")
    by_name = {r["variant"]: r for r in rows}
    pairs = [("gpu-small/flex-docmask-mb64", "gpu-small/flex-causal-mb64"),
             ("gpu-small/flex-docmask-mb64", "gpu-small/sdpa-causal-mb64"),
             ("gpu-small/sdpa-docmask-mb64", "gpu-small/sdpa-causal-mb64"),
             ("gpt2-small/flex-docmask-mb32", "gpt2-small/sdpa-causal-mb32")]
    ratios = [f"- {a} takes **{by_name[b]['tokens_per_s'] / by_name[a]['tokens_per_s']:.2f}×** the time of {b}"
              for a, b in pairs if a in by_name and b in by_name]
    if ratios:
        lines += ["", "Document-masked training against dense causal training (time per token):", "", *ratios]
    lines += ["", report["note"], ""]
    out.with_suffix(".md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="timed optimizer steps per variant")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, allocator)")
    ap.add_argument("--deadline", type=float, default=330,
                    help="start no variant after this many seconds of variants (the peak and the corpus not counted)")
    ap.add_argument("--only", nargs="*", default=None, help="variant names (default: all)")
    ap.add_argument("--out", default="reports/bench/gpu")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: bench/gpu.py measures a CUDA GPU and this machine has none")
    started = time.perf_counter()
    device = torch.device("cuda")
    peak = matmul_gflops(torch.bfloat16, device, (4096, 8192)) / 1e3
    gpu = torch.cuda.get_device_name(0)
    spec = next((v for k, v in SPEC_TFLOPS.items() if k in gpu), None)
    print(f"{gpu}: bf16 matmul peak {peak:.0f} TFLOP/s measured" + (f" (datasheet {spec:.0f})" if spec else ""))
    data = corpus.build(load_recipe(PretrainConfig, CORPUS, []))
    variants_started = time.perf_counter()
    rows, failed = [], {}

    def save() -> None:  # after every variant: a run cut short still leaves its figures
        write_report({
            "gpu": gpu, "peak_tflops_bf16": peak, "spec_tflops_bf16": spec, "rows": rows, "failed": failed,
            "steps": a.steps, "warmup": a.warmup, "command": "python bench/gpu.py " + " ".join(sys.argv[1:]),
            "machine": machine.describe(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "note": "The gpt2-small rows read the gpu-small corpus (token ids under 16,384 of its 32,768): speed only.",
        }, Path(a.out))

    for name in a.only or VARIANTS:
        recipe, overrides = VARIANTS[name]
        if time.perf_counter() - variants_started > a.deadline:
            failed[name] = "skipped: past the deadline"
            continue
        if "flash_attention_2" in " ".join(overrides):
            try:
                import flash_attn  # noqa: F401
            except ImportError:
                failed[name] = "skipped: flash-attn is not installed on this machine"
                continue
        print(f"[{time.perf_counter() - started:.0f}s] {name}", flush=True)
        try:
            row = measure(name, recipe, overrides, data, a.steps, a.warmup, peak * 1e3)
        except Exception as e:  # one failing backend must not cost the other rows
            traceback.print_exc()
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            reset_state()
            save()
            continue
        rows.append(row)
        print(f"  {row['tokens_per_s']:,.0f} tokens/s, MFU {row['mfu']:.1%}, {row['peak_memory_gib']:.1f} GiB", flush=True)
        save()
    save()
    print(f"wrote {a.out}.md")


if __name__ == "__main__":
    main()
