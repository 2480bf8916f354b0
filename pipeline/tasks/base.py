"""What every task family shares: where its data lives and how a split is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import datasets

from pipeline.config import FinetuneConfig
from pipeline.data import load_split, require_columns
from pipeline.errors import PipelineError


EVAL_SAMPLE_SEED = 1337  # the default seed: eval samples stay those of the runs before seeds varied


@dataclass(frozen=True)
class Task:
    name: str
    dataset: str
    train_split: str = "train"
    eval_split: str = "test"
    dataset_config: str | None = None
    metrics: tuple[str, ...] = ("accuracy",)
    text_column: str = "text"  # the input text (QA: the context), what task-adaptive LM training reads
    headline: ClassVar[str] = "accuracy"  # the metric early stopping and the scoreboard rank by
    dev_group: ClassVar[str | None] = None  # a column whose groups the dev split takes whole (None: rows)
    # Names how predictions are decoded and scored; a change to it makes `make evaluate` score old runs again,
    # whose weights have not changed ("" = as first written).
    scoring: ClassVar[str] = ""

    def unlabelled_texts(self, rows: datasets.Dataset) -> list[str]:
        """The distinct input texts of `rows`, labels dropped: all that task-adaptive LM training sees."""
        return list(dict.fromkeys(rows[self.text_column]))

    def load(self, cfg: FinetuneConfig, which: str) -> tuple[str, str, datasets.Dataset]:
        """(hub id, split name, rows) of the train or eval split, honouring recipe overrides."""
        hub_id = cfg.dataset or self.dataset
        if not hub_id:
            raise PipelineError(f"task {self.name} reads your own files: name them with dataset=path/to/folder "
                                f"(make finetune TASK={self.name} ARGS=\"dataset=...\")")
        if which == "train":
            split = cfg.train_split or self.train_split
            limit = cfg.max_train_samples
        else:
            split = cfg.eval_split or self.eval_split
            limit = cfg.max_eval_samples
        rows = self._renamed(load_split(hub_id, split, self.dataset_config), cfg, hub_id, split)
        if limit is not None and limit < len(rows):
            # A seeded shuffle first: some files are sorted by label, and a prefix would hold one class.
            # The eval sample never depends on the run's seed, so runs with different seeds are scored
            # on the same examples; the train sample does (another seed, another sample).
            rows = rows.shuffle(seed=cfg.seed if which == "train" else EVAL_SAMPLE_SEED).select(range(limit))
        return hub_id, split, rows

    def _renamed(self, rows: datasets.Dataset, cfg: FinetuneConfig, hub_id: str, split: str) -> datasets.Dataset:
        """The recipe's `text_column` and `label_column` (a dataset that names them otherwise, such as the
        user's own files) renamed to the task's, so that every later step reads the task's names."""
        own_label = getattr(self, "label_column", None)
        if cfg.label_column and own_label is None:
            raise PipelineError(f"label_column is for classification tasks; {self.name} has no labels: "
                                "remove it from the recipe")
        for given, own in ((cfg.text_column, self.text_column), (cfg.label_column, own_label)):
            if given and given != own:
                require_columns(rows, [given], hub_id, split)
                rows = rows.remove_columns([own]) if own in rows.column_names else rows
                rows = rows.rename_column(given, own)
        return rows
