"""Task-adaptive LM training (ULMFiT stage 2, "TAPT"): more causal-LM steps on the task's own texts.

Before a head is trained, the pretrained body reads the task's training texts as a language model
does: packed into blocks, next-token loss, labels never seen (the caller hands over texts only).
It runs through the one training loop with the pretraining collator and LM evaluation, into
`<run>/adapt/`, whose `final/` is then the checkpoint the head starts from.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import torch

from pipeline import checkpoint
from pipeline.config import FinetuneConfig
from pipeline.recipe import to_yaml
from pipeline.corpus import pack, token_stream
from pipeline.errors import PipelineError
from pipeline.json_files import read_json, write_json
from pipeline.lm import PackedCollator, evaluate_lm
from pipeline.trainer import Trainer, make_accelerator

SUMMARY_FILE = "adapt.json"  # in <run>/adapt/, beside final/
HELD_OUT = 0.05  # share of the packed blocks kept aside to report the LM loss on unseen task text


def adapt_body(texts: list[str], cfg: FinetuneConfig, ckpt: Path, out: Path, log=print) -> Path:
    """Continue causal-LM training of `ckpt` on `texts`; return the adapted model folder."""
    final = out / "final"
    if (final / "config.json").is_file():  # an earlier, interrupted run of this fine-tune got this far
        log(f"adapt: reusing {final}")
        return final
    model, tokenizer = checkpoint.load_causal_lm(ckpt)
    stream = token_stream(datasets.Dataset.from_dict({"text": texts}), tokenizer)
    blocks, _ = pack(stream, cfg.adapt_seq_len)
    n_held = max(1, round(len(blocks) * HELD_OUT))
    if len(blocks) - n_held < cfg.micro_batch_size:
        raise PipelineError(f"adapt: the task's {len(texts):,} training texts fill only {len(blocks)} blocks of "
                            f"adapt_seq_len={cfg.adapt_seq_len} tokens: lower adapt_seq_len or set adapt_steps=0")
    order = np.random.default_rng(cfg.seed).permutation(len(blocks))
    train = torch.from_numpy(blocks[order[n_held:]].astype(np.int64))
    held = torch.from_numpy(blocks[order[:n_held]].astype(np.int64))
    # An LM run of its own: adapt_steps is its budget, and it has no head to treat apart.
    lm_cfg = replace(cfg, max_steps=cfg.adapt_steps, learning_rate=cfg.adapt_learning_rate, head_learning_rate=None,
                     layer_lr_decay=1.0, freeze_body_steps=0, max_train_minutes=None, lr_scheduler_type="linear",
                     warmup_steps=min(cfg.warmup_steps, cfg.adapt_steps // 10), eval_steps=cfg.adapt_steps,
                     save_steps=min(cfg.save_steps, cfg.adapt_steps), group_by_length=False, overwrite=False)
    # Its own Accelerator: a checkpoint of the fine-tune that follows must not also hold this LM.
    acc = make_accelerator(lm_cfg, out)
    log(f"adapt: {cfg.adapt_steps} causal-LM steps on {len(train):,} blocks of {cfg.adapt_seq_len} tokens "
        f"from {len(texts):,} training texts")
    trainer = Trainer(lm_cfg, acc, model, train, PackedCollator(tokenizer.eos_token_id, doc_masking=False),
                      evaluate=partial(evaluate_lm, blocks=held, accelerator=acc, tokenizer=tokenizer,
                                       micro_batch_size=cfg.micro_batch_size, doc_masking=False),
                      out=out, run_files={"config.yaml": to_yaml(lm_cfg)})
    before = evaluate_lm(model, held, acc, tokenizer, cfg.micro_batch_size, False)
    state = trainer.fit()
    after = trainer.last_eval
    log(f"adapt: held-out task text LM loss {before['loss']:.3f} → {after['loss']:.3f}")
    checkpoint.save_final(acc, trainer.model, tokenizer, final)
    if acc.is_main_process:  # final/ is what a resume reuses; the training state is no longer needed
        shutil.rmtree(out / checkpoint.CHECKPOINTS, ignore_errors=True)
        # The fine-tune's eval.json carries this: its own times count the head's training only.
        write_json(out / SUMMARY_FILE, {"steps": state.step, "blocks": len(train), "seq_len": cfg.adapt_seq_len,
                                        "train_seconds": state.train_seconds, "wall_seconds": state.wall_seconds,
                                        "held_out_loss": {"before": before["loss"], "after": after["loss"]}})
    return final


def summary(out: Path) -> dict | None:
    """What adapt_body recorded in `out` (steps, seconds, held-out LM loss before and after), or None."""
    path = out / SUMMARY_FILE
    return read_json(path) if path.is_file() else None
