"""`make curves`: fine-tune every classification task at 100 and 1,000 labelled examples, pretrained and
from scratch, 3 seeds each, with TF-IDF on the same examples; results in runs/curves/curves.json."""

from __future__ import annotations

from pathlib import Path

from pipeline import curves
from pipeline.checkpoint import inspect_model_folder
from pipeline.config import FinetuneConfig
from pipeline.recipe import load_recipe
from pipeline.json_files import write_json
from pipeline.sweep import run_jobs
from pipeline.tasks import get_task


def run(ckpt: Path, tasks: list[str] | None, runs: Path, out: Path, seeds: int = curves.SEEDS,
        sizes=curves.SIZES, extra: list[str] = (), parallel: int = 2) -> Path:
    inspect_model_folder(ckpt)  # a bad checkpoint or override fails here, before hours of work
    load_recipe(FinetuneConfig, None, list(extra))
    tasks = [get_task(t).name for t in tasks] if tasks else curves.classification_tasks()
    jobs = curves.plan(tasks, out, sizes, seeds, list(extra))
    rows = [{k: v for k, v in row.items() if k in ("task", "n", "init", "seed", "accuracy", "f1", "steps")}
            for row in run_jobs(jobs, ckpt, parallel)]
    for task in tasks:
        recipe = Path("recipes/finetune") / f"{task}.yaml"
        rows += curves.tfidf_rows(task, recipe if recipe.is_file() else None, sizes, seeds)
    rows += curves.full_budget_rows(runs / "finetune", runs / "baselines", tasks)
    budget = "; ".join(f"{n}: {' '.join(curves.BUDGET[n] + curves.ALL_LABELS)}" for n in sizes)
    path = write_json(out / "curves.json", {"checkpoint": str(ckpt), "budget": budget, "rows": rows})
    print(f"wrote {path}")
    return path
