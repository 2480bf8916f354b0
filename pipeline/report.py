"""The scoreboard: reports/scoreboard.md and its plots, from the files under runs/ only.

Every measured figure is read from a run's run.json / eval.json / metrics.jsonl or from
runs/baselines/<task>.json. Published figures (ANCHORS) are the only constants here, and
they get a table of their own so they are never read as this project's measurements.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import yaml
from matplotlib.figure import Figure  # no pyplot: no global state, renders with Agg

from pipeline import curves

from pipeline.baselines import MODELS as BASELINES
from pipeline.json_files import read_json, write_json
from pipeline.machine import label
from pipeline.tasks import OWN_DATA_TASKS, TASKS

DASH = "—"
# (task, model, metric, published figure, source): other models, data and compute than ours.
ANCHORS = [
    ("sst2", "BERT-base (cased)", "accuracy", 92.3, "Hugging Face transformers run_glue.py example, GLUE dev"),
    ("squad", "BERT-base (uncased)", "F1", 88.5, "Hugging Face transformers run_qa.py example, v1.1 dev"),
    ("squad", "BERT-base (uncased)", "EM", 81.2, "Hugging Face transformers run_qa.py example, v1.1 dev"),
    ("squad", "logistic regression", "F1", 51.0, "Rajpurkar et al. 2016, v1.1 dev"),
    ("ag_news", "fastText, bigrams", "accuracy", 92.5, "Joulin et al. 2017, test"),
]
SPLIT_DIFFERS = {
    "ag_news": "ours trains on a seeded 8,000-row sample of the 120,000-row train split (same 7,600-row test)",
    "squad": "ours trains and evaluates on local/squad_v1.1_dev_split, the v1.1 dev set split by article "
             "(8,595 / 1,975 questions), not on train / the full dev set",
}
# The headline metric of each task family, then the second one shown.
METRICS = {"classification": (("accuracy", "accuracy"), ("f1", "macro-F1")),
           "qa": (("f1", "F1"), ("exact_match", "EM"))}
# The two times every trained row shows, said once for both tables.
TIMES = ("Training time is the optimizer steps alone; wall time is the whole training loop with its evaluations "
         "and checkpoints (not start-up); both are summed over resumed runs, and a fine-tune's include its "
         "task-adaptive LM training where its recipe has one.")


def write(runs: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    pretrain = {p.name: p for p in sorted(runs.glob("pretrain/*/"))}
    finetune = {p.name: p for p in sorted(runs.glob("finetune/*/"))}
    lines = ["# Scoreboard", "",
             f"Measured figures are read from `{runs}/` (run.json, eval.json, metrics.jsonl, baselines/); "
             f"{DASH} marks a run that does not exist yet.", ""] + _machines(pretrain, finetune)
    for section in (_pretrain_section(pretrain, out), _finetune_section(finetune, runs / "baselines", out),
                    curves.section(runs / "curves" / "curves.json", out), _anchor_section()):
        lines += section + [""]
    lines += [f"Every run's own figures (its steps, times, precision, machine and metrics): `{RUNS_FILE}`.", ""]
    write_json(out / RUNS_FILE, _run_records(pretrain, finetune))
    path = out / "scoreboard.md"
    path.write_text("\n".join(lines))
    return path


RUNS_FILE = "runs.json"
RUN_FIELDS = ("steps", "tokens", "tokens_per_s", "train_seconds", "wall_seconds", "budget", "precision",
              "fp32_overrides", "machine")


def _run_records(pretrain: dict[str, Path], finetune: dict[str, Path]) -> dict:
    """Each run's record behind the tables, so a committed scoreboard keeps its per-run figures: the training
    fields of run.json (pretraining) or eval.json (fine-tuning), and the last evaluation's metrics."""
    records = {"pretrain": {}, "finetune": {}}
    for name, run in pretrain.items():
        trained, evaluated = read_json(run / "run.json"), read_json(run / "eval.json")
        records["pretrain"][name] = {**{k: trained[k] for k in RUN_FIELDS if k in trained},
                                     "metrics": evaluated.get("evaluation", {}).get("metrics", trained.get("eval"))}
    for name, run in finetune.items():
        record = read_json(run / "eval.json")
        if "task" not in record:
            continue
        evaluation = record.get("evaluation", {})
        config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
        records["finetune"][name] = {"task": record["task"], "init": record.get("init"), "seed": config.get("seed"),
                                     **{k: record[k] for k in RUN_FIELDS if k in record},
                                     "eval_examples": evaluation.get("examples"), "scoring": evaluation.get("scoring"),
                                     "metrics": evaluation.get("metrics", record.get("metrics"))}
    return records


def _machines(pretrain: dict[str, Path], finetune: dict[str, Path]) -> list[str]:
    """One line naming what the runs' times were measured on (machine, threads, precision), from their records:
    a scoreboard shows times, and times compare only on one machine."""
    seen: Counter = Counter()
    for kind, runs, record_file in (("pretraining", pretrain, "run.json"), ("fine-tuning", finetune, "eval.json")):
        for run in runs.values():
            record = read_json(run / record_file)
            if record.get("machine"):
                mode = record.get("precision", {}).get("mode")
                mode = "fp32" if mode == "no" else mode
                seen[(label(record["machine"]), kind, record["machine"].get("torch_threads"), mode)] += 1
    if not seen:
        return []
    groups = [f"{n} {kind} run{'s' if n > 1 else ''} on {threads} thread{'s' if threads != 1 else ''} of "
              f"{name}{f', {mode}' if mode else ''}" for (name, kind, threads, mode), n in seen.items()]
    return [f"Measured on: {'; '.join(groups)}.", ""]


# ---- pretraining --------------------------------------------------------------------------
def _pretrain_section(runs: dict[str, Path], out: Path) -> list[str]:
    if not runs:
        return ["## Pretraining", "", f"{DASH} (no pretraining run yet)"]
    lines = ["## Pretraining", "", "Validation metrics are on each run's held-out corpus blocks. " + TIMES,
             "Tokens/s is tokens over training time.", "",
             "| run | parameters | tokens seen | training time | wall time | tokens/s | val loss | perplexity | bits/byte |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, run in runs.items():
        summary = read_json(run / "run.json")
        metrics = read_json(run / "eval.json").get("evaluation", {}).get("metrics", {})
        lines.append(f"| {name} | {_count(summary.get('parameters'))} | {_count(summary.get('tokens'))} | "
                     f"{_duration(summary.get('train_seconds'))} | {_duration(summary.get('wall_seconds'))} | "
                     f"{_num(summary.get('tokens_per_s'), 0)} | "
                     f"{_num(metrics.get('loss'), 3)} | {_num(metrics.get('perplexity'), 1)} | "
                     f"{_num(metrics.get('bits_per_byte'), 3)} |")
    return lines + [""] + _pretrain_plot(runs, out)


def _pretrain_plot(runs: dict[str, Path], out: Path) -> list[str]:
    """Train and validation loss against tokens seen, one colour per run."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for name, run in runs.items():
        curves = _curves(run)
        if not curves["train"]:
            continue
        steps, tokens = [r["step"] for r in curves["train"]], [r["tokens"] for r in curves["train"]]
        line, = ax.plot(tokens, [r["loss"] for r in curves["train"]], label=f"{name} train")
        # Eval rows carry no token count; every step trains on the same number of tokens.
        per_step = tokens[-1] / steps[-1]
        ax.plot([r["step"] * per_step for r in curves["eval"]], [r["loss"] for r in curves["eval"]], "o--",
                color=line.get_color(), label=f"{name} validation")
    if not ax.lines:
        return ["No pretraining loss curves yet."]
    ax.set(xlabel="tokens seen", ylabel="loss (nats/token)", title="Pretraining loss")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "pretrain_loss.png", dpi=100)
    return ["![Pretraining loss](pretrain_loss.png)"]


# ---- fine-tuning ----------------------------------------------------------------------------
def _finetune_section(runs: dict[str, Path], baseline_dir: Path, out: Path) -> list[str]:
    lines = ["## Fine-tuning", "",
             "Each task is fine-tuned from the pretrained checkpoint and, as the control, from random weights "
             "(init=scratch) with the same recipe; the gain is pretrained minus scratch on the headline metric, "
             "in points. A task fine-tuned at several seeds (`<task>-seed<N>` folders beside `<task>`; the seed "
             "changes the head's init, the training sample and the data order) shows the mean over its seeds, "
             "and the sd between them. Baselines train on the task's full train split. " + TIMES, ""]
    bars: dict[str, dict[str, float]] = {}  # task → model → headline metric
    # (family, title, tasks, benchmark): the user's own data is shown, but kept out of the mean gain and plots.
    sections = [("classification", "Classification", [n for n, t in TASKS.items() if t.kind == "classification"], True),
                ("qa", "Extractive QA", [n for n, t in TASKS.items() if t.kind == "qa"], True)]
    own = [n for n in OWN_DATA_TASKS if seed_folders(n, "pretrained", runs) or seed_folders(n, "scratch", runs)]
    if own:
        sections.append(("classification", "Your own data", own, False))
    for family, title, names, benchmark in sections:
        (_, label), (_, label2) = METRICS[family]
        lines += [f"### {title}", "",
                  f"| task | model | {label} | sd (seeds) | 95% interval | {label2} | gain from pretraining | "
                  "eval examples | training time | wall time |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        gains = {}
        for name in names:
            rows = {model: row for model, row in _task_rows(name, family, runs, baseline_dir).items()
                    if row.score is not None}
            if not rows:
                lines.append(f"| {name} |" + f" {DASH} |" * 9)
                continue
            pre, scratch = (rows[init].score if init in rows else None for init in ("pretrained", "scratch"))
            if pre is not None and scratch is not None:
                gains[name] = pre - scratch
            for model, row in rows.items():
                spread = DASH if row.seeds == 0 else f"{_num(row.sd, 1)} ({row.seeds})"
                gain = f"{gains[name]:+.1f}" if model == "pretrained" and name in gains else ""
                lines.append(f"| {name} | {model} | {_num(row.score, 1)} | {spread} | {_interval_text(row.interval)} | "
                             f"{_num(row.score2, 1)} | {gain} | {_count(row.examples, exact=True)} | "
                             f"{_duration(row.train_seconds)} | {_duration(row.wall_seconds)} |")
            if benchmark:
                bars[name] = {model: row.score for model, row in rows.items()}
        if not benchmark:
            lines += ["", "Fine-tuned on the user's own files (`dataset=`): outside the benchmark's mean gain and plots."]
        elif family == "classification":
            lines += ["", "The interval is a 95% bootstrap over the eval examples (1,000 resamples of the confusion "
                          "matrix) of the run at the recipe's seed: two runs whose intervals overlap widely are not "
                          "told apart by this eval set. Times are per run, averaged over seeds."]
            if gains:
                lines += ["", f"**Mean gain from pretraining over {len(gains)} classification tasks: "
                              f"{sum(gains.values()) / len(gains):+.1f} points** (worst: {min(gains.values()):+.1f}, "
                              f"{min(gains, key=gains.get)})."]
        lines.append("")
    sources = sorted({read_json(run / "eval.json").get("checkpoint") for name, run in runs.items()
                      if "-scratch" not in name} - {None})
    if sources:
        lines += [f"Pretrained rows start from {', '.join(f'`{s}`' for s in sources)}.", ""]
    return lines + _loss_plot(runs, out) + [""] + _bar_chart(bars, out)


class Row(NamedTuple):
    """One model's line of a task: scores in percent, means over seeds where a run has several."""
    score: float | None
    score2: float | None
    seeds: int  # fine-tuned runs behind the means (0 for a baseline)
    sd: float | None  # between seeds; None for one seed
    examples: int | None
    train_seconds: float | None
    wall_seconds: float | None
    interval: tuple[float, float] | None  # 95% bootstrap of the recipe-seed run's headline metric


def seed_folders(name: str, init: str, runs: dict[str, Path]) -> list[Path]:
    """A task's runs at one init: `<task>[-scratch]` (the recipe's seed) first, then `<task>[-scratch]-seed<N>`."""
    base = name if init == "pretrained" else f"{name}-scratch"
    extra = sorted(f for f in runs if f.startswith(f"{base}-seed") and f[len(base) + 5:].isdigit())
    return [runs[f] for f in ([base] if base in runs else []) + extra]


def _seconds(record: dict, key: str) -> float | None:
    """A fine-tune's time, with its task-adaptive LM training (eval.json's `adapt`) where it had one."""
    if record.get(key) is None:
        return None
    return record[key] + ((record.get("adapt") or {}).get(key) or 0.0)


def _task_rows(name: str, family: str, runs: dict[str, Path], baseline_dir: Path) -> dict[str, Row]:
    """model → Row: pretrained and scratch fine-tunes (averaged over seeds), then the baselines."""
    (key, _), (key2, _) = METRICS[family]
    scale = 100 if family == "classification" else 1  # SQuAD scores are percentages already
    rows = {}
    for init in ("pretrained", "scratch"):
        records = [read_json(folder / "eval.json") for folder in seed_folders(name, init, runs)]
        records = [r for r in records if r.get("evaluation", {}).get("metrics", {}).get(key) is not None]
        if not records:
            rows[init] = Row(None, None, 0, None, None, None, None, None)
            continue
        metrics = [r["evaluation"]["metrics"] for r in records]
        scores = [m[key] * scale for m in metrics]
        first = metrics[0]
        rows[init] = Row(_mean(scores), _mean([_scaled(m.get(key2), scale) for m in metrics]), len(records),
                         float(np.std(scores, ddof=1)) if len(scores) > 1 else None,
                         records[0]["evaluation"].get("examples"),
                         _mean([_seconds(r, "train_seconds") for r in records]),
                         _mean([_seconds(r, "wall_seconds") for r in records]),
                         bootstrap_accuracy(first["confusion_matrix"]) if "confusion_matrix" in first else None)
    if family == "classification":
        baselines = read_json(baseline_dir / f"{name}.json")
        for model, label in BASELINES.items():
            scores = baselines.get(model, {})
            rows[label] = Row(_scaled(scores.get(key), scale), _scaled(scores.get(key2), scale), 0, None,
                              baselines.get("eval_examples"), None, None, None)
    return rows


def _mean(values: list):
    """The mean of the values that were recorded (None: a run without this figure), or None."""
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _loss_plot(runs: dict[str, Path], out: Path) -> list[str]:
    """Training loss per task: pretrained solid, scratch dashed."""
    tasks = [name for name in TASKS if name in runs or f"{name}-scratch" in runs]
    if not tasks:
        return ["No fine-tuning loss curves yet."]
    cols = min(len(tasks), 4)
    rows = -(-len(tasks) // cols)
    fig = Figure(figsize=(3.5 * cols, 3 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, tasks):
        for init, folder, style in (("pretrained", name, "-"), ("scratch", f"{name}-scratch", "--")):
            if folder in runs and (train := _curves(runs[folder])["train"]):
                ax.plot([r["step"] for r in train], [r["loss"] for r in train], style, label=init)
        ax.set(title=name, xlabel="step", ylabel="train loss")
        if ax.lines:
            ax.legend(fontsize="small")
    for ax in axes[len(tasks):]:
        ax.remove()
    fig.suptitle("Fine-tuning loss")
    fig.tight_layout()
    fig.savefig(out / "finetune_loss.png", dpi=100)
    return ["![Fine-tuning loss](finetune_loss.png)"]


def _bar_chart(bars: dict[str, dict[str, float]], out: Path) -> list[str]:
    if not bars:
        return ["No scores yet: no comparison chart."]
    bar_figure(bars).savefig(out / "scores.png", dpi=100)
    return ["![Scores](scores.png)"]


def bar_figure(bars: dict[str, dict[str, float]]) -> Figure:
    """Headline metric per task: pretrained, scratch and baselines side by side, each bar labelled.

    Each task's bars are centred on its tick, whichever models it has (SQuAD has no baselines).
    """
    models = ["pretrained", "scratch", *BASELINES.values()]
    width = 0.8 / len(models)
    fig = Figure(figsize=(max(6, 1.5 * len(bars)), 4.5))
    ax = fig.subplots()
    offsets = {}  # (task, model) → x of the bar
    for x, (task, scores) in enumerate(bars.items()):
        present = [m for m in models if m in scores]
        offsets.update({(task, m): x + (j - (len(present) - 1) / 2) * width for j, m in enumerate(present)})
    for model in models:
        tasks = [task for task in bars if model in bars[task]]
        bars_drawn = ax.bar([offsets[task, model] for task in tasks], [bars[task][model] for task in tasks], width,
                            label=model)
        ax.bar_label(bars_drawn, fmt="%.1f", fontsize=7, padding=2, rotation=90)
    ax.set_xticks(range(len(bars)), list(bars))
    ax.set_ylim(0, 115)  # room above a bar near 100 for its label
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("accuracy, % (QA: F1)")
    ax.set_title("Fine-tuned models against baselines")
    # Below the axes: above the bars it would cover the labels of bars near 100.
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=len(models), frameon=False)
    fig.tight_layout()
    return fig


# ---- published figures ------------------------------------------------------------------------
def _anchor_section() -> list[str]:
    lines = ["## Published reference figures (not measured here)", "",
             "Other models trained on other data: for orientation only, not comparable figure for figure.", "",
             "| task | model | metric | published | source | our split |", "|---|---|---|---:|---|---|"]
    for task, model, metric, value, source in ANCHORS:
        lines.append(f"| {task} | {model} | {metric} | {value:.1f} | {source} | "
                     f"{'differs (below)' if task in SPLIT_DIFFERS else 'same'} |")
    return lines + [""] + [f"- {task}: {note}" for task, note in SPLIT_DIFFERS.items()]


# ---- reading and formatting ---------------------------------------------------------------------
def _curves(run: Path) -> dict[str, list[dict]]:
    """metrics.jsonl rows by split, one per step: a run restarted before its first checkpoint logs them again."""
    rows: dict[tuple[str, int], dict] = {}
    path = run / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        row = json.loads(line)
        rows[row["split"], row["step"]] = row  # the later row wins
    ordered = [rows[k] for k in sorted(rows, key=lambda k: k[1])]
    return {split: [r for r in ordered if r["split"] == split] for split in ("train", "eval")}


def bootstrap_accuracy(confusion: list[list[int]], resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% interval of accuracy (in points) by resampling the eval examples, which the confusion matrix lists."""
    cells = np.asarray(confusion, dtype=np.int64).ravel()
    n = int(cells.sum())
    diagonal = np.arange(len(confusion)) * (len(confusion) + 1)
    draws = np.random.default_rng(seed).multinomial(n, cells / n, size=resamples)
    accuracy = 100 * draws[:, diagonal].sum(1) / n
    return float(np.percentile(accuracy, 2.5)), float(np.percentile(accuracy, 97.5))


def _interval_text(interval) -> str:
    return DASH if interval is None else f"{interval[0]:.1f}–{interval[1]:.1f}"


def _scaled(value, scale: float):
    return None if value is None else value * scale


def _num(value, digits: int) -> str:
    return DASH if value is None else f"{value:,.{digits}f}"


def _count(value, exact: bool = False) -> str:
    if value is None:
        return DASH
    if exact or value < 1000:
        return f"{value:,}"
    return f"{value / 1e6:.1f}M" if value >= 1e6 else f"{value / 1e3:.1f}k"


def _duration(seconds) -> str:
    if seconds is None:
        return DASH
    minutes, s = divmod(round(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s" if m else f"{s}s"
