"""mixed_precision=auto: bf16 where this machine multiplies it natively, fp32 elsewhere; never a silent slow path.

Whether a CPU's bf16 is native is measured once per machine and cached (pipeline/machine.py). The
tests state the answer with PIPELINE_CPU_BF16 instead, so they pass alike on every CPU and never
depend on its pace.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch

from conftest import CPU_ONLY, ROOT, TINY, bad_input_line, run_cli
from pipeline import machine, precision
from pipeline.config import PretrainConfig
from pipeline.recipe import load_recipe

CPU = torch.device("cpu")


@pytest.fixture
def stated(monkeypatch):
    """State whether this CPU's bf16 is native, as a user who knows would."""
    def state(native: bool) -> None:
        monkeypatch.setenv(precision.CPU_BF16_ENV, "1" if native else "0")
        precision.cpu_bf16.cache_clear()

    yield state
    precision.cpu_bf16.cache_clear()


def test_auto_trains_in_bf16_only_where_the_cpu_has_it_natively(stated):
    stated(True)
    assert precision.resolve("auto", CPU).mode == "bf16"
    stated(False)
    chosen = precision.resolve("auto", CPU)
    assert chosen.mode == "no" and "emulates bf16" in chosen.reason
    # What the recipe names explicitly it gets, with the cost spelled out where bf16 is emulated.
    explicit = precision.resolve("bf16", CPU)
    assert explicit.mode == "bf16" and "emulates it" in explicit.reason and "mixed_precision=auto" in explicit.reason
    assert precision.resolve("no", CPU).mode == "no"


def test_the_measured_answer_is_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path))
    for name in machine.ISA_ENV:  # start from no ISA limits, whatever the shell running the tests set
        monkeypatch.delenv(name, raising=False)
    calls = []

    def measure():
        calls.append(1)
        return {"native": False, "speedup": 0.02}

    assert machine.probed("test_probe", measure) == {"native": False, "speedup": 0.02}
    assert machine.probed("test_probe", measure) == {"native": False, "speedup": 0.02}
    assert len(calls) == 1  # the second answer came from the cache file
    (key,) = json.loads((tmp_path / "machine.json").read_text())
    assert machine.cpu_model() in key and torch.__version__ in key
    # Limiting the instruction set (as on an AVX2-only machine) is another machine: measured again.
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    machine.probed("test_probe", measure)
    assert len(calls) == 2


@pytest.mark.parametrize("speedup,native", [(4.8, True), (1.8, True), (1.1, True), (0.6, True), (0.12, False), (0.03, False)])
def test_the_probe_calls_bf16_native_unless_it_is_an_order_of_magnitude_slow(monkeypatch, speedup, native):
    """Measured: 4.8x on a Zen 4 with AVX-512 BF16 (idle), 1.1x on one thread of it busy; 0.03x when bf16 is emulated."""
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda: speedup)
    assert precision._measure() == {"native": native, "speedup": speedup}


@pytest.mark.parametrize("native,mode", [(True, "bf16"), (False, "no")])
def test_pretrain_records_what_auto_became(tmp_path, native, mode):
    """...and trains the recipe's fp32_overrides where auto became fp32, saying so."""
    out = tmp_path / "run"
    result = run_cli("pretrain", "--recipe", TINY, "--out", out, "max_steps=2", "eval_steps=2", "save_steps=2",
                     "fp32_overrides={model.hidden_size: 32, model.num_layers: 1}",
                     env={**CPU_ONLY, precision.CPU_BF16_ENV: str(int(native))})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"precision: {mode} (auto:" in result.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["precision"]["requested"] == "auto" and run["precision"]["mode"] == mode
    shape = json.loads((out / "final" / "config.json").read_text())
    if native:  # the recipe's own shape
        assert (shape["hidden_size"], shape["num_hidden_layers"]) == (64, 2) and run["fp32_overrides"] is None
        assert "fp32_overrides apply" not in result.stdout
    else:
        assert (shape["hidden_size"], shape["num_hidden_layers"]) == (32, 1)
        assert run["fp32_overrides"] == {"model.hidden_size": 32, "model.num_layers": 1}
        assert "fp32: the recipe's fp32_overrides apply (model.hidden_size=32, model.num_layers=1)" in result.stdout


def test_the_default_recipe_trains_its_fp32_shape_only_where_auto_becomes_fp32(stated):
    """recipes/pretrain/cpu.yaml, as `make pretrain` reads it: the command line and an explicit precision win."""
    default = ROOT / "recipes" / "pretrain" / "cpu.yaml"
    def value(cfg, key):
        return functools.reduce(getattr, key.split("."), cfg)

    stated(True)
    native = load_recipe(PretrainConfig, default, [])
    assert native.fp32_overrides and native.model.hidden_size == 256
    stated(False)
    fp32 = load_recipe(PretrainConfig, default, [])
    for key, wanted in fp32.fp32_overrides.items():
        assert value(fp32, key) == wanted != value(native, key), key
    assert load_recipe(PretrainConfig, default, ["model.hidden_size=128"]).model.hidden_size == 128
    explicit = load_recipe(PretrainConfig, default, ["mixed_precision=no"])
    assert all(value(explicit, key) == value(native, key) for key in fp32.fp32_overrides)


def test_a_wrong_key_in_fp32_overrides_exits_2_on_every_machine(stated, tmp_path, capsys):
    stated(True)  # a machine where the block does not apply still checks it
    line = bad_input_line(["pretrain", "--recipe", TINY, "--out", tmp_path / "run",
                           "fp32_overrides={model.hidden_sz: 32}"], capsys)
    assert "in fp32_overrides: unknown recipe key 'model.hidden_sz': use one of" in line
    assert not (tmp_path / "run").exists()


def test_a_budget_lost_to_emulated_bf16_names_the_precision(tmp_path):
    out = tmp_path / "run"
    result = run_cli("pretrain", "--recipe", TINY, "--out", out, "mixed_precision=bf16", "max_train_minutes=0.001",
                     "warmup_steps=1000", env={**CPU_ONLY, precision.CPU_BF16_ENV: "0"})
    assert result.returncode == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "is shorter than the warmup" in error[0]
    assert "in bf16; the steps run in bf16, which this CPU emulates" in error[0]
    assert "set mixed_precision=auto" in error[0]
    assert "this CPU emulates it" in result.stdout  # the warning line at start
