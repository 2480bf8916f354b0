"""Run many training runs (a study, a learning curve) as separate processes, resumably.

Each job is one `python -m pipeline finetune` (or `pretrain`, for a job with a recipe and no task)
into its own folder, exactly as a user would run it; a job whose result file (eval.json, run.json)
exists is read back instead of rerun, so a killed study continues where it stopped. Results come
back as flat rows for tables and plots.
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

from pipeline.errors import PipelineError
from pipeline.json_files import read_json, write_json


@dataclass
class Job:
    task: str | None  # None: a pretraining job, from `recipe`
    out: Path
    overrides: list[str] = field(default_factory=list)
    labels: dict = field(default_factory=dict)  # what the study varies, copied into the result row
    recipe: str | None = None

    @property
    def result_file(self) -> Path:
        return self.out / ("run.json" if self.task is None else "eval.json")

    def command(self, ckpt: Path | None) -> list[str]:
        if self.task is None:
            stage = ["pretrain", "--recipe", str(self.recipe)]
        else:
            stage = ["finetune", "--task", self.task, "--ckpt", str(ckpt)]
        return [sys.executable, "-m", "pipeline", *stage, "--out", str(self.out), "overwrite=true", *self.overrides]


def run_jobs(jobs: list[Job], ckpt: Path | None = None, parallel: int = 1, row=None) -> list[dict]:
    """Run the jobs (`parallel` at a time, each on cores / parallel threads) and return their result rows.

    Small fine-tunes are bound by per-step Python overhead, which one thread runs: two one-thread
    processes on two cores finish a study sooner than one two-thread process.
    """
    env = os.environ.copy()
    if parallel > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    todo = [job for job in jobs if not job.result_file.is_file()]
    bar = tqdm(total=len(todo), desc=f"runs ({len(jobs) - len(todo)} already done)", dynamic_ncols=True)

    def run(job: Job) -> None:
        cmd = job.command(ckpt)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise PipelineError(f"run failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
        bar.update(1)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for future in [pool.submit(run, job) for job in todo]:
            future.result()  # the first failure stops the study with its message
    bar.close()
    row = row or result_row
    return [row(job, read_json(job.result_file)) for job in jobs]


def result_row(job: Job, report: dict) -> dict:
    metrics = report["metrics"]
    train = [json.loads(line) for line in (job.out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in train if r["split"] == "train" and "tokens_per_s" in r]
    tokens = max((r["tokens"] for r in train if r["split"] == "train" and "tokens" in r), default=0)
    return {"task": job.task, **job.labels, "accuracy": metrics.get("accuracy"), "f1": metrics.get("f1"),
            "exact_match": metrics.get("exact_match"), "steps": report["steps"], "best_step": report.get("best_step"),
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
