"""Reliability building blocks, without training: nothing non-finite is saved or resumed from,
what killed saves leave is cleaned, train_log.jsonl and the event files hold each step once
after a restart, and a manifest whose counts disagree with its shards is refused."""

import hashlib
import json
import logging
import math
import os
import pathlib
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from absl import logging as absl_logging

from data_pipeline.dataset import ShardError
from data_pipeline.manifest import load_manifest
from data_pipeline.records import decode_example, encode_example
from data_pipeline.recount import check_split
from tests import trainer_testing as tt
from trainer import cache, checkpointing, event_truncation, run_events, summaries, train_log


def strict_loads(text):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


class Parts:
    """A tiny model, its optimizer (with slots) and the loop's step variables."""

    def __init__(self, run_dir, **kwargs):
        tf.keras.utils.set_random_seed(0)
        self.model = tf.keras.Sequential([tf.keras.layers.Dense(3, input_shape=(4,))])
        self.optimizer = tf.keras.optimizers.Adam(1e-2)
        self.optimizer.build(self.model.trainable_variables)
        self.step = tf.Variable(0, dtype=tf.int64)
        self.position = tf.Variable(0, dtype=tf.int64)
        self.lr_scale = tf.Variable(1.0)
        self.messages = []
        self.checkpointer = checkpointing.Checkpointer(
            run_dir, model=self.model, optimizer=self.optimizer, step=self.step,
            input_position=self.position, keep=kwargs.pop("keep", 3),
            extra=kwargs.pop("extra", {"lr_scale": self.lr_scale}), log=self.messages.append,
            **kwargs)

    def train_to(self, step):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(self.model(tf.ones([2, 4])) ** 2)
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        self.step.assign(step)
        self.position.assign(step)

    def kernel(self):
        return self.model.weights[0]


def checkpoint_names(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").glob("ckpt-*.index"))


def test_save_refuses_nan_weights_and_keeps_the_healthy_checkpoints(tmp_path):
    parts = Parts(tmp_path, keep=2)
    for step in (3, 6):
        parts.train_to(step)
        parts.checkpointer.save()
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()}
    parts.train_to(9)
    parts.kernel().assign(tf.fill(parts.kernel().shape, np.nan))
    with pytest.raises(checkpointing.DivergenceError, match=r"refusing to save step 9.*ckpt-6"):
        parts.checkpointer.save()
    # Nothing was written, so keep=2 did not rotate ckpt-3 out for a NaN ckpt-9.
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()} == before
    # Adam's slots count too: a NaN moment would poison the next update.
    parts.kernel().assign(tf.zeros(parts.kernel().shape))
    parts.optimizer.variables[1].assign(tf.fill(parts.optimizer.variables[1].shape, np.inf))
    assert parts.checkpointer.non_finite_variables() == [parts.optimizer.variables[1].name]
    with pytest.raises(checkpointing.DivergenceError):
        parts.checkpointer.save()


def write_unchecked(parts, step, value=np.nan):
    """A checkpoint as the old code wrote it: saved without any finiteness check."""
    parts.train_to(step)
    saved = parts.kernel().numpy()
    parts.kernel().assign(tf.fill(parts.kernel().shape, value))
    parts.checkpointer.manager.save(checkpoint_number=step)
    parts.kernel().assign(saved)


def test_restore_skips_and_removes_non_finite_checkpoints(tmp_path):
    parts = Parts(tmp_path)
    parts.train_to(3)
    parts.checkpointer.save()
    healthy = parts.kernel().numpy()
    write_unchecked(parts, 6)
    write_unchecked(parts, 9, np.inf)
    again = Parts(tmp_path)
    assert again.checkpointer.restore_latest() == 3
    assert (again.kernel().numpy() == healthy).all()
    assert checkpoint_names(tmp_path) == ["ckpt-3.index"]
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-3")
    assert any("ckpt-9 holds NaN or infinity" in m for m in again.messages)
    # The manager's state is consistent: later saves rotate normally.
    for step in (4, 5, 7):
        again.train_to(step)
        again.checkpointer.save()
    assert checkpoint_names(tmp_path) == ["ckpt-4.index", "ckpt-5.index", "ckpt-7.index"]


def test_restore_fails_clearly_when_every_checkpoint_is_non_finite(tmp_path):
    parts = Parts(tmp_path)
    write_unchecked(parts, 3)
    with pytest.raises(checkpointing.DivergenceError, match="no healthy state to resume from"):
        Parts(tmp_path).checkpointer.restore_latest()
    assert checkpoint_names(tmp_path) == ["ckpt-3.index"]  # nothing removed: nothing better


def test_a_checkpoint_without_the_newer_variables_restores(tmp_path):
    parts = Parts(tmp_path, extra={})
    parts.train_to(4)
    parts.checkpointer.save()
    again = Parts(tmp_path)  # with the lr_scale variable the old checkpoint lacks
    again.lr_scale.assign(1.0)
    assert again.checkpointer.restore_latest() == 4
    assert float(again.lr_scale.numpy()) == 1.0


def test_temp_directories_of_killed_saves_are_removed_and_nothing_else(tmp_path):
    directory = tmp_path / "checkpoints"
    for name in ("ckpt-12_temp", "ckpt-7_temp", "mine_temp", "ckpt-3_temp_x"):
        (directory / name).mkdir(parents=True)
        (directory / name / "part-00000-of-00001.index").write_bytes(b"x")
    (directory / "ckpt-3.index").write_bytes(b"keep me")
    parts = Parts(tmp_path)
    left = sorted(p.name for p in directory.iterdir())
    assert left == ["ckpt-3.index", "ckpt-3_temp_x", "mine_temp"]
    assert sum("killed" in m for m in parts.messages) == 2


def test_save_best_refuses_non_finite_and_survives_a_kill_between_its_renames(tmp_path):
    parts = Parts(tmp_path)
    parts.checkpointer.save_best(3, {"f1": 0.5, "loss": 0.1})
    best = tmp_path / "best"
    assert strict_loads((best / "best.json").read_text()) == {"step": 3, "f1": 0.5, "loss": 0.1}
    with pytest.raises(checkpointing.DivergenceError, match="loss"):
        parts.checkpointer.save_best(6, {"f1": 0.6, "loss": math.nan})
    parts.kernel().assign(tf.fill(parts.kernel().shape, np.nan))
    with pytest.raises(checkpointing.DivergenceError, match="kernel"):
        parts.checkpointer.save_best(6, {"f1": 0.6, "loss": 0.1})
    assert json.loads((best / "best.json").read_text())["step"] == 3
    # A kill after `best -> .best.old` and before `.best.partial -> best`:
    os.rename(best, tmp_path / ".best.old")
    (tmp_path / ".best.partial").mkdir()
    Parts(tmp_path)
    assert json.loads((best / "best.json").read_text())["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_train_log_keeps_each_step_once(tmp_path):
    path = tmp_path / "train_log.jsonl"
    lines = [{"step": s, "loss": 1.0 / s} for s in (3, 6, 9, 6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 12, "lo')
    kept = train_log.truncate_train_log(path, 6)
    assert [r["step"] for r in kept] == [3, 6]
    assert [strict_loads(line)["step"] for line in path.read_text().splitlines()] == [3, 6]
    mtime = path.stat().st_mtime_ns
    train_log.truncate_train_log(path, 6)
    assert path.stat().st_mtime_ns == mtime  # untouched when nothing changes
    train_log.append_record(path, {"step": 9, "loss": math.nan, "grad_norm": {"head": math.inf}})
    assert strict_loads(path.read_text().splitlines()[-1]) == {
        "step": 9, "loss": None, "grad_norm": {"head": None}}


def tensor_steps(logdir):
    accumulator = run_events.RunEvents(logdir)  # RUN_DIR and its split directories
    return {tag: [e.step for e in accumulator.Tensors(tag)]
            for tag in accumulator.Tags()["tensors"]}


def test_event_files_hold_each_step_once_after_a_resume_and_a_recovery(tmp_path):
    # First attempt: steps 1..7 written, killed after its checkpoint at step 4, mid-record.
    with summaries.SummaryWriter(tmp_path) as writer:
        writer.restart(0)
        writer.scalars(0, {"hparams_like": 1.0})
        for step in range(1, 8):
            writer.scalars(step, {"train/loss": 1.0 / step})
        writer.scalars(4, {"dev/f1": 0.5})
        writer.scalars(6, {"dev/f1": 0.6})
    (first,) = (tmp_path / "train").glob("events.out.tfevents.*")
    with open(first, "ab") as stream:
        stream.write(b"\x10\x00\x00")  # a record the kill cut short
    # The resumed attempt redoes 5..8 (a new file); a recovery then restores step 6.
    assert event_truncation.truncate_event_files(tmp_path, 4) == 4
    with summaries.SummaryWriter(tmp_path) as writer:
        writer.restart(5)
        for step in range(5, 9):
            writer.scalars(step, {"train/loss": 2.0 / step})
        writer.scalars(6, {"dev/f1": 0.7})
    untouched = first.stat().st_mtime_ns
    assert event_truncation.truncate_event_files(tmp_path, 6) == 2
    assert first.stat().st_mtime_ns == untouched
    with summaries.SummaryWriter(tmp_path) as writer:
        writer.restart(7)
        writer.scalars(7, {"train/loss": 3.0 / 7})
    assert len(list((tmp_path / "train").glob("events.out.tfevents.*"))) == 3
    assert sorted(p.name for p in tmp_path.rglob("*")
                  if p.is_file() and "tfevents" not in p.name) == []
    steps = tensor_steps(tmp_path)
    assert steps == {"hparams_like": [0], "train/loss": [1, 2, 3, 4, 5, 6, 7], "dev/f1": [4, 6]}
    accumulator = run_events.RunEvents(tmp_path)
    values = {e.step: float(tf.make_ndarray(e.tensor_proto))
              for e in accumulator.Tensors("train/loss")}
    assert values[5] == pytest.approx(2.0 / 5) and values[7] == pytest.approx(3.0 / 7)
    assert float(tf.make_ndarray(accumulator.Tensors("dev/f1")[-1].tensor_proto)) == \
        pytest.approx(0.7)
    # Restarting from scratch drops every summary; files left without one are deleted.
    event_truncation.truncate_event_files(tmp_path, -1)
    assert list(tmp_path.rglob("events.out.tfevents.*")) == []


def test_hparams_text_is_strict_json():
    flat = summaries.flatten_config({"a": [1.0, math.nan, math.inf], "b": (pathlib.Path("x"),)})
    assert strict_loads(flat["a"]) == [1.0, None, None]
    assert strict_loads(flat["b"]) == ["x"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, people_daily_dir, bert_chinese_dir):
    out = tmp_path_factory.mktemp("tiny_shards")
    return tt.preprocess_tiny(people_daily_dir, bert_chinese_dir, out)[1]


def test_every_split_is_verified_and_counts_are_cross_checked(shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    cache.verify_data(load_manifest(copy))
    manifest_path = copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["splits"]["train"]["counts"]["windows"] *= 10
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"manifest.json: split 'train' says counts.windows"):
        cache.verify_data(load_manifest(copy))
    shutil.rmtree(copy)
    shutil.copytree(shards, copy)
    test_shard = sorted(copy.glob("test-*.tfrecord"))[0]
    data = bytearray(test_shard.read_bytes())
    data[len(data) // 2] ^= 1
    test_shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=test_shard.name + ".*sha256"):
        cache.verify_data(load_manifest(copy))


def edited_copy(shards, tmp_path, edit):
    """A copy of the tiny shards whose manifest `edit(manifest)` changed."""
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def minus(split, name, amount):
    """An edit taking `amount` from a count (adding it where the count is smaller)."""
    def edit(manifest):
        counts = manifest["splits"][split]["counts"]
        counts[name] += -amount if counts[name] > amount else amount
    return edit


def more_entities(manifest):
    manifest["splits"]["train"]["counts"]["entities"]["LOC"] += 1


def longer_histogram(manifest):
    histogram = manifest["splits"]["test"]["length_histogram"]
    histogram[-1] += 1


def fewer_records(manifest):
    manifest["splits"]["dev"]["shards"][0]["records"] -= 1


@pytest.mark.parametrize("edit, message", [
    (minus("dev", "sentences", 50), r"split 'dev' says counts.sentences = \d+, but its 1 shard"),
    (minus("test", "characters", 1), r"split 'test' says counts.characters = \d+, but"),
    (minus("train", "tokens", 7), r"split 'train' says counts.tokens = \d+, but"),
    (minus("dev", "max_sentence_length", 1), r"split 'dev' says counts.max_sentence_length"),
    (minus("test", "sentences_split", 1), r"split 'test' says counts.sentences_split"),
    (minus("dev", "entity_words", 1), r"split 'dev' says counts.entity_words"),
    (more_entities, r"split 'train' says counts.entities = \{.*'LOC': \d+"),
    (longer_histogram, r"split 'test' has a length_histogram that differs from its 1 shard"),
    (fewer_records, r"shard dev-00000-of-00001.tfrecord of split 'dev' holds \d+ records but "
                    r"the manifest says \d+"),
], ids=["dev-sentences", "test-characters", "train-tokens", "dev-max-length",
        "test-split-sentences", "dev-entity-words", "train-entities", "histogram", "records"])
def test_each_count_of_every_split_is_checked_against_the_shards(shards, tmp_path, edit,
                                                                 message):
    copy = edited_copy(shards, tmp_path, edit)
    with pytest.raises(ShardError, match=r"manifest.json: " + message) as info:
        cache.verify_data(load_manifest(copy))
    # The manifest's value, what the shards hold, and what to do.
    assert "the manifest was edited or damaged; re-run preprocessing with --overwrite" in str(
        info.value)


def test_the_recount_is_what_preprocessing_counted(shards):
    manifest = load_manifest(shards)
    for split, info in manifest["splits"].items():
        recount = check_split(manifest, split)
        assert recount["counts"]["sentences"] > 0
        assert recount["counts"] == {name: info["counts"][name] for name in recount["counts"]}
        assert recount["length_histogram"] == info["length_histogram"]
        assert recount["records"] == [shard["records"] for shard in info["shards"]]


def rewrite_shard(copy, split, change):
    """Rewrites the split's first shard as `change(data) -> bytes`; the manifest's size and
    sha256 follow, as if both had been edited."""
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = manifest["splits"][split]["shards"][0]
    shard = copy / entry["file"]
    data = change(shard.read_bytes())
    shard.write_bytes(data)
    entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return shard


def test_a_bit_flip_with_its_sha256_updated_names_shard_split_and_record(shards, tmp_path):
    copy = edited_copy(shards, tmp_path, lambda manifest: None)

    def flip(data):
        data = bytearray(data)
        data[len(data) // 2] ^= 1
        return bytes(data)

    shard = rewrite_shard(copy, "dev", flip)
    with pytest.raises(ShardError) as info:
        cache.verify_data(load_manifest(copy))
    message = str(info.value)
    assert re.fullmatch(
        rf"shard {re.escape(str(shard))} \(split 'dev'\): record (\d+) cannot be read "
        rf"\(corrupted record at \d+\): the shard is damaged; re-run preprocessing with "
        rf"--overwrite .*", message), message
    # Record numbers count from 1: the flipped bit is past the first half of the records.
    records = load_manifest(copy)["splits"]["dev"]["shards"][0]["records"]
    assert records // 3 < int(re.search(r"record (\d+)", message)[1]) <= records
    assert "\n" not in message and "function_node" not in message


def test_a_record_that_parses_but_fails_a_check_is_named(shards, tmp_path):
    copy = edited_copy(shards, tmp_path, lambda manifest: None)
    num_labels = len(load_manifest(copy)["label_map"])

    def bad_label_in_third_record(data):
        options = tf.io.TFRecordOptions(compression_type="")
        path = tmp_path / "rewritten.tfrecord"
        with tf.io.TFRecordWriter(str(path), options) as writer:
            for i, serialized in enumerate(tf.data.TFRecordDataset(str(original))):
                record = decode_example(serialized.numpy())
                if i == 2:
                    record["label_ids"][1] = num_labels  # one past the label map
                writer.write(encode_example(**record))
        return path.read_bytes()

    original = tmp_path / "original.tfrecord"
    original.write_bytes((copy / load_manifest(copy)["splits"]["test"]["shards"][0]["file"])
                         .read_bytes())
    shard = rewrite_shard(copy, "test", bad_label_in_third_record)
    with pytest.raises(ShardError, match=rf"shard {re.escape(str(shard))} \(split 'test'\): "
                                         rf"record 3 fails a check: a label id outside the "
                                         rf"label map \(0..{num_labels - 1}, or -100\)"):
        cache.verify_data(load_manifest(copy))


def test_saving_does_not_log_tensorflows_saver_timing(tmp_path, caplog):
    """TensorFlow's saver logs "Sharding callback duration" with absl at INFO on every save; the
    run's log must not carry that noise, and other absl INFO lines still pass."""
    absl_logger = absl_logging.get_absl_logger()

    def saver_lines(run_dir):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="absl"):
            parts = Parts(run_dir)
            for step in (1, 2):
                parts.train_to(step)
                parts.checkpointer.save()
            absl_logging.info("another absl line")
        assert (run_dir / "checkpoints" / "ckpt-2.index").exists()
        messages = [r.getMessage() for r in caplog.records]
        assert "another absl line" in messages
        return [m for m in messages if "Sharding callback" in m]

    # Without the filter the saver's line is there, once a save (so this test can fail) ...
    absl_logger.removeFilter(checkpointing.SAVER_TIMING_FILTER)
    try:
        assert len(saver_lines(tmp_path / "unfiltered")) == 2
    finally:
        absl_logger.addFilter(checkpointing.SAVER_TIMING_FILTER)
    # ... and with it, as the trainer runs, it is not.
    assert saver_lines(tmp_path / "filtered") == []
