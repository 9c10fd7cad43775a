"""Calls the compiled training step from a helper thread, so SIGTERM and progress are prompt.

Python runs signal handlers only in the main thread and only between bytecodes, so a SIGTERM
during a long tf.function call would otherwise wait for the whole call (`--steps_per_loop`
updates). Here the call runs in a helper thread while the main thread waits in short intervals:
the handler runs at once, and the stop flag it leads to ends the call after the update in
progress. The same polls read the step variable, which advances inside the call, so progress
shows from the first update, and a first call that is still tracing says so.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import tensorflow as tf
from absl import logging

from trainer import checkpointing, progress
from trainer.training_state import TrainingState

# The step variable is read this often during a training call, and no more than this many
# seconds pass without a line (a plain progress line, or "still tracing").
PROGRESS_POLL_S = 1.0
SILENCE_S = 30.0


class StepRunner:
    """Runs training calls of `state.train_step` and shows the chief's progress."""

    def __init__(self, state: TrainingState):
        self.state = state
        self.progress: progress.ProgressBar | None = None
        self.last_loss: float | None = None
        self._traced = False  # the training tf.function has run once (tracing announced)

    def start_progress(self, step: int) -> None:
        """The chief's progress from `step`: a bar on a terminal (--progress_bar), else a plain
        log line at the first update and then every 30 s."""
        if not self.state.chief:
            return
        self.close()
        self.progress = progress.ProgressBar(
            self.state.schedule.stop_at, initial_step=step,
            is_tty=None if self.state.config.progress_bar else False, log_every_s=SILENCE_S)

    def show(self, step: int, loss: float, tokens_per_s: float) -> None:
        """Progress after a call: `loss` is its mean, `tokens_per_s` its throughput."""
        if self.progress is not None:
            self.progress.update(step, loss=loss, tokens_per_s=tokens_per_s)

    def run(self, iterator, num_steps: int, stop: checkpointing.StopRequest):
        """Calls the training tf.function for `num_steps` updates (fewer on a stop).

        Returns:
          (totals, norms): the call's sums as floats (`TrainStep.run`: loss_sum, count, tokens,
          windows, steps, non_finite) and float32 [num_groups], the last update's gradient norms.
        """
        outcome: dict[str, Any] = {}
        train_step = self.state.train_step

        def call():
            try:
                outcome["value"] = train_step.run(iterator, tf.constant(num_steps, tf.int32))
            except BaseException as error:  # re-raised in the main thread
                outcome["error"] = error

        stop_flag = self.state.stop_flag
        flagged = False
        if stop.requested:
            stop_flag.assign(True)
            flagged = True
        tracing = not self._traced
        started = time.monotonic()
        if tracing:
            logging.info("tracing the train step: TensorFlow builds and optimises the graph on "
                         "the first call (%d update(s) in this call), which can take a minute",
                         num_steps)
        thread = threading.Thread(target=call, name="train-steps", daemon=True)
        thread.start()
        try:
            last_poll = last_note = started
            seen = int(self.state.step.numpy())
            while thread.is_alive():
                thread.join(0.05)
                if stop.requested and not flagged:
                    stop_flag.assign(True)
                    flagged = True
                now = time.monotonic()
                if now - last_poll < PROGRESS_POLL_S:
                    continue
                last_poll = now
                current = int(self.state.step.numpy())
                if tracing and current > seen:
                    tracing = False
                    logging.info("train step traced: the first update finished %.1f s after "
                                 "the call started", now - started)
                if self.progress is not None and current > seen:
                    self.progress.update(current, loss=self.last_loss)
                elif self.progress is not None:
                    self.progress.refresh()  # a long step: the line again after log_every_s
                seen = max(seen, current)
                if tracing and now - last_note >= SILENCE_S:
                    last_note = now
                    logging.info("still tracing the train step (%.0f s)", now - started)
        except BaseException:  # e.g. KeyboardInterrupt: end the call after this update
            stop_flag.assign(True)
            thread.join()
            raise
        if "error" in outcome:
            raise outcome["error"]
        if not self._traced:
            self._traced = True
            if tracing:  # the whole call ended before a poll saw its first update
                logging.info("train step traced: the first call (%d update(s)) took %.1f s",
                             num_steps, time.monotonic() - started)
        totals, norms = outcome["value"]
        return {name: float(value) for name, value in totals.items()}, norms

    def close(self) -> None:
        if self.progress is not None and hasattr(self.progress, "close"):
            self.progress.close()
        self.progress = None
