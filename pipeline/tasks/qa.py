"""Extractive QA (SQuAD v1.1): windows of question + context in, answer spans out.

The model is a causal LM with a start/end span head, so each window is
`<bos> question <eos> context-slice <eos>`: the question comes first, so that every context
token has attended to it when its span logits are computed. A long context is cut into
windows of at most `max_length` tokens whose context slices overlap by `doc_stride` tokens.
Offsets are character offsets into the context; with byte-level BPE a token's span may
include the space before it, which is why extracted answers are stripped.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import partial

import datasets
import numpy as np
from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding

from pipeline.config import FinetuneConfig
from pipeline.data import require_columns
from pipeline.errors import PipelineError
from pipeline.inference import run_model
from pipeline.metrics import load_metric
from pipeline.tasks.base import Task

COLUMNS = ["id", "question", "context", "answers"]

NO_ANSWER = 0  # label of a window that does not hold the whole answer: the BOS token


def _tokenize(examples: dict[str, list], tokenizer, max_length: int, doc_stride: int):
    # Leading whitespace in some SQuAD questions only costs tokens.
    questions = [q.lstrip() for q in examples["question"]]
    # Check that each window has room for more context than the overlap; otherwise the Rust
    # tokenizer raises a bare truncation error or panics (a panic is not even an Exception).
    n_special = tokenizer.num_special_tokens_to_add(pair=True)
    question_ids = tokenizer(questions, add_special_tokens=False)["input_ids"]
    for example_id, ids in zip(examples["id"], question_ids):
        room = max_length - n_special - len(ids)
        if room <= doc_stride:
            raise PipelineError(
                f"example {example_id}: its question takes {len(ids)} tokens, leaving {room} of "
                f"max_length={max_length} for the context, which must be more than doc_stride={doc_stride}; "
                "raise max_length, lower doc_stride, or drop the row"
            )
    return tokenizer(
        questions,
        examples["context"],
        truncation="only_second",  # never cut the question, only the context
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )


def _context_range(sequence_ids: list) -> tuple[int, int]:
    """First and last token index of the context in a window."""
    first = sequence_ids.index(1)
    last = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
    return first, last


def prepare_train_features(examples: dict[str, list], tokenizer, max_length: int, doc_stride: int) -> dict:
    """Batched `datasets.map` function: windows with start/end token labels (first answer only)."""
    for example_id, context, answers in zip(examples["id"], examples["context"], examples["answers"]):
        if not answers["text"]:
            raise PipelineError(f"example {example_id} has no answer; drop the row to train on it")
        text, start = answers["text"][0], answers["answer_start"][0]
        if context[start : start + len(text)] != text:
            raise PipelineError(
                f"example {example_id}: answer {text!r} is not in its context at answer_start={start}; "
                "fix answer_start or drop the row"
            )
    enc = _tokenize(examples, tokenizer, max_length, doc_stride)
    start_positions, end_positions = [], []
    for i, (offsets, example_idx) in enumerate(zip(enc["offset_mapping"], enc["overflow_to_sample_mapping"])):
        answers = examples["answers"][example_idx]
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        first, last = _context_range(enc.sequence_ids(i))
        if offsets[first][0] > start_char or offsets[last][1] < end_char:
            start_positions.append(NO_ANSWER)
            end_positions.append(NO_ANSWER)
            continue
        window = range(first, last + 1)
        # The answer's first token is the last one starting at or before start_char, and its
        # last token the first one ending at or after end_char.
        start_positions.append(max(k for k in window if offsets[k][0] <= start_char))
        end_positions.append(min(k for k in window if offsets[k][1] >= end_char))
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "start_positions": start_positions,
        "end_positions": end_positions,
    }


def prepare_eval_features(examples: dict[str, list], tokenizer, max_length: int, doc_stride: int) -> dict:
    """Batched `datasets.map` function: windows that remember their example and context offsets."""
    enc = _tokenize(examples, tokenizer, max_length, doc_stride)
    example_ids, offset_mapping = [], []
    for i, (offsets, example_idx) in enumerate(zip(enc["offset_mapping"], enc["overflow_to_sample_mapping"])):
        example_ids.append(examples["id"][example_idx])
        # None marks question and special tokens, so a predicted span can never use them.
        offset_mapping.append([o if s == 1 else None for o, s in zip(offsets, enc.sequence_ids(i))])
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "example_id": example_ids,
        "offset_mapping": offset_mapping,
    }


def postprocess_with_scores(
    examples, features, all_start_logits, all_end_logits, n_best: int = 20, max_answer_length: int = 30
) -> dict[str, tuple[str, float]]:
    """Map each example id to (answer text, start_logit + end_logit) of its best span.

    `examples` has columns id and context; `features` is the output of prepare_eval_features;
    the logits have one row per feature (rows may be padded past the feature's length).
    An example with no valid span in any window gets ("", -inf).
    """
    windows = defaultdict(list)
    for i, example_id in enumerate(features["example_id"]):
        windows[example_id].append(i)
    all_offsets = features["offset_mapping"]
    results = {}
    for example_id, context in zip(examples["id"], examples["context"]):
        best_text, best_score = "", float("-inf")
        for i in windows[example_id]:
            offsets = all_offsets[i]
            start_logits = np.asarray(all_start_logits[i])[: len(offsets)]
            end_logits = np.asarray(all_end_logits[i])[: len(offsets)]
            for s in np.argsort(start_logits)[::-1][:n_best]:
                for e in np.argsort(end_logits)[::-1][:n_best]:
                    if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = float(start_logits[s] + end_logits[e])
                    if score > best_score:
                        best_text, best_score = context[offsets[s][0] : offsets[e][1]].strip(), score
        results[example_id] = (best_text, best_score)
    return results


def postprocess_predictions(
    examples, features, all_start_logits, all_end_logits, n_best: int = 20, max_answer_length: int = 30
) -> dict[str, str]:
    """Map each example id to its predicted answer text ("" when no valid span exists)."""
    scored = postprocess_with_scores(examples, features, all_start_logits, all_end_logits, n_best, max_answer_length)
    return {example_id: text for example_id, (text, _) in scored.items()}


@dataclass(frozen=True)
class ExtractiveQA(Task):
    """SQuAD-style extractive QA with a start/end span head."""

    metrics: tuple[str, ...] = ("squad",)
    kind = "qa"
    model_kind = "qa"
    head = AutoModelForQuestionAnswering

    def label_names(self, rows: datasets.Dataset, hub_id: str, split: str) -> list[str]:
        require_columns(rows, COLUMNS, hub_id, split)
        return []  # spans, not classes

    def head_config(self, label_names: list[str]) -> dict:
        return {}

    def collator(self, tokenizer):
        return DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def preprocess(self, rows: datasets.Dataset, tokenizer, cfg: FinetuneConfig, hub_id: str, split: str,
                   label_names: list[str], train: bool) -> tuple[datasets.Dataset, dict]:
        require_columns(rows, COLUMNS, hub_id, split)
        prepare = prepare_train_features if train else prepare_eval_features
        features = rows.map(partial(prepare, tokenizer=tokenizer, max_length=cfg.max_length, doc_stride=cfg.doc_stride),
                            batched=True, remove_columns=rows.column_names, load_from_cache_file=False)
        info = {"examples": len(rows), "windows": len(features)}
        if train:
            info["windows_without_answer"] = int(np.sum(np.asarray(features["start_positions"]) == NO_ANSWER))
        return features, info

    def evaluate(self, model, rows, features, accelerator, cfg: FinetuneConfig, tokenizer,
                 label_names: list[str]) -> tuple[dict, dict]:
        logits = run_model(model, features, self.collator(tokenizer), accelerator, cfg.micro_batch_size * 2,
                           outputs=("start_logits", "end_logits"), per_token=True)
        predictions = postprocess_predictions(rows, features, logits["start_logits"], logits["end_logits"],
                                              cfg.n_best, cfg.max_answer_length)
        metric = load_metric("squad").compute(
            predictions=[{"id": k, "prediction_text": v} for k, v in predictions.items()],
            references=[{"id": i, "answers": a} for i, a in zip(rows["id"], rows["answers"])],
        )
        return dict(metric), {"predictions": predictions}
