"""Tag conventions, in one place: the ignore id, tag parsing, IOB2 entities and transitions.

Every part of the framework reads tags through this module: the corpus reader (any scheme, before
conversion), preprocessing (label ids), the evaluation (seqeval-identical entities), serving and
the CRF's transition constraints (built here, handed to `models/` as boolean masks by the trainer,
since `models/` does not import `data_pipeline/`). Standard library and numpy only.

Label ids. A label map is a list of IOB2 tags, index = label id, `O` first (`build_label_map` in
`corpus.py`). Positions that must not count in losses and metrics get `IGNORE_ID` instead:

    tokens     [CLS]  北     京     欢     ##迎   [SEP]  [PAD]
    label_ids  -100   1      2      0     -100   -100   -100      (B-LOC=1, I-LOC=2, O=0)

Entities follow seqeval's strict IOB2 mode (`classification_report(..., mode="strict",
scheme=IOB2)`) exactly: an entity is a `B-T` followed by the longest run of `I-T` of the same
type; an `I-` that continues no such run starts nothing and is dropped:

    tags      O  I-PER  B-PER  I-PER  I-LOC  B-LOC  B-LOC  I-LOC
    entities     -      [PER 2..4)    -      [LOC 5..6)  [LOC 6..8)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

# The label id that losses and metrics skip: special tokens, non-first pieces, padding. The
# manifest records it ("ignore_id"); `models.TaggerConfig.ignore_id` defaults to the same value.
IGNORE_ID = -100
OUTSIDE_TAG = "O"


class Entity(NamedTuple):
    """One entity: `tokens[start:end]` of a sentence has type `type`."""

    type: str
    start: int
    end: int  # exclusive


def split_tag(tag: str) -> tuple[str, str]:
    """(prefix, type) of a corpus tag in any scheme, before conversion to IOB2.

    `B-PER` -> ("B", "PER"), `S_LOC` -> ("S", "LOC") (`-` or `_` after a one-letter prefix),
    `O` -> ("O", ""); anything else is all prefix: `PER` -> ("PER", "").
    """
    if tag == OUTSIDE_TAG:
        return OUTSIDE_TAG, ""
    if len(tag) > 2 and tag[1] in "-_":
        return tag[0], tag[2:]
    return tag, ""


def entity_type(tag: str) -> str:
    """The type of a `B-`/`I-` tag as seqeval reads it: "B-PER" -> "PER", "B" -> "_"."""
    return tag[1:].strip("-") or "_"


def split_iob2_tag(tag: str) -> tuple[str, str]:
    """(prefix, type) of an IOB2 tag the way seqeval's `Token` reads it: "B-PER" -> ("B", "PER").

    Raises:
      ValueError: the prefix is not B, I or O.
    """
    if not tag or tag[0] not in "BIO":
        raise ValueError(f"invalid IOB2 tag {tag!r}: expected 'O', 'B-<type>' or 'I-<type>'")
    return tag[0], entity_type(tag)


def extract_entities(tags: Sequence[str]) -> list[Entity]:
    """Extracts the entities of one sentence, exactly as seqeval's strict IOB2 mode does.

    Args:
      tags: IOB2 tag strings of one sentence, e.g. ["B-PER", "I-PER", "O"].

    Returns:
      Entities in order of their start, e.g. [Entity("PER", 0, 2)].

    Raises:
      ValueError: a tag whose prefix is not B, I or O.
    """
    split = [split_iob2_tag(tag) for tag in tags]
    entities = []
    i = 0
    while i < len(split):
        prefix, kind = split[i]
        if prefix != "B":
            i += 1
            continue
        end = i + 1
        while end < len(split) and split[end] == ("I", kind):
            end += 1
        entities.append(Entity(kind, i, end))
        i = end
    return entities


def entity_types(label_map: Sequence[str]) -> list[str]:
    """The entity types of an IOB2 label map, sorted: ["O", "B-LOC", "I-LOC"] -> ["LOC"]."""
    return sorted({split_iob2_tag(tag)[1] for tag in label_map if tag != OUTSIDE_TAG})


def check_iob2_label_map(label_map: Sequence[str]) -> None:
    """Raises ValueError unless every tag is 'O', 'B-<type>' or 'I-<type>'."""
    for tag in label_map:
        if tag != OUTSIDE_TAG and not (len(tag) > 2 and tag[:2] in ("B-", "I-")):
            raise ValueError(
                f"tag {tag!r} is not IOB2: expected 'O', 'B-<type>' or 'I-<type>' "
                f"(label_map={list(label_map)})")


def iob2_allowed_transitions(label_map: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Which tag transitions the IOB2 scheme allows, as the CRF's constraint masks.

    `I-X` may only follow `B-X` or `I-X` (the continuations `extract_entities` links), and a
    sentence may not start with `I-X`. Every other transition (into `O` or any `B-Y`) is allowed;
    a sentence may end in any tag. For ["O", "B-LOC", "I-LOC"]:

        allowed[from, to]   to: O  B-LOC  I-LOC        start_allowed   O  B-LOC  I-LOC
        from O                  1    1      0                          1    1      0
        from B-LOC              1    1      1
        from I-LOC              1    1      1

    Args:
      label_map: tag strings, index = tag id: 'O', 'B-T', 'I-T'.

    Returns:
      (allowed bool [num_tags, num_tags] indexed [from, to], start_allowed bool [num_tags]).

    Raises:
      ValueError: a tag is not 'O', 'B-<type>' or 'I-<type>'.
    """
    check_iob2_label_map(label_map)
    parsed = [split_iob2_tag(tag) for tag in label_map]
    num_tags = len(parsed)
    allowed = np.ones([num_tags, num_tags], dtype=bool)
    start_allowed = np.ones([num_tags], dtype=bool)
    for to, (to_prefix, to_type) in enumerate(parsed):
        if to_prefix != "I":
            continue
        start_allowed[to] = False
        for source, (source_prefix, source_type) in enumerate(parsed):
            allowed[source, to] = source_prefix in "BI" and source_type == to_type
    return allowed, start_allowed
