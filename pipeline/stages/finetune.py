"""Fine-tune a task head from a pretrained checkpoint (or from scratch, as the control)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import checkpoint
from pipeline.attention import check_backend
from pipeline.config import FinetuneConfig, to_yaml
from pipeline.heads import load_head
from pipeline.tasks import get_task
from pipeline.trainer import Trainer, make_accelerator


def run(task_name: str, cfg: FinetuneConfig, ckpt: Path, out: Path) -> dict:
    task = get_task(task_name)
    checkpoint.prepare_run_dir(out, cfg.resume, cfg.overwrite)
    acc = make_accelerator(cfg, out)
    check_backend(cfg.attn_implementation, acc.device, training=True)

    hub_id, train_split, train_rows = task.load(cfg, "train")
    _, eval_split, eval_rows = task.load(cfg, "eval")
    labels = task.label_names(train_rows, hub_id, train_split)
    task.label_names(eval_rows, hub_id, eval_split)  # same columns in both splits
    model, tokenizer = load_head(ckpt, task.head, cfg.init, cfg.seed, cfg.attn_implementation,
                                 **task.head_config(labels))
    with acc.main_process_first():
        train_features, train_info = task.preprocess(train_rows, tokenizer, cfg, hub_id, train_split, labels, True)
        eval_features, eval_info = task.preprocess(eval_rows, tokenizer, cfg, hub_id, eval_split, labels, False)
    for split, info in ((train_split, train_info), (eval_split, eval_info)):
        if info.get("truncated"):
            acc.print(f"{split}: {info['truncated']:,} of {info['examples']:,} texts were longer than "
                      f"max_length={cfg.max_length} and were truncated")

    # All input is validated; from here on the output folder may be written.
    if acc.is_main_process and cfg.overwrite:
        checkpoint.clear_run_dir(out)
    acc.print(f"{task.name}: {train_info['examples']:,} train examples ({train_split}), "
              f"{eval_info['examples']:,} eval examples ({eval_split}), init={cfg.init} from {ckpt}")

    extras: dict = {}

    def evaluate(model) -> dict:
        metrics, found = task.evaluate(model, eval_rows, eval_features, acc, cfg, tokenizer, labels)
        extras.update(found)
        return metrics

    trainer = Trainer(cfg, acc, model, train_features, task.collator(tokenizer), evaluate, out,
                      run_files={"config.yaml": to_yaml(cfg)})
    state = trainer.fit()
    checkpoint.save_final(acc, trainer.model, tokenizer, out / "final")

    report = {
        "task": task.name, "kind": task.kind, "init": cfg.init, "checkpoint": str(ckpt), "dataset": hub_id,
        "train_split": train_split, "eval_split": eval_split, "train": train_info, "eval": eval_info,
        "metrics": trainer.last_eval, "steps": state.step, "train_seconds": state.train_seconds,
        "wall_seconds": state.wall_seconds,
        # The last evaluation measured exactly these weights: `make evaluate` skips them until they change.
        "evaluation": {"model": str(out / "final"), "model_kind": task.model_kind,
                       "fingerprint": checkpoint.fingerprint(out / "final"), "dataset": hub_id, "split": eval_split,
                       **eval_info, "metrics": trainer.last_eval, "precision": cfg.mixed_precision},
    }
    if acc.is_main_process:
        (out / "eval.json").write_text(json.dumps(report, indent=2))
        if "predictions" in extras:  # official SQuAD format: {question id: answer text}
            (out / "predictions.json").write_text(json.dumps(extras["predictions"], indent=1))
        shown = {k: round(v, 4) for k, v in trainer.last_eval.items() if isinstance(v, float)}
        acc.print(f"saved {out / 'final'}; {eval_split}: {shown}")
    return report
