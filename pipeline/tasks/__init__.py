"""Fine-tuning tasks. A task is one declarative entry: dataset, columns, splits, metrics.

The family (classification or extractive QA) supplies the head, preprocessing and
evaluation; adding a task on an existing family is one line below.
"""

from __future__ import annotations

from pipeline.errors import PipelineError
from pipeline.tasks.classification import Classification
from pipeline.tasks.qa import ExtractiveQA

TASKS = {
    "sst2": Classification("sst2", "stanfordnlp/sst2", text_column="sentence", eval_split="validation"),
    "rotten_tomatoes": Classification("rotten_tomatoes", "cornell-movie-review-data/rotten_tomatoes"),
    "imdb": Classification("imdb", "stanfordnlp/imdb"),
    "ag_news": Classification("ag_news", "fancyzhx/ag_news", metrics=("accuracy", "f1")),
    "trec": Classification("trec", "CogComp/trec", label_column="coarse_label"),
    "emotion": Classification("emotion", "dair-ai/emotion", metrics=("accuracy", "f1")),
    # SQuAD v1.1 train is not mirrored here: train on the official dev set split by article.
    # With hub access: dataset=rajpurkar/squad eval_split=validation (see README).
    "squad": ExtractiveQA("squad", "local/squad_v1.1_dev_split", eval_split="validation", text_column="context"),
}

# Your own labelled data: no dataset of its own, `dataset=path` names the files (docs/recipes.md#your-own-data).
# Outside the benchmark: studies, curves, baselines and the scoreboard's mean gain read TASKS only.
OWN_DATA_TASKS = {
    "classify": Classification("classify", ""),
}


def get_task(name: str):
    tasks = {**TASKS, **OWN_DATA_TASKS}
    if not name:  # `make finetune` without TASK=...
        raise PipelineError(f"no task given: pass --task (make TASK=...), one of {', '.join(tasks)}")
    if name not in tasks:
        raise PipelineError(f"unknown task {name!r}: use one of {', '.join(tasks)}")
    return tasks[name]
