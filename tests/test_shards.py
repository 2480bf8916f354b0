"""The sharded token cache: uint16 shards, blocks read across them, a killed build continuing, workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY, bad_input_line
from pipeline import corpus, shards
from pipeline.config import PretrainConfig
from pipeline.recipe import load_recipe

WIKI = "{dataset: local/enwiki_featured_good_2019, split: train, eval_split: validation, weight: 0.5}"
IMDB = "{dataset: stanfordnlp/imdb, split: unsupervised, eval_split: null, weight: 0.5}"
MIXTURE = [f"mixture=[{WIKI}, {IMDB}]", "max_documents=40", "holdout_documents=10", "max_eval_samples=null"]


def build(cache, monkeypatch, *overrides: str, log=lambda *_: None) -> corpus.PackedCorpus:
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(cache))
    cfg = load_recipe(PretrainConfig, TINY, ["tokenizer_documents=40", *overrides])
    return corpus.build(cfg, log=log)


def test_token_dtype_is_the_smallest_that_holds_every_id():
    assert shards.token_dtype(512) == np.uint16 and shards.token_dtype(65_536) == np.uint16
    assert shards.token_dtype(65_537) == np.uint32


def test_blocks_read_across_small_shards_equal_one_shard(tmp_path, monkeypatch):
    one = build(tmp_path / "one", monkeypatch, *MIXTURE)
    (folder,) = (tmp_path / "one").glob("corpus-*")
    files = shards.block_shard_paths(folder, "train")
    assert len(files) == 1 and files[0].stat().st_size == 2 * len(one.train) * 64  # uint16: 2 bytes a token
    assert one.stats["dtype"] == "uint16"

    monkeypatch.setattr(shards, "SHARD_TOKENS", 64 * 7 + 5)  # 7 blocks a block shard; documents shards of ~450
    many = build(tmp_path / "many", monkeypatch, *MIXTURE)
    (folder,) = (tmp_path / "many").glob("corpus-*")
    assert len(shards.block_shard_paths(folder, "train")) == -(-len(many.train) // 7) > 3
    assert not (folder / "documents").exists()  # the document shards go once the blocks are written
    assert np.array_equal(many.train.blocks, one.train.blocks)
    assert np.array_equal(many.eval.blocks, one.eval.blocks)
    assert many.stats["train"] == one.stats["train"] and many.stats["eval"] == one.stats["eval"]
    for i in (0, 6, 7, len(many.train) - 1):  # either side of a shard boundary, and the last block
        assert many.train[i].dtype == torch.int64 and np.array_equal(many.train[i].numpy(), one.train.blocks[i])
    with pytest.raises(IndexError):
        many.train[len(many.train)]


def test_a_killed_build_continues_from_the_shards_it_wrote(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "SHARD_TOKENS", 64 * 7)
    fresh = build(tmp_path / "fresh", monkeypatch, *MIXTURE)

    written = []
    real_write = shards.write_atomic

    def dies_after_40_files(path, array):
        if len(written) == 40:
            raise KeyboardInterrupt  # as a kill would: mid-build, after some shards are complete
        written.append(path)
        real_write(path, array)

    monkeypatch.setattr(shards, "write_atomic", dies_after_40_files)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "killed", monkeypatch, *MIXTURE)
    (partial,) = (tmp_path / "killed").glob("corpus-*.partial")
    assert (partial / "tokenizer").is_dir() and not (partial / "stats.json").exists()

    monkeypatch.setattr(shards, "write_atomic", real_write)
    lines = []
    resumed = build(tmp_path / "killed", monkeypatch, *MIXTURE, log=lines.append)
    assert any(line.startswith("corpus: continuing the build left in") for line in lines), lines
    assert not any(line.startswith("tokenizer: training") for line in lines)  # the saved one was reused
    assert not partial.exists()
    assert resumed.tokenizer.get_vocab() == fresh.tokenizer.get_vocab()
    assert np.array_equal(resumed.train.blocks, fresh.train.blocks)
    assert np.array_equal(resumed.eval.blocks, fresh.eval.blocks)
    assert resumed.stats == fresh.stats


def test_tokens_do_not_depend_on_the_number_of_tokenize_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "BATCH_BYTES", 20_000)  # many batches in flight between the two workers
    one = build(tmp_path / "one", monkeypatch, *MIXTURE, "tokenize_workers=1")
    two = build(tmp_path / "two", monkeypatch, *MIXTURE, "tokenize_workers=2")
    assert np.array_equal(one.train.blocks, two.train.blocks) and len(one.train) > 50
    assert np.array_equal(one.eval.blocks, two.eval.blocks)
    assert one.stats == two.stats


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_bad_tokenize_workers_exits_2_with_one_line(tmp_path, capsys, value):
    line = bad_input_line(["pretrain", "--recipe", TINY, f"tokenize_workers={value}", "--out", tmp_path / "out"], capsys)
    assert "'tokenize_workers'" in line
    assert not (tmp_path / "out").exists()
