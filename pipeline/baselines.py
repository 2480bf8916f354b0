"""Non-neural reference points for the classification tasks: majority class and TF-IDF + logistic regression.

They train on the task's full train split and score its full eval split (the splits a task
uses by default), with the same metrics as the fine-tuned models. Each result is cached as
`runs/baselines/<task>.json`, so the report reads every figure from a file.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from pipeline.config import FinetuneConfig
from pipeline.json_files import read_json, write_json
from pipeline.tasks.classification import scores
from pipeline.tasks import get_task

MODELS = {"majority": "majority class", "tfidf_lr": "TF-IDF + LR"}


def run(task_name: str, root: Path, max_eval_samples: int | None = None, seed: int = 1337, log=print) -> dict:
    """The task's baseline scores, computed once and then read from root/<task>.json.

    They train on the task's whole train split (they are cheap) and are scored on the same
    evaluation examples as the fine-tuned runs (`max_eval_samples` and `seed` of those runs).
    """
    task = get_task(task_name)
    path = root / f"{task.name}.json"
    splits = {"dataset": task.dataset, "train_split": task.train_split, "eval_split": task.eval_split,
              "max_eval_samples": max_eval_samples, "seed": seed}
    cached = read_json(path)
    if cached:
        if all(cached.get(k) == v for k, v in splits.items()):  # else the task changed: recompute
            return cached
    cfg = FinetuneConfig(max_eval_samples=max_eval_samples, seed=seed)
    started = time.time()
    hub_id, train_split, train = task.load(cfg, "train")
    _, eval_split, evals = task.load(cfg, "eval")
    labels = task.label_names(train, hub_id, train_split)
    task.label_names(evals, hub_id, eval_split)
    y_train, y_eval = np.asarray(train[task.label_column]), np.asarray(evals[task.label_column])

    majority = np.full_like(y_eval, np.bincount(y_train, minlength=len(labels)).argmax())
    tfidf = tfidf_lr(train[task.text_column], y_train, evals[task.text_column])

    result = {
        "task": task.name, "dataset": hub_id, "train_split": train_split, "eval_split": eval_split,
        "max_eval_samples": max_eval_samples, "seed": seed,
        "train_examples": len(train), "eval_examples": len(evals),
        "majority": scores(majority, y_eval, len(labels)), "tfidf_lr": scores(tfidf, y_eval, len(labels)),
        "seconds": time.time() - started,
    }
    write_json(path, result)
    log(f"baselines {task.name}: majority {result['majority']['accuracy']:.4f}, "
        f"TF-IDF + LR {result['tfidf_lr']['accuracy']:.4f} accuracy → {path}")
    return result




def tfidf_lr(train_texts: list[str], train_labels: np.ndarray, eval_texts: list[str]) -> np.ndarray:
    """Predictions of TF-IDF + logistic regression trained on the given examples only."""
    # Word uni- and bigrams with sublinear tf; saga fits these sparse features in seconds, also for
    # many classes (lbfgs takes ten times longer). No tuning: the eval split is the test set here.
    # min_df=2 drops words seen once, except on tiny samples, where it would leave too few.
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2 if len(train_texts) >= 1000 else 1,
                                 sublinear_tf=True, dtype=np.float32)
    features = vectorizer.fit_transform(train_texts)
    # saga visits the examples in a random order: seeded, or the same sample scores ±0.4 point run to run
    classifier = LogisticRegression(solver="saga", max_iter=1000, random_state=0).fit(features, train_labels)
    return classifier.predict(vectorizer.transform(eval_texts))
