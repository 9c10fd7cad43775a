"""Splitting long sentences into overlapping windows, and merging predictions back.

Nothing is ever truncated silently. A sentence whose pieces do not fit `max_seq_length` (with the
special tokens) is cut into windows at token boundaries; consecutive windows overlap by at most
`stride` pieces. Example with a budget of 6 pieces and stride 2, one piece per character:

    characters   0 1 2 3 4 5 6 7 8 9
    window 0     [0 . . . . 5]                 window_start=0, window_end=6
    window 1             [4 . . . . 9]         window_start=4, window_end=10

When merging, each character takes its prediction from the window where it has the most context:
the smaller of its distances to the window's two ends, where an end that is also the sentence's
end does not count (there is no missing context there). Ties go to the earlier window. Above,
character 4 has context min(inf, 6-1-4) = 1 in window 0 and min(4-4, inf) = 0 in window 1, so it
keeps window 0's prediction; character 5 has 0 in window 0 and 1 in window 1, so it takes window
1's. The overlap is split down the middle.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from data_pipeline.tags import IGNORE_ID

# The windowing settings, here only: preprocessing's and the trainer's defaults and their rule.
MAX_SEQ_LENGTH = 128  # pieces per window, special tokens included
STRIDE = 32  # most pieces two consecutive windows of a sentence share
MAX_POSITIONS = 512  # BERT's position embeddings: no window may be longer


def window_settings_problem(max_seq_length: int, stride: int) -> tuple[str, int, str] | None:
    """The first bad windowing setting as (name, value, what it accepts), or None if both fit.

    The overlap must stay below half a window, so every window brings new characters.
    """
    if not 8 <= max_seq_length <= MAX_POSITIONS:
        return "max_seq_length", max_seq_length, f"expected 8..{MAX_POSITIONS} (BERT positions)"
    if not 0 <= stride < max_seq_length // 2:
        return "stride", stride, (f"expected 0..{max_seq_length // 2 - 1} (the window overlap "
                                  f"must leave room for new characters)")
    return None


def window_budget(max_seq_length: int, prefix_ids: Sequence[int],
                  suffix_ids: Sequence[int]) -> int:
    """Pieces a window holds besides its special tokens ([CLS] ... [SEP])."""
    return max_seq_length - len(prefix_ids) - len(suffix_ids)


def plan_windows(piece_counts: Sequence[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Cuts a sentence into windows of whole tokens.

    Args:
      piece_counts: number of pieces of each token (>= 1).
      budget: pieces a window may hold (max_seq_length minus special tokens).
      stride: most pieces two consecutive windows may share.

    Returns:
      [(start, end), ...] token spans covering every token; one span if the sentence fits. A single
      token with more pieces than `budget` gets a window of its own (its pieces are cut to fit).
    """
    n = len(piece_counts)
    windows: list[tuple[int, int]] = []
    start = 0
    while True:
        end, used = start, 0
        while end < n and used + piece_counts[end] <= budget:
            used += piece_counts[end]
            end += 1
        end = max(end, start + 1)
        windows.append((start, end))
        if end >= n:
            return windows
        next_start, overlap = end, 0
        while next_start - 1 > start and overlap + piece_counts[next_start - 1] <= stride:
            overlap += piece_counts[next_start - 1]
            next_start -= 1
        start = next_start


def window_records(ids: list[int], first_piece: list[int], label_ids: list[int], *,
                   prefix_ids: list[int], suffix_ids: list[int], budget: int, stride: int):
    """Builds the window records of one tokenized sentence.

    Args:
      ids: piece ids of the sentence, no special tokens.
      first_piece: index in `ids` of each token's first piece (see `tokenization`).
      label_ids: one label id per token.
      prefix_ids, suffix_ids: special tokens around each window.
      budget, stride: see `plan_windows`.

    Yields:
      (input_ids, label_ids, char_index, window_start, window_end) per window; the three lists
      have equal length <= budget + len(prefix_ids) + len(suffix_ids).
    """
    n = len(first_piece)
    bounds = list(first_piece) + [len(ids)]
    counts = [min(bounds[j + 1] - bounds[j], budget) for j in range(n)]
    head = [IGNORE_ID] * len(prefix_ids)
    head_index = [-1] * len(prefix_ids)
    tail = [IGNORE_ID] * len(suffix_ids)
    tail_index = [-1] * len(suffix_ids)
    for start, end in plan_windows(counts, budget, stride):
        p0, p1 = bounds[start], bounds[end]
        if p1 - p0 == end - start:  # one piece per token: the common case for characters
            pieces = ids[p0:p1]
            labels = label_ids[start:end]
            index = list(range(start, end))
        else:
            pieces, labels, index = [], [], []
            for j in range(start, end):
                own = ids[bounds[j]:bounds[j + 1]][:budget]
                pieces += own
                labels += [label_ids[j]] + [IGNORE_ID] * (len(own) - 1)
                index += [j] + [-1] * (len(own) - 1)
        yield (prefix_ids + pieces + suffix_ids, head + labels + tail,
               head_index + index + tail_index, start, end)


def merge_window_predictions(windows: Iterable[tuple[int, int, int, int, Sequence[int],
                                                     Sequence[int]]]) -> dict[int, np.ndarray]:
    """Merges per-window predictions back to exactly one value per character.

    Order-independent: windows may arrive shuffled or bucketed.

    Args:
      windows: (sentence_id, window_start, window_end, sentence_length, char_index, values) per
        window; `char_index` int [T] (-1 where no character), `values` [T] aligned with it
        (tag ids, gold label ids, ...).

    Returns:
      {sentence_id: values of its characters, shape [sentence_length]}.

    Raises:
      ValueError: a character of a sentence is covered by no window, or windows disagree on a
        sentence's length.
    """
    big = np.iinfo(np.int64).max
    merged: dict[int, np.ndarray] = {}
    best: dict[int, np.ndarray] = {}
    best_start: dict[int, np.ndarray] = {}
    for sentence_id, start, end, length, char_index, values in windows:
        char_index = np.asarray(char_index)
        values = np.asarray(values)
        keep = char_index >= 0
        chars = char_index[keep]
        vals = values[keep]
        if sentence_id not in merged:
            merged[sentence_id] = np.zeros(length, dtype=vals.dtype)
            best[sentence_id] = np.full(length, -1, dtype=np.int64)
            best_start[sentence_id] = np.full(length, big, dtype=np.int64)
        elif len(merged[sentence_id]) != length:
            raise ValueError(f"sentence {sentence_id}: windows disagree on its length "
                             f"({len(merged[sentence_id])} vs {length})")
        left = chars - start if start > 0 else np.full(chars.shape, big)
        right = end - 1 - chars if end < length else np.full(chars.shape, big)
        score = np.minimum(left, right)
        current, current_start = best[sentence_id][chars], best_start[sentence_id][chars]
        take = (score > current) | ((score == current) & (start < current_start))
        chars = chars[take]
        merged[sentence_id][chars] = vals[take]
        best[sentence_id][chars] = score[take]
        best_start[sentence_id][chars] = start
    for sentence_id, scores in best.items():
        missing = np.flatnonzero(scores < 0)
        if missing.size:
            raise ValueError(f"sentence {sentence_id}: characters {missing[:10].tolist()} are in "
                             f"no window")
    return merged
