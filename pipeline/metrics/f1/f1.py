"""F1 score (macro-averaged by default), computed by scikit-learn."""

import datasets
import evaluate
from sklearn.metrics import f1_score


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="F1 score in 0..1; `average` is passed to sklearn.metrics.f1_score.",
            citation="",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, average="macro", labels=None):
        # labels=None averages over the union of predicted and reference labels; pass the full
        # label set to also count classes that never occur in this batch (their F1 is 0).
        score = f1_score(references, predictions, average=average, labels=labels, zero_division=0)
        return {"f1": float(score)}
