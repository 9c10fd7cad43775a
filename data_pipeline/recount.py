"""Counting a split again from its shards, to check the manifest's counts before training.

The shards' sha256 (`dataset.check_shards`) proves that the files are the ones the manifest lists,
but not that the manifest's counts describe them: an edited count, or a shard rewritten together
with its sha256, would pass. `check_split` reads every record of a split once and compares:

    per shard      "records"                       the records the file holds
    counts         windows, tokens                 records, and their input_ids
                   sentences, sentences_split      distinct sentence_ids, and those with 2+ windows
                   characters, words,              sentence_length of each distinct sentence
                   max_sentence_length             (one token each: a character or a word)
                   entity_words, entities          labels of each token (on its first piece, in
                                                   any window): not O, and the B- of each type
    length_histogram                               windows by number of input_ids

The other counts (unknown tokens, pieceless tokens, repaired and source tags, content pieces) are
about the source file and the tokenizer, which the records do not hold; nothing computes anything
from them. While reading, each record is checked too: it parses, its three sequences have equal
lengths within max_seq_length, its label ids are in the label map (or the ignore id), its input
ids in the vocabulary and its character indices inside its sentence. A failure names the shard,
the record and what to do (`rebuild_hint`).
"""

from __future__ import annotations

import collections
import pathlib
from typing import Any

import numpy as np

from data_pipeline.dataset import ShardError, op_error_line
from data_pipeline.manifest import MANIFEST_NAME
from data_pipeline.records import feature_spec
from data_pipeline.tags import IGNORE_ID

_BATCH_RECORDS = 4096
_TRAINER_INPUTS = "inputs.json"  # beside the manifest in the trainer's data and feature caches


def rebuild_hint(manifest: dict[str, Any]) -> str:
    """What to do about a damaged preprocessing output, for the end of an error message."""
    directory = pathlib.Path(manifest["directory"])
    if manifest.get("features"):
        return f"delete {directory}; the next training run builds the feature cache again"
    if (directory / _TRAINER_INPUTS).is_file():
        return (f"re-run preprocessing: delete {directory} (the trainer's data cache) and the "
                f"next training run preprocesses the corpus again")
    return (f"re-run preprocessing with --overwrite (`python -m data_pipeline.preprocess "
            f"--output_dir={directory} --overwrite` and the same corpus and tokenizer flags)")


def check_split(manifest: dict[str, Any], split: str) -> dict[str, Any]:
    """Reads every record of `split` and checks them and the manifest's counts of it.

    Args:
      manifest: from `manifest.load_manifest`; its shards should have passed
        `dataset.check_shards` (present, of the listed size).
      split: a split of the manifest.

    Returns:
      The recount: {"counts": {name: value} of the counts in the module docstring,
      "length_histogram": list of ints, "records": [records of each shard]}.

    Raises:
      ShardError: a record that cannot be read or fails a check (naming the shard and the
        record), or a count that differs (naming the manifest file, the field, its value and
        the recount).
    """
    path = pathlib.Path(manifest["directory"]) / MANIFEST_NAME
    info = manifest["splits"][split]
    shards = list(info.get("shards") or [])
    parts = [_read_shard(manifest, split, entry) for entry in shards]
    for entry, part in zip(shards, parts):
        if int(entry["records"]) != part["records"]:
            raise ShardError(f"{path}: shard {entry['file']} of split {split!r} holds "
                             f"{part['records']} records but the manifest says {entry['records']}: "
                             f"the manifest was edited or damaged; {rebuild_hint(manifest)}")
    recount = _add_up(parts, manifest)
    recount["records"] = [part["records"] for part in parts]
    where = f"{len(shards)} shard(s)"
    counts = info.get("counts") or {}
    for name, actual in recount["counts"].items():
        if name not in counts and name != "windows":
            continue  # an older manifest without this count: nothing to compare
        stated = counts.get(name)
        if type(stated) is not type(actual) or stated != actual:
            raise ShardError(f"{path}: split {split!r} says counts.{name} = {stated!r}, but its "
                             f"{where} hold {actual!r}: the manifest was edited or damaged; "
                             f"{rebuild_hint(manifest)}")
    stated = info.get("length_histogram")
    if stated is not None and stated != recount["length_histogram"]:
        raise ShardError(f"{path}: split {split!r} has a length_histogram that differs from its "
                         f"{where} (windows by length: {_histogram_text(recount)}): the manifest "
                         f"was edited or damaged; {rebuild_hint(manifest)}")
    return recount


def _histogram_text(recount: dict) -> str:
    histogram = recount["length_histogram"]
    return ", ".join(f"{length}: {n}" for length, n in enumerate(histogram) if n)[:200]


def _read_shard(manifest: dict, split: str, entry: dict) -> dict[str, Any]:
    """One shard's records as flat numpy arrays (what `_add_up` needs), each record checked."""
    import tensorflow as tf

    shard = pathlib.Path(manifest["directory"]) / entry["file"]
    compression = manifest.get("compression") or ""
    spec = feature_spec()
    limits = _limits(manifest)
    columns = collections.defaultdict(list)
    records = 0
    iterator = iter(tf.data.TFRecordDataset(str(shard), compression_type=compression)
                    .batch(_BATCH_RECORDS))
    while True:
        try:
            serialized = next(iterator)
        except StopIteration:
            break
        except tf.errors.OpError as error:  # DataLossError: a record's checksum or framing
            index = _records_before_error(shard, compression)
            raise _bad_record(manifest, split, entry, index,
                              f"cannot be read ({op_error_line(error)})") from None
        try:
            batch = tf.io.parse_example(serialized, spec)
        except tf.errors.OpError as error:
            index = records + _first_unparsable(serialized, spec)
            raise _bad_record(manifest, split, entry, index, "does not parse as a window "
                              f"record ({op_error_line(error)})") from None
        bad = _check_batch(batch, limits)
        if bad is not None:
            row, problem = bad
            raise _bad_record(manifest, split, entry, records + row, f"fails a check: {problem}")
        _collect(batch, columns)
        records += int(serialized.shape[0])
    part = {name: np.concatenate(values) for name, values in columns.items()}
    part["records"] = records
    return part


def _records_before_error(shard: pathlib.Path, compression: str) -> int:
    """How many records of `shard` read before the first that cannot (on the error path only)."""
    import tensorflow as tf

    count = 0
    try:
        for _ in tf.data.TFRecordDataset(str(shard), compression_type=compression):
            count += 1
    except tf.errors.OpError:
        pass
    return count


def _first_unparsable(serialized, spec) -> int:
    """The row of the first record of a batch that `tf.io.parse_example` rejects."""
    import tensorflow as tf

    for row in range(int(serialized.shape[0])):
        try:
            tf.io.parse_example(serialized[row:row + 1], spec)
        except tf.errors.OpError:
            return row
    return 0


def _bad_record(manifest: dict, split: str, entry: dict, index: int, problem: str) -> ShardError:
    shard = pathlib.Path(manifest["directory"]) / entry["file"]
    return ShardError(f"shard {shard} (split {split!r}): record {index + 1} {problem}: the shard "
                      f"is damaged; {rebuild_hint(manifest)}")


def _limits(manifest: dict) -> dict[str, int]:
    """The ranges a record's values must lie in, from the manifest."""
    return {"max_seq_length": int(manifest["max_seq_length"]),
            "num_labels": len(manifest["label_map"]),
            "vocab_size": int(manifest["tokenizer"].get("vocab_size") or np.iinfo(np.int64).max)}


def _check_batch(batch, limits: dict[str, int]) -> tuple[int, str] | None:
    """(row, what is wrong) of the first bad record of a parsed batch, or None."""
    lengths = {name: batch[name].row_lengths().numpy()
               for name in ("input_ids", "label_ids", "char_index")}
    sentence_length = batch["sentence_length"].numpy()
    problems = [
        (lengths["input_ids"] != lengths["label_ids"])
        | (lengths["input_ids"] != lengths["char_index"]),
        lengths["input_ids"] > limits["max_seq_length"],
    ]
    texts = ["input_ids, label_ids and char_index differ in length",
             f"more than max_seq_length={limits['max_seq_length']} input ids"]
    for name, low, high, text in (
            ("label_ids", 0, limits["num_labels"],
             f"a label id outside the label map (0..{limits['num_labels'] - 1}, or {IGNORE_ID})"),
            ("input_ids", 0, limits["vocab_size"],
             f"an input id outside the vocabulary (0..{limits['vocab_size'] - 1})"),
            ("char_index", -1, None, "a character index outside its sentence")):
        values, rows = _flat_with_rows(batch[name])
        allowed = values >= low
        allowed &= values < (sentence_length[rows] if high is None else high)
        if name == "label_ids":
            allowed |= values == IGNORE_ID
        bad = np.zeros(len(sentence_length), bool)
        bad[rows[~allowed]] = True
        problems.append(bad)
        texts.append(text)
    char_index, _ = _flat_with_rows(batch["char_index"])
    label_ids, rows = _flat_with_rows(batch["label_ids"])
    if len(char_index) == len(label_ids):  # else the first check above fails
        bad = np.zeros(len(sentence_length), bool)
        bad[rows[(char_index >= 0) == (label_ids == IGNORE_ID)]] = True
        problems.append(bad)
        texts.append(f"a character index without a label, or a label ({IGNORE_ID}: none) "
                     f"without a character index")
    for bad, text in zip(problems, texts):
        if bad.any():
            return int(np.argmax(bad)), text
    return None


def _flat_with_rows(ragged) -> tuple[np.ndarray, np.ndarray]:
    """A ragged [B, None] tensor as (its values, the row of each value)."""
    lengths = ragged.row_lengths().numpy()
    return ragged.flat_values.numpy(), np.repeat(np.arange(len(lengths)), lengths)


def _collect(batch, columns: dict[str, list]) -> None:
    """Appends what `_add_up` needs of a parsed, checked batch to `columns`."""
    columns["sentence_id"].append(batch["sentence_id"].numpy())
    columns["sentence_length"].append(batch["sentence_length"].numpy())
    columns["window_length"].append(batch["input_ids"].row_lengths().numpy())
    char_index, rows = _flat_with_rows(batch["char_index"])
    labelled = char_index >= 0
    columns["token_sentence"].append(batch["sentence_id"].numpy()[rows[labelled]])
    columns["token_index"].append(char_index[labelled])
    columns["token_label"].append(batch["label_ids"].flat_values.numpy()[labelled])


def _add_up(parts: list[dict], manifest: dict) -> dict[str, Any]:
    """The split's counts (module docstring) from its shards' columns."""
    def column(name):
        values = [part[name] for part in parts if name in part]
        return np.concatenate(values) if values else np.zeros([0], np.int64)

    sentence_id, window_length = column("sentence_id"), column("window_length")
    ids, first, windows_of = np.unique(sentence_id, return_index=True, return_counts=True)
    lengths = column("sentence_length")[first]
    # Each token once, though overlapping windows label it in each of them: one key per
    # (sentence_id, char_index), char_index < its record's sentence_length (checked while
    # reading).
    longest = int(column("sentence_length").max(initial=0))
    key = column("token_sentence") * (longest + 1) + column("token_index")
    first_label = np.unique(key, return_index=True)[1]
    label_map = manifest["label_map"]
    per_label = np.bincount(column("token_label")[first_label], minlength=len(label_map))
    entities = {label[2:]: int(n) for label, n in zip(label_map, per_label)
                if label.startswith("B-") and n}
    histogram = np.bincount(window_length, minlength=int(manifest["max_seq_length"]) + 1)
    return {
        "counts": {
            "windows": int(len(sentence_id)), "tokens": int(window_length.sum()),
            "sentences": int(len(ids)), "sentences_split": int((windows_of > 1).sum()),
            "characters": int(lengths.sum()), "words": int(lengths.sum()),
            "max_sentence_length": int(lengths.max()) if len(lengths) else 0,
            "entity_words": int(per_label.sum() - (per_label[label_map.index("O")]
                                                   if "O" in label_map else 0)),
            "entities": dict(sorted(entities.items())),
        },
        "length_histogram": histogram.tolist(),
    }
