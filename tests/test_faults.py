"""Faults: kill -9 at several points then resume, a kill during a save, a non-finite loss."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY, run_cli

ARGS = ["pretrain", "--recipe", str(TINY), "max_steps=60", "save_steps=5"]


def _kill_after_checkpoint(out, step: int, resume: bool) -> None:
    """Start a run and kill -9 it as soon as checkpoint step-`step` is complete."""
    cmd = [sys.executable, "-m", "pipeline", *ARGS, "--out", str(out)] + (["resume=true"] if resume else [])
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoints" / f"step-{step}" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def test_kill_9_then_resume_ends_bit_identical(tiny_pretrain, tmp_path):
    out = tmp_path / "killed"
    _kill_after_checkpoint(out, 15, resume=False)
    _kill_after_checkpoint(out, 35, resume=True)
    # What a kill in the middle of a save leaves behind: a temporary folder, and a step folder
    # without its trainer_state.json. Neither may be taken for a checkpoint.
    newest = max((p for p in (out / "checkpoints").iterdir() if p.name.startswith("step-")),
                 key=lambda p: int(p.name.split("-")[1]))
    shutil.copytree(newest, out / "checkpoints" / ".tmp-step-999")
    half = out / "checkpoints" / "step-998"
    shutil.copytree(newest, half)
    (half / "trainer_state.json").unlink()

    result = run_cli(*ARGS, "--out", out, "resume=true")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed from {newest}" in result.stdout + result.stderr
    a = load_file(tiny_pretrain / "final" / "model.safetensors")
    b = load_file(out / "final" / "model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"train"' in line]
    assert steps == sorted(set(steps))  # rows past the checkpoint were dropped on resume, not duplicated


def test_non_finite_loss_stops_without_a_new_checkpoint(tmp_path):
    out = tmp_path / "nan"
    result = run_cli("pretrain", "--recipe", TINY, "--out", out, "learning_rate=1e30", "warmup_steps=0",
                     "save_steps=1000", "logging_steps=1", "max_steps=20")
    assert result.returncode == 3, result.stderr[-2000:]
    assert "training loss became" in result.stderr and "no checkpoint was written" in result.stderr
    assert not (out / "checkpoints").exists() and not (out / "final").exists()
