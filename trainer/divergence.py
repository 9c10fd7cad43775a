"""Divergence: found between training calls before anything is logged, evaluated or saved.

A NaN/inf loss or gradient norm, a loss above --loss_upper_bound or above
--loss_upper_bound_factor x the median of recent losses, or (before an evaluation or a save)
non-finite weights mean divergence. The run then stops with `checkpointing.DivergenceError`
(the checkpoints on disk are all finite), or restores the latest checkpoint with lower learning
rates (--recovery_max_trials, --recovery_lr_factor).
"""

from __future__ import annotations

import collections
import statistics
from typing import Iterable

from absl import logging

from trainer.training_state import TrainingState
from trainer import checkpointing

# The loss bound of --loss_upper_bound_factor: that many times the median of the last
# LOSS_HISTORY per-call training losses, once MIN_LOSS_HISTORY are known. A median below
# LOSS_MEDIAN_FLOOR counts as the floor, so a nearly perfect fit does not make an ordinary batch
# look like a blow-up (factor 1000: the bound is never below 10 nats per token).
LOSS_HISTORY = 50
MIN_LOSS_HISTORY = 3
LOSS_MEDIAN_FLOOR = 0.01


class DivergenceGuard:
    """Checks each training call's updates; stops the run or recovers it when they diverged."""

    def __init__(self, state: TrainingState):
        self.state = state
        self.recent_losses: collections.deque = collections.deque(maxlen=LOSS_HISTORY)

    def remember(self, losses: Iterable[float]) -> None:
        """Adds healthy per-call mean losses (oldest first) to the history the bound uses."""
        self.recent_losses.extend(losses)

    def loss_bound(self) -> tuple[float | None, str]:
        """(the loss above which a call diverged, why), or (None, "") when nothing bounds it."""
        config = self.state.config
        bounds = []
        if config.loss_upper_bound > 0:
            bounds.append((config.loss_upper_bound,
                           f"--loss_upper_bound={config.loss_upper_bound:g}"))
        history = self.recent_losses
        if config.loss_upper_bound_factor > 0 and len(history) >= MIN_LOSS_HISTORY:
            median = statistics.median(history)
            factor = config.loss_upper_bound_factor
            bounds.append((factor * max(median, LOSS_MEDIAN_FLOOR),
                           f"--loss_upper_bound_factor={factor:g} x the median {median:.4g} of "
                           f"the last {len(history)} losses"))
        return min(bounds) if bounds else (None, "")

    def check(self, first: int, step: int, loss: float, totals: dict, norms, *,
              check_weights: bool) -> str | None:
        """What is wrong with the updates of steps first..step, or None if they are healthy.

        Args:
          loss: the call's mean loss per counted token.
          totals: the call's sums (`TrainStep.run`): non_finite, steps, count, ...
          norms: float32 [num_groups], the last update's gradient norm per group.
          check_weights: also look for NaN or infinity in the weights (before a save).
        """
        state = self.state
        steps = f"step {step}" if first == step else f"steps {first}..{step}"
        if totals["non_finite"] and not state.plan.loss_scaling:
            last = ", ".join(f"{group} {float(norm):.3g}"
                             for group, norm in zip(state.train_step.group_names, norms.numpy()))
            return (f"the loss or a gradient norm was NaN or infinite in "
                    f"{int(totals['non_finite'])} of the {int(totals['steps'])} updates of "
                    f"{steps} (gradient norms of the last: {last})")
        bound, why = self.loss_bound()
        if bound is not None and totals["count"] > 0 and loss > bound:
            return f"the mean training loss of {steps} is {loss:.4g}, above {why}"
        if check_weights:
            names = state.checkpointer.non_finite_variables()
            if names:
                return (f"{', '.join(names[:3])}{' and others' if len(names) > 3 else ''} hold "
                        f"NaN or infinity after {steps}")
        return None

    def recover_or_stop(self, problem: str, step: int) -> int:
        """Restores the latest checkpoint and lowers every learning rate by
        --recovery_lr_factor; returns the restored step.

        Raises:
          checkpointing.DivergenceError: no recovery trial is left (or no checkpoint exists).
        """
        config, variables = self.state.config, self.state.variables
        checkpointer = self.state.checkpointer
        latest = checkpointer.latest_checkpoint
        trials = int(variables.recoveries.numpy())
        kept = (f"the latest checkpoint, {latest}, is healthy and kept" if latest
                else "no checkpoint was written")
        if trials >= config.recovery_max_trials or latest is None:
            advice = ("lower the learning rates (or set --clip_norm), or pass "
                      "--recovery_max_trials=N to restore the latest checkpoint and retry with "
                      "lower learning rates")
            if config.recovery_max_trials:
                advice = (f"all {config.recovery_max_trials} recovery trial(s) are used up "
                          f"(learning rates x{float(variables.lr_scale.numpy()):g}): lower the "
                          "learning rates (or set --clip_norm)")
            raise checkpointing.DivergenceError(
                f"training diverged at step {step}: {problem}. Nothing was saved after the "
                f"divergence; {kept}. To go on, {advice}")
        scale = float(variables.lr_scale.numpy()) * config.recovery_lr_factor
        restored = checkpointer.restore_latest()
        variables.lr_scale.assign(scale)
        variables.recoveries.assign(trials + 1)
        logging.warning("training diverged at step %d: %s. Recovery %d of %d: restored %s "
                        "(step %d) and retrying with learning rates x%g", step, problem,
                        trials + 1, config.recovery_max_trials, latest, restored, scale)
        return restored
