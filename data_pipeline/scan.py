"""Pass 1 of preprocessing: read every file once, and decide the tag scheme and label map.

Every input error that can be found without tokenizing is found here, before anything is written:
UTF-8, column counts, a tag that does not fit the scheme, an entity type the label map lacks.
A file is scanned in ranges of sentences (the later shards' ranges) in parallel; `scan_range` is
the job a worker runs for one range.
"""

from __future__ import annotations

import collections
import os

from data_pipeline import corpus
from data_pipeline.tags import split_tag
from data_pipeline.workers import run_jobs


def scan_range(job: tuple[str, str, str, int, int, int]) -> dict:
    """Pass 1 over one range of sentences: validation and the tags present (runs in a worker).

    Args:
      job: (split, path, input_format, byte offset of the range, its line number, sentences).

    Returns:
      {"split", "sentences", "characters", "max_sentence_length", "tag_counts": Counter of the
       tags as written, "tag_first_line": {tag: the first line it is on}}.

    Raises:
      corpus.CorpusError: bad input, or not as many sentences as the range should hold.
    """
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


def scan_splits(splits: dict[str, str], input_format: str, every: int, pool) -> dict[str, dict]:
    """Pass 1 over all files: offsets and sha256 here, then validation in parallel ranges.

    Args:
      splits: {split: corpus file}.
      input_format: "char" or "conll".
      every: sentences per range (per shard).
      pool: the executor `workers.process_pool` yields, or None to scan in this process.

    Returns:
      {split: {"path", "format", "sha256", "bytes", "offsets": [(byte offset, line)] of the
       ranges, "sentences", "characters", "max_sentence_length", "tag_counts",
       "tag_first_line"}}.

    Raises:
      corpus.CorpusError: an empty file, or bad input (from `scan_range`).
    """
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
    for part in run_jobs(scan_range, jobs, pool):
        scan = scans[part["split"]]
        scan["characters"] += part["characters"]
        scan["max_sentence_length"] = max(scan["max_sentence_length"],
                                          part["max_sentence_length"])
        scan["tag_counts"].update(part["tag_counts"])
        for tag, line in part["tag_first_line"].items():
            scan["tag_first_line"][tag] = min(line, scan["tag_first_line"].get(tag, line))
    return scans


def choose_tag_scheme(scans: dict[str, dict], tag_scheme: str) -> str:
    """The files' tag scheme: `tag_scheme`, or detected from all their tags for "auto".

    Raises:
      corpus.CorpusError: a tag that does not fit the scheme, naming the first line it is on.
    """
    scheme = tag_scheme
    if scheme == "auto":
        scheme = corpus.detect_scheme({split_tag(tag)[0] for scan in scans.values()
                                       for tag in scan["tag_counts"]})
    allowed = corpus.SCHEME_PREFIXES[scheme] | {"O"}
    for scan in scans.values():
        for tag, line in sorted(scan["tag_first_line"].items(), key=lambda item: item[1]):
            prefix, kind = split_tag(tag)
            if prefix not in allowed or (prefix != "O" and not kind):
                expected = ", ".join(p + "-TYPE" for p in sorted(allowed - {"O"}))
                raise corpus.CorpusError(
                    scan["path"], line, f"tag {corpus.quoted(tag)} does not fit the "
                    f"{scheme.upper()} scheme (expected O or one of {expected})")
    return scheme


def choose_label_map(scans: dict[str, dict], label_map: list[str] | None) -> list[str]:
    """`label_map`, or the one built from the train split's entity types when it is None.

    Raises:
      ValueError: a given label map that does not start with "O".
      corpus.CorpusError: a tag of any split whose entity type the label map lacks.
    """
    if label_map is None:
        label_map = corpus.build_label_map(
            {split_tag(tag)[1] for tag in scans["train"]["tag_counts"]} - {""})
    elif not label_map or label_map[0] != "O":
        raise ValueError(f"label_map must start with 'O', got {label_map}")
    known_types = {split_tag(label)[1] for label in label_map} - {""}
    for scan in scans.values():
        for tag, line in sorted(scan["tag_first_line"].items(), key=lambda item: item[1]):
            kind = split_tag(tag)[1]
            if kind and kind not in known_types:
                raise corpus.CorpusError(
                    scan["path"], line, f"tag {corpus.quoted(tag)}: entity type "
                    f"{corpus.quoted(kind)} is not in the label map built from the train split "
                    f"({corpus.quoted_labels(label_map)})")
    return label_map
