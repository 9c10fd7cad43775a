"""Corrupted corpus files for the property-based tests of issue #24, and an independent reading.

`corpus_cases()` is a `hypothesis` strategy: a valid corpus (character-level BIO/BMES or
word-level CoNLL, a train split and maybe a dev split) with up to three corruptions drawn from
what real files do wrong: random column counts, empty, whitespace and odd tokens, other
separators than spaces and tabs, broken and unknown tags, blank and `-DOCSTART-` lines, byte
order marks at the start or inside, invalid UTF-8, a line of a megabyte, mixed line ends, a
truncated file, UTF-16.

`expected_reading(data)` reads the bytes of one file as data_pipeline/corpus.py's docstring
says a corpus is read, written from that text and not from its code: which lines are errors
(bad UTF-8, a carriage return inside a line, a wrong column count, several characters in a
character file's token) and, where there is none, the sentences and their tags. A test then
asks of a run: it fails where this reading finds an error line, names one of those lines when
it reports such an error (`check_error_message`, shared by the preprocessing and the training
properties), and, where it succeeds, counts what this reading counts.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import re

from hypothesis import strategies as st

TYPES = ("LOC", "PER", "ORG")
CHARACTERS = "中国人北京上海张三李四说了的在是。，、A1"
# Multi-code-point tokens that are one user-perceived character (the docstring's examples).
ONE_CHARACTER = ("e\u0301", "\u2764\ufe0f", "\U0001f44d\U0001f3fd",
                 "\U0001f468\u200d\U0001f469\u200d\U0001f467")
WORDS = ("EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", ".", "Peter",
         "Blackburn", "1996-08-22", "Ünïcödé", "北京")
ODD_TOKENS = ("", " ", "\t", "\u3000", "北京", "\x00", "\x1b", "\x7f", "\u2028", "\x85",
              "\ufeff", "\u200b", "\ufffd", "\U0001d400", *ONE_CHARACTER)
ODD_SEPARATORS = ("\u3000", "\u00a0", "\x0b", "\x0c", "\x1c", "\u2028", "\u2003", "",
                  "  \t ")
ODD_TAGS = ("I-LOC", "I-PER", "E-PER", "M-ORG", "S-LOC", "X-LOC", "B-", "B", "b-loc", "LOC",
            "I_PER", "B-NEW", "O-", "o", "B-LOC-X", "-DOCSTART-", "B-\u5730\u540d")
INSERTED_LINES = ("", "   ", "\t", "-DOCSTART- -X- O O", "-DOCSTART-", "\u3000", "\ufeff")
BAD_BYTES = (b"\xff", b"\xc3", b"\xe4\xb8", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80", b"\xfe\xff")
HUGE = 1 << 20
# Reasons of line errors, as the messages word them, and as `expected_reading` names them.
REASONS = {"invalid UTF-8": "utf8", "carriage return (CR) inside": "carriage return",
           "a line feed (LF) in": "carriage return", "columns (token ... tag)": "columns",
           "but the file is read in the character format": "several characters"}
LONGEST_MESSAGE = 600  # characters besides the file's path
HUGE_LINES = ("a" * HUGE + " O", "\u4e2d" * (HUGE // 3) + " O", " ".join(["x"] * (HUGE // 2)),
              "a" * HUGE + " NN I-NP O")
LINE_ENDS = ("\n", "\r\n", "\r", "\r\r\n", "lf+crlf", "lf+cr", "no final")
BOM = "\ufeff"


@dataclasses.dataclass
class CorpusCase:
    """One drawn case: the files' bytes and how they were made (shown when a property fails)."""

    base_format: str  # "char" or "conll": the format of the valid corpus before corruption
    input_format: str  # what preprocessing is told: "auto" or base_format
    on_invalid: str
    files: dict[str, bytes]  # split -> the file's bytes
    corruptions: list[tuple]

    def __repr__(self) -> str:
        sizes = {split: len(data) for split, data in self.files.items()}
        heads = {split: data[:300] for split, data in self.files.items()}
        return (f"CorpusCase({self.base_format}, input_format={self.input_format}, "
                f"on_invalid={self.on_invalid}, corruptions={self.corruptions}, sizes={sizes}, "
                f"heads={heads})")


def _scheme_tags(kind: str, length: int, scheme: str) -> list[str]:
    if scheme == "bio":
        return [f"B-{kind}"] + [f"I-{kind}"] * (length - 1)
    inside, single = ("M", "S") if scheme == "bmes" else ("I", "S")
    if length == 1:
        return [f"{single}-{kind}"]
    return [f"B-{kind}"] + [f"{inside}-{kind}"] * (length - 2) + [f"E-{kind}"]


@st.composite
def _sentence(draw, base_format: str, scheme: str) -> list[list[str]]:
    """One sentence as rows of columns: [token, tag] or [word, POS, chunk, tag]."""
    entity = st.tuples(st.sampled_from(TYPES), st.integers(1, 3))
    segments = draw(st.lists(st.one_of(st.none(), entity), min_size=1, max_size=5))
    tags: list[str] = []
    for segment in segments:
        tags += ["O"] if segment is None else _scheme_tags(*segment, scheme)
    alphabet = CHARACTERS if base_format == "char" else WORDS
    tokens = draw(st.lists(st.sampled_from(alphabet), min_size=len(tags), max_size=len(tags)))
    if base_format == "char":
        return [[token, tag] for token, tag in zip(tokens, tags)]
    return [[token, "NNP", "I-NP", tag] for token, tag in zip(tokens, tags)]


@st.composite
def _rows(draw, base_format: str) -> list[str]:
    """A valid corpus file as lines (no line ends): sentences separated by blank lines."""
    scheme = draw(st.sampled_from(("bio", "bmes") if base_format == "char" else ("bio", "bioes")))
    separator = draw(st.sampled_from((" ", "\t", " \t ")))
    sentences = draw(st.lists(_sentence(base_format, scheme), min_size=1, max_size=4))
    rows = ["-DOCSTART- -X- O O", ""] if base_format == "conll" and draw(st.booleans()) else []
    for sentence in sentences:
        rows += [separator.join(columns) for columns in sentence] + [""]
    return rows


def _row_corruption():
    """(kind, split, row index, detail): changes one line, or inserts one."""
    where = (st.sampled_from(("train", "dev")), st.integers(0, 40))
    return st.one_of(
        st.tuples(st.just("columns"), *where, st.integers(1, 6)),
        st.tuples(st.just("token"), *where, st.sampled_from(ODD_TOKENS)),
        st.tuples(st.just("separator"), *where, st.sampled_from(ODD_SEPARATORS)),
        st.tuples(st.just("tag"), *where, st.sampled_from(ODD_TAGS)),
        st.tuples(st.just("insert"), *where, st.sampled_from(INSERTED_LINES)),
        st.tuples(st.just("bom"), *where, st.none()),
        st.tuples(st.just("bytes"), *where,
                  st.tuples(st.integers(0, 12), st.sampled_from(BAD_BYTES))),
        st.tuples(st.just("huge"), *where, st.sampled_from(HUGE_LINES)),
    )


def _file_corruption():
    """(kind, split, detail): changes the whole file."""
    split = st.sampled_from(("train", "dev"))
    return st.one_of(
        st.tuples(st.just("line_ends"), split, st.sampled_from(LINE_ENDS)),
        st.tuples(st.just("bom_at_start"), split, st.none()),
        st.tuples(st.just("truncate"), split, st.floats(0.0, 1.0)),
        st.tuples(st.just("utf16"), split, st.none()),
        st.tuples(st.just("empty"), split, st.sampled_from(("", "\n\n  \n", "-DOCSTART-\n\n"))),
    )


FILE_CORRUPTIONS = ("line_ends", "bom_at_start", "truncate", "utf16", "empty")


def _apply_to_row(rows: list[str], kind: str, index: int, detail) -> list[str]:
    rows = list(rows)
    index %= len(rows) + (kind in ("insert", "huge"))
    if kind in ("insert", "huge"):
        return rows[:index] + [detail] + rows[index:]
    row = rows[index]
    columns = re.split("[ \t]+", row.strip(" \t")) if row.strip(" \t") else ["x", "O"]
    if kind == "columns":
        rows[index] = " ".join([columns[0]] + ["NN"] * (detail - 2) + [columns[-1]]
                               if detail >= 2 else [columns[-1]])
    elif kind == "token":
        rows[index] = " ".join([detail] + columns[1:])
    elif kind == "separator":
        rows[index] = columns[0] + detail + " ".join(columns[1:])
    elif kind == "tag":
        rows[index] = " ".join(columns[:-1] + [detail])
    elif kind == "bom":
        rows[index] = BOM + row
    return rows


def _render(rows: list[bytes], line_ends: str) -> bytes:
    """Joins lines (bytes) with `line_ends`."""
    ends = {"lf+crlf": ("\n", "\r\n"), "lf+cr": ("\n", "\r"), "no final": ("\n",)}.get(
        line_ends, (line_ends,))
    out = bytearray()
    for i, row in enumerate(rows):
        out += row
        if line_ends != "no final" or i < len(rows) - 1:
            out += ends[i % len(ends)].encode("ascii")
    return bytes(out)


@st.composite
def corpus_cases(draw, base_format: str | None = None, max_corruptions: int = 3) -> CorpusCase:
    """A valid corpus (train, maybe dev) with up to `max_corruptions` corruptions."""
    base_format = base_format or draw(st.sampled_from(("char", "conll")))
    splits = ("train", "dev") if draw(st.booleans()) else ("train",)
    rows = {split: draw(_rows(base_format)) for split in splits}
    corruptions = draw(st.lists(st.one_of(_row_corruption(), _file_corruption()),
                                max_size=max_corruptions))
    corruptions = [c for c in corruptions if c[1] in splits]
    # Lines as bytes from here on: a corruption may put invalid UTF-8 into one.
    raw = {split: [line.encode("utf-8") for line in lines] for split, lines in rows.items()}
    for kind, split, *rest in corruptions:
        if kind in FILE_CORRUPTIONS:
            continue
        index, detail = rest
        if kind == "bytes":
            lines = raw[split]
            index %= len(lines)
            offset, bad = detail
            lines[index] = lines[index][:offset] + bad + lines[index][offset:]
        else:  # invalid bytes survive the round trip as lone surrogates
            text = [line.decode("utf-8", "surrogateescape") for line in raw[split]]
            raw[split] = [line.encode("utf-8", "surrogateescape")
                          for line in _apply_to_row(text, kind, index, detail)]
    files = {}
    for split in splits:
        ends = [c[2] for c in corruptions if c[0] == "line_ends" and c[1] == split]
        data = _render(raw[split], ends[-1] if ends else "\n")
        for kind, where, *rest in corruptions:
            if where != split:
                continue
            if kind == "bom_at_start":
                data = BOM.encode("utf-8") + data
            elif kind == "truncate":
                data = data[:max(1, int(len(data) * rest[0]))]
            elif kind == "utf16":
                data = data.decode("utf-8", "replace").encode("utf-16")
            elif kind == "empty":
                data = rest[0].encode("utf-8")
        files[split] = data
    input_format = draw(st.sampled_from(("auto", base_format)))
    on_invalid = draw(st.sampled_from(("repair", "fail")))
    return CorpusCase(base_format, input_format, on_invalid, files, corruptions)


# ------------------------------------------------------------------------------------------------
# The independent reading
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Reading:
    """What the corpus docstring says a file holds.

    Attributes:
      format: "char" or "conll" (the one asked for, or detected as the docstring says).
      error_lines: {reason: set of 1-based lines}; reasons "utf8", "carriage return",
        "columns", "several characters".
      sentences: the sentences' tags (when there is no error line).
    """

    format: str
    error_lines: dict[str, set[int]]
    sentences: list[list[str]]

    @property
    def tag_counts(self) -> collections.Counter:
        return collections.Counter(tag for sentence in self.sentences for tag in sentence)


def _lines(data: bytes) -> tuple[list[bytes], set[int]]:
    """The raw lines and the lines holding a stray carriage return.

    A file without any `\\n` splits on `\\r` ("old Mac OS"); any other splits on `\\n`, and a
    line then ending in `\\r` (also `\\r\\r`) is a `\\r\\n` line, while a `\\r` before other
    text means the file mixes CR-only line ends in.
    """
    if b"\n" not in data and b"\r" in data:
        lines = data.split(b"\r")
        stray: set[int] = set()
    else:
        lines = [line.rstrip(b"\r \t") if line.rstrip(b" \t").endswith(b"\r") else line
                 for line in data.split(b"\n")]
        stray = {number for number, line in enumerate(lines, start=1) if b"\r" in line}
    if lines and lines[-1] == b"":
        lines.pop()
    return lines, stray


def _columns(line: str) -> list[str] | None:
    """The columns of a token line (spaces and tabs separate), None for a separator line."""
    stripped = line.strip(" \t")
    if not stripped or stripped.startswith("-DOCSTART-"):
        return None
    return re.split("[ \t]+", stripped)


def _one_character(token: str) -> bool:
    return len(token) == 1 or token in ONE_CHARACTER


def expected_reading(data: bytes, input_format: str = "auto") -> Reading:
    """Reads one file's bytes as the corpus docstring describes (see the module docstring)."""
    if data.startswith(BOM.encode("utf-8")):
        data = data[3:]
    raw_lines, stray = _lines(data)
    errors: dict[str, set[int]] = collections.defaultdict(set)
    errors["carriage return"] = stray
    lines = []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            errors["utf8"].add(number)
            lines.append(raw.decode("utf-8", "replace"))
    rows = [(number, _columns(line)) for number, line in enumerate(lines, start=1)]
    token_rows = [(number, columns) for number, columns in rows if columns is not None]
    if input_format == "auto":
        first = [columns for _, columns in token_rows[:1000]]
        char_like = sum(len(c) == 2 and _one_character(c[0]) for c in first)
        input_format = "char" if first and char_like >= 0.8 * len(first) else "conll"
    width = 2 if input_format == "char" else (len(token_rows[0][1]) if token_rows else 2)
    for number, columns in token_rows:
        if len(columns) != width or len(columns) < 2:
            errors["columns"].add(number)
        elif input_format == "char" and not _one_character(columns[0]):
            errors["several characters"].add(number)
    sentences, current = [], []
    for _, columns in rows:
        if columns is None:
            if current:
                sentences.append(current)
            current = []
        else:
            current.append(columns[-1])
    if current:
        sentences.append(current)
    return Reading(input_format, {k: v for k, v in errors.items() if v}, sentences)


# ------------------------------------------------------------------------------------------------
# What an error message must say
# ------------------------------------------------------------------------------------------------

def check_error_message(message: str, case: CorpusCase, paths: dict[str, pathlib.Path]):
    """One line, of reasonable length, naming a file of the case and, for a bad line, that line
    (one the independent reading also finds wrong, for the reasons it knows)."""
    assert "\n" not in message and "\r" not in message, message[:2000]
    assert "Traceback" not in message
    named = [split for split, path in paths.items() if message.startswith(f"error: {path}")]
    if not named:
        # The only errors that are about no single file: the splits' formats disagree.
        assert message.startswith("error: the splits have different formats"), message[:2000]
        assert all(str(path) in message for path in paths.values()), message
        return
    [split] = named
    path = paths[split]
    assert len(message) - len(str(path)) <= LONGEST_MESSAGE, message[:2000]
    located = re.match(rf"error: {re.escape(str(path))}:(\d+): (.*)", message)
    if located is None:
        # Errors about the whole file: it holds no sentence.
        assert re.match(rf"error: {re.escape(str(path))}: empty file", message), message
        assert not expected_reading(case.files[split]).sentences, message
        return
    line, reason = int(located.group(1)), located.group(2)
    lines = len(re.split(rb"\r\n|\n|\r", case.files[split]))
    assert 1 <= line <= lines, message
    for words, kind in REASONS.items():
        if words in reason:
            reading = expected_reading(case.files[split], format_of(case))
            assert line in reading.error_lines.get(kind, ()), (message, reading.error_lines)


def format_of(case: CorpusCase) -> str:
    """The format preprocessing reads all files in: given, or detected from the first file."""
    if case.input_format != "auto":
        return case.input_format
    return expected_reading(case.files["train"]).format
