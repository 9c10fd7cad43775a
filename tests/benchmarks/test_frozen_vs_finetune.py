"""benchmarks/frozen_vs_finetune.py: the document's figures come from the run directories."""

from __future__ import annotations

import json

import pytest

from benchmarks import frozen_vs_finetune as report
from trainer.summaries import SummaryWriter

# Two sentences. Gold: PER (张三) and LOC (北京). The prediction finds PER, misses LOC and invents
# an ORG: precision 1/2, recall 1/2, F1 0.5; 5 of 8 characters right (了 北 京 are wrong).
PREDICTIONS = ("张 B-PER B-PER\n三 I-PER I-PER\n去 O O\n了 O B-ORG\n\n"
               "北 B-LOC O\n京 I-LOC O\n好 O O\n。 O O\n\n")


def make_trainer_run(path, dev_curve, test_f1=0.5):
    path.mkdir(parents=True)
    (path / "predictions_test.txt").write_text(PREDICTIONS, encoding="utf-8")
    (path / "results.json").write_text(json.dumps(
        {"step": 300, "total_steps": 500, "test": {"f1": test_f1}, "dev": {"f1": 0.1}}))
    (path / "config.json").write_text(json.dumps({"epochs": 5}))
    with SummaryWriter(path) as writer:
        for step, f1 in dev_curve:
            writer.eval(step, "dev", {"f1": f1})


def make_fit_run(path):
    import tensorflow as tf

    path.mkdir(parents=True)
    (path / "predictions_test.txt").write_text(PREDICTIONS, encoding="utf-8")
    (path / "results.json").write_text(json.dumps(
        {"recipe": "blog", "steps": 40, "epochs": 1, "wall_seconds": 123.4,
         "test": {"f1": 0.5, "token_accuracy_with_padding": 0.987}}))
    writer = tf.summary.create_file_writer(str(path))
    with writer.as_default():
        tf.summary.scalar("dev/f1", 0.25, step=40)
    writer.close()


def runs_file(tmp_path, *names):
    entries = [{"label": name, "run_dir": name, "command": f"make {name}", "budget": "tiny"}
               for name in names]
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(entries))
    return path


def test_scores_come_from_the_predictions_with_seqeval():
    gold, pred = report.read_predictions_text(PREDICTIONS)
    scores = report.score(gold, pred)
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(0.5)
    assert scores["per_type"] == pytest.approx({"LOC": 0.0, "ORG": 0.0, "PER": 1.0})
    assert scores["token_accuracy"] == pytest.approx(5 / 8)


def test_table_rows_of_a_trainer_run_and_a_fit_run(tmp_path):
    make_trainer_run(tmp_path / "ours", [(100, 0.40), (200, 0.61), (300, 0.55)])
    make_fit_run(tmp_path / "fit")
    runs = [report.read_run(entry, tmp_path)
            for entry in json.loads(runs_file(tmp_path, "ours", "fit").read_text())]
    ours, fit = runs
    assert (ours["kind"], fit["kind"]) == ("trainer", "fit")
    assert ours["best_dev"] == pytest.approx(0.61)  # the best evaluation, not the last
    assert [step for step, _ in ours["curve"]] == [100, 200, 300]
    assert ours["epochs"] == pytest.approx(3.0)  # 300 steps of 100 per epoch
    assert ours["padded_accuracy"] is None and fit["padded_accuracy"] == pytest.approx(0.987)
    table = report.tables(runs)
    assert ("| ours | 300 (3.0) |" in table and "| 0.6100 | **0.5000** (0.5000 / 0.5000) | "
            "0.6250 | - | tiny |" in table)
    assert "| fit | 40 (1.0) | 123 s | 0.2500 | **0.5000** (0.5000 / 0.5000) | 0.6250 | 0.9870 |" \
        in table
    assert "| ours | 0.0000 | 0.0000 | 1.0000 |" in table  # per type: LOC, ORG, PER


def test_results_json_disagreeing_with_the_predictions_is_an_error(tmp_path):
    make_trainer_run(tmp_path / "ours", [(100, 0.4)], test_f1=0.9)
    with pytest.raises(report.ReportError, match="seqeval gives test F1 0.500000"):
        report.read_run({"label": "ours", "run_dir": "ours", "command": "c", "budget": "b"},
                        tmp_path)


def test_check_fails_until_the_document_is_regenerated(tmp_path, capsys):
    make_trainer_run(tmp_path / "ours", [(100, 0.4)])
    document = tmp_path / "doc.md"
    document.write_text(f"# prose\n\n{report.BEGIN}\nstale table\n{report.END}\n\nmore prose\n")
    args = ["--runs_root", str(tmp_path), "--runs_file", str(runs_file(tmp_path, "ours")),
            "--document", str(document), "--plot", ""]
    assert report.main(args + ["--check"]) == 1
    assert "stale table" in document.read_text()  # --check writes nothing
    assert report.main(args) == 0
    text = document.read_text()
    assert text.startswith("# prose\n") and text.endswith("more prose\n")
    assert "stale table" not in text and "**0.5000**" in text
    assert report.main(args + ["--check"]) == 0


def test_a_missing_run_is_named(tmp_path):
    with pytest.raises(report.ReportError, match="absent.*results.json is missing.*make absent"):
        report.read_run({"label": "absent", "run_dir": "absent", "command": "make absent",
                         "budget": "b"}, tmp_path)


def test_an_archived_run_reads_back_without_its_run_directory(tmp_path):
    make_trainer_run(tmp_path / "ours", [(100, 0.40), (200, 0.61)])
    make_fit_run(tmp_path / "fit")
    (tmp_path / "ours" / "checkpoints").mkdir()  # not archived
    entries = [dict(entry, archive=f"runs/{entry['run_dir']}")
               for entry in json.loads(runs_file(tmp_path, "ours", "fit").read_text())]
    path = tmp_path / "docs" / "runs.json"
    path.parent.mkdir()
    path.write_text(json.dumps(entries))
    document = tmp_path / "docs" / "doc.md"
    document.write_text(f"{report.BEGIN}\n{report.END}\n")
    args = ["--runs_root", str(tmp_path), "--runs_file", str(path), "--document", str(document),
            "--plot", ""]
    with pytest.raises(report.ReportError, match="no archive .*runs/ours and no run directory"):
        report.main(args + ["--runs_root", str(tmp_path / "elsewhere")])
    assert report.main(args + ["--from_runs"]) == 0
    live = report.tables([report.read_run(entry, tmp_path) for entry in entries])
    assert document.read_text() == f"{report.BEGIN}\n{live}{report.END}\n"
    ours = tmp_path / "docs" / "runs" / "ours"
    assert sorted(p.name for p in ours.iterdir()) == [
        "config.json", "dev", "predictions_test.txt.xz", "results.json", "wall.json"]
    fit = sorted(p.name for p in (tmp_path / "docs" / "runs" / "fit").iterdir())
    assert fit[1:] == ["predictions_test.txt.xz", "results.json", "wall.json"]
    assert "tfevents" in fit[0]  # fit writes its dev/f1 events in RUN_DIR itself
    # The run directories gone, the archives alone reproduce the same document.
    import shutil

    shutil.rmtree(tmp_path / "ours")
    shutil.rmtree(tmp_path / "fit")
    assert report.main(args + ["--check"]) == 0
    assert report.main(args + ["--from_runs", "--check"]) == 0  # --check never archives


def test_a_trainer_run_of_the_one_directory_event_layout_is_read_and_archived(tmp_path):
    """Runs made before the trainer wrote RUN_DIR/dev (all events in RUN_DIR) still count."""
    import tensorflow as tf

    run = tmp_path / "old"
    make_trainer_run(tmp_path / "new", [(100, 0.40)])
    run.mkdir()
    for name in ("predictions_test.txt", "results.json", "config.json"):
        (run / name).write_bytes((tmp_path / "new" / name).read_bytes())
    writer = tf.summary.create_file_writer(str(run))
    with writer.as_default():
        tf.summary.scalar("dev/f1", 0.3, step=100)
        tf.summary.scalar("dev/f1", 0.45, step=300)
    writer.close()
    entry = {"label": "old", "run_dir": "old", "command": "make old", "budget": "tiny"}
    read = report.read_run(entry, tmp_path)
    assert read["kind"] == "trainer"
    assert read["curve"] == [(100, pytest.approx(0.3)), (300, pytest.approx(0.45))]
    assert read["epochs"] == pytest.approx(3.0)
    report.archive_run(entry, run, tmp_path / "archive")
    archived = report.read_run_dir(entry, tmp_path / "archive")
    assert archived["curve"] == read["curve"] and archived["wall"] == read["wall"]


def test_a_run_whose_files_disagree_is_not_archived(tmp_path):
    make_trainer_run(tmp_path / "ours", [(100, 0.4)], test_f1=0.9)
    entry = {"label": "ours", "run_dir": "ours", "command": "c", "budget": "b"}
    with pytest.raises(report.ReportError, match="seqeval gives test F1"):
        report.archive_run(entry, tmp_path / "ours", tmp_path / "archive")
    assert not (tmp_path / "archive").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ours"]  # no staging directory left


def test_the_published_document_matches_its_archived_runs():
    """docs/frozen_vs_finetune.md, as committed, is what its archived runs give (issue 9)."""
    assert report.main(["--check", "--plot", ""]) == 0


def _write_events(path, wall_times):
    """An event file holding one bare event per wall time (the format tf.summary writes)."""
    import tensorflow as tf
    from tensorboard.compat.proto import event_pb2

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for wall_time in wall_times:
            writer.write(event_pb2.Event(wall_time=wall_time, step=1).SerializeToString())


@pytest.mark.parametrize("configured, expected", [
    (990.0, (1200 - 990) + (5300 - 5000)),  # config.json as the first process wrote it
    (4990.0, (1200 - 1010) + (5300 - 4990)),  # rewritten by the resumed process at its start
])
def test_the_wall_time_of_a_resumed_run_leaves_out_the_gap_between_processes(
        tmp_path, configured, expected):
    import os

    host = "ip-10-0-0-1.ec2.internal"  # a host name with dots: the PID is read from the end
    _write_events(tmp_path / f"events.out.tfevents.1010.{host}.111.0.v2", [1010.0, 1100.0])
    _write_events(tmp_path / "dev" / f"events.out.tfevents.1050.{host}.111.1.v2",
                  [1050.0, 1200.0])
    _write_events(tmp_path / "train" / f"events.out.tfevents.5000.{host}.222.0.v2",
                  [5000.0, 5300.0])  # the resumed process, an hour after the first one ended
    (tmp_path / "config.json").write_text("{}")
    os.utime(tmp_path / "config.json", (configured, configured))
    assert report.event_wall_seconds(tmp_path) == pytest.approx(expected)
