"""Linear probes on a checkpoint's frozen hidden states, against the same body at random init.

Does pretraining pay off before any fine-tuning? For every layer (0 = embeddings .. top = after
the final norm) and pooling (last token, mean of the text's tokens; see pipeline/features.py)
a logistic regression is fit on the train sample's features and scored on the eval sample, for
the pretrained body and for the body at seeded random init (what init=scratch fine-tuning
starts from). Train/eval samples and max_length are the task's fine-tuning recipe's.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: no global state, renders with Agg
from tqdm.auto import tqdm

from pipeline.attention import check_backend
from pipeline.checkpoint import inspect_model_folder
from pipeline.config import FinetuneConfig
from pipeline.errors import PipelineError
from pipeline.features import POOLINGS, PROBE_CS, PROBE_FOLDS, linear_probe, pooled_hidden_states
from pipeline.heads import load_head
from pipeline.json_files import write_json
from pipeline.tasks import TASKS, get_task
from pipeline.tasks.classification import scores

INITS = {"pretrained": "pretrained", "random": "scratch"}  # our name → load_head's init


def run(task_name: str, cfg: FinetuneConfig, ckpt: Path, out: Path) -> dict:
    started = time.time()
    task = get_task(task_name)
    if task.kind != "classification":
        usable = ", ".join(n for n, t in TASKS.items() if t.kind == "classification")
        raise PipelineError(f"probe works on classification tasks only, and {task.name} is a {task.kind} task: "
                            f"use one of {usable}")
    ckpt = Path(ckpt)
    inspect_model_folder(ckpt)  # a bad checkpoint fails here, before any data is loaded
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_backend(cfg.attn_implementation, device, training=False)
    hub_id, train_split, train_rows = task.load(cfg, "train")
    _, eval_split, eval_rows = task.load(cfg, "eval")
    labels = task.label_names(train_rows, hub_id, train_split)
    task.label_names(eval_rows, hub_id, eval_split)

    results, splits = [], {}
    for name, init in INITS.items():
        # The head is unused; the same head config keeps the random body identical to init=scratch's.
        model, tokenizer = load_head(ckpt, task.head, init, cfg.seed, cfg.attn_implementation,
                                     **task.head_config(labels))
        if not splits:  # one tokenizer (the checkpoint's) for both inits
            for which, split, rows in (("train", train_split, train_rows), ("eval", eval_split, eval_rows)):
                splits[which] = task.preprocess(rows, tokenizer, cfg, hub_id, split, labels, which == "train")
            print(f"{task.name}: {len(train_rows):,} train ({train_split}), {len(eval_rows):,} eval ({eval_split}) "
                  f"examples, max_length={cfg.max_length}, checkpoint {ckpt}")
        body = model.base_model.float().to(device)
        x = {which: pooled_hidden_states(body, features, task.collator(tokenizer), cfg.micro_batch_size * 2,
                                         device, tokenizer.bos_token_id, desc=f"{name} {which}")
             for which, (features, _) in splits.items()}
        y = {which: np.asarray(features["labels"]) for which, (features, _) in splits.items()}
        n_states, hidden = body.config.num_hidden_layers + 1, body.config.hidden_size
        for layer in tqdm(range(n_states), desc=f"{name} probes", unit="layer"):
            for pooling in POOLINGS:
                predicted, c = linear_probe(x["train"][pooling][layer], y["train"], x["eval"][pooling][layer],
                                            cfg.seed)
                results.append({"init": name, "layer": layer, "pooling": pooling, "C": c,
                                **scores(predicted, y["eval"], len(labels))})
        del model, body, x

    majority = np.bincount(y["train"], minlength=len(labels)).argmax()
    report = {
        "task": task.name, "checkpoint": str(ckpt), "dataset": hub_id, "train_split": train_split,
        "eval_split": eval_split, "train_examples": len(train_rows), "eval_examples": len(eval_rows),
        "truncated": {w: info["truncated"] for w, (_, info) in splits.items()}, "labels": labels,
        "max_length": cfg.max_length, "seed": cfg.seed, "layers": n_states, "hidden_size": hidden,
        "layer_meaning": f"0 = embeddings, i = decoder layer i's output, {n_states - 1} = after the final norm",
        "poolings": {"last": "last non-padding token", "mean": "mean over the text's tokens, BOS and padding excluded"},
        "probe": {"model": "StandardScaler + LogisticRegression (lbfgs)", "fit_on": "train",
                  "C": f"chosen from {list(PROBE_CS)} by {PROBE_FOLDS}-fold stratified CV on train"},
        "majority": scores(np.full_like(y["eval"], majority), y["eval"], len(labels)),
        "results": results,
        # Chosen on the eval split the probes are scored on: an optimistic figure, for both inits alike.
        "best": {name: max((r for r in results if r["init"] == name),
                           key=lambda r: (r["accuracy"], r["f1"], -r["layer"])) for name in INITS},
        "device": device.type, "seconds": round(time.time() - started, 1),
    }
    write_json(out / "probe.json", report)
    table = _markdown(report)
    (out / "probe.md").write_text(table)
    _plot(report, out / "probe.png")
    print(table)
    print(f"wrote {out / 'probe.json'}, probe.md, probe.png in {report['seconds']:.0f} s")
    return report


def _markdown(report: dict) -> str:
    score = {(r["init"], r["layer"], r["pooling"]): r for r in report["results"]}
    lines = [f"# Linear probes: {report['task']}", "",
             f"Checkpoint `{report['checkpoint']}`; {report['dataset']}: {report['train_examples']:,} train "
             f"({report['train_split']}), {report['eval_examples']:,} eval ({report['eval_split']}) examples, "
             f"max_length {report['max_length']}, seed {report['seed']}. Layers: {report['layer_meaning']}. "
             f"Logistic regression fit on train features, its C chosen from {list(PROBE_CS)} by "
             f"{PROBE_FOLDS}-fold cross-validation on train; scored on eval (%). "
             f"Majority class: {100 * report['majority']['accuracy']:.1f} accuracy.", "",
             "| layer | pooling | pretrained acc | random acc | Δ acc | pretrained F1 | random F1 | Δ F1 |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for layer in range(report["layers"]):
        for pooling in POOLINGS:
            p, r = score["pretrained", layer, pooling], score["random", layer, pooling]
            cells = [f"{100 * p[m]:.1f} | {100 * r[m]:.1f} | {100 * (p[m] - r[m]):+.1f}" for m in ("accuracy", "f1")]
            lines.append(f"| {layer} | {pooling} | {cells[0]} | {cells[1]} |")
    best = "; ".join(f"{name} layer {b['layer']} {b['pooling']}: {100 * b['accuracy']:.1f} accuracy, "
                     f"{100 * b['f1']:.1f} F1" for name, b in report["best"].items())
    lines += ["", f"Best (picked on the eval split, so optimistic): {best}.", "", "![Probe accuracy](probe.png)", ""]
    return "\n".join(lines)


def _plot(report: dict, path: Path) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    layers = list(range(report["layers"]))
    for name, color in zip(INITS, ("tab:blue", "tab:orange")):
        for pooling, style in zip(POOLINGS, ("-", "--")):
            accuracy = [100 * r["accuracy"] for r in report["results"] if r["init"] == name and r["pooling"] == pooling]
            ax.plot(layers, accuracy, style, color=color, marker="o", label=f"{name}, {pooling}")
    ax.axhline(100 * report["majority"]["accuracy"], color="gray", linestyle=":", label="majority class")
    ax.set_xticks(layers)
    ax.set_xlabel(f"layer (0 = embeddings, {layers[-1]} = after the final norm)")
    ax.set_ylabel("eval accuracy, %")
    ax.set_title(f"Linear probes on frozen features: {report['task']}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
