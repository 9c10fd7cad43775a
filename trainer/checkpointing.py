"""Run directories, checkpoints (model, optimizer, step, input position) and SIGTERM handling.

A run directory belongs to one configuration. `prepare_run_dir` refuses to reuse a directory whose
`config.json` defines a different run (fields outside `config.RUN_CONTROL_FIELDS` differ) unless
`--overwrite` (start afresh) or `--resume_mismatched` (resume anyway) is given.

The input position is the number of micro-batches each replica has consumed. The training input
is a seeded, repeated, deterministic `tf.data` pipeline, so on resume the loop rebuilds it and
skips that many batches: the restarted run sees exactly the batches the uninterrupted run would.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import tempfile
import threading

import tensorflow as tf

from trainer import config as config_lib

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"


class RunDirectoryError(RuntimeError):
    """The run directory holds a different run; pass --overwrite or --resume_mismatched."""


def config_differences(old: dict, new: dict) -> list[str]:
    """'--name: old -> new' for every run-defining field that differs."""
    ignored = config_lib.RUN_CONTROL_FIELDS
    names = sorted((set(old) | set(new)) - ignored)
    return [f"--{name}: {old.get(name)!r} -> {new.get(name)!r}" for name in names
            if old.get(name) != new.get(name)]


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
    config_path = run_dir / "config.json"
    if config.overwrite and is_chief and run_dir.exists():
        shutil.rmtree(run_dir)
    resuming = config_path.is_file()
    if resuming:
        old = json.loads(config_path.read_text())
        differences = config_differences(old, config.to_dict())
        if differences and not config.resume_mismatched:
            raise RunDirectoryError(
                f"{run_dir} was created with a different config ({'; '.join(differences)}). "
                "Use another --run_dir, --overwrite to start afresh, or --resume_mismatched to "
                "continue it with the new config.")
    if is_chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_lib.write_config(config, run_dir)
    return resuming


class Checkpointer:
    """Saves and restores model, optimizer, step and input position with a CheckpointManager.

    Every worker of a multi-worker run must call `save` (the variables are read collectively),
    but only the chief writes into the run directory; the others write into a temporary directory
    that is deleted at `close`.
    """

    def __init__(self, run_dir: str | os.PathLike, *, model: tf.keras.Model,
                 optimizer: tf.keras.optimizers.Optimizer, step: tf.Variable,
                 input_position: tf.Variable, keep: int, is_chief: bool = True):
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step,
                                              input_position=input_position)
        self.step = step
        self.is_chief = is_chief
        if is_chief:
            directory = os.path.join(run_dir, CHECKPOINT_DIR)
            self._scratch = None
        else:
            self._scratch = tempfile.mkdtemp(prefix="tagger-worker-checkpoints-")
            directory = self._scratch
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=keep,
                                                  step_counter=step)
        self._best = tf.train.Checkpoint(model=model)
        self._best_dir = os.path.join(run_dir, BEST_DIR) if is_chief else self._scratch + "/best"
        self._last_saved_step = None

    def restore_latest(self) -> int | None:
        """Restores the latest checkpoint; returns its step, or None when there is none."""
        latest = self.manager.latest_checkpoint
        if latest is None:
            return None
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        self._last_saved_step = int(self.step.numpy())
        return self._last_saved_step

    def save(self) -> str | None:
        """Saves at the current step (no-op if this step is already saved)."""
        step = int(self.step.numpy())
        if step == self._last_saved_step:
            return None
        self._last_saved_step = step
        return self.manager.save(checkpoint_number=step)

    def save_best(self, step: int, metrics: dict) -> None:
        """Keeps the model of the best dev evaluation in run_dir/best (one checkpoint)."""
        shutil.rmtree(self._best_dir, ignore_errors=True)
        os.makedirs(self._best_dir, exist_ok=True)
        self._best.write(os.path.join(self._best_dir, "model"))
        if self.is_chief:
            payload = {"step": step, **{k: float(v) for k, v in metrics.items()}}
            with open(os.path.join(self._best_dir, "best.json"), "w") as stream:
                json.dump(payload, stream, indent=2, sort_keys=True)

    def restore_best(self) -> int | None:
        """Loads the best dev checkpoint's weights into the model; returns its step (or None)."""
        best_json = os.path.join(self._best_dir, "best.json")
        if not os.path.isfile(best_json):
            return None
        with open(best_json) as stream:
            step = int(json.load(stream)["step"])
        self._best.read(os.path.join(self._best_dir, "model")).assert_existing_objects_matched()
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
