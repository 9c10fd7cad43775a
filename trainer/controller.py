"""The outer loop of a run: when to train, log, evaluate, checkpoint, recover and stop.

Each training call (`StepRunner.run`) runs up to the next boundary: the end of the schedule,
`--steps_per_loop` updates, or the next log, checkpoint or dev-evaluation step. Between calls,
in plain Python and in this order: the divergence check (nothing of a diverged call is logged,
evaluated or saved), progress and train_log.jsonl, the dev evaluation (best checkpoint, early
stopping), the checkpoint. SIGTERM ends a call after the update in progress and an evaluation
between two batches; the loop then saves and returns. `finish` scores dev and test with the
best checkpoint, writes results.json and exports.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from absl import logging

from trainer import checkpointing, export
from trainer.divergence import DivergenceGuard
from trainer.early_stopping import EarlyStopping
from trainer.evaluator import Evaluator, StopRequested
from trainer.run_dir import RESULTS
from trainer.run_logs import RunLogs
from trainer.step_runner import StepRunner
from trainer.training_state import TrainingState


def next_boundary(step: int, every: int) -> int:
    """The first multiple of `every` after `step`."""
    return (step // every + 1) * every


class Controller:
    """Owns a run's outer loop and what it decides; the state it drives is `TrainingState`.

    Attributes:
      logs: the chief's RunLogs (None on other workers).
      early_stopping: best dev checkpoint and patience.
      evaluator: dev/test evaluation.
      guard: the divergence check and recovery.
      runner: the training calls and their progress.
      early_stopped_at: the step early stopping ended training at, or None.
    """

    def __init__(self, state: TrainingState, stop: checkpointing.StopRequest):
        self.state = state
        self.stop = stop
        schedule = state.schedule
        self.logs = RunLogs(state.run_dir) if state.chief else None
        self.early_stopping = EarlyStopping(state.run_dir, state.checkpointer,
                                            eval_every=schedule.eval_every,
                                            patience=schedule.patience)
        self.evaluator = Evaluator(state, self.logs, stop)
        self.guard = DivergenceGuard(state)
        self.runner = StepRunner(state)
        self.early_stopped_at: int | None = None

    # -- logs ----------------------------------------------------------------------------------

    def open_logs(self) -> None:
        """Opens the chief's logs so that each step is in them once (see trainer/run_logs.py),
        and seeds the divergence guard's loss history from train_log.jsonl on a resume."""
        if self.logs is None:
            return
        state, restored = self.state, self.state.restored_step
        if restored is None:
            self.logs.open_fresh(state.config.to_dict(), state.variables_report)
            return
        finished = (restored >= state.schedule.stop_at or self.early_stopping.exhausted(restored)
                    or int(state.variables.pending_eval.numpy()) == restored)
        self.logs.open_resumed(restored, finished=finished)
        if state.config.strategy != "multi_worker":  # other workers cannot read the log
            self.guard.remember(r["loss"] for r in self.logs.records  # keeps the last LOSS_HISTORY
                                if isinstance(r.get("loss"), float))

    def _log_train(self, step: int, loss: float, norms, totals: dict, elapsed: float) -> None:
        if self.logs is None:
            return
        plan = self.state.plan
        names = self.state.train_step.group_names
        grad_norms = {g: float(n) for g, n in zip(names, norms.numpy())}
        self.logs.log_train({
            "step": step, "loss": loss, "learning_rate": plan.learning_rates(),
            "grad_norm": grad_norms, "tokens_per_s": totals["tokens"] / elapsed,
            "windows_per_s": totals["windows"] / elapsed, "loss_scale": plan.loss_scale()})

    # -- the loop ------------------------------------------------------------------------------

    def _evaluate_dev(self, step: int) -> None:
        """Evaluates dev at `step` (chief) and keeps the best checkpoint.

        Raises:
          StopRequested: SIGTERM during the evaluation.
        """
        if self.state.chief:
            self.early_stopping.keep_if_better(step, self.evaluator.evaluate("dev", step))

    def _call_size(self, step: int) -> int:
        """Updates in the next training call: up to the nearest boundary."""
        config, schedule = self.state.config, self.state.schedule
        boundaries = [schedule.stop_at, step + config.steps_per_loop,
                      next_boundary(step, config.log_every),
                      next_boundary(step, config.checkpoint_every)]
        if schedule.eval_every:
            boundaries.append(next_boundary(step, schedule.eval_every))
        return min(boundaries) - step

    def _start_training(self) -> bool | None:
        """What precedes the first call: a dev evaluation a SIGTERM cut short, the checks of a
        resumed run. Returns True or False to end train() with, or None to train."""
        state = self.state
        step = int(state.step.numpy())
        if self.stop.requested:  # during setup: nothing new to save
            return False
        if int(state.variables.pending_eval.numpy()) == step:
            try:  # SIGTERM cut this step's dev evaluation short: do it now
                self._evaluate_dev(step)
            except StopRequested:
                return False
            state.variables.pending_eval.assign(-1)
        if step >= state.schedule.stop_at:
            return True
        if self.early_stopping.exhausted(step):  # resumed after it had stopped early
            self.early_stopped_at = step
            return True
        if state.config.recovery_max_trials and state.checkpointer.latest_checkpoint is None:
            state.checkpointer.save()  # a healthy state for a recovery to return to
        return None

    def train(self) -> bool:
        """Trains up to the schedule's stop_at; returns False if a stop was requested (the
        checkpoint is saved), True when training is over (schedule done or early stop)."""
        decided = self._start_training()
        if decided is not None:
            return decided
        state, config, stop = self.state, self.state.config, self.stop
        step = int(state.step.numpy())
        stop_at, eval_every = state.schedule.stop_at, state.schedule.eval_every
        iterator = iter(state.train_dataset())
        self.runner.start_progress(step)
        while step < stop_at:
            num_steps = self._call_size(step)
            started = time.time()
            totals, norms = self.runner.run(iterator, num_steps, stop)
            elapsed = max(time.time() - started, 1e-9)
            first, step = step + 1, int(state.step.numpy())  # fewer than num_steps on a stop
            evaluating = bool(eval_every and step % eval_every == 0 and step < stop_at
                              and totals["steps"])
            saving = step % config.checkpoint_every == 0 or step == stop_at or stop.requested
            # NaN when no update counted (fp16: the optimizer skipped every one of them).
            loss = totals["loss_sum"] / totals["count"] if totals["count"] else math.nan
            problem = None
            if totals["steps"]:
                problem = self.guard.check(first, step, loss, totals, norms,
                                           check_weights=evaluating or saving)
            if problem is not None:  # nothing of these steps is logged, evaluated or saved
                restored = self.guard.recover_or_stop(problem, step)
                if self.logs is not None:
                    self.logs.reopen(restored, restored)
                step = int(state.step.numpy())
                iterator = iter(state.train_dataset())
                self.runner.start_progress(step)
                continue
            if totals["count"] > 0:
                self.guard.remember([loss])
                self.runner.last_loss = loss
            self.runner.show(step, loss, totals["tokens"] / elapsed)
            if totals["steps"] and (step % config.log_every == 0 or step == stop_at):
                self._log_train(step, loss, norms, totals, elapsed)
            early_stop = False
            if evaluating:
                try:
                    self._evaluate_dev(step)
                except StopRequested:
                    logging.warning("signal %s during the dev evaluation of step %d: saving "
                                    "a checkpoint and stopping (a restart evaluates first)",
                                    stop.signal_number, step)
                    state.variables.pending_eval.assign(step)
                    state.checkpointer.save()
                    return False
                early_stop = self.early_stopping.exhausted(step)
            if step % config.checkpoint_every == 0 or early_stop:
                state.checkpointer.save()
            if early_stop:
                logging.info("early stopping at step %d: dev F1 has not improved on %.4f (step "
                             "%d) for %d evaluations", step, self.early_stopping.best_f1,
                             self.early_stopping.best_step, self.early_stopping.patience)
                self.early_stopped_at = step
                return True
            if stop.requested:
                logging.warning("signal %s: saving a checkpoint at step %d and stopping",
                                stop.signal_number, step)
                state.checkpointer.save()
                return False
        state.checkpointer.save()
        return True

    # -- the end -------------------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        """Final dev and test evaluation, results.json, export (chief).

        Raises:
          StopRequested: SIGTERM arrived before the export (training is saved; a restart
            evaluates again).
        """
        state = self.state
        step = int(state.step.numpy())
        results: dict[str, Any] = {"step": step, "total_steps": state.schedule.total_steps,
                                   "schedule": dataclasses.asdict(state.schedule)}
        if self.early_stopped_at is not None:
            results["early_stopped_at"] = self.early_stopped_at
        if not state.chief:
            return results
        from data_pipeline.manifest import strict_json_dumps

        dev = self.evaluator.evaluate("dev", step, write_predictions=True)
        self.early_stopping.keep_if_better(step, dev)
        # Test is scored once, with the model chosen on dev: the best checkpoint, which is
        # also what the export below serves. The final weights are already saved in
        # checkpoints/, so a later resume is unaffected.
        best_step = state.checkpointer.restore_best()
        if best_step is not None and best_step != step:
            logging.info("evaluating test with the best dev checkpoint (step %d)", best_step)
        test = self.evaluator.evaluate("test", step, write_predictions=True)
        results.update(dev=dev, test=test, test_checkpoint_step=best_step or step)
        if state.config.head == "crf" and hasattr(state.model, "transitions"):
            self.logs.writer.transitions_image(step, state.model.transitions.numpy(),
                                               state.label_map)
        (state.run_dir / RESULTS).write_text(
            strict_json_dumps(results, non_finite="null", indent=2, sort_keys=True))
        if self.stop.requested:
            raise StopRequested()
        if state.config.export:
            export.export_after_training(state.run_dir, log=logging.info, warn=logging.warning)
        return results

    def close(self) -> None:
        if self.logs is not None:
            self.logs.close()
        self.runner.close()
        self.state.checkpointer.close()
