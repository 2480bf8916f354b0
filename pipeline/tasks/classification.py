"""Text classification (topic, sentiment, question type, emotion) with a sequence-classification head.

The decoder reads the text left to right; transformers' Llama classification head scores the
last non-padding token, which has seen the whole text.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np
from sklearn.metrics import confusion_matrix
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from pipeline.config import FinetuneConfig
from pipeline.data import load_splits, require_columns
from pipeline.errors import PipelineError
from pipeline.inference import run_model
from pipeline.metrics import load_metric
from pipeline.tasks.base import Task


@dataclass(frozen=True)
class Classification(Task):
    label_column: str = "label"
    kind = "classification"
    model_kind = "classifier"  # what checkpoint.model_kind calls a saved model of this family
    head = AutoModelForSequenceClassification

    def load(self, cfg: FinetuneConfig, which: str) -> tuple[str, str, datasets.Dataset]:
        hub_id, split, rows = super().load(cfg, which)
        feature = rows.features.get(self.label_column)
        if feature is not None and not isinstance(feature, datasets.ClassLabel):
            # The user's own files (CSV, JSON Lines) carry bare labels. Their classes are the distinct values
            # over every split, sorted, so every split, run and evaluation numbers them alike.
            names = self._names_in_files(hub_id, cfg.label_column or self.label_column)
            try:
                rows = rows.cast_column(self.label_column, datasets.ClassLabel(names=names))
            except ValueError as e:  # e.g. a negative id below -1
                raise PipelineError(f"dataset {hub_id} split '{split}' column '{self.label_column}': "
                                    f"{str(e).splitlines()[0][:160]}: use class names or ids 0..n-1") from None
        return hub_id, split, rows

    def _names_in_files(self, hub_id: str, column: str) -> list[str]:
        values = set()
        for rows in load_splits(hub_id, self.dataset_config).values():
            if column in rows.column_names:
                values.update(rows.unique(column))
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return [str(i) for i in range(max(values) + 1)]  # ids: each keeps its number (-1 stays "no label")
        if not all(isinstance(v, str) for v in values):
            kinds = sorted({type(v).__name__ for v in values})
            raise PipelineError(f"dataset {hub_id} column '{column}' holds {', '.join(kinds)} values: "
                                "a class label is a name (text) or an integer id")
        return sorted(values)

    def label_names(self, rows: datasets.Dataset, hub_id: str, split: str) -> list[str]:
        require_columns(rows, [self.text_column, self.label_column], hub_id, split)
        feature = rows.features[self.label_column]
        if not isinstance(feature, datasets.ClassLabel):
            raise PipelineError(f"dataset {hub_id} column '{self.label_column}' is not a ClassLabel, so it has no "
                                "label names: cast it with datasets.ClassLabel(names=[...])")
        return list(feature.names)

    def head_config(self, label_names: list[str]) -> dict:
        return {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
                "label2id": {name: i for i, name in enumerate(label_names)}}

    def collator(self, tokenizer):
        return DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def preprocess(self, rows: datasets.Dataset, tokenizer, cfg: FinetuneConfig, hub_id: str, split: str,
                   label_names: list[str], train: bool) -> tuple[datasets.Dataset, dict]:
        """Tokenize (truncating to max_length) and check every label against the label names."""
        require_columns(rows, [self.text_column, self.label_column], hub_id, split)
        labels = np.asarray(list(rows[self.label_column]))
        bad = np.flatnonzero((labels < 0) | (labels >= len(label_names)))
        if len(bad):
            raise PipelineError(
                f"dataset {hub_id} split '{split}' row {bad[0]} has label {labels[bad[0]]}, outside 0..{len(label_names) - 1} "
                f"({', '.join(label_names)}); {len(bad)} rows are affected: fix the labels or use a labelled split"
            )
        texts = list(rows[self.text_column])
        empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if empty:
            raise PipelineError(f"dataset {hub_id} split '{split}' row {empty[0]} has an empty text "
                                f"({len(empty)} rows): drop empty rows before fine-tuning")
        ids = tokenizer(texts)["input_ids"]
        long = [i for i, x in enumerate(ids) if len(x) > cfg.max_length]
        # The tokenizer is saved with the run: it records the length and side it was trained with, and
        # cuts (keeping BOS) the same way at inference; here it cuts the long texts.
        tokenizer.truncation_side, tokenizer.model_max_length = cfg.truncation_side, cfg.max_length
        tokenizer.init_kwargs["truncation_side"] = cfg.truncation_side  # save_pretrained writes init_kwargs' keys
        if long:
            cut = tokenizer([texts[i] for i in long], truncation=True, max_length=cfg.max_length)["input_ids"]
            for i, x in zip(long, cut):
                ids[i] = x
        features = datasets.Dataset.from_dict({
            "input_ids": ids, "attention_mask": [[1] * len(x) for x in ids], "labels": labels.tolist()})
        return features, {"examples": len(rows), "truncated": len(long)}

    def evaluate(self, model, rows, features, accelerator, cfg: FinetuneConfig, tokenizer,
                 label_names: list[str]) -> tuple[dict, dict]:
        logits = run_model(model, features, self.collator(tokenizer), accelerator,
                           cfg.micro_batch_size * 2)["logits"]
        predictions = np.stack(logits).argmax(-1)
        references = np.asarray(features["labels"])
        metrics = scores(predictions, references, len(label_names))
        metrics["confusion_matrix"] = confusion_matrix(references, predictions,
                                                       labels=list(range(len(label_names)))).tolist()
        return metrics, {}


def scores(predictions: np.ndarray, references: np.ndarray, n_labels: int) -> dict:
    """Accuracy and macro-F1 over all classes (a class never predicted counts as F1 0)."""
    labels = list(range(n_labels))
    return {"accuracy": load_metric("accuracy").compute(predictions=predictions, references=references)["accuracy"],
            "f1": load_metric("f1").compute(predictions=predictions, references=references, labels=labels)["f1"]}
