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


@pytest.mark.parametrize("separator", ["\u3000", "\u00a0", "\x0b", "\u2028", "\x1c"])
def test_only_spaces_and_tabs_separate_columns(tmp_path, separator):
    """str.split() (the reader's fast path) splits on these too: `中\u3000O` was read as the
    token 中 tagged O, where the format has one column there."""
    path = write(tmp_path, f"人 O\n中{separator}O\n")
    with pytest.raises(corpus.CorpusError, match=r":2: expected 2 columns .*found 1"):
        list(corpus.read_sentences(path, input_format="char"))
    path = write(tmp_path, f"EU NNP O\nrejects{separator}x VBZ O\n")
    (sentence,) = corpus.read_sentences(path, input_format="conll")
    assert sentence.tokens == ["EU", f"rejects{separator}x"]


def test_other_whitespace_is_all_that_str_split_splits_on_besides_blanks():
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    found = set(corpus.OTHER_WHITESPACE.findall(every))
    assert found == {c for c in every if c.isspace()} - set(" \t\n\r")


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


CHAR_TEXT = "中 B-LOC\n国 I-LOC\n\n人 O\n民 O\n\n"


def read_all(path, input_format="char"):
    return [(s.tokens, s.tags, s.line) for s in corpus.read_sentences(path,
                                                                      input_format=input_format)]


def test_byte_order_mark_is_ignored_in_detection_reading_and_offsets(tmp_path):
    plain = write(tmp_path, CHAR_TEXT, name="plain.txt")
    bom = write(tmp_path, None, name="bom.txt", raw=b"\xef\xbb\xbf" + CHAR_TEXT.encode())
    assert corpus.starts_with_bom(bom) and not corpus.starts_with_bom(plain)
    assert corpus.detect_format(bom) == "char"  # was "conll": the first token read as "\ufeff中"
    assert read_all(bom) == read_all(plain) == [(["中", "国"], ["B-LOC", "I-LOC"], 1),
                                                (["人", "民"], ["O", "O"], 4)]
    # A BOM alone on the first line is a blank line: the scan's sentence count must agree.
    lonely = write(tmp_path, None, name="lonely.txt", raw=b"\xef\xbb\xbf\n\n" + CHAR_TEXT.encode())
    offsets, _, count = corpus.sentence_offsets(lonely, 1)
    assert count == 2 and [line for _, line in offsets] == [3, 6]
    assert [s[2] for s in read_all(lonely)] == [3, 6]
    for offset, line in offsets:
        [(tokens, _, first)] = [(s.tokens, s.tags, s.line) for s in corpus.read_sentences(
            lonely, input_format="char", offset=offset, first_line=line, limit=1)]
        assert first == line


def test_cr_only_line_ends_are_read_as_lines(tmp_path):
    plain = write(tmp_path, CHAR_TEXT, name="plain.txt")
    mac = write(tmp_path, None, name="mac.txt", raw=CHAR_TEXT.replace("\n", "\r").encode())
    assert corpus.line_ending(mac) == "\r" and corpus.line_ending(plain) == "\n"
    assert corpus.detect_format(mac) == "char"
    assert read_all(mac) == read_all(plain)
    offsets, _, count = corpus.sentence_offsets(mac, 1)
    assert count == 2 and [line for _, line in offsets] == [1, 4]
    offset, line = offsets[1]
    [second] = corpus.read_sentences(mac, input_format="char", offset=offset, first_line=line)
    assert second.tokens == ["人", "民"] and second.line == 4
    # \r\r\n (a \r\n file converted once more) is a \n file whose lines end in a stray \r.
    doubled = write(tmp_path, None, name="doubled.txt",
                    raw=CHAR_TEXT.replace("\n", "\r\r\n").encode())
    assert read_all(doubled) == read_all(plain)


@pytest.mark.parametrize("raw,line", [
    ("中 O\n国 O\r人 O\n", 2),              # LF file with a lone CR inside line 2
    ("中 O\r国 O\r\r人 O\n民 O\r", 1),      # the LF makes it a LF file: line 1 holds CRs
])
def test_mixed_line_ends_are_an_error_that_says_so(tmp_path, raw, line):
    path = write(tmp_path, None, raw=raw.encode())
    with pytest.raises(corpus.CorpusError, match=rf"^{path}:{line}: .*mixes"):
        read_all(path)


def test_line_feed_after_cr_only_lines_names_its_line(tmp_path):
    """A file is CR-only when its first block has no LF; a LF further on is an error."""
    path = write(tmp_path, None, raw="中 O\r国 O\r\r人 O\n民 O\r".encode())
    with open(path, "rb") as stream:
        with pytest.raises(corpus.CorpusError, match=rf"^{path}:4: a line feed .*mixes"):
            list(corpus.iter_line_blocks(stream, path, newline="\r"))


def test_multi_character_token_in_a_char_file_names_file_and_line(tmp_path):
    lines = [f"{char} O" for char in "我们今天在这里见面了大家好"] * 3
    path = write(tmp_path, "\n".join(lines[:20] + ["北京 B-LOC"] + lines[20:]) + "\n")
    assert corpus.detect_format(path) == "char"  # one word among characters stays char
    with pytest.raises(corpus.CorpusError,
                       match=rf"^{path}:21: token '北京' has 2 characters, .*character format"):
        read_all(path)
    # Word-level (CoNLL) files may have words of any length.
    assert read_all(path, "conll")[0][0][20] == "北京"
    # Combining marks and emoji sequences are one character.
    combined = write(tmp_path, "e\u0301 O\n\u2764\ufe0f O\n\U0001f44d\U0001f3fd O\n"
                               "\U0001f468\u200d\U0001f469 O\n", name="graphemes.txt")
    assert len(read_all(combined)[0][0]) == 4


def test_word_level_files_are_detected_as_conll(tmp_path):
    # Two columns, the first word of one letter: the old first-line rule said "char".
    words = "a O\nman O\nin O\nBerlin B-LOC\nsaw O\nI O\n\nEU B-ORG\nrejects O\n"
    assert corpus.detect_format(write(tmp_path, words)) == "conll"
    segmented = "我 O\n爱 O\n北京 B-LOC\n天安门 B-LOC\n\n新华社 B-ORG\n电 O\n"
    assert corpus.detect_format(write(tmp_path, segmented, name="zh.txt")) == "conll"


def test_utf16_file_gets_a_hint(tmp_path):
    path = write(tmp_path, None, raw="中 O\n".encode("utf-16"))
    with pytest.raises(corpus.CorpusError, match=rf"^{path}:1: invalid UTF-8.*UTF-16"):
        corpus.detect_format(path)


def test_a_corpus_error_survives_pickling():
    """Worker processes send their errors back pickled (data_pipeline/workers.py)."""
    import pickle

    from data_pipeline.corpus import CorpusError

    error = pickle.loads(pickle.dumps(CorpusError("a/b.txt", 12, "expected 2 columns")))
    assert (str(error), error.path, error.line, error.reason) == (
        "a/b.txt:12: expected 2 columns", "a/b.txt", 12, "expected 2 columns")
    whole_file = pickle.loads(pickle.dumps(CorpusError("a/b.txt", None, "empty")))
    assert str(whole_file) == "a/b.txt: empty" and whole_file.line is None
