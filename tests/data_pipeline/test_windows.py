"""Window planning and merging (pure Python / numpy)."""

import numpy as np
import pytest

from data_pipeline.tags import IGNORE_ID
from data_pipeline.windows import merge_window_predictions, plan_windows, window_records


def test_plan_windows_overlap_and_cover():
    assert plan_windows([1] * 10, budget=6, stride=2) == [(0, 6), (4, 10)]
    assert plan_windows([1] * 5, budget=6, stride=2) == [(0, 5)]
    # Multi-piece tokens: windows end at token boundaries and never exceed the budget.
    counts = [2, 3, 1, 2, 2, 1, 3]
    windows = plan_windows(counts, budget=5, stride=2)
    assert all(sum(counts[s:e]) <= 5 for s, e in windows)
    assert windows[0][0] == 0 and windows[-1][1] == len(counts)
    assert all(b[0] <= a[1] and b[0] > a[0] for a, b in zip(windows, windows[1:]))
    # A token longer than the budget gets a window of its own instead of looping forever.
    assert plan_windows([1, 9, 1], budget=4, stride=1) == [(0, 1), (1, 2), (2, 3)]


def test_window_records_align_labels_to_first_pieces():
    # token 0 has 2 pieces, token 1 has 1, token 2 has 3.
    ids = [10, 11, 20, 30, 31, 32]
    first_piece = [0, 2, 3]
    (record,) = window_records(ids, first_piece, [1, 0, 2], prefix_ids=[101], suffix_ids=[102],
                               budget=10, stride=2)
    input_ids, labels, char_index, start, end = record
    assert input_ids == [101, 10, 11, 20, 30, 31, 32, 102]
    assert labels == [IGNORE_ID, 1, IGNORE_ID, 0, 2, IGNORE_ID, IGNORE_ID, IGNORE_ID]
    assert char_index == [-1, 0, -1, 1, 2, -1, -1, -1]
    assert (start, end) == (0, 3)


@pytest.mark.parametrize("length,budget,stride", [(10, 6, 2), (577, 126, 32), (300, 126, 0),
                                                  (50, 8, 7)])
def test_merge_takes_each_char_from_the_window_with_most_context(length, budget, stride):
    rng = np.random.default_rng(length)
    labels = rng.integers(0, 7, size=length).tolist()
    ids = list(range(length))
    records = list(window_records(ids, list(range(length)), labels, prefix_ids=[0],
                                  suffix_ids=[0], budget=budget, stride=stride))
    assert all(len(r[0]) <= budget + 2 for r in records)
    # Each window predicts its own window number; gold labels must come back exactly.
    rng.shuffle(records)
    merged = merge_window_predictions(
        (7, s, e, length, ci, lab) for _, lab, ci, s, e in records)
    assert merged[7].tolist() == labels
    owner = merge_window_predictions(
        (7, s, e, length, ci, [s] * len(ci)) for _, _, ci, s, e in records)[7]
    for char in range(length):
        def context(window):
            s, e = window
            left = char - s if s > 0 else length
            right = e - 1 - char if e < length else length
            return min(left, right)
        spans = sorted((s, e) for _, _, _, s, e in records if s <= char < e)
        best = max(spans, key=context)  # max() keeps the first (earliest) among ties
        assert owner[char] == best[0]


def test_merge_reports_uncovered_characters():
    with pytest.raises(ValueError, match="sentence 3: characters \\[2\\] are in no window"):
        merge_window_predictions([(3, 0, 2, 3, [-1, 0, 1, -1], [0, 1, 1, 0])])
