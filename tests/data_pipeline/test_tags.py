"""data_pipeline.tags: the ignore id, tag parsing, IOB2 entities and the CRF's transition masks."""

import itertools
import random

import pytest

from data_pipeline import tags

LABEL_MAP = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_the_ignore_id_is_the_one_the_model_and_the_records_use():
    import dataclasses

    from data_pipeline import records
    from models.config import TaggerConfig

    assert tags.IGNORE_ID == -100
    assert records.IGNORE_ID is tags.IGNORE_ID  # the varint table of the record writer
    # models/ cannot import data_pipeline/: its default must be the same number.
    defaults = {field.name: field.default for field in dataclasses.fields(TaggerConfig)}
    assert defaults["ignore_id"] == tags.IGNORE_ID


@pytest.mark.parametrize("tag, expected", [
    ("O", ("O", "")), ("B-PER", ("B", "PER")), ("S_LOC", ("S", "LOC")), ("E-ORG", ("E", "ORG")),
    ("I-A-B", ("I", "A-B")), ("PER", ("PER", "")), ("B-", ("B-", "")), ("B", ("B", "")),
])
def test_split_tag_reads_every_corpus_scheme(tag, expected):
    assert tags.split_tag(tag) == expected


def test_iob2_tags_are_read_as_seqeval_reads_them():
    assert tags.split_iob2_tag("B-PER") == ("B", "PER")
    assert tags.split_iob2_tag("I-PER") == ("I", "PER")
    assert tags.split_iob2_tag("B") == ("B", "_")  # seqeval's type of a bare prefix
    assert tags.entity_type("I--X-") == "X"
    for bad in ("E-PER", "S-LOC", "", "PER"):
        with pytest.raises(ValueError, match="invalid IOB2 tag"):
            tags.split_iob2_tag(bad)


def test_extract_entities_golden():
    sequence = ["O", "I-PER", "B-PER", "I-PER", "I-LOC", "B-LOC", "B-LOC", "I-LOC"]
    assert tags.extract_entities(sequence) == [
        ("PER", 2, 4), ("LOC", 5, 6), ("LOC", 6, 8)]
    assert tags.extract_entities(["B-PER", "I-LOC", "I-LOC", "B-ORG"]) == [
        ("PER", 0, 1), ("ORG", 3, 4)]
    assert tags.extract_entities([]) == []
    [entity] = tags.extract_entities(["B-LOC", "I-LOC"])
    assert (entity.type, entity.start, entity.end) == ("LOC", 0, 2)
    with pytest.raises(ValueError, match="E-PER"):
        tags.extract_entities(["O", "E-PER"])


def test_entity_types_of_a_label_map():
    assert tags.entity_types(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]) == ["LOC", "PER"]
    assert tags.entity_types(["O"]) == []


def test_iob2_allowed_transitions_table():
    allowed, start_allowed = tags.iob2_allowed_transitions(LABEL_MAP)
    index = {tag: i for i, tag in enumerate(LABEL_MAP)}
    assert not allowed[index["O"], index["I-LOC"]]
    assert not allowed[index["B-PER"], index["I-LOC"]]
    assert not allowed[index["I-PER"], index["I-LOC"]]
    assert allowed[index["B-LOC"], index["I-LOC"]]
    assert allowed[index["I-LOC"], index["I-LOC"]]
    assert allowed[index["I-LOC"], index["B-PER"]] and allowed[index["I-LOC"], index["O"]]
    assert list(start_allowed) == [True, True, False, True, False]
    assert allowed.sum() == 25 - 6
    assert allowed.shape == (5, 5) and allowed.dtype == bool
    with pytest.raises(ValueError, match="not IOB2"):
        tags.iob2_allowed_transitions(["O", "B-LOC", "E-LOC"])
    with pytest.raises(ValueError, match="not IOB2"):
        tags.iob2_allowed_transitions(["O", "B-X", "X"])


def test_allowed_paths_are_exactly_those_whose_every_tag_is_in_an_entity():
    """A path the CRF may decode drops no `I-` tag in `extract_entities`, and only such paths."""
    allowed, start_allowed = tags.iob2_allowed_transitions(LABEL_MAP)
    for path in itertools.product(range(len(LABEL_MAP)), repeat=4):
        ok = start_allowed[path[0]] and all(allowed[a, b] for a, b in zip(path, path[1:]))
        sequence = [LABEL_MAP[i] for i in path]
        covered = sum(e.end - e.start for e in tags.extract_entities(sequence))
        assert ok == (covered == sum(tag != "O" for tag in sequence)), sequence


def test_entities_agree_with_seqeval_on_random_sequences():
    from seqeval.scheme import IOB2, Entities

    random.seed(0)
    for _ in range(300):
        sequence = random.choices(LABEL_MAP + ["I-ORG"], k=random.randint(0, 10))
        expected = sorted((e.tag, e.start, e.end) for e in Entities([sequence], IOB2).entities[0])
        assert sorted(tags.extract_entities(sequence)) == expected, sequence
