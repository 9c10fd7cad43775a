"""benchmarks/learning_curve.py: the page comes from its archived runs; the sweep's subsets."""

import json

import pytest

from benchmarks import learning_curve


def test_the_published_page_matches_its_archived_runs():
    """docs/learning_curve.md, as committed, is what its archived runs give (issue 21)."""
    assert learning_curve.main(["page", "--check", "--plot", ""]) == 0


def test_a_changed_figure_is_caught(tmp_path):
    """A page made from two archived runs checks clean; one digit changed, it does not."""
    archives = learning_curve.RUNS_FILE.parent
    runs = json.loads(learning_curve.RUNS_FILE.read_text())[:2]
    runs_file = tmp_path / "runs.json"  # archives are found relative to the runs file
    runs_file.write_text(json.dumps([dict(run, archive=str(archives / run["archive"]))
                                     for run in runs]))
    page = tmp_path / "page.md"
    page.write_text(f"# t\n\n{learning_curve.BEGIN}\n{learning_curve.END}\n", encoding="utf-8")
    args = ["page", "--plot", "", f"--document={page}", f"--runs_file={runs_file}"]
    assert learning_curve.main(args) == 0
    assert learning_curve.main(args + ["--check"]) == 0
    text = page.read_text(encoding="utf-8")
    first = text.index("**0.") + 4
    page.write_text(text[:first] + str((int(text[first]) + 1) % 10) + text[first + 1:],
                    encoding="utf-8")
    assert learning_curve.main(args + ["--check"]) == 1


def test_subsets_are_seeded_and_written_once(tmp_path):
    source = tmp_path / "corpus.txt"
    source.write_text("".join(f"{chr(0x4e00 + i)} O\n\n" for i in range(50)), encoding="utf-8")
    first = learning_curve.write_subset(source, 10, 0, tmp_path / "a.txt")
    again = learning_curve.write_subset(source, 10, 0, tmp_path / "b.txt")
    other = learning_curve.write_subset(source, 10, 1, tmp_path / "c.txt")
    assert first.read_text(encoding="utf-8") == again.read_text(encoding="utf-8")
    assert first.read_text(encoding="utf-8") != other.read_text(encoding="utf-8")
    assert first.read_text(encoding="utf-8").count(" O\n") == 10
    with pytest.raises(ValueError, match="asked for 60 sentences, the file has 50"):
        learning_curve.write_subset(source, 60, 0, tmp_path / "d.txt")


@pytest.mark.parametrize("sizes", ["abc", "500,x", "0,500", "-1", ","])
def test_bad_sizes_are_one_error_line_naming_the_flag(sizes, capsys):
    with pytest.raises(SystemExit) as stop:
        learning_curve.main(["run", "--flagfile=configs/frozen_crf.flags",
                             "--train_file=x.txt", f"--sizes={sizes}", "--out_dir=unused"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --sizes: expected comma-separated positive sentence counts" in error
    assert repr(sizes) in error


def test_missing_files_and_too_large_sizes_stop_before_any_run(tmp_path):
    """Nothing is written and no training starts: each error names its flag and what is
    expected."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{chr(0x4e00 + i)} O\n\n" for i in range(50)), encoding="utf-8")
    out = tmp_path / "out"
    cases = {
        ("configs/nope.flags", str(corpus), "10"):
            "error: --flagfile=configs/nope.flags: no such file",
        ("configs/frozen_crf.flags", str(tmp_path / "none.txt"), "10"): "error: --train_file=",
        ("configs/frozen_crf.flags", str(corpus), "10,60"):
            "error: --sizes=10,60: " + str(corpus) + " has 50 sentences, fewer than 60",
    }
    for (flagfile, train, sizes), message in cases.items():
        with pytest.raises(SystemExit) as stop:
            learning_curve.main(["run", f"--flagfile={flagfile}", f"--train_file={train}",
                                 f"--sizes={sizes}", f"--out_dir={out}"])
        assert str(stop.value.code).startswith(message)
    assert not out.exists()
