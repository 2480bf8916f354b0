"""Run a model over a tokenized dataset in batches, across processes, keeping the dataset's order."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object


def batches_by_length(features, collate, batch_size: int, device: torch.device, process_index: int = 0,
                      num_processes: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    """(row indices, their token counts, collated batch on `device`), longest rows first.

    Rows of like length share a batch, so a batch wastes little on padding; the caller puts each
    result back at its row index, which restores the dataset's order. Process `process_index` of
    `num_processes` takes every num_processes-th batch.
    """
    inputs = features.select_columns(["input_ids", "attention_mask"])
    lengths = np.array([len(ids) for ids in inputs["input_ids"]])
    order = np.argsort(-lengths, kind="stable")  # stable: equal lengths keep the dataset's order
    for start in range(process_index * batch_size, len(order), num_processes * batch_size):
        rows = order[start:start + batch_size]
        batch = collate([inputs[int(i)] for i in rows])
        yield rows, lengths[rows], {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def run_model(model, features, collate, accelerator: Accelerator, batch_size: int,
              outputs: tuple[str, ...] = ("logits",), per_token: bool = False) -> dict[str, list[np.ndarray]]:
    """Per-row outputs in dataset order; per-token outputs are trimmed to each row's length.

    Each process runs its share of the batches and the results are gathered on all processes.
    """
    was_training = model.training
    model.eval()
    mine = []
    for rows, lengths, batch in batches_by_length(features, collate, batch_size, accelerator.device,
                                                  accelerator.process_index, accelerator.num_processes):
        with accelerator.autocast():
            result = model(**batch)
        for name in outputs:
            values = getattr(result, name).float().cpu().numpy()
            for row, (i, length) in enumerate(zip(rows, lengths)):
                mine.append((name, int(i), values[row][:length] if per_token else values[row]))
    model.train(was_training)
    gathered = gather_object(mine) if accelerator.num_processes > 1 else mine
    result = {name: [None] * len(features) for name in outputs}
    for name, i, value in gathered:
        result[name][i] = value
    return result
