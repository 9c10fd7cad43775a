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

import collections
import concurrent.futures
import contextlib
import ctypes
import multiprocessing
import os
import pathlib
import signal
import sys
import threading
import time
import unicodedata
from collections.abc import Callable

import numpy as np

from data_pipeline import corpus, records, tokenization, windows
from data_pipeline.manifest import (FORMAT_VERSION, MANIFEST_NAME, clean_stale_directories,
                                    file_sha256, replace_directory, staging_directory,
                                    write_json_atomic)
from data_pipeline.tags import IGNORE_ID

COMPRESSION = {"none": "", "gzip": "GZIP"}
_TOKENIZE_BATCH = 512
_SMALL_INPUT_BYTES = 4 << 20
_PIECELESS_LINES_KEPT = 5
UNKNOWN_WORD_WARNING = 0.01  # warn above this share of unknown words, or of unknown entity words
_UNKNOWN_EXAMPLES_PER_SHARD = 50
_UNKNOWN_EXAMPLES = 10


def shard_name(split: str, index: int, count: int) -> str:
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


def _scan(job: tuple[str, str, str, int, int, int]) -> dict:
    """Pass 1 over one range of sentences: validation and the tags present (runs in a worker)."""
    split, path, input_format, offset, line, limit = job
    tag_counts: collections.Counter = collections.Counter()
    first_line: dict[str, int] = {}
    sentences = characters = longest = 0
    for sentence in corpus.read_sentences(path, input_format=input_format, offset=offset,
                                          first_line=line, limit=limit):
        sentences += 1
        characters += len(sentence.tokens)
        longest = max(longest, len(sentence.tokens))
        tag_counts.update(sentence.tags)
        if len(first_line) < len(tag_counts):
            for i, tag in enumerate(sentence.tags):
                first_line.setdefault(tag, sentence.line + i)
    if sentences != limit:
        raise corpus.CorpusError(path, line, f"expected {limit} sentences from here, found "
                                             f"{sentences}; is the file being written to?")
    return {"split": split, "sentences": sentences, "characters": characters,
            "max_sentence_length": longest, "tag_counts": tag_counts, "tag_first_line": first_line}


def _scan_files(splits: dict[str, str], input_format: str, every: int, pool) -> dict[str, dict]:
    """Pass 1 over all files: offsets and sha256 here, then validation in parallel ranges."""
    scans = {}
    jobs = []
    for name, path in splits.items():
        offsets, sha256, sentences = corpus.sentence_offsets(path, every)
        if sentences == 0:
            raise corpus.CorpusError(path, None, "empty file: no sentences found")
        scans[name] = {"path": path, "format": input_format, "sha256": sha256,
                       "bytes": os.path.getsize(path), "offsets": offsets, "sentences": sentences,
                       "characters": 0, "max_sentence_length": 0,
                       "tag_counts": collections.Counter(), "tag_first_line": {}}
        for index, (offset, line) in enumerate(offsets):
            jobs.append((name, path, input_format, offset, line,
                         min(every, sentences - index * every)))
    for part in _run(_scan, jobs, pool):
        scan = scans[part["split"]]
        scan["characters"] += part["characters"]
        scan["max_sentence_length"] = max(scan["max_sentence_length"],
                                          part["max_sentence_length"])
        scan["tag_counts"].update(part["tag_counts"])
        for tag, line in part["tag_first_line"].items():
            scan["tag_first_line"][tag] = min(line, scan["tag_first_line"].get(tag, line))
    return scans


_WORKER: dict = {}


class WorkerDiedError(RuntimeError):
    """A worker process of the preprocessing pool ended abruptly (e.g. SIGKILL)."""


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent_pid: int) -> None:
    """Makes this worker process end when `parent_pid` does, even if that one is SIGKILLed.

    A killed parent cannot terminate its pool, and a busy worker would otherwise write its shard
    into a staging directory nobody will use, for up to a minute. Linux: the kernel sends
    SIGKILL when the thread that started the worker ends (PR_SET_PDEATHSIG; `preprocess` makes
    and terminates its pool in one call, so that thread outlives the pool); elsewhere a thread
    polls the parent pid.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # it died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _init_worker(backend_json: str, info: dict, parent_pid: int | None = None) -> None:
    """Worker set-up: only the Rust tokenizer from its JSON (no transformers import).

    Args:
      parent_pid: in a pool worker, the pid of the process that made the pool (the worker dies
        with it); None when called in that process itself.
    """
    from tokenizers import Tokenizer

    if parent_pid is not None:
        _die_with_parent(parent_pid)
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # processes give the parallelism
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    info = tokenization.TokenizerInfo(**info)
    backend = Tokenizer.from_str(backend_json)
    _WORKER.update(encoder=tokenization.TokenEncoder(backend, info.unk_token_id), info=info,
                   lowercases=tokenization.tokenizer_lowercases(backend))


def _is_punctuation(token: str) -> bool:
    return all(unicodedata.category(c).startswith("P") for c in token)


def _unknown_causes(unknown: collections.Counter) -> dict[str, int]:
    """How many unknown-word occurrences of a shard have a known cause (runs in the worker).

    Returns:
      {"unknown_words_known_lowercased": occurrences whose lowercased form has no unknown
       piece (0 when the tokenizer lowercases anyway), "unknown_words_punctuation": occurrences
       made only of punctuation (“ ” — … with bert-base-chinese)}.
    """
    known_lowercased = 0
    if not _WORKER["lowercases"]:
        cased = [token for token in unknown if token.lower() != token]
        unk = _WORKER["info"].unk_token_id
        for token, (ids, _, _) in zip(
                cased, _WORKER["encoder"].encode([[token.lower()] for token in cased])):
            if ids and unk not in ids:
                known_lowercased += unknown[token]
    return {"unknown_words_known_lowercased": known_lowercased,
            "unknown_words_punctuation": sum(count for token, count in unknown.items()
                                             if _is_punctuation(token))}


def _write_shard(task: dict) -> dict:
    """Pass 2 for one shard: convert, tokenize, window, write. Returns the shard's statistics."""
    import tensorflow as tf

    encoder, info = _WORKER["encoder"], _WORKER["info"]
    label_to_id = {label: i for i, label in enumerate(task["label_map"])}
    max_seq_length, stride = task["max_seq_length"], task["stride"]
    budget = windows.window_budget(max_seq_length, info.prefix_ids, info.suffix_ids)
    histogram = np.zeros(max_seq_length + 1, dtype=np.int64)
    entities: collections.Counter = collections.Counter()
    repaired: collections.Counter = collections.Counter()
    stats = collections.Counter()
    unknown_words: collections.Counter = collections.Counter()  # source token -> occurrences
    pieceless_lines: list[int] = []
    sentence_id = task["first_sentence_id"]
    partial = task["path"] + ".partial"
    options = tf.io.TFRecordOptions(compression_type=task["compression"])
    reader = corpus.read_sentences(task["source"], input_format=task["format"],
                                   offset=task["offset"], first_line=task["line"],
                                   limit=task["sentences"])
    with tf.io.TFRecordWriter(partial, options) as writer:
        while True:
            batch = [s for _, s in zip(range(_TOKENIZE_BATCH), reader)]
            if not batch:
                break
            tokenized = encoder.encode([s.tokens for s in batch])
            for sentence, (ids, first_piece, pieceless) in zip(batch, tokenized):
                tags, fixed = corpus.to_iob2(sentence.tags, task["scheme"],
                                             on_invalid=task["on_invalid"],
                                             path=task["source"], first_line=sentence.line)
                if fixed:
                    for tag, old in zip(tags, sentence.tags):
                        if tag.startswith("B-") and corpus.split_tag(old)[0] in "IME":
                            repaired[tag[2:]] += 1
                try:
                    label_ids = [label_to_id[tag] for tag in tags]
                except KeyError as e:
                    line = sentence.line + tags.index(e.args[0])
                    raise corpus.CorpusError(task["source"], line, f"tag {e.args[0]!r} is not in "
                                             f"the label map {task['label_map']}") from None
                if not ids:
                    # The normaliser removes every character (U+FFFD, control or zero-width
                    # characters): each one becomes the unknown token, exactly as one such
                    # character inside a sentence does, so the sentence keeps its labels.
                    ids = [info.unk_token_id] * len(sentence.tokens)
                    first_piece = list(range(len(sentence.tokens)))
                    stats["pieceless_sentences"] += 1
                    if len(pieceless_lines) < _PIECELESS_LINES_KEPT:
                        pieceless_lines.append(sentence.line)
                entities.update(corpus.entity_types_of(tags))
                stats["pieceless_tokens"] += pieceless
                stats["content_pieces"] += len(ids)
                stats["unknown_tokens"] += ids.count(info.unk_token_id)
                stats["words"] += len(tags)
                stats["entity_words"] += len(tags) - tags.count("O")
                unknown = tokenization.unknown_tokens(ids, first_piece, info.unk_token_id)
                if unknown:
                    stats["unknown_words"] += len(unknown)
                    stats["unknown_entity_words"] += sum(tags[j] != "O" for j in unknown)
                    unknown_words.update(sentence.tokens[j] for j in unknown)
                num_windows = 0
                for input_ids, labels, char_index, start, end in windows.window_records(
                        ids, first_piece, label_ids, prefix_ids=info.prefix_ids,
                        suffix_ids=info.suffix_ids, budget=budget, stride=stride):
                    writer.write(records.encode_example(
                        input_ids=input_ids, label_ids=labels, char_index=char_index,
                        sentence_id=sentence_id, window_start=start, window_end=end,
                        sentence_length=len(tags)))
                    histogram[len(input_ids)] += 1
                    stats["tokens"] += len(input_ids)
                    num_windows += 1
                stats["windows"] += num_windows
                stats["sentences_split"] += num_windows > 1
                sentence_id += 1
    if sentence_id - task["first_sentence_id"] != task["sentences"]:
        raise corpus.CorpusError(task["source"], task["line"], "file changed while it was read")
    os.replace(partial, task["path"])
    stats.update(_unknown_causes(unknown_words))
    return {"split": task["split"], "index": task["index"], "file": os.path.basename(task["path"]),
            "records": int(stats["windows"]), "bytes": os.path.getsize(task["path"]),
            "sha256": file_sha256(task["path"]), "histogram": histogram, "entities": dict(entities),
            "repaired": dict(repaired), "stats": dict(stats), "pieceless_lines": pieceless_lines,
            "unknown_words": unknown_words.most_common(_UNKNOWN_EXAMPLES_PER_SHARD)}


def _run(function: Callable, jobs: list, pool,
         progress: Callable[[dict], None] | None = None) -> list:
    """`function` over `jobs` (in `pool`, a ProcessPoolExecutor, if given); `progress(result)`
    after each one ends, in completion order, so a result must say which job it was.

    Raises:
      WorkerDiedError: a worker process ended abruptly (killed, e.g. by the out-of-memory
        killer). A `multiprocessing.Pool` would replace it and wait for its job forever.
    """
    results = []
    if pool is None:
        outputs = (function(job) for job in jobs)
    else:
        outputs = (future.result() for future in concurrent.futures.as_completed(
            [pool.submit(function, job) for job in jobs]))
    try:
        for result in outputs:
            results.append(result)
            if progress is not None:
                progress(result)
    except concurrent.futures.process.BrokenProcessPool as error:
        raise WorkerDiedError(
            "a preprocessing worker process died (killed by a signal, e.g. the out-of-memory "
            "killer: try --num_workers=1 or fewer sentences per shard); nothing was written to "
            "the output directory") from error
    return results


class _ShardProgress:
    """One log line per finished shard: shards and sentences done of the total, and an ETA."""

    def __init__(self, tasks: list[dict], log: Callable[[str], None]):
        self.log = log
        self.total_shards = len(tasks)
        self.sentences_of = {(task["split"], task["index"]): task["sentences"] for task in tasks}
        self.total_sentences = sum(self.sentences_of.values())
        self.sentences = self.shards = 0
        self.start = time.monotonic()

    def __call__(self, shard: dict) -> None:
        self.shards += 1
        self.sentences += self.sentences_of[shard["split"], shard["index"]]
        elapsed = time.monotonic() - self.start
        done = self.sentences / max(self.total_sentences, 1)
        eta = f", ETA {elapsed * (1 - done) / done:.0f}s" if 0 < done < 1 else ""
        self.log(f"preprocessing: {self.shards}/{self.total_shards} shards, "
                 f"{self.sentences:,}/{self.total_sentences:,} sentences ({done:.0%}) "
                 f"in {elapsed:.0f}s{eta}")


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
    clean_stale_directories(output_dir, log)  # before looking at output_dir: it may be restored
    if output_dir.exists():
        if not output_dir.is_dir():
            raise FileExistsError(f"output_dir {output_dir} exists and is not a directory")
        if (output_dir / MANIFEST_NAME).exists():
            if not overwrite:
                raise FileExistsError(f"output_dir {output_dir} already holds a finished "
                                      f"preprocessing output; pass overwrite to replace it")
        elif any(output_dir.iterdir()):
            raise FileExistsError(f"output_dir {output_dir} is not empty and holds no manifest; "
                                  f"refusing to write into it")
    for name, path in splits.items():
        if corpus.starts_with_bom(path):
            log(f"note: {path} ({name}) starts with a UTF-8 byte order mark (BOM); it is ignored")
        if corpus.line_ending(path) == "\r":
            log(f"note: {path} ({name}) has CR-only line ends (old Mac OS); read as such")
    formats = {name: (corpus.detect_format(path) if input_format == "auto" else input_format)
               for name, path in splits.items()}
    if len(set(formats.values())) > 1:
        raise ValueError(f"the splits have different formats {formats} (detected from their "
                         f"first lines: char = one character and its tag per line); give "
                         f"input_format")
    the_format = next(iter(formats.values()))
    started = time.time()

    # The tokenizer is loaded here first so that a bad name fails before any work.
    backend, info = tokenization.prepare_tokenizer(
        tokenizer, word_boundary_marker=word_boundary_marker, input_format=the_format,
        lowercase=lowercase)
    if info.lowercase:
        log(f"note: the tokenizer lowercases its input (lowercase); fingerprint "
            f"{info.fingerprint[:12]}")
    if num_workers is None:
        # Starting a worker costs about a second (Python, numpy, later TensorFlow's writer), so
        # small corpora are done in this process.
        small = sum(os.path.getsize(path) for path in splits.values()) < _SMALL_INPUT_BYTES
        workers = 0 if small else (os.cpu_count() or 1)
    else:
        workers = num_workers
    pool = None
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    stack = contextlib.ExitStack()  # holds the staging directory once there is one
    try:
        if workers > 0:
            pool = concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(backend.to_str(), info.to_json(), os.getpid()))
        scans = _scan_files(splits, the_format, sentences_per_shard, pool)
        log(f"scanned {sum(s['sentences'] for s in scans.values())} sentences "
            f"in {time.time() - started:.1f}s")

        scheme = tag_scheme
        if scheme == "auto":
            scheme = corpus.detect_scheme({corpus.split_tag(tag)[0] for scan in scans.values()
                                           for tag in scan["tag_counts"]})
        allowed = corpus._SCHEME_PREFIXES[scheme] | {"O"}
        for scan in scans.values():
            for tag, line in sorted(scan["tag_first_line"].items(), key=lambda item: item[1]):
                prefix, kind = corpus.split_tag(tag)
                if prefix not in allowed or (prefix != "O" and not kind):
                    expected = ", ".join(p + "-TYPE" for p in sorted(allowed - {"O"}))
                    raise corpus.CorpusError(
                        scan["path"], line, f"tag {tag!r} does not fit the {scheme.upper()} scheme "
                        f"(expected O or one of {expected})")
        if label_map is None:
            label_map = corpus.build_label_map(
                {corpus.split_tag(tag)[1] for tag in scans["train"]["tag_counts"]} - {""})
        elif not label_map or label_map[0] != "O":
            raise ValueError(f"label_map must start with 'O', got {label_map}")
        known_types = {corpus.split_tag(label)[1] for label in label_map} - {""}
        for scan in scans.values():
            for tag, line in sorted(scan["tag_first_line"].items(), key=lambda item: item[1]):
                kind = corpus.split_tag(tag)[1]
                if kind and kind not in known_types:
                    raise corpus.CorpusError(
                        scan["path"], line, f"tag {tag!r}: entity type {kind!r} is not in the "
                        f"label map built from the train split ({label_map})")

        staging = stack.enter_context(staging_directory(output_dir))
        settings = dict(label_map=label_map, max_seq_length=max_seq_length, stride=stride,
                        scheme=scheme, on_invalid=on_invalid, compression=COMPRESSION[compression])
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
        if pool is None:
            _init_worker(backend.to_str(), info.to_json())
        log(f"preprocessing: {len(tasks)} shards of "
            f"{sum(task['sentences'] for task in tasks):,} sentences, "
            f"{'1 process' if pool is None else f'{workers} processes'}")
        shards = _run(_write_shard, tasks, pool, progress=_ShardProgress(tasks, log))
        manifest = _build_manifest(scans, shards, info=info, label_map=label_map, scheme=scheme,
                                   on_invalid=on_invalid, max_seq_length=max_seq_length,
                                   stride=stride, compression=COMPRESSION[compression])
        write_json_atomic(staging / MANIFEST_NAME, manifest)
        replace_directory(staging, output_dir)
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
                               for line in shard["pieceless_lines"])[:_PIECELESS_LINES_KEPT]
                more = ", ..." if counts["pieceless_sentences"] > len(lines) else ""
                where = ", ".join(f"{split['source']['path']}:{line}" for line in lines) + more
                log(f"note: {name}: the tokenizer's normaliser removes every character of "
                    f"{counts['pieceless_sentences']} sentence(s) (control, zero-width or U+FFFD "
                    f"characters?); they are kept, each character as the unknown token: {where}")
        log(f"wrote {sum(s['records'] for s in shards)} windows in {len(shards)} shards to "
            f"{output_dir} in {time.time() - started:.1f}s")
        return manifest
    finally:
        if pool is not None:  # on an error, the shards being written are waited for
            pool.shutdown(wait=True, cancel_futures=True)
        stack.close()  # after the pool: removes the staging directory unless renamed


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


def _build_manifest(scans: dict, shards: list[dict], *, info, label_map, scheme, on_invalid,
                    max_seq_length, stride, compression) -> dict:
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


def main(argv) -> None:
    from absl import flags

    del argv
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
    flags.DEFINE_integer("num_workers", None, "Worker processes (default: CPU count; 0: none).")
    flags.DEFINE_boolean("overwrite", False, "Replace a finished output at --output_dir.")
    flags.DEFINE_boolean("lowercase", False, "Make the tokenizer lowercase its input (a cased "
                         "corpus with an uncased vocabulary such as bert-base-chinese's).")
    flags.mark_flags_as_required(["output_dir", "tokenizer"])


def run() -> None:
    """Console entry point (`tagger-preprocess`)."""
    from absl import app

    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
