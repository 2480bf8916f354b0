"""Pretraining corpus: documents → tokenizer → token shards → packed blocks, cached on disk.

Each corpus of a mixture gives its weight's share of the tokens (pipeline/mixture.py), so every
source is tokenized before the mixture decides what to keep. Documents stream from their Arrow files
in batches, are tokenized by `tokenize_workers` processes (pipeline/encoding.py) into document
shards, and the mixture's picks are then copied into fixed-size block shards (pipeline/shards.py):
a build holds about one shard of tokens at a time, however big the corpus. Documents are joined
with EOS and cut into `seq_len` blocks without padding, like nanoGPT, so a second run with the same
recipe skips tokenizer training and tokenization entirely. A killed build continues from the shards
it wrote. Document boundaries stay visible inside every block: they are the EOS tokens, from which
the collator derives per-document `position_ids` for document masking.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from pipeline import encoding, mixture, shards, streaming
from pipeline.config import CorpusSource, PretrainConfig
from pipeline.data import files_fingerprint, load_split, require_columns
from pipeline.errors import PipelineError
from pipeline.shards import PackedBlocks
from pipeline.tokenizer import token_byte_lengths, train_tokenizer

CACHE_ENV = "PIPELINE_CACHE_DIR"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, "data/cache"))


@dataclass
class PackedCorpus:
    tokenizer: PreTrainedTokenizerFast
    train: "PackedBlocks"
    eval: "PackedBlocks"
    stats: dict


def pack(stream: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut a token stream into [n, seq_len] blocks; return the blocks and the leftover tail.

    `concat(blocks) + leftover == stream`: no token is lost or duplicated, and the
    leftover (shorter than one block) is reported rather than padded.
    """
    n = len(stream) // seq_len
    return stream[: n * seq_len].reshape(n, seq_len), stream[n * seq_len :]


def document_positions(input_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Position ids that restart after every EOS, for a [batch, seq] tensor of packed blocks.

    A document owns its tokens up to and including its EOS. transformers reads restarting
    position_ids (with attention_mask=None) as packed sequences and masks across them.
    """
    seq = input_ids.shape[-1]
    idx = torch.arange(seq, device=input_ids.device).expand_as(input_ids)
    # Index of the first token of the current document: one past the last EOS before it.
    after_eos = torch.zeros_like(input_ids, dtype=torch.bool)
    after_eos[..., 1:] = input_ids[..., :-1] == eos_id
    starts = torch.where(after_eos, idx, torch.zeros_like(idx))
    starts = torch.cummax(starts, dim=-1).values
    return idx - starts


def build(cfg: PretrainConfig, log=print) -> PackedCorpus:
    """Load (or build and cache) the tokenizer and packed blocks for a pretraining recipe."""
    sources = cfg.sources()
    key = {"sources": [asdict(s) for s in sources], "max_documents": cfg.max_documents, "max_tokens": cfg.max_tokens,
           "holdout": cfg.holdout_documents, "seed": cfg.data_seed,
           "v": 3}  # v3: block shards of uint16/uint32 (v2: one uint32 file per split)
    files = [files_fingerprint(s.dataset) for s in sources]
    if any(files):  # the user's own files: an edit gives a new cache (hub ids keep the keys they had)
        key["files"] = files
    corpus_key = _hash(key)
    tok_key = _hash({"corpus": corpus_key, "vocab": cfg.vocab_size, "docs": cfg.tokenizer_documents})
    folder = cache_root() / f"corpus-{_hash({'tok': tok_key, 'seq_len': cfg.seq_len})}"
    if not (folder / "stats.json").is_file():
        _build_locked(folder, cfg, sources, log)
    else:
        log(f"corpus: using cache {folder}")
    stats = json.loads((folder / "stats.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    dtype, shard_blocks = np.dtype(stats["dtype"]), stats["shard_blocks"]
    evals = PackedBlocks(shards.block_shard_paths(folder, "eval"), cfg.seq_len, dtype, shard_blocks,
                         cfg.max_eval_samples)
    if cfg.streaming():
        held = [streaming.held_out_rows(s, i, cfg.holdout_documents, cfg.data_seed) for i, s in enumerate(sources)]
        train = streaming.StreamingBlocks(sources, mixture.shares(sources), held,
                                          str(folder / "tokenizer" / "tokenizer.json"), cfg.seq_len, cfg.max_documents)
        n_train = "streamed"
    else:
        train = PackedBlocks(shards.block_shard_paths(folder, "train"), cfg.seq_len, dtype, shard_blocks,
                             cfg.max_train_samples)
        n_train = len(train)
    if n_train == 0 or len(evals) == 0:
        raise PipelineError(
            f"the corpus yields {n_train} train and {len(evals)} validation blocks of seq_len={cfg.seq_len}: "
            "read more documents (max_documents) or lower seq_len"
        )
    return PackedCorpus(tokenizer, train, evals, stats)


def _build_locked(folder: Path, cfg: PretrainConfig, sources: list[CorpusSource], log) -> None:
    """Build in `<folder>.partial`, which a killed build leaves behind and the next one continues."""
    partial = folder.with_name(folder.name + ".partial")
    resuming = partial.is_dir()
    partial.mkdir(parents=True, exist_ok=True)
    with open(partial / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process building the same corpus waits for the first
        if (folder / "stats.json").is_file():
            return
        if resuming:
            log(f"corpus: continuing the build left in {partial}")
        _build_into(partial, cfg, sources, log)
        shutil.rmtree(partial / "documents", ignore_errors=True)
        (partial / "lock").unlink()
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)


def _build_into(work: Path, cfg: PretrainConfig, sources: list[CorpusSource], log) -> None:
    if cfg.streaming():  # pipeline/streaming.py: only the tokenizer and the validation blocks are cached
        held = [streaming.held_out_rows(s, i, cfg.holdout_documents, cfg.data_seed) for i, s in enumerate(sources)]
        tokenizer = _tokenizer(work, cfg, log, lambda: streaming.tokenizer_texts(
            sources, mixture.shares(sources), cfg.tokenizer_documents, cfg.max_documents, held))
        evals = [_in_memory(f"{s.dataset} {s.eval_split or 'holdout'}",
                            streaming.validation_texts(s, rows, cfg.max_documents)) for s, rows in zip(sources, held)]
        stats = {"train": {"streaming": True, "sources": [{"dataset": s.dataset} for s in sources]}}
        splits = [("eval", evals, None)]
    else:
        trains, evals = _documents(cfg, sources)
        log(f"corpus: read {sum(len(d.rows) for d in trains):,} train / {sum(len(d.rows) for d in evals):,} "
            "validation documents")
        tokenizer = _tokenizer(work, cfg, log, lambda: mixture.tokenizer_texts(
            sources, [len(d.rows) for d in trains], [d.bytes / len(d.rows) for d in trains], cfg.tokenizer_documents,
            cfg.data_seed, lambda i, docs: trains[i].texts(docs)))
        stats = {}
        splits = [("train", trains, cfg.max_tokens), ("eval", evals, None)]
    dtype = shards.token_dtype(len(tokenizer))
    stats.update(seq_len=cfg.seq_len, vocab_size=len(tokenizer), dtype=dtype.name,
                 shard_blocks=max(1, shards.SHARD_TOKENS // cfg.seq_len))
    for split, docs, total in splits:
        stats[split] = _write_split(work, split, docs, total, cfg, sources, tokenizer, stats["shard_blocks"], log)
    (work / "stats.json").write_text(json.dumps(stats, indent=2))


def _write_split(work: Path, split: str, docs: list[Documents], total: int | None, cfg: PretrainConfig,
                 sources: list[CorpusSource], tokenizer: PreTrainedTokenizerFast, shard_blocks: int, log) -> dict:
    """Tokenize a split's documents, mix them (pipeline/mixture.py) and write its block shards; its stats."""
    dtype = shards.token_dtype(len(tokenizer))
    workers = cfg.tokenize_workers or len(os.sched_getaffinity(0))
    stores = [_tokenize(d, work / "documents" / f"{split}-{i}", work / "tokenizer", dtype, workers)
              for i, d in enumerate(docs)]
    plan = mixture.plan(sources, [s.lengths for s in stores], split, total, cfg.data_seed)
    for row in plan.sources:
        log(f"corpus: {split}: {row['dataset']}: {row['documents']:,} documents, {row['tokens']:,} tokens, "
            f"share {row['share']:.3f}, {row['epochs']:.2f} epochs")

    def tokens(start: int, stop: int) -> np.ndarray:
        return plan.tokens(start, stop, lambda s, doc, lo, hi: stores[s].read(doc, lo, hi), tokenizer.eos_token_id)

    n_blocks = plan.n_tokens // cfg.seq_len
    with tqdm(total=n_blocks * cfg.seq_len, desc=f"packing {split}", unit="tok", unit_scale=True) as bar:
        shards.write_block_shards(work, split, n_blocks * cfg.seq_len, shard_blocks * cfg.seq_len, dtype,
                                  tokens, bar.update)
    leftover = tokens(n_blocks * cfg.seq_len, plan.n_tokens)
    for store in stores:
        store.close()
    byte_lengths = token_byte_lengths(tokenizer)
    written = shards.read_sequential(shards.block_shard_paths(work, split), dtype)
    n_bytes = sum(int(byte_lengths[part].sum()) for part in written) + int(byte_lengths[leftover].sum())
    log(f"corpus: {split}: {plan.n_tokens:,} tokens → {n_blocks:,} blocks of {cfg.seq_len} "
        f"({len(leftover)} leftover tokens)")
    return {"documents": sum(row["documents"] for row in plan.sources), "tokens": plan.n_tokens,
            "blocks": n_blocks, "leftover_tokens": len(leftover), "bytes": n_bytes, "sources": plan.sources}


def _tokenizer(work: Path, cfg: PretrainConfig, log, texts: Callable[[], list[str]]) -> PreTrainedTokenizerFast:
    """The tokenizer a killed build already trained, else a new one trained on `texts()`."""
    if (work / "tokenizer").is_dir():
        return AutoTokenizer.from_pretrained(work / "tokenizer")
    texts = texts()
    log(f"tokenizer: training byte-level BPE, vocab {cfg.vocab_size}, on {len(texts):,} documents")
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    shutil.rmtree(work / "tokenizer.tmp", ignore_errors=True)
    tokenizer.save_pretrained(work / "tokenizer.tmp")
    os.replace(work / "tokenizer.tmp", work / "tokenizer")
    return tokenizer


def _tokenize(docs: Documents, folder: Path, tokenizer_dir: Path, dtype: np.dtype,
              workers: int) -> shards.DocumentStore:
    """Tokenize a source split's documents into document shards, after those a killed build wrote."""
    writer = shards.DocumentWriter(folder, dtype)
    left = len(docs.rows) - writer.documents_done
    if left:
        with tqdm(total=len(docs.rows), initial=writer.documents_done, unit="doc",
                  desc=f"tokenizing {docs.name} ({workers} process{'es' if workers > 1 else ''})") as bar:
            batches = docs.batches(skip=writer.documents_done)
            for ids, lengths in encoding.encode_documents(batches, str(tokenizer_dir / "tokenizer.json"), workers):
                writer.add(ids, lengths)
                bar.update(len(lengths))
        writer.close()
    return shards.DocumentStore(folder, dtype)


@dataclass
class Documents:
    """One source split's non-empty documents: rows of a loaded split, read in batches when tokenized."""

    name: str  # dataset and split, for messages
    dataset: datasets.Dataset
    column: str
    rows: np.ndarray  # int64 row numbers of the documents, in order
    bytes: int  # their UTF-8 bytes

    def texts(self, positions: np.ndarray) -> list[str]:
        """A few documents by position (the tokenizer's sample)."""
        return list(self.dataset.select(self.rows[positions])[self.column])

    def batches(self, skip: int) -> Iterator[list[str]]:
        """The documents' texts in order, after the first `skip`, about BATCH_BYTES of text at a time."""
        if skip >= len(self.rows):
            return
        lo, hi = int(self.rows[skip]), int(self.rows[-1]) + 1
        wanted = np.zeros(hi - lo, dtype=bool)
        wanted[self.rows[skip:] - lo] = True
        batch, size = [], 0
        for first, texts in _text_batches(self.dataset, self.column, lo, hi):
            for text in itertools.compress(texts, wanted[first - lo:first - lo + len(texts)]):
                batch.append(text)
                size += len(text)
                if size >= BATCH_BYTES:
                    yield batch
                    batch, size = [], 0
        if batch:
            yield batch


BATCH_BYTES = 1 << 20  # characters of text per tokenizer call: big enough to amortize a worker round trip


def validation_documents(cfg: PretrainConfig) -> list[Documents]:
    """Each source's validation documents, whole and in order, before the mixture cuts them to token shares:
    text that scores checkpoints with different tokenizers on the same bytes (bench/same_text_bpb.py)."""
    return _documents(cfg, cfg.sources())[1]


def _documents(cfg: PretrainConfig, sources: list[CorpusSource]) -> tuple[list[Documents], list[Documents]]:
    """Each source's train and validation documents: the non-empty texts of its splits (or held-out rows)."""
    trains, evals = [], []
    for src in sources:
        train = load_split(src.dataset, src.split, src.dataset_config)
        require_columns(train, [src.text_column], src.dataset, src.split)
        if src.eval_split:
            held = load_split(src.dataset, src.eval_split, src.dataset_config)
            require_columns(held, [src.text_column], src.dataset, src.eval_split)
            train_rows, held_rows = (0, len(train)), (0, len(held))
        else:  # no validation split: hold out the last documents of the train split
            held = train
            n_hold = min(cfg.holdout_documents, len(train) // 2)
            train_rows, held_rows = (0, len(train) - n_hold), (len(train) - n_hold, len(train))
        trains.append(_non_empty(train, src, src.split, *train_rows, cfg.max_documents))
        evals.append(_non_empty(held, src, src.eval_split or "holdout", *held_rows, cfg.max_documents))
    return trains, evals


def _non_empty(ds: datasets.Dataset, src: CorpusSource, split: str, lo: int, hi: int,
               limit: int | None) -> Documents:
    """Rows lo..hi (the first `limit` of them) whose text is not blank."""
    if limit is not None:
        hi = min(hi, lo + limit)
    rows, n_bytes = [], 0
    for first, texts in _text_batches(ds, src.text_column, lo, hi):
        for i, text in enumerate(texts):
            if text and text.strip():
                rows.append(first + i)
                n_bytes += len(text.encode("utf-8"))
    if not rows:
        raise PipelineError(
            f"dataset {src.dataset} split '{split}' has no non-empty text in column '{src.text_column}': "
            "point the recipe at a corpus with text"
        )
    return Documents(f"{src.dataset} {split}", ds, src.text_column, np.array(rows, dtype=np.int64), n_bytes)


def _in_memory(name: str, texts: list[str]) -> Documents:
    """Documents held in memory (a streamed source's validation documents)."""
    if not texts:
        raise PipelineError(f"{name} streams no validation text: point the recipe at a corpus with text")
    return Documents(name, datasets.Dataset.from_dict({"text": texts}), "text", np.arange(len(texts)),
                     sum(len(t.encode("utf-8")) for t in texts))


def _text_batches(ds: datasets.Dataset, column: str, lo: int, hi: int) -> Iterator[tuple[int, list[str]]]:
    """Rows lo..hi of a text column as (first row, texts), a record batch at a time.

    A loaded split is memory-mapped Arrow; reading it through the map would leave every page read
    resident, so a build's memory would grow with the corpus. Its files are read with plain reads.
    """
    files = [f["filename"] for f in ds.cache_files]
    if ds._indices is not None or not files:  # a table in memory or behind an index: read it as datasets does
        for start in range(lo, hi, 1000):
            yield start, ds[start:min(start + 1000, hi)][column]
        return
    row = 0
    for name in files:
        with pa.OSFile(name) as f:
            for batch in pa.ipc.open_stream(f):
                first, row = row, row + batch.num_rows
                if row <= lo:
                    continue
                start, stop = max(lo, first), min(hi, row)
                yield start, batch.column(column).slice(start - first, stop - start).to_pylist()
                if row >= hi:
                    return


def token_stream(docs: datasets.Dataset, tokenizer: PreTrainedTokenizerFast) -> np.ndarray:
    """One stream of token ids, every document as <bos> text <eos>, for a few texts in memory (any tokenizer)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    # split_special_tokens: a literal "<|eos|>" in the text is text, not a boundary.
    ids = tokenizer(list(docs["text"]), add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return np.fromiter(itertools.chain.from_iterable([bos, *x, eos] for x in ids), dtype=np.uint32)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
