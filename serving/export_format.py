"""The export directory's layout and reading it (no TensorFlow): what `trainer.export` writes.

An export directory holds:

    saved_model.pb, variables/   SavedModel, signature "serving_default" (see SIGNATURE); for
                                 character models also "tag_text" (TEXT_SIGNATURE), text in,
                                 entities out, the steps of `serving.predictor` inside the graph;
                                 for word models with a WordPiece tokenizer too
                                 (WORD_TEXT_SIGNATURE; export.json's "text_signature" says
                                 which, or why there is none)
    label_map.json               ["O", "B-LOC", "I-LOC", ...], index = tag id
    tokenizer.json               the backend tokenizer exactly as preprocessing used it (with
                                 the SentencePiece `▁` marker setting applied)
    tokenizer_info.json          special ids around a window, pad and unknown ids (TokenizerInfo)
    preprocessing.json           max_seq_length, stride, input_format ("char" or "conll")
    export.json                  what was exported from where, file checksums (written last)
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

from data_pipeline.manifest import file_sha256
from data_pipeline.tags import check_iob2_label_map

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
        "error": "string [batch], why the line was not tagged (as serving.predict says), "
                 "'' when it was",
    },
}
# The text-in signature of word-level models (input_format=conll, a WordPiece tokenizer): the
# same input, per-word instead of per-character tags. Loading it needs `import tensorflow_text`.
WORD_TEXT_SIGNATURE = {
    "inputs": TEXT_SIGNATURE["inputs"],
    "outputs": {
        "num_chars": TEXT_SIGNATURE["outputs"]["num_chars"],
        "num_words": "int32 [batch], words in the line (runs of characters other than spaces, "
                     "tabs and line ends); 0 for a line not tagged",
        "word_start": "int32 [batch, max_words], character offset of each word; -1 padding",
        "word_end": "int32 [batch, max_words], exclusive; -1 padding",
        "tags": "string [batch, max_words], the IOB2 tag of each word; '' padding",
        "tag_probs": "float32 [batch, max_words], probability of each word's tag (CRF: "
                     "marginal); 0 padding",
        **{key: TEXT_SIGNATURE["outputs"][key] for key in (
            "num_entities", "entity_start", "entity_end", "entity_type", "entity_text")},
        "entity_score": "float32 [batch, max_entities], mean tag probability over the "
                        "entity's words; 0 padding",
        "num_unknown": "int32 [batch], words tagged from the tokenizer's unknown token alone",
        "error": TEXT_SIGNATURE["outputs"]["error"],
    },
}
# Longer lines are not tagged (serving.predict's default --max_line_chars).
MAX_LINE_CHARS = 1_000_000
EMPTY_LINE = "empty line, nothing to tag"
NORMALISED_AWAY = ("the tokenizer's normaliser removes every character of it (control or "
                   "zero-width characters?)")
INPUT_FORMATS = ("char", "conll")
# What the corpus reader splits columns on: these can never be tokens of a training sentence.
SEPARATORS = " \t\r\n\v\f"


class ExportError(ValueError):
    """A run directory, checkpoint or export directory cannot be used; the message says why."""


def read_json(path: pathlib.Path, *, missing: str):
    """The parsed JSON file at `path`.

    Raises:
      ExportError: `missing` if there is no such file; "PATH: not valid JSON (...)" if it does not
        parse.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path}: not valid JSON ({e})") from None


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


# What a training run directory holds (trainer/run_dir.py, which serving may not import).
_RUN_FILES = ("config.json", "model_config.json")
_RUN_SUBDIRS = ("checkpoints", "best")
_RUN_EXPORT_SUBDIR = "export"


def _not_an_export(export_dir: str | os.PathLike, directory: pathlib.Path) -> str:
    """Why `directory` (no export.json) cannot be served, and what to run instead."""
    is_run = (any((directory / name).is_file() for name in _RUN_FILES)
              and any((directory / name).is_dir() for name in _RUN_SUBDIRS))
    if not is_run:
        return (f"{export_dir} is not an export directory (no {EXPORT_MANIFEST}); create one "
                f"with `python -m trainer.export --run_dir=RUN --export_dir={export_dir}`")
    inside = directory / _RUN_EXPORT_SUBDIR
    if (inside / EXPORT_MANIFEST).is_file():
        return (f"{export_dir} is a training run directory, not an export; the export written "
                f"at the end of that run is --export_dir={inside}")
    return (f"{export_dir} is a training run directory, not an export; export it into a new "
            f"directory with `python -m trainer.export --run_dir={export_dir} "
            f"--export_dir=NEW_DIR`, then pass --export_dir=NEW_DIR")


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
        raise ExportError(_not_an_export(export_dir, directory))

    def read(name: str):
        return read_json(directory / name,
                         missing=f"{directory}: incomplete export, {name} is missing")

    manifest = read(EXPORT_MANIFEST)
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
    label_map = read(LABEL_MAP_FILE)
    info = read(TOKENIZER_INFO_FILE)
    settings = read(PREPROCESSING_FILE)
    try:
        tokenizer_json = (directory / TOKENIZER_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExportError(f"{directory}: incomplete export, {TOKENIZER_FILE} is missing") from None
    try:
        check_iob2_label_map(label_map)
    except (TypeError, ValueError) as e:
        raise ExportError(f"{directory / LABEL_MAP_FILE}: {e}") from None
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
