"""No checkpoint is picked silently: without --ckpt a stage uses make pretrain's own run, and says so first."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run_in(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=os.environ.copy())


def test_the_default_is_make_pretrains_run_not_the_newest(tiny_pretrain, tmp_path):
    missing = run_in(tmp_path, "finetune", "--task", "sst2")
    assert missing.returncode == 2
    assert missing.stderr.strip() == ("error: no checkpoint at runs/pretrain/cpu/final, where make pretrain writes it: "
                                      "run make pretrain first, or pass --ckpt (make CKPT=<folder>)")

    default = tmp_path / "runs" / "pretrain" / "cpu" / "final"
    shutil.copytree(tiny_pretrain / "final", default)
    time.sleep(0.01)
    shutil.copytree(tiny_pretrain / "final", tmp_path / "runs" / "pretrain" / "cpu-seed2" / "final")  # newer: a study's
    result = run_in(tmp_path, "generate", "--prompt", "The history of")
    assert result.returncode == 0, result.stderr[-2000:]
    first = result.stdout.splitlines()[0]
    assert first == "checkpoint: runs/pretrain/cpu/final (the default: pass --ckpt or CKPT=... for another)"

    chosen = run_in(tmp_path, "generate", "--prompt", "The history of", "--ckpt", "runs/pretrain/cpu-seed2/final")
    assert chosen.returncode == 0, chosen.stderr[-2000:]
    assert chosen.stdout.splitlines()[0] == "checkpoint: runs/pretrain/cpu-seed2/final"


def test_predict_without_a_fine_tuned_run_names_the_command_that_makes_one(tmp_path):
    missing = run_in(tmp_path, "predict", "--task", "sst2", "--text", "a gripping film")
    assert missing.returncode == 2
    assert missing.stderr.strip() == ("error: no fine-tuned model at runs/finetune/sst2/final, where make finetune "
                                      "TASK=sst2 writes it: run make finetune TASK=sst2 first, or pass --ckpt "
                                      "(make CKPT=<folder>)")
    assert not (tmp_path / "runs").exists()
