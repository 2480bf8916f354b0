"""SQuAD v1.1 exact match and token F1, following the rules of the official evaluation script.

Both prediction and gold answers are normalised (lowercase, punctuation and the articles
a/an/the removed, whitespace collapsed); each question takes its best score over its gold
answers, and the scores are averaged over questions and reported in 0..100.
"""

import re
import string
from collections import Counter

import datasets
import evaluate

PUNCTUATION = set(string.punctuation)
ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    # Articles are replaced by a space, which the split/join then folds away.
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def token_f1(prediction: str, truth: str) -> float:
    pred_tokens, truth_tokens = normalize_answer(prediction).split(), normalize_answer(truth).split()
    overlap = sum((Counter(pred_tokens) & Counter(truth_tokens)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


class Squad(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="SQuAD v1.1 exact match and F1, each in 0..100.",
            citation="Rajpurkar et al., SQuAD: 100,000+ Questions for Machine Comprehension of Text, EMNLP 2016.",
            features=datasets.Features(
                {
                    "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")},
                    "references": {
                        "id": datasets.Value("string"),
                        "answers": datasets.Sequence(
                            {"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}
                        ),
                    },
                }
            ),
        )

    def _compute(self, predictions, references):
        # Score by id, not by position, so the two lists may come in different orders.
        answer_by_id = {p["id"]: p["prediction_text"] for p in predictions}
        em = f1 = 0.0
        for ref in references:
            prediction, truths = answer_by_id[ref["id"]], ref["answers"]["text"]
            em += max(exact_match(prediction, t) for t in truths)
            f1 += max(token_f1(prediction, t) for t in truths)
        return {"exact_match": 100 * em / len(references), "f1": 100 * f1 / len(references)}
