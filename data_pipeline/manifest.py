"""The manifest: what a preprocessing run wrote, and everything needed to read it back.

`manifest.json` sits beside the shards and is written last, so a directory with a manifest is
complete. Layout (abridged):

    {"format_version": 1,
     "label_map": ["O", "B-LOC", "I-LOC", ...],          # index = label id, IOB2
     "max_seq_length": 128, "stride": 32, "compression": "" | "GZIP",
     "tokenizer": {"name", "fingerprint", "prefix_ids", "suffix_ids", "pad_token_id",
                   "unk_token_id", "vocab_size", "word_boundary_marker"},
     "tag_scheme": {"source": "bmes", "internal": "iob2"}, "on_invalid": "repair",
     "splits": {"train": {
         "source": {"path", "sha256", "bytes", "format"},
         "counts": {"sentences", "characters", "windows", "tokens", "content_pieces",
                    "unknown_tokens", "unknown_token_rate", "sentences_split",
                    "max_sentence_length", "pieceless_tokens",
                    "entities": {"LOC": n, ...},          # IOB2 entities, as trained on
                    "source_entities": {...},             # as written: minus repaired fragments
                    "repaired_tags": {"PER": n, ...},     # continuation tags that began one
                    "tag_counts": {"B-LOC": n, ...}},     # tags as written in the source file
         "length_histogram": [c_0, ..., c_max_seq_length],  # windows with that many tokens
         "shards": [{"file": "train-00000-of-00004.tfrecord", "records", "bytes", "sha256"}]}}}
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import uuid

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
_REQUIRED_KEYS = ("format_version", "label_map", "max_seq_length", "stride", "compression",
                  "tokenizer", "splits")


def manifest_path(path_or_dir: str | os.PathLike) -> pathlib.Path:
    """`DIR` or `DIR/manifest.json` -> `DIR/manifest.json`."""
    path = pathlib.Path(path_or_dir)
    return path / MANIFEST_NAME if path.is_dir() else path


def load_manifest(path_or_dir: str | os.PathLike) -> dict:
    """Reads and checks a manifest.

    Returns:
      The manifest dict, with "directory" (absolute path of the shards' directory) added.

    Raises:
      FileNotFoundError: no manifest there (preprocessing did not finish, or never ran).
      ValueError: the file is not a manifest this version can read.
    """
    path = manifest_path(path_or_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest (run `python -m data_pipeline.preprocess` "
                                f"first; a directory without manifest.json is not finished)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    missing = [key for key in _REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ValueError(f"{path}: not a preprocessing manifest (missing {missing})")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {manifest['format_version']} is not supported "
                         f"(this version reads {FORMAT_VERSION}); preprocess again")
    manifest["directory"] = str(path.parent.resolve())
    return manifest


def write_json_atomic(path: str | os.PathLike, payload: dict) -> None:
    """Writes JSON to a temporary file in the same directory, then renames it into place."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            json.dump(payload, stream, ensure_ascii=False, indent=1)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file, read in blocks."""
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def replace_directory(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Moves a finished staging directory to `target`, replacing an earlier one whole.

    Both are in the same parent directory, so each rename is atomic: at every moment `target` is
    either the complete old output or the complete new one (or, for an instant, absent).
    """
    staging, target = pathlib.Path(staging), pathlib.Path(target)
    if target.exists():
        retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, retired)
        os.rename(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, target)
