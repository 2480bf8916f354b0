"""Frozen features of a decoder body, pooled per text, and linear probes on them.

Layers follow transformers' `hidden_states` tuple: 0 is the token embeddings, i (1..L-1) the
output of decoder layer i, and the top one, L, is AFTER the final RMSNorm: `capture_outputs`
replaces the last entry with `last_hidden_state` (tie_last_hidden_states=True), so layer L is
exactly what the task heads read.

Poolings:
- `last`: the last non-padding token, the one LlamaForSequenceClassification scores; in a causal
  decoder it is the only token that has seen the whole text.
- `mean`: the mean over the text's tokens, without padding and without BOS. BOS is always at
  position 0 and attends only to itself, so its state is the same vector for every text;
  averaging it in would add a 1/length-weighted constant, a length signal rather than content.
  The fine-tuning head's `pooling: mean` layer (pipeline/pooling.py) does average BOS in: it is a
  plain decoder layer, whose causal mask cannot leave position 0 out, and it trains, so it can learn
  to discount that constant; a frozen linear probe cannot. The committed probe figures
  (reports/probe/) are without BOS; docs/transfer.md says the same.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from pipeline.inference import batches_by_length

POOLINGS = ("last", "mean")
# The regularisation strength is chosen per probe by seeded, stratified cross-validation on the
# train rows only (never on the eval split the probe is scored on): a fixed C favours whichever
# init's features happen to suit it, and the best C differs by layer, pooling and init.
PROBE_CS = (0.001, 0.01, 0.1, 1.0, 10.0)
PROBE_FOLDS = 3
PROBE_CV_ROWS = 10_000
# lbfgs on 8,000 × 384 near-separable features can take thousands of iterations (minutes a fit);
# 300 lands within a fraction of a point of the optimum, and the probe compares inits, not fits.
PROBE_MAX_ITER = 300


@torch.no_grad()
def pooled_hidden_states(body, features, collate, batch_size: int, device: torch.device,
                         bos_token_id: int | None, desc: str = "features") -> dict[str, np.ndarray]:
    """{pooling: float32 array [layers + 1, rows, hidden]} in the dataset's order.

    `body` is a base model (e.g. `model.base_model`) in fp32; rows are batched longest first,
    so a batch wastes little on padding.
    """
    body.eval()
    shape = (body.config.num_hidden_layers + 1, len(features), body.config.hidden_size)
    pooled = {p: np.zeros(shape, np.float32) for p in POOLINGS}
    with tqdm(total=len(features), desc=desc, unit="text") as bar:
        for idx, _, batch in batches_by_length(features, collate, batch_size, device):
            states = torch.stack(body(**batch, output_hidden_states=True).hidden_states).float()  # [S, B, T, H]
            mask = batch["attention_mask"].bool()
            # The rightmost real token, whichever side the collator padded.
            last = mask.shape[1] - 1 - mask.flip(1).int().argmax(1)
            pooled["last"][:, idx] = states[:, torch.arange(len(idx), device=device), last].cpu().numpy()
            text = mask if bos_token_id is None else mask & (batch["input_ids"] != bos_token_id)
            weights = text.float() / text.sum(1, keepdim=True).clamp(min=1)
            pooled["mean"][:, idx] = torch.einsum("sbth,bt->sbh", states, weights).cpu().numpy()
            bar.update(len(idx))
    return pooled


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, eval_x: np.ndarray,
                 seed: int) -> tuple[np.ndarray, float]:
    """(eval predictions, chosen C) of StandardScaler + logistic regression fit on the train rows only."""
    with warnings.catch_warnings():  # the capped lbfgs says it did not converge: expected, see PROBE_MAX_ITER
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _fit_predict(train_x, train_y, eval_x, seed)


def _fit_predict(train_x, train_y, eval_x, seed):
    # C is chosen on at most PROBE_CV_ROWS seeded, stratified train rows: SST-2's 67k would make
    # the 3 folds × 5 Cs take half an hour a task. With more rows than that, the chosen C is then
    # refit on all of them.
    cv_rows = np.arange(len(train_y))
    if len(cv_rows) > PROBE_CV_ROWS:
        cv_rows, _ = train_test_split(cv_rows, train_size=PROBE_CV_ROWS, stratify=train_y, random_state=seed)
    folds = StratifiedKFold(PROBE_FOLDS, shuffle=True, random_state=seed)
    probe = make_pipeline(StandardScaler(), LogisticRegressionCV(
        Cs=list(PROBE_CS), cv=folds, scoring="accuracy", l1_ratios=(0.0,), use_legacy_attributes=False,
        max_iter=PROBE_MAX_ITER, random_state=seed))
    probe.fit(train_x[cv_rows], train_y[cv_rows])
    c = float(np.ravel(probe[-1].C_)[0])
    if len(cv_rows) < len(train_y):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=PROBE_MAX_ITER, random_state=seed))
        probe.fit(train_x, train_y)
    return probe.predict(eval_x), c
