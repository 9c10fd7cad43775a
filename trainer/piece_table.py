"""The piece table: every Unicode code point's piece ids, as preprocessing tokenizes it.

The text-in signature (`trainer.text_signature`) tokenizes characters inside the graph with this
table. It is computed at export time by running the real tokenizer on every code point
(U+0000..U+10FFFF) exactly as preprocessing tokenizes a character, and stored run-length
encoded: consecutive code points with the same pieces share an entry (unassigned and private-use
blocks, the unknown id's long runs), looked up with searchsorted.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

_CODE_POINTS = 0x110000


@dataclasses.dataclass(frozen=True)
class PieceTable:
    """Every code point's piece ids, as preprocessing tokenizes it as a one-character token.

    Entry k covers the code points starts[k] .. starts[k + 1] - 1 (the last one up to U+10FFFF);
    all of them have the same pieces:

        starts     0 .. 19968 (中 is U+4E2D) ..        one entry per run of equal pieces
        pieces     [unk] [unk] .. [704] [705] ..

    Attributes:
      starts: int32 [K] increasing, starts[0] = 0.
      row_splits: int64 [K + 1]; entry k's pieces are piece_ids[row_splits[k]:row_splits[k + 1]]
        (at least one).
      piece_ids: int32 [total pieces].
      pieceless: bool [K]; the tokenizer gives these characters no piece (its normaliser removes
        them); they are tagged from one [unk] piece, and a line of only such characters is not
        tagged (TokenEncoder).
      unknown: bool [K]; the pieces are exactly [unk] (LineEncoder's `unknown`).
    """

    starts: Any
    row_splits: Any
    piece_ids: Any
    pieceless: Any
    unknown: Any

    def pieces(self, char: str) -> list[int]:
        """The piece ids of one character (for tests and debugging)."""
        k = int(np.searchsorted(self.starts, ord(char), side="right")) - 1
        return self.piece_ids[self.row_splits[k]:self.row_splits[k + 1]].tolist()


@functools.lru_cache(maxsize=4)
def piece_table(tokenizer_json: str, unk_token_id: int) -> PieceTable:
    """Runs the backend tokenizer over every code point, one character per token.

    Each character is encoded exactly as `data_pipeline.tokenization.TokenEncoder` encodes a
    token (`encode_batch([[char]], is_pretokenized=True, add_special_tokens=False)`), so the
    table holds what preprocessing gives every possible character. Takes ~10 s (cached per
    tokenizer within a process). Surrogates (U+D800..U+DFFF) cannot be in decoded text; they
    join the run before them.
    """
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer_json)
    code_points = [c for c in range(_CODE_POINTS) if not 0xD800 <= c <= 0xDFFF]
    encodings = backend.encode_batch([[chr(c)] for c in code_points], is_pretokenized=True,
                                     add_special_tokens=False)
    starts, splits, values, pieceless = [], [0], [], []
    previous = None
    for code_point, encoding in zip(code_points, encodings):
        ids = tuple(encoding.ids)
        if ids == previous:
            continue
        previous = ids
        starts.append(code_point)
        pieceless.append(not ids)
        values.extend(ids or [unk_token_id])
        splits.append(len(values))
    piece_ids = np.asarray(values, np.int32)
    row_splits = np.asarray(splits, np.int64)
    lengths = np.diff(row_splits)
    unknown = (lengths == 1) & (piece_ids[row_splits[:-1]] == unk_token_id)
    return PieceTable(np.asarray(starts, np.int32), row_splits, piece_ids,
                      np.asarray(pieceless, bool), unknown)
