"""Tagging raw text lines with an export directory: tags and entities with character offsets.

A line is split into tokens and windows as preprocessing would (`serving.line_encoder`), the
windows go through the SavedModel's "serving_default" signature in batches of similar length, and
the per-window tags are merged back to one tag per token (`merge_window_predictions`, as the
trainer's evaluation merges them), so an exported model tags a corpus sentence exactly as the
evaluation did. Entities are `data_pipeline.tags.extract_entities` (seqeval, strict IOB2) with
character offsets into the line as given:

    line      "北京 欢迎你"          (index 2 is a space)
    tokens    北 京 欢 迎 你         spans (0,1) (1,2) (3,4) (4,5) (5,6)
    tags      B-LOC I-LOC O O O
    entity    {"text": "北京", "type": "LOC", "start": 0, "end": 2}   line[0:2] == "北京"

An entity whose tokens straddle a skipped space keeps the space in its text (line[start:end]).
TensorFlow is imported only when a `Predictor` first runs the model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from data_pipeline.tags import extract_entities
from serving.export_format import MAX_LINE_CHARS, SIGNATURE_NAME, read_export
from serving.line_encoder import LineEncoder


@dataclasses.dataclass
class LinePrediction:
    """The prediction for one input line.

    Attributes:
      line_number: 1-based position of the line in the input.
      text: the line as given (without its line end).
      tokens: the tokens tagged (`line_encoder.split_line`); spans: their (start, end) offsets
        in `text`.
      tags: one IOB2 tag per token.
      tag_probs: probability of each token's tag (CRF: marginal probability).
      entities: [{"text", "type", "start", "end", "score"}] with character offsets into
        `text` (text == line[start:end]); score = mean tag probability over the entity's tokens.
      unknown: tokens the tokenizer maps to its unknown token.
      error: why the line was not tagged (empty, too long), else None.
    """

    line_number: int
    text: str
    tokens: list[str]
    spans: list[tuple[int, int]]
    tags: list[str]
    tag_probs: list[float]
    entities: list[dict]
    unknown: list[str]
    error: str | None = None


def entities_of(text: str, spans: Sequence[tuple[int, int]], tags: Sequence[str],
                tag_probs: Sequence[float]) -> list[dict]:
    """Entities with character offsets into `text` (see `LinePrediction.entities`)."""
    out = []
    for kind, first, end in extract_entities(tags):
        start, stop = spans[first][0], spans[end - 1][1]
        score = float(np.mean(np.asarray(tag_probs[first:end], dtype=np.float64)))
        out.append({"text": text[start:stop], "type": kind, "start": start, "end": stop,
                    "score": round(score, 6)})
    return out


class Predictor:
    """Tags raw text lines with an exported model.

        predictor = Predictor("exports/pd")
        for prediction in predictor.predict_lines(["北京欢迎你", "..."]):
            print(prediction.entities)

    Args:
      export_dir: a directory written by `trainer.export`.
      batch_size: windows per model call.
      max_line_chars: longer lines are not tagged (LinePrediction.error says why); 0 = no limit.
      lines_per_chunk: lines read, windowed and batched together (windows of similar length
        share a batch); memory grows with it.

    Raises:
      ExportError: `export_dir` is not a readable export (checked before TensorFlow loads).
    """

    def __init__(self, export_dir: str | os.PathLike, *, batch_size: int = 32,
                 max_line_chars: int = MAX_LINE_CHARS, lines_per_chunk: int = 256):
        self.settings = read_export(export_dir)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.lines_per_chunk = max(1, lines_per_chunk)
        self.line_encoder = LineEncoder.from_settings(self.settings, max_line_chars)
        self._signature = None

    @property
    def signature(self):
        """The SavedModel's serving function (loaded on first use)."""
        if self._signature is None:
            import tensorflow as tf

            self._loaded = tf.saved_model.load(self.settings.directory)
            self._signature = self._loaded.signatures[SIGNATURE_NAME]
        return self._signature

    def predict(self, text: str) -> LinePrediction:
        """Tags one line."""
        return next(self.predict_lines([text]))

    def predict_lines(self, lines: Iterable[str], *, first_line_number: int = 1
                      ) -> Iterator[LinePrediction]:
        """Tags lines (line ends are stripped), yielding one LinePrediction per line, in order."""
        chunk: list[tuple[int, str]] = []
        for number, line in enumerate(lines, start=first_line_number):
            chunk.append((number, line.rstrip("\r\n")))
            if len(chunk) >= self.lines_per_chunk:
                yield from self._predict_chunk(chunk)
                chunk = []
        if chunk:
            yield from self._predict_chunk(chunk)

    def _predict_chunk(self, chunk: list[tuple[int, str]]) -> list[LinePrediction]:
        from data_pipeline.windows import merge_window_predictions

        label_map = self.settings.label_map
        encoded = self.line_encoder.encode([text for _, text in chunk])
        windows = [(index, window) for index, line in enumerate(encoded)
                   for window in line.windows]
        tag_rows, prob_rows = self._run([window for _, window in windows])
        # (line index, window_start, window_end, line length in tokens, char_index)
        spans = [(index, start, end, len(encoded[index].tokens), char_index)
                 for index, (_, char_index, start, end) in windows]
        merged_tags = merge_window_predictions(s + (row,) for s, row in zip(spans, tag_rows))
        merged_probs = merge_window_predictions(s + (row,) for s, row in zip(spans, prob_rows))
        results = []
        for index, ((number, text), line) in enumerate(zip(chunk, encoded)):
            prediction = LinePrediction(number, text, line.tokens, line.spans, [], [], [],
                                        line.unknown, line.error)
            if index in merged_tags:
                prediction.tags = [label_map[i] for i in merged_tags[index].tolist()]
                prediction.tag_probs = merged_probs[index].astype(float).tolist()
                prediction.entities = entities_of(text, line.spans, prediction.tags,
                                                  prediction.tag_probs)
            results.append(prediction)
        return results

    def _run(self, windows: list[tuple]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Runs the model over windows, batching windows of similar length together.

        Args:
          windows: (input_ids, char_index, window_start, window_end) per window.

        Returns:
          (tag ids, tag probabilities) per window, each [window length], aligned with `windows`.
        """
        import tensorflow as tf

        pad = self.settings.pad_token_id
        tags: list = [None] * len(windows)
        probs: list = [None] * len(windows)
        order = sorted(range(len(windows)), key=lambda w: len(windows[w][0]))
        for begin in range(0, len(order), self.batch_size):
            batch = order[begin:begin + self.batch_size]
            length = max(len(windows[w][0]) for w in batch)
            input_ids = np.full([len(batch), length], pad, np.int32)   # [B, T]
            attention_mask = np.zeros([len(batch), length], np.int32)  # [B, T]
            label_mask = np.zeros([len(batch), length], np.int32)      # [B, T]
            for row, w in enumerate(batch):
                ids, char_index = windows[w][0], windows[w][1]
                input_ids[row, :len(ids)] = ids
                attention_mask[row, :len(ids)] = 1
                label_mask[row, :len(ids)] = np.asarray(char_index) >= 0
            outputs = self.signature(input_ids=tf.constant(input_ids),
                                     attention_mask=tf.constant(attention_mask),
                                     label_mask=tf.constant(label_mask))
            tag_ids = outputs["tag_ids"].numpy()
            tag_probs = outputs["tag_probs"].numpy()
            for row, w in enumerate(batch):
                size = len(windows[w][0])
                tags[w] = tag_ids[row, :size]
                probs[w] = tag_probs[row, :size]
        return tags, probs
