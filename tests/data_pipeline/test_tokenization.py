"""Tokenizer alignment on the real tokenizers: the `▁` trap, the cache, unknown characters."""

import unicodedata

import pytest

from data_pipeline import corpus, tokenization


def load(path, marker="auto", input_format="char"):
    return tokenization.prepare_tokenizer(path, word_boundary_marker=marker,
                                          input_format=input_format)


@pytest.fixture(scope="module")
def dev_sentences(people_daily_dir):
    return [s.tokens for s in corpus.read_sentences(people_daily_dir / "example.dev",
                                                    input_format="char")]


def test_each_character_is_one_piece_that_contains_it(e5_dir, dev_sentences):
    backend, info = load(e5_dir)
    assert info.word_boundary_marker == "dropped"
    assert info.prefix_ids == [0] and info.suffix_ids == [2] and info.pad_token_id == 1
    encoded = tokenization.TokenEncoder(backend, info.unk_token_id).encode(dev_sentences)
    normalizer = backend.normalizer
    chars = unknown = single = 0
    for tokens, (ids, first, pieceless) in zip(dev_sentences, encoded):
        assert pieceless == 0
        bounds = first + [len(ids)]
        for j, char in enumerate(tokens):
            chars += 1
            pieces = [backend.id_to_token(i) for i in ids[bounds[j]:bounds[j + 1]]]
            single += len(pieces) == 1
            if ids[bounds[j]] == info.unk_token_id:
                unknown += 1
                continue
            # The labelled (first) piece is never a bare `▁`, and the pieces spell the character
            # as the tokenizer's own normaliser writes it (`，` -> `,`; `℃` -> `°` `C`).
            assert pieces[0] != "▁"
            assert "".join(pieces) == normalizer.normalize_str(char), (char, pieces)
    assert single / chars > 0.995  # measured: all but the 368 `℃`
    assert chars == 109_870
    assert unknown / chars < 0.001  # measured: ~0.02%


def test_keeping_the_marker_reproduces_the_trap(e5_dir, dev_sentences):
    """With the XLM-R default, characters get a bare `▁` first piece and sequences ~double."""
    sample = dev_sentences[:300]
    kept, info_kept = load(e5_dir, marker="keep")
    dropped, info = load(e5_dir)
    assert info_kept.word_boundary_marker == "kept"
    assert info_kept.fingerprint != info.fingerprint
    with_marker = tokenization.TokenEncoder(kept, 3).encode(sample)
    without = tokenization.TokenEncoder(dropped, 3).encode(sample)
    pieces_with = sum(len(ids) for ids, _, _ in with_marker)
    pieces_without = sum(len(ids) for ids, _, _ in without)
    assert pieces_with / pieces_without > 1.7
    bare = sum(kept.id_to_token(ids[j]) == "▁" for ids, first, _ in with_marker for j in first)
    assert bare / pieces_without > 0.8


@pytest.mark.parametrize("model", ["multilingual-e5-small-zh", "bert-base-chinese-vocab"])
def test_cached_encoding_equals_sentence_encoding(shared_dir, people_daily_dir, model):
    sentences = [s.tokens for s in corpus.read_sentences(people_daily_dir / "example.test",
                                                         input_format="char")]
    backend, info = load(shared_dir / "models" / model)
    encoder = tokenization.TokenEncoder(backend, info.unk_token_id)
    assert encoder.context_free
    assert encoder.encode(sentences) == tokenization.pieces_per_token(
        backend, sentences, info.unk_token_id)


def test_words_with_several_pieces_and_pieceless_tokens(bert_chinese_dir):
    backend, info = load(bert_chinese_dir, input_format="conll")
    encoder = tokenization.TokenEncoder(backend, info.unk_token_id)
    # "\u200b" is removed by BERT's normaliser: it keeps a position, as the unknown token.
    (ids, first, pieceless), (empty_ids, _, empty_pieceless) = encoder.encode(
        [["中", "\u200b", "tokenization"], ["\u200b", "\u200b"]])
    assert pieceless == 1 and ids[first[1]] == info.unk_token_id
    assert first[:2] == [0, 1] and len(ids) - first[2] > 1  # a word of several pieces
    assert [backend.id_to_token(i) for i in ids[first[2] + 1:]][0].startswith("##")
    assert empty_ids == [] and empty_pieceless == 2
    assert unicodedata.category("\u200b") == "Cf"


def test_bad_tokenizer_name_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="cannot load tokenizer"):
        load(tmp_path)


def test_a_model_directory_without_tokenizer_files_says_which_are_expected(tmp_path, e5_dir):
    """(transformers' own answer is a TypeError: "stat: path should be string ... NoneType".)"""
    (tmp_path / "config.json").symlink_to(e5_dir / "config.json")
    (tmp_path / "tf_model.h5").write_bytes(b"x")  # weights: an encoder directory, but no tokenizer
    with pytest.raises(ValueError) as info:
        load(tmp_path)
    assert str(info.value) == (
        f"{tmp_path} holds no tokenizer files: expected tokenizer.json, or the vocabulary of a "
        f"tokenizer transformers can convert (vocab.txt, sentencepiece.bpe.model, spiece.model, "
        f"tokenizer.model, or vocab.json with merges.txt)")
    (tmp_path / "vocab.txt").symlink_to(e5_dir.parent / "bert-base-chinese-vocab" / "vocab.txt")
    assert tokenization.tokenizer_directory_problem(tmp_path) is None


def test_missing_tokenizer_directory_is_our_error_not_a_hub_name_error(tmp_path):
    for path in (tmp_path / "no" / "such" / "tokenizer", "../shared/models/nope",
                 tmp_path / "nope"):  # the last: one level below an existing directory
        with pytest.raises(ValueError, match=rf"^tokenizer directory '{path}' does not exist$"):
            load(path)
    a_file = tmp_path / "vocab.txt"
    a_file.write_text("[UNK]\n")
    with pytest.raises(ValueError, match="is a file; give the directory"):
        load(a_file)


# The fingerprints transformers 4.54.1 with tokenizers 0.21.4 gave the shipped tokenizers (char
# format; word-level, which keeps XLM-R's `▁`; word-level lowercased): manifests and exports
# record them, so a change would rebuild every cache and refuse every existing run's export.
SHIPPED_FINGERPRINTS = {
    ("bert-base-chinese-vocab", "char", False):
        "eb62d6e5bdcbe58cf1ad4d05ec074bf44f1ac427a0e461ce09404867754837ea",
    ("bert-base-chinese-vocab", "conll", True):
        "557bffe1916b37e1b60bcb1f9b28a29ad8cd0b5b5eb73653deebf9ce6a935110",
    ("multilingual-e5-small-zh", "char", False):
        "b37e448a94215cb54216109a5255e909e19fe24a569f5ceb38366e7391dc918c",
    ("multilingual-e5-small-zh", "conll", False):
        "e11423fba2a368b4169bd9e61d6f72ecefc3af388805c9dd06d1bcd7ad73139a",
    ("multilingual-e5-small-zh", "conll", True):
        "70b6a4b75915861fff7e2b4ebf57b1b3a8323b2c53a18b7ba99d1f35beadf0b0",
}


@pytest.mark.parametrize("name, input_format, lowercase", sorted(SHIPPED_FINGERPRINTS))
def test_shipped_tokenizers_keep_the_fingerprints_of_transformers_4(shared_dir, name,
                                                                    input_format, lowercase):
    """transformers 5 rebuilds XLM-R's pipeline (another normaliser, a WhitespaceSplit before
    the Metaspace); the tokenizer.json as written is what preprocessing has always used."""
    backend, info = tokenization.prepare_tokenizer(
        shared_dir / "models" / name, word_boundary_marker="auto", input_format=input_format,
        lowercase=lowercase)
    assert info.fingerprint == SHIPPED_FINGERPRINTS[name, input_format, lowercase]
    assert info.prefix_ids + info.suffix_ids == ([101, 102] if name.startswith("bert") else [0, 2])
