"""More language model per CPU-hour (issue 12): a time budget that ends with a finished schedule,
the warmup-stable-decay schedule, and Muon for the hidden weight matrices."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers.trainer_utils import SchedulerType

from conftest import ROOT, TINY, bad_input_line, read_metrics, run_cli
from pipeline.config import SCHEDULERS, PretrainConfig
from pipeline.recipe import load_recipe
from pipeline.budget import TimeBudget
from pipeline.optim import CombinedOptimizer, build_optimizer, build_scheduler, wsd_decay_progress, wsd_decay_steps
from pipeline.trainer import TrainState


def tiny_llama(cls=transformers.LlamaForCausalLM, **extra):
    """The pipeline's shape of model (tied embeddings), three layers."""
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0,
                                      tie_word_embeddings=True, **extra)
    torch.manual_seed(0)
    return cls(config)


def recipe(*overrides: str) -> PretrainConfig:
    return load_recipe(PretrainConfig, TINY, list(overrides))


# ---- schedules ------------------------------------------------------------------------
def test_every_accepted_scheduler_name_builds_with_transformers():
    names = {t.value for t in SchedulerType}
    for name in SCHEDULERS:
        assert name in names or name == "wsd", name
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
        build_scheduler(optimizer, recipe(f"lr_scheduler_type={name}"), max_steps=50, done_steps=10)


def test_wsd_warms_up_holds_then_decays_to_zero():
    cfg = recipe("lr_scheduler_type=wsd", "warmup_steps=10", "decay_fraction=0.2", "learning_rate=1.0")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    scheduler = build_scheduler(optimizer, cfg, max_steps=100)
    lrs = [scheduler.get_last_lr()[0]]
    for _ in range(100):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    assert lrs[5] == pytest.approx(0.5)  # linear warmup
    assert lrs[10:81] == [1.0] * 71  # stable until the last 20% of the steps
    assert lrs[85] == pytest.approx(1 - (5 / 20) ** 0.5)  # 1-sqrt decay
    assert lrs[100] == 0.0 and all(a >= b for a, b in zip(lrs[80:], lrs[81:]))


def test_wsd_re_timed_in_its_decay_goes_on_from_the_same_rate_to_zero():
    """A budget anchors the decay at step 90 of 100 (progress 0.5) and stretches it to end at 120."""
    cfg = recipe("lr_scheduler_type=wsd", "warmup_steps=10", "decay_fraction=0.2", "learning_rate=1.0")
    assert wsd_decay_progress(cfg, 100, 90) == 0.5
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    scheduler = build_scheduler(optimizer, cfg, max_steps=120, done_steps=90, decay_anchor=(90, 0.5))
    lrs = [scheduler.get_last_lr()[0]]
    for _ in range(30):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    assert lrs[0] == pytest.approx(1 - 0.5 ** 0.5)  # the rate the 100-step schedule had reached at step 90
    assert lrs[15] == pytest.approx(1 - 0.75 ** 0.5)  # half the rest of the decay in half the 30 steps left
    assert lrs[30] == 0.0 and all(a > b for a, b in zip(lrs, lrs[1:]))


# ---- Muon -----------------------------------------------------------------------------
def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    cfg = recipe("optimizer=muon", "muon_learning_rate=0.02", "learning_rate=1e-3", "layer_lr_decay=0.5")
    model = tiny_llama()
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, CombinedOptimizer)
    adamw, muon = optimizer.optimizers
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert in_muon == {n for n in names.values() if n.startswith("model.layers.") and n.endswith(
        tuple(f"{p}.weight" for p in projections))}
    assert len(in_muon) == 3 * len(projections)
    assert in_adamw == set(names.values()) - in_muon  # embeddings (= tied LM head), every norm
    assert "model.embed_tokens.weight" in in_adamw and "model.norm.weight" in in_adamw
    # Layer decay reaches the Muon groups: layer i (depth i+1) of 3, below the final norm at depth 4.
    rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert rates["muon-depth-3"] == pytest.approx(0.02 * 0.5) and rates["muon-depth-1"] == pytest.approx(0.02 * 0.5 ** 3)
    assert rates["depth-0"] == pytest.approx(1e-3 * 0.5 ** 4)
    # One schedule scales both optimizers' rates.
    scheduler = build_scheduler(optimizer, recipe("optimizer=muon", "warmup_steps=4", "lr_scheduler_type=wsd"), 20, 2)
    assert scheduler.get_last_lr() == pytest.approx([g["initial_lr"] * 0.5 for g in optimizer.param_groups])
    assert muon.param_groups[0]["lr"] == pytest.approx(muon.param_groups[0]["initial_lr"] * 0.5)


def test_muon_leaves_task_heads_to_adamw():
    model = tiny_llama(transformers.LlamaForSequenceClassification, num_labels=3)
    optimizer = build_optimizer(model, recipe("optimizer=muon", "head_learning_rate=5e-3"))
    adamw, muon = optimizer.optimizers
    head = [g for g in adamw.param_groups if g["name"] == "head"]
    assert head and head[0]["params"] == [model.score.weight] and head[0]["lr"] == pytest.approx(5e-3)
    assert all(p is not model.score.weight for g in muon.param_groups for p in g["params"])


def test_combined_optimizer_state_round_trips_through_a_safe_load(tmp_path):
    cfg = recipe("optimizer=muon")
    model = tiny_llama()
    optimizer = build_optimizer(model, cfg)
    for _ in range(2):
        ids = torch.randint(1, 128, (2, 8))
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.bin")
    fresh = build_optimizer(model, cfg)
    fresh.load_state_dict(torch.load(tmp_path / "optimizer.bin", weights_only=True))
    for a, b in zip(optimizer.optimizers, fresh.optimizers):
        assert a.state.keys() == b.state.keys()
        for p in a.state:
            for key, value in a.state[p].items():
                assert torch.equal(value, b.state[p][key]), key
    assert [g["lr"] for g in fresh.param_groups] == [g["lr"] for g in optimizer.param_groups]


def test_muon_resume_after_kill_9_ends_bit_identical(tmp_path):
    args = ["pretrain", "--recipe", str(TINY), "optimizer=muon", "max_steps=30", "save_steps=5"]
    reference = run_cli(*args, "--out", tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-10" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (out / "final").exists()

    # The checkpoint's optimizer file holds both optimizers' state as plain tensors.
    newest = max((p for p in (out / "checkpoints").iterdir() if p.name.startswith("step-")),
                 key=lambda p: int(p.name.split("-")[1]))
    state = torch.load(newest / "optimizer.bin", weights_only=True)
    adamw, muon = state["optimizers"]
    assert {"exp_avg", "exp_avg_sq"} <= next(iter(adamw["state"].values())).keys()
    assert all(set(s) == {"momentum_buffer"} for s in muon["state"].values()) and len(muon["state"]) == 2 * 7

    resumed = run_cli(*args, "--out", out, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {newest}" in resumed.stdout + resumed.stderr
    a = load_file(tmp_path / "reference" / "final" / "model.safetensors")
    b = load_file(out / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ---- the time budget ------------------------------------------------------------------
def test_time_budget_stops_with_a_finished_schedule_and_resumes_exactly(tmp_path):
    # No warmup: on a loaded machine (a tiny step took 1.2 s in one run) 6 s might not hold tiny's 5.
    args = ["pretrain", "--recipe", str(TINY), "max_train_minutes=0.1", "max_steps=100000", "lr_scheduler_type=wsd",
            "warmup_steps=0", "eval_steps=100000", "save_steps=2", "keep_checkpoints=100000", "logging_steps=1"]
    out = tmp_path / "budget"
    result = run_cli(*args, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    budget = run["budget"]
    steps = budget["derived_max_steps"]
    # Fixed after step 10 (the pace of steps 2..10), one step more at the least.
    assert budget["max_train_minutes"] == 0.1 and 10 < steps < 100000
    assert run["steps"] == budget["steps"] == steps and budget["train_seconds"] == run["train_seconds"] > 0
    assert budget["used"] == pytest.approx(run["train_seconds"] / 6)
    assert "max_train_minutes=0.1: training for" in result.stdout
    # The progress bar's total is the budget's from step 2 on, before the count is fixed: never max_steps.
    frames = [tuple(map(int, m)) for m in re.findall(r"\| *(\d+)/(\d+) \[", result.stderr)]
    assert any(2 <= n < 10 for n, _ in frames) and frames[-1] == (steps, steps), frames
    assert all(total < 100000 for n, total in frames if n >= 2), frames
    train = read_metrics(out, "train")
    assert train[-1]["step"] == steps and train[-1]["lr"] == 0.0  # the schedule ran to its end
    assert max(r["lr"] for r in train) == pytest.approx(3e-3)
    assert (out / "final" / "model.safetensors").is_file()

    # A run resumed in the decay goes on with the schedule the interrupted one had at its checkpoint (count
    # and decay anchor from trainer_state.json), then re-times the rest at its own pace and ends at rate 0.
    decay_start = steps - wsd_decay_steps(recipe("lr_scheduler_type=wsd"), steps)
    # The first checkpoint in the decay (save_steps=2). The count is at least 11 (fixed after step 10, one
    # step more at the least), so the decay holds at least 2 steps, and k < steps on any machine's pace.
    k = -(-decay_start // 2) * 2
    assert k < steps
    state = TrainState(**json.loads((out / "checkpoints" / f"step-{k}" / "trainer_state.json").read_text()))
    assert state.step == k and state.budget_steps >= k + 1
    again = tmp_path / "again"
    (again / "checkpoints").mkdir(parents=True)
    shutil.copytree(out / "checkpoints" / f"step-{k}", again / "checkpoints" / f"step-{k}")
    shutil.copy(out / "metrics.jsonl", again / "metrics.jsonl")
    resumed = run_cli(*args, "--out", again, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=3e-3)
    expected = build_scheduler(optimizer, recipe("lr_scheduler_type=wsd", "warmup_steps=0"), state.budget_steps,
                               k + 1, (state.budget_decay_step, state.budget_decay_progress)).get_last_lr()[0]
    rows = read_metrics(again, "train")
    assert [r["step"] for r in rows] == list(range(1, rows[-1]["step"] + 1))  # the interrupted run's rows, then its own
    assert rows[k]["lr"] == pytest.approx(expected)  # step k+1: the checkpoint's schedule, not re-timed yet
    resumed_run = json.loads((again / "run.json").read_text())
    assert resumed_run["steps"] == resumed_run["budget"]["derived_max_steps"] and rows[-1]["lr"] == 0.0


def simulate_budget(cfg: PretrainConfig, seconds_per_step, rates=False, stop_at=None, state=None, max_steps=None):
    """Drive TimeBudget as the trainer does, with made-up step times: the final state, [(step, count fixed)],
    and with `rates` the rate of every step (a scheduler rebuilt at every fix, as the trainer does)."""
    budget, fixes = TimeBudget.from_config(cfg), []
    state, max_steps = state or TrainState(), max_steps or cfg.max_steps
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=cfg.learning_rate)
    scheduler = build_scheduler(optimizer, cfg, max_steps, state.step) if rates else None
    lrs = [scheduler.get_last_lr()[0]] if rates else []
    while state.step < max_steps and state.step != stop_at:
        state.step += 1
        state.train_seconds += seconds_per_step(state.step)
        if rates:
            optimizer.step()
            scheduler.step()
        fixed = budget.after_step(state, max_steps)
        if fixed:
            fixes.append((state.step, fixed))
            max_steps = fixed
            if rates:
                scheduler = build_scheduler(optimizer, cfg, fixed, state.step,
                                            (state.budget_decay_step, state.budget_decay_progress))
        if rates:
            lrs.append(scheduler.get_last_lr()[0])
    return (state, fixes, lrs) if rates else (state, fixes)


def test_wsd_budget_re_times_a_slowing_run_and_never_moves_a_rate_already_used():
    """The machine halves its speed at step 200 (another job starts): wsd still ends at the budget."""
    slows = lambda step: 5.0 if step == 1 else 0.1 if step <= 200 else 0.2  # noqa: E731 (step 1: compilation)
    base = ["max_train_minutes=1", "max_steps=100000", "warmup_steps=0"]
    cfg = recipe(*base, "lr_scheduler_type=wsd")
    state, fixes = simulate_budget(cfg, slows)
    first = fixes[0][1]
    assert fixes[0][0] == 10 and abs(first - (10 + (60 - 5.9) / 0.1)) <= 1  # fixed from steps 2..10, as before
    assert state.step == fixes[-1][1] < first  # moved down once the slowdown showed
    assert 60 - 0.2 < state.train_seconds <= 60 + 10 * 0.1  # within one re-timing window of the budget
    for (step, new), (_, old) in zip(fixes[1:], fixes):
        # Only the start of the decay moves, and never to a step already taken.
        start_old, start_new = (n - wsd_decay_steps(cfg, n) for n in (old, new))
        assert step < start_old and step <= start_new
    # Cosine cannot move its end without changing rates already used: it keeps its first count and overruns.
    cosine, cosine_fixes = simulate_budget(recipe(*base, "lr_scheduler_type=cosine"), slows)
    assert len(cosine_fixes) == 1 and cosine.train_seconds > 80


def test_wsd_budget_re_times_inside_the_decay_without_a_jump_in_the_rate():
    """Steady (about 600 steps, decay from about step 480), then three times slower from step 500:
    the count locked at the decay's start would run to about 64 s of a 60-s budget."""
    cfg = recipe("max_train_minutes=1", "max_steps=100000", "warmup_steps=0", "lr_scheduler_type=wsd",
                 "learning_rate=1.0")
    state, fixes, lrs = simulate_budget(cfg, lambda step: 0.1 if step <= 500 else 0.3, rates=True)
    assert fixes[-1][1] == state.step < 600 - 10  # moved down once the slowdown showed, inside the decay
    assert 60 - 0.3 < state.train_seconds <= 60 + 10 * 0.3  # within one re-timing window of the budget
    decay_from = next(i for i, lr in enumerate(lrs) if lr < 1.0)
    assert 470 < decay_from < 500 and lrs[-1] == 0.0  # the decay began before the slowdown, and finished
    # The rate falls step by step through every re-timing: no jump up, no step down bigger than the
    # steepest the 1-sqrt curve takes over its last steps.
    steps = [b - a for a, b in zip(lrs[decay_from:], lrs[decay_from + 1:])]
    assert all(d <= 0 for d in steps) and max(-d for d in steps[:-5]) < 0.05


def test_wsd_budget_resumed_run_leaves_its_first_step_out_of_the_pace():
    """A run killed at step 300 resumes; its first step compiles again (5 s), the rest keep the pace."""
    cfg = recipe("max_train_minutes=1", "max_steps=100000", "warmup_steps=0", "lr_scheduler_type=wsd")
    pace = lambda step: 5.0 if step in (1, 301) else 0.1  # noqa: E731
    state, fixes = simulate_budget(cfg, pace, stop_at=300)
    state = TrainState(**dataclasses.asdict(state))  # what trainer_state.json carries over
    resumed, more = simulate_budget(cfg, pace, state=state, max_steps=fixes[-1][1])
    # The window restarts after the recompiling step, so the first re-timing (step 311) sees the true pace
    # and takes the 5 s off the count at once, instead of a 0.59-s pace throwing the count far down.
    assert more[0][0] == 311 and max(n for _, n in more) - min(n for _, n in more) <= 2
    assert more[0][1] < fixes[-1][1] - 40 and 60 - 0.1 < resumed.train_seconds <= 60 + 10 * 0.1


# ---- bad values -----------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("optimizer=sgdx", "recipe key 'optimizer' = 'sgdx' is invalid: it must be one of adamw, muon"),
    ("max_train_minutes=-1", "recipe key 'max_train_minutes' = -1"),
    ("max_train_minutes=0", "recipe key 'max_train_minutes' = 0"),
    ("lr_scheduler_type=cosine_wiggle", "recipe key 'lr_scheduler_type' = 'cosine_wiggle' is invalid"),
    ("decay_fraction=0", "recipe key 'decay_fraction' = 0"),
    ("muon_momentum=1", "recipe key 'muon_momentum' = 1"),
    # Found after two steps, from the measured pace: the warmup alone would overrun the budget.
    ("max_train_minutes=0.001", "max_train_minutes=0.001 is shorter than the warmup: warmup_steps=1000"),
])
def test_bad_values_exit_2_with_one_line(override, message, tmp_path, capsys):
    out = tmp_path / "out"
    line = bad_input_line(["pretrain", "--recipe", TINY, "--out", out, "warmup_steps=1000", "max_steps=5000", override],
                          capsys)
    assert message in line, line
    assert not (out / "checkpoints").exists() and not (out / "final").exists()
