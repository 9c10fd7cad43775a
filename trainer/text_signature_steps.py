"""The steps of the text-in signature "tag_text", each a graph function testable alone.

`trainer.text_signature` composes them, in the order they appear here, into the tf.function an
export holds (its docstring draws the pipeline on an example). Each runs eagerly too, so it is
tested alone against its Python counterpart (`data_pipeline.windows`, `data_pipeline.tags`).

Shapes: a batch holds B lines of C characters in all, N tokens to tag (the characters of the
tagged lines that are not separators; for word models their words), W windows of at most T
pieces; a line-local token index counts the tokens of its line from 0.

Word models replace step 1 (after `decode_characters`) and the per-character outputs of step 5
with their own (`trainer.text_signature_words`); windows, the model, merging and entities are
the same steps. They and the four tuples they pass between them make about 460 lines: one file,
so that the pipeline reads from top to bottom in the order it runs.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from data_pipeline.tags import entity_type
from serving import export_format
from trainer.piece_table import PieceTable


class Lines(NamedTuple):
    """The characters of B lines (`decode_lines`).

    Attributes:
      chars: int32 ragged [B, (chars)], the code points of each line.
      num_lines: int64 [], B.
      num_chars: int64 [B], characters per line.
      char_line: int64 [C], each character's line.
      char_offset: int64 [C], each character's offset in its line.
      entry: int64 [C], each character's piece table entry (character models; -1 for word
        models).
      tagged: bool [C], a token (not a separator), or a character of one, of a line that is
        tagged.
      error: string [B], why the line is not tagged (serving.predict's message), "" if it is.
    """

    chars: tf.RaggedTensor
    num_lines: tf.Tensor
    num_chars: tf.Tensor
    char_line: tf.Tensor
    char_offset: tf.Tensor
    entry: tf.Tensor
    tagged: tf.Tensor
    error: tf.Tensor


class Tokens(NamedTuple):
    """The N tokens (characters or words) of the tagged lines, line by line (`split_tokens`,
    `trainer.text_signature_words.split_words`).

    Attributes:
      token_char: int64 [N], index of the token's (first) character in the flat characters [C].
      token_last_char: int64 [N], index of its last character (token_char for a character).
      token_line: int64 [N], its line.
      token_index: int64 [N], its line-local index.
      num_tokens: int64 [], N.
      line_tokens: int64 [B], tokens per line (0 for a line that is not tagged).
      line_first: int64 [B], index of a line's first token in [N].
      pieces: int32 ragged [N, (pieces)], each token's piece ids, cut to the window budget.
      cum_pieces: int64 [N + 1], pieces before each token (cum_pieces[N] = all pieces).
      num_unknown: int32 [B], tokens per line whose pieces are exactly the unknown id.
    """

    token_char: tf.Tensor
    token_last_char: tf.Tensor
    token_line: tf.Tensor
    token_index: tf.Tensor
    num_tokens: tf.Tensor
    line_tokens: tf.Tensor
    line_first: tf.Tensor
    pieces: tf.RaggedTensor
    cum_pieces: tf.Tensor
    num_unknown: tf.Tensor


class Windows(NamedTuple):
    """W windows, line by line, each line's in order (`plan_windows`); all int64 [W].

    Attributes:
      line: the window's line.
      start, end: its tokens, line-local indices start .. end - 1.
    """

    line: tf.Tensor
    start: tf.Tensor
    end: tf.Tensor


class WindowInputs(NamedTuple):
    """The model's input per window (`window_inputs`).

    Attributes:
      input_ids: int32 [W, T], [prefix] pieces [suffix], then the pad id.
      char_index: int64 [W, T], the line-local token index at a token's first piece, -1 at its
        other pieces, special tokens and padding (as `data_pipeline.windows.window_records`).
      lengths: int64 [W], pieces per window with the special tokens.
    """

    input_ids: tf.Tensor
    char_index: tf.Tensor
    lengths: tf.Tensor


def decode_characters(text: tf.Tensor) -> Lines:
    """Step 1, for character and word models: UTF-8 lines -> their characters.

    Invalid UTF-8 is read as U+FFFD exactly as Python's errors="replace". Leaves to the model's
    own step what depends on its tokenizer: `entry` is -1, `tagged` marks every character that
    is not a separator (`serving.export_format.SEPARATORS`), `error` is "".

    Args:
      text: string [B].

    Returns:
      Lines (B lines, C characters).
    """
    separators = np.asarray([ord(c) for c in export_format.SEPARATORS], np.int32)
    chars = tf.strings.unicode_decode(text, "UTF-8", errors="replace",
                                      replacement_char=0xFFFD)  # int32 [B, (C)]
    num_lines = tf.shape(text, out_type=tf.int64)[0]
    num_chars = chars.row_lengths()                   # [B]
    code_points = chars.flat_values                   # [C]
    char_line = chars.value_rowids()                  # [C]
    char_offset = (tf.range(tf.size(code_points, out_type=tf.int64))
                   - tf.gather(chars.row_splits, char_line))  # offset in its line
    is_token = tf.reduce_all(code_points[:, None] != separators[None, :], axis=1)
    return Lines(chars, num_lines, num_chars, char_line, char_offset,
                 tf.fill(tf.shape(char_line), tf.constant(-1, tf.int64)), is_token,
                 tf.fill([num_lines], ""))


def line_errors(lines: Lines, tokens_in_line: tf.Tensor, real_in_line: tf.Tensor, *,
                max_line_chars: int) -> tf.Tensor:
    """Why each line is not tagged, with serving.predict's messages ("" if it is tagged).

    Args:
      lines: from `decode_characters`.
      tokens_in_line: int64 [B], tokens (characters or words) per line.
      real_in_line: int64 [B], those of them that the tokenizer gives a piece.
      max_line_chars: longer lines are not tagged.

    Returns:
      string [B].
    """
    too_long = (f"more than max_line_chars={max_line_chars:,} characters; split it into "
                f"several lines")
    return tf.where(lines.num_chars > max_line_chars, too_long, tf.where(
        tokens_in_line == 0, export_format.EMPTY_LINE,
        tf.where(real_in_line == 0, export_format.NORMALISED_AWAY, "")))


def decode_lines(text: tf.Tensor, table: PieceTable, *, max_line_chars: int) -> Lines:
    """Step 1 (character models): UTF-8 lines -> characters, which of them to tag, and why a
    line is not tagged.

    A line is not tagged if it has more than `max_line_chars` characters, no token, or only
    tokens the normaliser removes.

    Args:
      text: string [B].
      table: the piece table of the tokenizer.
      max_line_chars: longer lines are not tagged.

    Returns:
      Lines (B lines, C characters).
    """
    lines = decode_characters(text)
    is_token = lines.tagged
    entry = tf.searchsorted(tf.constant(table.starts), lines.chars.flat_values, side="right",
                            out_type=tf.int64) - 1

    # Lines that are not tagged, with serving.predict's reasons.
    tokens_in_line = tf.math.unsorted_segment_sum(tf.cast(is_token, tf.int64), lines.char_line,
                                                  lines.num_lines)
    real = is_token & ~tf.gather(tf.constant(table.pieceless), entry)
    real_in_line = tf.math.unsorted_segment_sum(tf.cast(real, tf.int64), lines.char_line,
                                                lines.num_lines)
    error = line_errors(lines, tokens_in_line, real_in_line, max_line_chars=max_line_chars)
    tagged = is_token & tf.gather(error == "", lines.char_line)
    return lines._replace(entry=entry, tagged=tagged, error=error)


def split_tokens(lines: Lines, table: PieceTable, *, budget: int) -> Tokens:
    """Step 1 (continued): the tokens of the lines to tag and their pieces.

    Args:
      lines: from `decode_lines`.
      table: the piece table of the tokenizer.
      budget: pieces a window holds; a token of more pieces is cut to fit, as window_records
        does.

    Returns:
      Tokens (N of them).
    """
    segment_sum = tf.math.unsorted_segment_sum
    token_char = tf.where(lines.tagged)[:, 0]                          # [N] index into chars
    token_line = tf.gather(lines.char_line, token_char)                # [N]
    token_entry = tf.gather(lines.entry, token_char)                   # [N]
    num_tokens = tf.size(token_char, out_type=tf.int64)
    line_tokens = segment_sum(tf.ones_like(token_line), token_line, lines.num_lines)  # [B]
    line_first = tf.cumsum(line_tokens, exclusive=True)                # [B]
    token_index = tf.range(num_tokens) - tf.gather(line_first, token_line)  # in its line
    pieces_of = tf.RaggedTensor.from_row_splits(tf.constant(table.piece_ids),
                                                tf.constant(table.row_splits))
    pieces = tf.gather(pieces_of, token_entry)[:, :budget]             # [N, (k)]
    cum_pieces = tf.concat([tf.zeros([1], tf.int64), tf.cumsum(pieces.row_lengths())], 0)
    unknown = tf.cast(tf.gather(tf.constant(table.unknown), token_entry), tf.int32)
    num_unknown = segment_sum(unknown, token_line, lines.num_lines)    # [B]
    return Tokens(token_char, token_char, token_line, token_index, num_tokens, line_tokens,
                  line_first, pieces, cum_pieces, num_unknown)


def plan_windows(tokens: Tokens, *, budget: int, stride: int) -> Windows:
    """Step 2: `data_pipeline.windows.plan_windows` for every line at once.

    One window per line and iteration of a while loop. With cum_pieces strictly increasing (a
    token has >= 1 piece), the greedy loops of plan_windows are searches: end = the most tokens
    from start whose pieces fit the budget (at least one), next start = the first token after
    start from which the pieces up to end fit the stride.

    Args:
      tokens: from `split_tokens`.
      budget, stride: pieces a window holds; most pieces two consecutive windows share.

    Returns:
      Windows (W of them).
    """
    cum, line_first, line_tokens = tokens.cum_pieces, tokens.line_first, tokens.line_tokens

    def at(local):  # cum at a line-local token index, for every line
        return tf.gather(cum, tf.minimum(line_first + local, tokens.num_tokens))

    def plan(start, active, lines_out, starts_out, ends_out, step):
        end = tf.searchsorted(cum, at(start) + budget, side="right", out_type=tf.int64) - 1
        end = tf.maximum(tf.minimum(end - line_first, line_tokens), start + 1)
        following = tf.searchsorted(cum, at(end) - stride, side="left", out_type=tf.int64)
        following = tf.maximum(following - line_first, start + 1)
        rows = tf.where(active)[:, 0]
        return (following, active & (end < line_tokens), lines_out.write(step, rows),
                starts_out.write(step, tf.gather(start, rows)),
                ends_out.write(step, tf.gather(end, rows)), step + 1)

    def vectors():
        return tf.TensorArray(tf.int64, size=0, dynamic_size=True, infer_shape=False,
                              element_shape=tf.TensorShape([None]))

    _, _, lines_out, starts_out, ends_out, _ = tf.while_loop(
        lambda start, active, *_: tf.reduce_any(active), plan,
        [tf.zeros_like(line_tokens), line_tokens > 0, vectors(), vectors(), vectors(),
         tf.constant(0)])
    # Line by line, each line's windows in order: the order serving.Predictor sees them in.
    order = tf.argsort(lines_out.concat(), stable=True)
    return Windows(tf.gather(lines_out.concat(), order), tf.gather(starts_out.concat(), order),
                   tf.gather(ends_out.concat(), order))


def window_inputs(tokens: Tokens, windows: Windows, *, prefix_ids: Sequence[int],
                  suffix_ids: Sequence[int], pad_token_id: int) -> WindowInputs:
    """Step 2 (continued): each window's pieces between the special tokens, as window_records.

    Args:
      tokens: from `split_tokens`.
      windows: from `plan_windows`.
      prefix_ids, suffix_ids, pad_token_id: from the tokenizer's TokenizerInfo.

    Returns:
      WindowInputs ([W, T]).
    """
    pieces, cum = tokens.pieces, tokens.cum_pieces
    num_windows = tf.size(windows.line)
    first_of_line = tf.gather(tokens.line_first, windows.line)
    piece_range = tf.ragged.range(tf.gather(cum, first_of_line + windows.start),
                                  tf.gather(cum, first_of_line + windows.end))  # [W, (len)]
    piece_token = pieces.value_rowids()                          # [P] token of a piece
    piece_first = tf.range(tf.size(piece_token, out_type=tf.int64)) == tf.gather(
        pieces.row_splits, piece_token)
    piece_index = tf.where(piece_first, tf.gather(tokens.token_index, piece_token), -1)

    def framed(values, head, tail):  # [W, (len)] -> [W, (len + specials)]
        rows = tf.stack([num_windows, 1])
        return tf.concat([
            tf.RaggedTensor.from_tensor(tf.tile(tf.constant([head], tf.int64), rows)),
            values,
            tf.RaggedTensor.from_tensor(tf.tile(tf.constant([tail], tf.int64), rows))], axis=1)

    window_ids = framed(tf.gather(tf.cast(pieces.flat_values, tf.int64), piece_range),
                        list(prefix_ids), list(suffix_ids))
    window_chars = framed(tf.gather(piece_index, piece_range), [-1] * len(prefix_ids),
                          [-1] * len(suffix_ids))
    input_ids = tf.cast(window_ids.to_tensor(default_value=pad_token_id), tf.int32)  # [W, T]
    return WindowInputs(input_ids, window_chars.to_tensor(default_value=-1),
                        window_ids.row_lengths())


def run_model(tag_fn: Callable[..., dict[str, tf.Tensor]], inputs: WindowInputs, *,
              window_batch_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Step 3: the model over windows of similar length, window_batch_size at a time (the
    batches serving.Predictor makes for up to 256 lines).

    Args:
      tag_fn: (input_ids, attention_mask, label_mask: int32 [b, t]) -> {"tag_ids" int32 [b, t],
        "tag_probs" float32 [b, t], ...}; `serving_function.tag_windows` of a model.
      inputs: from `window_inputs`.
      window_batch_size: windows per call of tag_fn; each call's windows are cut to the
        longest of them.

    Returns:
      (tag ids int32 [W, T], tag probabilities float32 [W, T]), 0 at padding.
    """
    input_ids, char_index, lengths = inputs
    num_windows = tf.size(lengths)
    width = tf.shape(input_ids)[1]
    by_length = tf.argsort(lengths, stable=True)
    num_batches = (num_windows + window_batch_size - 1) // window_batch_size

    def run(step, tags, probs):
        rows = by_length[step * window_batch_size:(step + 1) * window_batch_size]
        size = tf.cast(tf.reduce_max(tf.gather(lengths, rows)), tf.int32)
        out = tag_fn(
            tf.gather(input_ids, rows)[:, :size],
            tf.sequence_mask(tf.cast(tf.gather(lengths, rows), tf.int32), size, tf.int32),
            tf.cast(tf.gather(char_index, rows)[:, :size] >= 0, tf.int32))
        pad = [[0, 0], [0, width - size]]
        return (step + 1, tags.write(step + 1, tf.pad(out["tag_ids"], pad)),
                probs.write(step + 1, tf.pad(out["tag_probs"], pad)))

    def matrices(dtype):  # element 0 is [0, T], so concat works for no windows too
        array = tf.TensorArray(dtype, size=1, dynamic_size=True, infer_shape=False,
                               element_shape=tf.TensorShape([None, None]))
        return array.write(0, tf.zeros([0, width], dtype))

    _, tags, probs = tf.while_loop(lambda step, *_: step < num_batches, run,
                                   [tf.constant(0), matrices(tf.int32), matrices(tf.float32)])
    restore = tf.math.invert_permutation(by_length)
    return tf.gather(tags.concat(), restore), tf.gather(probs.concat(), restore)


def merge_windows(tokens: Tokens, windows: Windows, char_index: tf.Tensor,
                  window_tags: tf.Tensor, window_probs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Step 4: `data_pipeline.windows.merge_window_predictions` for every token at once.

    A token takes the window where it has the most context, min(distance to the window's
    start, to its end), where an end that is the line's end does not count (n, more than any
    distance); ties go to the earlier window.

    Args:
      tokens, windows: from `split_tokens`, `plan_windows`.
      char_index: int64 [W, T] (`WindowInputs.char_index`).
      window_tags: int32 [W, T]; window_probs: float32 [W, T] (`run_model`).

    Returns:
      (tag id int32 [N], probability float32 [N]) per token.
    """
    segment_sum = tf.math.unsorted_segment_sum
    labelled = tf.where(char_index >= 0)                         # [M, 2]
    window = labelled[:, 0]
    local = tf.gather_nd(char_index, labelled)
    start, end = tf.gather(windows.start, window), tf.gather(windows.end, window)
    line = tf.gather(windows.line, window)
    length = tf.gather(tokens.line_tokens, line)
    context = tf.minimum(tf.where(start > 0, local - start, length),
                         tf.where(end < length, end - 1 - local, length))
    rank = context * (length + 1) + (length - start)
    token = tf.gather(tokens.line_first, line) + local          # [M] index into [N]
    best = tf.math.unsorted_segment_max(rank, token, tokens.num_tokens)
    wins = rank == tf.gather(best, token)
    token_tag = segment_sum(tf.where(wins, tf.gather_nd(window_tags, labelled), 0), token,
                            tokens.num_tokens)                   # [N]
    token_prob = segment_sum(tf.where(wins, tf.gather_nd(window_probs, labelled), 0.0),
                             token, tokens.num_tokens)           # [N]
    return token_tag, token_prob


def character_outputs(lines: Lines, tokens: Tokens, token_tag: tf.Tensor, token_prob: tf.Tensor,
                      *, label_map: Sequence[str]) -> dict[str, tf.Tensor]:
    """Step 5: per-character tags and probabilities ("" and 0 where nothing is tagged).

    Args:
      lines, tokens: from `decode_lines`, `split_tokens`.
      token_tag: int32 [N]; token_prob: float32 [N] (`merge_windows`).
      label_map: tag strings, index = tag id.

    Returns:
      {"tags": string [B, max chars], "tag_probs": float32 [B, max chars]}.
    """
    tag_names = tf.constant(list(label_map) + [""])  # index len(label_map) = not tagged
    row_splits = lines.chars.row_splits
    total_chars = tf.size(lines.chars.flat_values, out_type=tf.int64)
    char_tag = tf.tensor_scatter_nd_update(tf.fill([total_chars], len(label_map)),
                                           tokens.token_char[:, None], token_tag)
    char_prob = tf.tensor_scatter_nd_update(tf.zeros([total_chars]),
                                            tokens.token_char[:, None], token_prob)
    return {"tags": tf.RaggedTensor.from_row_splits(tf.gather(tag_names, char_tag), row_splits
                                                    ).to_tensor(default_value=""),
            "tag_probs": tf.RaggedTensor.from_row_splits(char_prob, row_splits).to_tensor()}


def entity_outputs(lines: Lines, tokens: Tokens, token_tag: tf.Tensor, token_prob: tf.Tensor,
                   *, label_map: Sequence[str]) -> dict[str, tf.Tensor]:
    """Step 5: entities, strict IOB2 (`data_pipeline.tags.extract_entities`).

    A token continues the entity of the token before it if it is an I- of the same type after
    a B- or I-. Runs of continuing tokens start at a head; a run whose head is a B- is an
    entity; its score is the mean probability of its tokens.

    Args:
      lines, tokens: from `decode_lines`, `split_tokens`.
      token_tag: int32 [N]; token_prob: float32 [N] (`merge_windows`).
      label_map: tag strings, index = tag id.

    Returns:
      {"num_entities": int32 [B], "entity_start", "entity_end": int32 [B, E] (character
      offsets, -1 padding), "entity_type", "entity_text": string [B, E] ("" padding),
      "entity_score": float32 [B, E] (0 padding)}; E = most entities of a line.
    """
    segment_sum = tf.math.unsorted_segment_sum
    kinds = [entity_type(tag) for tag in label_map]
    kind_names = sorted(set(kinds))
    is_begin = tf.constant([tag.startswith("B") for tag in label_map])
    is_inside = tf.constant([tag.startswith("I") for tag in label_map])
    kind_id = tf.constant([kind_names.index(kind) for kind in kinds], tf.int32)

    previous = tf.roll(token_tag, 1, axis=0)
    continues = ((tokens.token_index > 0) & tf.gather(is_inside, token_tag)
                 & (tf.gather(kind_id, token_tag) == tf.gather(kind_id, previous))
                 & (tf.gather(is_begin, previous) | tf.gather(is_inside, previous)))
    run_of = tf.cumsum(tf.cast(~continues, tf.int64)) - 1        # [N]
    heads = tf.where(~continues)[:, 0]                           # [R]
    num_runs = tf.size(heads, out_type=tf.int64)
    run_length = segment_sum(tf.ones_like(run_of), run_of, num_runs)
    run_prob = segment_sum(tf.cast(token_prob, tf.float64), run_of, num_runs)
    is_entity = tf.gather(is_begin, tf.gather(token_tag, heads))
    first = tf.boolean_mask(heads, is_entity)                    # [E] first token
    count = tf.boolean_mask(run_length, is_entity)
    score = tf.cast(tf.boolean_mask(run_prob, is_entity) / tf.cast(count, tf.float64),
                    tf.float32)
    entity_line = tf.gather(tokens.token_line, first)
    start = tf.gather(lines.char_offset, tf.gather(tokens.token_char, first))
    end = tf.gather(lines.char_offset, tf.gather(tokens.token_last_char, first + count - 1)) + 1
    types = tf.gather(tf.constant(kind_names), tf.gather(kind_id, tf.gather(token_tag, first)))
    line_start = tf.gather(lines.chars.row_splits, entity_line)
    text = tf.strings.unicode_encode(tf.gather(
        lines.chars.flat_values, tf.ragged.range(line_start + start, line_start + end)), "UTF-8")

    def per_line(values, default):
        return tf.RaggedTensor.from_value_rowids(values, entity_line, nrows=lines.num_lines
                                                 ).to_tensor(default_value=default)

    return {"num_entities": tf.cast(segment_sum(tf.ones_like(entity_line), entity_line,
                                                lines.num_lines), tf.int32),
            "entity_start": tf.cast(per_line(start, -1), tf.int32),
            "entity_end": tf.cast(per_line(end, -1), tf.int32),
            "entity_type": per_line(types, ""),
            "entity_text": per_line(text, ""),
            "entity_score": per_line(score, 0.0)}
