"""The text-in signature `tag_text` of word-level models (input_format=conll) with a WordPiece
tokenizer. Inside the graph (tensorflow-text and the tables of `trainer.word_tokenizer`) every
word gets exactly the pieces preprocessing gives it; the signature returns exactly
`serving.predict`'s entities on an English CoNLL sample, also in a process that cannot import
this project; tokenizers without an exact in-graph equivalent (byte-level BPE, SentencePiece)
export without it and say why.

The sample, tests/fixtures/english_ner.conll, was written for these tests (PER, LOC, ORG, MISC;
accents, casing, numbers, punctuation, URLs, Greek, Cyrillic and CJK words). The tokenizer is
bert-base-chinese's WordPiece with --lowercase, as a user would train on English text with it:
its normaliser lowercases, strips accents, drops control characters and pads CJK characters.
"""

import json
import random

import numpy as np
import pytest
import tensorflow as tf

import serving
from data_pipeline import tokenization
from data_pipeline.corpus import read_sentences
from data_pipeline.tags import iob2_allowed_transitions
from tests import trainer_testing as tt
from trainer import export, run_reader
from trainer.text_signature import text_signature_unavailable
from trainer.text_signature_words import word_pieces
from trainer.word_tokenizer import fast_wordpiece_model, wordpiece_tables

LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
SAMPLE = tt.REPO / "tests" / "fixtures" / "english_ner.conll"
MAX_SEQ_LENGTH, STRIDE = 16, 4  # budget 14 pieces: most sample lines need several windows
# Words for each way the tokenizer has: added tokens (alone, glued, after NBSP), control,
# zero-width and private-use characters (dropped), NUL, CJK (padded), full-width and ligature
# forms (not folded to ASCII), accents and capitals (stripped, lowercased), a word of 101
# characters (the unknown token), and 100 (not).
SPECIAL_WORDS = ["[SEP]", "x[SEP]y", "[CLS][MASK]", "a\u00a0[UNK]", "\x01\x02", "\u200b",
                 "\ue000", "\x00NUL", "a\x00b", "中国人", "Ｈｅｌｌｏ", "ﬁne", "İstanbul", "ǅemal",
                 "ÀÉÎÕÜ", "Straße", "e\u0301t\u0301e", "Ωmega", "don't", "U.S.", "$4.5bn",
                 "12,345.67", "--", "\u3000", "a\u3000b", "😀", "a" * 101, "a" * 100,
                 "[SEP" + "]" * 3, "\ufffd", "Ⅻ"]
EXTRA_LINES = ["", " \t ", "\x01\x02 \u200b", " ".join(SPECIAL_WORDS[:16]),
               " ".join(SPECIAL_WORDS[16:]), "  Leading\tand trailing  ",
               b"caf\xc3 invalid \xff bytes \xe4\xb8"]


def sample_lines():
    """The sample's sentences as raw lines, words joined by spaces."""
    return [" ".join(s.tokens) for s in read_sentences(SAMPLE, input_format="conll")]


@pytest.fixture(scope="module")
def wordpiece(bert_chinese_dir):
    """(backend, info): bert-base-chinese's WordPiece as preprocessing prepares it for a
    word-level corpus with --lowercase."""
    return tokenization.prepare_tokenizer(bert_chinese_dir, word_boundary_marker="auto",
                                          input_format="conll", lowercase=True)


def tokenizers_pieces(backend, words):
    """What preprocessing's tokenizer gives each word alone (TokenEncoder's call)."""
    return [e.ids for e in backend.encode_batch([[w] for w in words], is_pretokenized=True,
                                                add_special_tokens=False)]


def graph_pieces(backend, words):
    tables = wordpiece_tables(backend.to_str())
    buffer = tf.constant(np.frombuffer(fast_wordpiece_model(tables), np.uint8))
    return word_pieces(tf.constant(words), tables, buffer).to_list()


def random_words(count, seed=0):
    """Words of ASCII and of characters from many scripts and symbol blocks, control and
    unassigned code points included."""
    rng = random.Random(seed)
    blocks = [(0x0, 0x250), (0x300, 0x370), (0x370, 0x530), (0x600, 0x700), (0x900, 0x980),
              (0x1e00, 0x2000), (0x2000, 0x2070), (0x2100, 0x2200), (0x2460, 0x2500),
              (0x3000, 0x3100), (0x4e00, 0x9fff), (0xac00, 0xd7a3), (0xfb00, 0xfb50),
              (0xfe00, 0xfe70), (0xff00, 0xfff0), (0x1d400, 0x1d800), (0x1f300, 0x1f700),
              (0x20000, 0x20100), (0xe0000, 0xe0080)]
    words = []
    while len(words) < count:
        chars = [rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,'-")
                 if rng.random() < 0.5 else chr(rng.randrange(*rng.choice(blocks)))
                 for _ in range(rng.randint(1, 8))]
        word = "".join(c for c in chars if c not in serving.SEPARATORS)
        if word:
            words.append(word)
    return words


def test_words_get_exactly_the_pieces_of_preprocessing(wordpiece):
    backend, info = wordpiece
    words = [w for line in sample_lines() for w in line.split(" ")] + SPECIAL_WORDS
    words += random_words(3000)
    theirs = tokenizers_pieces(backend, words)
    ours = graph_pieces(backend, words)
    differ = [(w, t, o) for w, t, o in zip(words, theirs, ours) if t != o]
    assert not differ, f"{len(differ)} words differ, e.g. {differ[:3]}"
    # Not a trivial comparison: every kind of outcome is there.
    pieces = dict(zip(words, theirs))
    assert pieces["[SEP]"] == [102] and len(pieces["x[SEP]y"]) == 3
    assert pieces["\x01\x02"] == [] and pieces["a" * 101] == [info.unk_token_id]
    assert len(pieces["a" * 100]) > 1
    assert pieces["ÀÉÎÕÜ"] == tokenizers_pieces(backend, ["aeiou"])[0]
    assert sum(len(p) > 1 for p in theirs) > 1000 and sum(p == [] for p in theirs) > 10


def test_golden_pieces_of_a_small_english_vocabulary(wordpiece):
    """The same normaliser and pre-tokenizer with a vocabulary small enough to read the pieces
    off, and an added token that takes the whitespace around it along (lstrip, rstrip)."""
    from tokenizers import AddedToken, Tokenizer, models

    backend, _ = wordpiece
    vocab = ["[UNK]", "[SEP]", "ca", "##fe", "-", "au", "la", "##it", "x", "y", "中", "'", "s",
             "don", "t", "##on"]
    small = Tokenizer(models.WordPiece({p: i for i, p in enumerate(vocab)}, unk_token="[UNK]"))
    small.normalizer, small.pre_tokenizer = backend.normalizer, backend.pre_tokenizer
    small.add_special_tokens(["[SEP]", AddedToken("<ent>", lstrip=True, rstrip=True,
                                                  normalized=False)])
    words = ["Café-au-lait[SEP]", "x\u00a0<ent>\u3000y", "x<ent>y", "don't", "DON'T", "dont",
             "x中y", "cafe\u200b\u0301", "lait" * 30]
    assert tokenizers_pieces(small, words) == graph_pieces(small, words) == [
        [2, 3, 4, 5, 4, 6, 7, 1], [8, 16, 9], [8, 16, 9], [13, 11, 14], [13, 11, 14], [0],
        [8, 10, 9], [2, 3], [0]]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, wordpiece):
    """An untrained embedding + CRF tagger over the tokenizer: it tags at random, so there are
    entities of every type and length."""
    from models import TaggerConfig, build_tagger

    backend, info = wordpiece
    tf.keras.utils.set_random_seed(0)
    model = build_tagger(TaggerConfig(encoder="embedding", vocab_size=info.vocab_size,
                                      embedding_dim=16, bilstm_layers=0, head="crf",
                                      label_map=LABELS, dropout=0.0),
                         transition_constraints=iob2_allowed_transitions(LABELS))
    return export.export_model(model, tmp_path_factory.mktemp("word_tag_text") / "export",
                               label_map=LABELS, tokenizer_json=backend.to_str(),
                               tokenizer_info=info.to_json(), max_seq_length=MAX_SEQ_LENGTH,
                               stride=STRIDE, input_format="conll")


@pytest.fixture(scope="module")
def loaded(export_dir):
    return tf.saved_model.load(str(export_dir))


def entities_by_line(outputs, count):
    """tag_text outputs (numpy) -> per line [(start, end, type, text, score)]."""
    return [[(int(outputs["entity_start"][row][k]), int(outputs["entity_end"][row][k]),
              outputs["entity_type"][row][k].decode(), outputs["entity_text"][row][k].decode(),
              float(outputs["entity_score"][row][k]))
             for k in range(int(outputs["num_entities"][row]))] for row in range(count)]


def test_tag_text_returns_exactly_serving_predicts_entities(export_dir, loaded):
    """serving.predict writes each line's `Predictor` entities (and nothing for a line it skips,
    with the message `error` holds); its lines are read as UTF-8 with bad bytes replaced."""
    lines = sample_lines()
    lines += EXTRA_LINES + [" ".join(lines)]  # the last: one line of 65 windows
    tag_text = loaded.signatures["tag_text"]
    outputs = {k: v.numpy() for k, v in tag_text(text=tf.constant(lines)).items()}
    texts = [line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line
             for line in lines]
    predictor = serving.Predictor(export_dir)
    predictions = list(predictor.predict_lines(texts))
    assert len(predictor.line_encoder.encode(texts[-1:])[0].windows) > 60
    ours = entities_by_line(outputs, len(lines))
    for row, prediction in enumerate(predictions):
        theirs = [(e["start"], e["end"], e["type"], e["text"], e["score"])
                  for e in prediction.entities]
        assert [e[:4] for e in ours[row]] == [e[:4] for e in theirs], f"line {row + 1}"
        # serving.predict rounds scores to 6 decimals.
        assert [e[4] for e in ours[row]] == pytest.approx([e[4] for e in theirs], abs=1e-6)
    found = [e for line in ours for e in line]
    assert len(found) > 300 and {e[2] for e in found} == {"LOC", "MISC", "ORG", "PER"}
    assert max(len(e[3].split(" ")) for e in found) >= 2

    # Per word: offsets, tags, probabilities, unknown words and errors are the predictor's.
    for row, prediction in enumerate(predictions):
        count = int(outputs["num_words"][row])
        assert outputs["error"][row].decode() == (prediction.error or ""), row
        assert count == (0 if prediction.error else len(prediction.tokens)), row
        assert list(zip(outputs["word_start"][row][:count].tolist(),
                        outputs["word_end"][row][:count].tolist())) == \
            [tuple(span) for span in prediction.spans][:count]
        assert [t.decode() for t in outputs["tags"][row][:count]] == prediction.tags
        np.testing.assert_allclose(outputs["tag_probs"][row][:count], prediction.tag_probs,
                                   atol=1e-6)
        assert outputs["num_unknown"][row] == len(prediction.unknown), row
        assert outputs["num_chars"][row] == len(texts[row])
    errors = [e.decode() for e in outputs["error"]]
    assert errors.count(serving.EMPTY_LINE) == 2 and errors.count(serving.NORMALISED_AWAY) == 1
    assert outputs["num_unknown"].sum() >= 5

    huge = tag_text(text=tf.constant(["ab " * (serving.MAX_LINE_CHARS // 3 + 1)]))
    assert huge["error"].numpy()[0].decode().startswith("more than max_line_chars=1,000,000")
    assert huge["num_words"].numpy()[0] == huge["num_entities"].numpy()[0] == 0


def test_runs_in_a_process_that_cannot_import_the_project(export_dir, loaded, tmp_path):
    lines = sample_lines()[:3] + ["x[SEP]y  Ｈｅｌｌｏ", ""]
    tag_text = loaded.signatures["tag_text"]
    expected = {k: v.numpy() for k, v in tag_text(text=tf.constant(lines)).items()}
    assert expected["num_entities"][:3].sum() > 0
    # The project, transformers and tokenizers blocked; tensorflow_text is what export.json says
    # the SavedModel needs.
    served, _, _ = tt.tag_text_without_the_project(export_dir, lines, tmp_path,
                                                   imports="import tensorflow_text")
    assert set(served) == set(expected)
    for key, value in expected.items():
        if value.dtype == object:
            assert served[key] == [[s.decode() for s in row] if value.ndim == 2 else row.decode()
                                   for row in value], key
        else:
            np.testing.assert_allclose(served[key], value, atol=1e-6, err_msg=key)


def test_export_json_says_which_signature_and_what_it_needs(export_dir, loaded):
    signature = serving.read_export(export_dir).manifest["text_signature"]
    assert signature["name"] == "tag_text"
    assert signature["outputs"] == serving.WORD_TEXT_SIGNATURE["outputs"]
    assert "FastWordpieceTokenizer" in signature["tokenizer"]
    assert signature["requires"].startswith("tensorflow-text==2.21.1: import tensorflow_text")
    assert set(loaded.signatures) == {"serving_default", "tag_text"}
    assert set(loaded.signatures["tag_text"].structured_outputs) == \
        set(serving.WORD_TEXT_SIGNATURE["outputs"])


def byte_level_bpe(words):
    """A byte-level BPE tokenizer (GPT-2 style) trained on `words`, with <s> </s> around a
    sequence: (backend, tokenizer info as preprocessing records it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(words, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    info = tokenization.TokenizerInfo(
        name="bpe", fingerprint="", prefix_ids=[0], suffix_ids=[2], pad_token_id=1,
        unk_token_id=3, vocab_size=backend.get_vocab_size(), word_boundary_marker="none")
    return backend, info


def test_a_tokenizer_without_in_graph_equivalent_exports_without_tag_text(tmp_path, monkeypatch,
                                                                          capsys):
    """A byte-level BPE tokenizer, through the command line (the run directory's reading is
    replaced by the run it would read: a tiny embedding tagger over the tokenizer)."""
    from models import TaggerConfig, build_tagger

    backend, info = byte_level_bpe([w for line in sample_lines() for w in line.split(" ")])
    config = TaggerConfig(encoder="embedding", vocab_size=info.vocab_size, embedding_dim=8,
                          bilstm_layers=0, head="softmax", label_map=LABELS)
    model = build_tagger(config)
    run = run_reader.RunInfo(run_dir=tmp_path, config={}, label_map=LABELS, input_format="conll",
                             manifest={"max_seq_length": 32, "stride": 8,
                                       "tokenizer": {"name": "bpe"}}, model_config=config)
    monkeypatch.setattr(export, "read_run", lambda run_dir, log: run)
    monkeypatch.setattr(export, "resolve_checkpoint", lambda *args, log: ("ckpt-1", 1))
    monkeypatch.setattr(export, "prepare_serving_tokenizer",
                        lambda *args: (backend.to_str(), info.to_json()))
    monkeypatch.setattr(export, "build_model", lambda *args: (model, config))
    directory = tmp_path / "export"
    assert export.main([f"--run_dir={tmp_path}", f"--export_dir={directory}"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith("note: no tag_text signature (text in, "
                                                   "entities out): word-level model")
    assert "BPE tokenizer: tensorflow-text has no in-graph equivalent" in notes[0]
    signature = serving.read_export(directory).manifest["text_signature"]
    assert signature == {"name": None, "unavailable": notes[0].split("out): ", 1)[1]}
    assert set(tf.saved_model.load(str(directory)).signatures) == {"serving_default"}


def sentencepiece_model(tokenizer_json):
    """A SentencePiece model (serialized ModelProto) of a tokenizers Unigram tokenizer with a
    Precompiled normaliser: its pieces, scores and normalisation map, what
    tf_text.SentencepieceTokenizer reads."""
    import base64

    from transformers.convert_slow_tokenizer import import_protobuf

    config = json.loads(tokenizer_json)
    proto = import_protobuf()
    model = proto.ModelProto()
    for index, (piece, score) in enumerate(config["model"]["vocab"]):
        entry = model.pieces.add(piece=piece, score=score)
        entry.type = entry.UNKNOWN if index == config["model"]["unk_id"] else entry.NORMAL
    model.trainer_spec.model_type = proto.TrainerSpec.UNIGRAM
    model.trainer_spec.unk_id = config["model"]["unk_id"]
    model.trainer_spec.bos_id = model.trainer_spec.eos_id = model.trainer_spec.pad_id = -1
    [precompiled] = [n for n in config["normalizer"]["normalizers"] if n["type"] == "Precompiled"]
    model.normalizer_spec.precompiled_charsmap = base64.b64decode(
        precompiled["precompiled_charsmap"])
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.remove_extra_whitespaces = True
    return model.SerializeToString()


def test_sentencepiece_has_no_exact_in_graph_equivalent(e5_dir):
    """Why SentencePiece word models get no tag_text (`trainer.word_tokenizer`): tensorflow-text's
    SentencepieceTokenizer, given e5's own pieces, scores and normaliser, gives most words the
    pieces tokenizers gives them, but not all."""
    import tensorflow_text as tf_text

    backend, _ = tokenization.prepare_tokenizer(e5_dir, word_boundary_marker="auto",
                                                input_format="conll")
    sentencepiece = tf_text.SentencepieceTokenizer(sentencepiece_model(backend.to_str()),
                                                   out_type=tf.int32)
    same = ["Maria", "Zürich", "reported", "revenue", "12.3%", "北京", "Hello,"]
    tie = ["6.0000000e-01", "(iii)"]  # equal-score splits of a run, in another order
    mark = ["Ⓠ\u03267"]  # a combining mark after a normalised character: tokenizers drops it
    theirs = tokenizers_pieces(backend, same + tie + mark)
    ours = sentencepiece.tokenize(tf.constant(same + tie + mark)).to_list()
    assert ours[:len(same)] == theirs[:len(same)]
    for word, a, b in zip(tie, ours[len(same):], theirs[len(same):]):
        assert a != b and sorted(a) == sorted(b), word
    assert len(ours[-1]) == len(theirs[-1]) + 1
    assert "SentencePiece" in text_signature_unavailable(backend.to_str(), "conll")
