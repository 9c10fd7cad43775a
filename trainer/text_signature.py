"""The text-in signature "tag_text" of a character model: raw UTF-8 lines in, entities out.

"tag_text" does in the graph what `serving.Predictor` does in Python, step for step (each step a
function of `trainer.text_signature_steps`):

  b"北京 欢迎你"  -decode_lines--->  北 京 ␠ 欢 迎 你        (invalid bytes -> U+FFFD, as Python)
                -split_tokens--->  tokens at offsets 0 1 3 4 5   (spaces, tabs, line ends dropped)
                                   and their piece ids: what TokenEncoder gives each character
                                   alone (normaliser included; `trainer.piece_table`)
                -plan_windows--->  windows of <= budget pieces overlapping <= stride pieces
                -window_inputs-->  [prefix] pieces [suffix] per window, padded
                -run_model------>  tag ids and probabilities per window (batched by length)
                -merge_windows-->  each token from the window where it has most context
                -character_outputs, entity_outputs->  per-character tags; IOB2 entities with
                                   start/end as character offsets into the line as given

A word-level model (input_format=conll) with a WordPiece tokenizer gets the same signature with
words for characters (`word_text_signature_function`): its step 1 splits the line into words
and gives each the pieces preprocessing gave it, with tensorflow-text's FastWordpieceTokenizer
(`trainer.text_signature_words`); step 5 gives per-word tags. Loading such an export needs
`import tensorflow_text` first. Models whose tokenizer has no exact in-graph equivalent get no
"tag_text" (`text_signature_unavailable` says why).
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from data_pipeline.windows import window_budget
from serving import export_format
from serving.export_format import ExportError
from trainer.piece_table import PieceTable
from trainer.serving_function import tag_windows
from trainer.text_signature_steps import (Lines, Tokens, character_outputs, decode_lines,
                                          entity_outputs, merge_windows, plan_windows, run_model,
                                          split_tokens, window_inputs)

TEXT_WINDOW_BATCH = 32  # windows per model call inside tag_text (Predictor's default batch_size)


def text_signature_unavailable(tokenizer_json: str, input_format: str) -> str | None:
    """Why a model cannot get the text-in signature, or None if it can."""
    from tokenizers import Tokenizer

    from data_pipeline.tokenization import TokenEncoder
    from trainer.word_tokenizer import unsupported_reason

    if input_format != "char":
        reason = unsupported_reason(tokenizer_json)
        if reason is None:
            try:
                import tensorflow_text  # noqa: F401
            except ImportError as e:
                reason = f"tensorflow-text cannot be imported ({e})"
        return None if reason is None else (
            f"word-level model (input_format=conll) whose tokenizer tag_text cannot reproduce "
            f"inside the graph: {reason}; tokenize with serving.predict / serving.Predictor and "
            f"call serving_default")
    if not TokenEncoder(Tokenizer.from_str(tokenizer_json), 0).context_free:
        return ("the tokenizer's pieces for a character depend on its position in the line "
                "(Metaspace prepend_scheme=first), so no per-character table reproduces them")
    return None


def _check_budget(max_seq_length: int, prefix_ids: list[int], suffix_ids: list[int]) -> int:
    budget = window_budget(max_seq_length, prefix_ids, suffix_ids)
    if budget < 1:
        raise ExportError(f"max_seq_length={max_seq_length} leaves no room for a piece beside "
                          f"the special tokens")
    return budget


def _tag_tokens(model, tokens: Tokens, *, budget: int, stride: int, prefix_ids: list[int],
                suffix_ids: list[int], pad_token_id: int, window_batch_size: int):
    """Steps 2-4 for characters or words: windows, the model, merging -> (tag id int32 [N],
    probability float32 [N]) per token."""
    windows = plan_windows(tokens, budget=budget, stride=stride)
    inputs = window_inputs(tokens, windows, prefix_ids=prefix_ids, suffix_ids=suffix_ids,
                           pad_token_id=pad_token_id)
    window_tags, window_probs = run_model(functools.partial(tag_windows, model), inputs,
                                          window_batch_size=window_batch_size)
    return merge_windows(tokens, windows, inputs.char_index, window_tags, window_probs)


def _common_outputs(lines: Lines, tokens: Tokens, token_tag, token_prob, *,
                    label_map: list[str]) -> dict:
    return {**entity_outputs(lines, tokens, token_tag, token_prob, label_map=label_map),
            "num_unknown": tokens.num_unknown, "error": lines.error}


def text_signature_function(model, table: PieceTable, *, label_map: list[str],
                            prefix_ids: list[int], suffix_ids: list[int], pad_token_id: int,
                            max_seq_length: int, stride: int,
                            window_batch_size: int = TEXT_WINDOW_BATCH,
                            max_line_chars: int = export_format.MAX_LINE_CHARS):
    """The text-in tf.function of a character tagger (`serving.export_format.TEXT_SIGNATURE`).

    Args:
      model: a built Tagger (models/ API) of a character model.
      table: `trainer.piece_table.piece_table` of the tokenizer preprocessing used.
      label_map: tag strings, index = tag id.
      prefix_ids, suffix_ids, pad_token_id: from the tokenizer's TokenizerInfo.
      max_seq_length, stride: the windowing settings the model was trained with.
      window_batch_size: windows per model call (memory stays bounded for long lines).
      max_line_chars: longer lines are not tagged (error says so).

    Returns:
      A tf.function (text: string [B]) -> dict of padded tensors, each with batch dimension B.

    Raises:
      ExportError: max_seq_length leaves no room for a piece.
    """
    budget = _check_budget(max_seq_length, prefix_ids, suffix_ids)

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec([None], tf.string, name="text")])
    def tag_text(text):
        lines = decode_lines(text, table, max_line_chars=max_line_chars)
        tokens = split_tokens(lines, table, budget=budget)
        token_tag, token_prob = _tag_tokens(
            model, tokens, budget=budget, stride=stride, prefix_ids=prefix_ids,
            suffix_ids=suffix_ids, pad_token_id=pad_token_id, window_batch_size=window_batch_size)
        return {"num_chars": tf.cast(lines.num_chars, tf.int32),
                **character_outputs(lines, tokens, token_tag, token_prob, label_map=label_map),
                **_common_outputs(lines, tokens, token_tag, token_prob, label_map=label_map)}

    return tag_text


def word_text_signature_function(model, tables, *, label_map: list[str], prefix_ids: list[int],
                                 suffix_ids: list[int], pad_token_id: int, unk_token_id: int,
                                 max_seq_length: int, stride: int,
                                 window_batch_size: int = TEXT_WINDOW_BATCH,
                                 max_line_chars: int = export_format.MAX_LINE_CHARS):
    """The text-in tf.function of a word tagger (`serving.export_format.WORD_TEXT_SIGNATURE`).

    Args:
      model: a built Tagger (models/ API) of a word-level model.
      tables: `trainer.word_tokenizer.wordpiece_tables` of the tokenizer preprocessing used.
      label_map, prefix_ids, suffix_ids, pad_token_id, max_seq_length, stride,
        window_batch_size, max_line_chars: as `text_signature_function`.
      unk_token_id: the piece a word without pieces is tagged from (TokenizerInfo's).

    Returns:
      A tf.function (text: string [B]) -> dict of padded tensors, each with batch dimension B;
      its graph holds tensorflow-text ops (`import tensorflow_text` before loading it).

    Raises:
      ExportError: max_seq_length leaves no room for a piece.
    """
    from trainer.text_signature_words import split_words, word_outputs
    from trainer.word_tokenizer import fast_wordpiece_model

    budget = _check_budget(max_seq_length, prefix_ids, suffix_ids)
    model_buffer = np.frombuffer(fast_wordpiece_model(tables), np.uint8)

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec([None], tf.string, name="text")])
    def tag_text(text):
        lines, tokens = split_words(text, tables, tf.constant(model_buffer),
                                    unk_token_id=unk_token_id, budget=budget,
                                    max_line_chars=max_line_chars)
        token_tag, token_prob = _tag_tokens(
            model, tokens, budget=budget, stride=stride, prefix_ids=prefix_ids,
            suffix_ids=suffix_ids, pad_token_id=pad_token_id, window_batch_size=window_batch_size)
        return {"num_chars": tf.cast(lines.num_chars, tf.int32),
                **word_outputs(lines, tokens, token_tag, token_prob, label_map=label_map),
                **_common_outputs(lines, tokens, token_tag, token_prob, label_map=label_map)}

    return tag_text
