"""Accuracy: the fraction of predictions equal to their reference label."""

import datasets
import evaluate


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of predictions that equal the reference, in 0..1.",
            citation="",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        correct = sum(p == r for p, r in zip(predictions, references))
        return {"accuracy": correct / len(references)}
