"""Runs of `python -m trainer.main` in fresh processes: MirroredStrategy over 2 logical CPUs and
two MultiWorkerMirroredStrategy workers on 127.0.0.1 match one device at the same global batch;
a run stopped at step k and resumed ends bit-identical to an uninterrupted one; SIGTERM saves a
checkpoint and exits.

Equal results need the same batches in the same order: the comparisons run without shuffling
and with fixed padding (bucketing and shuffling group windows per input pipeline), and without
dropout (its random stream differs between replicas and restarts on resume).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from tests import trainer_testing as tt

NO_DROPOUT_BERT = json.dumps(dict(tt.TINY_BERT, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0))
STEPS = 20


def comparable_args(tiny, run_dir, **overrides):
    paths, manifest_dir, tokenizer = tiny
    # float32: with --mixed_precision=auto (bf16 on CPUs with AVX512_BF16/AMX) the bf16
    # rounding of a batch of 8 and of two batches of 4 differs by more than the tolerance.
    values = dict(encoder_config=NO_DROPOUT_BERT, dropout=0.0, bilstm_dropout=0.0,
                  mixed_precision="none",
                  encoder_learning_rate=1e-4, head_learning_rate=1e-3, shuffle_buffer=0,
                  bucketing=False,
                  train_steps=STEPS, steps_per_loop=5, log_every=1, checkpoint_every=STEPS,
                  eval_batch_size=64)
    values.update(overrides)
    return tt.tiny_args(paths, manifest_dir, tokenizer, run_dir, **values)


def start(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "trainer.main", *map(str, args)], cwd=tt.REPO,
                            env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process, timeout=400):
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        raise AssertionError(f"timed out:\n{stderr[-4000:]}")
    return process.returncode, stderr


def assert_ok(process):
    code, stderr = finish(process)
    assert code == 0, stderr[-5000:]


@pytest.fixture(scope="module")
def single_device_run(tiny, tmp_path_factory):
    """The reference: one device, global batch 8, 20 steps."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    assert_ok(start(comparable_args(tiny, run_dir)))
    return run_dir


def assert_same_run(reference_dir, run_dir):
    reference_log, log = tt.train_log(reference_dir), tt.train_log(run_dir)
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    for a, b in zip(reference_log, log):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), (a, b)
    reference, weights = tt.checkpoint_weights(reference_dir), tt.checkpoint_weights(run_dir)
    assert reference.keys() == weights.keys() and len(reference) > 20
    # The attention key bias gets a gradient that is exactly 0 in exact arithmetic (it adds the
    # same q.b_k to every key's score, and softmax ignores a constant), so what Adam applies to
    # it is normalised rounding noise: it stays tiny, but its relative difference means nothing.
    key_biases = [name for name in reference if "/key/bias/" in name]
    for name in key_biases:
        assert abs(reference.pop(name) - weights.pop(name)).max() < 1e-8
    assert tt.max_relative_difference(reference, weights) <= 1e-5


def test_mirrored_over_two_logical_cpus_matches_one_device(tiny, single_device_run, tmp_path):
    run_dir = tmp_path / "mirrored"
    assert_ok(start(comparable_args(tiny, run_dir, strategy="mirrored", num_cpu_devices=2)))
    assert_same_run(single_device_run, run_dir)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_match_one_process(tiny, single_device_run, tmp_path):
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    run_dir = tmp_path / "multi_worker"
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(start(comparable_args(tiny, run_dir, strategy="multi_worker"),
                               env={"TF_CONFIG": json.dumps(tf_config)}))
    for process in processes:
        assert_ok(process)
    assert_same_run(single_device_run, run_dir)


def test_stopped_and_resumed_run_is_bit_identical(tiny, tmp_path):
    settings = dict(deterministic=True, train_steps=12, steps_per_loop=4, log_every=4,
                    checkpoint_every=4, encoder_config=NO_DROPOUT_BERT, dropout=0.0,
                    bilstm_dropout=0.0, encoder_learning_rate=1e-3)  # shuffled and bucketed
    paths, manifest_dir, tokenizer = tiny
    whole = tmp_path / "whole"
    parts = tmp_path / "parts"
    uninterrupted = start(tt.tiny_args(paths, manifest_dir, tokenizer, whole, **settings))
    first = start(tt.tiny_args(paths, manifest_dir, tokenizer, parts, max_steps=5, **settings))
    assert_ok(first)
    assert tf.train.latest_checkpoint(str(parts / "checkpoints")).endswith("ckpt-5")
    assert_ok(start(tt.tiny_args(paths, manifest_dir, tokenizer, parts, **settings)))
    assert_ok(uninterrupted)
    a, b = tt.checkpoint_weights(whole), tt.checkpoint_weights(parts)
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name
    # The resumed run saw the same batches: the same losses at the same steps.
    assert [r["loss"] for r in tt.train_log(whole)][-1] == tt.train_log(parts)[-1]["loss"]


def test_sigterm_saves_a_checkpoint_and_exits(tiny, tmp_path):
    paths, manifest_dir, tokenizer = tiny
    run_dir = tmp_path / "run"
    process = start(tt.tiny_args(paths, manifest_dir, tokenizer, run_dir, train_steps=10 ** 6,
                                 steps_per_loop=1, log_every=1, checkpoint_every=10 ** 5))
    log_path = run_dir / "train_log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if log_path.exists() and len(log_path.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    code, stderr = finish(process, timeout=120)
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    checkpoint = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    assert checkpoint is not None, stderr[-3000:]
    saved_step = int(checkpoint.rsplit("-", 1)[1])
    assert saved_step >= 2 and saved_step == tt.train_log(run_dir)[-1]["step"]
