"""Corpus reading and tag-scheme conversion (no tokenizer, no TensorFlow)."""

import pytest

from data_pipeline import corpus


def write(tmp_path, text, name="corpus.txt", raw=None):
    path = tmp_path / name
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_reads_char_format_with_crlf_and_line_numbers(tmp_path):
    path = write(tmp_path, "中 B-LOC\r\n国 I-LOC\r\n\r\n\r\n人 O\r\n")
    sentences = list(corpus.read_sentences(path, input_format="char"))
    assert [s.tokens for s in sentences] == [["中", "国"], ["人"]]
    assert [s.tags for s in sentences] == [["B-LOC", "I-LOC"], ["O"]]
    assert [s.line for s in sentences] == [1, 5]


def test_full_width_space_is_a_character_not_a_separator(tmp_path):
    path = write(tmp_path, "\u3000 O\n中 B-LOC\n")
    (sentence,) = corpus.read_sentences(path, input_format="char")
    assert sentence.tokens == ["\u3000", "中"]


def test_reads_conll_columns_and_skips_docstart(tmp_path):
    path = write(tmp_path, "-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n"
                           "Peter NNP B-NP B-PER\n")
    assert corpus.detect_format(path) == "conll"
    sentences = list(corpus.read_sentences(path, input_format="conll"))
    assert [s.tokens for s in sentences] == [["EU", "rejects"], ["Peter"]]
    assert [s.tags for s in sentences] == [["B-ORG", "O"], ["B-PER"]]
    assert [s.line for s in sentences] == [3, 6]


def test_reading_from_an_offset_matches_reading_from_the_start(shared_dir):
    path = shared_dir / "data" / "msra" / "train.bmes"
    offsets, _, count = corpus.sentence_offsets(path, 1000)
    assert count == 50289 and len(offsets) == 51
    whole = corpus.read_sentences(path, input_format="char")
    expected = [s for i, s in zip(range(3001), whole) if i >= 3000]
    offset, line = offsets[3]
    got = list(corpus.read_sentences(path, input_format="char", offset=offset, first_line=line,
                                     limit=1))
    assert got == expected


@pytest.mark.parametrize("scheme,tags,expected", [
    ("bmes", ["B-PER", "M-PER", "E-PER", "S-LOC", "O"], ["B-PER", "I-PER", "I-PER", "B-LOC", "O"]),
    ("bioes", ["B-PER", "I-PER", "E-PER", "S-LOC", "S-LOC"],
     ["B-PER", "I-PER", "I-PER", "B-LOC", "B-LOC"]),
    ("iob1", ["I-PER", "I-PER", "B-PER", "O", "I-LOC"], ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]),
    ("bio", ["B-PER", "I-PER", "B-PER", "O", "B-LOC"], ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]),
])
def test_schemes_convert_to_iob2(scheme, tags, expected):
    converted, repaired = corpus.to_iob2(tags, scheme, on_invalid="fail", path="f", first_line=1)
    assert converted == expected and repaired == 0


@pytest.mark.parametrize("scheme,tags,expected,bad_index", [
    ("bio", ["O", "I-PER", "I-PER"], ["O", "B-PER", "I-PER"], 1),
    ("bio", ["B-LOC", "I-ORG"], ["B-LOC", "B-ORG"], 1),
    ("bmes", ["M-ORG", "E-ORG", "O"], ["B-ORG", "I-ORG", "O"], 0),
    ("bmes", ["S-PER", "E-PER"], ["B-PER", "B-PER"], 1),
])
def test_continuation_without_open_entity_is_repaired_or_fails(scheme, tags, expected, bad_index):
    converted, repaired = corpus.to_iob2(tags, scheme, on_invalid="repair", path="f",
                                         first_line=10)
    assert converted == expected and repaired == 1
    with pytest.raises(corpus.CorpusError) as info:
        corpus.to_iob2(tags, scheme, on_invalid="fail", path="f.txt", first_line=10)
    assert str(info.value).startswith(f"f.txt:{10 + bad_index}: ")


def test_unknown_prefix_names_scheme():
    with pytest.raises(corpus.CorpusError, match=r"^f:3: tag 'E-PER' does not fit the BIO"):
        corpus.to_iob2(["O", "O", "E-PER"], "bio", on_invalid="repair", path="f", first_line=1)


def test_detect_scheme_and_label_map():
    assert corpus.detect_scheme({"O", "B", "M", "E", "S"}) == "bmes"
    assert corpus.detect_scheme({"O", "B", "I", "E", "S"}) == "bioes"
    assert corpus.detect_scheme({"O", "B", "I"}) == "bio"
    assert corpus.build_label_map({"PER", "LOC"}) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_invalid_utf8_names_the_line(tmp_path):
    path = write(tmp_path, None, raw="中 O\n国 O\n\n".encode() + b"\xff\xfe O\n")
    with pytest.raises(corpus.CorpusError, match=rf"^{path}:4: invalid UTF-8"):
        list(corpus.read_sentences(path, input_format="char"))


def test_wrong_column_count_names_the_line(tmp_path):
    path = write(tmp_path, "中 O\n国 B-LOC extra\n")
    with pytest.raises(corpus.CorpusError, match=rf"^{path}:2: expected 2 columns"):
        list(corpus.read_sentences(path, input_format="char"))
