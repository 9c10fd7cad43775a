"""Where a run's TensorBoard summaries are stored: one event-file directory per split.

    RUN_DIR/          summaries of the run as a whole (hparams, variables, crf/transitions)
    RUN_DIR/train/    RUN_DIR/dev/    RUN_DIR/test/    a split's summaries

A summary is named by its flat name: "<split>/<tag>" for a split's directory ("train/loss" is
the tag `loss` in RUN_DIR/train/) and its tag alone in RUN_DIR itself ("crf/transitions"). The
writer (`trainer.summaries`), the truncation on resume (`trainer.event_truncation`) and the
reader (`trainer.run_events`) all go through the names and directories defined here.
"""

from __future__ import annotations

import os
import pathlib

# The splits that get an event-file directory of their own (RUN_DIR/<split>/).
SPLITS = ("train", "dev", "test")

EVENT_FILE_MARKER = "tfevents"  # TensorBoard reads every file whose name contains it


def split_name(name: str) -> tuple[str, str]:
    """A flat summary name -> (subdirectory, tag): "train/lr/head" -> ("train", "lr/head"),
    "crf/transitions" -> ("", "crf/transitions") (RUN_DIR itself)."""
    head, _, rest = name.partition("/")
    if head in SPLITS and rest:
        return head, rest
    return "", name


def flat_name(subdirectory: str, tag: str) -> str:
    """The inverse of `split_name`: ("dev", "f1") -> "dev/f1", ("", "variables") -> "variables"."""
    return f"{subdirectory}/{tag}" if subdirectory else tag


def event_directories(logdir: str | os.PathLike) -> list[pathlib.Path]:
    """`logdir` and each of its direct subdirectories that holds an event file (a run
    directory and its split directories), `logdir` first."""
    directory = pathlib.Path(logdir)
    found = [directory]
    if directory.is_dir():
        found += [child for child in sorted(directory.iterdir()) if child.is_dir()
                  and any(child.glob(f"*{EVENT_FILE_MARKER}*"))]
    return found
