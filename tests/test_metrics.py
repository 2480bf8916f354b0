"""Local evaluate metrics against values computed by hand."""

import pytest

from pipeline.errors import PipelineError
from pipeline.metrics import load_metric


def test_accuracy():
    result = load_metric("accuracy").compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1])
    assert result == {"accuracy": pytest.approx(3 / 4)}


def test_macro_f1_three_classes():
    references = [0, 0, 1, 1, 2, 2]
    predictions = [0, 1, 1, 1, 2, 0]
    # class 0: tp 1, fp 1, fn 1 -> P 1/2, R 1/2, F1 1/2
    # class 1: tp 2, fp 1, fn 0 -> P 2/3, R 1,   F1 4/5
    # class 2: tp 1, fp 0, fn 1 -> P 1,   R 1/2, F1 2/3
    f1 = load_metric("f1")
    assert f1.compute(predictions=predictions, references=references)["f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    # A class that never occurs counts as F1 0 once it is named in `labels`.
    result = f1.compute(predictions=predictions, references=references, labels=[0, 1, 2, 3])
    assert result["f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 4)
    # Micro-averaged F1 over single-label predictions is the accuracy.
    assert f1.compute(predictions=predictions, references=references, average="micro")["f1"] == pytest.approx(4 / 6)


def ref(id, *texts):
    return {"id": id, "answers": {"text": list(texts), "answer_start": [0] * len(texts)}}


def test_squad():
    predictions = [
        {"id": "article_punct", "prediction_text": "The Denver Broncos!"},
        {"id": "partial", "prediction_text": "Carolina Panthers team"},
        {"id": "multi_f1", "prediction_text": "Santa Clara"},
        {"id": "multi_em", "prediction_text": "february 7 2016"},
        {"id": "empty", "prediction_text": ""},
    ]
    references = [  # in another order: scores are matched by id
        ref("empty", "Annapolis"),
        ref("multi_em", "2016", "February 7, 2016"),
        ref("multi_f1", "Levi's Stadium", "Santa Clara, California"),
        ref("partial", "the Carolina Panthers"),
        ref("article_punct", "Denver Broncos"),
    ]
    # article_punct: "denver broncos" both sides -> EM 1, F1 1
    # partial:  "carolina panthers team" vs "carolina panthers": P 2/3, R 1 -> F1 4/5, EM 0
    # multi_f1: best truth "santa clara california": P 1, R 2/3 -> F1 4/5, EM 0
    # multi_em: equals the second truth once the comma goes -> EM 1, F1 1
    # empty:    EM 0, F1 0
    result = load_metric("squad").compute(predictions=predictions, references=references)
    assert result["exact_match"] == pytest.approx(100 * 2 / 5)
    assert result["f1"] == pytest.approx(100 * (1 + 4 / 5 + 4 / 5 + 1 + 0) / 5)


def test_squad_articles_are_whole_words_only():
    # "an" inside "Annapolis" and "the" inside "theory" must survive normalisation.
    predictions = [{"id": "1", "prediction_text": "An Annapolis theory"}]
    result = load_metric("squad").compute(predictions=predictions, references=[ref("1", "annapolis THEORY.")])
    assert result == {"exact_match": 100.0, "f1": 100.0}


def test_unknown_metric_names_the_known_ones():
    with pytest.raises(PipelineError, match="accuracy, f1, squad"):
        load_metric("bleu")
