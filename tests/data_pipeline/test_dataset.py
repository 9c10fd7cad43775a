"""Tests of the tf.data input pipeline (`dataset`, `batching`) on small synthetic shards."""

import hashlib
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from data_pipeline import batching
from data_pipeline.batching import bucket_boundaries
from data_pipeline.dataset import ShardError, make_dataset, padding_share
from data_pipeline.records import encode_example
from data_pipeline.tags import IGNORE_ID

PAD_ID = 1
MAX_SEQ_LENGTH = 64


def window_contents(index: int, length: int) -> dict:
    """The record number `index` with `length` tokens: `<s> pieces </s>`, contents from index.

    Two windows per sentence: sentence_id = index // 2, window_start 0 or 10.
    """
    pieces = length - 2
    window_start = 10 * (index % 2)
    return {
        "input_ids": [0] + [5 + (index * 31 + j) % 997 for j in range(pieces)] + [2],
        "label_ids": [IGNORE_ID] + [(index + j) % 5 for j in range(pieces)] + [IGNORE_ID],
        "char_index": [-1] + [window_start + j for j in range(pieces)] + [-1],
        "sentence_id": index // 2,
        "window_start": window_start,
        "window_end": window_start + pieces,
        "sentence_length": 10 + pieces,
    }


def write_split(directory: pathlib.Path, lengths, *, split: str = "train", num_shards: int = 3,
                compression: str = "", manifest: dict | None = None) -> dict:
    """Writes `lengths` as windows (see `window_contents`) to shards and adds them to a manifest.

    Returns:
      {(sentence_id, window_start): contents} of every record written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path = directory / "manifest.json"
    if manifest is None:
        manifest = (json.loads(manifest_path.read_text()) if manifest_path.exists() else {
            "format_version": 1, "label_map": ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"],
            "max_seq_length": MAX_SEQ_LENGTH, "stride": 8, "compression": compression,
            "tokenizer": {"name": "test", "fingerprint": "0", "pad_token_id": PAD_ID,
                          "unk_token_id": 3},
            "splits": {}})
    options = tf.io.TFRecordOptions(compression_type=compression)
    expected = {}
    histogram = [0] * (MAX_SEQ_LENGTH + 1)
    names = [f"{split}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(str(directory / name), options) for name in names]
    records = [0] * num_shards
    for index, length in enumerate(lengths):
        contents = window_contents(index, int(length))
        writers[index % num_shards].write(encode_example(**contents))
        records[index % num_shards] += 1
        expected[(contents["sentence_id"], contents["window_start"])] = contents
        histogram[int(length)] += 1
    shards = []
    for writer, name, count in zip(writers, names, records):
        writer.close()
        data = (directory / name).read_bytes()
        shards.append({"file": name, "records": count, "bytes": len(data),
                       "sha256": hashlib.sha256(data).hexdigest()})
    manifest["splits"][split] = {
        "counts": {"sentences": len(lengths) // 2, "windows": len(lengths),
                   "tokens": int(sum(lengths))},
        "length_histogram": histogram, "shards": shards}
    manifest_path.write_text(json.dumps(manifest))
    return expected


def lengths_like_corpus(n: int, seed: int = 0) -> np.ndarray:
    """A skewed length distribution like real NER windows: many short, a tail to the maximum."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.gamma(2.0, 10.0, n).astype(int) + 3, 3, MAX_SEQ_LENGTH)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    expected = write_split(directory, lengths_like_corpus(700), split="train")
    expected_dev = write_split(directory, lengths_like_corpus(50, seed=1), split="dev",
                               num_shards=1)
    return directory, expected, expected_dev


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of ~64 records, so the few hundred test records span several chunks."""
    monkeypatch.setattr(batching, "CHUNK_RECORDS_BATCH_SIZE", 64)
    monkeypatch.setattr(batching, "MIN_BATCHES_PER_CHUNK", 2)
    monkeypatch.setattr(batching, "CHUNK_RECORDS_TOKEN_BUDGET", 96)


def collect(dataset) -> list[dict]:
    return [{name: value.numpy() for name, value in batch.items()} for batch in dataset]


def check_batches(batches, expected, *, pad_id=PAD_ID):
    """Asserts every expected record comes out exactly once, with its contents and padding."""
    seen = set()
    for batch in batches:
        for name, value in batch.items():
            assert value.dtype == np.int32, name
        mask = batch["attention_mask"]
        for row in range(mask.shape[0]):
            key = (int(batch["sentence_id"][row]), int(batch["window_start"][row]))
            assert key not in seen, f"record {key} came out twice"
            seen.add(key)
            want = expected[key]
            n = len(want["input_ids"])
            np.testing.assert_array_equal(mask[row], [1] * n + [0] * (mask.shape[1] - n))
            for name, pad in (("input_ids", pad_id), ("label_ids", IGNORE_ID),
                              ("char_index", -1)):
                np.testing.assert_array_equal(batch[name][row, :n], want[name], err_msg=name)
                assert (batch[name][row, n:] == pad).all(), f"{name} padding of {key}"
            for name in ("window_end", "sentence_length"):
                assert batch[name][row] == want[name], name
    assert seen == set(expected), f"{len(set(expected) - seen)} records missing"


@pytest.mark.parametrize("kwargs", [
    dict(batch_size=16),
    dict(batch_size=16, shuffle=True, seed=3),
    dict(batch_size=16, bucketing=False),
    dict(batch_size=16, bucketing=False, pad_to_length=MAX_SEQ_LENGTH + 6, shuffle=True),
    dict(tokens_per_batch=300),
    dict(tokens_per_batch=300, shuffle=True, repeat=False),
], ids=lambda kwargs: ",".join(f"{k}={v}" for k, v in kwargs.items()))
def test_every_record_once_with_contents_and_padding(corpus, small_chunks, kwargs):
    directory, expected, _ = corpus
    batches = collect(make_dataset(directory, "train", **kwargs))
    check_batches(batches, expected)
    if not kwargs.get("bucketing", True):
        width = kwargs.get("pad_to_length", MAX_SEQ_LENGTH)
        assert {b["input_ids"].shape[1] for b in batches} == {width}


def test_gzip_shards_and_manifest_file_path(tmp_path, small_chunks):
    expected = write_split(tmp_path, lengths_like_corpus(100), num_shards=2, compression="GZIP")
    batches = collect(make_dataset(tmp_path / "manifest.json", "train", batch_size=8))
    check_batches(batches, expected)


def test_batch_size_shapes_and_drop_remainder(corpus, small_chunks):
    directory, expected, _ = corpus
    sizes = [b["input_ids"].shape[0] for b in collect(
        make_dataset(directory, "train", batch_size=16, shuffle=True, seed=0))]
    assert sum(sizes) == len(expected)
    assert sorted(sizes)[1:] == [16] * (len(sizes) - 1)  # one partial batch at most

    dropped = make_dataset(directory, "train", batch_size=16, bucketing=False,
                           drop_remainder=True)
    assert dropped.element_spec["input_ids"].shape.as_list() == [16, MAX_SEQ_LENGTH]
    assert dropped.element_spec["sentence_id"].shape.as_list() == [16]
    batches = collect(dropped)
    assert len(batches) == len(expected) // 16
    keys = {(s, w) for b in batches for s, w in zip(b["sentence_id"], b["window_start"])}
    assert len(keys) == len(expected) // 16 * 16

    bucketed = collect(make_dataset(directory, "train", batch_size=16, drop_remainder=True))
    assert [b["input_ids"].shape[0] for b in bucketed] == [16] * (len(expected) // 16)


def test_seed_gives_the_same_order_and_epochs_differ(corpus, small_chunks):
    directory, _, _ = corpus

    def order(dataset):
        return np.concatenate([b["sentence_id"] * 100 + b["window_start"] for b in collect(
            dataset)])

    first = make_dataset(directory, "train", batch_size=16, shuffle=True, seed=7)
    again = make_dataset(directory, "train", batch_size=16, shuffle=True, seed=7)
    epoch_1 = order(first)
    np.testing.assert_array_equal(epoch_1, order(again))
    assert not np.array_equal(epoch_1, order(first))  # reshuffled each epoch
    unshuffled = make_dataset(directory, "train", batch_size=16)
    np.testing.assert_array_equal(order(unshuffled), order(unshuffled))

    # Repeated, the stream is the same across dataset objects, so a resumed run can skip to
    # where it stopped (the trainer does this).
    def repeated():
        return make_dataset(directory, "train", batch_size=16, shuffle=True, seed=7,
                            repeat=True)
    stream = order(repeated().take(100))  # 700 windows per epoch: crosses two epoch ends
    assert len(stream) == 1600
    np.testing.assert_array_equal(order(repeated().skip(60).take(40)), stream[60 * 16:])


def test_bucketing_keeps_padding_small(tmp_path):
    lengths = lengths_like_corpus(3000, seed=5)
    write_split(tmp_path, lengths, num_shards=2)
    fixed = padding_share(make_dataset(tmp_path, "train", batch_size=32, bucketing=False))
    bucketed = padding_share(make_dataset(tmp_path, "train", batch_size=32, shuffle=True,
                                          seed=0))
    budget = padding_share(make_dataset(tmp_path, "train", tokens_per_batch=1024,
                                        shuffle=True, seed=0))
    real = lengths.sum()
    assert fixed == pytest.approx(1 - real / (len(lengths) * MAX_SEQ_LENGTH))
    assert bucketed <= 0.05 and budget <= 0.10, (bucketed, budget)
    assert fixed > 0.5


def test_token_budget_is_respected(tmp_path, small_chunks):
    lengths = np.concatenate([lengths_like_corpus(400, seed=2), [MAX_SEQ_LENGTH] * 5])
    expected = write_split(tmp_path, lengths, num_shards=2)
    budget = 60  # shorter than the longest windows: those come one per batch
    batches = collect(make_dataset(tmp_path, "train", tokens_per_batch=budget, shuffle=True,
                                   seed=1))
    check_batches(batches, expected)
    for batch in batches:
        rows, width = batch["input_ids"].shape
        assert rows * width <= budget or rows == 1, (rows, width)
    assert any(b["input_ids"].shape == (1, MAX_SEQ_LENGTH) for b in batches)

    bounds = [16, 32, MAX_SEQ_LENGTH]
    for batch in collect(make_dataset(tmp_path, "train", tokens_per_batch=256,
                                      bucket_upper_bounds=bounds)):
        rows, width = batch["input_ids"].shape
        bound = bounds[np.searchsorted(bounds, width)]
        assert rows <= max(1, 256 // bound), (rows, width)

    fixed = collect(make_dataset(tmp_path, "train", tokens_per_batch=640, bucketing=False))
    assert {b["input_ids"].shape[0] for b in fixed[:-1]} == {640 // MAX_SEQ_LENGTH}


@pytest.mark.parametrize("num_shards", [4, 1], ids=["by_file", "by_record"])
def test_input_context_shards_are_disjoint_and_cover(tmp_path, small_chunks, num_shards):
    expected = write_split(tmp_path, lengths_like_corpus(200), num_shards=num_shards)
    parts = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker,
                                             num_replicas_in_sync=2)
        batches = collect(make_dataset(tmp_path, "train", batch_size=8, shuffle=True,
                                       input_context=context))
        parts.append([(s, w) for b in batches
                      for s, w in zip(b["sentence_id"], b["window_start"])])
    assert all(len(part) == len(set(part)) > 0 for part in parts)
    assert not set(parts[0]) & set(parts[1])
    assert set(parts[0]) | set(parts[1]) == set(expected)


def flip_bytes(path: pathlib.Path, offset: int, count: int = 4) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_shard_is_named(tmp_path):
    write_split(tmp_path, lengths_like_corpus(60), num_shards=2)
    shard = tmp_path / "train-00001-of-00002.tfrecord"
    flip_bytes(shard, shard.stat().st_size // 2)
    with pytest.raises(ShardError, match=r"train-00001-of-00002\.tfrecord.*sha256"):
        make_dataset(tmp_path, "train", batch_size=4)
    # Without checksums the corrupt record is found while reading, and the error names the shard.
    dataset = make_dataset(tmp_path, "train", batch_size=4, verify_checksums=False)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"train-00001-of-00002\.tfrecord is corrupt or truncated"):
        collect(dataset)


@pytest.mark.parametrize("compression", ["", "GZIP"])
def test_truncated_shard_is_named_while_reading(tmp_path, compression):
    """A shard cut short and its manifest entry rewritten to match still fails by name."""
    write_split(tmp_path, lengths_like_corpus(300), num_shards=2, compression=compression)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    entry = manifest["splits"]["train"]["shards"][0]
    shard = tmp_path / entry["file"]
    data = shard.read_bytes()[:entry["bytes"] * 2 // 3]
    shard.write_bytes(data)
    entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"train-00000-of-00002\.tfrecord is corrupt or truncated: only \d+ "
                             r"of its 150 records"):
        collect(make_dataset(tmp_path, "train", batch_size=8))


def test_missing_and_resized_shards_are_named(tmp_path):
    write_split(tmp_path, lengths_like_corpus(60), num_shards=2)
    shard = tmp_path / "train-00000-of-00002.tfrecord"
    with open(shard, "ab") as file:
        file.write(b"\0")
    with pytest.raises(ShardError, match=r"train-00000-of-00002\.tfrecord.* bytes but the "
                                         r"manifest says"):
        make_dataset(tmp_path, "train", batch_size=4, verify_checksums=False)
    shard.unlink()
    with pytest.raises(ShardError, match=r"train-00000-of-00002\.tfrecord.* is missing"):
        make_dataset(tmp_path, "train", batch_size=4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=8, tokens_per_batch=100), "exactly one of batch_size and tokens_per_batch"),
    (dict(), "exactly one of batch_size and tokens_per_batch"),
    (dict(batch_size=0), "batch_size must be a positive int"),
    (dict(tokens_per_batch=-5), "tokens_per_batch must be a positive int"),
    (dict(batch_size=8, pad_to_length=80), "pad_to_length is for fixed padding"),
    (dict(batch_size=8, bucketing=False, pad_to_length=10), "pad_to_length=10 is shorter"),
    (dict(tokens_per_batch=100, drop_remainder=True), "drop_remainder=True needs batch_size"),
    (dict(tokens_per_batch=30, bucketing=False), "tokens_per_batch=30 is smaller"),
    (dict(batch_size=8, shuffle=True, shuffle_buffer=0), "shuffle_buffer must be"),
    (dict(batch_size=8, bucket_upper_bounds=[64]), "bucket_upper_bounds needs"),
    (dict(tokens_per_batch=640, bucket_upper_bounds=[32]), "must end at or above the longest"),
], ids=lambda value: str(value) if isinstance(value, str) else None)
def test_bad_arguments_are_named(corpus, kwargs, message):
    directory, _, _ = corpus
    with pytest.raises(ValueError, match=message):
        make_dataset(directory, "train", **kwargs)


def test_unknown_split_lists_available(corpus):
    directory, _, _ = corpus
    with pytest.raises(ValueError, match=r"split='test'.*available splits: \['dev', 'train'\]"):
        make_dataset(directory, "test", batch_size=8)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        make_dataset(directory / "nowhere", "train", batch_size=8)


def test_bucket_boundaries():
    histogram = [0] * 101
    histogram[10], histogram[100] = 50, 50
    assert bucket_boundaries(histogram) == [10, 100]  # zero padding with two buckets
    assert bucket_boundaries(histogram, max_buckets=1) == [100]
    assert bucket_boundaries([0, 0, 7]) == [2]
    assert bucket_boundaries([0, 0, 0]) == []

    lengths = lengths_like_corpus(5000, seed=3)
    histogram = np.bincount(lengths, minlength=MAX_SEQ_LENGTH + 1)
    bounds = bucket_boundaries(histogram, target_padding=0.05)
    assert bounds == sorted(bounds) and bounds[-1] == lengths.max()
    # Padding when every window is padded to its bucket's upper bound.
    padded = np.asarray(bounds)[np.searchsorted(bounds, lengths)]
    share = 1 - lengths.sum() / padded.sum()
    assert share <= 0.05
    # The fewest buckets that reach the target: one bucket fewer does not.
    fewer = bucket_boundaries(histogram, max_buckets=len(bounds) - 1, target_padding=0.0)
    padded = np.asarray(fewer)[np.searchsorted(fewer, lengths)]
    assert 1 - lengths.sum() / padded.sum() > 0.05


def test_padding_share():
    dataset = tf.data.Dataset.from_tensor_slices(
        {"attention_mask": tf.constant([[[1, 1, 0], [1, 0, 0]], [[1, 1, 1], [1, 1, 1]]])})
    assert padding_share(dataset) == pytest.approx(3 / 12)
    assert padding_share(dataset.take(0)) == 0.0


PD_LABELS = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


@pytest.mark.slow
def test_people_daily_dev_bucketed_padding_at_most_10_percent(tmp_path, e5_dir, people_daily_dir):
    """Acceptance 4: bucketed batches of People's Daily dev have <= 10% padding tokens."""
    from data_pipeline.preprocess import preprocess
    from data_pipeline.records import decode_example

    manifest = preprocess({"dev": people_daily_dir / "example.dev"}, tmp_path / "pd", e5_dir,
                          max_seq_length=128, stride=32, label_map=PD_LABELS,
                          sentences_per_shard=1000, num_workers=2)
    expected = {}
    for shard in manifest["splits"]["dev"]["shards"]:
        for serialized in tf.data.TFRecordDataset(str(tmp_path / "pd" / shard["file"])):
            record = decode_example(serialized.numpy())
            expected[(record["sentence_id"], record["window_start"])] = record
    assert len(expected) == manifest["splits"]["dev"]["counts"]["windows"]

    bucketed = make_dataset(tmp_path / "pd", "dev", batch_size=32, shuffle=True, seed=0)
    check_batches(collect(bucketed), expected, pad_id=manifest["tokenizer"]["pad_token_id"])
    bucketed_share = padding_share(bucketed)
    budget_share = padding_share(make_dataset(tmp_path / "pd", "dev", tokens_per_batch=4096))
    fixed_share = padding_share(make_dataset(tmp_path / "pd", "dev", batch_size=32,
                                             bucketing=False))
    print(f"\nPeople's Daily dev padding share: bucketed (batch_size=32) {bucketed_share:.2%}, "
          f"token budget 4096 {budget_share:.2%}, fixed length 128 {fixed_share:.2%}")
    assert bucketed_share <= 0.10 and budget_share <= 0.10
    assert fixed_share > bucketed_share
