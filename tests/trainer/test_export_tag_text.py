"""The text-in signature `tag_text`: raw UTF-8 lines in, entities out, everything inside the
SavedModel. On People's Daily test it returns exactly what `serving.predict` returns; it runs in
a process that cannot import this project and through `saved_model_cli run`; bad input gets a
defined answer; a word-level export with a SentencePiece tokenizer says why it has no such
signature (word-level exports that have one: test_export_word_tag_text.py)."""

import io
import json
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import serving
from data_pipeline import tokenization
from data_pipeline.tags import iob2_allowed_transitions
from serving import predict
from tests import trainer_testing as tt
from trainer import export
from trainer.piece_table import piece_table

PD_LABELS = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
MAX_SEQ_LENGTH = 128  # the shipped configs' windows: budget 126 pieces, 79 test lines need more
STRIDE = 32
SAMPLE = 500
# Spaces, tabs, U+3000, full-width letters and punctuation (the normaliser maps them), a
# character of several pieces, emoji, a line end: each handled as preprocessing handles it.
EXTRA_LINES = [" 北京\t欢迎 你。\u3000新华社 ", "ＡＢＣ公司１９９８年，在上海（浦东）成立！", "㎏㍿①½ﬁ",
               "新华社😀电𝐀𝐁", "中国\r", "\u200b\u200d北京"]


def untrained_crf_tagger(e5_dir, seed):
    """(An untrained tiny BERT + CRF, the e5 tokenizer as preprocessing prepares it, its info)."""
    from models import TaggerConfig, build_tagger

    backend, info = tokenization.prepare_tokenizer(e5_dir, word_boundary_marker="auto",
                                                   input_format="char")
    tf.keras.utils.set_random_seed(seed)
    model = build_tagger(TaggerConfig(encoder_config=dict(tt.TINY_BERT, vocab_size=info.vocab_size),
                                      head="crf", label_map=PD_LABELS, dropout=0.0),
                         transition_constraints=iob2_allowed_transitions(PD_LABELS))
    return model, backend, info


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, e5_dir):
    """An untrained tiny BERT + CRF with the e5 (SentencePiece) tokenizer as preprocessing
    prepares it: it tags at random, so there are entities of every type and length."""
    model, backend, info = untrained_crf_tagger(e5_dir, seed=0)
    directory = tmp_path_factory.mktemp("tag_text") / "export"
    return export.export_model(model, directory, label_map=PD_LABELS,
                               tokenizer_json=backend.to_str(), tokenizer_info=info.to_json(),
                               max_seq_length=MAX_SEQ_LENGTH, stride=STRIDE, input_format="char")


@pytest.fixture(scope="module")
def tag_text(export_dir):
    return tf.saved_model.load(str(export_dir)).signatures[serving.TEXT_SIGNATURE_NAME]


def people_daily_lines(people_daily_dir):
    """A fixed sample of 500 People's Daily test sentences plus every one longer than a window,
    as raw lines, in corpus order."""
    text = (people_daily_dir / "example.test").read_text(encoding="utf-8")
    blocks = [b for b in text.split("\n\n") if b.strip()]
    lines = ["".join(row.split(" ")[0] for row in b.split("\n") if row) for b in blocks]
    chosen = set(random.Random(0).sample(range(len(lines)), SAMPLE))
    return [line for i, line in enumerate(lines) if i in chosen or len(line) > MAX_SEQ_LENGTH - 2]


def entities_by_line(outputs, count):
    """tag_text outputs (numpy) -> per line [(start, end, type, text, score)]."""
    out = []
    for row in range(count):
        n = int(outputs["num_entities"][row])
        out.append([(int(outputs["entity_start"][row][k]), int(outputs["entity_end"][row][k]),
                     outputs["entity_type"][row][k].decode(),
                     outputs["entity_text"][row][k].decode(),
                     float(outputs["entity_score"][row][k])) for k in range(n)])
    return out


def predict_cli(export_dir, lines, tmp_path):
    """serving.predict's command line on `lines` written to a file: per line its entities."""
    path = tmp_path / "lines.txt"
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode("utf-8"))
                              + b"\n" for line in lines))
    out, err = io.StringIO(), io.StringIO()
    assert predict.main([f"--export_dir={export_dir}", f"--input_file={path}"],
                        stdout=out, stderr=err) == 0, err.getvalue()
    entities = [[] for _ in lines]
    for record in map(json.loads, out.getvalue().splitlines()):
        entities[record["line"] - 1].append(
            (record["start"], record["end"], record["type"], record["text"], record["score"]))
    return entities, err.getvalue()


def assert_same_entities(ours, theirs):
    assert len(ours) == len(theirs)
    for index, (a, b) in enumerate(zip(ours, theirs)):
        assert [e[:4] for e in a] == [e[:4] for e in b], f"line {index + 1} differs"
        # serving.predict rounds scores to 6 decimals.
        assert [e[4] for e in a] == pytest.approx([e[4] for e in b], abs=1e-6), index + 1


def test_tag_text_matches_trainer_predict_on_people_daily_test(export_dir, tag_text,
                                                               people_daily_dir, tmp_path):
    lines = people_daily_lines(people_daily_dir) + EXTRA_LINES
    theirs, _ = predict_cli(export_dir, lines, tmp_path)
    outputs = {k: v.numpy() for k, v in tag_text(text=tf.constant(lines)).items()}
    ours = entities_by_line(outputs, len(lines))
    assert_same_entities(ours, theirs)

    # Not a trivial comparison: hundreds of lines of several windows, entities everywhere.
    long_lines = sum(len(line) > MAX_SEQ_LENGTH - 2 for line in lines)
    assert long_lines >= 79 and len(lines) >= SAMPLE + 70
    found = [e for line in ours for e in line]
    assert len(found) > 5000 and {e[2] for e in found} == {"LOC", "ORG", "PER"}
    assert max(e[1] - e[0] for e in found) >= 4

    # Per-character tags are the predictor's tags; separators (and padding) get "".
    predictions = serving.Predictor(export_dir).predict_lines(lines)
    for row, (line, prediction) in enumerate(zip(lines, predictions)):
        tags = [t.decode() for t in outputs["tags"][row]]
        assert outputs["num_chars"][row] == len(line)
        assert [tags[a] for a, _ in prediction.spans] == prediction.tags
        assert all(tags[i] == "" for i, ch in enumerate(line) if ch in serving.SEPARATORS)
        assert tags[len(line):] == [""] * (len(tags) - len(line))
        probs = outputs["tag_probs"][row]
        np.testing.assert_allclose([probs[a] for a, _ in prediction.spans], prediction.tag_probs,
                                   atol=1e-6)
        assert outputs["num_unknown"][row] == len(prediction.unknown)
        assert outputs["error"][row].decode() == (prediction.error or "")
    extra = {line: row for row, line in enumerate(lines) if line in EXTRA_LINES}
    assert outputs["num_unknown"][extra["新华社😀电𝐀𝐁"]] >= 1
    assert [t.decode() for t in outputs["tags"][extra["中国\r"]][:3]][2] == ""


def test_bad_input_gets_a_defined_answer(export_dir, tag_text, people_daily_dir, tmp_path):
    text = (people_daily_dir / "example.test").read_text(encoding="utf-8")
    document = "".join(row.split(" ")[0] for row in text.splitlines() if row)[:100_000]
    lines = [b"", b" \t ", "北京".encode() + b"\xff\xfe" + "上海".encode(), b"\x01\x02",
             document.encode(), b"\xe4\xb8", "北京".encode()]
    outputs = {k: v.numpy() for k, v in tag_text(text=tf.constant(lines)).items()}
    errors = [e.decode() for e in outputs["error"]]
    assert errors[:2] == [serving.EMPTY_LINE] * 2
    assert errors[2] == errors[4] == errors[5] == errors[6] == ""
    # Invalid bytes read as U+FFFD exactly as Python's errors="replace" (serving.predict's
    # reading), so offsets count the replaced text.
    assert outputs["num_chars"][2] == len(lines[2].decode("utf-8", errors="replace")) == 6
    assert outputs["num_chars"][5] == 1  # a truncated character: one U+FFFD, tagged
    assert errors[3] == serving.NORMALISED_AWAY  # the normaliser drops control characters
    assert outputs["num_chars"][4] == 100_000
    # Exactly serving.predict's entities (and messages) for all of it, the 100k line included.
    theirs, messages = predict_cli(export_dir, lines, tmp_path)
    assert_same_entities(entities_by_line(outputs, len(lines)), theirs)
    assert f"line 1: {serving.EMPTY_LINE}; skipped" in messages
    assert f"line 4: {serving.NORMALISED_AWAY}; skipped" in messages
    assert len(theirs[4]) > 1000

    # No lines at all, and a line over max_line_chars: shapes and messages, no crash.
    empty = tag_text(text=tf.constant([], tf.string))
    assert all(value.shape[0] == 0 for value in empty.values())
    huge = tag_text(text=tf.constant(["中" * (serving.MAX_LINE_CHARS + 1)]))
    assert huge["error"].numpy()[0].decode().startswith("more than max_line_chars=1,000,000")
    assert huge["num_entities"].numpy()[0] == 0 and set(huge["tags"].numpy()[0]) == {b""}


def test_small_windows_and_characters_of_many_pieces(tmp_path, e5_dir, people_daily_dir):
    """Windows of 3 pieces overlapping by 1: characters of 3, 5 and 7 pieces (cut to the
    budget, alone in their window) among one-piece characters, long lines of many windows."""
    model, backend, info = untrained_crf_tagger(e5_dir, seed=1)
    directory = export.export_model(model, tmp_path / "small", label_map=PD_LABELS,
                                    tokenizer_json=backend.to_str(),
                                    tokenizer_info=info.to_json(), max_seq_length=5, stride=1,
                                    input_format="char")
    lines = people_daily_lines(people_daily_dir)[:40]
    lines += ["北京½上海㎯广州ﷺ深圳", "ﷺ", "½½ﷺ㎯ 北京", "中ﷺ"] + EXTRA_LINES
    tag_text = tf.saved_model.load(str(directory)).signatures["tag_text"]
    outputs = {k: v.numpy() for k, v in tag_text(text=tf.constant(lines)).items()}
    ours = entities_by_line(outputs, len(lines))
    theirs, _ = predict_cli(directory, lines, tmp_path)
    assert_same_entities(ours, theirs)
    assert sum(map(len, ours)) > 500
    # Probabilities too: a character's pieces (cut or not) change them even where tags stay.
    for row, prediction in enumerate(serving.Predictor(directory).predict_lines(lines)):
        np.testing.assert_allclose([outputs["tag_probs"][row][a] for a, _ in prediction.spans],
                                   prediction.tag_probs, atol=1e-6, err_msg=lines[row])


def plain(strings):
    """A numpy array of bytes as (nested) lists of str."""
    if strings.ndim == 1:
        return [s.decode() for s in strings.tolist()]
    return [plain(row) for row in strings]


def test_runs_without_the_project_and_through_saved_model_cli(export_dir, tag_text, tmp_path):
    lines = ["国务院总理在北京会见了美国客人。", " 北京\t欢迎 你", ""]
    expected = {k: v.numpy() for k, v in tag_text(text=tf.constant(lines)).items()}
    assert expected["num_entities"][0] > 0
    served, elsewhere, env = tt.tag_text_without_the_project(export_dir, lines, tmp_path)
    for key, value in expected.items():
        if value.dtype == object:
            assert served[key] == plain(value), key
        else:
            np.testing.assert_allclose(served[key], value, atol=1e-6, err_msg=key)

    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    outdir = tmp_path / "cli"
    result = subprocess.run(
        [cli, "run", "--dir", str(export_dir), "--tag_set", "serve", "--signature_def",
         serving.TEXT_SIGNATURE_NAME, "--input_exprs", f"text={lines!r}", "--outdir",
         str(outdir)], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    for key, value in expected.items():
        saved = np.load(outdir / f"{key}.npy", allow_pickle=True)
        if value.dtype == object:
            assert saved.tolist() == value.tolist(), key
        else:
            np.testing.assert_allclose(saved, value, atol=1e-6, err_msg=key)


def test_export_json_documents_the_signature(export_dir):
    manifest = serving.read_export(export_dir).manifest
    signature = manifest["text_signature"]
    assert signature["name"] == "tag_text"
    assert signature["outputs"] == serving.TEXT_SIGNATURE["outputs"]
    assert signature["max_line_chars"] == serving.MAX_LINE_CHARS
    loaded = tf.saved_model.load(str(export_dir))
    assert set(loaded.signatures) == {"serving_default", "tag_text"}
    outputs = loaded.signatures["tag_text"].structured_outputs
    assert set(outputs) == set(serving.TEXT_SIGNATURE["outputs"])


def test_piece_table_is_what_preprocessing_gives_each_character(e5_dir, bert_chinese_dir):
    tables = {}
    for name in (e5_dir, bert_chinese_dir):
        backend, info = tokenization.prepare_tokenizer(name, word_boundary_marker="auto",
                                                       input_format="char")
        table = tables[name] = piece_table(backend.to_str(), info.unk_token_id)
        encoder = tokenization.TokenEncoder(backend, info.unk_token_id)
        rng = random.Random(1)
        chars = [chr(c) for c in rng.sample(range(0x20000), 3000) if not 0xD800 <= c <= 0xDFFF]
        chars += list("，。！？（）：；“”、ＡＢＣａｂｃ１２３\u3000\u200b\ufffd中国😀𝐀㎏①½ﬁ")
        for char in chars:
            [(ids, _, _)] = encoder.encode([[char]])
            assert table.pieces(char) == (ids or [info.unk_token_id]), (name, hex(ord(char)))
    # The SentencePiece normaliser maps full-width forms: the table has it.
    e5 = tables[e5_dir]
    assert e5.pieces("，") == e5.pieces(",") and e5.pieces("Ａ") == e5.pieces("A")
    assert len(e5.pieces("½")) == 3  # one character, several pieces


def test_sentencepiece_word_level_export_has_no_text_signature_and_says_why(tmp_path, e5_dir):
    """Word-level models get tag_text with a WordPiece tokenizer only
    (test_export_word_tag_text.py); with e5's SentencePiece one export.json says why not."""
    from models import TaggerConfig, build_tagger

    backend, info = tokenization.prepare_tokenizer(e5_dir, word_boundary_marker="auto",
                                                   input_format="conll")
    model = build_tagger(TaggerConfig(encoder="embedding", vocab_size=info.vocab_size,
                                      embedding_dim=8, bilstm_layers=0, head="softmax",
                                      label_map=PD_LABELS))
    directory = export.export_model(model, tmp_path / "words", label_map=PD_LABELS,
                                    tokenizer_json=backend.to_str(),
                                    tokenizer_info=info.to_json(), max_seq_length=32, stride=8,
                                    input_format="conll")
    signature = serving.read_export(directory).manifest["text_signature"]
    assert signature["name"] is None and "SentencePiece" in signature["unavailable"]
    assert set(tf.saved_model.load(str(directory)).signatures) == {"serving_default"}


def test_readme_tf_serving_example_matches_the_signature(export_dir, tag_text):
    """The README's REST example: its request runs, and its response has this signature's
    outputs in TF Serving's row format (one object per instance)."""
    readme = (tt.REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", readme, flags=re.S)
    [request] = [json.loads(b) for b in blocks if '"signature_name"' in b]
    [response] = [json.loads(b) for b in blocks if '"predictions"' in b]
    assert request["signature_name"] == serving.TEXT_SIGNATURE_NAME
    assert len(response["predictions"]) == len(request["instances"])
    outputs = tag_text(text=tf.constant(request["instances"]))
    for instance, row in zip(request["instances"], response["predictions"]):
        assert set(row) == set(outputs)
        assert row["num_chars"] == len(instance)
        for k in range(row["num_entities"]):
            assert instance[row["entity_start"][k]:row["entity_end"][k]] == row["entity_text"][k]
