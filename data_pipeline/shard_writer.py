"""Pass 2 of preprocessing, in a worker process: one shard's range of sentences -> its file.

`write_shard` converts the tags to IOB2, tokenizes, cuts windows and writes the shard's
TFRecords; it returns the shard's statistics, which `manifest.build_manifest` adds up. A worker
process runs `init_worker` once (the tokenizer, from its JSON); `preprocess` calls it in its own
process when it runs the jobs itself. The pool is `workers.process_pool`, pass 1 is `scan`.
"""

from __future__ import annotations

import collections
import os
import unicodedata

import numpy as np

from data_pipeline import corpus, records, tensorflow_logs, tokenization, windows
from data_pipeline.manifest import file_sha256
from data_pipeline.workers import die_with_parent

_TOKENIZE_BATCH = 512
PIECELESS_LINES_KEPT = 5  # lines of sentences the normaliser empties, kept per shard for messages
_UNKNOWN_EXAMPLES_PER_SHARD = 50
_WORKER: dict = {}  # set by init_worker: "encoder", "info", "lowercases"


def init_worker(backend_json: str, info: dict, parent_pid: int | None = None) -> None:
    """Worker set-up: only the Rust tokenizer from its JSON (no transformers import).

    Args:
      backend_json: the `tokenizers.Tokenizer` as JSON (`to_str()`).
      info: `tokenization.TokenizerInfo.to_json()`.
      parent_pid: in a pool worker, the pid of the process that made the pool (the worker dies
        with it); None when called in that process itself.
    """
    from tokenizers import Tokenizer

    if parent_pid is not None:
        die_with_parent(parent_pid)
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # processes give the parallelism
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


def write_shard(task: dict) -> dict:
    """Pass 2 for one shard: convert, tokenize, window, write. Returns the shard's statistics.

    Needs `init_worker` to have run in this process.

    Args:
      task: the range ("split", "index", "source", "format", "offset", "line",
        "first_sentence_id", "sentences"), the shard file ("path"; written to "PATH.partial",
        then renamed) and the settings ("label_map", "max_seq_length", "stride", "scheme",
        "on_invalid", "compression").

    Returns:
      The shard's manifest entry ("file", "records", "bytes", "sha256"), with "split", "index",
      and what `manifest.build_manifest` adds up over a split's shards ("histogram", "entities",
      "repaired", "stats", "unknown_words") or preprocessing reports ("pieceless_lines").

    Raises:
      corpus.CorpusError: a tag that does not fit the scheme or the label map, or a file that
        changed since it was scanned.
    """
    tf = tensorflow_logs.import_tensorflow()  # its TFRecord writer; without the import's noise

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
                    raise corpus.CorpusError(
                        task["source"], line, f"tag {corpus.quoted(e.args[0])} is not in the "
                        f"label map {corpus.quoted_labels(task['label_map'])}") from None
                if not ids:
                    # The normaliser removes every character (U+FFFD, control or zero-width
                    # characters): each one becomes the unknown token, exactly as one such
                    # character inside a sentence does, so the sentence keeps its labels.
                    ids = [info.unk_token_id] * len(sentence.tokens)
                    first_piece = list(range(len(sentence.tokens)))
                    stats["pieceless_sentences"] += 1
                    if len(pieceless_lines) < PIECELESS_LINES_KEPT:
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
