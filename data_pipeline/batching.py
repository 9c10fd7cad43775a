"""How the records of a split are cut into padded batches (the layout is in `dataset`).

`plan_batches` decides it from the manifest's length histogram and `make_dataset`'s arguments:
the buckets (inclusive upper lengths, `bucket_boundaries` for a token budget), the windows per
batch of each bucket, fixed padding or not, and how many records are sorted and cut together (a
chunk). `make_chunk_batcher` and `make_batch_finisher` are the two vectorised tf.data map
functions that do it: a chunk of serialized records -> all its batches, flat; one flat batch ->
the batch dict.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from data_pipeline.records import FEATURES_KEY, SCALAR_FEATURES, SEQUENCE_FEATURES, feature_spec
from data_pipeline.tags import IGNORE_ID

CHAR_INDEX_PAD = -1

# Records parsed and cut into batches together. Larger chunks mean less padding and fewer
# partial batches (token budget) but more memory and a longer wait for the first batch.
CHUNK_RECORDS_BATCH_SIZE = 2048
CHUNK_RECORDS_TOKEN_BUDGET = 4096
# A sorted chunk cut into k batches pads each to the longest of its 1/k-quantile of lengths:
# with batch_size=128, 16 batches per chunk left 7.5% padding on MSRA, 32 leave about half that.
MIN_BATCHES_PER_CHUNK = 32


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """How the windows of a split are cut into batches.

    Attributes:
      upper_bounds: the buckets' inclusive upper lengths, increasing (one bucket with batch_size).
      bucket_sizes: windows per batch of each bucket.
      fixed_length: T of every batch with fixed padding; None: each batch is padded to its
        longest window.
      sort: sort each chunk by length before cutting it (length bucketing).
      chunk_records: records sorted and cut into batches together.
    """

    upper_bounds: list[int]
    bucket_sizes: list[int]
    fixed_length: int | None
    sort: bool
    chunk_records: int


def plan_batches(length_histogram: Sequence[int] | None, *, max_seq_length: int, split: str,
                 batch_size: int | None, tokens_per_batch: int | None, bucketing: bool,
                 pad_to_length: int | None,
                 bucket_upper_bounds: Sequence[int] | None) -> BatchPlan:
    """The `BatchPlan` for a split, from its length histogram and `make_dataset`'s arguments.

    Args:
      length_histogram: the split's manifest "length_histogram" (c[i] = windows of i tokens).
      max_seq_length: the manifest's.
      split: the split's name, for messages.
      batch_size, tokens_per_batch, bucketing, pad_to_length, bucket_upper_bounds: as given to
        `make_dataset` (already checked against each other there).

    Raises:
      ValueError: a fixed padded length or bucket bounds shorter than the longest window, or a
        token budget that does not hold one padded window.
    """
    histogram = list(length_histogram or [])
    longest = max((i for i, c in enumerate(histogram) if c), default=max_seq_length)
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
        target = CHUNK_RECORDS_BATCH_SIZE if batch_size else CHUNK_RECORDS_TOKEN_BUDGET
        chunk_records = bucket_sizes[0] * max(MIN_BATCHES_PER_CHUNK if bucketing else 1,
                                              round(target / bucket_sizes[0]))
    else:
        chunk_records = max(CHUNK_RECORDS_TOKEN_BUDGET, 4 * max(bucket_sizes))
    return BatchPlan(upper_bounds=upper_bounds, bucket_sizes=bucket_sizes,
                     fixed_length=fixed_length, sort=bucketing, chunk_records=chunk_records)


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


_TOKEN_FEATURES = SEQUENCE_FEATURES + ("attention_mask",)
_PAD_VALUES = {"label_ids": IGNORE_ID, "char_index": CHAR_INDEX_PAD}  # input_ids: pad_token_id


def make_chunk_batcher(*, upper_bounds, bucket_sizes, sort, fixed_length, pad_token_id,
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


def make_batch_finisher(fixed_length: int | None, static_batch: int | None,
                        feature_dim: int | None = None):
    """Returns the map function: one flat batch from `make_chunk_batcher` -> the batch dict."""
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
