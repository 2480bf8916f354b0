"""Pretraining corpus: documents → tokenizer → one token stream → packed blocks, cached on disk.

Each corpus of a mixture gives its weight's share of the tokens (pipeline/mixture.py), so every
source is tokenized before the mixture decides what to keep. Documents are joined with EOS and
cut into `seq_len` blocks without padding. The blocks are stored as a flat memory-mapped array
(`train.bin`, `eval.bin`), like nanoGPT, so a second run with the same recipe skips tokenizer
training and tokenization entirely. Document boundaries stay visible inside every block: they
are the EOS tokens, from which the collator derives per-document `position_ids` for document
masking.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from pipeline import mixture
from pipeline.config import CorpusSource, PretrainConfig
from pipeline.data import load_split, require_columns
from pipeline.errors import PipelineError
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


class PackedBlocks(torch.utils.data.Dataset):
    """Fixed-length token blocks over a memory-mapped array; item i is block i."""

    def __init__(self, path: Path, seq_len: int, limit: int | None = None):
        tokens = np.memmap(path, dtype=np.uint32, mode="r")
        self.blocks = tokens.reshape(-1, seq_len)
        if limit is not None:
            self.blocks = self.blocks[:limit]

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.blocks[i].astype(np.int64))


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
    corpus_key = _hash({"sources": [asdict(s) for s in sources], "max_documents": cfg.max_documents,
                        "max_tokens": cfg.max_tokens, "holdout": cfg.holdout_documents, "seed": cfg.data_seed,
                        "v": 2})
    tok_key = _hash({"corpus": corpus_key, "vocab": cfg.vocab_size, "docs": cfg.tokenizer_documents})
    folder = cache_root() / f"corpus-{_hash({'tok': tok_key, 'seq_len': cfg.seq_len})}"
    if not (folder / "stats.json").is_file():
        _build_into(folder, cfg, sources, log)
    else:
        log(f"corpus: using cache {folder}")
    stats = json.loads((folder / "stats.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    train = PackedBlocks(folder / "train.bin", cfg.seq_len, cfg.max_train_samples)
    evals = PackedBlocks(folder / "eval.bin", cfg.seq_len, cfg.max_eval_samples)
    if len(train) == 0 or len(evals) == 0:
        raise PipelineError(
            f"the corpus yields {len(train)} train and {len(evals)} validation blocks of seq_len={cfg.seq_len}: "
            "read more documents (max_documents) or lower seq_len"
        )
    return PackedCorpus(tokenizer, train, evals, stats)


def _build_into(folder: Path, cfg: PretrainConfig, sources: list[CorpusSource], log) -> None:
    trains, evals = _documents(cfg, sources)
    log(f"corpus: read {sum(map(len, trains)):,} train / {sum(map(len, evals)):,} validation documents")
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    texts = mixture.tokenizer_texts(sources, trains, cfg.tokenizer_documents, cfg.data_seed)
    log(f"tokenizer: training byte-level BPE, vocab {cfg.vocab_size}, on {len(texts):,} documents")
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    tokenizer.save_pretrained(tmp / "tokenizer")
    del texts

    stats = {"seq_len": cfg.seq_len, "vocab_size": len(tokenizer)}
    byte_lengths = token_byte_lengths(tokenizer)
    for split, docs, total in (("train", trains, cfg.max_tokens), ("eval", evals, None)):
        tokenized = [document_tokens(d, tokenizer) for d in docs]
        mixed = mixture.mix(sources, tokenized, split, total, cfg.data_seed, tokenizer.eos_token_id)
        del tokenized
        for row in mixed.sources:
            log(f"corpus: {split}: {row['dataset']}: {row['documents']:,} documents, {row['tokens']:,} tokens, "
                f"share {row['share']:.3f}, {row['epochs']:.2f} epochs")
        blocks, leftover = pack(mixed.stream, cfg.seq_len)
        blocks.tofile(tmp / f"{split}.bin")
        stats[split] = {"documents": sum(row["documents"] for row in mixed.sources), "tokens": int(len(mixed.stream)),
                        "blocks": int(len(blocks)), "leftover_tokens": int(len(leftover)),
                        "bytes": _bytes(mixed.stream, byte_lengths), "sources": mixed.sources}
        log(f"corpus: {split}: {len(mixed.stream):,} tokens → {len(blocks):,} blocks of {cfg.seq_len} "
            f"({len(leftover)} leftover tokens)")
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)  # a run killed mid-build leaves only a .tmp folder behind


def _documents(cfg: PretrainConfig,
               sources: list[CorpusSource]) -> tuple[list[datasets.Dataset], list[datasets.Dataset]]:
    """Each source's train and validation documents (column `text`)."""
    trains, evals = [], []
    for src in sources:
        if src.eval_split:
            train = load_split(src.dataset, src.split, src.dataset_config)
            held = load_split(src.dataset, src.eval_split, src.dataset_config)
        else:  # no validation split: hold out the last documents of the train split
            train = load_split(src.dataset, src.split, src.dataset_config)
            n_hold = min(cfg.holdout_documents, len(train) // 2)
            held = train.select(range(len(train) - n_hold, len(train)))
            train = train.select(range(len(train) - n_hold))
        trains.append(_clean(train, src, src.split, cfg.max_documents))
        evals.append(_clean(held, src, src.eval_split or "holdout", cfg.max_documents))
    return trains, evals


def _clean(ds: datasets.Dataset, src: CorpusSource, split: str, limit: int | None) -> datasets.Dataset:
    require_columns(ds, [src.text_column], src.dataset, split)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    ds = ds.select_columns([src.text_column]).rename_column(src.text_column, "text") \
        if src.text_column != "text" else ds.select_columns(["text"])
    ds = ds.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True)
    if len(ds) == 0:
        raise PipelineError(
            f"dataset {src.dataset} split '{split}' has no non-empty text in column '{src.text_column}': "
            "point the recipe at a corpus with text"
        )
    return ds


def token_stream(docs: datasets.Dataset, tokenizer: PreTrainedTokenizerFast) -> np.ndarray:
    """One stream of token ids: every document as <bos> text <eos>."""
    return document_tokens(docs, tokenizer).ids


def document_tokens(docs: datasets.Dataset, tokenizer: PreTrainedTokenizerFast) -> mixture.Tokenized:
    """Every document as <bos> text <eos>, as one id array with the offsets where each document starts."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id

    def encode(batch):
        # split_special_tokens: a literal "<|eos|>" in the text is text, not a boundary.
        ids = tokenizer(batch["text"], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return {"input_ids": [[bos] + x + [eos] for x in ids]}

    num_proc = 2 if len(docs) >= 2000 and (os.cpu_count() or 1) > 1 else None
    tokenized = docs.map(encode, batched=True, remove_columns=["text"], num_proc=num_proc,
                         desc="tokenizing", load_from_cache_file=False)
    column = tokenized.data.column("input_ids").combine_chunks()
    offsets = column.offsets.to_numpy().astype(np.int64)
    ids = column.flatten().to_numpy(zero_copy_only=False).astype(np.uint32)
    return mixture.Tokenized(ids, offsets - offsets[0])


def _bytes(stream: np.ndarray, byte_lengths: np.ndarray) -> int:
    """UTF-8 bytes the stream stands for: byte-level BPE maps every token to bytes exactly (special ones to none)."""
    chunk = 1 << 22  # token ids looked up a few million at a time, not as one int64 copy of the stream
    return int(sum(byte_lengths[stream[i:i + chunk]].sum() for i in range(0, len(stream), chunk)))


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]

