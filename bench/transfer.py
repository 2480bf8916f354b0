"""Transfer study: which fine-tuning levers make the pretrained body beat the same model from scratch.

Every variant runs from the pretrained checkpoint and from random init (init=scratch) with the same
recipe and seeds, so a pretrained row and its scratch row differ only in their starting weights
(task-adaptive LM training, a pretraining step, runs for the pretrained side only). Seeds change the
head's init and the data order. Runs go to runs/bench/transfer/ and are reused when rerun.

    python bench/transfer.py [--tasks emotion rotten_tomatoes] [--seeds 3] [--variants NAME ...]
Writes reports/bench/transfer.{json,md}.

    python bench/transfer.py --recipe --tasks rotten_tomatoes [--variants NAME ...]
measures RECIPE_VARIANTS on top of each task's recipe as it is today (what `make all` runs), with
the dev score that a choice between them may rest on. Runs go to runs/bench/transfer_recipe/, the
report to reports/bench/transfer_recipe.{json,md} (or --report).

    python bench/transfer.py --labels 1000 [...]
measures the levers on `make curves`' 1,000-label cell instead (pipeline/curves.py: its step
budget, all labels, no dev split), where a run takes a minute, so every lever gets 3 seeds. Runs go
to runs/bench/transfer_n1000/, the report to reports/bench/transfer_n1000.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import curves
from pipeline.machine import describe, label
from pipeline.sweep import Job, mean_sd, parse_with_overrides, run_jobs, save_rows, study_parser

ROOT = Path(__file__).resolve().parents[1]
# name → overrides on top of V1, the task's recipe as it was before this study (last-token head, one
# rate 3e-4, one epoch, bf16, no dev split, no adaptation), whatever the recipe files say today.
V1 = ["pooling=last", "head_learning_rate=null", "dev_fraction=0", "early_stopping_patience=0", "num_train_epochs=1",
      "eval_steps=100000", "adapt_steps=0"]
MEAN_DLR = ["pooling=mean", "head_learning_rate=3e-3"]
EARLY_STOP = ["num_train_epochs=4", "dev_fraction=0.1", "early_stopping_patience=2", "eval_steps=100"]
VARIANTS = {
    "v1 recipe": [],  # the recipe before this study: last token, one rate 3e-4, bf16
    "fp32": ["mixed_precision=no"],
    "mean pooling": ["pooling=mean"],
    "head lr 3e-3": ["head_learning_rate=3e-3"],
    "mean + head lr 3e-3": MEAN_DLR,
    "mean + head lr, body lr 1e-4": [*MEAN_DLR, "learning_rate=1e-4"],
    "mean + head lr, layer decay 0.7": [*MEAN_DLR, "layer_lr_decay=0.7"],
    "mean + head lr, 4 epochs, early stop": [*MEAN_DLR, *EARLY_STOP],
    "mean + head lr, early stop, wd 0.1, warmup 10%": [*MEAN_DLR, *EARLY_STOP, "weight_decay=0.1", "warmup_steps=90"],
    "mean + head lr, early stop, adapt 300": [*MEAN_DLR, *EARLY_STOP, "adapt_steps=300"],
    "lr 1e-3": ["learning_rate=1e-3"],
    "mean + head lr, body lr 1e-3": [*MEAN_DLR, "learning_rate=1e-3"],
    "mean + head lr, body lr 1e-3, 4 epochs, early stop": [*MEAN_DLR, "learning_rate=1e-3", *EARLY_STOP],
    "LP-FT (head alone 100 steps)": ["head_learning_rate=3e-3", "freeze_body_steps=100"],
    "mean + LP-FT (head alone 100 steps)": [*MEAN_DLR, "freeze_body_steps=100"],
}
# name → overrides on top of the task's recipe as it is today (`--recipe`). A pretrained-only variant
# changes nothing a scratch run does (task-adaptive LM training skips scratch runs; LoRA refuses a
# random body), so its scratch side is the recipe's own scratch runs.
RECIPE_VARIANTS = {
    "the recipe": [],
    "body lr 1e-3": ["learning_rate=1e-3"],
    "body lr 1e-3, 3 epochs": ["learning_rate=1e-3", "num_train_epochs=3"],
    "weight decay 0.1": ["weight_decay=0.1"],
    "adapt 100": ["adapt_steps=100", "adapt_seq_len=128"],
    "adapt 100, body lr 1e-3": ["adapt_steps=100", "adapt_seq_len=128", "learning_rate=1e-3"],
    "LoRA": ["finetune_method=lora"],
}
PRETRAINED_ONLY = {name for name, overrides in RECIPE_VARIANTS.items()
                   if "finetune_method=lora" in overrides or any(o.startswith("adapt_steps=") and o != "adapt_steps=0"
                                                                  for o in overrides)}
# name → overrides on top of the curve's cell (`--labels N`): the recipe, pooling=mean and the head at
# 3e-3, with curves.BUDGET[N]'s steps and rates, all N labels and the final weights. At 1,000 labels
# the cell now includes task-adaptive LM training (adapt_steps=60), which this study found: the
# levers measured before it run without it. (The folder of a variant is its position: v0, v1, ...)
NO_ADAPT = ["adapt_steps=0"]
CELL_VARIANTS = {
    "no adapt (the cell before)": NO_ADAPT,
    "no adapt, fp32": [*NO_ADAPT, "mixed_precision=no"],
    "no adapt, layer decay 0.8": [*NO_ADAPT, "layer_lr_decay=0.8"],
    "no adapt, LP-FT (head alone 30 steps)": [*NO_ADAPT, "freeze_body_steps=30"],
    "the curve cell": [],  # at 1,000 labels: adapt_steps=60
    "no adapt, weight decay 0.1": [*NO_ADAPT, "weight_decay=0.1"],
    "no adapt, head lr 1e-2": [*NO_ADAPT, "head_learning_rate=1e-2"],
    "no adapt, body lr 1e-3": [*NO_ADAPT, "learning_rate=1e-3"],
    "no adapt, 300 steps": [*NO_ADAPT, "max_steps=300", "eval_steps=300", "warmup_steps=30"],
    "adapt 30 steps": ["adapt_steps=30"],
    "adapt 120 steps": ["adapt_steps=120"],
    "last-token pooling (not mean)": ["pooling=last"],
    "no warmup (not 15 steps)": ["warmup_steps=0"],
}


def main() -> None:
    # --labels decides which variants --variants may name and where runs and report go: read it first
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--labels", type=int)
    pre.add_argument("--recipe", action="store_true")
    known = pre.parse_known_args()[0]
    labels, on_recipe = known.labels, known.recipe
    if labels and on_recipe:
        raise SystemExit("transfer.py: --labels and --recipe are two different bases; give one")
    name, variants = ((f"transfer_n{labels}", CELL_VARIANTS) if labels else
                      ("transfer_recipe", RECIPE_VARIANTS) if on_recipe else ("transfer", VARIANTS))
    parser = study_parser(__doc__, name, variants)
    parser.add_argument("--tasks", nargs="+", default=["emotion", "rotten_tomatoes"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--labels", type=int, choices=curves.SIZES,
                        help="measure on make curves' cell of this many labelled examples, not the recipe")
    parser.add_argument("--recipe", action="store_true",
                        help="measure on each task's recipe as it is today, not the v1 recipe")
    parser.add_argument("--parallel", type=int, default=2, help="fine-tunes at a time (one thread each on 2 cores)")
    args = parse_with_overrides(parser)

    if args.recipe and set(args.variants) & PRETRAINED_ONLY and "the recipe" not in args.variants:
        args.variants = ["the recipe", *args.variants]  # their scratch side
    jobs = []
    for name in args.variants:
        if args.labels:  # the curve's own plan for this cell, plus the variant
            index = list(CELL_VARIANTS).index(name)
            cell = curves.plan(args.tasks, Path(args.runs) / f"v{index}", (args.labels,), args.seeds,
                               [*CELL_VARIANTS[name], *args.overrides])
            jobs += [Job(j.task, j.out, j.overrides, {"variant": name, "init": j.labels["init"],
                                                      "seed": j.labels["seed"]}) for j in cell]
            continue
        base, overrides = ([], RECIPE_VARIANTS[name]) if args.recipe else (V1, VARIANTS[name])
        inits = ("pretrained",) if args.recipe and name in PRETRAINED_ONLY else ("pretrained", "scratch")
        for task in args.tasks:
            for init in inits:
                for seed in range(args.seeds):
                    out = Path(args.runs) / task / f"v{list(variants).index(name)}-{init}-s{seed}"
                    jobs.append(Job(task, out, [*base, *overrides, f"init={init}", f"seed={1337 + seed}",
                                     *args.overrides],
                                    {"variant": name, "init": init, "seed": 1337 + seed}))
    rows = run_jobs(jobs, Path(args.ckpt), args.parallel)
    write(rows, args, Path(args.report))


def write(rows: list[dict], args, report: Path) -> None:
    machine = describe()
    save_rows(report, rows, machine=machine, checkpoint=args.ckpt)
    base = (f"`make curves`' {args.labels:,}-label cell ({' '.join(curves.BUDGET[args.labels] + curves.ALL_LABELS)}, "
            f"max_train_samples={args.labels}) plus the variant" if args.labels else
            "as it is today, plus the variant" if args.recipe else "the v1 recipe plus the variant")
    lines = ["# Transfer study\n", f"Checkpoint `{args.ckpt}`; {args.seeds} seed(s) per cell; CPU: {label(machine)}.",
             f"Each run: the task's recipe, {base}.",
             "Accuracy and macro-F1 in points, mean ± sd over seeds; gain = pretrained − scratch. Dev is the kept "
             "weights' dev accuracy of the pretrained runs (the score to choose by: the eval split is read once). "
             "Tokens/s is the median fine-tuning throughput of the pretrained runs, two fine-tunes sharing the "
             "machine's cores (and, in this session, other work): a rough figure, not a benchmark.\n"]
    if args.recipe and set(args.variants) & PRETRAINED_ONLY:
        lines.append(f"{', '.join(v for v in args.variants if v in PRETRAINED_ONLY)}: pretrained runs only; "
                     "their scratch column is the recipe's own.\n")
    for task in args.tasks:
        lines += [f"## {task}\n",
                  "| variant | pretrained acc. | scratch acc. | gain | pretrained F1 | scratch F1 | gain | pretrained dev | steps | tokens/s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name in args.variants:
            scratch_of = "the recipe" if args.recipe and name in PRETRAINED_ONLY else name
            cell = {init: [r for r in rows if r["task"] == task and r["variant"] == (name, scratch_of)[i] and r["init"] == init]
                    for i, init in enumerate(("pretrained", "scratch"))}
            if not cell["pretrained"] or not cell["scratch"]:
                continue
            shown = []
            for metric in ("accuracy", "f1"):
                (pm, ps), (sm, ss) = (mean_sd([100 * r[metric] for r in cell[i]]) for i in ("pretrained", "scratch"))
                shown += [f"{pm:.1f} ± {ps:.1f}", f"{sm:.1f} ± {ss:.1f}", f"{pm - sm:+.1f}"]
            dev = [100 * r["dev"] for r in cell["pretrained"] if r.get("dev") is not None]
            shown.append("{:.1f} ± {:.1f}".format(*mean_sd(dev)) if dev else "–")
            steps = round(sum(r["steps"] for r in cell["pretrained"]) / len(cell["pretrained"]))
            speed = sorted(r["tokens_per_s"] or 0 for r in cell["pretrained"])[len(cell["pretrained"]) // 2]
            lines.append(f"| {name} | {' | '.join(shown)} | {steps} | {speed:,.0f} |")
        lines.append("")
    report.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
