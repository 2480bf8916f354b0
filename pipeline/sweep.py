"""Run many training runs (a study, a learning curve, `make all`) as separate processes, resumably.

Each job is one `python -m pipeline finetune` (or `pretrain`, for a job with a recipe and no task)
into its own folder, exactly as a user would run it, through a launcher (`python -m`, or make's
`$(LAUNCH)`: torchrun or `accelerate launch` for several processes). A job whose result file
(eval.json, run.json) exists is skipped and a killed one resumes from its last checkpoint, so a
study continues where it stopped. Results come back as flat rows for tables and plots.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from pipeline.checkpoint import CHECKPOINTS, EVAL_FILE, FINAL, METRICS_FILE, RUN_FILE
from pipeline.errors import PipelineError
from pipeline.json_files import read_json, write_json

PYTHON_M = (sys.executable, "-m")  # the default launcher: this interpreter, one process


@dataclass
class Job:
    task: str | None  # None: a pretraining job, from `recipe`
    out: Path
    overrides: list[str] = field(default_factory=list)
    labels: dict = field(default_factory=dict)  # what the study varies, copied into the result row
    recipe: str | None = None

    @property
    def result_file(self) -> Path:
        return self.out / (RUN_FILE if self.task is None else EVAL_FILE)

    def command(self, ckpt: Path | None, launcher=PYTHON_M) -> list[str]:
        if self.task is None:
            stage = ["pretrain", "--recipe", str(self.recipe)]
        else:
            stage = ["finetune", "--task", self.task, "--ckpt", str(ckpt)]
        # A run killed after a checkpoint continues from it; anything else in the folder (a run killed
        # before its first checkpoint, or one that finished without writing its result) starts over.
        killed = (self.out / CHECKPOINTS).is_dir() and not (self.out / FINAL).exists()
        restart = "resume=true" if killed else "overwrite=true"
        return [*launcher, "pipeline", *stage, "--out", str(self.out), restart, *self.overrides]


def run_jobs(jobs: list[Job], ckpt: Path | None = None, parallel: int = 1, row=None) -> list[dict]:
    """Run the jobs (see launch_jobs) and return their result rows (`row(job, result)`, default result_row)."""
    launch_jobs(jobs, ckpt, parallel)
    row = row or result_row
    return [row(job, read_json(job.result_file)) for job in jobs]


def launch_jobs(jobs: list[Job], ckpt: Path | None = None, parallel: int = 1, launcher=PYTHON_M,
                stream: bool = False) -> None:
    """Run the jobs without a result file, `parallel` at a time, each on cores / parallel threads
    (an exported OMP_NUM_THREADS wins), through `launcher` (the words before `pipeline STAGE ...`).

    Small fine-tunes are bound by per-step Python overhead, which one thread runs: two one-thread
    processes on two cores finish a study sooner than one two-thread process. Quiet, a progress bar
    counts the runs and a failure shows the end of its stderr; `stream`, every run prints as it goes.
    The first failure stops the study: runs not yet started are cancelled.
    """
    env = os.environ.copy()
    if parallel > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    todo = [job for job in jobs if not job.result_file.is_file()]
    if stream:
        for job in jobs:
            if job not in todo:
                print(f"{job.out}: finished, skipped", flush=True)
    bar = tqdm(total=len(todo), desc=f"runs ({len(jobs) - len(todo)} already done)", dynamic_ncols=True,
               disable=stream)

    def run(job: Job) -> None:
        cmd = job.command(ckpt, launcher)
        done = subprocess.run(cmd, env=env, **({} if stream else {"capture_output": True, "text": True}))
        if done.returncode != 0:
            tail = "" if stream else f"\n{done.stderr[-2000:]}"
            raise PipelineError(f"run failed ({done.returncode}): {' '.join(cmd)}{tail}")
        bar.update(1)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(run, job) for job in todo]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the runs already going finish; no new one starts
            raise
    bar.close()


def result_row(job: Job, report: dict) -> dict:
    metrics = report["metrics"]
    train = [json.loads(line) for line in (job.out / METRICS_FILE).read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in train if r["split"] == "train" and "tokens_per_s" in r]
    tokens = max((r["tokens"] for r in train if r["split"] == "train" and "tokens" in r), default=0)
    return {"task": job.task, **job.labels, "accuracy": metrics.get("accuracy"), "f1": metrics.get("f1"),
            "exact_match": metrics.get("exact_match"), "steps": report["steps"], "best_step": report.get("best_step"),
            "dev": next(iter((report.get("best_dev") or {}).values()), None),  # the kept weights' dev score
            "train_seconds": report["train_seconds"], "wall_seconds": report["wall_seconds"],
            "tokens_per_s": statistics.median(speeds) if speeds else None, "tokens": tokens, "run": str(job.out)}


def study_parser(doc: str, name: str, variants: dict, default: list | None = None) -> argparse.ArgumentParser:
    """The options every fine-tuning study shares: --ckpt, --variants, --runs runs/bench/<name>,
    --report reports/bench/<name>; the study adds its own, then calls parse_with_overrides."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--ckpt", default="runs/pretrain/cpu/final")
    parser.add_argument("--variants", nargs="+", default=default or list(variants), choices=list(variants),
                        metavar="NAME")
    parser.add_argument("--runs", default=f"runs/bench/{name}")
    parser.add_argument("--report", default=f"reports/bench/{name}")
    parser.epilog = "key=value words anywhere on the line override every run's recipe (they win)."
    return parser


def parse_with_overrides(parser, argv: list[str] | None = None):
    """parser's arguments, plus `overrides`: every `key=value` word, wherever it stands.

    A study's list options (--variants A B, --sizes 1 2) would otherwise swallow the key=value
    words that follow them; no option value here contains "=", so the split is unambiguous.
    """
    argv = sys.argv[1:] if argv is None else argv
    overrides = [w for w in argv if "=" in w and not w.startswith("-")]
    args = parser.parse_args([w for w in argv if w not in overrides])
    args.overrides = overrides
    return args


def save_rows(report: Path, rows: list[dict], **meta) -> None:
    """A study's results as `<report>.json`: what it ran on (`meta`: machine, checkpoint, ...) and its rows."""
    write_json(report.with_suffix(".json"), {**meta, "rows": rows})


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
