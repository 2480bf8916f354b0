"""The one training loop, shared by pretraining and fine-tuning.

It knows nothing about tasks: it gets a model whose forward returns `.loss`, a dataset of
examples, a collate function, and an `evaluate(model) -> dict` callback. Accelerate handles
devices, processes, mixed precision and state saving; the data order is our own, decided only
by (seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import GradientAccumulationPlugin, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pipeline import checkpoint, precision
from pipeline.budget import TimeBudget
from pipeline.config import TrainConfig
from pipeline.errors import PipelineError
from pipeline.optim import build_optimizer, build_scheduler
from pipeline.recipe import applied_fp32_overrides, format_overrides


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved at `path`."""

    exit_code = 130

    def __init__(self, path: Path):
        super().__init__(f"interrupted: training state saved to {path}; rerun with resume=true to continue")


class NonFiniteLoss(Exception):
    exit_code = 3


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches this process consumed in the current epoch
    tokens: int = 0  # tokens trained on, all processes together
    train_seconds: float = 0.0  # optimizer steps only
    wall_seconds: float = 0.0  # the whole loop with evaluation and saving, summed over resumed runs
    first_step_seconds: float = 0.0  # max_train_minutes: step 1's time (compilation), left out of the pace
    budget_steps: int = 0  # max_train_minutes: the step count fixed from measured pace (0 = not yet); kept on resume
    budget_retimed_step: int = 0  # max_train_minutes with wsd: when the count was last re-timed (pipeline/budget.py)
    budget_retimed_seconds: float = 0.0
    budget_decay_step: int = 0  # max_train_minutes with wsd: where the decay was last re-timed (0 = never) ...
    budget_decay_progress: float = 0.0  # ... and how far it had gone there (pipeline/optim.py wsd_decay_progress)
    data_state: dict = field(default_factory=dict)  # a dataset that keeps its own position: its state_dict()


def make_accelerator(cfg: TrainConfig, out: Path) -> Accelerator:
    cpu = not torch.cuda.is_available()  # CPU processes (torchrun) talk over gloo
    state = PartialState(cpu=cpu)
    if cfg.mixed_precision == "fp16" and state.device.type == "cpu":
        raise PipelineError("mixed_precision=fp16 needs a GPU: use auto, bf16 or no on a CPU")
    with state.main_process_first():  # the main process measures bf16 (pipeline/precision.py), the others read it
        chosen = precision.resolve(cfg.mixed_precision, state.device)
    state.print(f"precision: {chosen.mode} ({chosen.reason})")
    if fp32 := applied_fp32_overrides(cfg):  # pipeline/recipe.py applied them when it read the recipe
        state.print(f"fp32: the recipe's fp32_overrides apply ({format_overrides(fp32)}); "
                    "mixed_precision=no would keep the recipe's own values")
    accum = cfg.gradient_accumulation_steps(state.num_processes)
    return Accelerator(
        cpu=cpu,
        mixed_precision=chosen.mode,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=accum, sync_with_dataloader=False),
        log_with="tensorboard",
        project_dir=str(out),
    )


def epoch_batches(n: int, micro_batch: int, num_processes: int, rank: int, seed: int, epoch: int,
                  shuffle: bool = True, lengths=None) -> list[list[int]]:
    """This process's micro-batches for one epoch.

    Each global group of `micro_batch × num_processes` shuffled indices is split between the
    processes, so shards never overlap; the incomplete last group is dropped so that every
    process takes the same number of steps. With `lengths`, groups are made of examples of
    similar length (little padding): the shuffled order is cut into windows of GROUPING_WINDOW
    groups, each window is sorted by length and cut into groups, and the groups are shuffled again.
    """
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    group = micro_batch * num_processes
    usable = (n // group) * group
    order = order[:usable]
    if lengths is not None:
        lengths = torch.as_tensor(lengths)
        window = group * GROUPING_WINDOW
        order = torch.cat([chunk[torch.argsort(lengths[chunk], stable=True)] for chunk in order.split(window)])
        groups = order.view(-1, group)
        order = groups[torch.randperm(len(groups), generator=generator)].flatten()
    return [order[s + rank * micro_batch: s + (rank + 1) * micro_batch].tolist() for s in range(0, usable, group)]


GROUPING_WINDOW = 50  # groups sorted together by length: wide enough to pad little, narrow enough to stay random


class Trainer:
    def __init__(self, cfg: TrainConfig, accelerator: Accelerator, model, train_data, collate: Callable,
                 evaluate: Callable[[torch.nn.Module], dict], out: Path,
                 on_evaluate: Callable[[torch.nn.Module, int, dict], bool | None] | None = None,
                 run_files: dict[str, str] | None = None, eval_split: str = "eval"):
        self.cfg, self.acc, self.out = cfg, accelerator, out
        self.train_data, self.collate = train_data, collate
        self.evaluate_fn, self.on_evaluate = evaluate, on_evaluate  # on_evaluate returns True to stop early
        self.eval_split = eval_split  # how evaluations are labelled in metrics.jsonl ("dev" for early stopping)
        # Group examples of similar length into batches (variable-length examples only).
        self.lengths = [len(x) for x in train_data["input_ids"]] \
            if cfg.group_by_length and "input_ids" in getattr(train_data, "column_names", ()) else None
        self.run_files = run_files or {}  # written once the run has really started (e.g. config.yaml)
        self.accum = cfg.gradient_accumulation_steps(accelerator.num_processes)
        # A dataset without a length is a stream (pipeline/streaming.py): it has no epochs and keeps its own
        # position, which is saved with every checkpoint (state_dict) and restored on resume (load_state_dict).
        self.streamed = not hasattr(train_data, "__len__")
        if self.streamed and accelerator.num_processes > 1:
            raise PipelineError("streaming sources are read by one process: run with one (NPROC=1), "
                                "or set streaming: false to shard a cached corpus across processes")
        self.batches_per_epoch = 0 if self.streamed else \
            len(train_data) // (cfg.micro_batch_size * accelerator.num_processes)
        if self.batches_per_epoch == 0 and not self.streamed:
            raise PipelineError(
                f"only {len(train_data)} training examples, fewer than micro_batch_size × processes = "
                f"{cfg.micro_batch_size * accelerator.num_processes}: use more data or a smaller micro_batch_size"
            )
        self.max_steps = cfg.max_steps if cfg.max_steps > 0 else \
            max(1, math.ceil(cfg.num_train_epochs * self.batches_per_epoch / self.accum))
        self.state = TrainState()
        self.budget = TimeBudget.from_config(cfg, accelerator)  # None without max_train_minutes
        self.model = model
        self.last_eval: dict = {}
        self._stop_signal: int | None = None
        self._stop_early = False
        self._budget_announced = False

    # ---- data -------------------------------------------------------------------------
    def _batches(self) -> Iterator[dict]:
        """Endless micro-batches, starting at the state's (epoch, batch) position."""
        acc, cfg = self.acc, self.cfg
        if self.streamed:  # the stream goes on from its own (restored) position; it never ends
            # Its own generator, as below: a resumed run must not draw from the global RNG where the first did not.
            for batch in DataLoader(self.train_data, batch_size=cfg.micro_batch_size, collate_fn=self.collate,
                                    generator=torch.Generator().manual_seed(cfg.seed)):
                self.state.batch_in_epoch += 1
                yield {k: v.to(acc.device, non_blocking=True) for k, v in batch.items()}
            return
        while True:
            plan = epoch_batches(len(self.train_data), cfg.micro_batch_size, acc.num_processes,
                                 acc.process_index, cfg.seed, self.state.epoch, lengths=self.lengths)
            # A seeded generator of its own: a DataLoader otherwise draws its base seed from the global RNG
            # each time one starts, and a resumed run starts one at another point of that stream than the
            # uninterrupted run did, so every dropout mask after it would differ.
            loader = DataLoader(self.train_data, batch_sampler=plan[self.state.batch_in_epoch:],
                                collate_fn=self.collate, num_workers=cfg.num_workers,
                                pin_memory=acc.device.type == "cuda",
                                generator=torch.Generator().manual_seed(cfg.seed + self.state.epoch))
            for batch in loader:
                self.state.batch_in_epoch += 1
                yield {k: v.to(acc.device, non_blocking=True) for k, v in batch.items()}
            self.state.epoch += 1
            self.state.batch_in_epoch = 0

    # ---- the loop ---------------------------------------------------------------------
    def fit(self) -> TrainState:
        cfg, acc = self.cfg, self.acc
        set_seed(cfg.seed)
        optimizer = build_optimizer(self.model, cfg)
        model, optimizer = acc.prepare(self.model, optimizer)
        if cfg.compile:
            model = torch.compile(model)

        resume_from = checkpoint.latest_checkpoint(self.out) if cfg.resume else None
        if resume_from is not None:
            self.state = TrainState(**checkpoint.load_checkpoint(acc, resume_from, model))
            if self.state.data_state:
                self.train_data.load_state_dict(self.state.data_state)
            if acc.is_main_process:
                checkpoint.truncate_metrics(self.out, self.state.step)
            acc.print(f"resumed from {resume_from} at step {self.state.step}")
            if self.state.budget_steps:  # fixed by the time budget of the run this one continues
                self.max_steps = self.state.budget_steps
        scheduler = build_scheduler(optimizer, cfg, self.max_steps, self.state.step, self._decay_anchor())
        if acc.is_main_process:  # only now, after a resume loaded cleanly, is the output folder touched
            self.out.mkdir(parents=True, exist_ok=True)
            for name, text in self.run_files.items():
                (self.out / name).write_text(text)
            acc.init_trackers(checkpoint.TENSORBOARD)

        started, wall_before = time.perf_counter(), self.state.wall_seconds
        self._install_signal_handlers()
        bar = tqdm(total=self.max_steps, initial=self.state.step, disable=not acc.is_main_process,
                   desc="train", dynamic_ncols=True)
        batches = self._batches()
        model.train()
        loss_sum = torch.zeros((), device=acc.device)  # summed on device: no host sync per step
        tokens = torch.zeros((), device=acc.device, dtype=torch.long)
        window_start, window_steps = time.perf_counter(), 0

        while self.state.step < self.max_steps and not self._stop_early:
            t0 = time.perf_counter()
            for _ in range(self.accum):
                batch = next(batches)
                with acc.accumulate(model):
                    loss = model(**batch, use_cache=False).loss  # no KV cache to build while training
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.max_grad_norm > 0:
                        acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                loss_sum += loss.detach()
                tokens += batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()
            scheduler.step()
            self.state.step += 1
            window_steps += 1
            self.state.train_seconds += time.perf_counter() - t0
            if self.budget is not None:
                scheduler = self._apply_budget(optimizer, scheduler, bar)
            bar.update(1)
            step = self.state.step

            if step % cfg.logging_steps == 0 or step == self.max_steps:
                mean_loss = acc.reduce(loss_sum, "mean").item() / (self.accum * window_steps)
                n_tokens = acc.reduce(tokens, "sum").item()
                self._check_finite(mean_loss)
                elapsed = time.perf_counter() - window_start
                self.state.tokens += n_tokens
                row = {"loss": mean_loss, "lr": scheduler.get_last_lr()[0], "tokens": self.state.tokens,
                       "tokens_per_s": n_tokens / elapsed}
                self.log(row, "train")
                bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{n_tokens / elapsed:,.0f}")
                loss_sum.zero_(), tokens.zero_()
                window_start, window_steps = time.perf_counter(), 0
            if step % cfg.eval_steps == 0 or step == self.max_steps:
                self.run_evaluation(model)
            if self._stop_early:
                acc.print(f"stopped early at step {step}")
            stop = self._should_stop()
            if stop or step % cfg.save_steps == 0 or step == self.max_steps:
                # Never write a checkpoint from a broken state: check the loss since the last log.
                self._check_finite(acc.reduce(loss_sum, "sum").item())
                self.state.tokens += acc.reduce(tokens, "sum").item()  # the saved count must be exact
                tokens.zero_()
                self.state.wall_seconds = wall_before + time.perf_counter() - started
                if hasattr(self.train_data, "state_dict"):
                    self.state.data_state = self.train_data.state_dict()
                path = checkpoint.save_checkpoint(acc, self.out, step, asdict(self.state), cfg.keep_checkpoints)
                if stop:
                    bar.close()
                    raise TrainingInterrupted(path)
            if step % cfg.logging_steps == 0:
                window_start = time.perf_counter()  # evaluation and saving don't count as training time
        bar.close()
        self.state.wall_seconds = wall_before + time.perf_counter() - started
        for tracker in acc.trackers:  # flush TensorBoard; end_training() would also tear down the process group
            tracker.finish()
        self.model = acc.unwrap_model(model)
        self.optimizer = optimizer  # its state's size goes into the report
        return self.state

    def run_evaluation(self, model) -> dict:
        metrics = self.evaluate_fn(model)
        self.last_eval = metrics
        self.log(metrics, self.eval_split)
        if self.on_evaluate is not None:
            self._stop_early = bool(self.on_evaluate(self.acc.unwrap_model(model), self.state.step, metrics))
        self.acc.wait_for_everyone()
        return metrics

    def _apply_budget(self, optimizer, scheduler, bar):
        """max_train_minutes (pipeline/budget.py): once the pace is known, fix max_steps and the schedule to it."""
        try:
            fixed = self.budget.after_step(self.state, self.max_steps)
        except PipelineError:  # the budget cannot even hold the warmup
            bar.leave = False
            bar.close()
            raise
        if fixed:
            self.max_steps = fixed  # the schedule now ends exactly there
            scheduler = build_scheduler(optimizer, self.cfg, fixed, self.state.step, self._decay_anchor())
            bar.total = fixed
            bar.refresh()
            if not self._budget_announced:  # later re-timings (wsd) only move the bar's end
                self.acc.print(f"max_train_minutes={self.cfg.max_train_minutes:g}: training for {fixed} steps")
                self._budget_announced = True
        elif (estimate := self.budget.provisional_steps(self.state, self.max_steps)) is not None:
            bar.total = estimate  # until the count is fixed, the ETA is the budget's
            bar.refresh()
        return scheduler

    def _decay_anchor(self) -> tuple[int, float]:
        return self.state.budget_decay_step, self.state.budget_decay_progress

    # ---- bookkeeping ------------------------------------------------------------------
    def log(self, values: dict, split: str) -> None:
        if not self.acc.is_main_process:
            return
        row = {"step": self.state.step, "split": split, **values}
        with open(self.out / checkpoint.METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
        scalars = {f"{split}/{k}": v for k, v in values.items() if isinstance(v, (int, float))}
        self.acc.log(scalars, step=self.state.step)
        if split != "train":
            shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if isinstance(v, float))
            tqdm.write(f"step {self.state.step} {split}: {shown}")

    def _check_finite(self, loss: float) -> None:
        if not math.isfinite(loss):
            last = checkpoint.latest_checkpoint(self.out)
            raise NonFiniteLoss(
                f"training loss became {loss} at step {self.state.step}; no checkpoint was written from this state "
                f"(last good one: {last or 'none'}). Lower learning_rate or check the data, then resume."
            )

    def _install_signal_handlers(self) -> None:
        def handler(signum, frame):
            self._stop_signal = signum  # acted on at the end of the current step

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handler)

    def _should_stop(self) -> bool:
        stop = self._stop_signal is not None
        if self.acc.num_processes == 1:
            return stop
        # Every process must agree, or the next collective hangs: one tiny all-reduce per step.
        flag = self.acc.reduce(torch.tensor(float(stop), device=self.acc.device), "sum")
        return bool(flag.item())
