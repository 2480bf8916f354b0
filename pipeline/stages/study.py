"""`make all`: pretrain the cpu recipe, then fine-tune every task from it and from scratch at each seed.

The first seed's runs go to runs/finetune/<task> and <task>-scratch, the others' to <task>-seed<N>
and <task>-scratch-seed<N>; extractive QA (SQuAD) runs at the first seed only, its fine-tunes being
the longest. Every run is a `pipeline.sweep` job, started through make's launcher as a user would
start it, so a rerun after a kill skips the finished runs and resumes the killed ones.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from pipeline.checkpoint import FINETUNE_ROOT
from pipeline.sweep import PYTHON_M, Job, launch_jobs
from pipeline.tasks import TASKS

PRETRAIN_RECIPE = "recipes/pretrain/cpu.yaml"
PRETRAIN_OUT = Path("runs/pretrain/cpu")


def plan(seeds: list[int]) -> list[Job]:
    """Every task × seed × {pretrained, scratch} fine-tune, in task order."""
    jobs = []
    for task in TASKS.values():
        for seed in seeds if task.kind != "qa" else seeds[:1]:
            suffix = "" if seed == seeds[0] else f"-seed{seed}"
            jobs.append(Job(task.name, FINETUNE_ROOT / f"{task.name}{suffix}", [f"seed={seed}"]))
            jobs.append(Job(task.name, FINETUNE_ROOT / f"{task.name}-scratch{suffix}", [f"seed={seed}", "init=scratch"]))
    return jobs


def run(seeds: list[int], parallel: int, launch: str | None) -> None:
    """Pretraining alone on every core, then the fine-tunes `parallel` at a time; `launch` is the
    command line that runs `-m pipeline ...` words (make's $(LAUNCH)), by default this python -m."""
    launcher = shlex.split(launch) if launch else PYTHON_M
    launch_jobs([Job(None, PRETRAIN_OUT, recipe=PRETRAIN_RECIPE)], launcher=launcher, stream=True)
    launch_jobs(plan(seeds), PRETRAIN_OUT / "final", parallel, launcher, stream=True)
