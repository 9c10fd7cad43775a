"""The best dev evaluation so far (kept in RUN_DIR/best/) and early stopping's patience."""

from __future__ import annotations

import pathlib

from trainer import checkpointing
from trainer import run_dir as run_dir_lib


class EarlyStopping:
    """Keeps the best dev checkpoint and says when dev F1 has stopped improving.

    The best F1 and its step are read from RUN_DIR/best/best.json the first time they are
    needed, so a resumed run competes with its earlier best and keeps counting its patience
    where it was. Only the chief evaluates (config validation refuses early stopping with
    multi_worker).
    """

    def __init__(self, run_dir: pathlib.Path, checkpointer: checkpointing.Checkpointer, *,
                 eval_every: int, patience: int):
        self.run_dir = run_dir
        self.checkpointer = checkpointer
        self.eval_every = eval_every
        self.patience = patience
        self._best: tuple[float, int] | None = None  # (f1, step); f1 -1.0: no evaluation yet

    @property
    def best_f1(self) -> float:
        return self._load()[0]

    @property
    def best_step(self) -> int:
        return self._load()[1]

    def _load(self) -> tuple[float, int]:
        if self._best is None:
            best = run_dir_lib.read_best(self.run_dir / run_dir_lib.BEST_DIR)
            self._best = (-1.0, 0) if best is None else (best["f1"], int(best.get("step", 0)))
        return self._best

    def keep_if_better(self, step: int, metrics: dict) -> None:
        """Saves the model as the best checkpoint when `metrics["f1"]` beats the best so far."""
        if metrics["f1"] > self.best_f1:
            self.checkpointer.save_best(step, metrics)
            self._best = (metrics["f1"], step)

    def exhausted(self, step: int) -> bool:
        """True when the last `patience` evaluations before `step` did not improve dev F1
        (counted from the best checkpoint's step).

        Patience starts with the first evaluation that finds an entity (dev F1 > 0): before
        it the tagger still predicts only `O`, which on a small corpus lasts several
        evaluations (a tiny corpus' bilstm_crf.flags run stopped at step 30 of 40 with F1 0.0
        before this rule; docs/learning_curve.md), and no F1 is there to improve on.
        """
        if not self.patience or not self.eval_every:
            return False
        if self.best_f1 <= 0:  # no evaluation yet, or every one all-O
            return False
        return (step - self.best_step) // self.eval_every >= self.patience
