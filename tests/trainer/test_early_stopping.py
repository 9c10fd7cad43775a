"""Early stopping's bookkeeping on its own (trainer/early_stopping.py), with a fake checkpointer."""

import json

from trainer.early_stopping import EarlyStopping


class FakeCheckpointer:
    def __init__(self):
        self.saved = []

    def save_best(self, step, metrics):
        self.saved.append((step, metrics["f1"]))


def evaluate(stopping, curve):
    """Feeds {step: dev F1} in order; returns the step it stops at, or None."""
    for step, f1 in curve:
        stopping.keep_if_better(step, {"f1": f1})
        if stopping.exhausted(step):
            return step
    return None


def test_patience_counts_evaluations_since_the_best(tmp_path):
    checkpointer = FakeCheckpointer()
    stopping = EarlyStopping(tmp_path, checkpointer, eval_every=10, patience=2)
    assert evaluate(stopping, [(10, 0.3), (20, 0.5), (30, 0.4), (40, 0.5), (50, 0.6)]) == 40
    assert checkpointer.saved == [(10, 0.3), (20, 0.5)]  # an equal F1 is no improvement
    assert (stopping.best_f1, stopping.best_step) == (0.5, 20)


def test_all_o_evaluations_do_not_use_up_the_patience(tmp_path):
    """A small corpus' tagger predicts only O for its first evaluations (F1 0.0): patience
    starts at the first F1 above 0, else the run would stop before it learned anything."""
    stopping = EarlyStopping(tmp_path, FakeCheckpointer(), eval_every=10, patience=2)
    curve = [(10, 0.0), (20, 0.0), (30, 0.0), (40, 0.0), (50, 0.2), (60, 0.4), (70, 0.3),
             (80, 0.35)]
    assert evaluate(stopping, curve) == 80
    assert evaluate(EarlyStopping(tmp_path, FakeCheckpointer(), eval_every=10, patience=2),
                    [(step, 0.0) for step in range(10, 200, 10)]) is None


def test_a_resumed_run_competes_with_its_earlier_best(tmp_path):
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "best.json").write_text(json.dumps({"step": 30, "f1": 0.7}))
    checkpointer = FakeCheckpointer()
    stopping = EarlyStopping(tmp_path, checkpointer, eval_every=10, patience=3)
    assert not stopping.exhausted(50)
    stopping.keep_if_better(60, {"f1": 0.65})
    assert checkpointer.saved == [] and stopping.exhausted(60)


def test_no_patience_never_stops(tmp_path):
    stopping = EarlyStopping(tmp_path, FakeCheckpointer(), eval_every=10, patience=0)
    assert evaluate(stopping, [(step, 0.5) for step in range(10, 500, 10)]) is None
