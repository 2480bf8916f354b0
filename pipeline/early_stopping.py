"""Early stopping on a dev split carved out of the training data, keeping the best weights.

The split is a seeded share of the training sample, so the eval (test) split is never looked at
while training. The best weights and the stopper's own state live in `<run>/best/`, written
atomically, so a resumed run knows what it had already seen.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import datasets
from safetensors.torch import load_file, save_file

from pipeline.errors import PipelineError

WEIGHTS, STATE = "model.safetensors", "state.json"


def split_dev(rows: datasets.Dataset, fraction: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, dev): a seeded `fraction` of `rows` held out for early stopping."""
    n_dev = round(len(rows) * fraction)
    if n_dev < 1 or n_dev >= len(rows):
        raise PipelineError(f"dev_fraction={fraction} of {len(rows)} training examples leaves an empty train or dev "
                            "split: change dev_fraction or max_train_samples")
    parts = rows.train_test_split(test_size=n_dev, shuffle=True, seed=seed)
    return parts["train"], parts["test"]


class EarlyStopping:
    """Called after each dev evaluation with its metrics; returns True when training should stop."""

    def __init__(self, folder: Path, metric: str, patience: int, is_main_process: bool = True):
        self.folder, self.metric, self.patience, self.main = folder, metric, patience, is_main_process
        saved = folder / STATE
        self.state = json.loads(saved.read_text()) if saved.is_file() else \
            {"metric": metric, "best": None, "best_step": None, "since_best": 0}

    def __call__(self, model, step: int, metrics: dict) -> bool:
        if self.metric not in metrics:
            raise PipelineError(f"early stopping watches '{self.metric}', which the dev evaluation does not report")
        score = metrics[self.metric]
        if self.state["best"] is None or score > self.state["best"]:
            self.state.update(best=score, best_step=step, since_best=0)
            self._save(model)
        else:
            self.state["since_best"] += 1
        return self.state["since_best"] >= self.patience

    def restore_best(self, model) -> int:
        """Load the best weights into `model`; return the step they come from."""
        model.load_state_dict(load_file(self.folder / WEIGHTS), strict=True)
        return self.state["best_step"]

    def _save(self, model) -> None:
        if not self.main:
            return
        tmp = self.folder.with_name(f".tmp-{self.folder.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # Tied weights appear under two names; safetensors refuses shared storage, so save copies.
        state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp / WEIGHTS)
        (tmp / STATE).write_text(json.dumps(self.state, indent=2))
        shutil.rmtree(self.folder, ignore_errors=True)
        os.replace(tmp, self.folder)
