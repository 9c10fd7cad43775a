"""Schedules that fit the corpus: dev evaluation every N epochs whatever the corpus size, and
early stopping on dev F1 with a patience (kept across a resume)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tests import trainer_testing as tt
from models.tagger import Tagger
from trainer import config as config_lib, run_events
from trainer.evaluator import Evaluator
from trainer.loop import train_and_evaluate


def dev_f1_steps(run_dir):
    accumulator = run_events.RunEvents(run_dir)  # RUN_DIR/dev holds dev's tags
    return [event.step for event in accumulator.Tensors("dev/f1")]


def train_windows(tiny):
    from data_pipeline.manifest import load_manifest

    return load_manifest(tiny[1])["splits"]["train"]["counts"]["windows"]


def test_eval_every_epochs_follows_the_corpus_size(tiny, tmp_path):
    steps_per_epoch = -(-train_windows(tiny) // 8)  # batch_size 8 in tiny_args
    every = round(0.25 * steps_per_epoch)
    run_dir = tmp_path / "run"
    train_and_evaluate(tt.make_config(tiny, run_dir, eval_every_epochs=0.25,
                                      train_steps=2 * every + 1, steps_per_loop=50))
    # Every quarter epoch during training, and once more at the end.
    assert dev_f1_steps(run_dir) == [every, 2 * every, 2 * every + 1]


def never_improving_dev_f1(monkeypatch):
    """Every evaluation's dev F1 reads 0.5 (the real one, written to the events, is that of a
    barely trained model: 0.0 here); early stopping sees a run that never improves."""
    original = Evaluator.evaluate

    def evaluate(self, split, step, **kwargs):
        metrics = original(self, split, step, **kwargs)
        return dict(metrics, f1=0.5) if split == "dev" else metrics

    monkeypatch.setattr(Evaluator, "evaluate", evaluate)


def test_early_stopping_stops_after_patience_evaluations_without_progress(
        tiny, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    never_improving_dev_f1(monkeypatch)
    config = tt.make_config(tiny, run_dir, head_learning_rate=1e-12, crf_learning_rate=1e-12,
                            eval_every=2, early_stopping_patience=2, train_steps=40)
    results = train_and_evaluate(config)
    assert results["early_stopped_at"] == 6 == results["step"]
    # 3 evaluations; the final one at the stopping step reuses the last (each step once).
    assert dev_f1_steps(run_dir) == [2, 4, 6]
    assert json.loads((run_dir / "best" / "best.json").read_text())["step"] == 2
    assert results["test_checkpoint_step"] == 2
    # A restart of the stopped run does not train on.
    again = train_and_evaluate(config)
    assert again["step"] == 6 and again["early_stopped_at"] == 6
    assert dev_f1_steps(run_dir) == [2, 4, 6]  # its final evaluation replaced the earlier one


def all_o_tagger(monkeypatch):
    """Every Tagger built from now on predicts only O, by construction rather than by luck of the
    seed: its classifier starts with a zero kernel and a bias of 10 on 'O' (tag 0) and 0 on the
    others, and the CRF's transitions start at zero, so 'O' wins at every position (with a head
    learning rate of 1e-12 nothing moves them)."""
    original = Tagger.__init__

    def init(self, config, *args, **kwargs):
        original(self, config, *args, **kwargs)
        assert config.label_map[0] == "O"
        bias = np.zeros(config.num_tags, np.float32)
        bias[0] = 10.0
        self.classifier.kernel_initializer = tf.keras.initializers.Zeros()
        self.classifier.bias_initializer = tf.keras.initializers.Constant(bias)

    monkeypatch.setattr(Tagger, "__init__", init)


def test_all_o_evaluations_do_not_stop_the_run_early(tiny, tmp_path, monkeypatch):
    """A tagger that predicts only O (dev F1 0.0 at every evaluation: a learning rate too small
    to move it) has no F1 to improve on: patience waits for the first entity, and the run
    trains its whole schedule."""
    all_o_tagger(monkeypatch)
    run_dir = tmp_path / "run"
    config = tt.make_config(tiny, run_dir, head_learning_rate=1e-12, crf_learning_rate=1e-12,
                            eval_every=2, early_stopping_patience=2, train_steps=10)
    results = train_and_evaluate(config)
    assert "early_stopped_at" not in results and results["step"] == 10
    events = run_events.RunEvents(run_dir).Tensors("dev/f1")
    assert [event.step for event in events] == [2, 4, 6, 8, 10]
    assert all(float(tf.make_ndarray(event.tensor_proto)) == 0.0 for event in events)


def test_early_stopping_needs_evaluations(tiny, tmp_path):
    with pytest.raises(config_lib.ConfigError, match="--early_stopping_patience=3 needs"):
        tt.make_config(tiny, tmp_path / "run", early_stopping_patience=3)


def test_the_training_input_uses_the_plans_halved_batch(tiny, tmp_path):
    """--min_updates_per_epoch halves the batch in the plan; the batches the model trains on
    are that size (not --batch_size), and the log's plan and results.json say so."""
    from trainer.training_state import build_training_state

    windows = train_windows(tiny)
    config = tt.make_config(tiny, tmp_path / "run", batch_size=8, min_batch_size=2,
                            min_updates_per_epoch=-(-windows // 2), bucketing=False)
    state = build_training_state(config, tmp_path / "run")
    assert (state.schedule.batch_size, state.schedule.batch_reduced_from) == (2, 8)
    assert state.schedule.steps_per_epoch == -(-windows // 2)
    batch = next(iter(state.train_dataset()))
    assert batch["input_ids"].shape[0] == 2
    unchanged = tt.make_config(tiny, tmp_path / "run8", batch_size=8, min_batch_size=2,
                               min_updates_per_epoch=0, bucketing=False)
    state8 = build_training_state(unchanged, tmp_path / "run8")
    assert state8.schedule.batch_size == 8
    assert next(iter(state8.train_dataset()))["input_ids"].shape[0] == 8
