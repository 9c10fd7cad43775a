"""The steps of "tag_text" that differ for word-level models: words and their pieces, word outputs.

A word model's signature (`trainer.text_signature.word_text_signature_function`) runs

    decode_characters -> split_words -> plan_windows, window_inputs, run_model, merge_windows
                      -> word_outputs, entity_outputs

where every step but `split_words` and `word_outputs` is the character model's
(`trainer.text_signature_steps`). A word is a run of characters that are not separators, as
`serving.line_encoder.split_line` reads a line for an `input_format=conll` model; its pieces are
what preprocessing's tokenizer gives it, computed by `word_pieces` with tensorflow-text and the
tables of `trainer.word_tokenizer` (here a lowercasing tokenizer with these pieces):

    line      "Visit  Café-au-lait[SEP]"  (two spaces)
    words     Visit (0, 5)   Café-au-lait[SEP] (7, 24)
    segments  Visit | Café-au-lait [SEP]          added tokens first
    normal.   visit | cafe-au-lait                per-code-point table (lowercasing tokenizer)
    pre-tok.  visit | cafe - au - lait            whitespace splits, punctuation alone
    pieces    visit | ca ##fe - au - la ##it [SEP]   FastWordpieceTokenizer

Shapes as in `trainer.text_signature_steps`: B lines, C characters, N words to tag.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from trainer.text_signature_steps import Lines, Tokens, decode_characters, line_errors
from trainer.word_tokenizer import PUNCTUATION, WHITESPACE, WordPieceTables


def added_token_pattern(tables: WordPieceTables) -> str:
    """An RE2 pattern matching the added tokens as tokenizers finds them in raw text: the
    longest first where several start at the same place, with the whitespace around them that
    an lstrip / rstrip token takes along. Every character is written as \\x{hex}."""
    def literal(text):
        return "".join(f"\\x{{{ord(c):x}}}" for c in text)

    space = f"[{literal(map(chr, tables.whitespace))}]*" if tables.whitespace else ""
    return "|".join((space if token.lstrip else "") + literal(token.content)
                    + (space if token.rstrip else "")
                    for token in sorted(tables.added_tokens, key=lambda t: -len(t.content)))


def word_pieces(words: tf.Tensor, tables: WordPieceTables, model_buffer: tf.Tensor
                ) -> tf.RaggedTensor:
    """What preprocessing's WordPiece tokenizer gives each word (`trainer.word_tokenizer`).

    Args:
      words: string [N], each a word (no separators), valid UTF-8.
      tables: `trainer.word_tokenizer.wordpiece_tables` of the tokenizer.
      model_buffer: uint8 [bytes], `trainer.word_tokenizer.fast_wordpiece_model` of it.

    Returns:
      int32 ragged [N, (pieces)]; a word the normaliser removes entirely has none.
    """
    import tensorflow_text as tf_text

    num_words = tf.size(words, out_type=tf.int64)
    # Added tokens, found in the raw word: segments [S] of the words, each added or not. A line
    # end marks their borders: it cannot be in a word (tf_text.regex_split would stop at a NUL).
    if tables.added_tokens:
        pattern = added_token_pattern(tables)
        split = tf.strings.split(tf.strings.regex_replace(words, f"({pattern})", "\n\\1\n"),
                                 "\n")
        split = tf.ragged.boolean_mask(split, split != "")            # [N, (segments)]
        segments, segment_word = split.flat_values, split.value_rowids()
        bare = segments
        if tables.whitespace:
            space = "".join(f"\\x{{{c:x}}}" for c in tables.whitespace)
            bare = tf.strings.regex_replace(segments, f"^[{space}]+|[{space}]+$", "")
        contents = tf.constant([t.content for t in tables.added_tokens])
        matches = bare[:, None] == contents[None, :]                 # [S, A]
        is_added = (tf.reduce_any(matches, axis=1)
                    & tf.strings.regex_full_match(segments, pattern))
        added_id = tf.gather(tf.constant([t.token_id for t in tables.added_tokens], tf.int32),
                             tf.argmax(tf.cast(matches, tf.int32), axis=1))
        segments = tf.where(is_added, "", segments)                  # not tokenized again
    else:
        segments, segment_word = words, tf.range(num_words)
        is_added = tf.zeros_like(words, tf.bool)
        added_id = tf.zeros_like(words, tf.int32)
    num_segments = tf.size(segments, out_type=tf.int64)

    # Normaliser: each code point -> its output (a ragged row per code point).
    chars = tf.strings.unicode_decode(segments, "UTF-8")             # [S, (chars)]
    code_points = chars.flat_values
    table = tables.normalized
    entry = tf.searchsorted(tf.constant(table.starts), code_points, side="right") - 1
    rows = tf.RaggedTensor.from_row_splits(tf.constant(table.values), table.row_splits)
    relative = tf.RaggedTensor.from_row_splits(tf.constant(table.relative), table.row_splits)
    out = tf.gather(rows, entry)                                     # [chars, (outputs)]
    source = tf.gather(code_points, out.value_rowids())
    normalized = tf.where(tf.gather(relative, entry).flat_values, out.flat_values + source,
                          out.flat_values)                           # int32 [M]
    segment = tf.gather(chars.value_rowids(), out.value_rowids())    # [M]

    # Pre-tokenizer: whitespace splits and goes, punctuation is a pre-token of its own.
    kind = tf.gather(tf.constant(tables.classes), tf.searchsorted(
        tf.constant(tables.class_starts), normalized, side="right") - 1)
    before = tf.concat([[WHITESPACE], kind[:-1]], 0)
    starts = ((segment != tf.concat([[-1], segment[:-1]], 0)) | (kind == PUNCTUATION)
              | (before == PUNCTUATION) | (before == WHITESPACE))
    kept = kind != WHITESPACE
    starts, normalized, segment = (tf.boolean_mask(starts, kept), tf.boolean_mask(normalized, kept),
                                   tf.boolean_mask(segment, kept))
    pre_token = tf.cumsum(tf.cast(starts, tf.int64)) - 1            # [M'] its pre-token
    num_pre_tokens = tf.reduce_sum(tf.cast(starts, tf.int64))
    pre_tokens = tf.RaggedTensor.from_value_rowids(normalized, pre_token, nrows=num_pre_tokens)
    pre_token_segment = tf.boolean_mask(segment, starts)             # [P]

    # WordPiece; a pre-token of more than max_input_chars characters is the unknown token
    # (which the vocabulary holds: tokenizing its text gives it).
    text = tf.where(pre_tokens.row_lengths() > tables.max_input_chars, tables.unk_token,
                    tf.strings.unicode_encode(pre_tokens, "UTF-8"))
    tokenizer = tf_text.FastWordpieceTokenizer(model_buffer=model_buffer,
                                               token_out_type=tf.int32)
    ids = tokenizer.tokenize(text)                                   # [P, (pieces)]
    segment_ids = tf.RaggedTensor.from_value_rowids(ids, pre_token_segment,
                                                    nrows=num_segments).merge_dims(1, 2)
    added = tf.RaggedTensor.from_value_rowids(tf.boolean_mask(added_id, is_added),
                                              tf.where(is_added)[:, 0], nrows=num_segments)
    segment_ids = tf.concat([segment_ids, added], axis=1)            # [S, (pieces)]
    return tf.RaggedTensor.from_value_rowids(segment_ids, segment_word,
                                             nrows=num_words).merge_dims(1, 2)


def split_words(text: tf.Tensor, tables: WordPieceTables, model_buffer: tf.Tensor, *,
                unk_token_id: int, budget: int, max_line_chars: int) -> tuple[Lines, Tokens]:
    """Step 1 (word models): UTF-8 lines -> words, their pieces, and why a line is not tagged.

    A word the tokenizer gives no piece is tagged from one unknown piece; a line is not tagged
    if it has more than `max_line_chars` characters, no word, or only such words
    (`serving.line_encoder.LineEncoder`).

    Args:
      text: string [B].
      tables, model_buffer: see `word_pieces`.
      unk_token_id: the tokenizer's unknown id.
      budget: pieces a window holds; a word of more pieces is cut to fit, as window_records
        does.
      max_line_chars: longer lines are not tagged (their words are not tokenized).

    Returns:
      (Lines, Tokens): `Lines.tagged` marks the characters of the words tagged, the tokens are
      those words.
    """
    segment_sum = tf.math.unsorted_segment_sum
    lines = decode_characters(text)
    char_line, num_lines = lines.char_line, lines.num_lines
    in_word = lines.tagged & tf.gather(lines.num_chars <= max_line_chars, char_line)
    after_word = tf.concat([[False], in_word[:-1]], 0) & (lines.char_offset > 0)
    first = in_word & ~after_word                                    # a word's first character
    last = in_word & ~tf.concat([in_word[1:] & (lines.char_offset[1:] > 0), [False]], 0)
    word_char, word_last_char = tf.where(first)[:, 0], tf.where(last)[:, 0]   # [words]
    word_of_char = tf.boolean_mask(tf.cumsum(tf.cast(first, tf.int64)) - 1, in_word)
    num_words = tf.size(word_char, out_type=tf.int64)
    words = tf.strings.unicode_encode(tf.RaggedTensor.from_value_rowids(
        tf.boolean_mask(lines.chars.flat_values, in_word), word_of_char, nrows=num_words),
        "UTF-8")
    pieces = word_pieces(words, tables, model_buffer)                # [words, (pieces)]
    word_line = tf.gather(char_line, word_char)
    real = pieces.row_lengths() > 0
    error = line_errors(lines, segment_sum(tf.ones_like(word_line), word_line, num_lines),
                        segment_sum(tf.cast(real, tf.int64), word_line, num_lines),
                        max_line_chars=max_line_chars)

    tagged = tf.gather(error == "", word_line)                       # words to tag [N]
    token_char = tf.boolean_mask(word_char, tagged)
    token_line = tf.boolean_mask(word_line, tagged)
    num_tokens = tf.size(token_char, out_type=tf.int64)
    line_tokens = segment_sum(tf.ones_like(token_line), token_line, num_lines)   # [B]
    line_first = tf.cumsum(line_tokens, exclusive=True)
    pieces = tf.ragged.boolean_mask(pieces, tagged)
    # A word without pieces keeps its place with the unknown piece (TokenEncoder).
    pieceless = tf.cast(pieces.row_lengths() == 0, tf.int64)
    pieces = tf.concat([pieces, tf.RaggedTensor.from_row_lengths(
        tf.fill([tf.reduce_sum(pieceless)], unk_token_id), pieceless)], axis=1)[:, :budget]
    unknown = ((pieces.row_lengths() == 1)
               & (tf.gather(pieces.flat_values, pieces.row_splits[:-1]) == unk_token_id))
    tokens = Tokens(
        token_char, tf.boolean_mask(word_last_char, tagged), token_line,
        tf.range(num_tokens) - tf.gather(line_first, token_line), num_tokens, line_tokens,
        line_first, pieces,
        tf.concat([tf.zeros([1], tf.int64), tf.cumsum(pieces.row_lengths())], 0),
        segment_sum(tf.cast(unknown, tf.int32), token_line, num_lines))
    return lines._replace(tagged=in_word & tf.gather(error == "", char_line), error=error), tokens


def word_outputs(lines: Lines, tokens: Tokens, token_tag: tf.Tensor, token_prob: tf.Tensor, *,
                 label_map: Sequence[str]) -> dict[str, tf.Tensor]:
    """Step 5 (word models): each tagged word's offsets, tag and probability.

    Args:
      lines, tokens: from `split_words`.
      token_tag: int32 [N]; token_prob: float32 [N] (`merge_windows`).
      label_map: tag strings, index = tag id.

    Returns:
      {"num_words": int32 [B] (0 for a line not tagged), "word_start", "word_end": int32
      [B, max words] (character offsets, end exclusive, -1 padding), "tags": string [B, max
      words] ("" padding), "tag_probs": float32 [B, max words] (0 padding)}.
    """
    def per_line(values, default):
        return tf.RaggedTensor.from_value_rowids(values, tokens.token_line,
                                                 nrows=lines.num_lines
                                                 ).to_tensor(default_value=default)

    start = tf.gather(lines.char_offset, tokens.token_char)
    end = tf.gather(lines.char_offset, tokens.token_last_char) + 1
    return {"num_words": tf.cast(tokens.line_tokens, tf.int32),
            "word_start": tf.cast(per_line(start, -1), tf.int32),
            "word_end": tf.cast(per_line(end, -1), tf.int32),
            "tags": per_line(tf.gather(tf.constant(list(label_map)), token_tag), ""),
            "tag_probs": per_line(token_prob, 0.0)}
