"""The frozen-encoder feature cache: same training as running the encoder every step, a new cache
whenever what the features depend on changes, and a build that survives being killed."""

import os
import pathlib
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from data_pipeline import records
from data_pipeline.dataset import make_dataset
from data_pipeline.manifest import MANIFEST_NAME, load_manifest
from tests import trainer_testing as tt
from trainer import config as config_lib, feature_cache
from trainer.loop import train_and_evaluate

REPO = pathlib.Path(__file__).resolve().parents[2]


def build_tiny_tagger(label_map, *, hidden_layers="concat", seed=0):
    from data_pipeline.tags import iob2_allowed_transitions
    from models import TaggerConfig, build_tagger

    tf.keras.utils.set_random_seed(seed)
    return build_tagger(TaggerConfig(
        encoder="bert", encoder_config=dict(tt.TINY_BERT), hidden_layers=hidden_layers,
        num_hidden_layers_used=2, bilstm_layers=1, bilstm_units=8, head="crf",
        label_map=list(label_map)), transition_constraints=iob2_allowed_transitions(label_map))


def test_append_bytes_feature_is_what_protobuf_serializes():
    from tensorflow.core.example import example_pb2

    serialized = records.encode_example(input_ids=[1, 300000, 3], label_ids=[-100, 2, -100],
                                        char_index=[-1, 0, -1], sentence_id=7, window_start=0,
                                        window_end=1, sentence_length=1)
    payload = bytes(range(256)) * 700  # longer than any one-byte or two-byte varint length
    extended = records.append_bytes_feature(serialized, "features", payload)
    expected = example_pb2.Example.FromString(serialized)
    expected.features.feature["features"].bytes_list.value.append(payload)
    assert example_pb2.Example.FromString(extended) == expected
    with pytest.raises(ValueError, match="not a serialized"):
        records.append_bytes_feature(b"\x12\x00", "features", b"")


def test_cached_batches_hold_the_encoders_output(tiny, tmp_path):
    _, manifest_dir, _ = tiny
    manifest = load_manifest(manifest_dir)
    model = build_tiny_tagger(manifest["label_map"])
    logs = []
    cache_dir = feature_cache.ensure_feature_cache(model, manifest_dir, tmp_path,
                                                   log=logs.append)
    cache = load_manifest(cache_dir)
    assert cache["features"]["dim"] == 2 * 32 == model.cached_feature_dim
    assert cache["features"]["bytes"] == sum(
        s["bytes"] for split in cache["splits"].values() for s in split["shards"])
    assert any("GiB on disk" in line for line in logs)
    total_tokens = sum(split["counts"]["tokens"] for split in manifest["splits"].values())
    # float16 x real tokens x F, plus the ids and labels of the data records
    assert cache["features"]["bytes"] > total_tokens * 64 * 2
    assert [s["records"] for s in cache["splits"]["train"]["shards"]] == \
        [s["records"] for s in manifest["splits"]["train"]["shards"]]

    plain = make_dataset(manifest_dir, "train", batch_size=16, shuffle=True, seed=3)
    cached = make_dataset(cache_dir, "train", batch_size=16, shuffle=True, seed=3)
    batches = 0
    for a, b in zip(plain, cached):
        for name in a:  # the same batches, in the same order
            np.testing.assert_array_equal(a[name].numpy(), b[name].numpy())
        features = b["features"]
        assert features.dtype == tf.float16
        expected = model.cache_features(a["input_ids"], a["attention_mask"]).numpy()
        mask = a["attention_mask"].numpy().astype(bool)
        got = features.numpy().astype(np.float32)
        np.testing.assert_allclose(got[mask], expected[mask], rtol=2 ** -10, atol=1e-6)
        assert np.all(got[~mask] == 0.0)  # padding holds no features
        batches += 1
    assert batches == len(list(plain))


def test_training_from_the_cache_equals_running_the_encoder(tiny, tmp_path):
    """Losses and weights agree within the float16 rounding of the features (relative error of
    one value <= 2**-11). 9 updates of 64 windows (about 1.8 epochs: a run shorter than an epoch
    does not use the cache): losses measured 4e-7 relative, asserted 1e-5; weights measured
    2.5e-3 relative to each variable's largest value, asserted 5e-3."""
    paths, manifest_dir, tokenizer = tiny
    results, logs, weights = {}, {}, {}
    for cached in (True, False):
        run_dir = tmp_path / f"cache_{cached}"
        config = config_lib.parse_flags(tt.tiny_args(
            paths, manifest_dir, tokenizer, run_dir, encoder_learning_rate=0, dropout=0.2,
            bilstm_dropout=0.2, feature_cache=cached, mixed_precision="none", eval_every=3,
            train_steps=9, batch_size=64))  # 9 steps: more than an epoch, so the cache is used
        results[cached] = train_and_evaluate(config)
        logs[cached] = [(r["step"], r["loss"]) for r in tt.train_log(run_dir)]
        weights[cached] = tt.checkpoint_weights(run_dir)
    assert (tmp_path / "data_cache" / "features").is_dir()
    assert [s for s, _ in logs[True]] == [s for s, _ in logs[False]] == [3, 6, 9]
    for (_, a), (_, b) in zip(logs[True], logs[False]):
        assert a == pytest.approx(b, rel=1e-5)
    assert logs[True][0][1] != logs[True][-1][1]  # it trained
    assert tt.max_relative_difference(weights[True], weights[False]) < 5e-3
    assert results[True]["dev"]["loss"] == pytest.approx(results[False]["dev"]["loss"], rel=1e-4)
    assert results[True]["dev"]["f1"] == pytest.approx(results[False]["dev"]["f1"], abs=1e-3)


def test_a_change_of_layers_or_weights_builds_a_new_cache(tiny, tmp_path):
    _, manifest_dir, _ = tiny
    label_map = load_manifest(manifest_dir)["label_map"]
    logs = []
    first = feature_cache.ensure_feature_cache(build_tiny_tagger(label_map), manifest_dir,
                                               tmp_path, log=logs.append)
    again = feature_cache.ensure_feature_cache(build_tiny_tagger(label_map), manifest_dir,
                                               tmp_path, log=logs.append)
    assert again == first and "reusing" in logs[-1]
    last = feature_cache.ensure_feature_cache(
        build_tiny_tagger(label_map, hidden_layers="last"), manifest_dir, tmp_path,
        log=logs.append)
    assert last != first and load_manifest(last)["features"]["dim"] == 32
    other_weights = feature_cache.ensure_feature_cache(
        build_tiny_tagger(label_map, seed=1), manifest_dir, tmp_path, log=logs.append)
    assert other_weights not in (first, last)
    changed = build_tiny_tagger(label_map)
    variable = changed.encoder.weights[5]
    variable.assign(variable + 1e-3)  # one weight moved: e.g. a different checkpoint
    assert feature_cache.ensure_feature_cache(changed, manifest_dir, tmp_path,
                                              log=logs.append) not in (first, last, other_weights)
    assert len(list(tmp_path.glob("*/" + MANIFEST_NAME))) == 4


_KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from data_pipeline.manifest import load_manifest
from tests.trainer.test_feature_cache import build_tiny_tagger
from trainer import feature_cache

feature_cache.BLOCK_WINDOWS = 40
kill_after = int(sys.argv[1])
blocks = 0

def on_windows(count):
    global blocks
    blocks += 1
    print("block", blocks, flush=True)
    if blocks == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)

manifest_dir, cache_root = sys.argv[2], sys.argv[3]
model = build_tiny_tagger(load_manifest(manifest_dir)["label_map"])
feature_cache.ensure_feature_cache(model, manifest_dir, cache_root, on_windows=on_windows)
"""


def _shard_digests(cache_dir):
    manifest = load_manifest(cache_dir)
    return {split: [s["sha256"] for s in info["shards"]]
            for split, info in manifest["splits"].items()}


@pytest.mark.parametrize("kill_after", [2, 0])
def test_a_killed_build_is_never_read_as_complete_and_restarts(tiny, tmp_path, kill_after,
                                                               monkeypatch):
    """kill_after=2: SIGKILL in the middle of the train shard; 0: after train and dev are done
    (the script kills itself when the test split's first block is written)."""
    _, manifest_dir, _ = tiny
    # The killed script's block size: batches of other sizes round the last bits differently.
    monkeypatch.setattr(feature_cache, "BLOCK_WINDOWS", 40)
    manifest = load_manifest(manifest_dir)
    label_map = manifest["label_map"]
    reference = feature_cache.ensure_feature_cache(build_tiny_tagger(label_map), manifest_dir,
                                                   tmp_path / "reference", log=lambda _: None)
    train_dev_blocks = sum(-(-s["records"] // 40) for split in ("train", "dev")
                           for s in manifest["splits"][split]["shards"])
    kill_at = kill_after or train_dev_blocks + 1
    assert kill_at > 1
    script = tmp_path / "kill.py"
    script.write_text(_KILL_SCRIPT.format(repo=str(REPO)))
    root = tmp_path / "killed"
    result = subprocess.run([sys.executable, str(script), str(kill_at), str(manifest_dir),
                             str(root)], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert f"block {kill_at}" in result.stdout
    key = pathlib.Path(reference).name
    assert not (root / key).exists()  # nothing looks finished
    partial = root / f".{key}.partial"
    assert partial.is_dir() and not (partial / MANIFEST_NAME).exists()
    done_before = sorted(p.name for p in partial.glob("*.done.json"))
    if kill_after == 0:
        assert [n.split("-")[0] for n in done_before] == ["dev", "train"]
    else:
        assert done_before == []

    built = []
    cache_dir = feature_cache.ensure_feature_cache(
        build_tiny_tagger(label_map), manifest_dir, root, log=lambda _: None,
        on_windows=built.append)
    assert pathlib.Path(cache_dir) == root / key and not partial.exists()
    assert _shard_digests(cache_dir) == _shard_digests(reference)  # identical bytes
    test_windows = sum(s["records"] for s in manifest["splits"]["test"]["shards"])
    all_windows = sum(s["records"] for split in manifest["splits"].values()
                      for s in split["shards"])
    # A restart builds only the shards that were not finished.
    assert sum(built) == (test_windows if kill_after == 0 else all_windows)
    for batch in make_dataset(cache_dir, "dev", batch_size=64):
        assert batch["features"].shape[-1] == 64


def test_a_corrupt_data_shard_is_named_not_cached(tiny, tmp_path):
    from data_pipeline.dataset import ShardError

    _, manifest_dir, _ = tiny
    copy = tmp_path / "shards"
    shutil.copytree(manifest_dir, copy)
    shard = sorted(copy.glob("dev-*.tfrecord"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    model = build_tiny_tagger(load_manifest(copy)["label_map"])
    with pytest.raises(ShardError, match=shard.name + ".*sha256"):
        feature_cache.ensure_feature_cache(model, copy, tmp_path / "cache", log=lambda _: None)
    assert not list((tmp_path / "cache").glob("*/" + MANIFEST_NAME))
