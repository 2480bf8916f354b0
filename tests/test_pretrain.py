"""End to end: the tiny recipe pretrains on real data, saves, reloads, generates and resumes exactly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT, TINY, bad_input_line, read_metrics, run_cli


def test_loss_falls_and_outputs_are_written(tiny_pretrain):
    train = read_metrics(tiny_pretrain, "train")
    evals = read_metrics(tiny_pretrain, "eval")
    assert train[-1]["loss"] < train[0]["loss"] - 0.5
    assert evals[-1]["loss"] < evals[0]["loss"]
    for row in train:
        assert {"step", "split", "loss", "lr", "tokens", "tokens_per_s"} <= row.keys()
    assert train[-1]["tokens"] == 60 * 16 * 64  # steps × global batch × seq_len
    assert abs(evals[-1]["perplexity"] - torch.tensor(evals[-1]["loss"]).exp().item()) < 1e-3
    assert 0 < evals[-1]["bits_per_byte"] < 8
    assert (tiny_pretrain / "config.yaml").read_text().startswith("name: tiny")
    assert any((tiny_pretrain / "tensorboard").rglob("events.out.tfevents*"))
    assert [p.name for p in sorted((tiny_pretrain / "checkpoints").iterdir())] == ["step-50", "step-60"]
    assert (tiny_pretrain / "samples.jsonl").is_file()
    machine = json.loads((tiny_pretrain / "run.json").read_text())["machine"]  # speeds compare per machine
    assert machine["cpu_model"] and machine["torch_threads"] >= 1


def test_final_reloads_and_generates(tiny_pretrain):
    final = tiny_pretrain / "final"
    assert (final / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    ids = tokenizer("The history of", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 8
    generator = transformers.pipeline("text-generation", model=str(final))
    text = generator("The history of", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("The history of") and len(text) > len("The history of")


def test_generate_command(tiny_pretrain):
    result = run_cli("generate", "--ckpt", tiny_pretrain / "final", "--prompt", "The war", "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_tokenizer_round_trips_tricky_text(tiny_pretrain):
    tokenizer = AutoTokenizer.from_pretrained(tiny_pretrain / "final")
    tricky = [
        "  leading and trailing spaces  ", "tabs\tand\nnew\r\nlines\n\n\n", "Ünïcödé — “quotes” … ½ ß",
        "日本語のテキスト", "emoji 🙂👍🏽 and ZWJ 👩‍👩‍👧", "<|eos|> is text here, not a token", "x" * 500, "",
        "don't  ,spaces . before punctuation ?", "\u00a0non-breaking\u2009thin\u200bzero-width",
    ]
    for text in tricky:
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text


def test_resume_after_interrupt_matches_uninterrupted_run(tiny_pretrain, tmp_path):
    """SIGTERM mid-run saves a checkpoint; resume=true ends with bit-identical weights."""
    out = tmp_path / "interrupted"
    args = [sys.executable, "-m", "pipeline", "pretrain", "--recipe", str(TINY), "--out", str(out),
            "max_steps=60", "save_steps=100"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not any("step" in line for line in _lines(out / "metrics.jsonl")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "resume=true" in stderr
    stopped = sorted((out / "checkpoints").iterdir())
    assert len(stopped) == 1 and int(stopped[0].name.split("-")[1]) < 60
    assert not (out / "final").exists()

    resumed = run_cli("pretrain", "--recipe", TINY, "--out", out, "max_steps=60", "save_steps=100", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a = load_file(tiny_pretrain / "final" / "model.safetensors")
    b = load_file(out / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_rerun_without_resume_refuses_to_overwrite(tiny_pretrain, capsys):
    before = (tiny_pretrain / "final" / "model.safetensors").read_bytes()
    line = bad_input_line(["pretrain", "--recipe", TINY, "--out", tiny_pretrain], capsys)
    assert "already holds a run" in line and "overwrite=true" in line
    assert (tiny_pretrain / "final" / "model.safetensors").read_bytes() == before


def _lines(path):
    return path.read_text().splitlines() if path.is_file() else []
