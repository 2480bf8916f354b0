"""Evaluate checkpoints into their run's eval.json; with no checkpoint given, every run, then the report.

eval.json sits in the run folder, beside final/. Fine-tuning writes it first (task, init,
training metrics and times); this stage keeps those fields and adds an `evaluation` block:
the metrics measured here, with the fingerprint of the weights they were measured on and the task's
`scoring` (how its predictions are decoded). A run whose fingerprint and scoring still match is
skipped, so evaluating everything again is cheap, and a change to a task's decoding re-scores old runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator

from pipeline import baselines, corpus, report
from pipeline.checkpoint import (CONFIG_FILE, EVAL_FILE, FINAL, PREDICTIONS_FILE, fingerprint, inspect_model_folder,
                                 load_causal_lm, load_tokenizer, load_weights, model_kind)
from pipeline.config import FinetuneConfig, PretrainConfig
from pipeline.recipe import load_run_config
from pipeline.errors import PipelineError
from pipeline.json_files import read_json, write_json
from pipeline.lm import evaluate_lm, generate_samples
from pipeline.stages.pretrain import SAMPLE_PROMPTS
from pipeline.tasks import TASKS, get_task
from pipeline.tasks.base import Task


def run(ckpts: list[Path], runs: Path, report_dir: Path) -> None:
    if ckpts:  # asked for by name: always evaluated
        for folder in ckpts:
            evaluate(folder)
        return
    folders = sorted(runs.glob("pretrain/*/")) + sorted(runs.glob("finetune/*/"))
    if not folders:
        raise PipelineError(f"no runs under {runs}/pretrain or {runs}/finetune: run make pretrain first, "
                            "or pass --runs")
    for run_dir in folders:
        final = run_dir / FINAL
        if not (final / "config.json").is_file():
            print(f"{run_dir}: not finished (no final/), skipped")
        elif _up_to_date(read_json(run_dir / EVAL_FILE), final):
            print(f"{run_dir}: eval.json is up to date, skipped")
        else:
            evaluate(final)
    # Baselines for the classification tasks that have been fine-tuned (make all fine-tunes them all).
    tuned = {}  # task → the recipe of its run (the pretrained one if both exist), for its eval sample
    for run_dir in sorted(runs.glob("finetune/*/"), reverse=True):  # "<task>" sorts after "<task>-scratch"
        task_name = read_json(run_dir / EVAL_FILE).get("task")
        if task_name in TASKS and TASKS[task_name].kind == "classification" and (run_dir / CONFIG_FILE).is_file():
            tuned[task_name] = load_run_config(FinetuneConfig, run_dir / CONFIG_FILE)
    for name, cfg in sorted(tuned.items()):
        baselines.run(name, runs / "baselines", cfg.max_eval_samples, cfg.seed)
    print(f"wrote {report.write(runs, report_dir)}")


def _scoring(record: dict) -> str:
    """How the run's task decodes and scores predictions today ("" for a language model)."""
    return TASKS[record["task"]].scoring if record.get("task") in TASKS else ""


def _up_to_date(record: dict, final: Path) -> bool:
    """The run's last evaluation measured these weights, scored as its task scores today."""
    evaluation = record.get("evaluation", {})
    return evaluation.get("fingerprint") == fingerprint(final) and evaluation.get("scoring", "") == _scoring(record)


def evaluate(folder: Path) -> dict:
    """Measure one model folder and record the result in its run's eval.json."""
    config = inspect_model_folder(folder)  # not a checkpoint: PipelineError, exit 2
    kind = model_kind(config)
    run_dir = folder.parent
    if not (run_dir / CONFIG_FILE).is_file():
        raise PipelineError(f"{run_dir}/config.yaml is missing, so {folder} cannot be evaluated on its run's data: "
                            "pass a final/ folder written by make pretrain or make finetune")
    started = time.time()
    record = read_json(run_dir / EVAL_FILE)
    if kind == "causal_lm":
        record.setdefault("kind", "pretrain")
        evaluation = _evaluate_lm(folder, run_dir)
    else:
        evaluation = _evaluate_task(folder, config, record)
    record["evaluation"] = {"model": str(folder), "model_kind": kind, "fingerprint": fingerprint(folder),
                            "scoring": _scoring(record), **evaluation, "seconds": time.time() - started}
    write_json(run_dir / EVAL_FILE, record)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in evaluation["metrics"].items() if isinstance(v, float))
    print(f"{run_dir}: {shown} → {run_dir / EVAL_FILE}")
    return record


def _evaluate_lm(folder: Path, run_dir: Path) -> dict:
    """Validation loss, perplexity and bits-per-byte on the run's own packed validation blocks."""
    cfg = load_run_config(PretrainConfig, run_dir / CONFIG_FILE)
    model, tokenizer = load_causal_lm(folder)
    data = corpus.build(cfg)  # cached by the run that trained the model, else rebuilt the same way
    if data.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise PipelineError(f"the corpus cache for {run_dir}/config.yaml has another tokenizer than {folder}: "
                            f"delete {corpus.cache_root()} and evaluate again, so it is rebuilt as in training")
    acc = _accelerator()
    metrics = evaluate_lm(model.to(acc.device), data.eval, acc, tokenizer, cfg.micro_batch_size, cfg.doc_masking)
    texts = generate_samples(model, tokenizer, SAMPLE_PROMPTS, cfg.sample_tokens, seed=cfg.seed)
    return {"split": "validation", "blocks": len(data.eval), "metrics": metrics,
            "samples": [{"prompt": p, "text": t} for p, t in zip(SAMPLE_PROMPTS, texts)]}


def _evaluate_task(folder: Path, config, record: dict) -> dict:
    """The task's metrics on its eval split, as the run's recipe selects it."""
    run = load_task_run(folder, config, record)
    acc = _accelerator()
    metrics, extras = run.task.evaluate(run.model.to(acc.device), run.rows, run.features, acc, run.cfg, run.tokenizer,
                                        run.labels)
    if "predictions" in extras:  # official SQuAD format: {question id: answer text}
        write_json(folder.parent / PREDICTIONS_FILE, extras["predictions"])
    return {"dataset": run.hub_id, "split": run.split, **run.info, "metrics": metrics}


@dataclass
class TaskRun:
    """A fine-tuned model with its run's task, recipe, tokenizer and evaluation data, loaded and checked."""

    task: Task
    cfg: FinetuneConfig
    hub_id: str
    split: str
    rows: datasets.Dataset
    labels: list[str]
    tokenizer: object
    model: torch.nn.Module
    features: datasets.Dataset
    info: dict


def load_task_run(folder: Path, config, record: dict) -> TaskRun:
    """Everything that scoring `folder` (a run's final/, whose `config` inspect_model_folder read) on its run's
    eval split needs; `record` is the run's eval.json. Benches that re-score runs use it too."""
    run_dir, kind = folder.parent, model_kind(config)
    if "task" not in record:
        raise PipelineError(f"{run_dir}/eval.json does not name the task of {folder}: fine-tune it again "
                            "with overwrite=true, which writes eval.json")
    task = get_task(record["task"])
    if kind != task.model_kind:
        raise PipelineError(f"{folder} is a {kind} checkpoint, but {run_dir}/eval.json names task {task.name}: "
                            "fine-tune it again with overwrite=true")
    cfg = load_run_config(FinetuneConfig, run_dir / CONFIG_FILE)
    hub_id, split, rows = task.load(cfg, "eval")
    labels = task.label_names(rows, hub_id, split)
    if kind == "classifier" and [config.id2label[i] for i in range(config.num_labels)] != labels:
        raise PipelineError(f"{folder} predicts {list(config.id2label.values())}, but {hub_id} '{split}' has labels "
                            f"{labels}: evaluate it on the dataset it was fine-tuned on")
    tokenizer = load_tokenizer(folder, config)
    model, loading = load_weights(folder, task.head, config, output_loading_info=True)
    if loading["missing_keys"]:  # transformers would have filled them with random weights
        raise PipelineError(f"{folder} lacks weights {sorted(loading['missing_keys'])[:3]}: "
                            "save it again with save_pretrained()")
    features, info = task.preprocess(rows, tokenizer, cfg, hub_id, split, labels, False)
    return TaskRun(task, cfg, hub_id, split, rows, labels, tokenizer, model, features, info)


@cache
def _accelerator() -> Accelerator:
    # One process, full precision: every run is measured the same way, whatever it trained in.
    return Accelerator(mixed_precision="no")


