"""Run a model over a tokenized dataset in batches, across processes, keeping the dataset's order."""

from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object


def length_ordered_batches(features, batch_size: int):
    """(inputs, lengths, batches of row indices): rows longest first, so a batch wastes little on padding."""
    inputs = features.select_columns(["input_ids", "attention_mask"])
    lengths = np.array([len(ids) for ids in inputs["input_ids"]])
    order = np.argsort(-lengths, kind="stable")
    return inputs, lengths, [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def run_model(model, features, collate, accelerator: Accelerator, batch_size: int,
              outputs: tuple[str, ...] = ("logits",), per_token: bool = False) -> dict[str, list[np.ndarray]]:
    """Per-row outputs in dataset order; per-token outputs are trimmed to each row's length.

    Rows are batched by length to waste little on padding; each process takes every
    num_processes-th batch and the results are gathered on all processes.
    """
    was_training = model.training
    model.eval()
    inputs, lengths, batches = length_ordered_batches(features, batch_size)
    mine = []
    for batch_idx in batches[accelerator.process_index::accelerator.num_processes]:
        batch = collate([inputs[int(i)] for i in batch_idx])
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            result = model(**batch)
        for name in outputs:
            values = getattr(result, name).float().cpu().numpy()
            for row, i in enumerate(batch_idx):
                mine.append((name, int(i), values[row][: lengths[i]] if per_token else values[row]))
    model.train(was_training)
    gathered = gather_object(mine) if accelerator.num_processes > 1 else mine
    result = {name: [None] * len(lengths) for name in outputs}
    for name, i, value in gathered:
        result[name][i] = value
    return result
