"""Fine-tune a task head from a pretrained checkpoint (or from scratch, as the control).

Optional steps, each a recipe key: task-adaptive LM training of the body on the task's texts
(`adapt_steps`), a mean-pooling layer under the head (`pooling: mean`), early stopping on a
dev split carved out of the training sample (`dev_fraction`, `early_stopping_patience`), and LoRA
in place of full fine-tuning (`finetune_method: lora`, pipeline/adapters.py).
"""

from __future__ import annotations

from pathlib import Path

from pipeline import adapt, adapters, budget, checkpoint, machine, optim, precision
from pipeline.attention import check_backend
from pipeline.config import FinetuneConfig
from pipeline.recipe import to_yaml, applied_fp32_overrides
from pipeline.early_stopping import EarlyStopping, split_dev
from pipeline.errors import PipelineError
from pipeline.heads import load_head
from pipeline.json_files import write_json
from pipeline.pooling import add_mean_pooling_layer, lora_parts
from pipeline.tasks import get_task
from pipeline.trainer import Trainer, make_accelerator

CALIBRATION_EXAMPLES = 64  # training examples that set the mean-pooling layer's scale


def run(task_name: str, cfg: FinetuneConfig, ckpt: Path, out: Path) -> dict:
    task = get_task(task_name)
    checkpoint.prepare_run_dir(out, cfg.resume, cfg.overwrite)
    acc = make_accelerator(cfg, out)
    check_backend(cfg.attn_implementation, acc.device, training=True)

    hub_id, train_split, train_rows = task.load(cfg, "train")
    _, eval_split, eval_rows = task.load(cfg, "eval")
    labels = task.label_names(train_rows, hub_id, train_split)
    task.label_names(eval_rows, hub_id, eval_split)  # same columns in both splits
    dev_rows = None
    if cfg.dev_fraction:  # early stopping watches this seeded slice of train, never the eval split
        train_rows, dev_rows = split_dev(train_rows, cfg.dev_fraction, cfg.seed, task.dev_group)
    checkpoint.inspect_model_folder(ckpt)  # a bad --ckpt fails here, before anything is written
    if cfg.finetune_method == "lora":
        adapters.check_targets(ckpt, cfg)
    if cfg.pooling != "last" and task.kind != "classification":
        raise PipelineError(f"pooling={cfg.pooling} is for classification heads; {task.name} scores every token: "
                            "use pooling=last")

    # All input is validated; from here on the output folder may be written.
    if acc.is_main_process and cfg.overwrite:
        checkpoint.clear_run_dir(out)
    body = ckpt
    if cfg.adapt_steps and cfg.init == "pretrained":
        with acc.main_process_first():
            body = adapt.adapt_body(task.unlabelled_texts(train_rows), cfg, ckpt, out / checkpoint.ADAPT_DIR,
                              log=acc.print)
    model, tokenizer = load_head(body, task.head, cfg.init, cfg.seed, cfg.attn_implementation,
                                 **task.head_config(labels))
    with acc.main_process_first():
        train_features, train_info = task.preprocess(train_rows, tokenizer, cfg, hub_id, train_split, labels, True)
        eval_features, eval_info = task.preprocess(eval_rows, tokenizer, cfg, hub_id, eval_split, labels, False)
        if dev_rows is not None:
            dev_features, _ = task.preprocess(dev_rows, tokenizer, cfg, hub_id, train_split, labels, False)
    pooling_layer = None
    if cfg.pooling == "mean":  # calibrated on the first training examples (the same for every process)
        first = range(min(CALIBRATION_EXAMPLES, len(train_features)))
        pooling_layer = add_mean_pooling_layer(
            model, calibration=task.collator(tokenizer)([train_features[i] for i in first]))
    lora = None
    if cfg.finetune_method == "lora":  # the model is wrapped in place: the loop trains it as ever
        in_full, frozen = lora_parts(pooling_layer) if pooling_layer is not None else ([], [])
        lora = adapters.wrap(model, cfg, train_in_full=in_full, keep_frozen=frozen)
    parameters = adapters.parameter_counts(model, cfg.finetune_method)
    for split, info in ((train_split, train_info), (eval_split, eval_info)):
        if info.get("truncated"):
            acc.print(f"{split}: {info['truncated']:,} of {info['examples']:,} texts were longer than "
                      f"max_length={cfg.max_length} and were truncated")
    dev_note = f" (+{len(dev_rows):,} held out as the dev split)" if dev_rows is not None else ""
    acc.print(f"{task.name}: {train_info['examples']:,} train examples ({train_split}){dev_note}, "
              f"{eval_info['examples']:,} eval examples ({eval_split}), init={cfg.init} from {body}")
    rate = f", at lora_learning_rate={cfg.lora_learning_rate:g}" if cfg.finetune_method == "lora" else ""
    acc.print(f"finetune_method={cfg.finetune_method}: {parameters['trainable']:,} of {parameters['total']:,} "
              f"parameters train ({parameters['trainable'] / parameters['total']:.2%}){rate}")

    extras: dict = {}

    def evaluate(model, rows=eval_rows, features=eval_features) -> dict:
        metrics, found = task.evaluate(model, rows, features, acc, cfg, tokenizer, labels)
        extras.update(found)
        return metrics

    stopper = None
    if dev_rows is not None:
        watch = (lambda m: evaluate(m, dev_rows, dev_features))
        if cfg.early_stopping_patience:
            stopper = EarlyStopping(out / checkpoint.BEST_DIR, task.headline, cfg.early_stopping_patience, acc.is_main_process)
    else:
        watch = evaluate
    trainer = Trainer(cfg, acc, model, train_features, task.collator(tokenizer), watch, out, on_evaluate=stopper,
                      run_files={checkpoint.CONFIG_FILE: to_yaml(cfg)}, eval_split="dev" if dev_rows is not None else "eval")
    state = trainer.fit()
    best_step = best_dev = None
    if stopper is not None:
        acc.wait_for_everyone()
        best_step = stopper.restore_best(trainer.model)
        best_dev = {task.headline: stopper.state["best"]}
        acc.print(f"kept the weights of step {best_step} (best dev {task.headline} {stopper.state['best']:.4f})")
    metrics = trainer.last_eval
    if dev_rows is not None:  # the eval split is read once, now, by the weights that are kept
        metrics = evaluate(trainer.model)
        trainer.log(metrics, "eval")
    if lora is not None:  # final/ the merged model, final/adapter/ the adapter alone
        adapters.save_final(acc, lora, tokenizer, out / checkpoint.FINAL)
    else:
        checkpoint.save_final(acc, trainer.model, tokenizer, out / checkpoint.FINAL)

    trained_in = precision.resolve(cfg.mixed_precision, acc.device)
    report = {
        "task": task.name, "kind": task.kind, "init": cfg.init, "checkpoint": str(ckpt), "dataset": hub_id,
        "train_split": train_split, "eval_split": eval_split, "train": train_info, "eval": eval_info,
        "dev_examples": len(dev_rows) if dev_rows is not None else 0, "best_step": best_step,
        # task-adaptive LM training before the head (its times are not in the head's below), or null
        "adapt": adapt.summary(out / checkpoint.ADAPT_DIR) if body != ckpt else None,
        "best_dev": best_dev,  # the kept weights' dev score: what a study may choose by (never the eval split)
        "metrics": metrics, "parameters": parameters,
        "memory": {**machine.peak_memory(acc.device), "optimizer_state_bytes": optim.state_bytes(trainer.optimizer)},
        "steps": state.step, "train_seconds": state.train_seconds,
        "wall_seconds": state.wall_seconds, "budget": budget.summary(cfg, state),
        "precision": trained_in.record(),  # what `auto` became on this machine
        "fp32_overrides": applied_fp32_overrides(cfg),  # what applied here, or null
        "machine": machine.describe(),  # the times compare only on one machine
        # The last evaluation measured exactly these weights: `make evaluate` skips them until they change.
        "evaluation": {"model": str(out / checkpoint.FINAL), "model_kind": task.model_kind,
                       "fingerprint": checkpoint.fingerprint(out / checkpoint.FINAL), "scoring": task.scoring,
                       "dataset": hub_id, "split": eval_split,
                       **eval_info, "metrics": metrics, "precision": trained_in.mode},
    }
    if acc.is_main_process:
        write_json(out / checkpoint.EVAL_FILE, report)
        if "predictions" in extras:  # official SQuAD format: {question id: answer text}
            write_json(out / checkpoint.PREDICTIONS_FILE, extras["predictions"], indent=1)
        shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
        acc.print(f"saved {out / 'final'}; {eval_split}: {shown}")
    return report
