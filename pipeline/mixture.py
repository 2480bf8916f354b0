"""Token-share mixing: each corpus of a pretraining mixture gives its `weight` share of the TOKENS.

Weights used to be document probabilities, and the mixture stopped when its first corpus ran out:
a corpus of few, long documents (Gutenberg books) then gave 80% of the bytes at a weight of 0.1.
Here the normalised weights are shares of the tokens of each split:

- The default total is the largest at which no source repeats (min over sources of tokens / share):
  the source that sets it gives all its documents, every other one a seeded sample of its own.
- `max_tokens` sets the training total. A source whose share asks for more than it has repeats:
  whole extra epochs, each in a fresh seeded order, the last one partial; its epochs are reported
  (e.g. 2.37). No source running out ever stops the others. Validation is only ever cut.
- Documents are taken whole, in a seeded order, until the source's budget; the one that crosses
  the budget is cut there (it keeps its <bos> and ends with <eos>, so document boundaries stay
  intact). Without that cut a source of a few huge documents (one Gutenberg book can be 2.5% of the
  gpu-small corpus) would miss its share by whole points; with it, shares are exact to the token.
- A mixture's documents are shuffled together (data_seed), so every stretch of training sees the
  mix. A single corpus keeps its documents' order in its first epoch, so that without max_tokens
  it packs exactly as before mixing existed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow.compute as pc

from pipeline.config import CorpusSource

SPLITS = ("train", "eval")  # each split draws from its own seeds: validation never depends on max_tokens


@dataclass
class Tokenized:
    """One source's documents as token ids: document i is `ids[offsets[i]:offsets[i + 1]]`."""

    ids: np.ndarray  # uint32, every document's tokens back to back
    offsets: np.ndarray  # int64, one more than there are documents, starting at 0

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass
class Mixed:
    """A split's token stream and what each source gave it."""

    stream: np.ndarray  # uint32 token ids, every document (or cut document) ending in <eos>
    sources: list[dict]  # per source: dataset, documents, tokens, share, epochs


def shares(sources: list[CorpusSource]) -> np.ndarray:
    weights = np.array([s.weight for s in sources], dtype=float)
    return weights / weights.sum()


def tokenizer_texts(sources: list[CorpusSource], docs: list[datasets.Dataset], n: int, seed: int) -> list[str]:
    """About `n` training documents for the tokenizer, each source giving about its share of the text.

    The tokenizer must exist before tokens can be counted, so UTF-8 bytes stand in for tokens: a source
    gets documents in proportion to share / mean document bytes (at least one). They are the first
    documents of its seeded training order, i.e. the first the mixture takes from it.
    """
    mean_bytes = np.array([pc.sum(pc.binary_length(d.with_format("arrow")["text"])).as_py() / len(d) for d in docs])
    weight = shares(sources) / mean_bytes
    counts = np.clip(np.round(n * weight / weight.sum()).astype(int), 1, [len(d) for d in docs])
    rngs = _rngs(seed, "train", len(sources))
    texts = []
    for d, count, rng in zip(docs, counts, rngs):
        first_epoch = next(_epoch_orders(len(d), rng, keep_order=len(sources) == 1))
        texts += d.select(first_epoch[:count])["text"]
    return texts


def mix(sources: list[CorpusSource], tokenized: list[Tokenized], split: str, total: int | None, seed: int,
        eos_id: int) -> Mixed:
    """One token stream in which source i gives `shares[i]` of `total` tokens (None: the most without repeats)."""
    available = np.array([int(t.offsets[-1]) for t in tokenized], dtype=np.int64)
    budget = _budgets(available, shares(sources), total)
    rngs = _rngs(seed, split, len(sources))
    single = len(sources) == 1
    picks, rows = [], []
    for i, (src, tok) in enumerate(zip(sources, tokenized)):
        lengths = tok.lengths
        docs, kept = _take(lengths, int(budget[i]), _epoch_orders(len(lengths), rngs[i], keep_order=single))
        picks.append((np.full(len(docs), i), docs, kept))
        rows.append({"dataset": src.dataset, "documents": len(docs), "tokens": int(kept.sum()),
                     "epochs": round(float(kept.sum() / available[i]), 4)})
    source_of, doc_of, kept = (np.concatenate(column) for column in zip(*picks))
    if not single:
        order = rngs[-1].permutation(len(doc_of))
        source_of, doc_of, kept = source_of[order], doc_of[order], kept[order]
    stream = _assemble(tokenized, source_of, doc_of, kept, eos_id)
    for row in rows:
        row["share"] = round(row["tokens"] / max(len(stream), 1), 4)
    return Mixed(stream, rows)


def _budgets(available: np.ndarray, share: np.ndarray, total: int | None) -> np.ndarray:
    """Tokens each source gives: its share of `total`, or of the largest total at which none repeats."""
    if total is None:
        return np.minimum(np.round(share * (available / share).min()).astype(np.int64), available)
    exact = share * total
    budget = np.floor(exact).astype(np.int64)
    budget[np.argsort(budget - exact)[: total - budget.sum()]] += 1  # largest remainders: the sum is `total`
    return budget


def _take(lengths: np.ndarray, budget: int, orders: Iterator[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Documents (repeats included) that fill `budget` tokens, and the tokens kept of each.

    Epoch after epoch, documents are taken in that epoch's order; the one that crosses the budget
    is cut to end on it (at least 2 tokens, <bos> and <eos>, so it may overshoot by one).
    """
    picked, left = [], budget
    while left > 0:
        order = next(orders)
        ends = np.cumsum(lengths[order])
        k = min(int(np.searchsorted(ends, left)), len(order) - 1)  # first document that reaches the budget
        picked.append(order[: k + 1])
        left -= int(ends[k])
    docs = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    kept = lengths[docs].copy()
    if left < 0:
        kept[-1] = max(kept[-1] + left, 2)
    return docs, kept


def _epoch_orders(n_docs: int, rng: np.random.Generator, keep_order: bool) -> Iterator[np.ndarray]:
    """Each epoch's document order: a fresh seeded permutation (a single corpus keeps its first epoch's order)."""
    if keep_order:
        yield np.arange(n_docs)
    while True:
        yield rng.permutation(n_docs)


def _rngs(seed: int, split: str, n_sources: int) -> list[np.random.Generator]:
    """One generator per source, and a last one for shuffling the mixture, independent per split."""
    children = np.random.SeedSequence([seed, SPLITS.index(split)]).spawn(n_sources + 1)
    return [np.random.default_rng(child) for child in children]


def _assemble(tokenized: list[Tokenized], source_of: np.ndarray, doc_of: np.ndarray, kept: np.ndarray,
              eos_id: int) -> np.ndarray:
    """The picked documents back to back; a cut one gets <eos> as its last token."""
    firsts, whole = np.empty(len(doc_of), dtype=np.int64), np.empty(len(doc_of), dtype=np.int64)
    for s, tok in enumerate(tokenized):
        mine = source_of == s
        firsts[mine], whole[mine] = tok.offsets[doc_of[mine]], tok.lengths[doc_of[mine]]
    stream = np.empty(int(kept.sum()), dtype=np.uint32)
    ends = np.cumsum(kept)
    for s, first, end, n in zip(source_of.tolist(), firsts.tolist(), ends.tolist(), kept.tolist()):
        stream[end - n:end] = tokenized[s].ids[first:first + n]
    stream[ends[kept < whole] - 1] = eos_id
    return stream
