"""Two CPU processes (torchrun, gloo) follow the one-process run, with disjoint data shards."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import CPU_ONLY, ROOT, TINY, read_metrics, run_cli
from pipeline.trainer import epoch_batches


def test_shards_neither_overlap_nor_lose_data():
    n, micro, procs = 103, 4, 2
    shards = [epoch_batches(n, micro, procs, rank, seed=1, epoch=3) for rank in range(procs)]
    assert len(shards[0]) == len(shards[1]) == n // (micro * procs)
    seen = [i for shard in shards for batch in shard for i in batch]
    assert len(seen) == len(set(seen)) == (n // (micro * procs)) * micro * procs
    single = [i for batch in epoch_batches(n, micro * procs, 1, 0, seed=1, epoch=3) for i in batch]
    assert sorted(seen) == sorted(single)  # the same examples per step, only split differently
    assert epoch_batches(n, micro, procs, 0, seed=1, epoch=4) != shards[0]  # reshuffled each epoch


def test_two_processes_follow_one_process(tiny_pretrain, tmp_path):
    """On the CPU (gloo), also on a machine with one GPU: two processes can't share it."""
    single = tiny_pretrain
    if torch.cuda.is_available():  # the shared tiny run trained on the GPU: make a CPU one to compare with
        single = tmp_path / "one"
        done = run_cli("pretrain", "--recipe", TINY, "--out", single, "max_steps=60", env=CPU_ONLY)
        assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pipeline", "pretrain", "--recipe", str(TINY), "--out", str(out), "max_steps=60"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, **CPU_ONLY})
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = read_metrics(single, "train"), read_metrics(out, "train")
    assert [r["step"] for r in one] == [r["step"] for r in two]
    assert [r["tokens"] for r in one] == [r["tokens"] for r in two]  # same global batch
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], abs=0.02)
    eval_one, eval_two = read_metrics(single, "eval")[-1], read_metrics(out, "eval")[-1]
    assert eval_two["loss"] == pytest.approx(eval_one["loss"], abs=0.01)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-50", "step-60"]
