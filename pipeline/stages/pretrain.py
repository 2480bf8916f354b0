"""Pretrain a small causal LM: corpus → tokenizer → packed blocks → Llama → training → final/."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from pipeline import budget, checkpoint, corpus, machine, precision
from pipeline.attention import check_backend
from pipeline.config import PretrainConfig
from pipeline.recipe import to_yaml, applied_fp32_overrides
from pipeline.json_files import write_json
from pipeline.lm import PackedCollator, evaluate_lm, generate_samples
from pipeline.model import build_causal_lm, llama_config, parameter_counts, training_flops_per_token
from pipeline.trainer import Trainer, make_accelerator

SAMPLE_PROMPTS = ["The history of", "In the early years,", "The film"]


def run(cfg: PretrainConfig, out: Path) -> dict:
    checkpoint.prepare_run_dir(out, cfg.resume, cfg.overwrite)
    acc = make_accelerator(cfg, out)
    check_backend(cfg.attn_implementation, acc.device, training=True)
    with acc.main_process_first():  # the main process builds the cache, the others then read it
        data = corpus.build(cfg, log=acc.print)

    # All input is validated; from here on the output folder may be written.
    if acc.is_main_process and cfg.overwrite:
        checkpoint.clear_run_dir(out)

    model = build_causal_lm(llama_config(cfg.model, data.tokenizer, cfg.seq_len, cfg.attn_implementation), cfg.seed)
    counts = parameter_counts(model)
    flops = training_flops_per_token(model, cfg.seq_len)
    acc.print(f"model: {counts['total'] / 1e6:.2f}M parameters ({counts['non_embedding'] / 1e6:.2f}M without "
              f"embeddings), {flops / 1e6:.1f} MFLOPs per training token; "
              f"{'streamed' if cfg.streaming() else f'{len(data.train):,}'} train blocks × {cfg.seq_len} tokens")

    def show_samples(unwrapped, step: int, metrics: dict) -> None:
        if not acc.is_main_process:
            return
        texts = generate_samples(unwrapped, data.tokenizer, SAMPLE_PROMPTS[: cfg.num_samples], cfg.sample_tokens,
                                 seed=cfg.seed)
        with open(out / checkpoint.SAMPLES_FILE, "a") as f:
            for prompt, text in zip(SAMPLE_PROMPTS, texts):
                f.write(json.dumps({"step": step, "prompt": prompt, "text": text}) + "\n")
                acc.print(f"  sample: {text!r}")

    trainer = Trainer(
        cfg, acc, model, data.train,
        collate=PackedCollator(data.tokenizer.eos_token_id, cfg.doc_masking),
        evaluate=partial(evaluate_lm, blocks=data.eval, accelerator=acc, tokenizer=data.tokenizer,
                         micro_batch_size=cfg.micro_batch_size, doc_masking=cfg.doc_masking),
        out=out, on_evaluate=show_samples if cfg.num_samples else None,
        run_files={checkpoint.CONFIG_FILE: to_yaml(cfg), checkpoint.CORPUS_FILE: json.dumps(data.stats, indent=2)},
    )
    state = trainer.fit()
    checkpoint.save_final(acc, trainer.model, data.tokenizer, out / checkpoint.FINAL)

    summary = {
        "kind": "pretrain", "recipe": cfg.name, "parameters": counts["total"],
        "non_embedding_parameters": counts["non_embedding"], "flops_per_token": flops,
        "tokens": state.tokens, "steps": state.step, "train_seconds": state.train_seconds,
        "wall_seconds": state.wall_seconds, "tokens_per_s": state.tokens / max(state.train_seconds, 1e-9),
        "eval": trainer.last_eval,
        "budget": budget.summary(cfg, state),  # max_train_minutes: asked, the steps it fixed, the time used
        "precision": precision.resolve(cfg.mixed_precision, acc.device).record(),  # what `auto` became here
        "fp32_overrides": applied_fp32_overrides(cfg),  # what applied here, or null
        "machine": machine.describe(),  # speeds compare only on one machine
    }
    if acc.is_main_process:
        write_json(out / checkpoint.RUN_FILE, summary)
        acc.print(f"saved {out / checkpoint.FINAL}; validation loss {trainer.last_eval.get('loss', float('nan')):.4f}, "
                  f"bits/byte {trainer.last_eval.get('bits_per_byte', float('nan')):.4f}")
    return summary
