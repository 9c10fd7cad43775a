"""The frozen-encoder feature cache: run a frozen encoder once per split, train from its output.

When every encoder group's learning rate is 0 the encoder is a fixed function of the input ids,
so its output is the same on every epoch. `ensure_feature_cache` computes it once (inference
mode, as the training step would) and stores it beside the data cache:

    <data_cache_dir>/features/<key>/manifest.json      written last: the cache is complete
                                   /train-00000-of-00006.tfrecord ...   one per data shard

Each cache record is the data record (same ids, labels, windows, same order, same shards) plus a
`features` bytes feature: float16 [n, F] row-major for the window's n real positions (special
tokens included, padding not), F = N hidden states x hidden size concatenated (N = 1 for
`--hidden_layers=last`, else `--num_hidden_layers_used`: the combiner's inputs, so concat, mean
and the learned scalar mix all train from the same cache). The cache manifest is the data
manifest with its own shard list (records, bytes, sha256) and a "features" entry, so
`make_dataset` reads it the same way and yields a `features` [B, T, F] tensor; with the same
seed a cached run sees exactly the batches of an uncached one. Dropout on the encoder output
runs after the cache (in `Tagger.tag`), so caching does not change the model being trained;
only float16 rounding of the features does (relative error <= 2**-11 per value; exact for an
encoder that ran in bf16, whose values float16 holds exactly unless tiny or beyond 65504).

The key is a hash of what the features depend on: the encoder's weight values (after any
checkpoint restore), its class and hidden size, the number of hidden states kept, the compute
dtype, the data shards' sha256 (which cover the tokenizer and windowing) and the cache format.
Change one of them and a new cache is built. Building writes into `.<key>.partial/`: a finished
shard is renamed into place and recorded (size, sha256) in `<shard>.done.json`, so a build killed
at any moment restarts at the first unfinished shard; only the complete directory is renamed to
`<key>`, after its manifest is written, so a partial cache is never read as complete.

Size: float16 x real tokens x F. People's Daily proxy train (1.95 M tokens) with the last-4
concat of a 384-wide encoder (F = 1536) is about 5.7 GiB; `--hidden_layers=last` (F = 384) about
1.4 GiB. Memory stays bounded: shards are built in blocks of `BLOCK_WINDOWS` windows and read
back as a stream (the training shuffle buffer holds `--shuffle_buffer` records).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import time
from typing import Callable

import numpy as np

from data_pipeline.dataset import check_shards
from data_pipeline.manifest import (MANIFEST_NAME, file_sha256, load_manifest,
                                    write_json_atomic)
from data_pipeline.records import FEATURES_KEY, append_bytes_feature, feature_spec

FORMAT_VERSION = 1
PAYLOAD_DTYPE = "float16"
FEATURES_SUBDIR = "features"
BLOCK_WINDOWS = 1024  # windows read, encoded (sorted by length) and written together
_BATCH_TOKENS = 8192  # padded tokens per encoder call while building
_FLOAT16_MAX = 65504.0


class FeatureCacheError(RuntimeError):
    """The encoder's output cannot be cached (e.g. values beyond float16's range)."""


def weights_digest(variables) -> str:
    """sha256 over the shapes, dtypes and values of `variables` (tf.Variables), in order.

    Names are left out: Keras makes them unique per process ("tagger_1/..."), so the same
    weights in a second model would otherwise hash differently.
    """
    digest = hashlib.sha256()
    for index, variable in enumerate(variables):
        value = np.ascontiguousarray(variable.numpy())
        digest.update(f"{index}|{value.shape}|{value.dtype}|".encode())
        digest.update(memoryview(value).cast("B"))
    return digest.hexdigest()


def cache_inputs(model, data_manifest: dict) -> dict:
    """Everything the cached features depend on (hashed into the cache key)."""
    splits = data_manifest["splits"]
    return {
        "format_version": FORMAT_VERSION,
        "payload_dtype": PAYLOAD_DTYPE,
        "encoder_class": type(getattr(model.encoder, "transformer", model.encoder)).__name__,
        "encoder_weights": weights_digest(model.encoder.weights),
        "hidden_size": int(model.encoder.output_dim),
        "num_hidden_states": int(model.combiner.num_layers),
        "compute_dtype": str(model.compute_dtype),
        "data_shards": {split: [shard["sha256"] for shard in splits[split]["shards"]]
                        for split in sorted(splits)},
    }


def cache_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def encoder_function(model):
    """What the cache stores, compiled: a tf.function (input_ids, attention_mask int32 [B, T])
    -> `model.cache_features` as float16 [B, T, F], traced once (any B and T)."""
    import tensorflow as tf

    def encode(input_ids, attention_mask):
        features = model.cache_features(input_ids, attention_mask)
        return tf.cast(tf.cast(features, tf.float32), tf.float16)

    return tf.function(encode, autograph=False,
                       input_signature=[tf.TensorSpec([None, None], tf.int32)] * 2)


def encode_block(encode, serialized: list[bytes], pad_token_id: int,
                 on_batch: Callable[[int], None] | None = None) -> list[bytes]:
    """Cache records for one block of data records, in the block's order: the build's work per
    block, reading and writing the shards aside (benchmarks/bench_encoder_training.py times it).

    Windows are encoded sorted by length in batches of about `_BATCH_TOKENS` padded tokens, so
    padding costs little; the output keeps the input order.

    Args:
      encode: `encoder_function(model)`.
      serialized: data records (serialized tf.train.Example), e.g. 1,024 of one shard.
      pad_token_id: pads each batch's windows to its longest.
      on_batch: called with the number of windows of each batch encoded (progress within a
        block).

    Returns:
      The records, each with a `features` entry (float16 [n, F] bytes), in `serialized`'s order.
    """
    import tensorflow as tf

    parsed = tf.io.parse_example(tf.constant(serialized), feature_spec())
    ids = parsed["input_ids"]
    lengths = ids.row_lengths().numpy()
    dense_ids = ids.to_tensor(pad_token_id).numpy().astype(np.int32)  # [n, width]
    order = np.argsort(lengths, kind="stable")
    out: list[bytes | None] = [None] * len(serialized)
    start = 0
    while start < len(order):
        # Sorted ascending: a batch's longest window is its last one; grow it while it fits.
        end = start + 1
        while end < len(order) and (end + 1 - start) * lengths[order[end]] <= _BATCH_TOKENS:
            end += 1
        rows = order[start:end]
        width = int(lengths[rows[-1]])
        batch_ids = dense_ids[rows, :width]
        mask = (np.arange(width)[None, :] < lengths[rows][:, None]).astype(np.int32)
        features = encode(tf.constant(batch_ids), tf.constant(mask)).numpy()  # [b, width, F]
        if not np.all(np.isfinite(features)):
            raise FeatureCacheError(
                "the encoder's output is not finite in float16 (a value beyond +-65504 or a "
                "NaN); train with --nofeature_cache")
        for row, features_row in zip(rows, features):
            payload = np.ascontiguousarray(features_row[:lengths[row]]).tobytes()
            out[row] = append_bytes_feature(serialized[row], FEATURES_KEY, payload)
        start += len(rows)
        if on_batch is not None:
            on_batch(len(rows))
    return out  # type: ignore[return-value]


def _build_shard(encode, source: pathlib.Path, compression: str, target: pathlib.Path,
                 pad_token_id: int, on_windows: Callable[[int], None],
                 on_batch: Callable[[int], None] | None = None) -> None:
    """Writes the cache shard for one data shard (to `target`.partial, renamed when done).
    `on_windows` is called per block written, `on_batch` per encoder batch."""
    import tensorflow as tf

    partial = target.with_name(target.name + ".partial")
    records = tf.data.TFRecordDataset(str(source), compression_type=compression)
    with tf.io.TFRecordWriter(str(partial)) as writer:
        for block in records.batch(BLOCK_WINDOWS):
            serialized = [bytes(x) for x in block.numpy()]
            for record in encode_block(encode, serialized, pad_token_id, on_batch):
                writer.write(record)
            on_windows(len(serialized))
    with open(partial, "rb+") as stream:
        os.fsync(stream.fileno())
    os.replace(partial, target)


def ensure_feature_cache(model, data_manifest_dir: str | os.PathLike,
                         cache_root: str | os.PathLike, *,
                         log: Callable[[str], None] = print,
                         progress: bool = False,
                         progress_tty: bool | None = None,
                         on_windows: Callable[[int], None] | None = None) -> str:
    """Returns the directory of the feature cache for `model` and the data, building it if needed.

    Args:
      model: a built `models.Tagger` whose encoder is frozen (its weights final: call this after
        restoring a checkpoint).
      data_manifest_dir: the preprocessed shards + manifest.json the cache is made from.
      cache_root: where caches live, one sub-directory per key (e.g. data_cache/features).
      log: receives one-line messages (reuse, build, size on disk).
      progress: report progress (windows done / total, ETA) while building: a bar redrawn on a
        terminal, else a log line at the first encoder batch, every 30 s and at the end.
      progress_tty: whether the progress is a terminal bar; None: when stderr is a terminal,
        False: plain log lines.
      on_windows: called with the number of windows of each block built (not for shards a
        killed build had finished; tests use it to kill a build at a chosen moment).

    Returns:
      The cache directory (holding manifest.json), readable by `make_dataset`.

    Raises:
      FeatureCacheError: the features do not fit float16.
    """
    data_manifest = load_manifest(data_manifest_dir)
    inputs = cache_inputs(model, data_manifest)
    key = cache_key(inputs)
    root = pathlib.Path(cache_root)
    target = root / key
    if (target / MANIFEST_NAME).is_file():
        size = load_manifest(target)["features"]["bytes"]
        log(f"feature cache: reusing {target} ({size / 2**30:.2f} GiB)")
        return str(target)
    staging = root / f".{key}.partial"
    staging.mkdir(parents=True, exist_ok=True)
    write_json_atomic(staging / "inputs.json", inputs)
    splits = data_manifest["splits"]
    total = sum(int(shard["records"]) for split in splits.values() for shard in split["shards"])
    log(f"feature cache: building {target} (F = {model.cached_feature_dim} float16 per real "
        f"token, {total} windows)")
    bar = None
    if progress:
        from trainer.progress import ProgressBar

        bar = ProgressBar(total, description="feature cache", unit="window", is_tty=progress_tty)
    done = 0

    def count(windows: int, *, built: bool = True) -> None:
        nonlocal done
        if not built:  # shards a killed build had finished (built blocks count per batch)
            done += windows
            if bar is not None:
                bar.update(done)
        if on_windows is not None and built:
            on_windows(windows)

    def count_batch(windows: int) -> None:
        nonlocal done
        done += windows
        if bar is not None:
            bar.update(done)

    encode = encoder_function(model)
    compression = data_manifest.get("compression") or ""
    pad_token_id = int(data_manifest["tokenizer"].get("pad_token_id", 0))
    source_dir = pathlib.Path(data_manifest["directory"])
    started = time.time()
    new_splits = {}
    try:
        for split_name, split in splits.items():
            entries = []
            for shard in split["shards"]:
                shard_path = staging / shard["file"]
                marker = staging / (shard["file"] + ".done.json")
                entry = None
                if marker.is_file() and shard_path.is_file():
                    entry = json.loads(marker.read_text())
                    if (shard_path.stat().st_size != entry["bytes"]
                            or file_sha256(shard_path) != entry["sha256"]):
                        entry = None  # not what was recorded: build it again
                if entry is None:
                    # The data shard must be what its manifest says (a corrupt one is named
                    # here, not cached as features).
                    check_shards(data_manifest, [shard])
                    _build_shard(encode, source_dir / shard["file"], compression, shard_path,
                                 pad_token_id, count, count_batch)
                    entry = {"file": shard["file"], "records": int(shard["records"]),
                             "bytes": shard_path.stat().st_size,
                             "sha256": file_sha256(shard_path)}
                    write_json_atomic(marker, entry)
                else:
                    count(int(shard["records"]), built=False)  # finished before a restart
                entries.append(entry)
            new_splits[split_name] = dict(split, shards=entries)
    finally:
        if bar is not None:
            bar.close()
    size = sum(entry["bytes"] for split in new_splits.values() for entry in split["shards"])
    manifest = {name: value for name, value in data_manifest.items() if name != "directory"}
    manifest.update(compression="", splits=new_splits, features={
        "dim": int(model.cached_feature_dim), "dtype": PAYLOAD_DTYPE,
        "num_hidden_states": inputs["num_hidden_states"], "hidden_size": inputs["hidden_size"],
        "bytes": size, "key": key, "inputs": inputs,
        "data_manifest": str(source_dir / MANIFEST_NAME)})
    for marker in staging.glob("*.done.json"):
        marker.unlink()
    write_json_atomic(staging / MANIFEST_NAME, manifest)
    try:
        os.rename(staging, target)
    except OSError:
        if not (target / MANIFEST_NAME).is_file():
            raise
        shutil.rmtree(staging, ignore_errors=True)  # another process finished it first
    log(f"feature cache: {total} windows in {time.time() - started:.0f} s, "
        f"{size / 2**30:.2f} GiB on disk in {target}")
    return str(target)
