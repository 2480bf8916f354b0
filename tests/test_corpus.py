"""Packing, document boundaries and dataset resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY
from pipeline import corpus
from pipeline.config import PretrainConfig
from pipeline.recipe import load_recipe
from pipeline.corpus import document_positions, pack
from pipeline.data import load_split, local_copy
from pipeline.errors import PipelineError


def test_pack_loses_and_duplicates_no_token():
    rng = np.random.default_rng(0)
    stream = rng.integers(0, 1000, size=1037).astype(np.uint32)
    blocks, leftover = pack(stream, 64)
    assert blocks.shape == (16, 64) and len(leftover) == 1037 - 16 * 64
    assert np.array_equal(np.concatenate([blocks.reshape(-1), leftover]), stream)


def test_document_positions_restart_after_each_eos():
    eos = 2
    ids = torch.tensor([[5, 6, 2, 1, 7, 8, 9, 2, 1, 4],
                        [1, 3, 3, 3, 3, 3, 3, 3, 3, 3]])
    pos = document_positions(ids, eos)
    assert pos.tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 0, 1], list(range(10))]


def test_mirror_resolution(monkeypatch, tmp_path):
    assert local_copy("stanfordnlp/sst2") is not None  # PIPELINE_DATA_DIR from conftest
    sst2 = load_split("stanfordnlp/sst2", "validation")
    assert len(sst2) == 872 and {"sentence", "label"} <= set(sst2.column_names)
    with pytest.raises(PipelineError, match="has no split 'dev'"):
        load_split("stanfordnlp/sst2", "dev")
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path))
    assert local_copy("stanfordnlp/sst2") is None
    with pytest.raises(PipelineError, match=f"{tmp_path}/stanfordnlp/sst2/ does not exist"):
        load_split("stanfordnlp/sst2", "validation")


def test_training_seed_keeps_the_validation_documents_and_data_seed_changes_them(tmp_path, monkeypatch):
    """Two pretraining seeds must be scored on the same documents: only data_seed reshuffles the mixture."""
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path))
    mixture = ("mixture=[{dataset: local/enwiki_featured_good_2019, split: train, eval_split: validation, weight: 1},"
               "{dataset: stanfordnlp/imdb, split: unsupervised, eval_split: null, weight: 1}]")
    common = [mixture, "max_documents=30", "holdout_documents=10", "tokenizer_documents=20"]

    def eval_tokens(*overrides: str) -> np.ndarray:
        cfg = load_recipe(PretrainConfig, TINY, [*common, *overrides])
        built = corpus.build(cfg, log=lambda *_: None)
        return np.asarray(built.eval.blocks).copy()

    first = eval_tokens("seed=1")
    assert np.array_equal(first, eval_tokens("seed=2"))
    assert len(list(tmp_path.glob("corpus-*"))) == 1  # one cache, shared by both seeds
    assert not np.array_equal(first, eval_tokens("data_seed=7"))
