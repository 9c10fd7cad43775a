"""What a real tiny run says at its start and while it runs (issue 12, sections 3 and 4).

At the start: the table of variable groups (parameters, trainable or frozen, peak learning rate)
in the log and in RUN_DIR/variables.json, and in TensorBoard (a text summary, and a learning rate
of 0 for each frozen group). While it runs: the tracing of the train step announced as such, a
progress line within the first call's steps, progress lines while the feature cache builds and
during every evaluation (windows done / total).
"""

import json
import logging
import re

import pytest
import tensorflow as tf

from tests import trainer_testing as tt
from trainer import run_events
from trainer.loop import train_and_evaluate

ENCODER_GROUPS = ["embeddings", "encoder_layer_0", "encoder_layer_1"]  # TINY_BERT: 2 layers
HEAD_GROUPS = ["bilstm", "head", "crf"]


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def run_logged(config):
    """Runs train_and_evaluate; returns (results, the absl log messages in order)."""
    handler = Collect()
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.addHandler(handler)
    absl_logger.setLevel(logging.INFO)
    try:
        results = train_and_evaluate(config)
    finally:
        absl_logger.removeHandler(handler)
        absl_logger.setLevel(level)
    return results, handler.messages


def table_rows(text):
    """{group: (state, peak lr)} from the log's variables table."""
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[3] in ("frozen", "trainable"):
            rows[parts[0]] = (parts[3], float(parts[4]))
    return rows


def index_of(messages, predicate, what):
    for index, message in enumerate(messages):
        if predicate(message):
            return index
    pytest.fail(f"no log line {what}; the log:\n" + "\n".join(messages[-60:]))


def test_frozen_run_says_what_trains_and_reports_progress(tiny, tmp_path):
    run_dir = tmp_path / "frozen"
    # Batches of 64: the 6 steps are more than an epoch, so the feature cache is built.
    results, messages = run_logged(tt.make_config(tiny, run_dir, eval_every=3, batch_size=64))
    assert results["step"] == 6

    # The table, in the log and in variables.json: every encoder group frozen.
    [table] = [m for m in messages if m.startswith("variables: ")]
    rows = table_rows(table)
    assert rows == {**{g: ("frozen", 0.0) for g in ENCODER_GROUPS},
                    "bilstm": ("trainable", 5e-3), "head": ("trainable", 5e-3),
                    "crf": ("trainable", rows["crf"][1])}
    assert rows["crf"][1] > 0
    assert "encoder frozen" in table and "total frozen" in table
    data = json.loads((run_dir / "variables.json").read_text())
    groups = {g["name"]: g for g in data["groups"]}
    assert list(groups) == ENCODER_GROUPS + HEAD_GROUPS
    for name in ENCODER_GROUPS:
        assert groups[name]["encoder"] and not groups[name]["trainable"], name
        assert groups[name]["peak_learning_rate"] == 0.0
    for name in HEAD_GROUPS:
        assert groups[name]["trainable"] and groups[name]["peak_learning_rate"] > 0, name
    assert data["encoder_frozen"] is True
    assert data["totals"]["frozen"] == sum(groups[g]["parameters"] for g in ENCODER_GROUPS)
    assert data["totals"]["trainable"] == sum(groups[g]["parameters"] for g in HEAD_GROUPS)
    # Before the first step.
    tracing = index_of(messages, lambda m: m.startswith("tracing the train step"), "tracing")
    assert messages.index(table) < tracing

    # TensorBoard: the table as text, and each frozen group's learning rate, 0, once.
    events = run_events.RunEvents(run_dir)
    [text] = events.Tensors("variables")
    markdown = tf.make_ndarray(text.tensor_proto).item().decode("utf-8")
    assert "| encoder_layer_1 |" in markdown and "**frozen**" in markdown
    for name in ENCODER_GROUPS:
        [event] = events.Tensors(f"train/lr/{name}")
        assert event.step == 0 and float(tf.make_ndarray(event.tensor_proto)) == 0.0
    assert [e.step for e in events.Tensors("train/lr/head")] == [3, 6]

    # The feature cache built with progress: windows done / total.
    windows = {split: json.loads((tiny[1] / "manifest.json").read_text())["splits"][split]
               ["counts"]["windows"] for split in ("train", "dev", "test")}
    total = sum(windows.values())
    building = index_of(messages, lambda m: m.startswith("feature cache: building"), "building")
    cache_lines = [m for m in messages if m.startswith("feature cache [")]
    assert cache_lines and cache_lines[-1].split("] ")[1].startswith(f"{total}/{total} 100%")
    assert messages.index(cache_lines[0]) > building

    # Tracing announced, then its end, then a progress line within the first call (3 steps).
    traced = index_of(messages, lambda m: m.startswith("train step traced"), "traced")
    first_progress = index_of(messages, lambda m: m.startswith("train ["), "train progress")
    assert tracing < traced <= first_progress
    step = int(re.match(r"train \[[=> ]*\]\s+(\d+)/6", messages[first_progress]).group(1))
    assert 1 <= step <= 3

    # One progress line at least per evaluation (dev at 3, dev at 6, test at 6), each ending at
    # all of the split's windows, after an announcement of what it evaluates.
    for split, count in (("dev", 2), ("test", 1)):
        starts = [i for i, m in enumerate(messages)
                  if m.startswith("step ") and f" {split}: evaluating {windows[split]} windows"
                  in m]
        done = [i for i, m in enumerate(messages) if m.startswith(f"{split} evaluation [")
                and f"] {windows[split]}/{windows[split]} 100%" in m]
        assert len(starts) == count and len(done) == count, (split, starts, done)
        assert all(s < d for s, d in zip(starts, done))
        assert all("window/s" in messages[d] or "ETA" in messages[d] for d in done)


def test_finetune_run_says_the_encoder_trains(tiny, tmp_path):
    run_dir = tmp_path / "finetune"
    _, messages = run_logged(tt.make_config(tiny, run_dir, encoder_learning_rate=1e-4,
                                            layer_decay=1.0, train_steps=4))
    [table] = [m for m in messages if m.startswith("variables: ")]
    rows = table_rows(table)
    assert {g: rows[g] for g in ENCODER_GROUPS} == {g: ("trainable", 1e-4)
                                                    for g in ENCODER_GROUPS}
    assert all(rows[g][0] == "trainable" for g in HEAD_GROUPS)
    assert "encoder trains (fine-tuning)" in table
    data = json.loads((run_dir / "variables.json").read_text())
    assert data["encoder_frozen"] is False
    assert all(g["trainable"] and g["peak_learning_rate"] == pytest.approx(1e-4)
               for g in data["groups"] if g["encoder"])
    assert data["totals"]["frozen"] == 0
    # No feature cache for a trained encoder, and no frozen learning rate at step 0.
    assert not any(m.startswith("feature cache") for m in messages)
    events = run_events.RunEvents(run_dir)
    lr = events.Tensors("train/lr/encoder_layer_0")
    assert [e.step for e in lr] == [3, 4]  # logged steps only (linear decay: 0 at the end)
    assert float(tf.make_ndarray(lr[0].tensor_proto)) > 0
