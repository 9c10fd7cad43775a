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

Word-level models get no such signature (`text_signature_unavailable` says why).
"""

from __future__ import annotations

import functools

import tensorflow as tf

from data_pipeline.windows import window_budget
from serving import export_format
from serving.export_format import ExportError
from trainer.piece_table import PieceTable
from trainer.serving_function import tag_windows
from trainer.text_signature_steps import (character_outputs, decode_lines, entity_outputs,
                                          merge_windows, plan_windows, run_model, split_tokens,
                                          window_inputs)

TEXT_WINDOW_BATCH = 32  # windows per model call inside tag_text (Predictor's default batch_size)


def text_signature_unavailable(tokenizer_json: str, input_format: str) -> str | None:
    """Why a model cannot get the text-in signature, or None if it can."""
    from tokenizers import Tokenizer

    from data_pipeline.tokenization import TokenEncoder

    if input_format != "char":
        return ("word-level model (input_format=conll): splitting words into WordPiece or "
                "SentencePiece pieces inside the graph needs tensorflow-text, which this project "
                "does not depend on; tokenize with serving.predict / serving.Predictor and call "
                "serving_default")
    if not TokenEncoder(Tokenizer.from_str(tokenizer_json), 0).context_free:
        return ("the tokenizer's pieces for a character depend on its position in the line "
                "(Metaspace prepend_scheme=first), so no per-character table reproduces them")
    return None


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
    budget = window_budget(max_seq_length, prefix_ids, suffix_ids)
    if budget < 1:
        raise ExportError(f"max_seq_length={max_seq_length} leaves no room for a piece beside "
                          f"the special tokens")

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec([None], tf.string, name="text")])
    def tag_text(text):
        lines = decode_lines(text, table, max_line_chars=max_line_chars)
        tokens = split_tokens(lines, table, budget=budget)
        windows = plan_windows(tokens, budget=budget, stride=stride)
        inputs = window_inputs(tokens, windows, prefix_ids=prefix_ids, suffix_ids=suffix_ids,
                               pad_token_id=pad_token_id)
        window_tags, window_probs = run_model(functools.partial(tag_windows, model), inputs,
                                              window_batch_size=window_batch_size)
        token_tag, token_prob = merge_windows(tokens, windows, inputs.char_index, window_tags,
                                              window_probs)
        return {"num_chars": tf.cast(lines.num_chars, tf.int32),
                **character_outputs(lines, tokens, token_tag, token_prob, label_map=label_map),
                **entity_outputs(lines, tokens, token_tag, token_prob, label_map=label_map),
                "num_unknown": tokens.num_unknown,
                "error": lines.error}

    return tag_text
