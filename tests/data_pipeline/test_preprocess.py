"""Preprocessing end to end: manifest counts, exact round trips, bad input, atomic output."""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from data_pipeline import corpus, records
from data_pipeline.manifest import load_manifest
from data_pipeline.preprocess import preprocess
from data_pipeline.tags import IGNORE_ID
from data_pipeline.windows import merge_window_predictions

PD_LABELS = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def read_records(manifest, split):
    directory = manifest["directory"]
    for shard in manifest["splits"][split]["shards"]:
        path = os.path.join(directory, shard["file"])
        dataset = tf.data.TFRecordDataset(path, compression_type=manifest["compression"])
        for serialized in dataset.as_numpy_iterator():
            yield records.decode_example(serialized)


def source_tags(path):
    """An independent, minimal reading of a `char tag` file."""
    sentences, current = [], []
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line:
            if current:
                sentences.append(current)
                current = []
            continue
        current.append(line.split()[-1])
    if current:
        sentences.append(current)
    return sentences


def assert_no_finished_output(output_dir):
    """Nothing at or beside output_dir could be taken for finished output."""
    if output_dir.exists():
        assert not (output_dir / "manifest.json").exists()
        assert not list(output_dir.glob("*.tfrecord"))
    leftovers = [p.name for p in output_dir.parent.iterdir() if p.name.startswith(".")
                 and output_dir.name in p.name]
    assert leftovers == []


@pytest.mark.slow
def test_people_daily_dev_and_test_round_trip_exactly(tmp_path, e5_dir, people_daily_dir):
    """Every record decodes, through the label map and window merge, to the source tags."""
    output_dir = tmp_path / "pd"
    manifest = preprocess(
        {"dev": people_daily_dir / "example.dev", "test": people_daily_dir / "example.test"},
        output_dir, e5_dir, max_seq_length=128, stride=32, label_map=PD_LABELS,
        sentences_per_shard=1500, num_workers=2)
    manifest = load_manifest(output_dir)
    for split, sentences, longest in (("dev", 2318, 568), ("test", 4636, 577)):
        counts = manifest["splits"][split]["counts"]
        assert counts["sentences"] == sentences and counts["max_sentence_length"] == longest
        assert counts["sentences_split"] > 0  # the long weather reports needed windows
        assert counts["unknown_token_rate"] < 0.001
        gold = source_tags(people_daily_dir / f"example.{split}")
        windows = [(r["sentence_id"], r["window_start"], r["window_end"], r["sentence_length"],
                    r["char_index"], r["label_ids"]) for r in read_records(manifest, split)]
        assert len(windows) == counts["windows"]
        assert all(len(w[4]) <= 128 for w in windows)
        merged = merge_window_predictions(windows)
        assert sorted(merged) == list(range(sentences))
        decoded = [[PD_LABELS[i] for i in merged[sid]] for sid in range(sentences)]
        assert decoded == gold
        assert max(len(tags) for tags in decoded) == longest
        # Manifest bookkeeping agrees with the shards.
        shard_records = sum(s["records"] for s in manifest["splits"][split]["shards"])
        assert shard_records == counts["windows"] == sum(manifest["splits"][split]
                                                         ["length_histogram"])
    dev_counts = manifest["splits"]["dev"]["counts"]
    assert dev_counts["entities"] == {"LOC": 1951, "ORG": 984, "PER": 884}
    assert manifest["splits"]["test"]["counts"]["entities"] == {"LOC": 3658, "ORG": 2185,
                                                                "PER": 1864}


@pytest.mark.slow
def test_msra_train_entity_counts_equal_the_source(tmp_path, e5_dir, shared_dir):
    path = shared_dir / "data" / "msra" / "train.bmes"
    manifest = preprocess({"train": path}, tmp_path / "msra", e5_dir, num_workers=2)
    counts = manifest["splits"]["train"]["counts"]
    # Count the source independently: an entity starts at every B- or S- tag in BMES.
    tags = collections.Counter(tag for sentence in source_tags(path) for tag in sentence)
    starts = {kind: tags[f"B-{kind}"] + tags[f"S-{kind}"] for kind in ("LOC", "ORG", "PER")}
    assert counts["tag_counts"] == dict(tags)
    assert counts["source_entities"] == starts
    assert starts == {"LOC": 36_430, "ORG": 20_484, "PER": 16_566 + 958}
    assert tags["B-PER"] == 16_566 and tags["S-PER"] == 958
    # Six continuation tags open no entity (sentences cut mid-entity by the corpus packager);
    # repaired, each starts one.
    assert counts["repaired_tags"] == {"ORG": 3, "PER": 3}
    assert counts["entities"] == {k: starts[k] + counts["repaired_tags"].get(k, 0)
                                  for k in starts}
    assert counts["sentences"] == 50_289 and counts["characters"] == 2_153_462
    assert manifest["label_map"] == PD_LABELS
    assert len(manifest["splits"]["train"]["shards"]) == 7


def write(tmp_path, name, text=None, raw=None):
    path = tmp_path / name
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(text, encoding="utf-8")
    return path


GOOD_TRAIN = "中 B-LOC\n国 I-LOC\n人 O\n\n张 B-PER\n三 I-PER\n说 O\n\n"


@pytest.mark.parametrize("name,files,kwargs,line,message", [
    ("wrong column count", {"train": GOOD_TRAIN + "中 O x\n"}, {}, 9, "expected 2 columns"),
    ("unknown prefix", {"train": GOOD_TRAIN + "中 X-LOC\n"}, {}, 9, "does not fit the BIO"),
    ("continuation without entity", {"train": GOOD_TRAIN + "中 O\n国 I-PER\n"},
     {"on_invalid": "fail"}, 10, "continues an entity that is not open"),
    ("tag missing from train", {"train": GOOD_TRAIN, "dev": "中 O\n国 B-ORG\n"}, {}, 2,
     "entity type 'ORG' is not in the label map"),
    ("empty file", {"train": GOOD_TRAIN, "dev": "\n\n"}, {}, None, "empty file"),
    ("invalid utf-8", {"train": GOOD_TRAIN.encode() + b"\xe4\xb8 O\n"}, {}, 9, "invalid UTF-8"),
    ("multi-character token", {"train": GOOD_TRAIN + "北京 B-LOC\n"}, {}, 9,
     "token '北京' has 2 characters"),
    ("mixed line ends", {"train": GOOD_TRAIN + "中 O\r国 O\n"}, {}, 9, "mixes CR-only and LF"),
])
def test_bad_input_names_file_and_line_and_leaves_nothing(tmp_path, bert_chinese_dir, name,
                                                          files, kwargs, line, message):
    paths = {split: write(tmp_path, f"{split}.txt", **({"raw": content} if isinstance(
        content, bytes) else {"text": content})) for split, content in files.items()}
    output_dir = tmp_path / "out"
    bad = paths["dev"] if "dev" in paths else paths["train"]
    with pytest.raises(corpus.CorpusError) as info:
        preprocess(paths, output_dir, bert_chinese_dir, num_workers=0, **kwargs)
    where = f"{bad}:{line}: " if line else f"{bad}: "
    assert str(info.value).startswith(where), str(info.value)
    assert message in str(info.value)
    assert_no_finished_output(output_dir)


def test_failed_rerun_keeps_the_earlier_output(tmp_path, bert_chinese_dir):
    train = write(tmp_path, "train.txt", GOOD_TRAIN)
    output_dir = tmp_path / "out"
    first = preprocess({"train": train}, output_dir, bert_chinese_dir, num_workers=0)
    before = {p.name: p.read_bytes() for p in output_dir.iterdir()}
    with pytest.raises(FileExistsError, match=r"pass --overwrite to replace it"):
        preprocess({"train": train}, output_dir, bert_chinese_dir, num_workers=0)
    bad = write(tmp_path, "bad.txt", GOOD_TRAIN + "中 O x\n")
    with pytest.raises(corpus.CorpusError):
        preprocess({"train": bad}, output_dir, bert_chinese_dir, num_workers=0, overwrite=True)
    assert {p.name: p.read_bytes() for p in output_dir.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert first["splits"]["train"]["counts"]["entities"] == {"LOC": 1, "PER": 1}


def test_records_and_manifest_small_corpus(tmp_path, bert_chinese_dir):
    """Golden alignment for a tiny corpus, gzip shards, several shards, repairs counted."""
    train = write(tmp_path, "train.txt", GOOD_TRAIN + "李 O\n四 I-PER\n\n")
    manifest = preprocess({"train": train}, tmp_path / "out", bert_chinese_dir,
                          compression="gzip", sentences_per_shard=2, num_workers=0,
                          max_seq_length=8, stride=2)
    assert manifest["compression"] == "GZIP"
    split = manifest["splits"]["train"]
    assert [s["file"] for s in split["shards"]] == ["train-00000-of-00002.tfrecord",
                                                    "train-00001-of-00002.tfrecord"]
    assert split["counts"]["repaired_tags"] == {"PER": 1}
    assert split["counts"]["entities"] == {"LOC": 1, "PER": 2}
    loaded = load_manifest(tmp_path / "out")
    got = list(read_records(loaded, "train"))
    assert [r["sentence_id"] for r in got] == [0, 1, 2]
    labels = manifest["label_map"]
    assert labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    first = got[0]
    assert first["input_ids"].tolist() == [101, 704, 1744, 782, 102]  # [CLS] 中 国 人 [SEP]
    assert first["label_ids"].tolist() == [-100, 1, 2, 0, -100]
    assert first["char_index"].tolist() == [-1, 0, 1, 2, -1]
    assert got[2]["label_ids"].tolist() == [-100, 0, 3, -100]  # "李 O, 四 I-PER" -> O B-PER
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["splits"]["train"]["length_histogram"][5] == 2
    assert np.sum(on_disk["splits"]["train"]["length_histogram"]) == 3
    # The ignore id the labels above carry is recorded, and a manifest with another is refused.
    assert on_disk["ignore_id"] == IGNORE_ID == -100
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(dict(on_disk, ignore_id=-1)))
    with pytest.raises(ValueError, match="ignore_id -1 is not this version's -100"):
        load_manifest(tmp_path / "out")


def test_cli_reports_errors_without_traceback(tmp_path, bert_chinese_dir):
    bad = write(tmp_path, "train.txt", GOOD_TRAIN + "中 X-LOC\n")
    result = subprocess.run(
        [sys.executable, "-m", "data_pipeline.preprocess", f"--train={bad}",
         f"--tokenizer={bert_chinese_dir}", f"--output_dir={tmp_path / 'out'}", "--num_workers=0"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"error: {bad}:9: tag 'X-LOC'" in result.stderr
    assert "Traceback" not in result.stderr
    assert_no_finished_output(tmp_path / "out")
    result = subprocess.run(
        [sys.executable, "-m", "data_pipeline.preprocess", f"--train={tmp_path}",
         f"--tokenizer={bert_chinese_dir}", f"--output_dir={tmp_path / 'out'}", "--num_workers=0"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: train: input file {tmp_path} is a directory, expected a file" in result.stderr


def records_and_counts(manifest):
    """What a split turned into, independent of where its source file lies."""
    out = {}
    for split, entry in manifest["splits"].items():
        counts = dict(entry["counts"])
        out[split] = (counts, [{k: v.tolist() if hasattr(v, "tolist") else v
                                for k, v in r.items()} for r in read_records(manifest, split)])
    return out


def test_bom_and_cr_only_files_give_the_same_shards(tmp_path, bert_chinese_dir):
    dev_text = "新 O\n华 O\n社 O\n北 B-LOC\n京 I-LOC\n电 O\n\n张 B-PER\n"
    plain = {"train": write(tmp_path, "train.txt", GOOD_TRAIN),
             "dev": write(tmp_path, "dev.txt", dev_text)}
    odd = {"train": write(tmp_path, "train_bom.txt", raw=b"\xef\xbb\xbf" + GOOD_TRAIN.encode()),
           "dev": write(tmp_path, "dev_cr.txt", raw=b"\xef\xbb\xbf" + dev_text.replace(
               "\n", "\r").encode())}
    expected = preprocess(plain, tmp_path / "plain", bert_chinese_dir, num_workers=0)
    messages = []
    got = preprocess(odd, tmp_path / "odd", bert_chinese_dir, num_workers=0, log=messages.append)
    assert {s["source"]["format"] for s in got["splits"].values()} == {"char"}
    assert records_and_counts(load_manifest(tmp_path / "odd")) == \
        records_and_counts(load_manifest(tmp_path / "plain"))
    assert expected["label_map"] == got["label_map"]
    notes = [m for m in messages if m.startswith("note: ")]
    assert f"note: {odd['train']} (train) starts with a UTF-8 byte order mark (BOM); it is " \
           f"ignored" in notes
    assert f"note: {odd['dev']} (dev) has CR-only line ends (old Mac OS); read as such" in notes


def test_sentence_that_normalises_away_is_kept_as_unknown_tokens(tmp_path, bert_chinese_dir):
    """Ten U+FFFD (BERT's normaliser drops them) tagged O: a dev sentence, kept and counted."""
    dev = write(tmp_path, "dev.txt", "中 O\n国 O\n\n" + "\ufffd O\n" * 10 + "\n人 O\n\ufffd O\n")
    messages = []
    manifest = preprocess({"train": write(tmp_path, "train.txt", GOOD_TRAIN), "dev": dev},
                          tmp_path / "out", bert_chinese_dir, num_workers=0,
                          log=messages.append)
    counts = manifest["splits"]["dev"]["counts"]
    assert counts["sentences"] == 3 and counts["windows"] == 3
    assert counts["pieceless_sentences"] == 1
    assert counts["pieceless_tokens"] == 11  # ten in the sentence, one beside "人"
    unk = manifest["tokenizer"]["unk_token_id"]
    records = sorted(read_records(load_manifest(tmp_path / "out"), "dev"),
                     key=lambda r: r["sentence_id"])
    lost = records[1]
    assert lost["input_ids"].tolist() == [101] + [unk] * 10 + [102]
    assert lost["label_ids"].tolist() == [-100] + [0] * 10 + [-100]
    assert lost["char_index"].tolist() == [-1] + list(range(10)) + [-1]
    assert lost["sentence_length"] == 10
    assert records[2]["input_ids"].tolist() == [101, 782, unk, 102]  # the case that always worked
    assert counts["unknown_tokens"] == 11
    [note] = [m for m in messages if "normaliser removes every character" in m]
    assert f"{dev}:4" in note and note.startswith("note: dev: ")


def test_a_directory_as_input_is_named_as_such(tmp_path, bert_chinese_dir):
    with pytest.raises(IsADirectoryError, match=rf"train: input file {tmp_path} is a directory, "
                                                rf"expected a file"):
        preprocess({"train": tmp_path}, tmp_path / "out", bert_chinese_dir, num_workers=0)


def test_multi_character_token_in_char_file_is_an_error(tmp_path, bert_chinese_dir):
    train = write(tmp_path, "train.txt", GOOD_TRAIN + "北京 B-LOC\n")
    with pytest.raises(corpus.CorpusError,
                       match=rf"^{train}:9: token '北京' has 2 characters"):
        preprocess({"train": train}, tmp_path / "out", bert_chinese_dir, num_workers=0)
    assert_no_finished_output(tmp_path / "out")
    manifest = preprocess({"train": train}, tmp_path / "words", bert_chinese_dir,
                          input_format="conll", num_workers=0)
    assert manifest["splits"]["train"]["counts"]["sentences"] == 3


def test_what_a_killed_run_left_is_cleaned_at_the_next_run(tmp_path, bert_chinese_dir):
    train = write(tmp_path, "train.txt", GOOD_TRAIN)
    output_dir = tmp_path / "cache" / "out"
    first = preprocess({"train": train}, output_dir, bert_chinese_dir, num_workers=0)
    # A kill between the two renames of a replacement: the output is aside, the new one unfinished.
    os.rename(output_dir, tmp_path / "cache" / ".out.old-0123abcd")
    (tmp_path / "cache" / ".out.tmp-89abcdef").mkdir()
    (tmp_path / "cache" / ".out.tmp-89abcdef" / "train-00000-of-00001.tfrecord.partial"
     ).write_bytes(b"x" * 100)
    (tmp_path / "cache" / ".other.tmp-89abcdef").mkdir()  # not this target's: kept
    with pytest.raises(FileExistsError, match="already holds a finished"):
        preprocess({"train": train}, output_dir, bert_chinese_dir, num_workers=0)
    assert load_manifest(output_dir)["splits"] == load_manifest_splits(first)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".other.tmp-89abcdef",
                                                                      "out"]


def load_manifest_splits(manifest):
    return json.loads(json.dumps(manifest["splits"]))


def test_progress_line_per_shard(tmp_path, bert_chinese_dir):
    """Writing shards says what it will do, then one line per finished shard up to 100%."""
    train = write(tmp_path, "train.txt", GOOD_TRAIN + "李 O\n四 I-PER\n\n")
    messages = []
    preprocess({"train": train}, tmp_path / "out", bert_chinese_dir, sentences_per_shard=2,
               num_workers=0, max_seq_length=8, stride=2, log=messages.append)
    progress = [m for m in messages if m.startswith("preprocessing: ")]
    assert progress[0] == "preprocessing: 2 shards of 3 sentences, 1 process"
    assert [m.split(" in ")[0] for m in progress[1:]] == [
        "preprocessing: 1/2 shards, 2/3 sentences (67%)",
        "preprocessing: 2/2 shards, 3/3 sentences (100%)"]
    assert "ETA" in progress[1] and "ETA" not in progress[2]
