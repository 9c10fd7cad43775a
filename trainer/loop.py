"""`train_and_evaluate(config, run_dir)`: the whole training job, read top-down.

`trainer.main` only parses flags and calls it; tests and benchmarks call it directly. The parts,
each a public unit with its own docstring:

    trainer/training_state.py  everything built before the first update (data, model, optimizer,
                               checkpoints, the compiled step); trainer/schedule_plan.py decides
                               the number of updates, the dev cadence and the patience
    trainer/controller.py      the outer loop: train calls, logs, dev evaluation, checkpoints,
                               early stopping, divergence recovery, the final evaluation
    trainer/step.py            the tf.function of several updates (the loss scaled so that one
                               replica and N replicas compute the same gradient)
    trainer/step_runner.py     calls it from a helper thread, so SIGTERM and progress are prompt
    trainer/evaluator.py       dev/test entity F1 at a step; trainer/early_stopping.py the best
                               checkpoint and patience; trainer/divergence.py the divergence guard
    trainer/run_logs.py        train_log.jsonl and TensorBoard events, each step in them once

The run directory's layout is trainer/run_dir.py. A restart resumes from the newest finite
checkpoint and first removes what an earlier attempt logged after it.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from absl import logging

from trainer import checkpointing, precision
from trainer.config import TrainConfig
from trainer.controller import Controller
from trainer.evaluator import StopRequested
from trainer.training_state import build_training_state


def train_and_evaluate(config: TrainConfig, run_dir: str | os.PathLike | None = None
                       ) -> dict[str, Any]:
    """Trains as `config` says, evaluates dev (and test at the end), writes the run directory.

    Args:
      config: the validated run configuration.
      run_dir: overrides `config.run_dir`.

    Returns:
      {"step", "total_steps", "dev": metrics, "test": metrics} (metrics on the chief only), or
      {"step", "stopped": True} when SIGTERM stopped the run early (training is saved in a
      checkpoint; a restart resumes, or repeats the final evaluation).

    Raises:
      checkpointing.DivergenceError: training diverged (and --recovery_max_trials is 0 or used
        up); every checkpoint on disk is finite.
    """
    if run_dir is not None:
        config = config.replace(run_dir=os.path.abspath(run_dir))
    # config.json records the precision used, so export and resume on this machine agree.
    chosen, reason = precision.resolve(config.mixed_precision)
    if config.mixed_precision == "auto":
        logging.info("mixed precision: auto -> %s (%s)", chosen, reason)
        config = config.replace(mixed_precision=chosen)
    # The policy must be set before the model is built (its layers read it when created).
    with precision.global_policy(config.mixed_precision), \
            checkpointing.StopRequest() as stop:
        state = build_training_state(config, pathlib.Path(config.run_dir))
        controller = Controller(state, stop)
        try:
            controller.open_logs()
            if controller.train():
                try:
                    return controller.finish()
                except StopRequested:
                    logging.warning("signal %s during the final evaluation: stopping (the "
                                    "last checkpoint is saved; a restart evaluates again)",
                                    stop.signal_number)
            return {"step": int(state.step.numpy()), "stopped": True}
        finally:
            controller.close()
