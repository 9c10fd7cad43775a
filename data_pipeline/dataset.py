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
the manifest's length histogram by `bucket_boundaries`); each bucket's batches hold
`tokens_per_batch // upper_bound` windows, so `B * T <= tokens_per_batch` unless a single window
is longer than the budget. Example with boundaries [16, 32, 64, 128] and a budget of 1024
tokens: windows of 17..32 tokens go in batches of 32, padded to the longest window of the batch.
When shuffling, the batches of a chunk are shuffled too, so lengths do not rise within a chunk.

Shards are checked against the manifest before reading (present, byte size, sha256 unless
`verify_checksums=False`); while reading, a shard that yields fewer records than the manifest
lists (a corrupt or truncated record) fails the iteration with an error naming it.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

import numpy as np

from data_pipeline.manifest import MANIFEST_NAME, file_sha256, load_manifest
from data_pipeline.records import FEATURES_KEY, SCALAR_FEATURES, SEQUENCE_FEATURES, feature_spec
from data_pipeline.tags import IGNORE_ID

CHAR_INDEX_PAD = -1

# Records parsed and cut into batches together. Larger chunks mean less padding and fewer
# partial batches (token budget) but more memory and a longer wait for the first batch.
_CHUNK_RECORDS_BATCH_SIZE = 2048
_CHUNK_RECORDS_TOKEN_BUDGET = 4096
# A sorted chunk cut into k batches pads each to the longest of its 1/k-quantile of lengths:
# with batch_size=128, 16 batches per chunk left 7.5% padding on MSRA, 32 leave about half that.
_MIN_BATCHES_PER_CHUNK = 32
_MAX_INTERLEAVE_CYCLE = 16
_READ_BUFFER_BYTES = 1 << 20
_READ_BLOCK_RECORDS = 64


class ShardError(ValueError):
    """A shard does not match the manifest (missing, wrong size, wrong checksum)."""


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


def bucket_boundaries(length_histogram: Sequence[int], *, max_buckets: int = 16,
                      target_padding: float = 0.05) -> list[int]:
    """Chooses bucket upper bounds from a length histogram so that padding stays small.

    Finds, by dynamic programming, the boundaries that minimise the padding of batches padded to
    their bucket's upper bound (an upper bound of the real padding, which pads to the longest
    window of each batch), using the fewest buckets whose padding share is <= target_padding
    (or `max_buckets` if none reaches it).

    Args:
      length_histogram: c[i] = number of windows with i tokens.
      max_buckets: most buckets to use.
      target_padding: padding tokens / all tokens at which to stop adding buckets.

    Returns:
      Increasing inclusive upper bounds; the last is the longest length with a nonzero count.
      [] for an empty histogram.
    """
    counts = np.asarray(length_histogram, dtype=np.float64)
    lengths = np.nonzero(counts)[0]
    if lengths.size == 0:
        return []
    c = counts[lengths]
    cum_count = np.concatenate([[0.0], np.cumsum(c)])
    cum_tokens = np.concatenate([[0.0], np.cumsum(c * lengths)])
    real_tokens = cum_tokens[-1]
    m = lengths.size
    # cost[i, j]: padding of the bucket holding lengths[i..j] (inclusive) padded to lengths[j].
    i_idx, j_idx = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    cost = (lengths[j_idx] * (cum_count[j_idx + 1] - cum_count[i_idx])
            - (cum_tokens[j_idx + 1] - cum_tokens[i_idx]))
    cost = np.where(j_idx >= i_idx, cost, np.inf)
    best = cost[0].copy()  # best[j]: least padding of lengths[0..j] in at most k buckets
    # choices[k - 2][j]: where the last bucket of the best <= k-bucket solution for lengths[0..j]
    # starts, or -1 when k - 1 buckets do as well.
    choices = []
    for _ in range(1, max(1, max_buckets)):
        padding = best[-1]
        if padding / (padding + real_tokens) <= target_padding:
            break
        # total[i, j] = best[i - 1] + cost[i, j] for a last bucket starting at i >= 1
        total = np.full((m, m), np.inf)
        total[1:] = best[:-1, None] + cost[1:]
        start = np.argmin(total, axis=0)
        new_best = total[start, np.arange(m)]
        improved = new_best < best
        choices.append(np.where(improved, start, -1))
        best = np.where(improved, new_best, best)
    bounds = []
    j = m - 1
    for choice in reversed(choices):
        bounds.append(int(lengths[j]))
        start = choice[j]
        if start < 0:  # this k did not improve on k-1 buckets at j: keep going down
            bounds.pop()
            continue
        j = start - 1
    bounds.append(int(lengths[j]))
    return sorted(set(bounds))


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
      bucket_upper_bounds: overrides the boundaries that `bucket_boundaries` derives from the
        manifest's length histogram (used with tokens_per_batch).

    Returns:
      A `tf.data.Dataset` of dicts as in the module docstring (int32; [B, T] and [B]).

    Raises:
      ValueError: a bad argument or combination (the message names it), an unknown split.
      ShardError: a shard missing or differing from the manifest (named in the message).
      During iteration, tf.errors.InvalidArgumentError "shard PATH is corrupt or truncated".
    """
    import tensorflow as tf

    manifest = load_manifest(manifest_path_or_dir)
    manifest_path = pathlib.Path(manifest["directory"]) / MANIFEST_NAME
    splits = manifest["splits"]
    if split not in splits:
        raise ValueError(f"split={split!r} is not in manifest {manifest_path}; "
                         f"available splits: {sorted(splits)}")
    split_info = splits[split]
    max_seq_length = int(manifest["max_seq_length"])
    histogram = list(split_info.get("length_histogram") or [])
    longest = max((i for i, c in enumerate(histogram) if c), default=max_seq_length)

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

    fixed_length = None
    if not bucketing:
        fixed_length = int(pad_to_length or max_seq_length)
        if longest > fixed_length:
            raise ValueError(f"pad_to_length={fixed_length} is shorter than the longest window "
                             f"({longest} tokens) of split {split!r}; windows are never truncated")

    if tokens_per_batch is None:
        upper_bounds = [max(longest, 1)]
        bucket_sizes = [int(batch_size)]
    elif fixed_length is not None:
        upper_bounds = [fixed_length]
        bucket_sizes = [tokens_per_batch // fixed_length]
        if bucket_sizes[0] < 1:
            raise ValueError(f"tokens_per_batch={tokens_per_batch} is smaller than the padded "
                             f"length {fixed_length}: not even one window fits")
    else:
        if bucket_upper_bounds is not None:
            upper_bounds = sorted(int(b) for b in bucket_upper_bounds)
            if not upper_bounds or upper_bounds[-1] < longest:
                raise ValueError(f"bucket_upper_bounds={list(bucket_upper_bounds)} must end at or "
                                 f"above the longest window ({longest} tokens)")
        else:
            upper_bounds = bucket_boundaries(histogram) or [max_seq_length]
        bucket_sizes = [max(1, tokens_per_batch // bound) for bound in upper_bounds]

    if len(bucket_sizes) == 1:  # a multiple of the batch size: only an epoch's last is partial
        target = _CHUNK_RECORDS_BATCH_SIZE if batch_size else _CHUNK_RECORDS_TOKEN_BUDGET
        chunk_records = bucket_sizes[0] * max(_MIN_BATCHES_PER_CHUNK if bucketing else 1,
                                              round(target / bucket_sizes[0]))
    else:
        chunk_records = max(_CHUNK_RECORDS_TOKEN_BUDGET, 4 * max(bucket_sizes))

    shards = list(split_info.get("shards") or [])
    if not shards:
        raise ValueError(f"split {split!r} of manifest {manifest_path} lists no shards")
    num_pipelines = input_context.num_input_pipelines if input_context is not None else 1
    pipeline_id = input_context.input_pipeline_id if input_context is not None else 0
    shard_by_file = num_pipelines > 1 and len(shards) >= num_pipelines
    if shard_by_file:
        shards = shards[pipeline_id::num_pipelines]
    files = check_shards(manifest, shards, verify_checksums=verify_checksums)

    feature_dim = None
    if manifest.get("features"):
        feature_dim = int(manifest["features"]["dim"])
        if manifest["features"].get("dtype", "float16") != "float16":
            raise ValueError(f"manifest {manifest_path}: feature dtype "
                             f"{manifest['features'].get('dtype')!r} is not float16")
    compression = manifest.get("compression") or ""
    if compression not in ("", "GZIP", "ZLIB"):
        raise ValueError(f"manifest {manifest_path}: unknown compression {compression!r}")
    pad_token_id = int(manifest["tokenizer"].get("pad_token_id", 0))
    # Record-level sharding needs every pipeline to see the same record order.
    deterministic = (seed is not None or not shuffle) or (num_pipelines > 1 and not shard_by_file)

    expected_records = [int(entry["records"]) for entry in shards]
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(files, tf.string), tf.constant(expected_records, tf.int64)))
    if shuffle and (num_pipelines == 1 or shard_by_file):
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        lambda path, records: _read_shard_blocks(path, records, compression),
        cycle_length=min(len(files), _MAX_INTERLEAVE_CYCLE), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic).unbatch()
    if num_pipelines > 1 and not shard_by_file:
        dataset = dataset.shard(num_pipelines, pipeline_id)
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(chunk_records)
    if shuffle:
        # One stateless seed per chunk for the batch-order shuffle; new seeds every epoch.
        chunk_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip(dataset, chunk_seeds.batch(2))
    else:
        dataset = dataset.map(lambda serialized: (serialized, tf.zeros([2], tf.int64)))

    batch_chunk = _make_chunk_batcher(
        upper_bounds=upper_bounds, bucket_sizes=bucket_sizes, sort=bucketing,
        fixed_length=fixed_length, pad_token_id=pad_token_id, shuffle_batches=shuffle,
        drop_remainder=drop_remainder, feature_dim=feature_dim)
    dataset = dataset.map(batch_chunk, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=deterministic)
    dataset = dataset.unbatch()
    static_batch = batch_size if drop_remainder else None
    dataset = dataset.map(_make_batch_finisher(fixed_length, static_batch, feature_dim),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    if input_context is not None:
        options = tf.data.Options()
        # Already sharded above; a strategy must not shard again.
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF)
        dataset = dataset.with_options(options)
    return dataset


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
                " records (per the manifest) could be read"])])
        with tf.control_dependencies([check]):
            return total, tf.identity(block)

    return blocks.scan(tf.constant(0, tf.int64), count)


_TOKEN_FEATURES = SEQUENCE_FEATURES + ("attention_mask",)
_PAD_VALUES = {"label_ids": IGNORE_ID, "char_index": CHAR_INDEX_PAD}  # input_ids: pad_token_id


def _make_chunk_batcher(*, upper_bounds, bucket_sizes, sort, fixed_length, pad_token_id,
                        shuffle_batches, drop_remainder, feature_dim=None):
    """Returns the map function: a chunk of serialized records -> all its batches, padded.

    Output (nb = batches in the chunk, each batch flattened row-major to rows * T positions):
      "_tokens": RaggedTensor int32 [nb, (rows * T), 4]: the SEQUENCE_FEATURES, attention_mask
      "_scalars": RaggedTensor int32 [nb, (rows), 4]: the SCALAR_FEATURES
      "_length": int32 [nb] (T of each batch)
      "_features": RaggedTensor float16 [nb, (rows * T), F] (only with feature_dim)
    """
    import tensorflow as tf

    spec = feature_spec()
    if feature_dim is not None:
        spec[FEATURES_KEY] = tf.io.FixedLenFeature([], tf.string)
    bounds = tf.constant(upper_bounds, tf.int32)
    sizes = tf.constant(bucket_sizes, tf.int32)
    num_buckets = len(upper_bounds)
    pad_values = dict(_PAD_VALUES, input_ids=pad_token_id)

    @tf.autograph.experimental.do_not_convert
    def batch_chunk(serialized, seed):
        features = tf.io.parse_example(serialized, spec)
        if drop_remainder:  # only the last chunk of an epoch can be cut (chunk = k * B)
            keep = tf.shape(serialized)[0] // sizes[0] * sizes[0]
            features = {name: value[:keep] for name, value in features.items()}
        rows = features["input_ids"]
        lengths = tf.cast(rows.row_lengths(), tf.int32)  # [n]
        n = tf.shape(lengths)[0]
        checks = [tf.debugging.assert_equal(
            features[name].row_splits, rows.row_splits,
            message=f"a record's {name} and input_ids differ in length") for name in
            SEQUENCE_FEATURES[1:]]
        if fixed_length is not None:
            checks.append(tf.debugging.assert_less_equal(
                lengths, fixed_length,
                message=f"a window is longer than the fixed padded length {fixed_length}"))
        with tf.control_dependencies(checks):
            order = tf.argsort(lengths, stable=True) if sort else tf.range(n)
        lengths = tf.gather(lengths, order)

        # Bucket of each row, and its batch: batches of bucket b hold sizes[b] rows.
        if num_buckets == 1:
            bucket = tf.zeros([n], tf.int32)
        else:
            bucket = tf.minimum(tf.searchsorted(bounds, lengths, side="left", out_type=tf.int32),
                                num_buckets - 1)
        bucket_rows = tf.math.bincount(bucket, minlength=num_buckets, maxlength=num_buckets)
        bucket_first_row = tf.cumsum(bucket_rows, exclusive=True)
        bucket_batches = (bucket_rows + sizes - 1) // sizes
        bucket_first_batch = tf.cumsum(bucket_batches, exclusive=True)
        num_batches = tf.reduce_sum(bucket_batches)
        rank = tf.range(n) - tf.gather(bucket_first_row, bucket)
        batch = tf.gather(bucket_first_batch, bucket) + rank // tf.gather(sizes, bucket)  # [n]

        if shuffle_batches:  # new position of every batch; rows regrouped in that order
            new_position = tf.random.experimental.stateless_shuffle(
                tf.range(num_batches), seed=seed)
            batch = tf.gather(new_position, batch)
            regroup = tf.argsort(batch, stable=True)
            order, lengths, batch = (tf.gather(order, regroup), tf.gather(lengths, regroup),
                                     tf.gather(batch, regroup))
        batch_rows = tf.math.bincount(batch, minlength=num_batches, maxlength=num_batches)
        if fixed_length is not None:
            batch_length = tf.fill([num_batches], fixed_length)
        else:
            batch_length = tf.math.unsorted_segment_max(lengths, batch, num_batches)

        # Flat padded layout: row i becomes batch_length[batch[i]] values, rows in batch order.
        #   lengths 2, 3 in one batch (T=3):  a0 a1 PAD | b0 b1 b2
        # Taken from the chunk padded to its longest row, grid [n * width, 4] (row r's position
        # c is grid[r * width + c]), with one gather: cheaper than building it from the ragged
        # values, which needs the row of every output position.
        shape = None if fixed_length is None else [None, fixed_length]
        padded = [tf.cast(features[name].to_tensor(pad_values[name], shape=shape), tf.int32)
                  for name in SEQUENCE_FEATURES]  # [n, width] each
        width = tf.shape(padded[0])[1]
        padded.append(tf.sequence_mask(tf.cast(rows.row_lengths(), tf.int32), width,
                                       dtype=tf.int32))  # attention_mask
        grid = tf.reshape(tf.stack(padded, axis=2), [-1, len(padded)])  # [n * width, 4]
        row_start = order * width
        source = tf.ragged.range(row_start, row_start + tf.gather(batch_length, batch)).flat_values
        values_per_batch = batch_rows * batch_length
        tokens = tf.gather(grid, source)  # [sum of rows * T over batches, 4]
        scalars = [tf.cast(tf.gather(features[name], order), tf.int32)
                   for name in SCALAR_FEATURES]
        out = {}
        if feature_dim is not None:
            # Row r holds length_r * F float16 values (its real positions only); decoding with a
            # fixed length zero-pads every row to width * F, the same grid as the ids above.
            # (DecodePaddedRaw has no float16 kernel: decode the bits, then reinterpret them.)
            bits = tf.io.decode_raw(features[FEATURES_KEY], tf.uint16,
                                    fixed_length=width * feature_dim * 2)  # [n, width * F]
            floats = tf.bitcast(bits, tf.float16)
            float_grid = tf.reshape(floats, [-1, feature_dim])  # [n * width, F]
            out["_features"] = tf.RaggedTensor.from_row_lengths(  # [nb, (rows * T), F]
                tf.gather(float_grid, source), values_per_batch, validate=False)
        return dict(out, **{
            "_length": batch_length,
            "_tokens": tf.RaggedTensor.from_row_lengths(  # [nb, (rows * T), 4]
                tokens, values_per_batch, validate=False),
            "_scalars": tf.RaggedTensor.from_row_lengths(  # [nb, (rows), 4]
                tf.stack(scalars, axis=1), batch_rows, validate=False),
        })

    return batch_chunk


def _make_batch_finisher(fixed_length: int | None, static_batch: int | None,
                         feature_dim: int | None = None):
    """Returns the map function: one flat batch from `_make_chunk_batcher` -> the batch dict."""
    import tensorflow as tf

    @tf.autograph.experimental.do_not_convert
    def finish(flat):
        tokens = tf.reshape(flat["_tokens"], [-1, flat["_length"], len(_TOKEN_FEATURES)])
        tokens.set_shape([static_batch, fixed_length, len(_TOKEN_FEATURES)])  # [B, T, 4]
        scalars = flat["_scalars"]
        scalars.set_shape([static_batch, len(SCALAR_FEATURES)])  # [B, 4]
        out = dict(zip(_TOKEN_FEATURES, tf.unstack(tokens, axis=2)))
        out.update(zip(SCALAR_FEATURES, tf.unstack(scalars, axis=1)))
        if feature_dim is not None:
            features = tf.reshape(flat["_features"], [-1, flat["_length"], feature_dim])
            features.set_shape([static_batch, fixed_length, feature_dim])  # [B, T, F]
            out[FEATURES_KEY] = features
        return out

    return finish


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
