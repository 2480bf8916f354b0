"""Pretraining throughput: the project's Trainer vs transformers.Trainer, and MFU.

Same model, data, global batch, lr schedule and number of steps for both. Each run trains
`warmup + steps + 1` optimizer steps and times only steps warmup+1 … warmup+steps, from the
end of one step to the end of another (compilation and the end-of-run save are outside it):

    make bench-pretrain                                   # the cpu recipe, 3 warmup + 20 timed steps
    .venv/bin/python bench/pretrain.py --recipe recipes/pretrain/tiny.yaml --steps 3 --warmup 1
    .venv/bin/python bench/pretrain.py --skip-trainer micro_batch_size=8 compile=false

Writes reports/bench/pretrain.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from accelerate.state import AcceleratorState, GradientState

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for `pipeline`
from peak import default_device, default_sizes, matmul_gflops, training_peak  # noqa: E402

from pipeline import corpus, precision  # noqa: E402
from pipeline.attention import check_backend  # noqa: E402
from pipeline.config import PretrainConfig  # noqa: E402
from pipeline.recipe import load_recipe  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.json_files import write_json  # noqa: E402
from pipeline.lm import PackedCollator  # noqa: E402
from pipeline.model import build_causal_lm, llama_config, parameter_counts, training_flops_per_token  # noqa: E402
from pipeline.trainer import Trainer, make_accelerator  # noqa: E402

NEVER = 10**9  # eval_steps / save_steps: no evaluation or checkpoint inside the timed window


def timed_rate(marks: list[float], warmup: int, steps: int, tokens_per_step: int) -> tuple[float, float, float]:
    """(tokens/s, mean s/step, median s/step) over steps warmup+1 … warmup+steps; marks[k] ends step k+1."""
    window = marks[warmup - 1: warmup + steps]
    seconds = window[-1] - window[0]
    median = statistics.median(t1 - t0 for t0, t1 in zip(window, window[1:]))
    return steps * tokens_per_step / seconds, seconds / steps, median


class TimedTrainer(Trainer):
    """The project's Trainer, timestamping the end of every optimizer step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.marks: list[float] = []

    def _should_stop(self) -> bool:  # called once per step, after its logging/eval/save
        self.marks.append(time.perf_counter())
        return super()._should_stop()


class StepTimer(transformers.TrainerCallback):
    def __init__(self):
        self.marks: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):  # after optimizer, scheduler and zero_grad
        self.marks.append(time.perf_counter())


def fresh_model(cfg: PretrainConfig, data):
    return build_causal_lm(llama_config(cfg.model, data.tokenizer, cfg.seq_len, cfg.attn_implementation), cfg.seed)


def reset_state() -> None:
    """Let the next trainer create its own Accelerator, and compile from scratch."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    torch._dynamo.reset()
    gc.collect()


def run_pipeline(cfg: PretrainConfig, data, model=None) -> list[float]:
    """pipeline.trainer.Trainer, set up as pipeline/stages/pretrain.py does (evaluation is a no-op).

    `model`: a model to train instead of the recipe's fresh one (bench/gpu.py: another vocabulary size)."""
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        acc = make_accelerator(cfg, Path(tmp))
        check_backend(cfg.attn_implementation, acc.device, training=True)
        trainer = TimedTrainer(cfg, acc, model if model is not None else fresh_model(cfg, data), data.train,
                               collate=PackedCollator(data.tokenizer.eos_token_id, cfg.doc_masking),
                               evaluate=lambda model: {}, out=Path(tmp))
        try:
            trainer.fit()
        finally:  # the Trainer catches SIGINT/SIGTERM; give Ctrl-C back
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return trainer.marks


def run_hf_trainer(cfg: PretrainConfig, data, accum: int) -> list[float]:
    """transformers.Trainer with the same batch, optimizer hyperparameters and schedule; its default optimizer."""
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="bench-hf-") as tmp:
        args = transformers.TrainingArguments(
            output_dir=tmp, max_steps=cfg.max_steps, seed=cfg.seed,
            per_device_train_batch_size=cfg.micro_batch_size, gradient_accumulation_steps=accum,
            learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_steps,
            weight_decay=cfg.weight_decay, adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2,
            max_grad_norm=cfg.max_grad_norm, bf16=cfg.mixed_precision == "bf16", fp16=cfg.mixed_precision == "fp16",
            torch_compile=cfg.compile, logging_steps=cfg.logging_steps, eval_strategy="no", save_strategy="no",
            use_cpu=not torch.cuda.is_available(), report_to="none", dataloader_num_workers=cfg.num_workers,
            dataloader_pin_memory=torch.cuda.is_available(), remove_unused_columns=False,
        )
        trainer = transformers.Trainer(model=fresh_model(cfg, data), args=args, train_dataset=data.train,
                                       data_collator=PackedCollator(data.tokenizer.eos_token_id, cfg.doc_masking),
                                       callbacks=[timer])
        trainer.train()
    return timer.marks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/pretrain/cpu.yaml")
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (torch.compile, allocator, caches)")
    ap.add_argument("--skip-trainer", action="store_true", help="don't run transformers.Trainer")
    ap.add_argument("--out", default="reports/bench/pretrain.json")
    ap.add_argument("overrides", nargs="*", help="recipe key=value overrides")
    a = ap.parse_args()
    if a.steps < 1 or a.warmup < 1:
        ap.error("--steps and --warmup must be >= 1")

    cfg = load_recipe(PretrainConfig, a.recipe, a.overrides)
    # `auto` resolved once here, so that transformers.Trainer gets the same precision as ours.
    cfg = dataclasses.replace(cfg, max_steps=a.warmup + a.steps + 1, eval_steps=NEVER, save_steps=NEVER,
                              num_samples=0, resume=False,
                              mixed_precision=precision.resolve(cfg.mixed_precision, default_device()).mode)
    accum = cfg.gradient_accumulation_steps(1)
    tokens_per_step = cfg.global_batch_size * cfg.seq_len

    device = default_device()
    print(f"peak: timing bf16 and fp32 torch.mm on {device} ({torch.get_num_threads()} threads)")
    peak_dtype, peak = training_peak(device)  # MFU's denominator: the precision the run trains in
    peak_bf16 = matmul_gflops(torch.bfloat16, device, default_sizes(device))
    peak_fp32 = matmul_gflops(torch.float32, device, default_sizes(device))
    print(f"peak: bf16 {peak_bf16:,.0f} GFLOP/s, fp32 {peak_fp32:,.0f} GFLOP/s; MFU against {peak_dtype}")

    data = corpus.build(cfg)
    probe = fresh_model(cfg, data)
    counts, flops = parameter_counts(probe), training_flops_per_token(probe, cfg.seq_len)
    del probe
    print(f"model: {counts['total'] / 1e6:.2f}M parameters, {flops / 1e6:.1f} MFLOPs/token; "
          f"batch {cfg.global_batch_size} × {cfg.seq_len} tokens ({cfg.micro_batch_size} × {accum} accumulation), "
          f"{cfg.mixed_precision}, compile={cfg.compile}; {a.warmup} warmup + {a.steps} timed steps")

    print("[1/2] pipeline.trainer.Trainer")
    tok_s, step_s, step_med = timed_rate(run_pipeline(cfg, data), a.warmup, a.steps, tokens_per_step)
    print(f"pipeline: {tok_s:,.0f} tokens/s ({step_s:.3f} s/step, median {step_med:.3f})")
    hf_tok_s = hf_step_s = hf_step_med = None
    if not a.skip_trainer:
        reset_state()
        print("[2/2] transformers.Trainer")
        hf_tok_s, hf_step_s, hf_step_med = timed_rate(run_hf_trainer(cfg, data, accum), a.warmup, a.steps,
                                                      tokens_per_step)
        print(f"transformers: {hf_tok_s:,.0f} tokens/s ({hf_step_s:.3f} s/step, median {hf_step_med:.3f})")

    def mfu(rate):
        return None if rate is None else rate * flops / (peak * 1e9)

    report = {
        "tokens_per_s": tok_s, "trainer_tokens_per_s": hf_tok_s,
        "speedup_vs_trainer": None if hf_tok_s is None else tok_s / hf_tok_s,
        "mfu": mfu(tok_s), "trainer_mfu": mfu(hf_tok_s), "peak_dtype": peak_dtype, "peak_gflops": peak,
        "peak_gflops_bf16": peak_bf16, "peak_gflops_fp32": peak_fp32,
        "seconds_per_step": step_s, "trainer_seconds_per_step": hf_step_s,
        "median_seconds_per_step": step_med, "trainer_median_seconds_per_step": hf_step_med,
        "parameters": counts["total"], "non_embedding_parameters": counts["non_embedding"],
        "flops_per_token": flops, "steps": a.steps, "warmup_steps": a.warmup,
        "global_batch_size": cfg.global_batch_size, "micro_batch_size": cfg.micro_batch_size,
        "gradient_accumulation_steps": accum, "seq_len": cfg.seq_len, "tokens_per_step": tokens_per_step,
        "recipe": a.recipe, "overrides": a.overrides, "mixed_precision": cfg.mixed_precision, "compile": cfg.compile,
        "attn_implementation": cfg.attn_implementation, "device": str(device), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(a.out)
    write_json(out, report)
    speedup = "" if hf_tok_s is None else f", {report['speedup_vs_trainer']:.2f}× transformers.Trainer"
    print(f"pipeline {tok_s:,.0f} tokens/s{speedup}; MFU {report['mfu']:.1%} of {peak:,.0f} GFLOP/s bf16 → {out}")


if __name__ == "__main__":
    try:
        main()
    except PipelineError as e:
        sys.exit(f"error: {e}")
