"""Raw lines -> tokens -> pieces -> windows, exactly as preprocessing tokenizes and windows.

Characters (char models) or words (word models) are read the way the corpus reader reads a corpus
file: spaces and tabs separate, they are never tokens. So a space in a Chinese line is skipped,
and every other character, the full-width space U+3000 included, is a token. Offsets always index
the ORIGINAL line:

    line      "北京 欢迎你"          (index 2 is a space)
    tokens    北 京 欢 迎 你         spans (0,1) (1,2) (3,4) (4,5) (5,6)

Tokens are then tokenized exactly as preprocessing did (`TokenEncoder`) and cut into overlapping
windows (`window_records`). No TensorFlow.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from serving.export_format import (EMPTY_LINE, INPUT_FORMATS, NORMALISED_AWAY, SEPARATORS,
                                   ExportSettings)

_WORD = re.compile(f"[^{re.escape(SEPARATORS)}]+")


def split_line(line: str, input_format: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Splits a raw line into the tokens a model of `input_format` was trained on.

    Args:
      line: one sentence or document, without its line end.
      input_format: "char": every character but spaces, tabs and line ends is a token;
        "conll": runs of other characters (words) are tokens.

    Returns:
      (tokens, spans): spans[j] = (start, end) character offsets of tokens[j] in `line`.
    """
    if input_format == "char":
        spans = [(i, i + 1) for i, ch in enumerate(line) if ch not in SEPARATORS]
    else:
        spans = [match.span() for match in _WORD.finditer(line)]
    return [line[start:end] for start, end in spans], spans


@dataclasses.dataclass
class EncodedLine:
    """One line, tokenized and cut into windows as preprocessing would.

    Attributes:
      tokens, spans: see `split_line`.
      windows: [(input_ids, char_index, window_start, window_end)] as `window_records` makes them
        (input_ids and char_index lists of equal length, special tokens included).
      unknown: tokens whose only piece is the unknown token.
      error: why the line cannot be tagged (empty, too long, nothing left after normalising).
    """

    tokens: list[str]
    spans: list[tuple[int, int]]
    windows: list[tuple[list[int], list[int], int, int]]
    unknown: list[str]
    error: str | None = None


class LineEncoder:
    """Raw lines -> tokens -> pieces -> windows, exactly as preprocessing tokenizes and windows.

    Args:
      tokenizer_json: the backend tokenizer JSON preprocessing used.
      prefix_ids, suffix_ids, unk_token_id: from its TokenizerInfo.
      max_seq_length, stride: the windowing settings.
      input_format: "char" or "conll" (see `split_line`).
      max_line_chars: longer lines get an error instead of windows; 0 = no limit.
    """

    def __init__(self, *, tokenizer_json: str, prefix_ids: Sequence[int],
                 suffix_ids: Sequence[int], unk_token_id: int, max_seq_length: int, stride: int,
                 input_format: str, max_line_chars: int = 0):
        from tokenizers import Tokenizer

        from data_pipeline.tokenization import TokenEncoder
        from data_pipeline.windows import window_budget

        if input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}")
        self.encoder = TokenEncoder(Tokenizer.from_str(tokenizer_json), unk_token_id)
        self.prefix_ids, self.suffix_ids = list(prefix_ids), list(suffix_ids)
        self.unk_token_id = unk_token_id
        self.budget = window_budget(max_seq_length, self.prefix_ids, self.suffix_ids)
        self.stride = stride
        self.input_format = input_format
        self.max_line_chars = max_line_chars

    @classmethod
    def from_settings(cls, settings: ExportSettings, max_line_chars: int = 0) -> "LineEncoder":
        return cls(tokenizer_json=settings.tokenizer_json, prefix_ids=settings.prefix_ids,
                   suffix_ids=settings.suffix_ids, unk_token_id=settings.unk_token_id,
                   max_seq_length=settings.max_seq_length, stride=settings.stride,
                   input_format=settings.input_format, max_line_chars=max_line_chars)

    def encode(self, texts: Sequence[str]) -> list[EncodedLine]:
        """Encodes lines (without line ends); one EncodedLine per text, in order."""
        from data_pipeline.windows import window_records

        lines = []
        todo = []
        for text in texts:
            tokens, spans = split_line(text, self.input_format)
            line = EncodedLine(tokens, spans, [], [])
            if self.max_line_chars and len(text) > self.max_line_chars:
                line.error = (f"{len(text):,} characters, more than max_line_chars="
                              f"{self.max_line_chars:,}; split it into several lines")
            elif not tokens:
                line.error = EMPTY_LINE
            else:
                todo.append(line)
            lines.append(line)
        for line, (ids, first_piece, _) in zip(
                todo, self.encoder.encode([line.tokens for line in todo])):
            if not ids:
                line.error = NORMALISED_AWAY
                continue
            bounds = first_piece + [len(ids)]
            line.unknown = [token for j, token in enumerate(line.tokens)
                            if ids[bounds[j]:bounds[j + 1]] == [self.unk_token_id]]
            line.windows = [
                (input_ids, char_index, start, end)
                for input_ids, _, char_index, start, end in window_records(
                    ids, first_piece, [0] * len(first_piece), prefix_ids=self.prefix_ids,
                    suffix_ids=self.suffix_ids, budget=self.budget, stride=self.stride)]
        return lines
