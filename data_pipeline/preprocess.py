"""Corpus files -> sharded TFRecords + manifest.json.

    python -m data_pipeline.preprocess \\
        --train=../shared/data/msra/train.bmes --test=../shared/data/msra/test.bmes \\
        --tokenizer=../shared/models/multilingual-e5-small-zh --output_dir=data_cache/msra

How it runs:
1. Scan (one streaming pass per file, in parallel): UTF-8, column counts, the tags present, sentence
   offsets every `sentences_per_shard` sentences, sha256. All input errors that can be found
   without tokenizing are found here, before anything is written.
2. The tag scheme is detected (or given) and the label map is built from the train split; a tag of
   dev/test whose type train does not have is an error.
3. Shards are written in parallel (one task per shard, `num_workers` processes): sentences are
   converted to IOB2, tokenized, cut into windows, and written as `SPLIT-0000k-of-0000N.tfrecord`.
4. Everything is written into a hidden staging directory beside `output_dir`; the manifest goes
   last, and then the staging directory is renamed to `output_dir`. On any error the staging
   directory is removed, so a directory with a manifest is always complete, and an earlier
   output at `output_dir` is only replaced by a complete new one. What a killed run leaves
   behind (its staging directory, or an earlier output it was swapping out) is cleaned up, or
   restored, at the start of the next run into the same `output_dir`; worker processes die with
   the process that started them.

Steps 1 and 2 are in `scan`, step 3 in `shard_writer`, the worker processes in `workers`, the
manifest in `manifest`; this module runs them in order (`preprocess`) and is the command line.

A sentence whose every character the tokenizer's normaliser removes (ten U+FFFD with a WordPiece
vocabulary) is kept: each character becomes the unknown token, as one such character inside a
sentence does, and the manifest counts them (`pieceless_tokens`, `pieceless_sentences`).

Unknown tokens are counted three ways per split, because the piece rate hides what matters: a
word (or character) is unknown when any of its pieces is the unknown token, and an entity word is
one inside a gold entity. With the bert-base-chinese vocabulary, which has no uppercase letters,
every capitalised English word is a single unknown piece beside several known ones, so an English
CoNLL corpus has far more unknown words than pieces, and most of its entity words (names) are
unknown. Above `unknown_word_warning` (1% of words or of entity words) preprocessing warns, names
the most frequent unknown words and, where it can tell, the cause: words the vocabulary knows
once lowercased (a cased corpus, an uncased vocabulary: `lowercase=True` / `--lowercase` makes
the tokenizer lowercase), or punctuation the vocabulary lacks.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sys
import time
from collections.abc import Callable

from data_pipeline import corpus, shard_writer, tokenization, windows
from data_pipeline.manifest import (MANIFEST_NAME, build_manifest, clean_stale_directories,
                                    replace_directory, staging_directory, write_json_atomic)
from data_pipeline.scan import choose_label_map, choose_tag_scheme, scan_splits
from data_pipeline.workers import ShardProgress, WorkerDiedError, process_pool, run_jobs

COMPRESSION = {"none": "", "gzip": "GZIP"}
_SMALL_INPUT_BYTES = 4 << 20
UNKNOWN_WORD_WARNING = 0.01  # warn above this share of unknown words, or of unknown entity words


def shard_name(split: str, index: int, count: int) -> str:
    """The file name of shard `index` of `count` of a split: `train-00003-of-00011.tfrecord`."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def _check_arguments(splits, *, max_seq_length, stride, input_format, tag_scheme, on_invalid,
                     compression, sentences_per_shard, label_map):
    if not splits:
        raise ValueError("no input: give at least one split (train, dev or test)")
    for split, path in splits.items():
        if not split.isidentifier():
            raise ValueError(f"split name {split!r} must be a simple identifier")
        if os.path.isdir(path):
            raise IsADirectoryError(f"{split}: input file {path} is a directory, expected a file")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{split}: input file {path} does not exist")
    if "train" not in splits and not label_map:
        raise ValueError("without a train split, give label_map (the label map is built from "
                         "train)")
    if input_format not in ("auto",) + corpus.FORMATS:
        raise ValueError(f"input_format must be auto, char or conll, got {input_format!r}")
    if tag_scheme not in ("auto",) + corpus.SCHEMES:
        raise ValueError(f"tag_scheme must be one of auto, {', '.join(corpus.SCHEMES)}; "
                         f"got {tag_scheme!r}")
    if on_invalid not in corpus.ON_INVALID:
        raise ValueError(f"on_invalid must be repair or fail, got {on_invalid!r}")
    if compression not in COMPRESSION:
        raise ValueError(f"compression must be none or gzip, got {compression!r}")
    if sentences_per_shard < 1:
        raise ValueError(f"sentences_per_shard must be >= 1, got {sentences_per_shard}")
    problem = windows.window_settings_problem(max_seq_length, stride)
    if problem:
        name, value, accepted = problem
        raise ValueError(f"{name}={value!r} is invalid: {accepted}")


def preprocess(splits: dict[str, str | os.PathLike], output_dir: str | os.PathLike,
               tokenizer: str | os.PathLike, *, max_seq_length: int = windows.MAX_SEQ_LENGTH,
               stride: int = windows.STRIDE,
               input_format: str = "auto", tag_scheme: str = "auto", on_invalid: str = "repair",
               label_map: list[str] | None = None, word_boundary_marker: str = "auto",
               compression: str = "none", sentences_per_shard: int = 8192,
               num_workers: int | None = None, overwrite: bool = False,
               lowercase: bool = False, unknown_word_warning: float = UNKNOWN_WORD_WARNING,
               log: Callable[[str], None] = lambda message: None,
               warn: Callable[[str], None] | None = None) -> dict:
    """Preprocesses corpus splits into `output_dir` (shards + manifest.json).

    Args:
      splits: {split name: corpus file}, e.g. {"train": ..., "dev": ..., "test": ...}.
      output_dir: where the shards and manifest go; created (its parent must exist or is made).
      tokenizer: a transformers fast tokenizer directory or hub name.
      max_seq_length: pieces per window including special tokens.
      stride: most pieces two windows of one long sentence share.
      input_format: "char", "conll" or "auto" (detected per file).
      tag_scheme: "bio", "iob1", "bioes", "bmes" or "auto" (detected from all files' tags).
      on_invalid: "repair" or "fail" for continuation tags without an open entity.
      label_map: fixed label map (IOB2 tags, "O" first); default: built from the train split.
      word_boundary_marker: "auto", "keep" or "drop" (see `tokenization`).
      compression: "none" or "gzip".
      sentences_per_shard: sentences per shard file.
      num_workers: processes (default: the number of CPUs, or none for inputs under 4 MiB;
        0 runs in this process).
      overwrite: replace an earlier, complete output at `output_dir`.
      lowercase: make the tokenizer lowercase (for a cased corpus and an uncased vocabulary;
        see `tokenization`); recorded in the manifest's tokenizer.
      unknown_word_warning: warn when a split's share of unknown words, or of unknown entity
        words, is above this (module docstring).
      log: called with progress messages.
      warn: called with warnings (default: `log`).

    Returns:
      The manifest dict (also written to `output_dir/manifest.json`).

    Raises:
      corpus.CorpusError: bad input, naming the file and line.
      ValueError, FileNotFoundError, FileExistsError: bad arguments.
    """
    warn = log if warn is None else warn
    splits = {name: os.path.abspath(path) for name, path in splits.items()}
    _check_arguments(splits, max_seq_length=max_seq_length, stride=stride,
                     input_format=input_format, tag_scheme=tag_scheme, on_invalid=on_invalid,
                     compression=compression, sentences_per_shard=sentences_per_shard,
                     label_map=label_map)
    output_dir = pathlib.Path(output_dir).resolve()
    _check_output_dir(output_dir, overwrite=overwrite, log=log)
    the_format = _input_format(splits, input_format, log)
    started = time.time()

    # The tokenizer is loaded here first so that a bad name fails before any work.
    backend, info = tokenization.prepare_tokenizer(
        tokenizer, word_boundary_marker=word_boundary_marker, input_format=the_format,
        lowercase=lowercase)
    if info.lowercase:
        log(f"note: the tokenizer lowercases its input (lowercase); fingerprint "
            f"{info.fingerprint[:12]}")
    workers = _worker_count(splits, num_workers)
    worker_args = (backend.to_str(), info.to_json())
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # `stack` will hold the staging directory. On leaving, the pool goes first (the shards being
    # written are waited for), then the staging directory is removed unless it was renamed.
    with contextlib.ExitStack() as stack, process_pool(
            workers, shard_writer.init_worker, (*worker_args, os.getpid())) as pool:
        scans = scan_splits(splits, the_format, sentences_per_shard, pool)
        log(f"scanned {sum(s['sentences'] for s in scans.values())} sentences "
            f"in {time.time() - started:.1f}s")
        scheme = choose_tag_scheme(scans, tag_scheme)
        label_map = choose_label_map(scans, label_map)

        staging = stack.enter_context(staging_directory(output_dir))
        tasks = _shard_tasks(scans, staging, sentences_per_shard, settings=dict(
            label_map=label_map, max_seq_length=max_seq_length, stride=stride, scheme=scheme,
            on_invalid=on_invalid, compression=COMPRESSION[compression]))
        if pool is None:
            shard_writer.init_worker(*worker_args)
        log(f"preprocessing: {len(tasks)} shards of "
            f"{sum(task['sentences'] for task in tasks):,} sentences, "
            f"{'1 process' if pool is None else f'{workers} processes'}")
        shards = run_jobs(shard_writer.write_shard, tasks, pool,
                          progress=ShardProgress(tasks, log))
        manifest = build_manifest(scans, shards, info=info, label_map=label_map, scheme=scheme,
                                  on_invalid=on_invalid, max_seq_length=max_seq_length,
                                  stride=stride, compression=COMPRESSION[compression])
        write_json_atomic(staging / MANIFEST_NAME, manifest)
        replace_directory(staging, output_dir)
        _report_splits(manifest, shards, backend, info,
                       unknown_word_warning=unknown_word_warning, log=log, warn=warn)
        log(f"wrote {sum(s['records'] for s in shards)} windows in {len(shards)} shards to "
            f"{output_dir} in {time.time() - started:.1f}s")
        return manifest


def _check_output_dir(output_dir: pathlib.Path, *, overwrite: bool,
                      log: Callable[[str], None]) -> None:
    """Cleans up after killed runs into `output_dir`, then refuses an output it must not replace.

    Raises:
      FileExistsError: `output_dir` is a file, holds a finished output (without `overwrite`), or
        holds other files.
    """
    clean_stale_directories(output_dir, log)  # before looking at output_dir: it may be restored
    if output_dir.exists():
        if not output_dir.is_dir():
            raise FileExistsError(f"output_dir {output_dir} exists and is not a directory")
        if (output_dir / MANIFEST_NAME).exists():
            if not overwrite:
                raise FileExistsError(f"output_dir {output_dir} already holds a finished "
                                      f"preprocessing output; pass --overwrite to replace it "
                                      f"(overwrite=True when calling preprocess() in Python)")
        elif any(output_dir.iterdir()):
            raise FileExistsError(f"output_dir {output_dir} is not empty and holds no manifest; "
                                  f"refusing to write into it")


def _input_format(splits: dict[str, str], input_format: str, log: Callable[[str], None]) -> str:
    """The one format of all the files ("char" or "conll"), noting a BOM or CR-only line ends.

    Raises:
      ValueError: with input_format "auto", files detected as different formats.
    """
    for name, path in splits.items():
        if corpus.starts_with_bom(path):
            log(f"note: {path} ({name}) starts with a UTF-8 byte order mark (BOM); it is ignored")
        if corpus.line_ending(path) == "\r":
            log(f"note: {path} ({name}) has CR-only line ends (old Mac OS); read as such")
    formats = {name: (corpus.detect_format(path) if input_format == "auto" else input_format)
               for name, path in splits.items()}
    if len(set(formats.values())) > 1:
        each = "; ".join(f"{name} {splits[name]}: {fmt}" for name, fmt in formats.items())
        raise ValueError(f"the splits have different formats ({each}; detected from their "
                         f"first lines: char = one character and its tag per line); give "
                         f"input_format")
    return next(iter(formats.values()))


def _worker_count(splits: dict[str, str], num_workers: int | None) -> int:
    """Worker processes: `num_workers`, or by default none for small inputs, else one a CPU."""
    if num_workers is not None:
        return num_workers
    # Starting a worker costs about a second (Python, numpy, later TensorFlow's writer), so
    # small corpora are done in this process.
    small = sum(os.path.getsize(path) for path in splits.values()) < _SMALL_INPUT_BYTES
    return 0 if small else (os.cpu_count() or 1)


def _shard_tasks(scans: dict[str, dict], staging: pathlib.Path, sentences_per_shard: int, *,
                 settings: dict) -> list[dict]:
    """One `shard_writer.write_shard` task per shard, the longest first (better load balance)."""
    tasks = []
    for name, scan in scans.items():
        count = len(scan["offsets"])
        for index, (offset, line) in enumerate(scan["offsets"]):
            first = index * sentences_per_shard
            tasks.append({"split": name, "index": index, "source": scan["path"],
                          "format": scan["format"], "offset": offset, "line": line,
                          "first_sentence_id": first,
                          "sentences": min(sentences_per_shard, scan["sentences"] - first),
                          "path": str(staging / shard_name(name, index, count))})
    tasks.sort(key=lambda task: -task["sentences"])  # longest first: better load balance
    for task in tasks:
        task.update(settings)
    return tasks


def _report_splits(manifest: dict, shards: list[dict], backend, info, *,
                   unknown_word_warning: float, log: Callable[[str], None],
                   warn: Callable[[str], None]) -> None:
    """Logs each split's counts; warns about many unknown words; notes sentences made unknown."""
    for name, split in manifest["splits"].items():
        counts = split["counts"]
        words = "characters" if split["source"]["format"] == "char" else "words"
        log(f"{name}: {counts['sentences']} sentences, {counts['windows']} windows "
            f"({counts['sentences_split']} sentences split), {counts['tokens']} tokens, "
            f"unknown: {counts['unknown_token_rate']:.4%} of pieces, "
            f"{counts['unknown_word_rate']:.4%} of {words}, "
            f"{counts['unknown_entity_word_rate']:.4%} of entity {words}; "
            f"entities {counts['entities']}, repaired tags {counts['repaired_tags'] or 0}")
        if max(counts["unknown_word_rate"],
               counts["unknown_entity_word_rate"]) > unknown_word_warning:
            warn(unknown_word_message(name, split, manifest["tokenizer"],
                                      backend.id_to_token(info.unk_token_id),
                                      tokenization.tokenizer_lowercases(backend)))
        if counts["pieceless_sentences"]:
            lines = sorted(line for shard in shards if shard["split"] == name
                           for line in shard["pieceless_lines"])[:shard_writer.PIECELESS_LINES_KEPT]
            more = ", ..." if counts["pieceless_sentences"] > len(lines) else ""
            where = ", ".join(f"{split['source']['path']}:{line}" for line in lines) + more
            log(f"note: {name}: the tokenizer's normaliser removes every character of "
                f"{counts['pieceless_sentences']} sentence(s) (control, zero-width or U+FFFD "
                f"characters?); they are kept, each character as the unknown token: {where}")


def unknown_word_message(name: str, split: dict, tokenizer: dict, unk_token: str,
                         lowercases: bool) -> str:
    """The warning for a split with many unknown words, naming the cause where it is known.

    Args:
      name: the split's name.
      split: its manifest entry ("counts", "unknown_word_examples", "source").
      tokenizer: the manifest's tokenizer entry.
      unk_token: the unknown token as a string ("[UNK]").
      lowercases: the tokenizer lowercases already.
    """
    counts = split["counts"]
    words = "characters" if split["source"]["format"] == "char" else "words"
    unknown = counts["unknown_words"]
    examples = ", ".join(f"{token} ({count:,})" for token, count in split["unknown_word_examples"])
    message = (f"WARNING: {name}: {counts['unknown_word_rate']:.2%} of {words} "
               f"({unknown:,} of {counts['words']:,}) and {counts['unknown_entity_word_rate']:.2%} "
               f"of entity {words} ({counts['unknown_entity_words']:,} of "
               f"{counts['entity_words']:,}) have a piece that is the tokenizer's unknown token "
               f"{unk_token} ({counts['unknown_token_rate']:.2%} of pieces): the model cannot "
               f"tell them apart. Most frequent: {examples}.")
    cased = counts["unknown_words_known_lowercased"]
    punctuation = counts["unknown_words_punctuation"]
    if unknown and cased >= unknown / 2 and not lowercases:
        message += (f" Cause: {cased / unknown:.0%} of them are in the vocabulary once lowercased"
                    f": the corpus is cased and the vocabulary of {tokenizer['name']} is not. "
                    f"Preprocess with --lowercase (python -m data_pipeline.preprocess; in Python "
                    f"preprocess(..., lowercase=True)) so that the tokenizer lowercases its "
                    f"input.")
    elif unknown and punctuation >= unknown / 2:
        message += (f" Cause: {punctuation / unknown:.0%} of them are punctuation the vocabulary "
                    f"lacks; map it to punctuation the vocabulary has (e.g. “ ” to \") before "
                    f"preprocessing.")
    else:
        message += (f" Check that the vocabulary of {tokenizer['name']} covers this corpus's "
                    f"language and script.")
    return message


def main(argv) -> None:
    """The command: flags -> `preprocess`; bad input or arguments print `error: ...`, exit 2."""
    from absl import flags

    from data_pipeline.cli import unexpected_arguments

    if len(argv) > 1:
        print(f"error: {unexpected_arguments(argv[1:], 'python -m data_pipeline.preprocess')}",
              file=sys.stderr)
        sys.exit(2)
    f = flags.FLAGS
    splits = {name: getattr(f, name) for name in ("train", "dev", "test") if getattr(f, name)}
    label_map = None
    if f.label_map:
        label_map = [label.strip() for label in f.label_map.split(",") if label.strip()]
    try:
        preprocess(splits, f.output_dir, f.tokenizer, max_seq_length=f.max_seq_length,
                   stride=f.stride, input_format=f.input_format, tag_scheme=f.tag_scheme,
                   on_invalid=f.on_invalid, label_map=label_map,
                   word_boundary_marker=f.word_boundary_marker, compression=f.compression,
                   sentences_per_shard=f.sentences_per_shard, num_workers=f.num_workers,
                   overwrite=f.overwrite, lowercase=f.lowercase,
                   log=lambda message: print(message, flush=True),
                   warn=lambda message: print(message, file=sys.stderr, flush=True))
    except (corpus.CorpusError, ValueError, OSError, WorkerDiedError) as e:
        # OSError: a file missing, a directory, ...
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def define_flags() -> None:
    """Declares the command's flags on absl's global `flags.FLAGS`."""
    from absl import flags

    flags.DEFINE_string("train", None, "Train split corpus file (the label map is built from it).")
    flags.DEFINE_string("dev", None, "Dev split corpus file.")
    flags.DEFINE_string("test", None, "Test split corpus file.")
    flags.DEFINE_string("output_dir", None, "Where shards and manifest.json are written.")
    flags.DEFINE_string("tokenizer", None, "transformers fast tokenizer: a directory or hub name.")
    flags.DEFINE_integer("max_seq_length", windows.MAX_SEQ_LENGTH,
                         "Pieces per window, special tokens included.")
    flags.DEFINE_integer("stride", windows.STRIDE,
                         "Most pieces shared by two windows of a long sentence.")
    flags.DEFINE_enum("input_format", "auto", ["auto", *corpus.FORMATS], "Corpus file format.")
    flags.DEFINE_enum("tag_scheme", "auto", ["auto", *corpus.SCHEMES], "Tag scheme of the files.")
    flags.DEFINE_enum("on_invalid", "repair", list(corpus.ON_INVALID),
                      "Continuation tag without an open entity: repair (start one) or fail.")
    flags.DEFINE_string("label_map", None, "Comma-separated IOB2 labels, 'O' first (default: "
                        "built from --train).")
    flags.DEFINE_enum("word_boundary_marker", "auto", list(tokenization.WORD_BOUNDARY_MARKER),
                      "SentencePiece `▁` before each token: auto drops it for character corpora.")
    flags.DEFINE_enum("compression", "none", list(COMPRESSION), "TFRecord compression.")
    flags.DEFINE_integer("sentences_per_shard", 8192, "Sentences per shard file.")
    flags.DEFINE_integer("num_workers", None, "Worker processes (default: CPU count; 0: none).",
                         lower_bound=0)
    flags.DEFINE_boolean("overwrite", False, "Replace a finished output at --output_dir.")
    flags.DEFINE_boolean("lowercase", False, "Make the tokenizer lowercase its input (a cased "
                         "corpus with an uncased vocabulary such as bert-base-chinese's).")
    flags.mark_flags_as_required(["output_dir", "tokenizer"])


def run() -> None:
    """Console entry point (`tagger-preprocess`)."""
    from absl import app

    from data_pipeline.cli import absl_flags_parser

    define_flags()
    app.run(main, flags_parser=absl_flags_parser("python -m data_pipeline.preprocess",
                                                 exit_code=2))


if __name__ == "__main__":
    run()
