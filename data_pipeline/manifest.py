"""The manifest: what a preprocessing run wrote, and everything needed to read it back.

`manifest.json` sits beside the shards and is written last, so a directory with a manifest is
complete. Layout (abridged):

    {"format_version": 1,
     "label_map": ["O", "B-LOC", "I-LOC", ...],          # index = label id, IOB2
     "max_seq_length": 128, "stride": 32, "compression": "" | "GZIP",
     "tokenizer": {"name", "fingerprint", "prefix_ids", "suffix_ids", "pad_token_id",
                   "unk_token_id", "vocab_size", "word_boundary_marker", "lowercase"},
     "tag_scheme": {"source": "bmes", "internal": "iob2"}, "on_invalid": "repair",
     "splits": {"train": {
         "source": {"path", "sha256", "bytes", "format"},
         "counts": {"sentences", "characters", "windows", "tokens", "content_pieces",
                    "unknown_tokens", "unknown_token_rate",   # pieces
                    "words", "unknown_words", "unknown_word_rate",   # source tokens with an
                    "entity_words", "unknown_entity_words",          # unknown piece, overall
                    "unknown_entity_word_rate",                      # and in gold entities,
                    "unknown_words_known_lowercased",                # and the known causes
                    "unknown_words_punctuation", "sentences_split",
                    "max_sentence_length", "pieceless_tokens",   # tokens the normaliser
                    "pieceless_sentences",           # removes, and sentences of only those:
                                                     # each such token is the unknown token
                    "entities": {"LOC": n, ...},          # IOB2 entities, as trained on
                    "source_entities": {...},             # as written: minus repaired fragments
                    "repaired_tags": {"PER": n, ...},     # continuation tags that began one
                    "tag_counts": {"B-LOC": n, ...}},     # tags as written in the source file
         "unknown_word_examples": [["Paris", 12], ...],   # most frequent unknown tokens
         "length_histogram": [c_0, ..., c_max_seq_length],  # windows with that many tokens
         "shards": [{"file": "train-00000-of-00004.tfrecord", "records", "bytes", "sha256"}]}}}
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import math
import os
import pathlib
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator

import numpy as np

from data_pipeline import records
from data_pipeline.tags import IGNORE_ID

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
_REQUIRED_KEYS = ("format_version", "label_map", "max_seq_length", "stride", "compression",
                  "tokenizer", "splits")
_UNKNOWN_EXAMPLES = 10  # most frequent unknown source tokens listed per split


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
    if manifest.get("ignore_id", IGNORE_ID) != IGNORE_ID:  # the label id losses and metrics skip
        raise ValueError(f"{path}: ignore_id {manifest['ignore_id']} is not this version's "
                         f"{IGNORE_ID}; preprocess again")
    manifest["directory"] = str(path.parent.resolve())
    return manifest


def build_manifest(scans: dict, shards: list[dict], *, info, label_map: list[str], scheme: str,
                   on_invalid: str, max_seq_length: int, stride: int, compression: str) -> dict:
    """The manifest of a preprocessing run (layout in the module docstring), from its two passes.

    Args:
      scans: {split: pass 1's totals of its file}: "path", "sha256", "bytes", "format",
        "sentences", "characters", "max_sentence_length", "tag_counts".
      shards: every shard's result from pass 2 (`shard_writer.write_shard`), in any order.
      info: the `tokenization.TokenizerInfo` the shards were written with.
      label_map: IOB2 labels, index = label id.
      scheme: the tag scheme of the source files.
      on_invalid: "repair" or "fail".
      max_seq_length, stride: the window settings.
      compression: the TFRecord compression type ("" or "GZIP").

    Returns:
      The manifest dict, ready for `write_json_atomic`.
    """
    splits = {}
    for name, scan in scans.items():
        own = sorted((s for s in shards if s["split"] == name), key=lambda s: s["index"])
        stats = collections.Counter()
        entities: collections.Counter = collections.Counter()
        repaired: collections.Counter = collections.Counter()
        histogram = np.zeros(max_seq_length + 1, dtype=np.int64)
        for shard in own:
            stats.update(shard["stats"])
            entities.update(shard["entities"])
            repaired.update(shard["repaired"])
            histogram += shard["histogram"]
        pieces = stats["content_pieces"]
        examples: collections.Counter = collections.Counter()
        for shard in own:
            examples.update(dict(shard["unknown_words"]))

        def rate(part: str, whole: str) -> float:
            return stats[part] / stats[whole] if stats[whole] else 0.0

        splits[name] = {
            "source": {"path": scan["path"], "sha256": scan["sha256"], "bytes": scan["bytes"],
                       "format": scan["format"]},
            "counts": {
                "sentences": scan["sentences"], "characters": scan["characters"],
                "windows": int(stats["windows"]), "tokens": int(stats["tokens"]),
                "content_pieces": int(pieces), "unknown_tokens": int(stats["unknown_tokens"]),
                "unknown_token_rate": stats["unknown_tokens"] / pieces if pieces else 0.0,
                # Source tokens (characters or words) with an unknown piece, overall and inside
                # gold entities; and how many of those a known cause explains.
                "words": int(stats["words"]), "unknown_words": int(stats["unknown_words"]),
                "unknown_word_rate": rate("unknown_words", "words"),
                "entity_words": int(stats["entity_words"]),
                "unknown_entity_words": int(stats["unknown_entity_words"]),
                "unknown_entity_word_rate": rate("unknown_entity_words", "entity_words"),
                "unknown_words_known_lowercased": int(stats["unknown_words_known_lowercased"]),
                "unknown_words_punctuation": int(stats["unknown_words_punctuation"]),
                "sentences_split": int(stats["sentences_split"]),
                "pieceless_tokens": int(stats["pieceless_tokens"]),
                "pieceless_sentences": int(stats["pieceless_sentences"]),
                "max_sentence_length": scan["max_sentence_length"],
                "entities": dict(sorted(entities.items())),
                # Entities as the file writes them: the above minus the repaired fragments.
                "source_entities": {kind: count - repaired.get(kind, 0)
                                    for kind, count in sorted(entities.items())},
                "repaired_tags": dict(sorted(repaired.items())),
                "tag_counts": dict(sorted(scan["tag_counts"].items())),
            },
            # The most frequent unknown source tokens, [token, occurrences] (from each shard's
            # most frequent ones).
            "unknown_word_examples": [[token, int(count)] for token, count
                                      in examples.most_common(_UNKNOWN_EXAMPLES)],
            "length_histogram": histogram.tolist(),
            "shards": [{key: shard[key] for key in ("file", "records", "bytes", "sha256")}
                       for shard in own],
        }
    return {
        "format_version": FORMAT_VERSION,
        "created_by": "data_pipeline.preprocess",
        "label_map": list(label_map),
        "max_seq_length": max_seq_length,
        "stride": stride,
        "compression": compression,
        "tokenizer": info.to_json(),
        "tag_scheme": {"source": scheme, "internal": "iob2"},
        "on_invalid": on_invalid,
        "record_features": list(records.SEQUENCE_FEATURES + records.SCALAR_FEATURES),
        "ignore_id": IGNORE_ID,
        "splits": splits,
    }


def _non_finite_paths(value, where: str = "") -> list[str]:
    """Where in a JSON-like value a float is NaN or infinite, e.g. ['loss', 'grad_norm.head']."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [where or "(the value itself)"]
    if isinstance(value, dict):
        return [path for key, item in value.items()
                for path in _non_finite_paths(item, f"{where}.{key}" if where else str(key))]
    if isinstance(value, (list, tuple)):
        return [path for i, item in enumerate(value)
                for path in _non_finite_paths(item, f"{where}[{i}]")]
    return []


def _null_non_finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _null_non_finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_null_non_finite(item) for item in value]
    return value


def strict_json_dumps(payload, *, non_finite: str = "error", **kwargs) -> str:
    """`json.dumps` that never writes NaN or Infinity (which strict JSON readers reject).

    Python's json module writes `NaN`/`Infinity` by default; every JSON file this project writes
    goes through here instead.

    Args:
      payload: a JSON-serialisable value (numpy scalars must be converted first).
      non_finite: "error" raises naming where the bad float is; "null" writes it as `null`
        (for logs, where a diverged loss is worth recording but not as invalid JSON).
      **kwargs: passed to `json.dumps` (indent, sort_keys, ensure_ascii, ...).

    Raises:
      ValueError: a NaN or infinite float, with non_finite="error" (naming its key path).
    """
    if non_finite not in ("error", "null"):
        raise ValueError(f"non_finite must be 'error' or 'null', got {non_finite!r}")
    try:
        return json.dumps(payload, allow_nan=False, **kwargs)
    except ValueError:
        bad = _non_finite_paths(payload)
        if not bad:
            raise
        if non_finite == "null":
            return json.dumps(_null_non_finite(payload), allow_nan=False, **kwargs)
        raise ValueError(f"refusing to write NaN or infinity as JSON (at {', '.join(bad[:5])})"
                         ) from None


def write_json_atomic(path: str | os.PathLike, payload: dict) -> None:
    """Writes strict JSON to a temporary file in the same directory, then renames it into place.

    Raises:
      ValueError: the payload holds a NaN or infinite float (see `strict_json_dumps`); nothing
        is written then.
    """
    path = pathlib.Path(path)
    text = strict_json_dumps(payload, ensure_ascii=False, indent=1) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
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


# Hidden directories beside a target `DIR`: `.DIR.tmp-1a2b3c4d` while it is built (staging),
# `.DIR.old-1a2b3c4d` for the instant an earlier output is swapped out. Nothing else is ever
# matched by `clean_stale_directories`.
_STALE_SUFFIX = re.compile(r"(?P<kind>tmp|old)-[0-9a-f]{8}")


def try_lock_directory(directory: pathlib.Path) -> int | None:
    """An exclusive, non-blocking flock on a directory: the fd, or None if another holds it.

    The kernel drops the lock when its holder dies (even by SIGKILL), so a held lock means a live
    process is using the directory. Where locks are not supported, None too (treated as in use).
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no way to tell, so never touch it
        return None
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # EWOULDBLOCK: held; ENOLCK etc. (some network file systems): unknown
        os.close(fd)
        return None
    return fd


def _is_complete(directory: pathlib.Path) -> bool:
    """A finished output: a readable manifest and every shard it lists, of the listed size."""
    try:
        manifest = load_manifest(directory)
        return all((directory / shard["file"]).stat().st_size == shard["bytes"]
                   for split in manifest["splits"].values() for shard in split["shards"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextlib.contextmanager
def staging_directory(target: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A new hidden staging directory beside `target`, locked while this process uses it.

    The lock (see `try_lock_directory`) tells `clean_stale_directories` in another process that the
    directory is alive. On exit the directory is removed unless it was renamed away (by
    `replace_directory`).
    """
    target = pathlib.Path(target)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    fd = try_lock_directory(staging)
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if fd is not None:
            os.close(fd)


def clean_stale_directories(target: str | os.PathLike,
                            log: Callable[[str], None] = lambda message: None) -> list[str]:
    """Removes what killed runs left beside `target`: `.NAME.tmp-*` and `.NAME.old-*` directories.

    Only directories of exactly this naming for this target, and only when no live process
    holds their lock. A `.old-` directory is an earlier complete output swapped out just before
    a kill: when `target` itself is missing it is renamed back (the earlier output survives a
    failed re-run), else removed.

    Returns:
      The names of the directories removed or restored.
    """
    target = pathlib.Path(target)
    prefix = f".{target.name}."
    try:
        entries = list(target.parent.iterdir())
    except OSError:  # no parent yet: nothing left behind
        return []
    done = []
    for entry in sorted(entries):
        match = None
        if entry.name.startswith(prefix):
            match = _STALE_SUFFIX.fullmatch(entry.name[len(prefix):])
        if match is None or entry.is_symlink() or not entry.is_dir():
            continue
        fd = try_lock_directory(entry)
        if fd is None:
            continue  # in use by a live process (or locks are unsupported here)
        try:
            if match["kind"] == "old" and not target.exists() and _is_complete(entry):
                os.rename(entry, target)
                log(f"note: restored {target} from {entry.name}, the complete earlier output an "
                    f"interrupted run had moved aside")
            else:
                shutil.rmtree(entry, ignore_errors=True)
                log(f"note: removed {entry}, left behind by an interrupted run")
            done.append(entry.name)
        finally:
            os.close(fd)
    return done


def replace_directory(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Moves a finished staging directory to `target`, replacing an earlier one whole.

    Both are in the same parent directory, so each rename is atomic: at every moment `target` is
    either the complete old output or the complete new one (or, for an instant, absent; the old
    one is then locked under its `.old-` name, so `clean_stale_directories` leaves it alone).
    """
    staging, target = pathlib.Path(staging), pathlib.Path(target)
    if target.exists():
        retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        fd = try_lock_directory(target)
        try:
            os.rename(target, retired)
            os.rename(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        finally:
            if fd is not None:
                os.close(fd)
    else:
        os.rename(staging, target)
