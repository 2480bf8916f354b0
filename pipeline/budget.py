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

4. with wsd only, the count is re-timed every `measure_at` steps to the end of the run, from the
   pace since the last re-timing: a machine that slows down (other work, a noisy neighbour) would
   otherwise overrun the budget by as much as it slowed (one 40-minute run was heading for 44; one
   whose count was locked once its 30% decay began ran 103.5% of its budget). No rate already used
   moves: before the decay only its start moves, and never to a step already taken; inside the decay
   the schedule is anchored where it stands (state.budget_decay_step/progress, pipeline/optim.py) and
   the rest of the decay is spread over the steps now left, so the rate goes on from where it was and
   still reaches 0 on the last step. A run whose pace holds is re-timed to the count it already has,
   so nothing moves. A resumed run leaves its first step (compilation again) out of the pace, and
   re-times the rest at its own pace: it ends at the budget, not necessarily at the interrupted
   run's step count.
"""

from __future__ import annotations

import math

import torch

from pipeline import precision
from pipeline.errors import PipelineError
from pipeline.optim import is_wsd, wsd_decay_progress, wsd_decay_steps

MEASURE_STEPS = 10  # the least number of steps the pace is measured over (plus the first, not counted)


class TimeBudget:
    def __init__(self, minutes: float, warmup_steps: int, accelerator=None, wsd_cfg=None):
        self.seconds = 60.0 * minutes
        self.minutes = minutes
        self.warmup_steps = warmup_steps
        self.measure_at = max(warmup_steps, MEASURE_STEPS)
        self.acc = accelerator
        self.wsd_cfg = wsd_cfg  # the recipe when its schedule is wsd: the count is re-timed to the end
        self._first_step_here = True  # this process's first step (after a resume: compilation again)

    @classmethod
    def from_config(cls, cfg, accelerator=None) -> TimeBudget | None:
        if not cfg.max_train_minutes:
            return None
        return cls(cfg.max_train_minutes, cfg.warmup_steps, accelerator, cfg if is_wsd(cfg) else None)

    def after_step(self, state, max_steps: int) -> int | None:
        """Called after every optimizer step: returns the run's step count when it is fixed or moved, else None."""
        first_here, self._first_step_here = self._first_step_here, False
        if state.budget_steps:  # fixed earlier (maybe by the run this one resumes)
            if first_here:  # resumed: this step compiled again, so the pace is measured from after it
                state.budget_retimed_step, state.budget_retimed_seconds = state.step, state.train_seconds
                return None
            return self._retime(state) if self.wsd_cfg is not None else None
        if state.step == 1:
            state.first_step_seconds = state.train_seconds
        if state.step == 2 and self.warmup_steps > 0:
            pace = state.train_seconds - state.first_step_seconds
            projected = self._slowest(state.first_step_seconds + (self.warmup_steps - 1) * pace)
            if projected > self.seconds:
                raise PipelineError(
                    f"max_train_minutes={self.minutes:g} is shorter than the warmup: warmup_steps={self.warmup_steps} "
                    f"would take about {projected / 60:.2g} minutes at the measured {pace:.3g} s per step"
                    f"{self._precision_note()}")
        if state.step < min(self.measure_at, max_steps):
            return None
        if state.step >= max_steps:  # the recipe's max_steps comes first: nothing to fix
            return None
        pace = self._slowest(self._pace_since_step_1(state))
        state.budget_steps = min(max_steps, max(self._steps_that_fit(state, pace), state.step + 1))  # at least one step more: the last one
        state.budget_retimed_step, state.budget_retimed_seconds = state.step, state.train_seconds
        return state.budget_steps

    def provisional_steps(self, state, max_steps: int) -> int | None:
        """Before the count is fixed, from step 2: the steps the budget holds at this process's pace so far.

        For the progress bar's total only, so that its ETA is the budget's from the start instead of the
        recipe's max_steps (the default recipe's 100,000 showed an ETA of 60 hours); the schedule still
        runs to max_steps until after_step fixes the count. Local: no collective on every step."""
        if state.budget_steps or state.step < 2:
            return None
        steps = self._steps_that_fit(state, self._pace_since_step_1(state), spent=state.train_seconds)
        return min(max_steps, max(steps, state.step + 1))

    def _retime(self, state) -> int | None:
        """wsd: every measure_at steps, fix the count again from the recent pace; rates already used stay."""
        fixed = state.budget_steps
        if state.step - state.budget_retimed_step < self.measure_at:
            return None
        pace = self._slowest(state.train_seconds - state.budget_retimed_seconds) / (state.step - state.budget_retimed_step)
        state.budget_retimed_step, state.budget_retimed_seconds = state.step, state.train_seconds
        steps = max(self._steps_that_fit(state, pace), state.step + 1)  # at least one step more: the last one
        if self.wsd_cfg.max_steps > 0:  # the recipe's max_steps stays the upper bound
            steps = min(steps, self.wsd_cfg.max_steps)
        if steps == fixed:
            return None
        decaying = state.budget_decay_step or self._decay_start(fixed) <= state.step
        if decaying or self._decay_start(steps) < state.step:
            # The decay has begun (or must begin now): anchor it where it stands and spread the rest
            # over the steps left, so the next rate is the one the old count would have used.
            anchor = (state.budget_decay_step, state.budget_decay_progress)
            state.budget_decay_progress = wsd_decay_progress(self.wsd_cfg, fixed, state.step, anchor)
            state.budget_decay_step = state.step
        state.budget_steps = steps
        return steps

    def _precision_note(self) -> str:
        """Names the precision with the pace, and blames emulated bf16 when that is the likely cause."""
        if self.acc is None:
            return "; raise max_train_minutes or lower warmup_steps"
        mode = self.acc.mixed_precision
        emulated = precision.emulated_bf16_note(mode, self.acc.device)
        return f" in {'fp32' if mode == 'no' else mode}{emulated or '; raise max_train_minutes or lower warmup_steps'}"

    def _steps_that_fit(self, state, pace: float, spent: float | None = None) -> int:
        """The step count at which the budget runs out if the steps left go at `pace` seconds each, after
        `spent` seconds (default: the slowest process's train_seconds, a collective)."""
        left = self.seconds - (self._slowest(state.train_seconds) if spent is None else spent)
        return state.step + max(0, math.floor(left / max(pace, 1e-9)))

    @staticmethod
    def _pace_since_step_1(state) -> float:
        """This process's seconds a step, leaving out step 1 (compilation, first touches) once it is timed."""
        measured = state.step - 1 if state.first_step_seconds else state.step
        return (state.train_seconds - state.first_step_seconds) / max(1, measured)

    def _decay_start(self, steps: int) -> int:
        """The first step (schedule index) of the wsd decay in a run of `steps` steps."""
        return steps - wsd_decay_steps(self.wsd_cfg, steps)

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
