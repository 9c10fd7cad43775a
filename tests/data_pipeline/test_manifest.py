"""data_pipeline.manifest: strict JSON, and what killed runs leave beside an output directory."""

import json
import math
import os

import pytest

from data_pipeline import manifest as manifest_lib


def reject(constant):
    raise ValueError(f"non-strict JSON constant {constant}")


def test_strict_json_never_writes_nan_or_infinity(tmp_path):
    payload = {"loss": 0.5, "grad_norm": {"head": float("nan")}, "lr": [1e-3, float("inf")]}
    with pytest.raises(ValueError, match=r"NaN or infinity .*at grad_norm\.head, lr\[1\]"):
        manifest_lib.strict_json_dumps(payload)
    text = manifest_lib.strict_json_dumps(payload, non_finite="null", sort_keys=True)
    assert json.loads(text, parse_constant=reject) == {"loss": 0.5, "grad_norm": {"head": None},
                                                       "lr": [1e-3, None]}
    assert manifest_lib.strict_json_dumps({"a": 1.0}) == json.dumps({"a": 1.0})
    path = tmp_path / "out.json"
    with pytest.raises(ValueError, match="at counts.rate"):
        manifest_lib.write_json_atomic(path, {"counts": {"rate": math.nan}})
    assert list(tmp_path.iterdir()) == []  # neither the file nor a partial one
    manifest_lib.write_json_atomic(path, {"counts": {"rate": 0.25}})
    assert json.loads(path.read_text(), parse_constant=reject) == {"counts": {"rate": 0.25}}


def finished_output(directory, shard_text="records"):
    directory.mkdir()
    (directory / "train-00000-of-00001.tfrecord").write_text(shard_text)
    manifest = {"format_version": 1, "label_map": ["O"], "max_seq_length": 8, "stride": 0,
                "compression": "", "tokenizer": {},
                "splits": {"train": {"shards": [{"file": "train-00000-of-00001.tfrecord",
                                                 "records": 1, "bytes": len(shard_text)}]}}}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_stale_staging_and_old_directories_are_removed_only_for_their_target(tmp_path):
    target = tmp_path / "out"
    finished_output(target)
    stale = [tmp_path / ".out.tmp-0123abcd", tmp_path / ".out.old-89abcdef"]
    for directory in stale:
        directory.mkdir()
        (directory / "train-00000-of-00001.tfrecord.partial").write_text("half")
    kept = [tmp_path / ".out.tmp-notahexx", tmp_path / ".other.tmp-0123abcd",
            tmp_path / ".out.tmp-0123abcd.tmp-0123abcd", tmp_path / "out.tmp-0123abcd"]
    for directory in kept:
        directory.mkdir()
    (tmp_path / ".out.tmp-fedcba98").write_text("a file, not ours")
    live = tmp_path / ".out.tmp-cafebabe"
    live.mkdir()
    # As a running preprocess holds its staging directory:
    held = manifest_lib.try_lock_directory(live)
    assert held is not None
    messages = []
    try:
        done = manifest_lib.clean_stale_directories(target, messages.append)
    finally:
        os.close(held)
    assert sorted(done) == [".out.old-89abcdef", ".out.tmp-0123abcd"]
    assert not any(d.exists() for d in stale)
    assert all(d.is_dir() for d in kept) and live.is_dir() and target.is_dir()
    assert (tmp_path / ".out.tmp-fedcba98").is_file()
    assert all("left behind by an interrupted run" in m for m in messages) and len(messages) == 2
    # Once its holder is gone, the lock is free and the directory is stale.
    assert manifest_lib.clean_stale_directories(target) == [".out.tmp-cafebabe"]


def test_an_output_swapped_out_just_before_a_kill_is_restored(tmp_path):
    target = tmp_path / "out"
    retired = finished_output(tmp_path / ".out.old-0123abcd")  # killed between the two renames
    staging = tmp_path / ".out.tmp-89abcdef"
    staging.mkdir()
    messages = []
    assert sorted(manifest_lib.clean_stale_directories(target, messages.append)) == [
        ".out.old-0123abcd", ".out.tmp-89abcdef"]
    assert not retired.exists() and not staging.exists()
    assert manifest_lib.load_manifest(target)["splits"]["train"]["shards"][0]["bytes"] == 7
    assert any(m.startswith(f"note: restored {target}") for m in messages)
    # An incomplete one (a shard missing) is never restored: it is removed.
    target2 = tmp_path / "second"
    partial = finished_output(tmp_path / ".second.old-0123abcd")
    (partial / "train-00000-of-00001.tfrecord").unlink()
    manifest_lib.clean_stale_directories(target2)
    assert not target2.exists() and not partial.exists()


def test_replace_directory_leaves_only_the_new_output(tmp_path):
    target = finished_output(tmp_path / "out", "old")
    with manifest_lib.staging_directory(target) as staging:
        assert staging.name.startswith(".out.tmp-") and staging.is_dir()
        assert manifest_lib.clean_stale_directories(target) == []  # alive: locked
        (staging / "manifest.json").write_text("{}")
        manifest_lib.replace_directory(staging, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (target / "manifest.json").read_text() == "{}"
    with manifest_lib.staging_directory(target) as staging:
        (staging / "x").write_text("unfinished")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # removed on the way out
