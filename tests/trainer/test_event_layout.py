"""Tests for trainer.event_layout: flat summary names and the run's event-file directories."""

from trainer.event_layout import event_directories, flat_name, split_name


def test_flat_names():
    assert split_name("train/lr/head") == ("train", "lr/head")
    assert split_name("crf/transitions") == ("", "crf/transitions")
    assert split_name("train") == ("", "train")  # a split's name alone is a tag of RUN_DIR
    assert flat_name("dev", "f1") == "dev/f1" and flat_name("", "x") == "x"
    for name in ("train/lr/head", "crf/transitions", "dev/f1/PER", "variables"):
        assert flat_name(*split_name(name)) == name


def test_event_directories(tmp_path):
    assert event_directories(tmp_path / "missing") == [tmp_path / "missing"]
    for name in ("train", "dev", "checkpoints"):
        (tmp_path / name).mkdir()
    (tmp_path / "train" / "events.out.tfevents.1.host.2.0.v2").write_bytes(b"")
    (tmp_path / "dev" / "events.out.tfevents.1.host.2.1.v2").write_bytes(b"")
    (tmp_path / "checkpoints" / "ckpt-1.index").write_bytes(b"")
    # RUN_DIR first (even without an event file), then the subdirectories that hold one.
    assert event_directories(tmp_path) == [tmp_path, tmp_path / "dev", tmp_path / "train"]
