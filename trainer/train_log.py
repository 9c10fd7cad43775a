"""RUN_DIR/train_log.jsonl: one strict-JSON record per logged training step, each step once."""

from __future__ import annotations

import json
import os
import pathlib

from data_pipeline.manifest import strict_json_dumps


def append_record(path: pathlib.Path, record: dict) -> None:
    """Appends `record` as one line (NaN and infinity written as null: strict JSON)."""
    with open(path, "a") as stream:
        stream.write(strict_json_dumps(record, non_finite="null", sort_keys=True) + "\n")


def truncate_train_log(path: pathlib.Path, last_step: int) -> list[dict]:
    """Keeps the records of steps <= `last_step` in train_log.jsonl; returns them.

    A resumed (or recovered) run trains the steps after its checkpoint again and logs them
    again: without this, train_log.jsonl would hold those steps twice. A line a kill cut short
    is dropped too, and of two records of one step (written by an older version) the later is
    kept. The file is rewritten atomically, and only when something changes.
    """
    if not path.is_file():
        return []
    text = path.read_text()
    by_step: dict[int, dict] = {}
    changed = bool(text) and not text.endswith("\n")
    for line in text.splitlines():
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, TypeError, KeyError):
            changed = True
            continue
        if step > last_step or step in by_step:
            changed = True
            if step > last_step:
                continue
        by_step[step] = record
    records = [by_step[step] for step in sorted(by_step)]
    if changed:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(strict_json_dumps(r, non_finite="null", sort_keys=True) + "\n"
                               for r in records))
        os.replace(tmp, path)
    return records
