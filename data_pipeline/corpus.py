"""Reading tagged corpora and converting their tag schemes to IOB2.

Two file formats, both with a blank line between sentences (`\\n` or `\\r\\n` line ends):

- `char`: one `character tag` pair per line (People's Daily, MSRA), separated by spaces or tabs
  (a full-width space U+3000 is a character, not a separator).
- `conll`: whitespace-separated columns, token first and tag last (CoNLL-2003 style). Every
  line of a file must have the same number of columns.

`-DOCSTART-` lines separate sentences like blank lines, in both formats.

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
from collections.abc import Iterator
from typing import BinaryIO

FORMATS = ("char", "conll")
SCHEMES = ("bio", "iob1", "bioes", "bmes")
ON_INVALID = ("repair", "fail")

# Prefixes each scheme allows, besides the bare "O".
_SCHEME_PREFIXES = {
    "bio": frozenset("BI"),
    "iob1": frozenset("BI"),
    "bioes": frozenset("BIES"),
    "bmes": frozenset("BMES"),
}
_COLUMN_SPLIT = re.compile(r"[ \t]+")


class CorpusError(ValueError):
    """Bad corpus input. The message starts with `path:line:` (no line for whole-file errors)."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str):
        self.path = os.fspath(path)
        self.line = line
        self.reason = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


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


def iter_line_blocks(stream: BinaryIO, path: str | os.PathLike, first_line: int = 1,
                     block_size: int = 1 << 20) -> Iterator[tuple[int, list[str]]]:
    """Yields (line number of the block's first line, lines without line ends), ~1 MiB at a time.

    Decoding a block at once is several times faster than line by line; memory stays flat.

    Raises:
      CorpusError: invalid UTF-8, naming the line.
    """
    number = first_line
    carry = b""
    while True:
        block = stream.read(block_size)
        if not block and not carry:
            return
        block = carry + block if block else carry + b"\n"
        cut = block.rfind(b"\n") + 1
        if cut == 0:
            carry = block
            continue
        carry, block = block[cut:], block[:cut]
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            for offset, raw in enumerate(block.split(b"\n")):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise CorpusError(path, number + offset, f"invalid UTF-8 at byte {e.start} "
                                      f"of the line ({raw[max(0, e.start - 8):e.start + 8]!r})"
                                      ) from None
            raise
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        lines = text.split("\n")
        lines.pop()  # the empty string after the block's last line end
        yield number, lines
        number += len(lines)


def _is_separator(stripped: str) -> bool:
    return not stripped or stripped.startswith("-DOCSTART-")


def detect_format(path: str | os.PathLike) -> str:
    """Guesses `char` or `conll` from the first non-blank line of a file."""
    with open(path, "rb") as stream:
        for _, lines in iter_line_blocks(stream, path):
            for line in lines:
                stripped = line.strip(" \t")
                if _is_separator(stripped):
                    continue
                columns = _COLUMN_SPLIT.split(stripped)
                return "char" if len(columns) == 2 and len(columns[0]) == 1 else "conll"
    raise CorpusError(path, None, "empty file: no sentences found")


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
      CorpusError: invalid UTF-8 or a wrong column count.
    """
    if input_format not in FORMATS:
        raise ValueError(f"input_format must be one of {FORMATS}, got {input_format!r}")
    expected_columns = 2 if input_format == "char" else None
    tokens: list[str] = []
    tags: list[str] = []
    start_line = first_line
    produced = 0
    with open(path, "rb") as stream:
        stream.seek(offset)
        for block_start, lines in iter_line_blocks(stream, path, first_line):
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
                # str.split() is fast but also splits on non-ASCII spaces (U+3000 is a character
                # here): when it disagrees with the expected count, split on spaces/tabs only.
                columns = stripped.split()
                if len(columns) != expected_columns:
                    columns = _COLUMN_SPLIT.split(stripped)
                    if expected_columns is None:
                        expected_columns = len(columns)
                        if expected_columns < 2:
                            raise CorpusError(path, number, f"expected at least 2 columns "
                                                            f"(token ... tag), found 1: {line!r}")
                    if len(columns) != expected_columns:
                        raise CorpusError(path, number, f"expected {expected_columns} columns "
                                                        f"(token ... tag), found {len(columns)}: "
                                                        f"{line!r}")
                if not tokens:
                    start_line = number
                tokens.append(columns[0])
                tags.append(columns[-1])
    if tokens and (limit is None or produced < limit):
        yield Sentence(tokens, tags, start_line)


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
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, start=1):
            digest.update(raw)
            stripped = raw.strip(b" \t\r\n")  # as read_sentences strips, on bytes
            blank = not stripped or stripped.startswith(b"-DOCSTART-")
            if not blank and not in_sentence:
                if sentences % every == 0:
                    offsets.append((position, number))
                sentences += 1
            in_sentence = not blank
            position += len(raw)
    return offsets, digest.hexdigest(), sentences


def split_tag(tag: str) -> tuple[str, str]:
    """`B-PER` -> ("B", "PER"); `O` -> ("O", ""). Accepts `-` or `_` after a one-letter prefix."""
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[1] in "-_":
        return tag[0], tag[2:]
    return tag, ""


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
    allowed = _SCHEME_PREFIXES[scheme]
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
                              f"tag {tag!r} does not fit the {scheme.upper()} scheme "
                              f"(expected O or {expected})")
        if prefix in "BS":
            begins = True
        elif prefix in "IME":
            continues = open_type == kind
            if not continues and scheme != "iob1":
                if on_invalid == "fail":
                    previous = tags[i - 1] if i else "the sentence start"
                    raise CorpusError(path, first_line + i,
                                      f"tag {tag!r} continues an entity that is not open "
                                      f"(after {previous!r}); use on_invalid=repair to start a "
                                      f"new entity here instead")
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
