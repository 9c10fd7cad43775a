"""Run directories, checkpoints (model, optimizer, step, input position) and SIGTERM handling.

A run directory (its layout: trainer/run_dir.py) belongs to one configuration. `prepare_run_dir`
refuses to reuse a directory whose `config.json` defines a different run (fields outside
`config.RUN_CONTROL_FIELDS` differ) unless `--overwrite` (start afresh) or `--resume_mismatched`
(resume anyway) is given.

The input position is the number of micro-batches each replica has consumed. The training input
is a seeded, repeated, deterministic `tf.data` pipeline, so on resume the loop rebuilds it and
skips that many batches: the restarted run sees exactly the batches the uninterrupted run would.

Nothing non-finite is written: `Checkpointer.save` and `save_best` check every weight and
optimizer slot first and raise `DivergenceError` instead, so a NaN can never rotate the last
healthy checkpoint out, and `restore_latest` skips (and removes) a checkpoint that holds NaN or
infinity (one written by an older version) in favour of the newest finite one. What a killed
save leaves (`checkpoints/ckpt-N_temp/`, a half-swapped `best/`) is cleaned or repaired when the
next run opens the directory.
"""

from __future__ import annotations

import logging as std_logging
import math
import os
import pathlib
import re
import shutil
import signal
import tempfile
import threading
from typing import Callable

import tensorflow as tf
from absl import logging as absl_logging

from trainer import config as config_lib
from trainer import legacy_checkpoint
from trainer.run_dir import (BEST_DIR, BEST_FILE, CHECKPOINT_DIR, RunDirectoryError, read_best,
                             write_best)


class _DropSaverTiming(std_logging.Filter):
    """Drops TensorFlow's "Sharding callback duration: N microseconds" INFO record.

    TensorFlow 2.21's checkpoint saver (checkpoint/functional_saver.py) logs it with absl at INFO
    on every save, into the same stream as the run's own INFO lines (the plan, evaluations,
    saves): timing noise, a line per checkpoint, that says nothing a user can act on.
    """

    def filter(self, record: std_logging.LogRecord) -> bool:
        return not (str(record.msg).startswith("Sharding callback duration")
                    and record.filename == "functional_saver.py")


SAVER_TIMING_FILTER = _DropSaverTiming()
# functional_saver logs through absl, whose records all pass absl's own logger (whatever handler
# prints them): a filter there drops the line in every run, on the console and in a redirected log.
absl_logging.get_absl_logger().addFilter(SAVER_TIMING_FILTER)


def prepare_run_dir(run_dir: str | os.PathLike, config: config_lib.TrainConfig, *,
                    is_chief: bool = True) -> bool:
    """Creates or checks the run directory and writes config.json (chief only).

    Returns:
      True if the directory already held this run (training resumes from its checkpoints).

    Raises:
      RunDirectoryError: it holds a run with a different config and neither --overwrite nor
        --resume_mismatched was given.
    """
    run_dir = pathlib.Path(run_dir)
    if config.overwrite and is_chief and run_dir.exists():
        shutil.rmtree(run_dir)
    try:
        differences = config_lib.run_dir_differences(config, run_dir)
    except config_lib.ConfigError as error:
        raise RunDirectoryError(str(error)) from None
    resuming = differences is not None
    if differences and not config.resume_mismatched:
        raise RunDirectoryError(config_lib.different_run_message(run_dir, differences))
    if is_chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_lib.write_config(config, run_dir)
    return resuming


class DivergenceError(FloatingPointError):
    """Training diverged (a NaN/inf loss or gradient, or an exploding loss), or weights to save
    or restore hold NaN or infinity. Nothing non-finite is written; the message says what the
    last healthy state is."""


# What TensorFlow leaves when a process dies inside `Checkpoint.write`: the shards of the
# checkpoint being written (`ckpt-N_temp/part-*`), before they are merged into ckpt-N.*.
_TEMP_CHECKPOINT = re.compile(r"ckpt-\d+_temp")
# save_best writes the new best model here, then swaps it with best/ by two renames.
_BEST_PARTIAL = ".best.partial"
_BEST_OLD = ".best.old"


def _non_finite_names(variables: list[tf.Variable], all_finite) -> list[str]:
    if not variables:
        return []
    flags = all_finite().numpy()
    return [v.name for v, ok in zip(variables, flags) if not ok]


class Checkpointer:
    """Saves and restores model, optimizer, step and input position with a CheckpointManager.

    Every worker of a multi-worker run must call `save` (the variables are read collectively),
    but only the chief writes into the run directory; the others write into a temporary directory
    that is deleted at `close`.

    `extra` variables (e.g. the loop's learning-rate scale after a divergence recovery) are saved
    too; a checkpoint written before they existed restores without them (they keep their values).
    """

    def __init__(self, run_dir: str | os.PathLike, *, model: tf.keras.Model,
                 optimizer: tf.keras.optimizers.Optimizer, step: tf.Variable,
                 input_position: tf.Variable, keep: int, is_chief: bool = True,
                 extra: dict[str, tf.Variable] | None = None,
                 log: Callable[[str], None] = print):
        self._objects = dict(model=model, optimizer=optimizer, step=step,
                             input_position=input_position)
        self._extra = dict(extra or {})
        self.checkpoint = tf.train.Checkpoint(**self._objects, **self._extra)
        self.step = step
        self.is_chief = is_chief
        self._log = log
        self._keep = keep
        if is_chief:
            self.directory = os.path.join(run_dir, CHECKPOINT_DIR)
            self._scratch = None
        else:
            self._scratch = tempfile.mkdtemp(prefix="tagger-worker-checkpoints-")
            self.directory = self._scratch
        self._best = tf.train.Checkpoint(model=model)
        self._best_dir = os.path.join(run_dir, BEST_DIR) if is_chief else self._scratch + "/best"
        if is_chief:
            self._clean_litter()
        self.manager = self._new_manager()
        self._last_saved_step = None
        # Every float variable a checkpoint holds (weights, Adam slots, extras), and one traced
        # function that says which of them are all finite: bool [num_variables].
        self._checked = [v for v in (list(model.weights) + list(optimizer.variables)
                                     + list(self._extra.values())) if v.dtype.is_floating]
        self._model_checked = [v for v in model.weights if v.dtype.is_floating]
        self._all_finite = tf.function(lambda: tf.stack(
            [tf.reduce_all(tf.math.is_finite(v)) for v in self._checked]))
        self._model_finite = tf.function(lambda: tf.stack(
            [tf.reduce_all(tf.math.is_finite(v)) for v in self._model_checked]))

    def _new_manager(self) -> tf.train.CheckpointManager:
        return tf.train.CheckpointManager(self.checkpoint, self.directory,
                                          max_to_keep=self._keep, step_counter=self.step)

    def _clean_litter(self) -> None:
        """Removes what a killed save left: `ckpt-N_temp/` shard directories (never read: a
        checkpoint exists only once merged and recorded) and a half-done swap of best/."""
        if os.path.isdir(self.directory):
            for entry in os.scandir(self.directory):
                if entry.is_dir(follow_symlinks=False) and _TEMP_CHECKPOINT.fullmatch(entry.name):
                    shutil.rmtree(entry.path, ignore_errors=True)
                    self._log(f"removed {entry.path} (a checkpoint write that was killed)")
        parent = os.path.dirname(self._best_dir)
        partial, old = os.path.join(parent, _BEST_PARTIAL), os.path.join(parent, _BEST_OLD)
        shutil.rmtree(partial, ignore_errors=True)
        if os.path.isdir(old):
            complete = os.path.isfile(os.path.join(self._best_dir, BEST_FILE))
            if not complete and os.path.isfile(os.path.join(old, BEST_FILE)):
                # Killed between the two renames of save_best: best/ is missing or partial.
                shutil.rmtree(self._best_dir, ignore_errors=True)
                os.rename(old, self._best_dir)
            else:
                shutil.rmtree(old, ignore_errors=True)

    # -- finiteness ----------------------------------------------------------------------------

    def non_finite_variables(self) -> list[str]:
        """Names of the checkpointed float variables that hold a NaN or an infinity."""
        return _non_finite_names(self._checked, self._all_finite)

    @property
    def latest_checkpoint(self) -> str | None:
        return self.manager.latest_checkpoint

    # -- latest --------------------------------------------------------------------------------

    def _restore(self, path: str) -> None:
        if legacy_checkpoint.is_legacy(path):  # written before #22: by a name map
            legacy_checkpoint.restore(path, {**self._objects, **self._extra},
                                      optional=tuple(self._extra))
            self._log(f"{path} was written before #22 (transformers' TF encoder): restored "
                      f"by name (trainer/legacy_checkpoint.py)")
            return
        names = {name.split("/", 1)[0] for name, _ in tf.train.list_variables(path)}
        missing = [key for key in self._extra if key not in names]
        checkpoint = self.checkpoint
        if missing:  # written before these variables existed: they keep their current values
            checkpoint = tf.train.Checkpoint(**self._objects, **{
                k: v for k, v in self._extra.items() if k not in missing})
        checkpoint.restore(path).assert_existing_objects_matched()

    def restore_latest(self) -> int | None:
        """Restores the newest checkpoint whose values are all finite; returns its step.

        A newer checkpoint holding NaN or infinity (only an older version of this code wrote
        such) is skipped and removed, with a message, so it cannot be resumed from or rotate a
        healthy one out.

        Returns:
          The restored step, or None when there is no checkpoint.

        Raises:
          DivergenceError: every checkpoint holds NaN or infinity.
        """
        candidates = [path for path in reversed(self.manager.checkpoints)
                      if tf.io.gfile.exists(path + ".index")]
        latest = self.manager.latest_checkpoint
        if latest is not None and latest not in candidates and tf.io.gfile.exists(
                latest + ".index"):
            candidates.insert(0, latest)
        bad = []
        for path in candidates:
            self._restore(path)
            names = self.non_finite_variables()
            if not names:
                if bad:
                    self._forget(bad)
                self._last_saved_step = int(self.step.numpy())
                return self._last_saved_step
            self._log(f"{path} holds NaN or infinity ({', '.join(names[:3])}"
                      f"{', ...' if len(names) > 3 else ''}): not resuming from it")
            bad.append(path)
        if bad:
            raise DivergenceError(
                f"every checkpoint in {self.directory} holds NaN or infinity "
                f"({', '.join(os.path.basename(p) for p in bad)}): there is no healthy state to "
                "resume from. Start afresh (--overwrite or another --run_dir), with lower "
                "learning rates or --clip_norm")
        return None

    def _forget(self, paths: list[str]) -> None:
        """Deletes non-finite checkpoints and drops them from the manager's state file."""
        from tensorflow.python.checkpoint import checkpoint_management

        for path in paths:
            for name in tf.io.gfile.glob(path + ".*"):
                tf.io.gfile.remove(name)
            self._log(f"removed {path} (NaN or infinity)")
        state = tf.train.get_checkpoint_state(self.directory)
        times = dict(zip(state.all_model_checkpoint_paths, state.all_model_checkpoint_timestamps))
        kept = [p for p in state.all_model_checkpoint_paths
                if p not in paths and os.path.join(self.directory, p) not in paths]
        # As the manager records its state (relative paths, so the run directory can be moved;
        # the timestamps, without which it would never rotate the kept checkpoints out).
        checkpoint_management.update_checkpoint_state_internal(
            self.directory, model_checkpoint_path=kept[-1],
            all_model_checkpoint_paths=kept,
            all_model_checkpoint_timestamps=[times[p] for p in kept] if times else None,
            last_preserved_timestamp=state.last_preserved_timestamp, save_relative_paths=True)
        self.manager = self._new_manager()

    def save(self) -> str | None:
        """Saves at the current step (no-op if this step is already saved).

        Raises:
          DivergenceError: a weight or optimizer slot is NaN or infinite (nothing is written, so
            the checkpoints on disk stay as they were).
        """
        step = int(self.step.numpy())
        if step == self._last_saved_step:
            return None
        names = self.non_finite_variables()
        if names:
            raise DivergenceError(
                f"refusing to save step {step}: {', '.join(names[:3])}"
                f"{' and others' if len(names) > 3 else ''} hold NaN or infinity; the latest "
                f"checkpoint on disk ({self.manager.latest_checkpoint or 'none'}) is kept")
        self._last_saved_step = step
        return self.manager.save(checkpoint_number=step)

    # -- best ----------------------------------------------------------------------------------

    def save_best(self, step: int, metrics: dict) -> None:
        """Keeps the model of the best dev evaluation in run_dir/best (one checkpoint).

        Written into a hidden directory and swapped with best/ by two renames, so a kill at any
        moment leaves the previous best or the new one (repaired at the next start).

        Raises:
          DivergenceError: a metric or a model weight is NaN or infinite (best/ is unchanged).
        """
        payload = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        bad = [k for k, v in payload.items() if not math.isfinite(v)]
        bad += _non_finite_names(self._model_checked, self._model_finite)
        if bad:
            raise DivergenceError(f"refusing to keep step {step} as the best model: "
                                  f"{', '.join(bad[:5])} not finite; {self._best_dir} is unchanged")
        parent = os.path.dirname(self._best_dir)
        partial, old = os.path.join(parent, _BEST_PARTIAL), os.path.join(parent, _BEST_OLD)
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        self._best.write(os.path.join(partial, "model"))
        if self.is_chief:
            write_best(partial, payload)
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(self._best_dir):
            os.rename(self._best_dir, old)
        os.rename(partial, self._best_dir)
        shutil.rmtree(old, ignore_errors=True)

    def restore_best(self) -> int | None:
        """Loads the best dev checkpoint's weights into the model; returns its step (or None)."""
        best = read_best(self._best_dir)
        if best is None:
            return None
        step = int(best["step"])
        path = os.path.join(self._best_dir, "model")
        if legacy_checkpoint.is_legacy(path):  # kept by the run before #22
            legacy_checkpoint.restore(path, {"model": self._objects["model"]})
        else:
            self._best.read(path).assert_existing_objects_matched()
        return step

    def close(self) -> None:
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)


class StopRequest:
    """Turns SIGTERM (and optionally SIGINT) into a flag the loop checks between tf.function calls.

    Use as a context manager; the previous handlers are restored on exit. Outside the main thread
    (where Python cannot install handlers) it is inert.
    """

    def __init__(self, signals=(signal.SIGTERM,)):
        self.requested = False
        self.signal_number = None
        self._signals = signals
        self._previous = {}

    def _handler(self, signum, frame):
        del frame
        self.requested = True
        self.signal_number = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
