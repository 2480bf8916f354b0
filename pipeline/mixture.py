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

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.config import CorpusSource

SPLITS = ("train", "eval")  # each split draws from its own seeds: validation never depends on max_tokens


@dataclass
class Plan:
    """A split's token stream as a list of picks: pick j is the first `kept[j]` tokens of document
    `doc_of[j]` of source `source_of[j]` (a cut document ends in <eos> instead of its own last token)."""

    source_of: np.ndarray
    doc_of: np.ndarray
    kept: np.ndarray
    whole: np.ndarray  # the picked documents' full lengths
    sources: list[dict]  # per source: dataset, documents, tokens, share, epochs

    @property
    def n_tokens(self) -> int:
        return int(self.kept.sum())

    def tokens(self, start: int, stop: int, read: Callable[[int, int, int, int], np.ndarray], eos_id: int) -> np.ndarray:
        """Tokens start..stop of the stream; `read(source, doc, lo, hi)` gives tokens lo..hi of a document."""
        ends = np.cumsum(self.kept)  # a few bytes per document: cheap to recompute per shard
        first = int(np.searchsorted(ends, start, side="right"))
        out, pos = np.empty(stop - start, dtype=np.int64), start
        for j in range(first, len(ends)):
            if pos >= stop:
                break
            begin = int(ends[j] - self.kept[j])
            lo, hi = pos - begin, min(stop, int(ends[j])) - begin
            piece = read(int(self.source_of[j]), int(self.doc_of[j]), lo, hi)
            out[pos - start:pos - start + len(piece)] = piece
            if hi == self.kept[j] and self.kept[j] < self.whole[j]:
                out[pos - start + len(piece) - 1] = eos_id
            pos += len(piece)
        return out


def shares(sources: list[CorpusSource]) -> np.ndarray:
    weights = np.array([s.weight for s in sources], dtype=float)
    return weights / weights.sum()


def tokenizer_texts(sources: list[CorpusSource], counts: list[int], mean_bytes: list[float], n: int, seed: int,
                    texts: Callable[[int, np.ndarray], list[str]]) -> list[str]:
    """About `n` training documents for the tokenizer, each source giving about its share of the text.

    The tokenizer must exist before tokens can be counted, so UTF-8 bytes stand in for tokens: a source
    gets documents in proportion to share / mean document bytes (at least one). They are the first
    documents of its seeded training order, i.e. the first the mixture takes from it. `texts(i, docs)`
    gives source i's documents by position.
    """
    weight = shares(sources) / np.array(mean_bytes)
    picked = np.clip(np.round(n * weight / weight.sum()).astype(int), 1, counts)
    rngs = _rngs(seed, "train", len(sources))
    result = []
    for i, (count, k, rng) in enumerate(zip(counts, picked, rngs)):
        first_epoch = next(_epoch_orders(count, rng, keep_order=len(sources) == 1))
        result += texts(i, first_epoch[:k])
    return result


def plan(sources: list[CorpusSource], lengths: list[np.ndarray], split: str, total: int | None, seed: int) -> Plan:
    """Which documents make a split's stream: source i gives `shares[i]` of `total` tokens (None: the most
    without repeats). `lengths[i]` are source i's document lengths in tokens, <bos> and <eos> included."""
    available = np.array([int(x.sum()) for x in lengths], dtype=np.int64)
    budget = _budgets(available, shares(sources), total)
    rngs = _rngs(seed, split, len(sources))
    single = len(sources) == 1
    picks, rows = [], []
    for i, (src, doc_lengths) in enumerate(zip(sources, lengths)):
        docs, kept = _take(doc_lengths, int(budget[i]), _epoch_orders(len(doc_lengths), rngs[i], keep_order=single))
        picks.append((np.full(len(docs), i), docs, kept, doc_lengths[docs]))
        rows.append({"dataset": src.dataset, "documents": len(docs), "tokens": int(kept.sum()),
                     "epochs": round(float(kept.sum() / available[i]), 4)})
    source_of, doc_of, kept, whole = (np.concatenate(column) for column in zip(*picks))
    if not single:
        order = rngs[-1].permutation(len(doc_of))
        source_of, doc_of, kept, whole = source_of[order], doc_of[order], kept[order], whole[order]
    for row in rows:
        row["share"] = round(row["tokens"] / max(int(kept.sum()), 1), 4)
    return Plan(source_of, doc_of, kept, whole, rows)


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
