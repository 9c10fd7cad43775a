"""The run's schedule, decided once from the config and the data: updates, dev cadence, stopping.

    --batch_size, halved (not below --min_batch_size) while an epoch would have fewer
      than --min_updates_per_epoch updates         -> batch_size
    train windows / (batch_size x grad_accum_steps)    -> updates per epoch
    --train_steps, else max(--epochs x updates per epoch, --min_train_steps)
                                                       -> total_steps (warmup and decay span it)
    --max_steps                                        -> stop_at (this invocation only)
    --eval_every_epochs x updates per epoch, else --eval_every, widened to
      ceil(total_steps / --max_evaluations) if that is more -> eval_every (0: at the end)
    --early_stopping_patience                          -> patience, in dev evaluations

A schedule in epochs alone starves a small corpus: 1,350 sentences are 43 updates an epoch, so
10 epochs are 430 updates, warmup and decay included, and the head may not even have left the
all-`O` solution. `--min_train_steps` is the floor that fixes it (more epochs for a small
corpus, the same schedule for a large one), and `--max_evaluations` keeps the dev cadence and
the patience meaningful when the floor makes a hundred epochs: evaluations then come every few
epochs, and early stopping (patience counted in evaluations) ends the run when dev F1 has
stopped rising. `--min_updates_per_epoch` gives a small corpus smaller batches (more, noisier
updates an epoch): a batch of 16 instead of 32 scored 1 to 2 points more for `frozen_crf` on
1,000 to 4,000 sentences (32 to 126 updates an epoch at 32) and for the BERT-free BiLSTM-CRF on
1,000 and 2,000, not on 4,000. The shipped flagfiles' values and the runs behind them:
docs/learning_curve.md.

`plan_schedule` is pure (no TensorFlow), so the plan is tested on its own; the controller only
reads it, and the log states it at the start of every run (`SchedulePlan.describe`).
"""

from __future__ import annotations

import dataclasses
import math

from trainer.config import TrainConfig


def plural(count: float, noun: str) -> str:
    """'1 epoch', '2.33 epochs' (three significant digits)."""
    return f"{count:.3g} {noun}{'' if f'{count:.3g}' == '1' else 's'}"


@dataclasses.dataclass(frozen=True)
class SchedulePlan:
    """What the run will do, in optimizer updates (steps).

    Attributes:
      train_windows: training windows in the corpus (a long sentence is several windows).
      train_sentences: training sentences (for the log; 0 if the manifest does not say).
      batch_size: the global batch the training input is built with (--batch_size, or less
        by --min_updates_per_epoch).
      windows_per_update: batch_size x grad_accum_steps.
      steps_per_epoch: updates per pass over the training windows (at least 1).
      total_steps: the schedule's length; warmup and decay are defined over it.
      stop_at: the step this invocation stops at (total_steps, or --max_steps if smaller).
      eval_every: steps between dev evaluations during training; 0 = only at the end.
      patience: dev evaluations without a better F1 before stopping early; 0 = never.
      floor_applied: total_steps comes from --min_train_steps (the corpus is small).
      eval_widened: eval_every was widened by --max_evaluations.
      batch_reduced_from: the --batch_size that --min_updates_per_epoch halved (0: not halved).
    """

    train_windows: int
    windows_per_update: int
    steps_per_epoch: int
    total_steps: int
    stop_at: int
    eval_every: int
    patience: int
    train_sentences: int = 0
    floor_applied: bool = False
    eval_widened: bool = False
    batch_size: int = 0
    batch_reduced_from: int = 0

    @property
    def epochs(self) -> float:
        """total_steps in passes over the training windows."""
        return self.total_steps / self.steps_per_epoch

    def describe(self) -> str:
        """One log line: the plan and why, e.g. 'schedule: corpus of 1,350 sentences (1,362
        windows): 43 updates an epoch; 2,000 updates (at least --min_train_steps=2000) = up to
        46.5 epochs; dev every 100 updates (2.3 epochs, at most 20 evaluations); stop after 3
        evaluations without a better dev F1'."""
        corpus = f"{self.train_windows:,} windows"
        if self.train_sentences:
            corpus = f"{self.train_sentences:,} sentences ({corpus})"
        line = (f"schedule: corpus of {corpus}: {self.steps_per_epoch:,} updates an epoch of "
                f"{self.windows_per_update}")
        if self.batch_reduced_from:
            line += (f" (batch {self.batch_size}, not {self.batch_reduced_from}: "
                     "--min_updates_per_epoch)")
        line += f"; {self.total_steps:,} updates"
        if self.floor_applied:
            line += " (at least --min_train_steps)"
        up_to = "up to " if self.patience and self.eval_every else ""
        line += f" = {up_to}{plural(self.epochs, 'epoch')}"
        if self.eval_every:
            line += (f"; dev every {self.eval_every:,} updates "
                     f"({plural(self.eval_every / self.steps_per_epoch, 'epoch')}"
                     f"{', widened by --max_evaluations' if self.eval_widened else ''})")
            if self.patience:
                line += f"; stop after {self.patience} evaluations without a better dev F1"
        else:
            line += "; dev evaluated at the end"
        if self.stop_at < self.total_steps:
            line += f"; this invocation stops at step {self.stop_at:,} (--max_steps)"
        return line


def plan_schedule(config: TrainConfig, train_windows: int, train_sentences: int = 0,
                  replicas: int = 1) -> SchedulePlan:
    """The schedule for `config` on a training split of `train_windows` windows.

    `replicas`: the strategy's replicas in sync; a halved batch must still divide over them.
    """
    batch_size = config.batch_size
    while (config.min_updates_per_epoch
           and math.ceil(train_windows / (batch_size * config.grad_accum_steps))
           < config.min_updates_per_epoch
           and batch_size % 2 == 0 and batch_size // 2 >= max(config.min_batch_size, 1)
           and (batch_size // 2) % replicas == 0):
        batch_size //= 2
    per_update = batch_size * config.grad_accum_steps
    steps_per_epoch = max(1, math.ceil(train_windows / per_update))
    floor_applied = False
    if config.train_steps:
        total_steps = config.train_steps
    else:
        total_steps = max(1, math.ceil(config.epochs * train_windows / per_update))
        if config.min_train_steps > total_steps:
            total_steps, floor_applied = config.min_train_steps, True
    # Dev cadence in steps: --eval_every_epochs scales with the corpus, --eval_every not.
    eval_every = config.eval_every
    if config.eval_every_epochs:
        eval_every = max(1, round(config.eval_every_epochs * steps_per_epoch))
    eval_widened = False
    if eval_every and config.max_evaluations:
        widest = math.ceil(total_steps / config.max_evaluations)
        if widest > eval_every:
            eval_every, eval_widened = widest, True
    return SchedulePlan(
        train_windows=train_windows, train_sentences=train_sentences,
        batch_size=batch_size,
        batch_reduced_from=config.batch_size if batch_size != config.batch_size else 0,
        windows_per_update=per_update, steps_per_epoch=steps_per_epoch,
        total_steps=total_steps, stop_at=min(total_steps, config.max_steps or total_steps),
        eval_every=eval_every, patience=config.early_stopping_patience,
        floor_applied=floor_applied, eval_widened=eval_widened)
