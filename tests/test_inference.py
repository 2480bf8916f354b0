"""The one length-ordered batcher that fine-tuning evaluation (`run_model`) and the probe's features share."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np
import torch
from datasets import Dataset

from pipeline.inference import batches_by_length, run_model

LENGTHS = [3, 7, 1, 7, 5, 2, 6]
CPU = torch.device("cpu")


def _rows() -> Dataset:
    return Dataset.from_dict({"input_ids": [[i + 1] * n for i, n in enumerate(LENGTHS)],
                              "attention_mask": [[1] * n for n in LENGTHS], "label": list(range(len(LENGTHS)))})


def _pad(rows: list[dict]) -> dict:
    width = max(len(r["input_ids"]) for r in rows)
    return {k: torch.tensor([r[k] + [0] * (width - len(r[k])) for r in rows]) for k in ("input_ids", "attention_mask")}


def test_every_row_once_longest_first_and_each_process_takes_every_other_batch():
    batches = list(batches_by_length(_rows(), _pad, 3, CPU))
    rows = np.concatenate([r for r, _, _ in batches]).tolist()
    assert rows == [1, 3, 6, 4, 0, 5, 2]  # longest first; the two 7s keep the dataset's order
    for r, lengths, batch in batches:
        assert lengths.tolist() == [LENGTHS[i] for i in r]
        assert batch["input_ids"].shape == (len(r), max(lengths))  # padded only to its own longest row
        assert batch["input_ids"][:, 0].tolist() == [i + 1 for i in r]
    shares = [[r.tolist() for r, _, _ in batches_by_length(_rows(), _pad, 3, CPU, p, 2)] for p in (0, 1)]
    assert shares == [[[1, 3, 6], [2]], [[4, 0, 5]]]


class _Doubler(torch.nn.Module):
    """Per-token 'logits': twice each input id; per-row 'score': the row's token count."""

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=2.0 * input_ids, score=attention_mask.sum(1).float())


def test_run_model_puts_every_row_back_in_dataset_order_trimmed_to_its_length():
    accelerator = SimpleNamespace(device=CPU, process_index=0, num_processes=1, autocast=contextlib.nullcontext)
    model = _Doubler().train()
    tokens = run_model(model, _rows(), _pad, accelerator, 3, per_token=True)["logits"]
    assert model.training  # its mode is given back
    for i, n in enumerate(LENGTHS):  # no padding left on any row
        np.testing.assert_array_equal(tokens[i], np.full(n, 2.0 * (i + 1)))
    scores = run_model(model, _rows(), _pad, accelerator, 3, outputs=("score",))["score"]
    assert [float(s) for s in scores] == LENGTHS
