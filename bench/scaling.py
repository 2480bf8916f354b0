"""Scaling study at CPU scale: which model shape and optimizer buy the most language model per minute.

Every run is the default recipe (recipes/pretrain/cpu.yaml: corpus, tokenizer, seq_len, rates)
with its variant's shape, optimizer, schedule and batch, trained for the same `max_train_minutes`
of optimizer steps (a time budget, not a step count: a smaller model takes more steps and tokens
in the same time) and scored in bits/byte on the same validation blocks. The first row
is the old default (AdamW + cosine at 384×6) at that budget: the baseline every other row is read
against, measured side by side on this machine. Runs go one at a time on all cores, as
`make pretrain` does, into runs/bench/scaling/<name>/ and are reused when rerun.

    make bench-scaling                     # every variant, 8 minutes each (about 50 minutes in all)
    .venv/bin/python bench/scaling.py --minutes 2 --variants baseline   # a smoke run
    make bench-scaling ARGS="--seeds 2"    # each variant at seeds 1337 and 1338: mean, sd, each seed
Writes reports/bench/scaling.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for `pipeline`
from peak import training_peak  # noqa: E402

from pipeline.machine import describe, label  # noqa: E402
from pipeline.sweep import Job, mean_sd, parse_with_overrides, run_jobs, save_rows  # noqa: E402

RECIPE = "recipes/pretrain/cpu.yaml"
# Every variant names its whole shape, optimizer, schedule and batch, so the table does not move
# when the default recipe does. Shapes keep head_dim 128 (the fast matmul width here, see the
# recipe's comment) and one KV head; widths step by one head.
ADAMW_COSINE = ["optimizer=adamw", "lr_scheduler_type=cosine"]
MUON_WSD = ["optimizer=muon", "lr_scheduler_type=wsd"]
B32 = ["global_batch_size=32", "micro_batch_size=16"]


def shape(width: int, layers: int) -> list[str]:
    return [f"model.hidden_size={width}", f"model.num_heads={width // 128}", f"model.num_layers={layers}",
            "model.num_kv_heads=1"]


# name → (overrides, what the row shows)
VARIANTS = {
    "baseline": ([*ADAMW_COSINE, *shape(384, 6), *B32], "old default: 384×6, AdamW + cosine"),
    "384x6 muon": ([*MUON_WSD, *shape(384, 6), *B32], "384×6, Muon + WSD"),
    "256x6 muon": ([*MUON_WSD, *shape(256, 6), *B32], "256×6, Muon + WSD"),
    "256x4 muon": ([*MUON_WSD, *shape(256, 4), *B32], "256×4, Muon + WSD"),
    "256x4 muon batch 16": ([*MUON_WSD, *shape(256, 4), "global_batch_size=16", "micro_batch_size=16"],
                            "256×4, Muon + WSD, batch 16: the new default"),
}
SIZES = ("256x4 muon", "256x6 muon", "384x6 muon")  # one recipe, shape alone varies: the fit
STUDY = list(VARIANTS)  # what `make bench-scaling` runs
# One change each from the new default (256×4, Muon + WSD, batch 16), run by name into their own report:
#   .venv/bin/python bench/scaling.py --report reports/bench/scaling_ablations --variants "256x4 muon batch 16" \
#       "cosine" "adamw" "vocab 4096" "vocab 16384" "seq 256"
DEFAULT = [*MUON_WSD, *shape(256, 4), "global_batch_size=16", "micro_batch_size=16"]
VARIANTS |= {
    "cosine": ([*DEFAULT, "lr_scheduler_type=cosine"], "the default with a cosine schedule instead of WSD"),
    "adamw": ([*DEFAULT, *ADAMW_COSINE], "the default with AdamW + cosine (all weights at 2e-3) instead of Muon"),
    "vocab 4096": ([*DEFAULT, "vocab_size=4096"], "the default with a 4,096-token vocabulary"),
    "vocab 16384": ([*DEFAULT, "vocab_size=16384"], "the default with a 16,384-token vocabulary"),
    "seq 256": ([*DEFAULT, "seq_len=256", "global_batch_size=32", "micro_batch_size=32"],
                "the default at seq_len 256 (batch 32: the same 8k tokens a step)"),
    "muon 0.01": ([*DEFAULT, "muon_learning_rate=0.01"], "the default with Muon at 0.01 instead of 0.02"),
    "vocab 4096, seq 256": ([*DEFAULT, "vocab_size=4096", "seq_len=256", "global_batch_size=32", "micro_batch_size=32"],
                            "the default with a 4,096-token vocabulary and seq_len 256 (batch 32): the two winners"),
    "muon 0.04": ([*DEFAULT, "muon_learning_rate=0.04"], "the default with Muon at 0.04 instead of 0.02"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="max_train_minutes of every run")
    parser.add_argument("--variants", nargs="+", default=STUDY, choices=list(VARIANTS), metavar="NAME")
    parser.add_argument("--seeds", type=int, default=1, help="runs per variant, at seeds 1337, 1338, ...")
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--runs", default="runs/bench/scaling")
    parser.add_argument("--report", default="reports/bench/scaling")
    parser.epilog = "key=value words anywhere on the line override every run's recipe (they win)."
    args = parse_with_overrides(parser)

    common = [f"max_train_minutes={args.minutes:g}", "max_steps=100000", "eval_steps=100", "save_steps=100000",
              "num_samples=0"]
    seeds = [1337 + i for i in range(args.seeds)]
    jobs = [Job(None, Path(args.runs) / run_name(name, args.minutes, seed),
                [*common, *VARIANTS[name][0], f"seed={seed}", *args.overrides],
                {"variant": name, "what": VARIANTS[name][1], "seed": seed}, recipe=args.recipe)
            for name in args.variants for seed in seeds]
    rows = run_jobs(jobs, row=result_row)
    dtype, gflops = training_peak(torch.device("cpu"))  # the precision the runs train in (mixed_precision: auto)
    machine = {**describe(), "matmul_peak_dtype": dtype, "matmul_gflops": round(gflops, 1)}
    report = Path(args.report)
    save_rows(report, rows, minutes=args.minutes, machine=machine)
    merged = by_variant(rows)
    plot(merged, report.with_suffix(".png"), args.minutes)
    text = markdown(merged, machine, args.minutes)
    report.with_suffix(".md").write_text(text)
    print(text)


def run_name(variant: str, minutes: float, seed: int) -> str:
    # The first seed keeps the plain folder name, so a study rerun with more seeds reuses its runs.
    return f"{variant.replace(' ', '-')}-{minutes:g}min" + ("" if seed == 1337 else f"-seed{seed}")


def result_row(job: Job, run: dict) -> dict:
    curve = [json.loads(line) for line in (job.out / "metrics.jsonl").read_text().splitlines()]
    per_step = run["tokens"] / max(run["steps"], 1)
    evals = [(r["step"] * per_step, r["bits_per_byte"]) for r in curve if r["split"] == "eval"]
    return {**job.labels, "parameters": run["parameters"], "non_embedding_parameters": run["non_embedding_parameters"],
            "flops_per_token": run["flops_per_token"], "tokens": run["tokens"], "steps": run["steps"],
            "train_seconds": run["train_seconds"], "tokens_per_s": run["tokens_per_s"],
            "bits_per_byte": run["eval"]["bits_per_byte"], "loss": run["eval"]["loss"],
            "tokens_per_parameter": run["tokens"] / run["parameters"], "eval_curve": evals,
            "run": str(job.out)}


def by_variant(rows: list[dict]) -> list[dict]:
    """One row per variant: its seeds' mean (bits/byte, tokens, speed), the sd and each seed's bits/byte."""
    merged = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        runs = [r for r in rows if r["variant"] == name]
        bpb, sd = mean_sd([r["bits_per_byte"] for r in runs])
        merged.append({**runs[0], "bits_per_byte": bpb, "bits_per_byte_sd": sd,
                       "seed_bits_per_byte": [r["bits_per_byte"] for r in runs],
                       **{k: statistics.fmean(r[k] for r in runs)
                          for k in ("tokens", "tokens_per_s", "tokens_per_parameter")}})
    return merged


def optimum(rows: list[dict]) -> float | None:
    """Parameters at the minimum of a parabola in log(parameters) through the SIZES rows (None if < 3)."""
    pts = [(math.log(r["parameters"]), r["bits_per_byte"]) for r in rows if r["variant"] in SIZES]
    if len(pts) < 3:
        return None
    a, b, _ = np.polyfit(*zip(*pts), 2)
    return math.exp(-b / (2 * a)) if a > 0 else None


def markdown(rows: list[dict], machine: dict, minutes: float) -> str:
    # The old default when it ran, else the first row: every other row is read against it.
    base = next((r for r in rows if r["variant"] == "baseline"), rows[0] if rows else None)
    seeds = max(len(r["seed_bits_per_byte"]) for r in rows) if rows else 1
    # Reports written before `mixed_precision: auto` name the bf16 peak only.
    peak = machine.get("matmul_gflops", machine.get("bf16_matmul_gflops"))
    peak_dtype = machine.get("matmul_peak_dtype", "bfloat16")
    lines = [f"# Scaling study: {minutes:g} minutes of training per run\n",
             f"CPU: {label(machine)}, {machine['torch_threads']} threads, measured {peak_dtype} matmul peak "
             f"{peak:.0f} GFLOP/s. Validation: the recipe's 256 blocks of 512 tokens. "
             f"Δ bits/byte against: {base['what'] if base else '—'}. "
             + (f"Bits/byte, tokens and tokens/s are means over {seeds} seeds (1337, 1338, ...); the sd and each "
                "seed's figure follow." if seeds > 1 else "One seed (1337).") + "\n",
             "| run | parameters | non-embedding | tokens | tokens/param | tokens/s | MFU | bits/byte | Δ |"
             + (" sd | each seed |" if seeds > 1 else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---|" if seeds > 1 else "")]
    for r in rows:
        mfu = r["flops_per_token"] * r["tokens_per_s"] / (peak * 1e9)
        delta = f"{r['bits_per_byte'] - base['bits_per_byte']:+.3f}" if base else ""
        lines.append(f"| {r['what']} | {r['parameters'] / 1e6:.2f}M | {r['non_embedding_parameters'] / 1e6:.2f}M | "
                     f"{r['tokens'] / 1e6:.2f}M | {r['tokens_per_parameter']:.2f} | {r['tokens_per_s']:,.0f} | "
                     f"{mfu:.0%} | {r['bits_per_byte']:.4f} | {delta} |"
                     + (f" {r['bits_per_byte_sd']:.4f} | {', '.join(f'{b:.4f}' for b in r['seed_bits_per_byte'])} |"
                        if seeds > 1 else ""))
    best = optimum(rows)
    if best:
        lines.append(f"\nA parabola in log(parameters) through the shape-only rows bottoms out at {best / 1e6:.1f}M parameters "
                     f"at this budget.")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, minutes: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_size, by_tokens) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in rows:
        marker = "s" if r["variant"] == "baseline" else "o"
        by_size.scatter(r["parameters"] / 1e6, r["bits_per_byte"], marker=marker, s=50)
        by_size.annotate(r["what"], (r["parameters"] / 1e6, r["bits_per_byte"]), fontsize=7,
                         xytext=(4, 4), textcoords="offset points")
        tokens, bpb = zip(*r["eval_curve"]) if r["eval_curve"] else ([], [])
        by_tokens.plot(np.array(tokens) / 1e6, bpb, marker=marker, markersize=3, label=r["what"])
    by_size.margins(x=0.35)  # room for the labels of the outermost points
    by_size.set(xscale="log", xlabel="parameters (M, log)", ylabel="validation bits/byte",
                title=f"after {minutes:g} minutes of training")
    by_tokens.set(xlabel="training tokens (M)", ylabel="validation bits/byte", title="during training")
    by_tokens.legend(fontsize=7)
    for ax in (by_size, by_tokens):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
