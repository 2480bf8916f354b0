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
import numpy as np
from safetensors.torch import load_file, save_file

from pipeline.errors import PipelineError
from pipeline.json_files import write_json

WEIGHTS, STATE = "model.safetensors", "state.json"


def split_dev(rows: datasets.Dataset, fraction: float, seed: int,
              group: str | None = None) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, dev): a seeded `fraction` of `rows` held out for early stopping.

    With `group` (a column, e.g. SQuAD's article title) whole groups are held out, in a seeded
    order, until the dev split holds at least `fraction` of the rows: questions on an article the
    model trained on would flatter the dev score, as the eval split's articles never are.
    """
    n_dev = round(len(rows) * fraction)
    if n_dev < 1 or n_dev >= len(rows):
        raise PipelineError(f"dev_fraction={fraction} of {len(rows)} training examples leaves an empty train or dev "
                            "split: change dev_fraction or max_train_samples")
    if group is None:
        parts = rows.train_test_split(test_size=n_dev, shuffle=True, seed=seed)
        return parts["train"], parts["test"]
    if group not in rows.column_names:
        raise PipelineError(f"the dev split holds out whole '{group}' groups, and the training data has no '{group}' "
                            f"column (it has {', '.join(rows.column_names)}): add it, or set dev_fraction=0")
    keys = np.asarray(rows[group])
    names, sizes = np.unique(keys, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(names))
    held = order[: int(np.searchsorted(np.cumsum(sizes[order]), n_dev)) + 1]
    in_dev = np.isin(keys, names[held])
    if in_dev.all():
        raise PipelineError(f"dev_fraction={fraction} holds out every '{group}' group of the {len(rows)} training "
                            "examples: lower dev_fraction or train on more groups")
    return rows.select(np.flatnonzero(~in_dev)), rows.select(np.flatnonzero(in_dev))


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
        write_json(tmp / STATE, self.state)
        shutil.rmtree(self.folder, ignore_errors=True)
        os.replace(tmp, self.folder)
