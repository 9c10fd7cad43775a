"""The tf.data input pipeline: TFRecord shards + `manifest.json` -> padded batches.

`make_dataset` reads one split of a preprocessed corpus and yields dicts of int32 tensors
(the batch layout of `interfaces.md`):

    input_ids       [B, T]  padded with the tokenizer's pad id
    attention_mask  [B, T]  1 on real tokens (special tokens included), 0 on padding
    label_ids       [B, T]  IGNORE_ID (-100) on special tokens, non-first pieces and padding
    char_index      [B, T]  character index of labelled pieces, else -1 (padding included)
    sentence_id, window_start, window_end, sentence_length   [B]
    features        [B, T, F] float16, 0 on padding: only for a feature cache (a manifest with
                    a "features" entry, see `trainer/feature_cache.py`), the frozen encoder's
                    output stored for the real positions of each window

How a batch is made, all of it vectorised (no per-example Python or tf.data function call):

    shard files --interleave--> serialized records --shuffle--> chunks of C records
      --parse_example (RaggedFeature), sort by length, cut into batches, pad--> one chunk of
      batches --unbatch--> batches --prefetch-->

Length bucketing sorts each chunk by length before cutting it, so a batch holds windows of
nearly equal length. With `batch_size`, every batch but the last of an epoch has exactly
`batch_size` windows (the chunk size is a multiple of it). With `tokens_per_batch`, a window
goes to the bucket whose upper bound is the first boundary >= its length (boundaries chosen from
the manifest's length histogram by `batching.bucket_boundaries`); each bucket's batches hold
`tokens_per_batch // upper_bound` windows, so `B * T <= tokens_per_batch` unless a single window
is longer than the budget. Example with boundaries [16, 32, 64, 128] and a budget of 1024
tokens: windows of 17..32 tokens go in batches of 32, padded to the longest window of the batch.
When shuffling, the batches of a chunk are shuffled too, so lengths do not rise within a chunk.
The plan (buckets, batch sizes, chunk size) and the two map functions are in `batching`.

Shards are checked against the manifest before reading (present, byte size, sha256 unless
`verify_checksums=False`); while reading, a shard that yields fewer records than the manifest
lists (a corrupt or truncated record) fails the iteration with an error naming it.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any, NamedTuple, Sequence

import numpy as np

from data_pipeline.batching import (BatchPlan, make_batch_finisher, make_chunk_batcher,
                                    plan_batches)
from data_pipeline.manifest import MANIFEST_NAME, file_sha256, load_manifest

_MAX_INTERLEAVE_CYCLE = 16
_READ_BUFFER_BYTES = 1 << 20
_READ_BLOCK_RECORDS = 64


class ShardError(ValueError):
    """A shard does not match the manifest (missing, wrong size, wrong checksum)."""


def op_error_line(error) -> str:
    """The first line of a TensorFlow op error, without the wrappers tf.data adds around it.

    '{{function_node __wrapped__IteratorGetNext_...}} assertion failed: [shard X is corrupt ...]'
    -> 'shard X is corrupt ...'; '... corrupted record at 12 [Op:IteratorGetNext] name: ' ->
    '... corrupted record at 12'.
    """
    lines = str(getattr(error, "message", None) or error).strip().splitlines()
    line = lines[0] if lines else type(error).__name__
    line = re.sub(r"^(\{\{function_node [^}]*\}\}\s*)+", "", line)
    line = re.sub(r"\s*\[Op:[^\]]*\].*$", "", line)
    assertion = re.fullmatch(r"assertion failed: \[(.*)\]", line)
    return assertion[1] if assertion else line


def check_shards(manifest: dict[str, Any], shards: Sequence[dict[str, Any]], *,
                 verify_checksums: bool = True) -> list[str]:
    """Checks shard files against their manifest entries, before anything reads them.

    Args:
      manifest: from `manifest.load_manifest` (its "directory" holds the shards).
      shards: manifest entries {"file", "records", "bytes", "sha256"} of the shards to check.
      verify_checksums: also hash every file and compare with "sha256" (catches any flipped
        byte, so a corrupt record cannot reach the reader unnoticed).

    Returns:
      The shard paths (str), in the given order.

    Raises:
      ShardError: naming the shard file and what differs (missing, size, sha256).
    """
    root = pathlib.Path(manifest["directory"])
    paths = []
    for entry in shards:
        path = root / entry["file"]
        where = f"shard {entry['file']} ({path}, listed in {root / MANIFEST_NAME})"
        if not path.is_file():
            raise ShardError(f"{where} is missing")
        if "records" not in entry:
            raise ShardError(f"{where}: the manifest entry lacks its record count 'records'")
        size = path.stat().st_size
        if "bytes" in entry and size != int(entry["bytes"]):
            raise ShardError(f"{where} has {size} bytes but the manifest says {entry['bytes']}: "
                             "truncated or rewritten after preprocessing")
        if verify_checksums:
            digest = file_sha256(path)
            if digest != entry.get("sha256"):
                raise ShardError(f"{where} has sha256 {digest} but the manifest says "
                                 f"{entry.get('sha256')}: the shard is corrupt or was rewritten")
        paths.append(str(path))
    return paths


def make_dataset(manifest_path_or_dir: str | os.PathLike, split: str, *,
                 batch_size: int | None = None, tokens_per_batch: int | None = None,
                 bucketing: bool = True, shuffle: bool = False, shuffle_buffer: int = 10000,
                 seed: int | None = None, repeat: bool = False, input_context=None,
                 drop_remainder: bool = False, pad_to_length: int | None = None,
                 verify_checksums: bool = True,
                 bucket_upper_bounds: Sequence[int] | None = None):
    """Builds the tf.data pipeline for one split of a preprocessed corpus.

    Args:
      manifest_path_or_dir: `manifest.json` or the directory holding it.
      split: a split of the manifest, e.g. "train".
      batch_size: windows per batch (the size of the batches this dataset yields; with
        `tf.distribute`, pass `input_context.get_per_replica_batch_size(global_batch_size)`).
        Exactly one of batch_size / tokens_per_batch.
      tokens_per_batch: token budget per batch: B * T <= tokens_per_batch (a single window
        longer than the budget makes a batch of one).
      bucketing: True: batches of windows of similar length, padded to their longest window.
        False: every batch padded to `pad_to_length`, or to the manifest's max_seq_length.
      shuffle, shuffle_buffer, seed: shuffle shard order, records (buffer of shuffle_buffer
        records) and batch order, reshuffled every epoch. With a seed the order is deterministic.
        Without shuffle the order is deterministic too (shards in manifest order, interleaved).
      repeat: repeat forever (epochs run into each other, so no partial batches).
      input_context: `tf.distribute.InputContext`; each input pipeline reads a disjoint part:
        whole shards when there are at least as many shards as pipelines, else every n-th record.
      drop_remainder: drop the last partial batch of an epoch (batch_size only); with fixed
        padding the batch shape is then static [batch_size, T].
      pad_to_length: T for fixed padding (bucketing=False); must hold the longest window.
      verify_checksums: sha256 every shard against the manifest before reading (a corrupt shard
        then fails here, naming the shard). Shard presence and size are always checked, and a
        corrupt record met while reading fails the iteration naming the shard either way.
      bucket_upper_bounds: overrides the boundaries that `batching.bucket_boundaries` derives
        from the manifest's length histogram (used with tokens_per_batch).

    Returns:
      A `tf.data.Dataset` of dicts as in the module docstring (int32; [B, T] and [B]).

    Raises:
      ValueError: a bad argument or combination (the message names it), an unknown split.
      ShardError: a shard missing or differing from the manifest (named in the message).
      During iteration, tf.errors.InvalidArgumentError "shard PATH is corrupt or truncated".
    """
    import tensorflow as tf

    manifest = load_manifest(manifest_path_or_dir)
    split_info = _split_entry(manifest, split)
    _check_arguments(batch_size=batch_size, tokens_per_batch=tokens_per_batch,
                     bucketing=bucketing, shuffle=shuffle, shuffle_buffer=shuffle_buffer,
                     drop_remainder=drop_remainder, pad_to_length=pad_to_length,
                     bucket_upper_bounds=bucket_upper_bounds)
    plan = plan_batches(split_info.get("length_histogram"),
                        max_seq_length=int(manifest["max_seq_length"]), split=split,
                        batch_size=batch_size, tokens_per_batch=tokens_per_batch,
                        bucketing=bucketing, pad_to_length=pad_to_length,
                        bucket_upper_bounds=bucket_upper_bounds)
    shards = _pipeline_shards(manifest, split_info, split, input_context,
                              verify_checksums=verify_checksums)
    feature_dim, compression = _record_format(manifest)
    pad_token_id = int(manifest["tokenizer"].get("pad_token_id", 0))
    # Record-level sharding needs every pipeline to see the same record order.
    deterministic = (seed is not None or not shuffle) or shards.by_record

    dataset = _read_records(shards, compression, shuffle=shuffle, seed=seed,
                            deterministic=deterministic)
    dataset = _chunks(dataset, plan.chunk_records, shuffle=shuffle, shuffle_buffer=shuffle_buffer,
                      seed=seed, repeat=repeat)
    dataset = _padded_batches(dataset, plan, pad_token_id=pad_token_id, shuffle=shuffle,
                              drop_remainder=drop_remainder,
                              static_batch=batch_size if drop_remainder else None,
                              feature_dim=feature_dim, deterministic=deterministic)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    if input_context is not None:
        options = tf.data.Options()
        # Already sharded above; a strategy must not shard again.
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF)
        dataset = dataset.with_options(options)
    return dataset


def _split_entry(manifest: dict[str, Any], split: str) -> dict[str, Any]:
    """The manifest's entry of `split` (a ValueError naming the splits there are if none)."""
    splits = manifest["splits"]
    if split not in splits:
        raise ValueError(f"split={split!r} is not in manifest {_manifest_file(manifest)}; "
                         f"available splits: {sorted(splits)}")
    return splits[split]


def _manifest_file(manifest: dict[str, Any]) -> pathlib.Path:
    return pathlib.Path(manifest["directory"]) / MANIFEST_NAME


def _check_arguments(*, batch_size, tokens_per_batch, bucketing, shuffle, shuffle_buffer,
                     drop_remainder, pad_to_length, bucket_upper_bounds) -> None:
    """Raises a ValueError naming a bad argument of `make_dataset`, or a bad combination."""
    if (batch_size is None) == (tokens_per_batch is None):
        raise ValueError("pass exactly one of batch_size and tokens_per_batch "
                         f"(got batch_size={batch_size}, tokens_per_batch={tokens_per_batch})")
    for name, value in (("batch_size", batch_size), ("tokens_per_batch", tokens_per_batch),
                        ("pad_to_length", pad_to_length)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if shuffle and (not isinstance(shuffle_buffer, (int, np.integer)) or shuffle_buffer < 1):
        raise ValueError(f"shuffle_buffer must be a positive int, got {shuffle_buffer!r}")
    if bucketing and pad_to_length is not None:
        raise ValueError("pad_to_length is for fixed padding: pass bucketing=False with it "
                         f"(got bucketing=True, pad_to_length={pad_to_length})")
    if drop_remainder and tokens_per_batch is not None:
        raise ValueError("drop_remainder=True needs batch_size: token-budget batches vary in size "
                         "by design, so there is no remainder to drop")
    if bucket_upper_bounds is not None and (not bucketing or tokens_per_batch is None):
        raise ValueError("bucket_upper_bounds needs bucketing=True and tokens_per_batch "
                         "(with batch_size, each chunk is sorted by length and needs no bounds)")


class _PipelineShards(NamedTuple):
    """The shards this input pipeline reads, and how the pipelines share the split."""

    files: list[str]
    records: list[int]  # per file, from the manifest
    num_pipelines: int
    pipeline_id: int
    by_record: bool  # fewer shards than pipelines: each reads every n-th record of all of them


def _pipeline_shards(manifest: dict[str, Any], split_info: dict[str, Any], split: str,
                     input_context, *, verify_checksums: bool) -> _PipelineShards:
    """This pipeline's shards: whole shards each when there are enough, else all; checked."""
    shards = list(split_info.get("shards") or [])
    if not shards:
        raise ValueError(f"split {split!r} of manifest {_manifest_file(manifest)} lists no shards")
    num_pipelines = input_context.num_input_pipelines if input_context is not None else 1
    pipeline_id = input_context.input_pipeline_id if input_context is not None else 0
    shard_by_file = num_pipelines > 1 and len(shards) >= num_pipelines
    if shard_by_file:
        shards = shards[pipeline_id::num_pipelines]
    files = check_shards(manifest, shards, verify_checksums=verify_checksums)
    return _PipelineShards(files=files, records=[int(entry["records"]) for entry in shards],
                           num_pipelines=num_pipelines, pipeline_id=pipeline_id,
                           by_record=num_pipelines > 1 and not shard_by_file)


def _record_format(manifest: dict[str, Any]) -> tuple[int | None, str]:
    """(feature dim F of a feature cache or None, TFRecord compression) from the manifest."""
    manifest_path = _manifest_file(manifest)
    feature_dim = None
    if manifest.get("features"):
        feature_dim = int(manifest["features"]["dim"])
        if manifest["features"].get("dtype", "float16") != "float16":
            raise ValueError(f"manifest {manifest_path}: feature dtype "
                             f"{manifest['features'].get('dtype')!r} is not float16")
    compression = manifest.get("compression") or ""
    if compression not in ("", "GZIP", "ZLIB"):
        raise ValueError(f"manifest {manifest_path}: unknown compression {compression!r}")
    return feature_dim, compression


def _read_records(shards: _PipelineShards, compression: str, *, shuffle: bool, seed: int | None,
                  deterministic: bool):
    """The pipeline's serialized records: its shards (shuffled) read interleaved, in blocks."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(shards.files, tf.string), tf.constant(shards.records, tf.int64)))
    if shuffle and not shards.by_record:
        dataset = dataset.shuffle(len(shards.files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        lambda path, records: _read_shard_blocks(path, records, compression),
        cycle_length=min(len(shards.files), _MAX_INTERLEAVE_CYCLE), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic).unbatch()
    if shards.by_record:
        dataset = dataset.shard(shards.num_pipelines, shards.pipeline_id)
    return dataset


def _chunks(records, chunk_records: int, *, shuffle: bool, shuffle_buffer: int,
            seed: int | None, repeat: bool):
    """Records (shuffled, repeated) -> (string [<= chunk_records], int64 [2] seed) chunks.

    The seed is the stateless seed of the chunk's batch-order shuffle (zeros without shuffle).
    """
    import tensorflow as tf

    dataset = records
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(chunk_records)
    if shuffle:
        # One stateless seed per chunk for the batch-order shuffle; new seeds every epoch.
        chunk_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        return tf.data.Dataset.zip(dataset, chunk_seeds.batch(2))
    return dataset.map(lambda serialized: (serialized, tf.zeros([2], tf.int64)))


def _padded_batches(chunks, plan: BatchPlan, *, pad_token_id: int, shuffle: bool,
                    drop_remainder: bool, static_batch: int | None, feature_dim: int | None,
                    deterministic: bool):
    """Chunks -> the batch dicts of the module docstring (each chunk cut by `plan`)."""
    import tensorflow as tf

    batch_chunk = make_chunk_batcher(
        upper_bounds=plan.upper_bounds, bucket_sizes=plan.bucket_sizes, sort=plan.sort,
        fixed_length=plan.fixed_length, pad_token_id=pad_token_id, shuffle_batches=shuffle,
        drop_remainder=drop_remainder, feature_dim=feature_dim)
    dataset = chunks.map(batch_chunk, num_parallel_calls=tf.data.AUTOTUNE,
                         deterministic=deterministic)
    dataset = dataset.unbatch()
    return dataset.map(make_batch_finisher(plan.fixed_length, static_batch, feature_dim),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def _read_shard_blocks(path, expected_records, compression: str):
    """One shard as blocks of serialized records.

    Args:
      path: string scalar tensor, the shard file.
      expected_records: int64 scalar tensor, its record count in the manifest.
      compression: "", "GZIP" or "ZLIB".

    Returns:
      A dataset of string [<= _READ_BLOCK_RECORDS] blocks (blocks, because a per-record
      interleave costs about 3x the reading itself). TensorFlow's own error for a corrupt or
      truncated record does not say which file it is in ("corrupted record at 99836"), so the
      reader stops at the first bad record, and a check after the last block fails, naming the
      shard, unless exactly `expected_records` records were read.
    """
    import tensorflow as tf

    blocks = tf.data.TFRecordDataset(path, compression_type=compression,
                                     buffer_size=_READ_BUFFER_BYTES)
    blocks = blocks.ignore_errors().batch(_READ_BLOCK_RECORDS)
    end = tf.data.Dataset.from_tensors((tf.zeros([0], tf.string), True))
    blocks = blocks.map(lambda block: (block, False)).concatenate(end)

    def count(total, block_and_end):
        block, is_end = block_and_end
        total += tf.size(block, out_type=tf.int64)
        check = tf.debugging.Assert(
            tf.logical_or(tf.logical_not(is_end), tf.equal(total, expected_records)),
            [tf.strings.join([
                "shard ", path, " is corrupt or truncated: only ", tf.strings.as_string(total),
                " of its ", tf.strings.as_string(expected_records),
                " records (per the manifest) could be read; preprocess again (`python -m "
                "data_pipeline.preprocess ... --overwrite`, or delete the trainer's data cache "
                "directory holding it)"])])
        with tf.control_dependencies([check]):
            return total, tf.identity(block)

    return blocks.scan(tf.constant(0, tf.int64), count)


def token_ids(manifest_path_or_dir: str | os.PathLike, split: str) -> np.ndarray:
    """Every input id the batches of `split` can contain: its records' ids and the pad id.

    Returns:
      int32 [K], sorted and unique.
    """
    manifest = load_manifest(manifest_path_or_dir)
    seen = [np.asarray([int(manifest["tokenizer"].get("pad_token_id", 0))], np.int64)]
    for batch in make_dataset(manifest_path_or_dir, split, batch_size=4096, shuffle=False,
                              verify_checksums=False):
        seen.append(np.unique(batch["input_ids"].numpy()))
    return np.unique(np.concatenate(seen)).astype(np.int32)


def padding_share(dataset) -> float:
    """Padding tokens / all tokens (sum of B * T) over one pass of a finite batch dataset.

    Args:
      dataset: yields dicts with "attention_mask" int32 [B, T] (as `make_dataset` does).

    Returns:
      A float in [0, 1]; 0.0 for an empty dataset.
    """
    import tensorflow as tf

    def add(totals, batch):
        mask = batch["attention_mask"]
        return (totals[0] + tf.cast(tf.size(mask), tf.int64),
                totals[1] + tf.reduce_sum(tf.cast(mask, tf.int64)))

    total, real = dataset.reduce((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), add)
    total, real = int(total), int(real)
    return (total - real) / total if total else 0.0
