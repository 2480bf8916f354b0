"""Streaming sources: a mixture whose sources say `streaming: true` is tokenized and packed as training reads it.

Each source is a `datasets` IterableDataset (`load_dataset(..., streaming=True)` on the user's files,
the local mirror or the hub: pipeline/data.py), so nothing is tokenized ahead and nothing is cached but the tokenizer and the
validation blocks. Training blocks are the same `<bos> text <eos>` documents joined and cut into
`seq_len` blocks as in the cached corpus (pipeline/corpus.py), so document masking works alike.

- Shares on the fly: the next document always comes from the source furthest behind its token share
  (smallest tokens given / share; ties to the first source). Deterministic, and exact to a document.
- A source that runs out starts again from its first document (its epochs are counted in the state).
- Validation: a source's `eval_split`, else `holdout_documents` rows drawn with `data_seed` from its
  first HOLDOUT_WINDOW × holdout_documents rows, which training then skips. Mixed and cached like
  the cached corpus's validation blocks.
- `state_dict()` is each source's epoch and next row, the tokens each has given, and the tokens read
  but not yet given out as a block; the Trainer saves it with every checkpoint, and
  `load_state_dict()` continues with exactly the blocks an uninterrupted run would have seen (the
  stream is re-read up to the saved row with `skip`). One process only, no DataLoader workers: the
  position must live where the blocks are consumed.
"""

from __future__ import annotations

from collections.abc import Iterator

import datasets
import numpy as np
import torch

from pipeline import encoding
from pipeline.config import CorpusSource
from pipeline.data import load_splits
from pipeline.errors import PipelineError

HOLDOUT_WINDOW = 10  # held-out rows are drawn from the first 10 × holdout_documents rows of a stream


def open_stream(src: CorpusSource, split: str) -> datasets.IterableDataset:
    """One split of a source as an IterableDataset: the user's files, the mirror's copy or the hub's."""
    splits = load_splits(src.dataset, src.dataset_config, streaming=True)
    if split not in splits:
        raise PipelineError(f"dataset {src.dataset} has no split '{split}' (it has: {', '.join(splits)}): "
                            "choose one of those in the recipe")
    stream = splits[split]
    columns = stream.column_names or []
    if src.text_column not in columns:
        raise PipelineError(f"dataset {src.dataset} split '{split}' has no column '{src.text_column}' "
                            f"(columns: {', '.join(columns)}): set the right text_column in the recipe")
    return stream


def held_out_rows(src: CorpusSource, index: int, holdout_documents: int, data_seed: int) -> np.ndarray:
    """Rows of the training stream kept for validation (none when the source has an eval_split)."""
    if src.eval_split:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([data_seed, index])
    return np.sort(rng.choice(HOLDOUT_WINDOW * holdout_documents, holdout_documents, replace=False))


def documents(src: CorpusSource, split: str, start: int, limit: int | None,
              skip: np.ndarray) -> Iterator[tuple[int, str]]:
    """(row, text) of the non-blank rows from `start` on, below `limit`, leaving out the rows in `skip`."""
    stream = open_stream(src, split)
    for row, example in enumerate(stream.skip(start) if start else stream, start):
        if limit is not None and row >= limit:
            return
        text = example[src.text_column]
        if text and text.strip() and not np.isin(row, skip):
            yield row, text


def first_texts(src: CorpusSource, split: str, n: int | None, limit: int | None, skip: np.ndarray,
                only: np.ndarray | None = None) -> list[str]:
    """The first `n` (None: all) documents of a stream; with `only`, of the documents at those rows."""
    texts = []
    for row, text in documents(src, split, 0, limit, skip):
        if only is not None and row > only[-1]:
            break
        if only is None or np.isin(row, only):
            texts.append(text)
        if len(texts) == n:
            break
    return texts


def tokenizer_texts(sources: list[CorpusSource], shares: np.ndarray, n: int, limit: int | None,
                    held: list[np.ndarray]) -> list[str]:
    """About `n` documents for the tokenizer: each source's first training documents, `share × n` of them.

    By documents, not bytes as for a cached corpus: a stream's mean document length is unknown until read.
    """
    counts = np.maximum(np.round(n * shares).astype(int), 1)
    return [text for src, k, skip in zip(sources, counts, held) for text in first_texts(src, src.split, k, limit, skip)]


def validation_texts(src: CorpusSource, held: np.ndarray, limit: int | None) -> list[str]:
    """A source's validation documents: its eval_split (the first `limit`), else its held-out rows."""
    if src.eval_split:
        return first_texts(src, src.eval_split, limit, limit, np.zeros(0, dtype=np.int64))
    return first_texts(src, src.split, len(held), None, np.zeros(0, dtype=np.int64), only=held)


class StreamingBlocks(torch.utils.data.IterableDataset):
    """Endless `seq_len` blocks (int64 tensors) from streamed sources mixed by token share."""

    def __init__(self, sources: list[CorpusSource], shares: np.ndarray, held: list[np.ndarray],
                 tokenizer_file: str, seq_len: int, limit: int | None):
        self.sources, self.shares, self.held = sources, shares, held
        self.tokenizer_file, self.seq_len, self.limit = tokenizer_file, seq_len, limit
        self.load_state_dict({"epoch": [0] * len(sources), "row": [0] * len(sources),
                              "tokens": [0] * len(sources), "pending": []})

    def state_dict(self) -> dict:
        return {"epoch": list(self.epoch), "row": list(self.row), "tokens": self.tokens.tolist(),
                "pending": self.pending.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.row = list(state["epoch"]), list(state["row"])
        self.tokens = np.array(state["tokens"], dtype=np.int64)
        self.pending = np.array(state["pending"], dtype=np.int64)

    def __iter__(self) -> Iterator[torch.Tensor]:
        encoding.load(self.tokenizer_file)
        streams = [self._documents(i) for i in range(len(self.sources))]
        while True:
            while len(self.pending) < self.seq_len:
                i = int(np.argmin(self.tokens / self.shares))  # the source furthest behind its share
                ids, _ = encoding.encode_batch([next(streams[i])])
                self.tokens[i] += len(ids)
                self.pending = np.concatenate([self.pending, ids.astype(np.int64)])
            block, self.pending = self.pending[:self.seq_len], self.pending[self.seq_len:]
            yield torch.from_numpy(block)

    def _documents(self, i: int) -> Iterator[str]:
        """Source i's training documents from its saved row on, epoch after epoch; the state moves as they go."""
        src = self.sources[i]
        while True:
            found = False
            for row, text in documents(src, src.split, self.row[i], self.limit, self.held[i]):
                self.row[i], found = row + 1, True
                yield text
            if not found and self.row[i] == 0:
                raise PipelineError(f"dataset {src.dataset} split '{src.split}' streams no training text in column "
                                    f"'{src.text_column}': point the recipe at a corpus with text")
            self.epoch[i], self.row[i] = self.epoch[i] + 1, 0
