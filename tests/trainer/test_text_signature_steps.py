"""The steps of the text-in signature, each alone and eagerly, against their Python counterparts:
windows as `data_pipeline.windows.window_records` cuts them, merging as
`merge_window_predictions`, entities as `data_pipeline.tags.extract_entities`. A toy piece table
(a few characters of one, two and three pieces, one the normaliser removes) keeps them fast; the
whole signature against serving.predict is test_export_tag_text.py's."""

import random

import numpy as np
import pytest

import trainer  # noqa: F401  (chooses Keras 2 for tf.keras: models/__init__.py)
import tensorflow as tf  # noqa: E402

from data_pipeline.tags import extract_entities  # noqa: E402
from data_pipeline.windows import merge_window_predictions, window_records  # noqa: E402
from serving import export_format  # noqa: E402
from trainer import text_signature_steps as steps  # noqa: E402
from trainer.piece_table import PieceTable  # noqa: E402

LABELS = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
UNK = 1
PREFIX, SUFFIX, PAD = [0], [2], 3
# Code point -> pieces; every other character is [UNK]; [] = the normaliser removes it.
PIECES = {**{ord(c): [10 + i] for i, c in enumerate("北京上海中国人民欢迎你好")},
          ord("½"): [30, 31, 32], ord("㎏"): [33, 34], ord("\u200b"): []}
ALPHABET = "北京上海中国人民欢迎你好½㎏X\u200b  \t"


def toy_table(pieces=PIECES) -> PieceTable:
    """A run-length PieceTable as `piece_table` builds it, from {code point: pieces}."""
    entries = {0: [UNK]}
    for code_point in sorted(pieces):
        entries[code_point] = pieces[code_point]
        entries.setdefault(code_point + 1, [UNK])
    starts = sorted(entries)
    values = [entries[s] or [UNK] for s in starts]
    row_splits = np.cumsum([0] + [len(v) for v in values]).astype(np.int64)
    return PieceTable(starts=np.asarray(starts, np.int32), row_splits=row_splits,
                      piece_ids=np.asarray([i for v in values for i in v], np.int32),
                      pieceless=np.asarray([not entries[s] for s in starts]),
                      unknown=np.asarray([v == [UNK] for v in values]))


TABLE = toy_table()


def tokens_of(lines, budget, max_line_chars=1000):
    decoded = steps.decode_lines(tf.constant([line.encode() for line in lines]), TABLE,
                                 max_line_chars=max_line_chars)
    return decoded, steps.split_tokens(decoded, TABLE, budget=budget)


def random_lines(seed, count=12, longest=30):
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, longest)))
            for _ in range(count)]


def is_tagged(line):
    tokens = [c for c in line if c not in export_format.SEPARATORS]
    return any(PIECES.get(ord(c)) != [] for c in tokens)  # not all removed by the normaliser


def test_the_toy_table_is_a_piece_table():
    assert TABLE.pieces("北") == [10] and TABLE.pieces("½") == [30, 31, 32]
    assert TABLE.pieces("X") == [UNK] and TABLE.pieces("\u200b") == [UNK]
    assert TABLE.pieces("\u200c") == [UNK] and TABLE.pieces("\U0010ffff") == [UNK]


def test_decode_lines_reads_characters_separators_and_why_a_line_is_not_tagged():
    raw = [b"\xe5\x8c\x97 \xe4\xba", b"", b" \t", "\u200b\u200b".encode(), "北 京X".encode(),
           "北京上海中".encode()]
    lines = steps.decode_lines(tf.constant(raw), TABLE, max_line_chars=4)
    python = [line.decode("utf-8", errors="replace") for line in raw]
    assert lines.num_chars.numpy().tolist() == [len(line) for line in python] == [3, 0, 2, 2, 4, 5]
    assert lines.chars.to_list()[0] == [ord("北"), ord(" "), 0xFFFD]
    assert lines.char_offset.numpy().tolist() == [0, 1, 2, 0, 1, 0, 1, 0, 1, 2, 3, 0, 1, 2, 3, 4]
    assert lines.char_line.numpy().tolist() == [0] * 3 + [2] * 2 + [3] * 2 + [4] * 4 + [5] * 5
    errors = [e.decode() for e in lines.error.numpy()]
    assert errors[:5] == ["", export_format.EMPTY_LINE, export_format.EMPTY_LINE,
                          export_format.NORMALISED_AWAY, ""]
    assert errors[5].startswith("more than max_line_chars=4 characters")
    tagged = lines.tagged.numpy().tolist()
    assert tagged == [True, False, True] + [False] * 4 + [True, False, True, True] + [False] * 5


def test_split_tokens_gives_each_line_its_tokens_and_pieces_cut_to_the_budget():
    lines, tokens = tokens_of(["北½X 京", "", "㎏\u200b上"], budget=2)
    assert tokens.token_line.numpy().tolist() == [0, 0, 0, 0, 2, 2, 2]
    assert tokens.token_index.numpy().tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert tokens.token_char.numpy().tolist() == [0, 1, 2, 4, 5, 6, 7]
    assert tokens.line_tokens.numpy().tolist() == [4, 0, 3]
    assert tokens.line_first.numpy().tolist() == [0, 4, 4]
    assert tokens.pieces.to_list() == [[10], [30, 31], [UNK], [11], [33, 34], [UNK], [12]]
    assert tokens.cum_pieces.numpy().tolist() == [0, 1, 3, 4, 5, 7, 8, 9]
    # "X", and U+200B: the normaliser removes it, it is tagged from one unknown piece.
    assert tokens.num_unknown.numpy().tolist() == [1, 0, 1]


@pytest.mark.parametrize("max_seq_length, stride", [(3, 0), (4, 1), (5, 1), (6, 2), (9, 3),
                                                    (14, 6)])
def test_windows_and_their_inputs_are_what_window_records_makes(max_seq_length, stride):
    budget = max_seq_length - len(PREFIX) - len(SUFFIX)
    text = random_lines(max_seq_length) + ["½½½", "北", "", "㎏" * 9, "\u200b \u200b"]
    _, tokens = tokens_of(text, budget)
    windows = steps.plan_windows(tokens, budget=budget, stride=stride)
    inputs = steps.window_inputs(tokens, windows, prefix_ids=PREFIX, suffix_ids=SUFFIX,
                                 pad_token_id=PAD)
    ours = {}
    for w, line in enumerate(windows.line.numpy().tolist()):
        length = int(inputs.lengths[w])
        assert set(inputs.input_ids[w, length:].numpy().tolist()) <= {PAD}
        assert set(inputs.char_index[w, length:].numpy().tolist()) <= {-1}
        ours.setdefault(line, []).append((inputs.input_ids[w, :length].numpy().tolist(),
                                          inputs.char_index[w, :length].numpy().tolist(),
                                          int(windows.start[w]), int(windows.end[w])))
    expected = {}
    for row, line in enumerate(text):
        if not is_tagged(line):
            continue
        pieces = [TABLE.pieces(c) for c in line if c not in export_format.SEPARATORS]
        first_piece = np.cumsum([0] + [len(p) for p in pieces])[:-1].tolist()
        expected[row] = [(ids, index, start, end) for ids, _, index, start, end in window_records(
            [i for p in pieces for i in p], first_piece, [0] * len(pieces), prefix_ids=PREFIX,
            suffix_ids=SUFFIX, budget=budget, stride=stride)]
    assert ours == expected
    assert sum(map(len, expected.values())) > len(expected)  # lines of several windows


def test_run_model_batches_windows_by_length_and_restores_their_order():
    lengths = np.array([6, 2, 4, 3, 5, 2], np.int64)
    rng = np.random.default_rng(0)
    width = 7
    input_ids = np.where(np.arange(width) < lengths[:, None],
                         rng.integers(4, 50, [6, width]), PAD).astype(np.int32)
    char_index = np.where(np.arange(width) < lengths[:, None] - 1, np.arange(width), -1)
    char_index[:, 0] = -1
    calls = []

    def tag_fn(ids, attention_mask, label_mask):  # position-wise, so batching must not matter
        calls.append(ids.shape.as_list())
        return {"tag_ids": (ids % 7) * label_mask,
                "tag_probs": tf.cast(ids * attention_mask, tf.float32) / 100.0}

    inputs = steps.WindowInputs(tf.constant(input_ids), tf.constant(char_index),
                                tf.constant(lengths))
    tags, probs = steps.run_model(tag_fn, inputs, window_batch_size=4)
    label_mask = (char_index >= 0).astype(np.int32)
    attention = (np.arange(width) < lengths[:, None]).astype(np.int32)
    np.testing.assert_array_equal(tags.numpy(), (input_ids % 7) * label_mask)
    np.testing.assert_allclose(probs.numpy(), input_ids * attention / 100.0, rtol=1e-6)
    # Shortest first, 4 windows a call, each call cut to its longest window.
    assert calls == [[4, 4], [2, 6]]
    empty = steps.WindowInputs(tf.zeros([0, 3], tf.int32), tf.zeros([0, 3], tf.int64),
                               tf.zeros([0], tf.int64))
    tags, probs = steps.run_model(tag_fn, empty, window_batch_size=4)
    assert tags.shape == probs.shape == (0, 3) and len(calls) == 2


@pytest.mark.parametrize("seed", [0, 1])
def test_merge_windows_is_merge_window_predictions(seed):
    budget, stride = 4, 2
    text = random_lines(seed, count=8, longest=40)
    _, tokens = tokens_of(text, budget)
    windows = steps.plan_windows(tokens, budget=budget, stride=stride)
    inputs = steps.window_inputs(tokens, windows, prefix_ids=PREFIX, suffix_ids=SUFFIX,
                                 pad_token_id=PAD)
    rng = np.random.default_rng(seed)
    shape = inputs.input_ids.shape
    window_tags = rng.integers(0, len(LABELS), shape).astype(np.int32)
    window_probs = rng.random(shape).astype(np.float32)
    token_tag, token_prob = steps.merge_windows(tokens, windows, inputs.char_index,
                                                tf.constant(window_tags), tf.constant(window_probs))
    line_tokens = tokens.line_tokens.numpy()
    spans = [(int(line), int(start), int(end), int(line_tokens[line]), index)
             for line, start, end, index in zip(windows.line.numpy(), windows.start.numpy(),
                                                windows.end.numpy(), inputs.char_index.numpy())]
    assert len(spans) > 2 * len(set(s[0] for s in spans))  # overlapping windows to choose from
    for values, ours in ((window_tags, token_tag), (window_probs, token_prob)):
        merged = merge_window_predictions(span + (row,) for span, row in zip(spans, values))
        expected = np.concatenate([merged[line] for line in sorted(merged)])
        np.testing.assert_array_equal(ours.numpy(), expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_character_and_entity_outputs_are_extract_entities_on_each_line(seed):
    text = random_lines(seed, count=10, longest=25) + ["", "北 京"]
    lines, tokens = tokens_of(text, budget=4)
    rng = np.random.default_rng(seed)
    num_tokens = int(tokens.num_tokens)
    token_tag = tf.constant(rng.integers(0, len(LABELS), num_tokens), tf.int32)
    token_prob = tf.constant(rng.random(num_tokens), tf.float32)
    characters = steps.character_outputs(lines, tokens, token_tag, token_prob, label_map=LABELS)
    entities = steps.entity_outputs(lines, tokens, token_tag, token_prob, label_map=LABELS)
    token_line = tokens.token_line.numpy()
    token_char = tokens.token_char.numpy()
    char_offset = lines.char_offset.numpy()
    found = 0
    for row, line in enumerate(text):
        mine = token_line == row
        tags = [LABELS[t] for t in token_tag.numpy()[mine]]
        probs = token_prob.numpy()[mine]
        offsets = char_offset[token_char[mine]]
        char_tags = [""] * len(line)
        for offset, tag in zip(offsets, tags):
            char_tags[offset] = tag
        assert [t.decode() for t in characters["tags"][row][:len(line)].numpy()] == char_tags
        expected = [(offsets[e.start], offsets[e.end - 1] + 1, e.type,
                     line[offsets[e.start]:offsets[e.end - 1] + 1],
                     np.float32(probs[e.start:e.end].astype(np.float64).mean()))
                    for e in extract_entities(tags)]
        count = int(entities["num_entities"][row])
        assert count == len(expected), line
        got = [(int(entities["entity_start"][row][k]), int(entities["entity_end"][row][k]),
                entities["entity_type"][row][k].numpy().decode(),
                entities["entity_text"][row][k].numpy().decode(),
                entities["entity_score"][row][k].numpy()) for k in range(count)]
        assert [g[:4] for g in got] == [e[:4] for e in expected], line
        np.testing.assert_allclose([g[4] for g in got], [e[4] for e in expected], rtol=1e-6)
        found += count
    assert found > 10
