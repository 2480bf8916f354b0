"""LoRA against full fine-tuning from the default checkpoint: score, trainable parameters, step time,
memory and checkpoint size, side by side on one machine.

Each task runs both methods at each seed, the pair at the same time (one thread each on a 2-core
CPU), so that both see the same machine. The runs are the default recipes, cut where a full recipe
would not fit a session (SST-2 to a seeded 8,000 phrases, SQuAD to 2,000 questions, one epoch,
no time budget, 500 evaluated questions): the same cut for both methods. LoRA trains its matrices and
the pooling layer's attention at the default lora_learning_rate (1e-3, which a one-seed pilot on SST-2
picked: docs/recipes.md), and the head at the recipe's head rate, like full fine-tuning.

`--large` is the memory case instead: a Llama of about 1B parameters built from a config (random
weights, the default tokenizer), fine-tuned for a few SST-2 steps with each method, one at a time.

    make bench-lora [ARGS="--tasks sst2 trec --seeds 1337 key=value ..."]
    make bench-lora ARGS="--large"
Writes reports/bench/lora{,_large}.{json,md}; the runs go to runs/bench/lora/.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for `pipeline`
from pipeline.config import FinetuneConfig  # noqa: E402
from pipeline.machine import describe, label  # noqa: E402
from pipeline.sweep import Job, mean_sd, parse_with_overrides, result_row, run_jobs, save_rows  # noqa: E402

METHODS = {"full": [], "lora": ["finetune_method=lora"]}  # LoRA's factors at the default lora_learning_rate
TASKS = {  # the default recipe of each task, cut alike for both methods
    "sst2": ["max_train_samples=8000"],
    "trec": [],
    "emotion": [],
    "squad": ["max_train_samples=2000", "num_train_epochs=1", "max_train_minutes=null", "max_eval_samples=500"],
}
SEEDS = [1337, 1338, 1339]
# The memory case: a Llama of ~1.0B parameters (TinyLlama's width and depth) on the default tokenizer.
LARGE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
             num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True)
LARGE_RUN = ["max_steps=3", "global_batch_size=8", "micro_batch_size=8", "max_train_samples=64", "dev_fraction=0",
             "early_stopping_patience=0", "max_eval_samples=32", "save_steps=1000", "logging_steps=1", "warmup_steps=0"]


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def lora_row(job: Job, report: dict) -> dict:
    """result_row, plus what the two methods differ in: parameters, memory, step time, sizes on disk."""
    final = job.out / "final"
    checkpoints = sorted((job.out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return {**result_row(job, report), "trainable": report["parameters"]["trainable"],
            "total": report["parameters"]["total"], "peak_memory": report["memory"]["bytes"],
            "memory_kind": report["memory"]["kind"], "optimizer_state_bytes": report["memory"]["optimizer_state_bytes"],
            "step_seconds": report["train_seconds"] / max(1, report["steps"]),
            "final_bytes": folder_bytes(final) - folder_bytes(final / "adapter"),
            "adapter_bytes": folder_bytes(final / "adapter"),
            "checkpoint_bytes": folder_bytes(checkpoints[-1]) if checkpoints else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default="runs/pretrain/cpu/final")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument("--large", action="store_true", help="the ~1B memory case instead")
    parser.add_argument("--runs", default="runs/bench/lora")
    parser.add_argument("--report", default="reports/bench/lora")
    args = parse_with_overrides(parser)
    if args.large:
        return large(args)
    jobs = [Job(task, Path(args.runs) / f"{task}-{method}-s{seed}",
                [*TASKS[task], *extra, f"seed={seed}", *args.overrides], {"method": method, "seed": seed})
            for task in args.tasks for seed in args.seeds for method, extra in METHODS.items()]
    rows = run_jobs(jobs, Path(args.ckpt), parallel=2, row=lora_row)  # each pair of methods side by side
    machine = describe()
    save_rows(Path(args.report), rows, machine=machine, checkpoint=args.ckpt,
              lora_rate=FinetuneConfig.lora_learning_rate)
    write(rows, args, machine, Path(args.report))


def mean(rows: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


def write(rows: list[dict], args, machine: dict, report: Path) -> None:
    lines = ["# LoRA against full fine-tuning\n",
             f"`make bench-lora` (bench/lora.py), checkpoint `{args.ckpt}`, seeds {args.seeds}, the two methods of a "
             f"seed side by side, one thread each; CPU: {label(machine)}. LoRA: r=8, alpha=16, every linear layer "
             f"of the blocks and the token embedding, lora_learning_rate {FinetuneConfig.lora_learning_rate}; the head "
             "and the pooling layer's attention in full. Trainable: the share of the model's own parameters. Score: accuracy, F1 for squad (mean ± sd "
             "over seeds). Memory: the process's peak RSS. Optimizer: bytes of optimizer state.\n",
             "| task | full | LoRA | gap | trainable (LoRA) | step time LoRA/full | optimizer state LoRA/full "
             "| peak RSS full → LoRA | final/ | final/adapter/ | resume checkpoint full → LoRA |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    gaps, ratios, states, shares = [], [], [], []
    for task in dict.fromkeys(r["task"] for r in rows):
        by = {m: [r for r in rows if r["task"] == task and r["method"] == m] for m in METHODS}
        # accuracy is a fraction, SQuAD's F1 already in points
        points = (lambda r: r["f1"]) if task == "squad" else (lambda r: 100 * r["accuracy"])
        (full, full_sd), (lora, lora_sd) = (mean_sd([points(r) for r in by[m]]) for m in METHODS)
        share = mean(by["lora"], "trainable") / mean(by["full"], "total")  # of the model's own parameters
        ratio = mean(by["lora"], "step_seconds") / mean(by["full"], "step_seconds")
        state = mean(by["lora"], "optimizer_state_bytes") / mean(by["full"], "optimizer_state_bytes")
        gaps.append(lora - full), ratios.append(ratio), states.append(state), shares.append(share)
        mb = lambda rs, key: f"{mean(rs, key) / 2**20:,.0f} MB"  # noqa: E731
        lines.append(f"| {task} | {full:.1f} ± {full_sd:.1f} | {lora:.1f} ± {lora_sd:.1f} | {lora - full:+.1f} | "
                     f"{share:.1%} | {ratio:.2f} | {state:.2f} | {mb(by['full'], 'peak_memory')} → "
                     f"{mb(by['lora'], 'peak_memory')} | {mb(by['lora'], 'final_bytes')} | "
                     f"{mean(by['lora'], 'adapter_bytes') / 2**20:.1f} MB | {mb(by['full'], 'checkpoint_bytes')} → "
                     f"{mb(by['lora'], 'checkpoint_bytes')} |")
    lines += ["", "Targets: mean gap ≥ −2 points at ≤ 10% trainable; optimizer state ≤ 0.1× full; step time ≤ 0.8× full.",
              f"Measured: mean gap {statistics.fmean(gaps):+.1f} points at {max(shares):.1%} trainable at most; "
              f"optimizer state {max(states):.2f}× at most; step time {min(ratios):.2f}–{max(ratios):.2f}×."]
    report.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def large(args) -> None:
    """Peak memory of a few steps of each method on a ~1B Llama built from a config, one run at a time."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    ckpt = Path(args.runs) / "large-checkpoint"
    if not (ckpt / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(args.ckpt)
        config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **LARGE)
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(ckpt)  # fp32 weights, as a brought checkpoint would load
        tokenizer.save_pretrained(ckpt)
    jobs = [Job("sst2", Path(args.runs) / f"large-{method}", [*LARGE_RUN, *extra, *args.overrides], {"method": method})
            for method, extra in METHODS.items()]
    rows = run_jobs(jobs, ckpt, parallel=1, row=lora_row)  # one at a time: each may take most of the memory
    machine = describe()
    report = Path(f"{args.report}_large")
    save_rows(report, rows, machine=machine, model=LARGE)
    lines = ["# LoRA against full fine-tuning: a ~1B model's memory\n",
             f"`make bench-lora ARGS=\"--large\"`: a Llama built from a config ({LARGE}), random weights, "
             f"SST-2, {' '.join(LARGE_RUN)}; one run at a time; CPU: {label(machine)}.\n",
             "| method | parameters | trainable | peak RSS | optimizer state | s/step | final/ | final/adapter/ |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['total'] / 1e9:.2f}B | {r['trainable'] / 1e6:,.1f}M "
                     f"({r['trainable'] / r['total']:.2%}) | {r['peak_memory'] / 2**30:.1f} GiB | "
                     f"{r['optimizer_state_bytes'] / 2**30:.2f} GiB | {r['step_seconds']:.1f} | "
                     f"{r['final_bytes'] / 2**30:.1f} GiB | {r['adapter_bytes'] / 2**20:.0f} MB |")
    report.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
