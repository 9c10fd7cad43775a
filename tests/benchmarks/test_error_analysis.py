"""benchmarks/error_analysis.py: test errors split by what the training data has seen."""

from __future__ import annotations

import json
import lzma
import shutil

import pytest

from benchmarks import error_analysis as analysis
from benchmarks.frozen_vs_finetune import ReportError, read_prediction_columns

# Training data: 北京 is a LOC, 张三 a PER, 长江 an ORG (only), 上海 is text but never an entity.
TRAIN = ("北 B-LOC\n京 I-LOC\n张 B-PER\n三 I-PER\n\n"
         "长 B-ORG\n江 I-ORG\n上 O\n海 O\n\n")
# Test, three sentences, five gold entities:
#   北京 LOC (seen) found;  张三 PER (seen) predicted as 张 alone (boundary);
#   长江 LOC (seen as another type only) predicted ORG on the same span (type);
#   上海 LOC (never an entity in train) not predicted at all (nothing there);
#   王五 PER (never an entity) found; plus a spurious ORG on 好 that overlaps no gold entity.
PREDICTIONS = ("北 B-LOC B-LOC\n京 I-LOC I-LOC\n张 B-PER B-PER\n三 I-PER O\n\n"
               "长 B-LOC B-ORG\n江 I-LOC I-ORG\n上 B-LOC O\n海 I-LOC O\n\n"
               "王 B-PER B-PER\n五 I-PER I-PER\n好 O B-ORG\n\n")


def seen_in(tmp_path):
    (tmp_path / "train.txt").write_text(TRAIN, encoding="utf-8")
    return analysis.train_entities(analysis.read_training_sentences(tmp_path / "train.txt"))


def test_training_entities_keep_every_type_given(tmp_path):
    assert dict(seen_in(tmp_path)) == {"北京": {"LOC"}, "张三": {"PER"}, "长江": {"ORG"}}


def test_gold_entities_are_split_by_coverage_and_errors_by_kind(tmp_path):
    result = analysis.analyse(*read_prediction_columns(PREDICTIONS), seen_in(tmp_path))
    found = result["found"]
    assert found[f"{analysis.SEEN}|all"] == [2, 1]  # 北京 found, 张三 not
    assert found[f"{analysis.OTHER_TYPE}|all"] == [1, 0]  # 长江
    assert found[f"{analysis.NEVER}|all"] == [2, 1]  # 上海 missed, 王五 found
    assert found[f"{analysis.NEVER}|PER"] == [1, 1]
    assert found[f"{analysis.NEVER}|LOC"] == [1, 0]
    assert result["errors"] == {
        "missed: same span, wrong type": 1, "missed: wrong boundary": 1,
        "missed: nothing there": 1, "wrong: overlaps a gold entity": 2,  # 张 PER, 长江 ORG
        "wrong: overlaps none": 1}
    # 2 of 5 predictions right, 2 of 5 gold entities found.
    assert (result["precision"], result["recall"]) == (0.4, 0.4)
    assert result["f1"] == pytest.approx(0.4, abs=1e-12)


def test_long_entities_get_their_own_row():
    chars = list("中华人民共和国国务院办公厅")  # 13 characters, one ORG
    tags = ["B-ORG"] + ["I-ORG"] * 12
    result = analysis.analyse([chars], [tags], [tags], seen={})
    assert result["found"][f"{analysis.LONG}+ characters|all"] == [1, 1]
    assert result["found"][f"{analysis.NEVER}|all"] == [1, 1]


def _archive(tmp_path, test_f1):
    archive = tmp_path / "runs" / "finetune_crf_5ep"
    archive.mkdir(parents=True)
    (archive / "predictions_test.txt.xz").write_bytes(lzma.compress(PREDICTIONS.encode()))
    (archive / "results.json").write_text(json.dumps({"test": {"f1": test_f1}}))
    (tmp_path / "train.txt").write_text(TRAIN, encoding="utf-8")
    document = tmp_path / "doc.md"
    document.write_text(f"prose\n{analysis.BEGIN}\nstale\n{analysis.END}\nmore prose\n")
    return ["--archives", str(tmp_path / "runs"), "--train_file", str(tmp_path / "train.txt"),
            "--document", str(document)], document


def test_check_fails_until_the_tables_are_regenerated(tmp_path, monkeypatch):
    monkeypatch.setattr(analysis, "RUNS", (("finetune_crf_5ep", "ours"),))
    args, document = _archive(tmp_path, test_f1=0.4)
    assert analysis.main(args + ["--check"]) == 1
    assert "stale" in document.read_text()
    assert analysis.main(args) == 0
    text = document.read_text()
    assert text.startswith("prose\n") and text.endswith("more prose\n")
    assert "| ours | 0.4000 (0.4000 / 0.4000) | 1 (17%) | 1 (17%) | 1 (17%) | 2 (33%) |" in text
    assert analysis.main(args + ["--check"]) == 0


def test_a_run_whose_f1_disagrees_with_its_results_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(analysis, "RUNS", (("finetune_crf_5ep", "ours"),))
    args, document = _archive(tmp_path, test_f1=0.9)
    before = document.read_text()
    with pytest.raises(ReportError, match="the spans give test F1 0.400000"):
        analysis.main(args)
    assert document.read_text() == before


def test_a_missing_archive_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(analysis, "RUNS", (("finetune_crf_5ep", "ours"),))
    args, _ = _archive(tmp_path, test_f1=0.4)
    shutil.rmtree(tmp_path / "runs" / "finetune_crf_5ep")
    with pytest.raises(ReportError, match="finetune_crf_5ep/predictions_test.txt.xz is missing"):
        analysis.main(args)


def test_the_published_tables_match_the_archived_runs():
    """docs/frozen_vs_finetune.md's error analysis is what the archives and the proxy train
    give (needs ../shared or $TAGGER_SHARED_DIR: fails, does not skip, without it)."""
    assert analysis.main(["--check"]) == 0
