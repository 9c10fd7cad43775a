"""Reading tagged corpora and converting their tag schemes to IOB2.

(A little over the project's ~400 lines per module, knowingly: all that reads a user's corpus and
can reject it, its format and its tags, is here, so that every such error is a `CorpusError`
naming the file and line, raised by one module; `trainer/cache.py` reads and converts through it
as preprocessing does.)

Two file formats, both with a blank line between sentences:

- `char`: one `character tag` pair per line (People's Daily, MSRA), separated by spaces or tabs
  (a full-width space U+3000 is a character, not a separator). A token of several characters
  (`北京 B-LOC`) is an error naming its line; a base character with combining marks or an emoji
  sequence counts as one character.
- `conll`: whitespace-separated columns, token first and tag last (CoNLL-2003 style). Every
  line of a file must have the same number of columns.

`detect_format` reads the first 1,000 token lines: `char` when at least 80% of them have two
columns and a one-character token, else `conll`. Word-segmented Chinese has about half its words
of one character and English far fewer, while a few bad lines (a BOM, a stray `北京 B-LOC`) no
longer turn a character file into a word-level one: they are errors naming their lines.

`-DOCSTART-` lines separate sentences like blank lines, in both formats. Line ends are `\\n`,
`\\r\\n` or, in files without any `\\n` (old Mac OS), `\\r`; a file that mixes CR-only line ends
with the others is an error naming the line. A UTF-8 byte order mark at the start of the file is
ignored (`starts_with_bom` tells the caller, to note it).

Tag schemes (prefix, `-`, entity type; or `O`): BIO (IOB2), IOB1, BIOES and BMES. All of them are
converted to IOB2, the one scheme the rest of the framework sees:

    BMES   B-PER M-PER E-PER S-LOC O        BIOES  B-PER I-PER E-PER S-LOC O
    IOB2   B-PER I-PER I-PER B-LOC O        IOB1   I-PER I-PER I-PER I-LOC O

A tag that continues an entity that is not open (`O I-PER`, `B-LOC E-ORG`) is an error in every
scheme but IOB1, where `I-` may start an entity. With `on_invalid="repair"` it starts a new
entity (`B-`) and is counted; with `on_invalid="fail"` it raises `CorpusError`.

Every error names the file and the 1-based line, so the user can open the file there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import unicodedata
from collections.abc import Iterator
from typing import BinaryIO

from data_pipeline.tags import split_tag

FORMATS = ("char", "conll")
SCHEMES = ("bio", "iob1", "bioes", "bmes")
ON_INVALID = ("repair", "fail")

# Prefixes each scheme allows, besides the bare "O" (`to_iob2` checks each tag against them, and
# preprocessing checks every tag of the files before it writes anything).
SCHEME_PREFIXES = {
    "bio": frozenset("BI"),
    "iob1": frozenset("BI"),
    "bioes": frozenset("BIES"),
    "bmes": frozenset("BMES"),
}
_COLUMN_SPLIT = re.compile(r"[ \t]+")
# What str.split() splits on besides spaces, tabs and line ends (all of str.isspace()).
OTHER_WHITESPACE = re.compile("[\x0b\x0c\x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029"
                              "\u202f\u205f\u3000]")
_BOM = "\ufeff"
_UTF8_BOM = _BOM.encode("utf-8")
_DETECT_LINES = 1000
_CHAR_SHARE = 0.8


class CorpusError(ValueError):
    """Bad corpus input. The message starts with `path:line:` (no line for whole-file errors)."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str):
        self.path = os.fspath(path)
        self.line = line
        self.reason = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")

    def __reduce__(self):
        # A worker process sends its exception back pickled; the default (the class and
        # `args`, the one formatted message) cannot be unpickled by this __init__, and the
        # pool then reported a bad line as a dead worker.
        return type(self), (self.path, self.line, self.reason)


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One sentence of a corpus file.

    Attributes:
      tokens: characters (char format) or words (conll format).
      tags: the tags as written in the file, one per token.
      line: 1-based line number of the sentence's first token.
    """

    tokens: list[str]
    tags: list[str]
    line: int


def quoted(text: str, limit: int = 80) -> str:
    """`repr(text)` for a message, cut after `limit` characters with the full length said: a
    line of a megabyte must not become an error message of a megabyte."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def quoted_labels(labels: list[str]) -> str:
    """A label map (or tag list) for a message: as a list, each label `quoted`."""
    return "[" + ", ".join(quoted(label, 40) for label in labels) + "]"


def starts_with_bom(path: str | os.PathLike) -> bool:
    """Whether the file starts with a UTF-8 byte order mark (which the readers here skip)."""
    with open(path, "rb") as stream:
        return stream.read(len(_UTF8_BOM)) == _UTF8_BOM


def line_ending(path: str | os.PathLike, block_size: int = 1 << 16) -> str:
    """The line end the readers split the file on: "\\r" for a CR-only file, else "\\n".

    A file is CR-only when its first block with a line end holds carriage returns and no `\\n`
    at all, so `\\r\\n` files and `\\r\\r\\n` ones (a doubly converted `\\r\\n`) are "\\n"
    files, whose readers drop the `\\r`.
    """
    with open(path, "rb") as stream:
        while True:
            block = stream.read(block_size)
            if not block or b"\n" in block:
                return "\n"
            if b"\r" in block:
                return "\r"


def iter_line_blocks(stream: BinaryIO, path: str | os.PathLike, first_line: int = 1,
                     block_size: int = 1 << 20, newline: str = "\n"
                     ) -> Iterator[tuple[int, list[str]]]:
    """Yields (line number of the block's first line, lines without line ends), ~1 MiB at a time.

    Decoding a block at once is several times faster than line by line; memory stays flat. Read
    from the start of the file, a UTF-8 byte order mark is dropped.

    Args:
      newline: "\\n" (also reads `\\r\\n`) or "\\r" for CR-only files (see `line_ending`).

    Raises:
      CorpusError: invalid UTF-8, or mixed CR-only and LF line ends, naming the line.
    """
    end = newline.encode("ascii")
    number = first_line
    carry = b""
    at_start = stream.tell() == 0
    while True:
        block = stream.read(block_size)
        if not block and not carry:
            return
        block = carry + block if block else carry + end
        cut = block.rfind(end) + 1
        if cut == 0:
            carry = block
            continue
        carry, block = block[cut:], block[:cut]
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            for offset, raw in enumerate(block.split(end)):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    hint = ""
                    if number + offset == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
                        hint = ("; the file starts with a UTF-16 byte order mark: convert it "
                                "to UTF-8")
                    raise CorpusError(path, number + offset, f"invalid UTF-8 at byte {e.start} "
                                      f"of the line ({raw[max(0, e.start - 8):e.start + 8]!r})"
                                      f"{hint}") from None
            raise
        if at_start:
            at_start = False
            if text.startswith(_BOM):
                text = text[1:]
        if newline == "\r":
            if "\n" in text:
                line = number + text[:text.index("\n")].count("\r")
                raise CorpusError(path, line, "a line feed (LF) in a file whose lines end in a "
                                              "bare carriage return (CR): the file mixes line "
                                              "ends; convert it to \\n or \\r\\n line ends")
            lines = text.split("\r")
        else:
            if "\r" in text:
                text = text.replace("\r\n", "\n")
            lines = text.split("\n")
            if "\r" in text:
                lines = _drop_trailing_carriage_returns(lines, path, number)
        lines.pop()  # the empty string after the block's last line end
        yield number, lines
        number += len(lines)


def _drop_trailing_carriage_returns(lines: list[str], path, first: int) -> list[str]:
    """`x\\r` (from `\\r\\r\\n`) -> `x`; a carriage return inside a line is an error."""
    out = []
    for number, line in enumerate(lines, start=first):
        if "\r" in line:
            line = line.rstrip("\r \t")
            if "\r" in line:
                raise CorpusError(path, number, "a carriage return (CR) inside the line: the file "
                                                "mixes CR-only and LF line ends; convert it to "
                                                "\\n or \\r\\n line ends")
        out.append(line)
    return out


def _is_separator(stripped: str) -> bool:
    return not stripped or stripped.startswith("-DOCSTART-")


def is_one_character(token: str) -> bool:
    """One user-perceived character: a code point, plus combining marks or an emoji sequence.

    `é` written as `e` + U+0301, `❤️` (with variation selector U+FE0F), `👍🏽` (skin-tone modifier)
    and `👨‍👩‍👧` (joined by U+200D) each count as one; `北京` is two.
    """
    if len(token) == 1:
        return True
    previous = token[0]
    for char in token[1:]:
        joined = (unicodedata.category(char) in ("Mn", "Mc", "Me") or char == "\u200d"
                  or previous == "\u200d" or "\U0001f3fb" <= char <= "\U0001f3ff")
        if not joined:
            return False
        previous = char
    return True


def detect_format(path: str | os.PathLike) -> str:
    """`char` or `conll`, from the first 1,000 token lines (see the module docstring).

    Raises:
      CorpusError: the file has no token line, or a line is not valid UTF-8.
    """
    seen = two_columns = single = 0
    with open(path, "rb") as stream:
        for _, lines in iter_line_blocks(stream, path, newline=line_ending(path)):
            for line in lines:
                stripped = line.strip(" \t")
                if _is_separator(stripped):
                    continue
                columns = _COLUMN_SPLIT.split(stripped)
                seen += 1
                if len(columns) == 2:
                    two_columns += 1
                    single += is_one_character(columns[0])
                if seen >= _DETECT_LINES:
                    break
            if seen >= _DETECT_LINES:
                break
    if not seen:
        raise CorpusError(path, None, "empty file: no sentences found")
    return "char" if min(two_columns, single) >= _CHAR_SHARE * seen else "conll"


def read_sentences(path: str | os.PathLike, *, input_format: str, offset: int = 0,
                   first_line: int = 1, limit: int | None = None) -> Iterator[Sentence]:
    """Streams the sentences of a corpus file (memory stays flat).

    Args:
      path: the corpus file.
      input_format: "char" or "conll" (see the module docstring).
      offset: byte offset to start reading at; must be the start of a line.
      first_line: the line number of the line at `offset` (for messages).
      limit: stop after this many sentences.

    Yields:
      `Sentence`s in file order.

    Raises:
      CorpusError: invalid UTF-8, mixed line ends, a wrong column count, or (char format) a
        token of several characters.
    """
    if input_format not in FORMATS:
        raise ValueError(f"input_format must be one of {FORMATS}, got {input_format!r}")
    char_format = input_format == "char"
    expected_columns = 2 if char_format else None
    tokens: list[str] = []
    tags: list[str] = []
    start_line = first_line
    produced = 0
    newline = line_ending(path)
    with open(path, "rb") as stream:
        stream.seek(offset)
        for block_start, lines in iter_line_blocks(stream, path, first_line, newline=newline):
            # str.split() is fast but also splits on other whitespace (U+3000 is a character
            # here: `中\u3000O` is one column), so a block that holds any is split on spaces and
            # tabs only; a line where str.split() finds another count is too.
            fast_split = OTHER_WHITESPACE.search("".join(lines)) is None
            for number, line in enumerate(lines, start=block_start):
                stripped = line.strip(" \t")
                if _is_separator(stripped):
                    if tokens:
                        yield Sentence(tokens, tags, start_line)
                        produced += 1
                        if limit is not None and produced >= limit:
                            return
                        tokens, tags = [], []
                    continue
                columns = stripped.split() if fast_split else _COLUMN_SPLIT.split(stripped)
                if len(columns) != expected_columns:
                    columns = _COLUMN_SPLIT.split(stripped)
                    if expected_columns is None:
                        expected_columns = len(columns)
                        if expected_columns < 2:
                            raise CorpusError(path, number, f"expected at least 2 columns "
                                                            f"(token ... tag), found 1: "
                                                            f"{quoted(line)}")
                    if len(columns) != expected_columns:
                        raise CorpusError(path, number, f"expected {expected_columns} columns "
                                                        f"(token ... tag), found {len(columns)}: "
                                                        f"{quoted(line)}")
                token = columns[0]
                if char_format and len(token) != 1 and not is_one_character(token):
                    raise CorpusError(path, number, _several_characters(token))
                if not tokens:
                    start_line = number
                tokens.append(token)
                tags.append(columns[-1])
    if tokens and (limit is None or produced < limit):
        yield Sentence(tokens, tags, start_line)


def _several_characters(token: str) -> str:
    # A long token's `quoted` form says its length already.
    length = f" has {len(token)} characters" if repr(token) == quoted(token) else ""
    message = (f"token {quoted(token)}{length}, but the file is read in the character format "
               f"(one character and its tag per line)")
    if _BOM in token:
        return message + ("; it holds U+FEFF, a byte order mark: were files with byte order "
                          "marks concatenated?")
    return message + ("; for a word-level file give input_format=conll "
                      "(data_pipeline.preprocess --input_format=conll)")


def sentence_offsets(path: str | os.PathLike, every: int
                     ) -> tuple[list[tuple[int, int]], str, int]:
    """Byte offsets and line numbers of sentence 0, every, 2*every, ... and the file's sha256.

    One streaming pass over the raw bytes, so later passes can read disjoint ranges in parallel.

    Returns:
      ([(byte_offset, line_number), ...], sha256_hex, number of sentences)
    """
    digest = hashlib.sha256()
    offsets: list[tuple[int, int]] = []
    position = 0
    in_sentence = False
    sentences = 0
    newline = line_ending(path)
    with open(path, "rb") as stream:
        lines = stream if newline == "\n" else _raw_lines(stream, newline.encode("ascii"))
        for number, raw in enumerate(lines, start=1):
            digest.update(raw)
            stripped = raw.strip(b" \t\r\n")  # as read_sentences strips, on bytes
            if number == 1 and stripped.startswith(_UTF8_BOM):
                stripped = stripped[len(_UTF8_BOM):].strip(b" \t")
            blank = not stripped or stripped.startswith(b"-DOCSTART-")
            if not blank and not in_sentence:
                if sentences % every == 0:
                    offsets.append((position, number))
                sentences += 1
            in_sentence = not blank
            position += len(raw)
    return offsets, digest.hexdigest(), sentences


def _raw_lines(stream: BinaryIO, end: bytes, block_size: int = 1 << 20) -> Iterator[bytes]:
    """The lines of a binary stream split on `end` (kept), as iterating a file splits on `\\n`."""
    carry = b""
    for block in iter(lambda: stream.read(block_size), b""):
        parts = (carry + block).split(end)
        carry = parts.pop()
        for part in parts:
            yield part + end
    if carry:
        yield carry


def detect_scheme(prefixes: set[str]) -> str:
    """Picks the tag scheme from the set of prefixes seen in a file (IOB2 for plain B/I)."""
    prefixes = prefixes - {"O"}
    if "M" in prefixes:
        return "bmes"
    if prefixes & {"E", "S"}:
        return "bioes"
    return "bio"


def to_iob2(tags: list[str], scheme: str, *, on_invalid: str, path: str | os.PathLike,
            first_line: int) -> tuple[list[str], int]:
    """Converts one sentence's tags to IOB2.

    Args:
      tags: the tags as in the file.
      scheme: one of SCHEMES.
      on_invalid: "repair" (start a new entity, count it) or "fail".
      path, first_line: where the sentence is, for messages (tag i is on line first_line + i).

    Returns:
      (IOB2 tags, number of repaired tags)

    Raises:
      CorpusError: an unknown prefix, or (with on_invalid="fail") a continuation tag with no open
        entity of its type.
    """
    allowed = SCHEME_PREFIXES[scheme]
    out: list[str] = []
    repaired = 0
    open_type = ""  # the type of the entity the previous tag leaves open ("" = none)
    for i, tag in enumerate(tags):
        prefix, kind = split_tag(tag)
        if prefix == "O":
            out.append("O")
            open_type = ""
            continue
        if prefix not in allowed or not kind:
            expected = ", ".join(f"{p}-TYPE" for p in sorted(allowed))
            raise CorpusError(path, first_line + i,
                              f"tag {quoted(tag)} does not fit the {scheme.upper()} scheme "
                              f"(expected O or {expected})")
        if prefix in "BS":
            begins = True
        elif prefix in "IME":
            continues = open_type == kind
            if not continues and scheme != "iob1":
                if on_invalid == "fail":
                    previous = tags[i - 1] if i else "the sentence start"
                    raise CorpusError(path, first_line + i,
                                      f"tag {quoted(tag)} continues an entity that is not "
                                      f"open (after {quoted(previous)}); use on_invalid=repair "
                                      f"to start a new entity here instead")
                repaired += 1
            begins = not continues
        out.append(("B-" if begins else "I-") + kind)
        # Which entity stays open for the next tag: E and S close it in BIOES/BMES.
        open_type = "" if prefix in "ES" else kind
    return out, repaired


def entity_types_of(iob2_tags: list[str]) -> list[str]:
    """The type of each entity in an IOB2 sequence, in order (one entry per `B-`)."""
    return [tag[2:] for tag in iob2_tags if tag.startswith("B-")]


def build_label_map(entity_types: set[str] | list[str]) -> list[str]:
    """`O` first (id 0), then `B-T`, `I-T` for each type in sorted order."""
    labels = ["O"]
    for kind in sorted(set(entity_types)):
        labels += [f"B-{kind}", f"I-{kind}"]
    return labels
