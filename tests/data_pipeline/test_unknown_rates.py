"""Unknown-token rates per piece, per word and per entity word; the warning and --lowercase.

The bert-base-chinese vocabulary has lowercase Latin letters and some English word pieces but no
uppercase letters, and no “ ”; its normaliser drops U+FFFD. So, as checked below, "Anna" and
"London" are one [UNK] piece each, "rejects" is three known pieces (re ##ject ##s), and the
expected counts of the hand-made samples can be worked out on paper.
"""

import json
import subprocess
import sys

import pytest

from data_pipeline import tokenization
from data_pipeline.manifest import load_manifest
from data_pipeline.preprocess import preprocess
from tests.trainer_testing import REPO

# 10 words, 12 pieces ("rejects" has 3); unknown: Anna, London (1 piece each; both in entities).
# Entity words: Anna, bank, of, china, London.
HAND_MADE_CONLL = """-DOCSTART- -X- -X- O

Anna NNP B-NP B-PER
rejects VBZ B-VP O
the DT B-NP O
bank NN I-NP B-ORG
of IN B-PP I-ORG
china NNP B-NP I-ORG
. . O O

call VB B-VP O
London NNP B-NP B-LOC
now RB B-ADVP O
"""

# 9 characters, 9 pieces (U+FFFD, which the normaliser drops, becomes one [UNK]); unknown: “ ”
# and U+FFFD. Entity characters: 北 京 张 U+FFFD.
HAND_MADE_CHARS = "“ O\n北 B-LOC\n京 I-LOC\n” O\n欢 O\n迎 O\n\n张 B-PER\n\ufffd I-PER\n说 O\n"

# Cased English news, CoNLL-2003 style (written for this test): names are capitalised.
CASED_ENGLISH = """-DOCSTART- -X- -X- O

Maria NNP B-NP B-PER
Keller NNP I-NP I-PER
of IN B-PP O
Siemens NNP B-NP B-ORG
said VBD B-VP O
on IN B-PP O
Tuesday NNP B-NP O
that IN B-SBAR O
the DT B-NP O
plant NN I-NP O
in IN B-PP O
Munich NNP B-NP B-LOC
will MD B-VP O
close VB I-VP O
. . O O

The DT B-NP O
European NNP I-NP B-ORG
Commission NNP I-NP I-ORG
met VBD B-VP O
in IN B-PP O
Brussels NNP B-NP B-LOC
with IN B-PP O
officials NNS B-NP O
from IN B-PP O
Poland NNP B-NP B-LOC
and CC O O
Spain NNP B-NP B-LOC
. . O O

Prices NNS B-NP O
rose VBD B-VP O
after IN B-PP O
John NNP B-NP B-PER
Smith NNP I-NP I-PER
spoke VBD B-VP O
to TO B-PP O
Reuters NNP B-NP B-ORG
. . O O
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def pieces(bert_chinese_dir, word):
    backend, _ = tokenization.prepare_tokenizer(bert_chinese_dir, word_boundary_marker="auto",
                                                input_format="conll")
    return backend.encode([word], is_pretokenized=True, add_special_tokens=False).tokens


def test_unknown_tokens_are_the_tokens_owning_an_unknown_piece():
    assert tokenization.unknown_tokens([7, 100, 9, 100], [0, 1, 3], 100) == [1, 2]
    assert tokenization.unknown_tokens([7, 8, 9], [0, 1, 2], 100) == []
    assert tokenization.unknown_tokens([100, 100, 5], [0, 2], 100) == [0]  # one token, 2 pieces


def test_rates_per_piece_word_and_entity_word_on_a_hand_made_conll_sample(tmp_path,
                                                                          bert_chinese_dir):
    assert pieces(bert_chinese_dir, "Anna") == ["[UNK]"]
    assert pieces(bert_chinese_dir, "rejects") == ["re", "##ject", "##s"]
    assert [len(pieces(bert_chinese_dir, w)) for w in
            ("the", "bank", "of", "china", ".", "call", "now")] == [1] * 7
    messages, warnings = [], []
    manifest = preprocess({"train": write(tmp_path, "train.txt", HAND_MADE_CONLL)},
                          tmp_path / "out", bert_chinese_dir, num_workers=0,
                          log=messages.append, warn=warnings.append)
    split = load_manifest(tmp_path / "out")["splits"]["train"]
    assert split == manifest["splits"]["train"]
    counts = split["counts"]
    assert {k: counts[k] for k in (
        "content_pieces", "unknown_tokens", "unknown_token_rate", "words", "unknown_words",
        "unknown_word_rate", "entity_words", "unknown_entity_words", "unknown_entity_word_rate",
        "unknown_words_known_lowercased", "unknown_words_punctuation")} == {
        "content_pieces": 12, "unknown_tokens": 2, "unknown_token_rate": 2 / 12,
        "words": 10, "unknown_words": 2, "unknown_word_rate": 0.2,
        "entity_words": 5, "unknown_entity_words": 2, "unknown_entity_word_rate": 0.4,
        "unknown_words_known_lowercased": 2, "unknown_words_punctuation": 0}
    assert sorted(split["unknown_word_examples"]) == [["Anna", 1], ["London", 1]]
    assert ("train: 2 sentences, 2 windows (0 sentences split), 16 tokens, unknown: 16.6667% "
            "of pieces, 20.0000% of words, 40.0000% of entity words; ") in "\n".join(messages)
    [warning] = warnings
    assert warning.startswith("WARNING: train: 20.00% of words (2 of 10) and 40.00% of entity "
                              "words (2 of 5) have a piece that is the tokenizer's unknown "
                              "token [UNK] (16.67% of pieces)")
    assert "Cause: 100% of them are in the vocabulary once lowercased" in warning
    assert "--lowercase" in warning

    # Lowercasing in the tokenizer: nothing unknown, no warning, and the manifest says so.
    warnings.clear()
    lowered = preprocess({"train": write(tmp_path, "train.txt", HAND_MADE_CONLL)},
                         tmp_path / "lower", bert_chinese_dir, num_workers=0, lowercase=True,
                         warn=warnings.append)
    assert warnings == []
    counts = lowered["splits"]["train"]["counts"]
    assert (counts["unknown_tokens"], counts["unknown_words"], counts["unknown_entity_words"]) \
        == (0, 0, 0)
    assert lowered["tokenizer"]["lowercase"] is True
    assert manifest["tokenizer"]["lowercase"] is False
    assert lowered["tokenizer"]["fingerprint"] != manifest["tokenizer"]["fingerprint"]


def test_rates_and_punctuation_cause_on_a_hand_made_character_sample(tmp_path, bert_chinese_dir):
    warnings = []
    manifest = preprocess({"train": write(tmp_path, "train.txt", HAND_MADE_CHARS)},
                          tmp_path / "out", bert_chinese_dir, num_workers=0,
                          warn=warnings.append)
    split = manifest["splits"]["train"]
    counts = split["counts"]
    assert {k: counts[k] for k in (
        "content_pieces", "unknown_tokens", "words", "unknown_words", "unknown_word_rate",
        "entity_words", "unknown_entity_words", "unknown_entity_word_rate",
        "unknown_words_known_lowercased", "unknown_words_punctuation", "pieceless_tokens")} == {
        "content_pieces": 9, "unknown_tokens": 3, "words": 9, "unknown_words": 3,
        "unknown_word_rate": 3 / 9, "entity_words": 4, "unknown_entity_words": 1,
        "unknown_entity_word_rate": 0.25, "unknown_words_known_lowercased": 0,
        "unknown_words_punctuation": 2, "pieceless_tokens": 1}
    assert sorted(split["unknown_word_examples"]) == [["“", 1], ["”", 1], ["\ufffd", 1]]
    [warning] = warnings
    assert warning.startswith("WARNING: train: 33.33% of characters (3 of 9) and 25.00% of "
                              "entity characters (1 of 4)")
    assert "Cause: 67% of them are punctuation the vocabulary lacks" in warning


def test_lowercase_changes_only_the_normaliser_and_is_idempotent(bert_chinese_dir, e5_dir):
    plain, plain_info = tokenization.prepare_tokenizer(
        bert_chinese_dir, word_boundary_marker="auto", input_format="conll")
    lower, info = tokenization.prepare_tokenizer(
        bert_chinese_dir, word_boundary_marker="auto", input_format="conll", lowercase=True)
    # A BERT normaliser is set as do_lower_case=True would set it.
    normalizer = json.loads(lower.to_str())["normalizer"]
    assert normalizer == dict(json.loads(plain.to_str())["normalizer"], lowercase=True)
    assert info.lowercase and not plain_info.lowercase
    assert tokenization.tokenizer_lowercases(lower) and not tokenization.tokenizer_lowercases(plain)
    assert lower.encode(["Paris"], is_pretokenized=True).tokens == ["[CLS]", "paris", "[SEP]"]
    # The SentencePiece (e5) normaliser gets a Lowercase step after its own.
    e5, e5_info = tokenization.prepare_tokenizer(
        e5_dir, word_boundary_marker="auto", input_format="char", lowercase=True)
    steps = json.loads(e5.to_str())["normalizer"]
    assert steps["type"] == "Sequence" and steps["normalizers"][-1] == {"type": "Lowercase"}
    assert e5.encode(["Ａ"], is_pretokenized=True, add_special_tokens=False).tokens == \
        e5.encode(["a"], is_pretokenized=True, add_special_tokens=False).tokens
    # Without lowercase nothing changes: the fingerprint of earlier manifests still holds.
    assert json.loads(plain.to_str())["normalizer"]["lowercase"] is False


def test_lowercase_leaves_a_tokenizer_that_lowercases_already_as_it_is(tmp_path,
                                                                       bert_chinese_dir):
    import shutil

    uncased = tmp_path / "uncased"
    shutil.copytree(bert_chinese_dir, uncased)
    (uncased / "tokenizer_config.json").chmod(0o644)
    (uncased / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    asked, asked_info = tokenization.prepare_tokenizer(
        uncased, word_boundary_marker="auto", input_format="conll", lowercase=True)
    _, own_info = tokenization.prepare_tokenizer(uncased, word_boundary_marker="auto",
                                                 input_format="conll")
    assert tokenization.tokenizer_lowercases(asked)  # do_lower_case is honoured by itself
    assert not asked_info.lowercase
    assert asked_info.fingerprint == own_info.fingerprint
    # Preparing twice gives the same tokenizer (what an export re-preparing it relies on).
    _, again = tokenization.prepare_tokenizer(
        bert_chinese_dir, word_boundary_marker="auto", input_format="conll", lowercase=True)
    _, first = tokenization.prepare_tokenizer(
        bert_chinese_dir, word_boundary_marker="auto", input_format="conll", lowercase=True)
    assert again.fingerprint == first.fingerprint


def test_cli_warns_on_a_cased_english_sample_with_the_uncased_chinese_vocab(tmp_path,
                                                                            bert_chinese_dir):
    train = write(tmp_path, "train.txt", CASED_ENGLISH)

    def run(*extra):
        return subprocess.run(
            [sys.executable, "-m", "data_pipeline.preprocess", f"--train={train}",
             f"--tokenizer={bert_chinese_dir}", f"--output_dir={tmp_path / 'out'}",
             "--num_workers=0", "--overwrite", *extra],
            cwd=REPO, capture_output=True, text=True, timeout=300, check=True)

    cased = run()
    [warning] = [line for line in cased.stderr.splitlines() if line.startswith("WARNING: train")]
    # 15 of the 37 words are capitalised (every one unknown), and all 12 entity words are.
    assert warning.startswith("WARNING: train: 40.54% of words (15 of 37) and 100.00% of "
                              "entity words (12 of 12)")
    assert "Cause: 100% of them are in the vocabulary once lowercased: the corpus is cased" \
        in warning
    assert "Preprocess with --lowercase" in warning
    counts = load_manifest(tmp_path / "out")["splits"]["train"]["counts"]
    assert counts["unknown_word_rate"] == pytest.approx(15 / 37)
    assert counts["unknown_entity_word_rate"] == 1.0

    lowered = run("--lowercase")
    assert "WARNING: train" not in lowered.stderr
    assert "0.0000% of words, 0.0000% of entity words" in lowered.stdout
    assert load_manifest(tmp_path / "out")["tokenizer"]["lowercase"] is True
