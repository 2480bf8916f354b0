"""A configured mirror without the dataset fails at once when the hub cannot be reached."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import datasets
import pytest

from conftest import ROOT
from pipeline.data import load_split
from pipeline.errors import PipelineError


def test_offline_mode_never_asks_the_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)

    def asked(*args, **kwargs):
        raise AssertionError("the hub was asked in offline mode")

    monkeypatch.setattr(datasets, "load_dataset", asked)
    with pytest.raises(PipelineError, match=f"dataset nobody/nothing not found: {tmp_path}/nobody/nothing/ does not "
                                            "exist and the hub failed \\(offline mode"):
        load_split("nobody/nothing", "train")


def test_refused_hub_fails_at_once(tmp_path):
    """huggingface_hub retries a refused connection five times (~25 s); one refusal is enough."""
    with socket.socket() as s:  # a port nobody listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PIPELINE_DATA_DIR": str(tmp_path), "HF_ENDPOINT": f"http://127.0.0.1:{port}",
           "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}
    code = ("import time; from pipeline.data import load_split; from pipeline.errors import PipelineError\n"
            "t = time.perf_counter()\n"
            "try:\n    load_split('nobody/nothing', 'train')\n"
            "except PipelineError as e:\n    print(f'{time.perf_counter() - t:.2f}'); print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    seconds, message = result.stdout.splitlines()[:2]
    assert float(seconds) < 5, (seconds, result.stderr[-2000:])
    assert message.startswith(f"dataset nobody/nothing not found: {tmp_path}/nobody/nothing/ does not exist "
                              "and the hub failed"), message
    assert "Retrying" not in result.stderr
