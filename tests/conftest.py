"""Shared fixtures: real mirrored data, offline hub, one tiny pretrain reused by many tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import transformers
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PIPELINE_DATA_DIR", str(ROOT.parent / "shared" / "data"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # `make test` runs one worker per core: one thread each,
    # for this process and the CLI runs it starts, so workers do not fight over the cores
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1)
                                                     // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
TINY = ROOT / "recipes" / "pretrain" / "tiny.yaml"


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    """A fresh corpus cache per test session, so tests also cover building it."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["PIPELINE_CACHE_DIR"] = str(path)
    return path


def run_cli(*args: str, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m pipeline ARGS` as a user would, capturing output (`env`: variables to add)."""
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}  # run_cli(env=CPU_ONLY): the CPU path, also on a machine with a GPU


PROGRESS_FRAME = re.compile(r"\d+%\|")  # a tqdm frame such as "train:  40%|████      | 2/5 [...]"


def bad_input_line(argv: list[str], capsys, stdout: str | None = None) -> str:
    """Run the CLI in-process on bad input: it must exit 2 with one `error: ` line on stderr and no
    traceback (progress-bar frames, which a terminal clears, are not lines), and print `stdout` if
    given. Returns that line. In-process, since a bad input fails before any work, and a fresh
    process would spend its seconds importing torch (`test_recipes.py` keeps one such run)."""
    from pipeline.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in argv])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    if stdout is not None:
        assert out == stdout, out
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS_FRAME.search(line)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def read_metrics(run: Path, split: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == split]


def reset_accelerate() -> None:
    """Each CLI call is its own process in real use; in-process, reset accelerate's singletons."""
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    reset_accelerate()


@pytest.fixture
def stated(monkeypatch):
    """State whether this CPU's bf16 is native, as a user who knows would (PIPELINE_CPU_BF16)."""
    from pipeline import precision

    def state(native: bool) -> None:
        monkeypatch.setenv(precision.CPU_BF16_ENV, "1" if native else "0")
        precision.cpu_bf16.cache_clear()

    yield state
    precision.cpu_bf16.cache_clear()


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """`build(folder)` once per test run, returning `folder`. Under pytest-xdist each worker has its own
    session, so a session fixture would be built once per worker: here the first worker to ask builds it
    under the run's temporary root, which every worker shares, while the others wait on a file lock (the
    pattern pytest-xdist documents). Tests only read such a folder; one that changes it copies it first."""
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # this run's root: each worker's basetemp is a folder beneath it
    folder = root / "built-once" / name
    folder.parent.mkdir(exist_ok=True)
    done = folder.with_name(f"{name}.done")  # beside the folder, so that nothing is added to it
    with FileLock(folder.with_name(f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker before this one failed halfway
            build(folder)
            done.touch()
    return folder


def _assert_ran(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="session")
def tiny_pretrain(tmp_path_factory) -> Path:
    """One tiny pretraining run on a slice of real Wikipedia; returns its run folder."""
    return built_once(tmp_path_factory, "tiny", lambda out: _assert_ran(
        run_cli("pretrain", "--recipe", TINY, "--out", out, "max_steps=60")))


FINETUNE_TINY = ROOT / "recipes" / "finetune" / "tiny.yaml"


def finetune(task: str, ckpt: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_cli("finetune", "--task", task, "--ckpt", ckpt, "--recipe", FINETUNE_TINY, "--out", out, *overrides)


@pytest.fixture(scope="session")
def tiny_classifier(tiny_pretrain, tmp_path_factory) -> Path:
    """SST-2 fine-tuned from the tiny checkpoint on a slice it can fit in a few epochs."""
    # Random batches (not length-grouped), so that the logged loss of the first and last windows compare
    # like for like; length grouping has tests of its own (test_transfer.py).
    return built_once(tmp_path_factory, "sst2", lambda out: _assert_ran(finetune(
        "sst2", tiny_pretrain / "final", out, "max_train_samples=128", "max_steps=60", "group_by_length=false")))


@pytest.fixture(scope="session")
def tiny_qa(tiny_pretrain, tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "squad", lambda out: _assert_ran(finetune(
        "squad", tiny_pretrain / "final", out, "max_length=128", "doc_stride=32", "max_train_samples=96",
        "max_steps=30", "max_eval_samples=24")))


# Bring-your-own checkpoints: tiny causal LMs of each family the README names, built from configs.
BYO_SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
BYO_FAMILIES = {
    "llama": lambda v: transformers.LlamaConfig(vocab_size=v, **BYO_SIZES),
    "mistral": lambda v: transformers.MistralConfig(vocab_size=v, sliding_window=None, **BYO_SIZES),
    "qwen2": lambda v: transformers.Qwen2Config(vocab_size=v, **BYO_SIZES),
    "gpt2": lambda v: transformers.GPT2Config(vocab_size=v, n_embd=32, n_layer=2, n_head=4, n_positions=512),
}


@pytest.fixture(scope="module")
def byo_texts() -> list[str]:
    """Real text for a BYO checkpoint's tokenizer: 100 SQuAD contexts and their questions."""
    import datasets

    squad = datasets.load_dataset(str(Path(os.environ["PIPELINE_DATA_DIR"]) / "local/squad_v1.1_dev_split"),
                                  split="train")
    rows = squad.select(range(100))
    return list(rows["context"]) + list(rows["question"])


def save_byo(folder: Path, family: str, texts: list[str], pad: bool = True, eos: bool = True) -> Path:
    """A user's own causal-LM folder: `family` built tiny from its config, with a tokenizer trained on `texts`."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(texts, 400)
    if not pad:  # like GPT-2's, Llama's and Mistral's own tokenizers
        tokenizer.pad_token = None
    if not eos:
        tokenizer.eos_token = None
    config = BYO_FAMILIES[family](len(tokenizer))
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
