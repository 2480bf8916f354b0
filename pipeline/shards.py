"""Token shards on disk: written one file at a time, each appearing atomically, read back without loading.

Two kinds of shard live in a corpus build:

- Document shards (`DocumentWriter`, `DocumentStore`): one source split's tokenized documents, as
  written by the tokenizer workers. A shard closes at a document boundary once it holds about
  SHARD_TOKENS tokens, and records its documents' lengths beside it, so a killed build knows exactly
  how many documents are done and resumes after them. They are read with plain file reads: a memory
  map would keep every page read resident, and a build's peak memory would grow with the corpus.
- Block shards (`write_block_shards`, `PackedBlocks`): the packed training or validation stream, cut
  into files of exactly `shard_blocks × seq_len` tokens (the last one shorter). Shard size is a
  multiple of seq_len (seq_len is part of the cache key), so no block straddles two files and block i
  is one slice of one memory map.

Tokens are stored as uint16 when every id fits (vocabularies up to 65,536), else uint32.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

SHARD_TOKENS = 1 << 22  # 4M tokens, 8 MB as uint16: the most a build holds of one split at a time


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every token id (ids run from 0 to vocab_size - 1)."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def write_atomic(path: Path, array: np.ndarray) -> None:
    """Write `array` to `path` so that the path either does not exist or holds all of it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        array.tofile(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class DocumentWriter:
    """Appends tokenized documents to `folder`, continuing after the shards a killed build left there.

    Shard k is `k.bin` (the tokens) and `k.len` (int64 document lengths); the lengths are written
    first, so a shard whose `.bin` exists is complete.
    """

    def __init__(self, folder: Path, dtype: np.dtype):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.dtype = folder, dtype
        done = _shard_paths(folder)
        self.shard = len(done)
        self.documents_done = sum(len(np.fromfile(p.with_suffix(".len"), dtype=np.int64)) for p in done)
        self._ids: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []
        self._buffered = 0

    def add(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        """Documents back to back (`ids`) and each one's length; written once a shard's worth is buffered."""
        self._ids.append(ids.astype(self.dtype, copy=False))
        self._lengths.append(lengths.astype(np.int64, copy=False))
        self._buffered += len(ids)
        if self._buffered >= SHARD_TOKENS:
            self._flush()

    def close(self) -> None:
        if self._lengths:
            self._flush()

    def _flush(self) -> None:
        path = self.folder / f"{self.shard:05d}.bin"
        write_atomic(path.with_suffix(".len"), np.concatenate(self._lengths))
        write_atomic(path, np.concatenate(self._ids))
        self.shard += 1
        self._ids, self._lengths, self._buffered = [], [], 0


class DocumentStore:
    """The documents a DocumentWriter wrote, read one at a time with plain file reads."""

    def __init__(self, folder: Path, dtype: np.dtype):
        self.dtype = dtype
        self.paths = _shard_paths(folder)
        per_shard = [np.fromfile(p.with_suffix(".len"), dtype=np.int64) for p in self.paths]
        self.lengths = np.concatenate(per_shard) if per_shard else np.zeros(0, dtype=np.int64)
        self._shard_of = np.repeat(np.arange(len(per_shard)), [len(x) for x in per_shard])
        # Each document's first token within its shard: documents never straddle shards.
        self._start = np.concatenate([np.cumsum(x) - x for x in per_shard]) if per_shard else self.lengths
        self._files: dict[int, object] = {}

    def read(self, doc: int, lo: int, hi: int) -> np.ndarray:
        """Tokens lo..hi of document `doc`."""
        shard = int(self._shard_of[doc])
        if shard not in self._files:
            self._files[shard] = open(self.paths[shard], "rb")
        f = self._files[shard]
        f.seek((int(self._start[doc]) + lo) * self.dtype.itemsize)
        return np.fromfile(f, dtype=self.dtype, count=hi - lo)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}


def write_block_shards(folder: Path, split: str, n_tokens: int, shard_tokens: int, dtype: np.dtype,
                       tokens: Callable[[int, int], np.ndarray], progress: Callable[[int], None]) -> None:
    """Write tokens 0..n_tokens of a split as `split-k.bin` files of `shard_tokens`; keep those already there."""
    for k, start in enumerate(range(0, n_tokens, shard_tokens)):
        stop = min(start + shard_tokens, n_tokens)
        path = folder / f"{split}-{k:05d}.bin"
        if not path.is_file():
            write_atomic(path, tokens(start, stop).astype(dtype, copy=False))
        progress(stop - start)


def block_shard_paths(folder: Path, split: str) -> list[Path]:
    return sorted(folder.glob(f"{split}-[0-9]*.bin"))


def read_sequential(paths: list[Path], dtype: np.dtype):
    """Every token of `paths`, a shard's worth at a time, with plain reads."""
    for path in paths:
        with open(path, "rb") as f:
            while len(part := np.fromfile(f, dtype=dtype, count=SHARD_TOKENS)):
                yield part


class PackedBlocks(torch.utils.data.Dataset):
    """Fixed-length token blocks over memory-mapped shards; item i is block i (as int64)."""

    def __init__(self, paths: list[Path], seq_len: int, dtype: np.dtype, shard_blocks: int, limit: int | None = None):
        self.seq_len, self.shard_blocks = seq_len, shard_blocks
        self.shards = [np.memmap(p, dtype=dtype, mode="r").reshape(-1, seq_len) for p in paths]
        total = sum(len(s) for s in self.shards)
        self.n = total if limit is None else min(limit, total)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < self.n:
            raise IndexError(f"block {i} of {self.n}")
        block = self.shards[i // self.shard_blocks][i % self.shard_blocks]
        return torch.from_numpy(block.astype(np.int64))

    @property
    def blocks(self) -> np.ndarray:
        """All blocks as one [n, seq_len] array in memory (tests and small corpora only)."""
        if not self.shards:
            return np.zeros((0, self.seq_len), dtype=np.int64)
        return np.concatenate(self.shards)[: self.n]


def _shard_paths(folder: Path) -> list[Path]:
    return sorted(folder.glob("[0-9]*.bin"))
