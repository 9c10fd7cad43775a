"""Tests for trainer.run_events beyond what test_summaries.py reads back through it."""

import pytest
import tensorflow as tf

from trainer.run_events import RunEvents


def test_reads_any_tag_and_names_a_missing_split(tmp_path):
    # What an older writer wrote (the windows' throughput under its former name) reads back.
    writer = tf.summary.create_file_writer(str(tmp_path / "train"))
    with writer.as_default():
        tf.summary.scalar("sentences_per_s", 12.5, step=3)
    writer.close()
    events = RunEvents(tmp_path)
    assert events.Tags()["tensors"] == ["train/sentences_per_s"]
    [event] = events.Tensors("train/sentences_per_s")
    assert event.step == 3 and tf.make_ndarray(event.tensor_proto) == 12.5
    assert events.PluginTagToContent("hparams") == {}
    with pytest.raises(KeyError, match="no dev/ directory"):
        events.Tensors("dev/f1")
