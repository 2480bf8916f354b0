"""QA windows, labels and postprocessing, with a small tokenizer trained on real SQuAD contexts."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import Dataset

from pipeline.errors import PipelineError
from pipeline.tasks.qa import (
    postprocess_predictions,
    postprocess_with_scores,
    prepare_eval_features,
    prepare_train_features,
)
from pipeline.tokenizer import train_tokenizer

SQUAD = "/work/shared/data/local/squad_v1.1_dev_split/train.parquet"


@pytest.fixture(scope="module")
def rows():
    return pq.read_table(SQUAD).slice(0, 400).to_pylist()


@pytest.fixture(scope="module")
def tokenizer(rows):
    return train_tokenizer(sorted({r["context"] for r in rows}), vocab_size=1000)


def batch(*rows):
    return {key: [r[key] for r in rows] for key in rows[0]}


def example(rows, answer, start=None, id="q1"):
    """The first SQuAD row (a 775-character Super Bowl 50 paragraph) with another answer."""
    start = rows[0]["context"].index(answer) if start is None else start
    return {**rows[0], "id": id, "answers": {"text": [answer], "answer_start": [start]}}


def features(examples, tokenizer, max_length, doc_stride):
    train = prepare_train_features(examples, tokenizer, max_length, doc_stride)
    evals = prepare_eval_features(examples, tokenizer, max_length, doc_stride)
    assert evals["input_ids"] == train["input_ids"]  # the same windows, in the same order
    return train, evals


def peaked_logits(evals, starts, ends):
    """Logits of -10 everywhere but +10 at the given start/end index of each window."""
    length = max(len(ids) for ids in evals["input_ids"])  # padded, as a batched model returns them
    start_logits = np.full((len(starts), length), -10.0)
    end_logits = np.full((len(ends), length), -10.0)
    for i, (s, e) in enumerate(zip(starts, ends)):
        start_logits[i, s] = end_logits[i, e] = 10.0
    return start_logits, end_logits


def first_context_token(evals, i=0):
    return next(k for k, o in enumerate(evals["offset_mapping"][i]) if o is not None)


def two_windows(tokenizer, ex):
    """max_length and doc_stride that cut the example's context into exactly two windows."""
    n_question = len(tokenizer(ex["question"], add_special_tokens=False)["input_ids"])
    n_context = len(tokenizer(ex["context"], add_special_tokens=False)["input_ids"])
    # Each window holds 60% of the context; the second starts `stride` tokens before the
    # first one ends, and still reaches the end because 2 * 60% - 10% > 100%.
    room, stride = int(0.6 * n_context), n_context // 10
    return n_question + 3 + room, stride


def test_answer_recovered_from_offsets(rows, tokenizer):
    ex = example(rows, "Denver Broncos")
    train, evals = features(batch(ex), tokenizer, max_length=384, doc_stride=128)
    assert len(train["input_ids"]) == 1
    start, end = train["start_positions"][0], train["end_positions"][0]
    assert 0 < start <= end
    logits = peaked_logits(evals, [start], [end])
    assert postprocess_predictions(batch(ex), evals, *logits) == {"q1": "Denver Broncos"}
    text, score = postprocess_with_scores(batch(ex), evals, *logits)["q1"]
    assert (text, score) == ("Denver Broncos", 20.0)


def test_answer_only_in_second_window(rows, tokenizer):
    ex = example(rows, "the Arabic numerals 50")  # the end of the paragraph
    max_length, stride = two_windows(tokenizer, ex)
    train, evals = features(batch(ex), tokenizer, max_length, stride)
    assert len(train["input_ids"]) == 2
    assert (train["start_positions"][0], train["end_positions"][0]) == (0, 0)
    start, end = train["start_positions"][1], train["end_positions"][1]
    assert 0 < start <= end
    # The first window favours a span of its own, but less than the second favours the answer.
    k = first_context_token(evals)
    start_logits, end_logits = peaked_logits(evals, [k, start], [k + 2, end])
    start_logits[0, k] = end_logits[0, k + 2] = 5.0
    assert postprocess_predictions(batch(ex), evals, start_logits, end_logits) == {"q1": "the Arabic numerals 50"}


def test_answer_cut_by_window_end_is_labelled_in_the_next_window(rows, tokenizer):
    ex = rows[0]
    max_length, stride = two_windows(tokenizer, ex)
    evals = prepare_eval_features(batch(ex), tokenizer, max_length, stride)
    first, second = evals["offset_mapping"]
    # An answer from the first window's second-to-last context token into the token after it.
    end_of_first = [o for o in first if o is not None][-1][1]
    start_char = [o for o in first if o is not None][-2][0]
    end_char = next(o[1] for o in second if o is not None and o[0] == end_of_first)
    while ex["context"][start_char] == " ":  # tokens carry the space before a word
        start_char += 1
    answer = ex["context"][start_char:end_char]
    ex = example(rows, answer, start=start_char)
    train = prepare_train_features(batch(ex), tokenizer, max_length, stride)
    assert (train["start_positions"][0], train["end_positions"][0]) == (0, 0)
    start, end = train["start_positions"][1], train["end_positions"][1]
    assert 0 < start < end
    assert ex["context"][second[start][0] : second[end][1]].strip() == answer


def test_no_valid_span_gives_empty_prediction(rows, tokenizer):
    ex = example(rows, "Denver Broncos")
    _, evals = features(batch(ex), tokenizer, max_length=384, doc_stride=128)
    k = first_context_token(evals)
    cases = {
        "end before start": ([k + 10], [k + 2]),
        "question tokens only": ([2], [5]),
        "longer than max_answer_length": ([k], [k + 40]),
    }
    for case, (starts, ends) in cases.items():
        logits = peaked_logits(evals, starts, ends)
        # n_best=1: the only candidate span is the impossible one.
        scored = postprocess_with_scores(batch(ex), evals, *logits, n_best=1, max_answer_length=30)
        assert scored == {"q1": ("", float("-inf"))}, case
        assert postprocess_predictions(batch(ex), evals, *logits, n_best=1) == {"q1": ""}, case


def test_answer_not_in_context_raises(rows, tokenizer):
    ex = example(rows, "Denver Broncos", id="bad-row")
    ex["answers"] = {"text": ["Denver Broncos"], "answer_start": [ex["answers"]["answer_start"][0] + 1]}
    with pytest.raises(PipelineError, match="bad-row.*not in its context"):
        prepare_train_features(batch(ex), tokenizer, max_length=384, doc_stride=128)


def test_question_longer_than_window_raises(rows, tokenizer):
    # Unchecked, the Rust tokenizer fails here with a bare truncation error, or panics.
    with pytest.raises(PipelineError, match=rows[0]["id"]):
        prepare_eval_features(batch(rows[0]), tokenizer, max_length=32, doc_stride=16)


def test_real_rows_labels_decode_to_gold(rows, tokenizer):
    data = Dataset.from_list(rows[:30])
    kwargs = dict(tokenizer=tokenizer, max_length=96, doc_stride=32)
    train = data.map(prepare_train_features, batched=True, remove_columns=data.column_names, fn_kwargs=kwargs)
    evals = data.map(prepare_eval_features, batched=True, remove_columns=data.column_names, fn_kwargs=kwargs)
    assert len(train) > len(data)  # small windows: many contexts need several
    gold = {r["id"]: (r["context"], r["answers"]["text"][0]) for r in rows[:30]}
    labelled = 0
    for s, e, example_id, offsets in zip(
        train["start_positions"], train["end_positions"], evals["example_id"], evals["offset_mapping"]
    ):
        if s == 0:
            assert e == 0
            continue
        labelled += 1
        context, answer = gold[example_id]
        assert context[offsets[s][0] : offsets[e][1]].strip() == answer.strip()
    assert labelled >= len(data)  # every answer is whole in at least one window
    # Postprocessing straight from the Datasets, with logits peaking at the labels.
    logits = peaked_logits(evals, train["start_positions"], train["end_positions"])
    predictions = postprocess_predictions(data, evals, *logits)
    assert predictions == {example_id: answer.strip() for example_id, (_, answer) in gold.items()}


def test_question_leading_whitespace_is_dropped(rows, tokenizer):
    padded = {**rows[0], "question": "   " + rows[0]["question"]}
    windows = [prepare_eval_features(batch(r), tokenizer, 384, 128)["input_ids"] for r in (rows[0], padded)]
    assert windows[0] == windows[1]
