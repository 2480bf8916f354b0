"""Documents → `<bos> text <eos>` token ids, in batches of the fast tokenizer, over N worker processes.

Batches go out to the workers and come back in the order they were sent, so the ids never depend on
the number of workers. At most two batches per worker are in flight: memory stays bounded however
long the stream of documents is. Workers are forked, so they start without importing anything, and
each runs the raw `tokenizers` tokenizer on one thread.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from tokenizers import Tokenizer

from pipeline.tokenizer import BOS, EOS

_worker: dict = {}  # this process's tokenizer and its <bos>/<eos> ids


def load(tokenizer_file: str) -> None:
    """Make `tokenizer_file` the tokenizer of `encode_batch` in this process."""
    tok = Tokenizer.from_file(tokenizer_file)
    # A literal "<|eos|>" in the text is text, not a boundary (transformers' split_special_tokens=True).
    tok.encode_special_tokens = True
    _worker.update(tokenizer=tok, bos=tok.token_to_id(BOS), eos=tok.token_to_id(EOS))


def _start_worker(tokenizer_file: str) -> None:
    # One thread per worker: the workers are the parallelism (and tokenizers' own threads would fight them).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    load(tokenizer_file)


def encode_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every text as <bos> ids <eos>, back to back (uint32), and each document's length."""
    tok, bos, eos = _worker["tokenizer"], _worker["bos"], _worker["eos"]
    encoded = [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]  # no offsets: faster
    lengths = np.fromiter((len(x) + 2 for x in encoded), dtype=np.int64, count=len(encoded))
    ids = np.empty(int(lengths.sum()), dtype=np.uint32)
    ends = np.cumsum(lengths)
    ids[ends - lengths] = bos
    ids[ends - 1] = eos
    for x, end in zip(encoded, ends.tolist()):
        ids[end - 1 - len(x):end - 1] = x
    return ids, lengths


def encode_documents(batches: Iterable[list[str]], tokenizer_file: str,
                     workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`encode_batch` of each batch, in order, computed by `workers` processes (1: this one)."""
    if workers == 1:
        load(tokenizer_file)
        yield from map(encode_batch, batches)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_start_worker,
                             initargs=(tokenizer_file,)) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.submit(encode_batch, batch))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
