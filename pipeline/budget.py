"""A time budget for training (`max_train_minutes`): stop at the budget with a finished schedule.

The step count is fixed once, early, from measured throughput, and the schedule is built for it:
1. after step 1, its time is kept apart (it holds compilation and first-touch costs);
2. after step 2, the warmup is projected (step 1 + warmup_steps − 1 steps at step 2's pace): if it
   alone would overrun the budget, the run stops with one line (exit 2) instead of wasting it;
3. after step `measure_at` = max(warmup_steps, MEASURE_STEPS), the pace of steps 2..measure_at
   gives max_steps = measure_at + (budget − time so far) / pace, capped by the recipe's max_steps.
   The trainer rebuilds the schedule for it (pipeline/optim.py), so the run ends with the
   schedule's final rate (0 for linear, cosine and wsd) however long the steps turn out.

Only optimizer-step time counts (TrainState.train_seconds), never evaluation or saving. The derived
count is kept in the trainer state (`budget_steps`, saved in every checkpoint): a resumed run
reuses it instead of measuring again, so it takes exactly the steps the uninterrupted run would
have. The rates of steps 1..measure_at are those of the recipe's max_steps: the same as the final
schedule's while they are warmup (measure_at <= warmup_steps), and with wsd, whose warmup and
constant phases do not depend on the step count, in any case.
"""

from __future__ import annotations

import math

import torch

from pipeline.errors import PipelineError

MEASURE_STEPS = 10  # the least number of steps the pace is measured over (plus the first, not counted)


class TimeBudget:
    def __init__(self, minutes: float, warmup_steps: int, accelerator=None):
        self.seconds = 60.0 * minutes
        self.minutes = minutes
        self.warmup_steps = warmup_steps
        self.measure_at = max(warmup_steps, MEASURE_STEPS)
        self.acc = accelerator

    @classmethod
    def from_config(cls, cfg, accelerator=None) -> TimeBudget | None:
        return cls(cfg.max_train_minutes, cfg.warmup_steps, accelerator) if cfg.max_train_minutes else None

    def after_step(self, state, max_steps: int) -> int | None:
        """Called after every optimizer step: returns the run's step count once it is fixed, else None."""
        if state.budget_steps:  # fixed earlier (maybe by the run this one resumes)
            return None
        if state.step == 1:
            state.first_step_seconds = state.train_seconds
        if state.step == 2 and self.warmup_steps > 0:
            pace = state.train_seconds - state.first_step_seconds
            projected = self._slowest(state.first_step_seconds + (self.warmup_steps - 1) * pace)
            if projected > self.seconds:
                raise PipelineError(
                    f"max_train_minutes={self.minutes:g} is shorter than the warmup: warmup_steps={self.warmup_steps} "
                    f"would take about {projected / 60:.2g} minutes at the measured {pace:.3g} s per step; "
                    "raise max_train_minutes or lower warmup_steps")
        if state.step < min(self.measure_at, max_steps):
            return None
        if state.step >= max_steps:  # the recipe's max_steps comes first: nothing to fix
            return None
        measured = state.step - 1 if state.first_step_seconds else state.step
        pace = self._slowest((state.train_seconds - state.first_step_seconds) / max(1, measured))
        left = self.seconds - self._slowest(state.train_seconds)
        steps = state.step + max(0, math.floor(left / max(pace, 1e-9)))
        state.budget_steps = min(max_steps, max(steps, state.step + 1))  # at least one step more: the last one
        return state.budget_steps

    def _slowest(self, seconds: float) -> float:
        """The largest value over all processes, so that every process fixes the same step count."""
        if self.acc is None or self.acc.num_processes == 1:
            return seconds
        value = torch.tensor([seconds], dtype=torch.float64, device=self.acc.device)
        return self.acc.gather(value).max().item()


def summary(cfg, state) -> dict | None:
    """What run.json / eval.json record of the budget: asked, derived, reached."""
    if not cfg.max_train_minutes:
        return None
    return {"max_train_minutes": cfg.max_train_minutes, "derived_max_steps": state.budget_steps or None,
            "steps": state.step, "train_seconds": state.train_seconds,
            "used": state.train_seconds / (60.0 * cfg.max_train_minutes)}
