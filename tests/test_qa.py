"""QA windows, labels, postprocessing and predict, with a small tokenizer trained on real SQuAD contexts."""

import os
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import bad_input_line, run_cli
from datasets import Dataset
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from pipeline.errors import PipelineError
from pipeline.metrics.squad.squad import normalize_answer
from pipeline.stages.predict import QA_DEFAULTS, answer_question, qa_logits, qa_settings
from pipeline.tasks.qa import (
    NO_ANSWER,
    NO_SPAN,
    Answer,
    audit_labels,
    postprocess_predictions,
    postprocess_with_scores,
    prepare_eval_features,
    prepare_train_features,
    training_answer,
)
from pipeline.tokenizer import train_tokenizer

SQUAD = f"{os.environ['PIPELINE_DATA_DIR']}/local/squad_v1.1_dev_split/train.parquet"


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
    start_char = ex["answers"]["answer_start"][0]
    answer = postprocess_with_scores(batch(ex), evals, *logits)["q1"]
    assert answer == Answer("Denver Broncos", 20.0, start_char, start_char + len("Denver Broncos"))
    assert ex["context"][answer.start : answer.end] == answer.text


def test_a_span_that_starts_or_ends_inside_a_word_takes_the_whole_word(rows, tokenizer):
    ex = {**rows[0], "id": "q1"}
    context = ex["context"]
    evals = prepare_eval_features(batch(ex), tokenizer, max_length=384, doc_stride=128)
    offsets = evals["offset_mapping"][0]
    inside = lambda k: 0 < k < len(context) and context[k - 1].isalnum() and context[k].isalnum()
    # A word the 1,000-token vocabulary cuts into pieces: a token that ends inside it, and the next that starts inside.
    k = next(k for k, o in enumerate(offsets[:-1]) if o is not None and inside(o[1]))
    word_start = context.rindex(" ", 0, offsets[k][1]) + 1
    word_end = min(i for i in range(offsets[k][1], len(context) + 1) if not inside(i))
    word = context[word_start:word_end]
    assert context[offsets[k][0]:offsets[k][1]].strip() != word  # the token alone is part of the word
    for start, end in ((k, k), (k + 1, k + 1)):  # ends inside the word; starts inside it
        answer = postprocess_with_scores(batch(ex), evals, *peaked_logits(evals, [start], [end]))["q1"]
        assert answer.text == word and context[answer.start:answer.end] == word, (start, end)


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
        assert scored == {"q1": NO_SPAN} and NO_SPAN == ("", float("-inf"), 0, 0), case
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
    gold = {r["id"]: (r["context"], r["answers"]["text"][training_answer(r["answers"])]) for r in rows[:30]}
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
    records = {r["id"]: r for r in audit_labels(batch(*rows[:30]), tokenizer, 96, 32)}
    aligned = {example_id for example_id, r in records.items() if r["aligned"]}
    assert len(aligned) == 29  # one annotator marked "gold" inside "golden anniversary"
    for example_id, (context, answer) in gold.items():
        if example_id in aligned:
            assert predictions[example_id] == answer.strip()
        else:  # predictions are whole words: the word the label sits inside
            assert answer in predictions[example_id] and predictions[example_id] in re.findall(r"\w+", context), example_id


def test_question_leading_whitespace_is_dropped(rows, tokenizer):
    padded = {**rows[0], "question": "   " + rows[0]["question"]}
    windows = [prepare_eval_features(batch(r), tokenizer, 384, 128)["input_ids"] for r in (rows[0], padded)]
    assert windows[0] == windows[1]


def test_answer_not_in_context_raises_for_any_gold_answer(rows, tokenizer):
    # Real rows through datasets.map, as fine-tuning runs them: the third answer of one row moved.
    bad = [dict(r) for r in rows[:8]]
    answers = bad[5]["answers"]
    moved = answers["answer_start"][:2] + [answers["answer_start"][2] + 3]
    bad[5]["answers"] = {"text": answers["text"], "answer_start": moved}
    data = Dataset.from_list(bad)
    kwargs = dict(tokenizer=tokenizer, max_length=384, doc_stride=128)
    with pytest.raises(PipelineError, match=f"{bad[5]['id']}: answer .* is not in its context"):
        data.map(prepare_train_features, batched=True, remove_columns=data.column_names, fn_kwargs=kwargs)


# --- label audit: the labels the head trains on, decoded back to text -------------------------------------------


@pytest.mark.parametrize("max_length, doc_stride", [(384, 128), (96, 32)])
def test_labels_round_trip_on_200_real_rows(rows, tokenizer, max_length, doc_stride):
    """Every window holding the whole answer decodes, through its offsets, to the answer it trains on.

    An off-by-one at either end or a dropped leading space (byte-level BPE puts the space before a
    word into the word's token) would show here, not as an error but as a capped F1.
    """
    records = audit_labels(batch(*rows[:200]), tokenizer, max_length, doc_stride)
    labelled = [r for r in records if r["labelled"]]
    # Recoverable: the window holds the whole answer, and the answer starts and ends at word
    # boundaries (one dev-set row's answer is "10." inside "2010.": no token label can say that).
    recoverable = [r for r in labelled if r["aligned"]]
    assert len(recoverable) >= 0.98 * len(labelled)
    lost = [(r["answer"], r["decoded"]) for r in labelled if not r["match"]]
    assert set(lost) == {("10.", " 2010.")} and all(not r["aligned"] for r in labelled if not r["match"])
    assert [(r["answer"], r["decoded"]) for r in recoverable if not r["match"]] == []
    assert all(r["exact"] for r in recoverable)  # not only up to normalisation: character for character
    assert all(normalize_answer(r["decoded"]) == normalize_answer(r["answer"]) for r in recoverable)
    assert {r["id"] for r in labelled} == {r["id"] for r in rows[:200]}  # every answer is whole in some window
    if max_length == 96:  # small windows: many hold no answer, and are labelled so
        assert sum(not r["labelled"] for r in records) > 100
    else:
        assert len(records) == 200


def test_training_answer_follows_annotator_agreement(rows, tokenizer):
    # A real dev-set row: the first answer's answer_start points at the "5" of "Super Bowl 50";
    # the two other annotators marked "five" (Von Miller's solo tackles).
    row = next(r for r in rows if r["question"].startswith("What was the number of solo tackles"))
    assert row["answers"] == {"text": ["5", "five", "five"], "answer_start": [45, 295, 295]}
    assert row["context"][40:50] == "Bowl 50 an"
    assert training_answer(row["answers"]) == 1
    [record] = audit_labels(batch(row), tokenizer, 384, 128)
    assert record["answer"] == "five" and record["decoded"].strip() == "five"
    # The most common text after SQuAD normalisation; ties and single answers keep the first.
    assert training_answer({"text": ["x"], "answer_start": [3]}) == 0
    assert training_answer({"text": ["Denver Broncos", "Broncos", "the Broncos"], "answer_start": [0, 7, 3]}) == 1
    assert training_answer({"text": ["Santa Clara", "Levi's Stadium", "Levi's"], "answer_start": [9, 0, 0]}) == 0
    assert training_answer({"text": ["10.", "10", "10 times"], "answer_start": [30, 5, 5]}) == 0


# --- postprocessing over windows ------------------------------------------------------------------------------------


def test_window_that_says_no_answer_loses_to_window_with_a_span(rows, tokenizer):
    ex = example(rows, "the Arabic numerals 50")  # in the second window only
    max_length, stride = two_windows(tokenizer, ex)
    train, evals = features(batch(ex), tokenizer, max_length, stride)
    k = first_context_token(evals)
    start, end = train["start_positions"][1], train["end_positions"][1]
    start_logits, end_logits = peaked_logits(evals, [k, start], [k + 2, end])
    # Window 0 has the higher raw span score (8 + 8 > 5 + 5) but says "no answer" far more strongly.
    start_logits[0, k], end_logits[0, k + 2] = 8.0, 8.0
    start_logits[0, NO_ANSWER] = end_logits[0, NO_ANSWER] = 10.0
    start_logits[1, start], end_logits[1, end] = 5.0, 5.0
    answer = postprocess_with_scores(batch(ex), evals, start_logits, end_logits)["q1"]
    assert answer.text == "the Arabic numerals 50" and answer.score == 10.0
    assert ex["context"][answer.start : answer.end] == answer.text
    # Without the no-answer vote the raw scores decide, and window 0's span wins.
    start_logits[0, NO_ANSWER] = end_logits[0, NO_ANSWER] = -10.0
    answer = postprocess_with_scores(batch(ex), evals, start_logits, end_logits)["q1"]
    assert answer.score == 16.0 and answer.text != "the Arabic numerals 50"


def long_example(rows, answer="Denver Broncos"):
    """The first SQuAD row with `answer`, and the same with other real paragraphs around its context."""
    short = example(rows, answer)
    others = [c for c in dict.fromkeys(r["context"] for r in rows) if c != short["context"]]
    before, after = " ".join(others[:3]) + " ", " " + " ".join(others[3:6])
    start = short["answers"]["answer_start"][0] + len(before)
    long = {**short, "id": "q2", "context": before + short["context"] + after,
            "answers": {"text": [answer], "answer_start": [start]}}
    return short, long, len(before)


def test_long_context_split_into_windows_gives_the_short_context_answer(rows, tokenizer):
    short, long, shift = long_example(rows)
    results = {}
    for ex in (short, long):
        train, evals = features(batch(ex), tokenizer, max_length=96, doc_stride=32)
        starts, ends = train["start_positions"], train["end_positions"]
        # Labelled windows peak on the answer tokens, the others on no-answer; each of the
        # latter also holds a decoy span whose raw score (12 + 12) beats the answer's (10 + 10).
        start_logits, end_logits = peaked_logits(evals, starts, ends)
        for i, s in enumerate(starts):
            if s == NO_ANSWER:
                k = first_context_token(evals, i)
                start_logits[i, k] = end_logits[i, k + 1] = 12.0
                start_logits[i, NO_ANSWER] = end_logits[i, NO_ANSWER] = 15.0
        results[ex["id"]] = (len(starts), postprocess_with_scores(batch(ex), evals, start_logits, end_logits,
                                                                 n_best=20, max_answer_length=30)[ex["id"]])
    (n_short, a_short), (n_long, a_long) = results["q1"], results["q2"]
    assert n_long > n_short and n_long >= 10  # many windows, most without the answer
    assert a_short.text == a_long.text == "Denver Broncos"
    assert (a_long.start, a_long.end) == (a_short.start + shift, a_short.end + shift)
    assert long["context"][a_long.start : a_long.end] == "Denver Broncos"


# --- predict ------------------------------------------------------------------------------------------------------


class PeakOn(torch.nn.Module):
    """A stand-in QA model: in a window holding `target` (token ids), start/end logits peak on its
    first/last token and the no-answer position is low; every other window votes no-answer."""

    def __init__(self, target: list[int]):
        super().__init__()
        self.target = torch.tensor(target)
        self.weight = torch.nn.Parameter(torch.zeros(1))  # so the model has a device
        self.calls = []

    def forward(self, input_ids, attention_mask):
        self.calls.append((tuple(input_ids.shape), attention_mask.sum(1).tolist()))
        start = torch.full(input_ids.shape, -10.0)
        end = torch.full(input_ids.shape, -10.0)
        start[:, 0] = end[:, 0] = 10.0
        n = len(self.target)
        for row in range(input_ids.shape[0]):
            for p in range(input_ids.shape[1] - n + 1):
                if torch.equal(input_ids[row, p : p + n], self.target):
                    start[row, p], end[row, p + n - 1] = 9.0, 9.0
                    start[row, 0] = end[row, 0] = -10.0
        return SimpleNamespace(start_logits=start, end_logits=end)


def test_predict_long_context_answers_from_the_right_window(rows, tokenizer):
    paragraphs = list(dict.fromkeys(r["context"] for r in rows))
    sentence = "The trophy was later kept at Zorblax Hall in Ohio."
    context = " ".join(paragraphs[:3] + [sentence] + paragraphs[3:6])
    model = PeakOn(tokenizer(" Zorblax Hall", add_special_tokens=False)["input_ids"])
    answer = answer_question(model, tokenizer, "Where was the trophy kept?", context, max_length=96, doc_stride=32,
                             batch_size=4)
    assert answer.text == "Zorblax Hall" and answer.score == 18.0
    assert (answer.start, answer.end) == (context.index("Zorblax Hall"), context.index("Zorblax Hall") + 12)
    # All windows went through the model, in right-padded batches of up to 4.
    windows = prepare_eval_features({"id": ["q"], "question": ["Where was the trophy kept?"], "context": [context]},
                                    tokenizer, 96, 32)["input_ids"]
    n = len(windows)
    assert n > 8
    assert [shape[0] for shape, _ in model.calls] == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    assert all(shape[1] == max(lengths) <= 96 for shape, lengths in model.calls)
    # The answer's window is neither the first nor the last.
    holding = [i for i, ids in enumerate(windows) if "Zorblax Hall" in tokenizer.decode(ids)]
    assert holding and 0 not in holding and n - 1 not in holding


def test_predict_question_too_long_for_the_window(rows, tokenizer):
    with pytest.raises(PipelineError, match="shorten the question"):
        answer_question(PeakOn([5]), tokenizer, rows[0]["question"], rows[0]["context"], max_length=24, doc_stride=8)


def test_predict_settings_come_from_the_run_config(tiny_qa, tmp_path):
    assert qa_settings(tiny_qa / "final") == {"max_length": 128, "doc_stride": 32, "n_best": 20,
                                              "max_answer_length": 30}
    shutil.copytree(tiny_qa / "final", tmp_path / "final")  # a model folder without its run
    assert qa_settings(tmp_path / "final") == QA_DEFAULTS == {"max_length": 384, "doc_stride": 128, "n_best": 20,
                                                             "max_answer_length": 30}
    (tmp_path / "config.yaml").write_text("max_length: 64\ndoc_stride: -1\n")
    with pytest.raises(PipelineError, match="doc_stride=-1 must be a positive integer"):
        qa_settings(tmp_path / "final")


def test_predict_with_the_model_on_a_long_context(tiny_qa, rows):
    final = tiny_qa / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    context = " ".join(list(dict.fromkeys(r["context"] for r in rows))[:4])
    question = rows[0]["question"]
    n_windows = len(prepare_eval_features({"id": ["q"], "question": [question], "context": [context]},
                                          tokenizer, 128, 32)["input_ids"])
    assert n_windows > 3  # longer than max_length=128 of the run
    # Batched, right-padded windows give the logits each window gives alone.
    model = AutoModelForQuestionAnswering.from_pretrained(final).eval()
    windows = prepare_eval_features({"id": ["q"], "question": [question], "context": [context]},
                                    tokenizer, 128, 32)["input_ids"]
    batched = qa_logits(model, tokenizer, windows, batch_size=8)
    alone = [qa_logits(model, tokenizer, [w]) for w in windows]
    for i in range(len(windows)):
        np.testing.assert_allclose(batched[0][i], alone[i][0][0], atol=1e-4)
        np.testing.assert_allclose(batched[1][i], alone[i][1][0], atol=1e-4)
    result = run_cli("predict", "--task", "squad", "--ckpt", final, "--question", question, "--context", context)
    assert result.returncode == 0, result.stderr
    answer, score, start, end = result.stdout.rstrip("\n").split("\t")
    assert context[int(start) : int(end)] == answer and answer and float(score) > float("-inf")
    expected = answer_question(model, tokenizer, question, context, **qa_settings(final))
    assert (answer, int(start), int(end)) == (expected.text, expected.start, expected.end)


@pytest.mark.parametrize("question, context, message", [
    ("", "The book was written by John Smith.", "the question is empty"),
    ("Who wrote it?", " \n\t ", "the context is empty"),  # whitespace only
])
def test_predict_bad_input_exits_2_with_one_line(tiny_qa, capsys, question, context, message):
    line = bad_input_line(["predict", "--task", "squad", "--ckpt", tiny_qa / "final", "--question", question,
                           "--context", context], capsys, stdout="")
    assert message in line
