"""Removes from a run's event files the steps a resumed run writes again."""

from __future__ import annotations

import os

from trainer.event_layout import EVENT_FILE_MARKER, event_directories

_REWRITE_SUFFIX = ".rewrite.partial"  # no EVENT_FILE_MARKER in it: never read as events


def truncate_event_files(logdir: str | os.PathLike, last_step: int) -> int:
    """Removes every event with a step > `last_step` from the event files of a run.

    A resumed run writes the steps after its checkpoint again (into new event files); without
    this every reader would see those steps twice. The files in `logdir` and in each of its
    direct subdirectories (train/, dev/, test/) are rewritten atomically (a record a kill cut
    short is dropped too), a file left with no summary is deleted, and a file with nothing to
    drop is not touched. Call it before a writer opens a new file in the run.

    Args:
      logdir: the run directory.
      last_step: the restored step; -1 removes every summary (a run that restarts from scratch).

    Returns:
      The number of events removed.
    """
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    removed = 0
    for directory in event_directories(logdir):
        for leftover in directory.glob("*" + _REWRITE_SUFFIX):
            leftover.unlink()
        for path in sorted(directory.glob(f"*{EVENT_FILE_MARKER}*")):
            if not path.is_file():
                continue
            kept, changed = [], False
            try:
                for record in tf.data.TFRecordDataset(str(path)):
                    raw = record.numpy()
                    event = event_pb2.Event.FromString(raw)
                    if event.step > last_step and event.WhichOneof("what") != "file_version":
                        removed += 1
                        changed = True
                    else:
                        kept.append((raw, event.WhichOneof("what")))
            except tf.errors.DataLossError:  # the tail a kill cut short
                changed = True
            if not changed:
                continue
            if not any(what == "summary" for _, what in kept):
                path.unlink()
                continue
            partial = path.with_name(path.name.replace(EVENT_FILE_MARKER, "events")
                                     + _REWRITE_SUFFIX)
            with tf.io.TFRecordWriter(str(partial)) as writer:
                for raw, _ in kept:
                    writer.write(raw)
            os.replace(partial, path)
    return removed
