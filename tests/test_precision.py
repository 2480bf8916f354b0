"""mixed_precision=auto: bf16 where this machine multiplies it natively, fp32 elsewhere; never a silent slow path.

Whether a CPU's bf16 is native is measured once per machine and cached (pipeline/machine.py). The
tests state the answer with PIPELINE_CPU_BF16 instead, so they pass alike on every CPU and never
depend on its pace.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from conftest import CPU_ONLY, FINETUNE_TINY, ROOT, TINY, bad_input_line, run_cli
from pipeline import machine, precision
from pipeline.config import FinetuneConfig, PretrainConfig
from pipeline.errors import PipelineError
from pipeline.recipe import applied_fp32_overrides, load_recipe, load_run_config, to_yaml

CPU = torch.device("cpu")


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


def test_the_machine_record_names_the_cpu_features_and_isa_limits(monkeypatch):
    """Both an AVX2-only EPYC and a Zen 4 call themselves "AMD EPYC": the record tells them apart."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for name in machine.ISA_ENV:
        monkeypatch.delenv(name, raising=False)
    record = machine.describe()
    assert record["isa_limits"] == {}
    assert record["cpu_features"] == [f for f in machine.SPEED_FLAGS if f" {f} " in flags.replace("\n", " ")]
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert machine.describe()["isa_limits"] == {"ATEN_CPU_CAPABILITY": "avx2"}


def test_the_machine_label_tells_cpus_of_one_name_apart():
    """Report headers name the machine by `label`: the features and ISA limits, not "AMD EPYC" alone."""
    zen4 = {"cpu_model": "AMD EPYC", "cpu_features": ["avx2", "avx512f", "avx512_bf16"], "isa_limits": {}, "gpu": None}
    assert machine.label(zen4) == "AMD EPYC (avx2, avx512f, avx512_bf16)"
    standin = {**zen4, "isa_limits": {"ATEN_CPU_CAPABILITY": "avx2"}}
    assert machine.label(standin) == "AMD EPYC (avx2, avx512f, avx512_bf16; kernels limited by ATEN_CPU_CAPABILITY=avx2)"
    assert machine.label({**zen4, "cpu_features": []}) == "AMD EPYC (none of avx2, avx512f, avx512_bf16, amx_bf16)"
    assert machine.label({"cpu_model": "AMD EPYC", "torch_threads": 2, "gpu": None}) == "AMD EPYC"  # an older record
    assert machine.label({**zen4, "gpu": "NVIDIA H200"}) == "NVIDIA H200"
    assert machine.label(machine.describe()).startswith(machine.accelerator_name())


def test_cpu_features_read_x86_flags_and_arm_features():
    """x86 lists its features under "flags", Linux on Arm under "Features"; a feature is a whole word."""
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512vl\n"
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes sve sve2 bf16 i8mm svebf16\n"
    avx2_only = "model name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 fma\n"
    assert machine.cpu_features(x86) == ["avx2", "avx512f", "avx512_bf16"]
    assert machine.cpu_features(arm) == ["asimd", "sve", "sve2", "bf16"]  # not "svebf16" as "bf16"
    assert machine.cpu_features(avx2_only) == ["avx2"]
    assert machine.cpu_features("processor\t: 0\n") == []


def test_the_probe_times_both_dtypes_in_turns_so_a_burst_of_load_does_not_decide(monkeypatch):
    """A simulated clock: native bf16 takes 2 ms a call, fp32 3 ms, and other work stalls calls 2 to 4 by
    0.2 s each (the first bf16 calls, and the fp32 call between them). Taking turns, the probe keeps an
    undisturbed call of each and says 1.5x, native; one slow call is not the answer."""
    clock, calls = [0.0], []
    cost = {torch.float32: 0.003, torch.bfloat16: 0.002}

    def fake_mm(a, b):
        calls.append(a.dtype)
        clock[0] += cost[a.dtype] + (0.2 if 2 <= len(calls) <= 4 else 0.0)  # calls 0-1 warm up; a burst follows

    monkeypatch.setattr(precision.torch, "mm", fake_mm)
    monkeypatch.setattr(precision.time, "perf_counter", lambda: clock[0])
    speedup = precision.bf16_matmul_speedup(repeats=8, budget_s=0.5)
    assert speedup == pytest.approx(1.5) and speedup >= precision.NATIVE_RATIO
    assert calls[:6] == [torch.float32, torch.bfloat16] * 3  # in turns, from the warm-up on
    assert 2 + 2 * 3 <= len(calls) <= 2 + 2 * 8  # past the budget three rounds were enough


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


@pytest.mark.parametrize("schema,recipe,key,value", [
    (PretrainConfig, "pretrain/cpu.yaml", "model.hidden_size", 128),  # make pretrain's narrower model
    (PretrainConfig, "pretrain/cpu.yaml", "decay_fraction", 0.2),  # and its shorter decay (~400 steps there)
    (FinetuneConfig, "finetune/squad.yaml", "muon_learning_rate", 0.01),  # the rate for one epoch in the budget
    (FinetuneConfig, "finetune/rotten_tomatoes.yaml", "adapt_steps", 100),  # task-adaptive LM training first
])
def test_the_default_recipes_apply_their_fp32_overrides_only_where_auto_becomes_fp32(stated, schema, recipe, key, value):
    """The shipped recipes, as make reads them: the command line and an explicit precision win."""
    default = ROOT / "recipes" / recipe
    def get(cfg, dotted):
        return functools.reduce(getattr, dotted.split("."), cfg)

    stated(True)
    native = load_recipe(schema, default, [])
    assert key in native.fp32_overrides and get(native, key) != value
    stated(False)
    fp32 = load_recipe(schema, default, [])
    assert get(fp32, key) == value
    for dotted, wanted in fp32.fp32_overrides.items():
        assert get(fp32, dotted) == wanted != get(native, dotted), dotted
    overridden = load_recipe(schema, default, [f"{key}={get(native, key)}"])
    assert get(overridden, key) == get(native, key)
    # The run prints and records only the block's keys that took effect.
    assert set(overridden.fp32_overrides) == set(fp32.fp32_overrides) - {key}
    assert (applied_fp32_overrides(overridden) or {}) == overridden.fp32_overrides
    explicit = load_recipe(schema, default, ["mixed_precision=no"])
    assert all(get(explicit, dotted) == get(native, dotted) for dotted in fp32.fp32_overrides)


def test_the_command_line_wins_where_it_contradicts_the_fp32_block(stated, capsys):
    """LoRA freezes the body that Rotten Tomatoes' fp32 block would adapt: asked for on the command line,
    LoRA runs and the block is left out, in one line; the run records none."""
    rt = ROOT / "recipes" / "finetune" / "rotten_tomatoes.yaml"
    stated(False)
    cfg = load_recipe(FinetuneConfig, rt, ["finetune_method=lora"])
    assert (cfg.finetune_method, cfg.adapt_steps, cfg.adapt_seq_len) == ("lora", 0, 256)
    assert cfg.fp32_overrides == {} and applied_fp32_overrides(cfg) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "fp32: the recipe's fp32_overrides (adapt_steps=100, adapt_seq_len=128) are left out" in err
    # The command line's own mistakes still fail, with their own message.
    with pytest.raises(PipelineError, match="lora_r"):
        load_recipe(FinetuneConfig, rt, ["finetune_method=lora", "lora_r=0"])
    stated(True)  # where the block does not apply, there is nothing to say
    assert load_recipe(FinetuneConfig, rt, ["finetune_method=lora"]).adapt_steps == 0
    assert capsys.readouterr().err == ""


def test_a_block_that_is_wrong_on_its_own_fails_on_every_machine(stated):
    stated(True)
    with pytest.raises(PipelineError, match="in fp32_overrides: .*adapt_steps"):
        load_recipe(FinetuneConfig, FINETUNE_TINY, ["fp32_overrides={adapt_steps: -1}"])


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


def test_finetune_records_the_fp32_overrides_that_applied(tiny_pretrain, tmp_path):
    out = tmp_path / "sst2"
    result = run_cli("finetune", "--task", "sst2", "--ckpt", tiny_pretrain / "final", "--recipe", FINETUNE_TINY,
                     "--out", out, "max_train_samples=64", "mixed_precision=auto", "fp32_overrides={max_steps: 3}",
                     env={**CPU_ONLY, precision.CPU_BF16_ENV: "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "eval.json").read_text())
    assert report["precision"]["mode"] == "no" and report["steps"] == 3
    assert report["fp32_overrides"] == {"max_steps": 3}


def test_a_run_config_is_read_back_as_it_trained_on_any_machine(stated, tmp_path):
    """`make evaluate` re-reads a run's config.yaml: a bf16 run's shape survives a machine where auto is fp32."""
    stated(True)
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(load_recipe(PretrainConfig, ROOT / "recipes" / "pretrain" / "cpu.yaml", [])))
    stated(False)
    assert load_run_config(PretrainConfig, saved).model.hidden_size == 256
    assert load_recipe(PretrainConfig, saved, []).model.hidden_size == 128  # read as a recipe, the block applies


def test_rotten_tomatoes_on_the_fp32_path_adapts_first_unless_lora_is_asked(tiny_pretrain, tmp_path):
    """The shipped recipe, `make finetune TASK=rotten_tomatoes` on a CPU without native bf16: its block's
    100 task-adaptive LM steps run before the head trains. With finetune_method=lora the block is left out."""
    rt = ROOT / "recipes" / "finetune" / "rotten_tomatoes.yaml"
    few = ["max_train_samples=400", "max_eval_samples=64", "max_steps=3", "eval_steps=3", "save_steps=1000"]
    fp32 = {**CPU_ONLY, precision.CPU_BF16_ENV: "0"}
    out = tmp_path / "rt"
    result = run_cli("finetune", "--task", "rotten_tomatoes", "--ckpt", tiny_pretrain / "final", "--recipe", rt,
                     "--out", out, *few, env=fp32)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "eval.json").read_text())
    assert report["fp32_overrides"] == {"adapt_steps": 100, "adapt_seq_len": 128}
    assert report["adapt"]["steps"] == 100 and report["adapt"]["seq_len"] == 128
    assert "fp32: the recipe's fp32_overrides apply (adapt_steps=100, adapt_seq_len=128)" in result.stdout
    assert "adapt: 100 causal-LM steps on" in result.stdout and (out / "adapt" / "final" / "config.json").is_file()
    assert f"init=pretrained from {out / 'adapt' / 'final'}" in result.stdout  # the head starts from the adapted body

    lora = tmp_path / "rt-lora"
    result = run_cli("finetune", "--task", "rotten_tomatoes", "--ckpt", tiny_pretrain / "final", "--recipe", rt,
                     "--out", lora, *few, "finetune_method=lora", env=fp32)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((lora / "eval.json").read_text())
    assert report["fp32_overrides"] is None and report["parameters"]["method"] == "lora" and report["adapt"] is None
    assert "fp32_overrides (adapt_steps=100, adapt_seq_len=128) are left out" in result.stderr
    assert not (lora / "adapt").exists()
