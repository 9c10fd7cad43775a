"""benchmarks/subset_corpus.py: the 4,000-sentence studies' subset, reproducibly."""

from __future__ import annotations

import pytest

from benchmarks import subset_corpus

CORPUS = "".join(f"{chr(0x4e00 + i)} O\n{chr(0x4e00 + i + 100)} B-PER\n\n" for i in range(10))


def test_the_subset_keeps_whole_sentences_in_file_order_and_is_reproducible(tmp_path):
    source = tmp_path / "c.train"
    source.write_text("\n\n" + CORPUS, encoding="utf-8")  # leading blank lines are not sentences
    out = tmp_path / "sub.train"
    assert subset_corpus.main(["--input", str(source), "--sentences", "4", "--output",
                               str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    blocks = [b for b in text.split("\n\n") if b]
    assert len(blocks) == 4 and text.endswith("\n\n")
    all_blocks = [b for b in CORPUS.split("\n\n") if b]
    positions = [all_blocks.index(b) for b in blocks]
    assert positions == sorted(positions)
    assert subset_corpus.subset_text(CORPUS, 4) == text  # same seed, same pick
    assert subset_corpus.subset_text(CORPUS, 4, seed=1) != text
    assert not (tmp_path / "sub.train.partial").exists()


def test_asking_for_more_sentences_than_the_file_has_names_it(tmp_path):
    source = tmp_path / "c.train"
    source.write_text(CORPUS, encoding="utf-8")
    with pytest.raises(SystemExit) as stop:
        subset_corpus.main(["--input", str(source), "--sentences", "11", "--output",
                            str(tmp_path / "o")])
    assert stop.value.code == (f"error: --sentences=11: {source}: asked for 11 sentences, "
                               f"the file has 10")
    assert not (tmp_path / "o").exists()


def test_a_missing_input_is_one_error_line(tmp_path):
    with pytest.raises(SystemExit) as stop:
        subset_corpus.main(["--input", str(tmp_path / "none"), "--sentences", "1", "--output",
                            str(tmp_path / "o")])
    missing = tmp_path / "none"
    assert stop.value.code == f"error: --input={missing}: no such file ({missing})"
