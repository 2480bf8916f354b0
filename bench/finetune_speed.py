"""Fine-tuning throughput: where the time of a step of short texts goes, and what buys it back.

SST-2's phrases average about 13 tokens, so a step of 32 of them is mostly per-step overhead
(Python, optimizer, kernel launches), not matmuls. Each variant fine-tunes SST-2 from the
pretrained checkpoint for a fixed number of texts, one run at a time on all cores, and reports
tokens/s two ways: all trained tokens over the optimizer-step time (compilation included), and
the median of the logged windows (steady state). SQuAD's 384-token windows are the control: a
step there is matmul-bound already.

    make bench-finetune [ARGS="--variants NAME ... key=value"]
Writes reports/bench/finetune_speed.{json,md}; the runs go to runs/bench/finetune_speed/.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for `pipeline`
from pipeline.machine import describe, label  # noqa: E402
from pipeline.sweep import Job, parse_with_overrides, result_row, run_jobs, save_rows, study_parser  # noqa: E402

# Timing only: no dev split, no checkpoints, a small eval sample, no time budget.
TIMING = ["dev_fraction=0", "early_stopping_patience=0", "max_eval_samples=200", "eval_steps=100000",
          "save_steps=100000", "logging_steps=10", "max_train_minutes=null"]
TEXTS = 6400  # per SST-2 variant: 200 steps of 32, 50 of 128
VARIANTS = {  # name → (task, overrides)
    "sst2, batch 32, unbucketed": ("sst2", ["global_batch_size=32", "micro_batch_size=32", "group_by_length=false"]),
    "sst2, batch 32, length-bucketed (recipe)": ("sst2", ["global_batch_size=32", "micro_batch_size=32"]),
    "sst2, batch 32, bucketed, compiled": ("sst2", ["global_batch_size=32", "micro_batch_size=32", "compile=true"]),
    "sst2, batch 128, bucketed": ("sst2", ["global_batch_size=128", "micro_batch_size=128"]),
    "sst2, batch 128, bucketed, compiled": ("sst2", ["global_batch_size=128", "micro_batch_size=128", "compile=true"]),
    "squad, recipe (batch 32 of 384-token windows)": ("squad", ["max_steps=20"]),
    "squad, compiled": ("squad", ["max_steps=20", "compile=true"]),
}


def overall_speed(job: Job, report: dict) -> dict:
    """result_row plus the logged tokens over optimizer-step seconds for the whole run."""
    row = result_row(job, report)
    return {**row, "overall_tokens_per_s": row["tokens"] / report["train_seconds"]}


def main() -> None:
    args = parse_with_overrides(study_parser(__doc__, "finetune_speed", VARIANTS))

    jobs = []
    for name in args.variants:
        task, overrides = VARIANTS[name]
        batch = next((int(o.split("=")[1]) for o in overrides if o.startswith("global_batch_size=")), None)
        steps = [f"max_steps={TEXTS // batch}"] if batch else []
        folder = name.split(" (")[0].replace(", ", "-").replace(" ", "")
        jobs.append(Job(task, Path(args.runs) / folder, [*TIMING, *steps, *overrides, *args.overrides],
                        {"variant": name}))
    rows = run_jobs(jobs, Path(args.ckpt), parallel=1, row=overall_speed)  # one at a time: a speed figure
    write(rows, args, Path(args.report))


def write(rows: list[dict], args, report: Path) -> None:
    machine = describe()
    save_rows(report, rows, machine=machine, checkpoint=args.ckpt)
    lines = ["# Fine-tuning throughput\n",
             f"`bench/finetune_speed.py`, checkpoint `{args.ckpt}`, one run at a time on {machine['torch_threads']} "
             f"threads; CPU: {label(machine)}. SST-2 variants train on {TEXTS:,} texts each. "
             "Overall = all trained tokens / optimizer-step seconds (compilation included); steady = median "
             "of the logged windows.\n",
             "| variant | steps | tokens | overall tokens/s | steady tokens/s | s/step |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['steps']} | {r['tokens']:,} | {r['overall_tokens_per_s']:,.0f} | "
                     f"{r['tokens_per_s'] or 0:,.0f} | {r['train_seconds'] / max(1, r['steps']):.3f} |")
    report.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
