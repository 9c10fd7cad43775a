"""Serving an export directory: raw text lines -> tags and entities with character offsets.

This module imports only the standard library, numpy, the `tokenizers` library and TensorFlow
(lazily, when a `Predictor` loads the model), plus the two light modules of `data_pipeline` that
preprocessing itself uses to tokenize and to cut windows (`data_pipeline.tokenization`,
`data_pipeline.windows`: stdlib + numpy). It never imports transformers, `models/` or the trainer's
configuration, so serving needs neither the training stack nor the run directory.

An export directory (written by `trainer.export`) holds:

    saved_model.pb, variables/   SavedModel, signature "serving_default" (see SIGNATURE); for
                                 character models also "tag_text" (TEXT_SIGNATURE), text in,
                                 entities out, the steps below all inside the graph
    label_map.json               ["O", "B-LOC", "I-LOC", ...], index = tag id
    tokenizer.json               the backend tokenizer exactly as preprocessing used it (with
                                 the SentencePiece `▁` marker setting applied)
    tokenizer_info.json          special ids around a window, pad and unknown ids (TokenizerInfo)
    preprocessing.json           max_seq_length, stride, input_format ("char" or "conll")
    export.json                  what was exported from where, file checksums (written last)

How a line becomes model input. Characters (char models) or words (word models) are read the
way the corpus reader reads a corpus file: spaces and tabs separate, they are never tokens. So a
space in a Chinese line is skipped, and every other character, the full-width space U+3000
included, is a token. Offsets always index the ORIGINAL line:

    line      "北京 欢迎你"          (index 2 is a space)
    tokens    北 京 欢 迎 你         spans (0,1) (1,2) (3,4) (4,5) (5,6)
    tags      B-LOC I-LOC O O O
    entity    {"text": "北京", "type": "LOC", "start": 0, "end": 2}   line[0:2] == "北京"

An entity whose tokens straddle a skipped space keeps the space in its text (line[start:end]).
Tokens are then tokenized exactly as preprocessing did (`TokenEncoder`), cut into overlapping
windows (`window_records`) and the per-window tags merged back to one tag per token
(`merge_window_predictions`), so an exported model tags a corpus sentence exactly as the trainer's
evaluation did.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from data_pipeline.manifest import file_sha256

EXPORT_FORMAT_VERSION = 1
EXPORT_MANIFEST = "export.json"
LABEL_MAP_FILE = "label_map.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_INFO_FILE = "tokenizer_info.json"
PREPROCESSING_FILE = "preprocessing.json"
SIGNATURE_NAME = "serving_default"
# The serving signature, for export.json and the docs.
SIGNATURE = {
    "inputs": {"input_ids": "int32 [batch, seq_len]",
               "attention_mask": "int32 [batch, seq_len], 1 on real tokens incl. specials",
               "label_mask": "int32 [batch, seq_len], 1 on the first piece of each char/word"},
    "outputs": {"tag_ids": "int32 [batch, seq_len], 0 outside label_mask",
                "scores": "float32 [batch], log-probability of the decoded tag sequence",
                "tag_probs": "float32 [batch, seq_len], probability of the decoded tag at each "
                             "position (CRF: marginal), 0 outside label_mask"},
}
# The text-in signature (character models): raw UTF-8 lines -> entities, all inside the graph.
# Padded outputs, so that TF Serving's row format ("instances" / "predictions") can carry them.
TEXT_SIGNATURE_NAME = "tag_text"
TEXT_SIGNATURE = {
    "inputs": {"text": "string [batch], one UTF-8 line each (invalid bytes read as U+FFFD)"},
    "outputs": {
        "num_chars": "int32 [batch], characters (code points) in the line",
        "tags": "string [batch, max_chars], the IOB2 tag of each character; '' for spaces, "
                "tabs and line ends (never tagged), padding, and lines not tagged",
        "tag_probs": "float32 [batch, max_chars], probability of each character's tag (CRF: "
                     "marginal), 0 where tags is ''",
        "num_entities": "int32 [batch]",
        "entity_start": "int32 [batch, max_entities], character offset of the entity in the "
                        "line; -1 padding",
        "entity_end": "int32 [batch, max_entities], exclusive; -1 padding",
        "entity_type": "string [batch, max_entities], e.g. 'LOC'; '' padding",
        "entity_text": "string [batch, max_entities], line[start:end]; '' padding",
        "entity_score": "float32 [batch, max_entities], mean tag probability over the "
                        "entity's characters; 0 padding",
        "num_unknown": "int32 [batch], characters tagged from the tokenizer's unknown token",
        "error": "string [batch], why the line was not tagged (as trainer.predict says), "
                 "'' when it was",
    },
}
# Longer lines are not tagged (trainer.predict's default --max_line_chars).
MAX_LINE_CHARS = 1_000_000
EMPTY_LINE = "empty line, nothing to tag"
NORMALISED_AWAY = ("the tokenizer's normaliser removes every character of it (control or "
                   "zero-width characters?)")
INPUT_FORMATS = ("char", "conll")
# What the corpus reader splits columns on: these can never be tokens of a training sentence.
SEPARATORS = " \t\r\n\v\f"
_WORD = re.compile(f"[^{re.escape(SEPARATORS)}]+")


class ExportError(ValueError):
    """A directory is not a (complete, readable) export directory."""


# ------------------------------------------------------------------------------------------------
# Reading an export directory (no TensorFlow)
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """Everything besides the SavedModel that serving needs, read from an export directory.

    Attributes:
      directory: the export directory (absolute).
      label_map: tag strings, index = tag id.
      tokenizer_json: the backend tokenizer JSON (str) for `tokenizers.Tokenizer.from_str`.
      prefix_ids, suffix_ids: special-token ids around each window.
      pad_token_id, unk_token_id: the tokenizer's padding and unknown-token ids.
      max_seq_length: pieces per window, special tokens included.
      stride: most pieces two consecutive windows of a long line share.
      input_format: "char" (one token per character) or "conll" (whitespace-separated words).
      manifest: the parsed export.json.
    """

    directory: str
    label_map: list[str]
    tokenizer_json: str
    prefix_ids: list[int]
    suffix_ids: list[int]
    pad_token_id: int
    unk_token_id: int
    max_seq_length: int
    stride: int
    input_format: str
    manifest: dict


def _read_json(directory: pathlib.Path, name: str):
    path = directory / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{directory}: incomplete export, {name} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path}: not valid JSON ({e})") from None


def read_export(export_dir: str | os.PathLike, *, verify_checksums: bool = True
                ) -> ExportSettings:
    """Reads and checks an export directory (does not load the model).

    Raises:
      ExportError: not a directory, no export.json (not an export, or an unfinished one), a
        format this version cannot read, a missing file or a checksum that does not match.
    """
    directory = pathlib.Path(export_dir).resolve()
    if not directory.is_dir():
        raise ExportError(f"{export_dir}: no such directory")
    if not (directory / EXPORT_MANIFEST).is_file():
        raise ExportError(
            f"{export_dir} is not an export directory (no {EXPORT_MANIFEST}); create one with "
            f"`python -m trainer.export --run_dir=RUN --export_dir={export_dir}`")
    manifest = _read_json(directory, EXPORT_MANIFEST)
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise ExportError(f"{directory / EXPORT_MANIFEST}: not an export manifest")
    if manifest["format_version"] != EXPORT_FORMAT_VERSION:
        raise ExportError(f"{directory}: export format_version {manifest['format_version']} is "
                          f"not supported (this version reads {EXPORT_FORMAT_VERSION}); export "
                          f"the run again")
    if not (directory / "saved_model.pb").is_file():
        raise ExportError(f"{directory}: incomplete export, saved_model.pb is missing")
    if verify_checksums:
        for name, expected in manifest.get("sha256", {}).items():
            path = directory / name
            if not path.is_file():
                raise ExportError(f"{directory}: incomplete export, {name} is missing")
            if file_sha256(path) != expected:
                raise ExportError(f"{path}: checksum differs from {EXPORT_MANIFEST}; the export "
                                  f"was modified after it was written")
    label_map = _read_json(directory, LABEL_MAP_FILE)
    info = _read_json(directory, TOKENIZER_INFO_FILE)
    settings = _read_json(directory, PREPROCESSING_FILE)
    try:
        tokenizer_json = (directory / TOKENIZER_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExportError(f"{directory}: incomplete export, {TOKENIZER_FILE} is missing") from None
    if settings.get("input_format") not in INPUT_FORMATS:
        raise ExportError(f"{directory / PREPROCESSING_FILE}: input_format must be one of "
                          f"{INPUT_FORMATS}, got {settings.get('input_format')!r}")
    try:
        return ExportSettings(
            directory=str(directory), label_map=list(label_map), tokenizer_json=tokenizer_json,
            prefix_ids=[int(i) for i in info["prefix_ids"]],
            suffix_ids=[int(i) for i in info["suffix_ids"]],
            pad_token_id=int(info["pad_token_id"]), unk_token_id=int(info["unk_token_id"]),
            max_seq_length=int(settings["max_seq_length"]), stride=int(settings["stride"]),
            input_format=settings["input_format"], manifest=manifest)
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{directory}: malformed export settings ({e!r})") from None


# ------------------------------------------------------------------------------------------------
# Lines -> tokens, tags -> entities (pure Python)
# ------------------------------------------------------------------------------------------------


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


def kind_of(tag: str) -> str:
    """The entity type of a B-/I- tag as seqeval reads it: "B-PER" -> "PER", "B" -> "_"."""
    return tag[1:].strip("-") or "_"


def extract_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities of one sentence as (type, start token, end token exclusive).

    Exactly the entities of `trainer.evaluation.extract_entities` (seqeval, strict IOB2): a `B-T`
    followed by the longest run of `I-T`; an `I-` that continues nothing is dropped.
    """
    entities = []
    i = 0
    while i < len(tags):
        if not tags[i].startswith("B"):
            i += 1
            continue
        kind = kind_of(tags[i])
        end = i + 1
        while end < len(tags) and tags[end].startswith("I") and kind_of(tags[end]) == kind:
            end += 1
        entities.append((kind, i, end))
        i = end
    return entities


@dataclasses.dataclass
class LinePrediction:
    """The prediction for one input line.

    Attributes:
      line_number: 1-based position of the line in the input.
      text: the line as given (without its line end).
      tokens: the tokens tagged (see `split_line`); spans: their (start, end) offsets in `text`.
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


# ------------------------------------------------------------------------------------------------
# Lines -> windows (no TensorFlow), and the predictor
# ------------------------------------------------------------------------------------------------


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

        if input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}")
        self.encoder = TokenEncoder(Tokenizer.from_str(tokenizer_json), unk_token_id)
        self.prefix_ids, self.suffix_ids = list(prefix_ids), list(suffix_ids)
        self.unk_token_id = unk_token_id
        self.budget = max_seq_length - len(self.prefix_ids) - len(self.suffix_ids)
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
