"""Mixture weights are token shares: on real corpora from the mirror, with cuts, repeats and huge documents."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY, bad_input_line
from pipeline import corpus
from pipeline.config import PretrainConfig
from pipeline.recipe import load_recipe
from pipeline.corpus import pack
from pipeline.data import load_split
from pipeline.tokenizer import train_tokenizer

WIKI = "{dataset: local/enwiki_featured_good_2019, split: train, eval_split: validation, weight: %s}"
IMDB = "{dataset: stanfordnlp/imdb, split: unsupervised, eval_split: null, weight: %s}"
# Gutenberg's validation split (six books of 230k-630k characters) as a corpus: three books train, three are held out.
GUTENBERG = "{dataset: local/gutenberg_en_books, split: validation, eval_split: null, weight: %s}"


def build(tmp_path, monkeypatch, *overrides: str) -> corpus.PackedCorpus:
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path))
    cfg = load_recipe(PretrainConfig, TINY, ["tokenizer_documents=40", *overrides])
    return corpus.build(cfg, log=lambda *_: None)


def direct_tokens(texts: list[str], tokenizer) -> np.ndarray:
    """The stream the corpus had before mixing: every document as <bos> text <eos>, in order."""
    ids = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return np.concatenate([[tokenizer.bos_token_id, *x, tokenizer.eos_token_id] for x in ids]).astype(np.uint32)


def check_split(stats: dict, weights: list[float]) -> None:
    """Realized token shares within 2 points of the weights, and the per-source rows add up to the split."""
    rows = stats["sources"]
    assert sum(r["tokens"] for r in rows) == stats["tokens"]
    assert sum(r["documents"] for r in rows) == stats["documents"]
    asked = np.array(weights) / sum(weights)
    realized = np.array([r["tokens"] for r in rows]) / stats["tokens"]
    assert np.all(np.abs(realized - asked) <= 0.02), (realized, asked)


@pytest.mark.parametrize("weights", [(0.3, 0.7), (0.5, 0.5)])
def test_token_shares_follow_the_weights(tmp_path, monkeypatch, weights):
    built = build(tmp_path, monkeypatch, f"mixture=[{WIKI % weights[0]}, {IMDB % weights[1]}]", "max_documents=60",
                  "holdout_documents=20")
    for split in ("train", "eval"):
        stats = built.stats[split]
        check_split(stats, list(weights))
        wiki, imdb = stats["sources"]
        # IMDB's short reviews are the scarce source: all of them, once; Wikipedia is cut to its share.
        assert imdb["epochs"] == 1.0 and 0 < wiki["epochs"] < 1
    reviews = load_split("stanfordnlp/imdb", "unsupervised")
    train_reviews = list(reviews.select(range(60))["text"])
    assert built.stats["train"]["sources"][1]["tokens"] == len(direct_tokens(train_reviews, built.tokenizer))


def test_a_few_huge_documents_keep_their_share(tmp_path, monkeypatch):
    """Gutenberg books are far longer than a share of a small mixture: one is cut at the budget, ending in <eos>."""
    weights = [0.4, 0.1, 0.5]  # gpu-small's
    built = build(tmp_path, monkeypatch, f"mixture=[{WIKI % 0.4}, {GUTENBERG % 0.1}, {IMDB % 0.5}]",
                  "max_documents=30", "holdout_documents=3", "max_eval_samples=null")
    for split, blocks in (("train", built.train.blocks), ("eval", built.eval.blocks)):
        stats = built.stats[split]
        check_split(stats, weights)
        books = stats["sources"][1]
        assert books["documents"] == 1 and books["epochs"] < 0.1
        tokens = np.asarray(blocks).reshape(-1)
        # Every document, the cut one included, is <bos> ... <eos>: as many of each as documents.
        bos, eos = (int(np.sum(tokens == t)) for t in (built.tokenizer.bos_token_id, built.tokenizer.eos_token_id))
        assert abs(bos - stats["documents"]) <= 1 and abs(eos - stats["documents"]) <= 1


def test_max_tokens_repeats_the_scarce_source_and_keeps_the_shares(tmp_path, monkeypatch):
    mixture = f"mixture=[{WIKI % 0.5}, {IMDB % 0.5}]"
    common = [mixture, "max_documents=30", "holdout_documents=10"]
    default = build(tmp_path, monkeypatch, *common)
    repeated = build(tmp_path, monkeypatch, *common, "max_tokens=100000")
    stats = repeated.stats["train"]
    assert stats["tokens"] == 100_000
    check_split(stats, [0.5, 0.5])
    wiki, imdb = stats["sources"]
    assert imdb["epochs"] > 2 and wiki["epochs"] < 1
    once = default.stats["train"]["sources"][1]
    assert imdb["epochs"] == pytest.approx(imdb["tokens"] / once["tokens"], abs=1e-4)
    assert imdb["documents"] > 2 * once["documents"]
    # Validation is mixed the same way with or without max_tokens, and never repeats.
    assert repeated.stats["eval"] == default.stats["eval"]
    assert np.array_equal(np.asarray(repeated.eval.blocks), np.asarray(default.eval.blocks))


def test_a_single_corpus_packs_as_before(tmp_path, monkeypatch):
    """One dataset, no max_tokens: the same tokenizer and blocks as documents joined in order; max_tokens caps it."""
    common = ["max_documents=8", "max_eval_samples=null"]  # tiny.yaml's Wikipedia, 8 articles a split
    built = build(tmp_path, monkeypatch, *common)
    train = list(load_split("local/enwiki_featured_good_2019", "train").select(range(8))["text"])
    held = list(load_split("local/enwiki_featured_good_2019", "validation").select(range(8))["text"])
    tokenizer = train_tokenizer(train, 512)
    assert tokenizer.get_vocab() == built.tokenizer.get_vocab()
    expected = direct_tokens(train, tokenizer)
    assert np.array_equal(np.asarray(built.train.blocks), pack(expected, 64)[0])
    assert np.array_equal(np.asarray(built.eval.blocks), pack(direct_tokens(held, tokenizer), 64)[0])
    assert built.stats["train"]["bytes"] == sum(len(t.encode("utf-8")) for t in train)
    assert built.stats["train"]["sources"] == [{"dataset": "local/enwiki_featured_good_2019", "documents": 8,
                                                "tokens": len(expected), "epochs": 1.0, "share": 1.0}]

    capped = build(tmp_path, monkeypatch, *common, f"max_tokens={64 * 100 + 1}")
    assert capped.stats["train"]["tokens"] == 64 * 100 + 1
    assert np.array_equal(np.asarray(capped.train.blocks).reshape(-1), expected[:64 * 100])  # a prefix, in order

    twice = build(tmp_path, monkeypatch, *common, f"max_tokens={2 * len(expected) + 1000}")
    row, = twice.stats["train"]["sources"]
    assert row["epochs"] == pytest.approx(2 + 1000 / len(expected), abs=1e-4) and row["documents"] >= 17
    first_epoch = np.asarray(twice.train.blocks).reshape(-1)[:len(expected)]
    assert np.array_equal(first_epoch, expected[:len(first_epoch)])
    assert twice.stats["eval"] == built.stats["eval"]


@pytest.mark.parametrize("value", ["0", "-5"])
def test_bad_max_tokens_exits_2_with_one_line(tmp_path, capsys, value):
    line = bad_input_line(["pretrain", "--recipe", TINY, f"max_tokens={value}", "--out", tmp_path / "out"], capsys)
    assert "recipe key 'max_tokens'" in line
    assert not (tmp_path / "out").exists()
