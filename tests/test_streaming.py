"""Streaming sources: blocks packed on the fly by token share, a saved position, kill -9 and resume bit-exact."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from itertools import islice

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY, bad_input_line, run_cli
from pipeline import corpus
from pipeline.config import PretrainConfig
from pipeline.recipe import load_recipe
from pipeline.data import load_split

WIKI = "{dataset: local/enwiki_featured_good_2019, split: train, eval_split: validation, weight: 0.5, streaming: true}"
IMDB = "{dataset: stanfordnlp/imdb, split: unsupervised, eval_split: null, weight: 0.5, streaming: true}"
# 6 rows a stream: IMDB's few short training reviews run out and start again every few steps.
STREAMED = [f"mixture=[{WIKI}, {IMDB}]", "max_documents=6", "holdout_documents=10", "tokenizer_documents=40"]


def test_streamed_blocks_follow_the_shares_and_continue_exactly_from_a_saved_state(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path))
    built = corpus.build(load_recipe(PretrainConfig, TINY, STREAMED), log=lambda *_: None)
    assert built.stats["train"]["streaming"] and len(built.eval) > 0
    assert [row["dataset"] for row in built.stats["eval"]["sources"]] == ["local/enwiki_featured_good_2019",
                                                                         "stanfordnlp/imdb"]
    stream = built.train
    blocks = [b.numpy() for b in islice(iter(stream), 600)]
    tokens = np.concatenate(blocks)
    bos, eos = built.tokenizer.bos_token_id, built.tokenizer.eos_token_id
    assert blocks[0][0] == bos and all(b.dtype == np.int64 and len(b) == 64 for b in blocks)
    assert abs(int(np.sum(tokens == bos)) - int(np.sum(tokens == eos))) <= 1  # whole <bos> ... <eos> documents
    state = stream.state_dict()
    assert state["epoch"][0] == 0 and state["epoch"][1] >= 2  # IMDB went round at least twice, Wikipedia never
    # The source behind its share gives the next document, so the shares hold to the longest document.
    articles = list(load_split("local/enwiki_featured_good_2019", "train").select(range(6))["text"])
    longest = max(map(len, built.tokenizer(articles, add_special_tokens=False)["input_ids"])) + 2
    wiki, imdb = state["tokens"]
    assert abs(wiki - imdb) <= longest and wiki + imdb - len(state["pending"]) == 600 * 64

    first = corpus.build(load_recipe(PretrainConfig, TINY, STREAMED), log=lambda *_: None).train
    head = [b.numpy() for b in islice(iter(first), 237)]
    saved = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    again = corpus.build(load_recipe(PretrainConfig, TINY, STREAMED), log=lambda *_: None).train
    again.load_state_dict(saved)
    tail = [b.numpy() for b in islice(iter(again), 600 - 237)]
    assert np.array_equal(np.stack(head + tail), np.stack(blocks))


ARGS = ["pretrain", "--recipe", str(TINY), *STREAMED, "max_steps=30", "save_steps=5", "eval_steps=15"]


def test_kill_9_then_resume_sees_the_same_streamed_blocks(tmp_path):
    whole = tmp_path / "whole"
    result = run_cli(*ARGS, "--out", whole)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "streamed train blocks" in result.stdout + result.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *ARGS, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-25" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    state = json.loads((out / "checkpoints" / "step-25" / "trainer_state.json").read_text())["data_state"]
    assert state["row"][0] > 0 and state["epoch"][1] >= 1  # a position inside both streams, IMDB past one epoch

    result = run_cli(*ARGS, "--out", out, "resume=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout + result.stderr
    a, b = load_file(whole / "final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    losses = [[r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
               if r["split"] == "train"] for run in (whole, out)]
    assert losses[0] == losses[1]


@pytest.mark.parametrize("overrides, key", [
    ([f"mixture=[{WIKI}, {IMDB.replace('streaming: true', 'streaming: false')}]"], "streaming: true"),
    ([f"mixture=[{WIKI}]", "max_tokens=1000"], "'max_tokens'"),
    ([f"mixture=[{WIKI}]", "max_steps=-1"], "'max_steps'"),
])
def test_bad_streaming_recipes_exit_2_with_one_line(tmp_path, capsys, overrides, key):
    assert key in bad_input_line(["pretrain", "--recipe", TINY, *overrides, "--out", tmp_path / "out"], capsys)
    assert not (tmp_path / "out").exists()
