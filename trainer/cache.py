"""The trainer's side of the data: preprocessing on demand (cached), datasets, gold sentences.

One command does the whole job: when no shards exist for the requested corpus files, tokenizer and
windowing settings, `ensure_preprocessed` runs `data_pipeline.preprocess.preprocess` into

    <data_cache_dir>/<fingerprint[:16]>/manifest.json + shards

where the fingerprint is the sha256 of everything the shards depend on (the corpus files' sha256,
the tokenizer files' sha256, max_seq_length, stride, lowercase when set, the manifest format
version). The next run with the same inputs finds the manifest and reuses the shards; change one
byte of a corpus or a setting and it gets a new directory.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Callable

from data_pipeline.manifest import file_sha256, strict_json_dumps
from trainer.config import TrainConfig

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.txt", "sentencepiece.bpe.model", "spiece.model", "vocab.json",
                    "merges.txt")
_SPLITS = ("train", "dev", "test")


class DataError(ValueError):
    """The corpus files or the preprocessed data cannot be used (the message says why).

    Raised for what preprocessing and the manifest reader report as a plain ValueError (for
    example splits of different formats, or a damaged manifest); `corpus.CorpusError` (a bad
    line, naming the file and line) passes through unchanged.
    """


def tokenizer_fingerprint(tokenizer: str) -> str:
    """sha256 over the tokenizer's files (a directory), or of the name (a hub name)."""
    path = pathlib.Path(tokenizer)
    if not path.is_dir():
        return hashlib.sha256(tokenizer.encode()).hexdigest()
    parts = {name: file_sha256(path / name) for name in _TOKENIZER_FILES if (path / name).is_file()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def preprocessing_inputs(config: TrainConfig) -> dict:
    """Everything the preprocessed shards depend on (hashed into the cache key)."""
    from data_pipeline.manifest import FORMAT_VERSION

    inputs = {
        "files": {split: file_sha256(getattr(config, f"{split}_file")) for split in _SPLITS},
        "tokenizer": tokenizer_fingerprint(config.tokenizer),
        "max_seq_length": config.max_seq_length,
        "stride": config.stride,
        "format_version": FORMAT_VERSION,
    }
    if config.lowercase:  # only when set: the caches made before the flag existed stay valid
        inputs["lowercase"] = True
    return inputs


def cache_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def ensure_preprocessed(config: TrainConfig, *, log: Callable[[str], None] = print) -> str:
    """Returns the directory of the shards + manifest for `config`, preprocessing when missing.

    Safe when several processes (multi-worker) call it at once: preprocessing writes into a
    staging directory and renames it into place, so the loser finds the winner's output.

    Raises:
      corpus.CorpusError: a bad corpus line (naming the file and line).
      DataError: other bad input (formats, tokenizer) or an unusable manifest.
      OSError: an input file vanished, or the cache directory cannot be written.
    """
    from data_pipeline import corpus, preprocess
    from data_pipeline.manifest import MANIFEST_NAME

    if config.manifest:
        path = pathlib.Path(config.manifest)
        output_dir = path.parent if path.name == MANIFEST_NAME else path
        _check_manifest(output_dir)
        return str(output_dir)
    inputs = preprocessing_inputs(config)
    output_dir = pathlib.Path(config.data_cache_dir) / cache_key(inputs)
    if (output_dir / MANIFEST_NAME).is_file():
        log(f"reusing preprocessed shards in {output_dir}")
        _check_manifest(output_dir)
        return str(output_dir)
    log(f"preprocessing {config.train_file} (+ dev, test) into {output_dir}")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    files = {split: getattr(config, f"{split}_file") for split in _SPLITS}
    try:
        # num_workers=None: preprocess decides (one process for a small corpus).
        preprocess.preprocess(files, output_dir, config.tokenizer,
                              max_seq_length=config.max_seq_length, stride=config.stride,
                              lowercase=config.lowercase, num_workers=None, log=log)
    except corpus.CorpusError:
        raise
    except ValueError as error:
        raise DataError(str(error)) from None
    except (FileExistsError, OSError):
        if not (output_dir / MANIFEST_NAME).is_file():
            raise
        log(f"another process finished {output_dir} first; reusing it")
    (output_dir / "inputs.json").write_text(
        strict_json_dumps(inputs, indent=2, sort_keys=True))
    _check_manifest(output_dir)
    return str(output_dir)


def _check_manifest(directory: pathlib.Path) -> dict:
    """Loads the manifest and checks it has every split training reads.

    Raises:
      DataError: no manifest, a damaged one, or a split missing.
    """
    from data_pipeline.manifest import load_manifest

    try:
        manifest = load_manifest(directory)
    except (FileNotFoundError, ValueError) as error:
        raise DataError(str(error)) from None
    missing = [split for split in _SPLITS if split not in manifest["splits"]]
    if missing:
        raise DataError(f"{manifest['directory']}: the manifest has no {' or '.join(missing)} "
                        f"split (it has {sorted(manifest['splits'])}); training needs train, dev "
                        f"and test")
    return manifest


def read_gold(manifest: dict, split: str) -> tuple[list[list[str]], list[list[str]]]:
    """The source tokens and gold IOB2 tags of a split, indexed by sentence id.

    Returns:
      (tokens, tags): per sentence, its characters (or words) and their IOB2 tags.
    """
    from data_pipeline import corpus

    source = manifest["splits"][split]["source"]
    scheme = manifest["tag_scheme"]["source"]
    tokens, tags = [], []
    for sentence in corpus.read_sentences(source["path"], input_format=source["format"]):
        iob2, _ = corpus.to_iob2(sentence.tags, scheme, on_invalid=manifest["on_invalid"],
                                 path=source["path"], first_line=sentence.line)
        tokens.append(sentence.tokens)
        tags.append(iob2)
    return tokens, tags


def verify_data(manifest: dict, splits: tuple[str, ...] = _SPLITS) -> None:
    """Checks every shard of `splits` against the manifest, before anything trains.

    Each shard's presence, size and sha256 (`data_pipeline.dataset.check_shards`); then, for
    preprocessed data, every record is read and checked and each split's counts are compared
    with what its shards hold (`data_pipeline.recount.check_split`: windows, sentences,
    tokens, characters, entities, ...; the schedule, epochs, evaluation cadence and log lines
    are computed from them). A feature cache (the data manifest's counts, with records built by
    the trainer from data verified here just before) has only its windows compared with the
    sum of its shards' record counts: reading its gigabytes of features twice would slow every
    run's start.

    Raises:
      ShardError: naming the shard and what differs, or the manifest, the count and its value.
    """
    from data_pipeline.dataset import ShardError, check_shards
    from data_pipeline.manifest import MANIFEST_NAME
    from data_pipeline.recount import check_split, rebuild_hint

    path = pathlib.Path(manifest["directory"]) / MANIFEST_NAME
    for split in splits:
        info = manifest["splits"][split]
        shards = list(info.get("shards") or [])
        if not shards:
            raise ShardError(f"{path}: split {split!r} lists no shards")
        check_shards(manifest, shards)
        if not manifest.get("features"):
            check_split(manifest, split)
            continue
        records = sum(int(shard["records"]) for shard in shards)
        windows = (info.get("counts") or {}).get("windows")
        if not isinstance(windows, int) or windows != records:
            raise ShardError(f"{path}: split {split!r} says counts.windows = {windows!r}, but its "
                             f"{len(shards)} shard(s) hold {records} records: the manifest was "
                             f"edited or damaged; {rebuild_hint(manifest)}")
