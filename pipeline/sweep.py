"""Run many fine-tunes (a study, a learning curve) as separate processes, resumably.

Each job is one `python -m pipeline finetune` into its own folder, exactly as a user would run
it; a job whose eval.json exists is read back instead of rerun, so a killed study continues
where it stopped. Results come back as flat rows for tables and plots.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from pipeline.errors import PipelineError


@dataclass
class Job:
    task: str
    out: Path
    overrides: list[str] = field(default_factory=list)
    labels: dict = field(default_factory=dict)  # what the study varies, copied into the result row


def run_jobs(jobs: list[Job], ckpt: Path, log=print) -> list[dict]:
    rows = []
    bar = tqdm(jobs, desc="fine-tunes", dynamic_ncols=True)
    for job in bar:
        bar.set_postfix_str(f"{job.task} {' '.join(f'{k}={v}' for k, v in job.labels.items())}")
        report = job.out / "eval.json"
        if not report.is_file():
            cmd = [sys.executable, "-m", "pipeline", "finetune", "--task", job.task, "--ckpt", str(ckpt),
                   "--out", str(job.out), "overwrite=true", *job.overrides]
            done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if done.returncode != 0:
                raise PipelineError(f"fine-tune failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
        rows.append(result_row(job, json.loads(report.read_text())))
    return rows


def result_row(job: Job, report: dict) -> dict:
    metrics = report["metrics"]
    train = [json.loads(line) for line in (job.out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in train if r["split"] == "train" and "tokens_per_s" in r]
    return {"task": job.task, **job.labels, "accuracy": metrics.get("accuracy"), "f1": metrics.get("f1"),
            "exact_match": metrics.get("exact_match"), "steps": report["steps"], "best_step": report.get("best_step"),
            "train_seconds": report["train_seconds"], "wall_seconds": report["wall_seconds"],
            "tokens_per_s": statistics.median(speeds) if speeds else None, "run": str(job.out)}


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
