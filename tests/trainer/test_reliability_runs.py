"""Reliability of real training runs (a tiny corpus, character embeddings + BiLSTM + CRF):
a diverging run stops before it saves anything, or recovers from the latest checkpoint with lower
learning rates; a resumed run logs each step once; SIGTERM stops a long tf.function call and an
evaluation within seconds; data errors come before the run directory is touched."""

import json
import math
import os
import pathlib
import shutil
import signal
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from data_pipeline.dataset import ShardError
from tests import trainer_testing as tt
from trainer import checkpointing, config as config_lib, evaluation, run_events
from trainer.step_runner import StepRunner
from trainer.loop import train_and_evaluate


EMBEDDING = dict(encoder="embedding", encoder_config="", hidden_layers="last", embedding_dim=32,
                 encoder_learning_rate=1e-3, bilstm_units=16, train_steps=12, eval_every=3)


def args(tiny, run_dir, **overrides):
    paths, manifest_dir, tokenizer = tiny
    return tt.tiny_args(paths, manifest_dir, tokenizer, run_dir, **dict(EMBEDDING, **overrides))


def make_config(tiny, run_dir, **overrides):
    return config_lib.parse_flags(args(tiny, run_dir, **overrides))


def files(directory):
    return {p.name: p.read_bytes() for p in pathlib.Path(directory).iterdir() if p.is_file()}


def checkpoint_values(path):
    reader = tf.train.load_checkpoint(str(path))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def assert_all_finite(run_dir):
    for prefix in tf.train.get_checkpoint_state(str(run_dir / "checkpoints")
                                                ).all_model_checkpoint_paths:
        path = run_dir / "checkpoints" / prefix
        for name, value in checkpoint_values(path).items():
            if np.issubdtype(np.asarray(value).dtype, np.floating):
                assert np.isfinite(value).all(), (path, name)


def event_steps(run_dir):
    accumulator = run_events.RunEvents(run_dir)  # RUN_DIR and its split directories
    return {tag: [e.step for e in accumulator.Tensors(tag)]
            for tag in accumulator.Tags()["tensors"]}


def assert_each_step_once(run_dir):
    steps = [r["step"] for r in tt.train_log(run_dir)]
    assert steps == sorted(set(steps)), steps
    for tag, tag_steps in event_steps(run_dir).items():
        assert len(tag_steps) == len(set(tag_steps)), (tag, tag_steps)


def test_divergence_stops_before_anything_is_saved(tiny, tmp_path):
    run_dir = tmp_path / "run"
    train_and_evaluate(make_config(tiny, run_dir, max_steps=6))
    checkpoints, best = files(run_dir / "checkpoints"), files(run_dir / "best")
    results = (run_dir / "results.json").read_bytes()
    diverging = make_config(tiny, run_dir, encoder_learning_rate=1e30, head_learning_rate=1e30,
                            crf_learning_rate=1e30, clip_norm=0, resume_mismatched=True)
    for _ in range(2):  # a restart meets the same healthy state, not a NaN checkpoint
        with pytest.raises(checkpointing.DivergenceError,
                           match=r"training diverged at step (7|8|9).*ckpt-6, is healthy"):
            train_and_evaluate(diverging)
        assert files(run_dir / "checkpoints") == checkpoints
        assert files(run_dir / "best") == best
        assert [r["step"] for r in tt.train_log(run_dir)] == [3, 6]
        assert (run_dir / "results.json").read_bytes() == results
    assert_all_finite(run_dir)
    assert_each_step_once(run_dir)


def poison(monkeypatch, plan):
    """Makes the call that ends at step s go wrong once: plan {s: "spike" | "nan"}."""
    original = StepRunner.run
    fired = set()

    def run_steps(self, iterator, num_steps, stop):
        totals, norms = original(self, iterator, num_steps, stop)
        step = int(self.state.step.numpy())
        if step in plan and step not in fired:
            fired.add(step)
            if plan[step] == "spike":  # a finite blow-up of the loss
                totals["loss_sum"] *= 1e6
            else:  # a weight became NaN (seen by the check before an evaluation or a save)
                weight = self.state.model.trainable_weights[-1]
                weight.assign(tf.fill(weight.shape, np.nan))
        return totals, norms

    monkeypatch.setattr(StepRunner, "run", run_steps)


def test_recovery_restores_the_latest_checkpoint_with_lower_rates(tiny, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    settings = dict(steps_per_loop=1, recovery_max_trials=1, train_steps=15)
    poison(monkeypatch, {8: "spike", 12: "nan"})
    # The spike at step 8 (1e6 x the loss: above 1000 x the median of the losses so far) is
    # recovered from ckpt-6; NaN weights at step 12 (found before its evaluation and save)
    # would need a second trial.
    with pytest.raises(checkpointing.DivergenceError,
                       match=r"step 12: .* hold NaN.*all 1 recovery trial\(s\) are used up"):
        train_and_evaluate(make_config(tiny, run_dir, **settings))
    log = tt.train_log(run_dir)
    assert [r["step"] for r in log] == [3, 6, 9]
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    assert latest.endswith("ckpt-9")
    values = checkpoint_values(latest)
    assert values["recoveries/.ATTRIBUTES/VARIABLE_VALUE"] == 1
    assert values["lr_scale/.ATTRIBUTES/VARIABLE_VALUE"] == 0.5
    assert_all_finite(run_dir)
    # The peak head rate 5e-3 decays linearly over 15 steps; after the recovery it is halved.
    assert log[0]["learning_rate"]["head"] == pytest.approx(5e-3 * (1 - 3 / 15), rel=1e-5)
    assert log[2]["learning_rate"]["head"] == pytest.approx(0.5 * 5e-3 * (1 - 9 / 15), rel=1e-5)
    # A restart resumes from ckpt-9 with the scale and trial count it saved, and finishes.
    monkeypatch.undo()
    results = train_and_evaluate(make_config(tiny, run_dir, **settings))
    assert results["step"] == 15
    log = tt.train_log(run_dir)
    assert [r["step"] for r in log] == [3, 6, 9, 12, 15]
    assert log[3]["learning_rate"]["head"] == pytest.approx(0.5 * 5e-3 * (1 - 12 / 15), rel=1e-5)
    assert_each_step_once(run_dir)
    assert event_steps(run_dir)["train/loss"] == [3, 6, 9, 12, 15]


def test_a_spike_is_caught_by_the_median_bound(tiny, tmp_path, monkeypatch):
    poison(monkeypatch, {5: "spike"})
    with pytest.raises(checkpointing.DivergenceError,
                       match=r"step 5: the mean training loss of step 5 is .* above "
                             r"--loss_upper_bound_factor=1000 x the median"):
        train_and_evaluate(make_config(tiny, tmp_path / "run", steps_per_loop=1))
    with pytest.raises(checkpointing.DivergenceError, match="above --loss_upper_bound=0.001"):
        train_and_evaluate(make_config(tiny, tmp_path / "bound", loss_upper_bound=1e-3))
    assert tf.train.latest_checkpoint(str(tmp_path / "bound" / "checkpoints")) is None


def test_a_resumed_run_logs_each_step_once(tiny, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    settings = dict(log_every=1, steps_per_loop=2)
    # The first attempt "dies" before its checkpoint at step 6: steps 4..6 were logged (and
    # evaluated at 6) but are trained again from ckpt-3.
    original = checkpointing.Checkpointer.save
    monkeypatch.setattr(checkpointing.Checkpointer, "save",
                        lambda self: None if int(self.step.numpy()) == 6 else original(self))
    train_and_evaluate(make_config(tiny, run_dir, max_steps=6, **settings))
    assert event_steps(run_dir)["test/f1"] == [6]
    monkeypatch.undo()
    train_and_evaluate(make_config(tiny, run_dir, **settings))
    assert [r["step"] for r in tt.train_log(run_dir)] == list(range(1, 13))
    steps = event_steps(run_dir)
    assert steps["train/loss"] == list(range(1, 13))
    assert steps["dev/f1"] == [3, 6, 9, 12] and steps["test/f1"] == [12]
    # Once more: training is done, the final evaluation at step 12 is repeated, not added.
    train_and_evaluate(make_config(tiny, run_dir, **settings))
    assert event_steps(run_dir) == steps
    assert_each_step_once(run_dir)


def signal_during(monkeypatch, evaluation_index):
    """SIGTERM to this process in the middle of the `evaluation_index`-th evaluation."""
    original = evaluation.evaluate
    count = {"evaluations": 0}

    def evaluate(model, dataset, *a, **kw):
        count["evaluations"] += 1

        def batches():
            for index, batch in enumerate(dataset):
                if count["evaluations"] == evaluation_index and index == 2:
                    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
                    os.kill(os.getpid(), signal.SIGTERM)
                yield batch

        class Wrapped:
            element_spec = dataset.element_spec

            def __iter__(self):
                return batches()

        return original(model, Wrapped(), *a, **kw)

    monkeypatch.setattr(evaluation, "evaluate", evaluate)


def test_sigterm_during_an_evaluation_stops_and_saves(tiny, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    settings = dict(eval_batch_size=4, checkpoint_every=6)
    signal_during(monkeypatch, 1)  # the dev evaluation at step 3
    result = train_and_evaluate(make_config(tiny, run_dir, **settings))
    assert result == {"step": 3, "stopped": True}
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith("ckpt-3")
    monkeypatch.undo()
    # Dev at 3 (the one cut short), 6 and 9, then the final dev evaluation at 12.
    signal_during(monkeypatch, 4)
    assert train_and_evaluate(make_config(tiny, run_dir, **settings))["stopped"]
    assert not (run_dir / "results.json").exists()
    monkeypatch.undo()
    results = train_and_evaluate(make_config(tiny, run_dir, **settings))
    assert results["step"] == 12 and (run_dir / "results.json").is_file()
    # The evaluation that SIGTERM cut short at step 3 was done first when the run resumed.
    assert event_steps(run_dir)["dev/f1"] == [3, 6, 9, 12]
    assert_each_step_once(run_dir)


def test_sigterm_ends_a_long_tf_function_call_within_seconds(tiny, tmp_path, monkeypatch):
    huge = 10 ** 6  # one tf.function call of a million updates: hours
    original = StepRunner.run
    sent = {}

    def send_sigterm_when_training(run):
        while int(run.step.numpy()) < 5:  # read while the call runs
            time.sleep(0.05)
        sent["step"], sent["time"] = int(run.step.numpy()), time.time()
        os.kill(os.getpid(), signal.SIGTERM)

    def run_steps(self, iterator, num_steps, stop):
        assert num_steps == huge
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
        threading.Thread(target=send_sigterm_when_training, args=(self.state,), daemon=True).start()
        return original(self, iterator, num_steps, stop)

    monkeypatch.setattr(StepRunner, "run", run_steps)
    run_dir = tmp_path / "run"
    result = train_and_evaluate(make_config(
        tiny, run_dir, train_steps=huge, steps_per_loop=huge, log_every=huge,
        checkpoint_every=huge, eval_every=0))
    latency = time.time() - sent["time"]
    assert result["stopped"] and result["step"] >= sent["step"] >= 5
    assert latency < 10, latency  # about one update plus the save
    checkpoint = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    assert checkpoint.endswith(f"ckpt-{result['step']}")


def test_divergence_through_the_entry_point_is_one_error_line(tiny, tmp_path):
    result = tt.run_main(args(tiny, tmp_path / "run", encoder_learning_rate=1e30,
                              head_learning_rate=1e30, crf_learning_rate=1e30, clip_norm=0),
                         check=False)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged at step "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_corrupt_dev_shard_fails_before_the_run_directory_is_touched(tiny, tmp_path):
    paths, manifest_dir, tokenizer = tiny
    copy = tmp_path / "shards"
    shutil.copytree(manifest_dir, copy)
    run_dir = tmp_path / "run"
    config = config_lib.parse_flags(tt.tiny_args(paths, copy, tokenizer, run_dir,
                                                 **dict(EMBEDDING, max_steps=3)))
    train_and_evaluate(config)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    shard = sorted(copy.glob("dev-*.tfrecord"))[0]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    for overwrite in (False, True):
        with pytest.raises(ShardError, match=shard.name):
            train_and_evaluate(config.replace(max_steps=6, overwrite=overwrite))
        assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before
    assert json.loads((run_dir / "results.json").read_text())["step"] == 3
    assert math.isfinite(tt.train_log(run_dir)[-1]["loss"])
