"""SQuAD study: what a real budget buys extractive QA, and the rates and optimizer it should use.

Two parts, each a set of fine-tunes of recipes/finetune/squad.yaml from the pretrained checkpoint,
scored on the 1,975 validation questions:
- sweep: every variant on all 8,595 training questions for `--sweep-epochs` epochs (1 by default, a
  cheap proxy for the recipe's several), varying the learning rate, the optimizer (AdamW against
  Muon, which also pretrained the body) and task-adaptive LM training on the contexts;
- curve: the recipe itself at 1,000, 4,000 and all training questions, pretrained and scratch, to
  show how F1 grows with labelled questions.
Runs go two at a time (one thread each) into runs/bench/qa/ and are reused when rerun.

    make bench-qa                                   # both parts (about 80 minutes on 2 cores)
    .venv/bin/python bench/qa.py --parts sweep --variants "adamw 5e-4"
Writes reports/bench/qa.{md,json,png}.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for `pipeline`
from pipeline.machine import describe, label  # noqa: E402
from pipeline.sweep import Job, parse_with_overrides, run_jobs, save_rows, study_parser  # noqa: E402

TASK = "squad"
ALL = 8595  # training questions of local/squad_v1.1_dev_split
# Every variant names its optimizer and rates, so the table does not move when the recipe does.
ADAMW, MUON = ["optimizer=adamw"], ["optimizer=muon"]
VARIANTS = {
    "adamw 5e-4": [*ADAMW, "learning_rate=5e-4"],
    "adamw 1e-3": [*ADAMW, "learning_rate=1e-3"],
    "muon 0.005": [*MUON, "muon_learning_rate=0.005", "learning_rate=5e-4"],
    "muon 0.01": [*MUON, "muon_learning_rate=0.01", "learning_rate=5e-4"],
    "muon 0.02": [*MUON, "muon_learning_rate=0.02", "learning_rate=5e-4"],
    "muon 0.005, adapt 300": [*MUON, "muon_learning_rate=0.005", "learning_rate=5e-4", "adapt_steps=300"],
    # Discriminative rates (issue "Pretraining must pay off"): the new span head 6x faster, or each
    # layer below the top at 0.7x the one above it.
    "muon 0.005, head lr 3e-3": [*MUON, "muon_learning_rate=0.005", "learning_rate=5e-4", "head_learning_rate=3e-3"],
    "muon 0.005, layer decay 0.7": [*MUON, "muon_learning_rate=0.005", "learning_rate=5e-4", "layer_lr_decay=0.7"],
}
SIZES = (1000, 4000, ALL)


def main() -> None:
    parser = study_parser(__doc__, "qa", VARIANTS)
    parser.add_argument("--parts", nargs="+", default=["sweep", "curve"], choices=["sweep", "curve"])
    parser.add_argument("--sweep-epochs", type=float, default=1.0)
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--parallel", type=int, default=2, help="fine-tunes at a time (one thread each on 2 cores)")
    parser.add_argument("--full-runs", default="runs/finetune",
                        help="where the curve's all-questions runs go: make all's own squad runs, shared")
    args = parse_with_overrides(parser)

    jobs = []
    if "sweep" in args.parts:
        # No time budget in the sweep: every variant takes the same steps, however fast it runs.
        base = ["max_train_samples=null", f"num_train_epochs={args.sweep_epochs:g}", "max_train_minutes=null"]
        jobs += [Job(TASK, Path(args.runs) / "sweep" / f"{name.replace(' ', '-').replace(',', '')}-e{args.sweep_epochs:g}",
                     [*base, *VARIANTS[name], *args.overrides], {"part": "sweep", "variant": name, "init": "pretrained"})
                 for name in args.variants]
    if "curve" in args.parts:
        jobs += [Job(TASK, curve_folder(args, n, init),
                     [f"max_train_samples={'null' if n >= ALL else n}", f"init={init}", *args.overrides],
                     {"part": "curve", "questions": min(n, ALL), "init": init})
                 for n in args.sizes for init in ("pretrained", "scratch")]
    rows = run_jobs(jobs, Path(args.ckpt), args.parallel)
    machine = describe()
    report = Path(args.report)
    save_rows(report, rows, checkpoint=args.ckpt, sweep_epochs=args.sweep_epochs, machine=machine)
    text = markdown(rows, args, machine)
    report.with_suffix(".md").write_text(text)
    curve = [r for r in rows if r["part"] == "curve"]
    if curve:
        plot(curve, report.with_suffix(".png"))
    print(text)


def curve_folder(args, n: int, init: str) -> Path:
    """The all-questions point of the curve is `make all`'s squad run (same recipe, same seed): run once, shared."""
    if n >= ALL:
        return Path(args.full_runs) / (TASK if init == "pretrained" else f"{TASK}-scratch")
    return Path(args.runs) / "curve" / f"n{n}-{init}"


def markdown(rows: list[dict], args, machine: dict) -> str:
    lines = ["# SQuAD study\n",
             f"Checkpoint `{args.ckpt}`; {len(rows)} fine-tunes of `recipes/finetune/squad.yaml`, two at a time "
             f"with one thread each, on {label(machine)}. Scored on the 1,975 validation questions "
             "(EM and F1, 0–100). Minutes are optimizer-step time with other runs sharing the two cores: "
             "not a speed figure.\n"]
    sweep = [r for r in rows if r["part"] == "sweep"]
    if sweep:
        lines += [f"## Sweep: all {ALL:,} training questions, {args.sweep_epochs:g} epoch(s), pretrained\n",
                  "| variant | F1 | EM | steps | minutes |", "|---|---:|---:|---:|---:|"]
        best = max(r["f1"] for r in sweep)
        for r in sweep:
            mark = " **(best)**" if r["f1"] == best else ""
            lines.append(f"| {r['variant']}{mark} | {r['f1']:.1f} | {r['exact_match']:.1f} | {r['steps']} | "
                         f"{r['train_seconds'] / 60:.1f} |")
        lines.append("")
    curve = [r for r in rows if r["part"] == "curve"]
    if curve:
        lines += ["## Learning curve: the recipe at each number of training questions\n",
                  "| questions | pretrained F1 | pretrained EM | scratch F1 | scratch EM | gain (F1) | minutes (pretrained) |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for n in sorted({r["questions"] for r in curve}):
            pre, scratch = (next(r for r in curve if r["questions"] == n and r["init"] == i)
                            for i in ("pretrained", "scratch"))
            lines.append(f"| {n:,} | {pre['f1']:.1f} | {pre['exact_match']:.1f} | {scratch['f1']:.1f} | "
                         f"{scratch['exact_match']:.1f} | {pre['f1'] - scratch['f1']:+.1f} | "
                         f"{pre['train_seconds'] / 60:.1f} |")
        lines += ["", "![F1 against training questions](qa.png)"]
    return "\n".join(lines) + "\n"


def plot(curve: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for init, style in (("pretrained", "o-"), ("scratch", "s--")):
        points = sorted((r["questions"], r["f1"]) for r in curve if r["init"] == init)
        ax.plot(*zip(*points), style, label=init)
    ax.set(xscale="log", xlabel="training questions (log)", ylabel="validation F1", title="SQuAD: F1 against labels")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
