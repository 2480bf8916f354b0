"""Extractive QA (SQuAD v1.1): windows of question + context in, answer spans out.

The model is a causal LM with a start/end span head, so each window is
`<bos> question <eos> context-slice`: the question comes first, so that every context
token has attended to it when its span logits are computed. A long context is cut into
windows of at most `max_length` tokens whose context slices overlap by `doc_stride` tokens.
Offsets are character offsets into the context; with byte-level BPE a token's span may
include the space before it, which is why extracted answers are stripped, and a word may be cut
into several tokens, which is why a span is widened to whole words.

Training labels a window that does not hold the whole answer with NO_ANSWER (the BOS), so
at prediction time each window's best span is weighed against its own no-answer score and
the answer comes from the window that trusts its span most (`postprocess_with_scores`).
`audit_labels` decodes the training labels back to text, to check them against the answers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, NamedTuple

import datasets
import numpy as np
from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding

from pipeline.config import FinetuneConfig
from pipeline.data import require_columns
from pipeline.errors import PipelineError
from pipeline.inference import run_model
from pipeline.metrics import load_metric
from pipeline.metrics.squad.squad import normalize_answer
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


def training_answer(answers: dict) -> int:
    """Index of the gold answer to train on: the one most annotators agree on, else the first.

    SQuAD's dev set (the offline training data here) gives several answers per question, and
    the first one is sometimes an artefact: "5" for "How many solo tackles?", its answer_start
    a string search's first hit, inside "Super Bowl 50", while the two other annotators marked
    "five". Trained on, such a label teaches the wrong place and cannot even be decoded back
    (the token is " 50"). So the answer whose text (after SQuAD normalisation) the most
    annotators gave wins; ties, and single answers, keep the first.
    """
    texts = [normalize_answer(t) for t in answers["text"]]
    return max(range(len(texts)), key=lambda i: (texts.count(texts[i]), -i))


def _check_answers(examples: dict[str, list]) -> list[tuple[str, int]]:
    """The (text, answer_start) each example trains on, after checking every gold answer."""
    chosen = []
    for example_id, context, answers in zip(examples["id"], examples["context"], examples["answers"]):
        if not answers["text"]:
            raise PipelineError(f"example {example_id} has no answer; drop the row to train on it")
        for text, start in zip(answers["text"], answers["answer_start"]):
            if context[start : start + len(text)] != text:
                raise PipelineError(
                    f"example {example_id}: answer {text!r} is not in its context at answer_start={start}; "
                    "fix answer_start or drop the row"
                )
        i = training_answer(answers)
        chosen.append((answers["text"][i], answers["answer_start"][i]))
    return chosen


def _train_windows(examples: dict[str, list], tokenizer, max_length: int, doc_stride: int):
    """Tokenized windows, the answer each example trains on, and each window's start/end labels."""
    chosen = _check_answers(examples)
    enc = _tokenize(examples, tokenizer, max_length, doc_stride)
    start_positions, end_positions = [], []
    for i, (offsets, example_idx) in enumerate(zip(enc["offset_mapping"], enc["overflow_to_sample_mapping"])):
        text, start_char = chosen[example_idx]
        end_char = start_char + len(text)
        first, last = _context_range(enc.sequence_ids(i))
        if offsets[first][0] > start_char or offsets[last][1] < end_char:
            start_positions.append(NO_ANSWER)
            end_positions.append(NO_ANSWER)
            continue
        window = range(first, last + 1)
        # The answer's first token is the last one starting at or before start_char, and its
        # last token the first one ending at or after end_char. With byte-level BPE the first
        # token's span usually starts at the space before the answer.
        start_positions.append(max(k for k in window if offsets[k][0] <= start_char))
        end_positions.append(min(k for k in window if offsets[k][1] >= end_char))
    return enc, chosen, start_positions, end_positions


def prepare_train_features(examples: dict[str, list], tokenizer, max_length: int, doc_stride: int) -> dict:
    """Batched `datasets.map` function: windows with start/end token labels.

    Each example trains on one gold answer (`training_answer`); a window that does not hold
    all of it is labelled NO_ANSWER at both ends. Every gold answer must sit in its context at
    its answer_start, or PipelineError names the row.
    """
    enc, _, start_positions, end_positions = _train_windows(examples, tokenizer, max_length, doc_stride)
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "start_positions": start_positions,
        "end_positions": end_positions,
    }


def audit_labels(examples: dict[str, list], tokenizer, max_length: int, doc_stride: int) -> list[dict]:
    """Decode each training window's start/end labels back to text through the window's offsets.

    One record per window: `id`, `answer` (the gold text it trains on), `labelled` (False for a
    NO_ANSWER window), `decoded` (the context between the labelled tokens' offsets, or None),
    `tokens` (the labelled span's length in tokens, 0 if none),
    `exact` (decoded.strip() == answer.strip()), `match` (equal after SQuAD normalisation:
    what the metric would score as an exact match) and `aligned` (the answer starts and ends
    at word boundaries of the context). A labelled window that does not match caps F1
    whatever the model learns: an off-by-one, a dropped space, or (not aligned) an answer
    that starts or ends inside a word, which no token label can express.
    """
    enc, chosen, starts, ends = _train_windows(examples, tokenizer, max_length, doc_stride)
    records = []
    for i, (offsets, example_idx) in enumerate(zip(enc["offset_mapping"], enc["overflow_to_sample_mapping"])):
        answer, start_char = chosen[example_idx]
        context = examples["context"][example_idx]
        s, e = starts[i], ends[i]
        labelled = s != NO_ANSWER
        decoded = context[offsets[s][0] : offsets[e][1]] if labelled else None
        records.append({
            "id": examples["id"][example_idx],
            "answer": answer,
            "labelled": labelled,
            "decoded": decoded,
            "tokens": e - s + 1 if labelled else 0,
            "exact": labelled and decoded.strip() == answer.strip(),
            "match": labelled and normalize_answer(decoded) == normalize_answer(answer),
            "aligned": _word_boundary(context, start_char) and _word_boundary(context, start_char + len(answer)),
        })
    return records


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


def _word_boundary(text: str, k: int) -> bool:
    return k <= 0 or k >= len(text) or not (text[k - 1].isalnum() and text[k].isalnum())


class Answer(NamedTuple):
    """A predicted answer: `context[start:end] == text`; `score` is start_logit + end_logit."""

    text: str
    score: float
    start: int
    end: int


NO_SPAN = Answer("", float("-inf"), 0, 0)  # no window held a valid span


def best_span(context: str, offsets: list, start_logits, end_logits, n_best: int = 20,
              max_answer_length: int = 30, whole_words: bool = True) -> Answer:
    """The best valid span of one window among its n_best start and n_best end positions.

    `offsets` are the window's offsets with None for non-context tokens (prepare_eval_features),
    so a span never uses the question, the special tokens or padding. `whole_words=False` keeps
    the tokens' own edges (what bench/qa_decoding.py compares against).
    """
    edges = _whole_words if whole_words else _strip
    start_logits = np.asarray(start_logits)[: len(offsets)]
    end_logits = np.asarray(end_logits)[: len(offsets)]
    best = NO_SPAN
    for s in np.argsort(start_logits)[::-1][:n_best]:
        for e in np.argsort(end_logits)[::-1][:n_best]:
            if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                continue
            score = float(start_logits[s] + end_logits[e])
            if score > best.score:
                text, start, end = edges(context, offsets[s][0], offsets[e][1])
                best = Answer(text, score, start, end)
    return best


def _whole_words(context: str, start: int, end: int) -> tuple[str, int, int]:
    """The span widened to whole words, without the whitespace a byte-level token carries.

    A word the tokenizer cut into pieces can be half in a span ("such as an algorith" for
    "algorithm"); SQuAD's answers are whole words (8 of 9,043 training labels start or end inside a
    word, reports/bench/qa_labels.md), so the span takes in the rest of any word it starts or ends
    inside: +0.45 F1 and +0.4 EM on average over six runs (reports/bench/qa_decoding.md).
    """
    while start > 0 and context[start - 1].isalnum() and context[start].isalnum():
        start -= 1
    while 0 < end < len(context) and context[end - 1].isalnum() and context[end].isalnum():
        end += 1
    return _strip(context, start, end)


def _strip(context: str, start: int, end: int) -> tuple[str, int, int]:
    """Drop the whitespace a byte-level token carries (and any the span ends with)."""
    while start < end and context[start].isspace():
        start += 1
    while end > start and context[end - 1].isspace():
        end -= 1
    return context[start:end], start, end


def postprocess_with_scores(
    examples, features, all_start_logits, all_end_logits, n_best: int = 20, max_answer_length: int = 30,
    whole_words: bool = True,
) -> dict[str, Answer]:
    """Map each example id to the Answer (text, score, start, end) of its best window.

    `examples` has columns id and context; `features` is the output of prepare_eval_features;
    the logits have one row per feature (rows may be padded past the feature's length).

    A long context has several windows, and training labels a window that does not hold the
    whole answer with NO_ANSWER (the BOS at index 0). So each window's best span is weighed
    against its own no-answer score, start_logit[0] + end_logit[0]: windows are ranked by
    (best span score - null score), and the answer is the best-ranked window's span. A window
    that says "not here" strongly loses to one that holds a span, even when its raw span score
    is higher. An example with no valid span in any window gets NO_SPAN ("", -inf, 0, 0).
    """
    windows = defaultdict(list)
    for i, example_id in enumerate(features["example_id"]):
        windows[example_id].append(i)
    all_offsets = features["offset_mapping"]
    results = {}
    for example_id, context in zip(examples["id"], examples["context"]):
        best, best_margin = NO_SPAN, float("-inf")
        for i in windows[example_id]:
            span = best_span(context, all_offsets[i], all_start_logits[i], all_end_logits[i], n_best,
                             max_answer_length, whole_words)
            if span.score == float("-inf"):
                continue
            margin = span.score - float(all_start_logits[i][NO_ANSWER] + all_end_logits[i][NO_ANSWER])
            if margin > best_margin:
                best, best_margin = span, margin
        results[example_id] = best
    return results


def postprocess_predictions(examples, features, all_start_logits, all_end_logits, **decoding) -> dict[str, str]:
    """Map each example id to its predicted answer text ("" when no valid span exists); `decoding`:
    postprocess_with_scores's keywords (n_best, max_answer_length, whole_words)."""
    scored = postprocess_with_scores(examples, features, all_start_logits, all_end_logits, **decoding)
    return {example_id: answer.text for example_id, answer in scored.items()}


@dataclass(frozen=True)
class ExtractiveQA(Task):
    """SQuAD-style extractive QA with a start/end span head."""

    metrics: tuple[str, ...] = ("squad",)
    headline: ClassVar[str] = "f1"
    scoring: ClassVar[str] = "whole-word spans"  # since answers are widened to whole words (best_span)
    dev_group: ClassVar[str | None] = "title"  # early stopping holds out whole articles, as the eval split does
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
        return self.score(rows, features, self.span_logits(model, features, accelerator, cfg, tokenizer), cfg)

    def span_logits(self, model, features, accelerator, cfg: FinetuneConfig, tokenizer) -> dict[str, list]:
        """start_logits and end_logits of every window, in the features' order."""
        return run_model(model, features, self.collator(tokenizer), accelerator, cfg.micro_batch_size * 2,
                         outputs=("start_logits", "end_logits"), per_token=True)

    def score(self, rows, features, logits: dict[str, list], cfg: FinetuneConfig, **decoding) -> tuple[dict, dict]:
        """SQuAD EM/F1 of the spans decoded from `logits` (`decoding`: postprocess_predictions's keywords,
        e.g. whole_words=False, in place of the run's), and the predictions."""
        decoding = {"n_best": cfg.n_best, "max_answer_length": cfg.max_answer_length, **decoding}
        predictions = postprocess_predictions(rows, features, logits["start_logits"], logits["end_logits"], **decoding)
        metric = load_metric("squad").compute(
            predictions=[{"id": k, "prediction_text": v} for k, v in predictions.items()],
            references=[{"id": i, "answers": a} for i, a in zip(rows["id"], rows["answers"])],
        )
        return dict(metric), {"predictions": predictions}
