"""serving.predict / serving.Predictor: raw lines -> entities whose offsets slice the original line,
spaces and full-width spaces, windows of long lines, and a clear message for every bad input."""

import io
import json
import os
import random
import subprocess
import sys

import pytest

import serving
from data_pipeline import tags, tokenization
from serving import predict
from tests import trainer_testing as tt
from trainer import export

# The labels of the shared `export_dir` (tests/serving/conftest.py), and of the exports here.
PD_LABELS = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


@pytest.fixture(scope="module")
def predictor(export_dir):
    return serving.Predictor(export_dir, batch_size=8)


def raw_sentences(people_daily_dir, count):
    """The first `count` People's Daily test sentences as raw text lines."""
    text = (people_daily_dir / "example.test").read_text(encoding="utf-8")
    blocks = [b for b in text.split("\n\n") if b.strip()][:count]
    return ["".join(row.split(" ")[0] for row in b.split("\n") if row) for b in blocks]


def test_cli_entities_slice_the_original_people_daily_lines(export_dir, people_daily_dir,
                                                            tmp_path):
    lines = raw_sentences(people_daily_dir, 150)
    path = tmp_path / "test.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "serving.predict", f"--export_dir={export_dir}",
         f"--input_file={path}"], cwd=tt.REPO, capture_output=True, text=True, timeout=240,
        env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    entities = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(entities) > 100
    assert {e["line"] for e in entities} <= set(range(1, len(lines) + 1))
    assert max(e["end"] - e["start"] for e in entities) > 2
    for entity in entities:
        assert set(entity) == {"line", "text", "type", "start", "end", "score"}
        line = lines[entity["line"] - 1]
        assert line[entity["start"]:entity["end"]] == entity["text"], entity
        assert entity["type"] in ("LOC", "ORG", "PER")
        assert 0.0 < entity["score"] <= 1.0


def test_offsets_index_the_line_with_its_spaces(predictor):
    line = " 北京\t欢迎 你。\u3000新华社 "
    prediction = predictor.predict(line)
    assert prediction.tokens == list("北京欢迎你。\u3000新华社")  # U+3000 is a character
    assert [line[a:b] for a, b in prediction.spans] == prediction.tokens
    assert len(prediction.tags) == len(prediction.tokens) == len(prediction.tag_probs)
    for entity in prediction.entities:
        assert line[entity["start"]:entity["end"]] == entity["text"]
    out = io.StringIO()
    predict.write_prediction(prediction, "conll", out)
    rows = out.getvalue().split("\n")
    assert rows[-2:] == ["", ""] and len(rows) == len(prediction.tokens) + 2
    assert [row.split(" ")[0] for row in rows[:-2]] == prediction.tokens
    # A space inside an entity stays in its text: tokens 1..3 are 京 欢 迎.
    [entity] = serving.entities_of(line, prediction.spans, ["O", "B-PER", "I-PER", "I-PER"],
                                   [1.0, 0.5, 0.7, 0.9])
    assert entity == {"text": "京\t欢迎", "type": "PER", "start": 2, "end": 6, "score": 0.7}


def test_word_lines_split_on_spaces_and_tabs_only():
    tokens, spans = serving.split_line("  EU rejects\tGerman\u3000call ", "conll")
    assert tokens == ["EU", "rejects", "German\u3000call"]
    assert spans == [(2, 4), (5, 12), (13, 24)]


def test_entities_are_the_evaluations_entities():
    random.seed(0)
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]
    for _ in range(500):
        sequence = random.choices(labels, k=random.randint(0, 12))
        expected = [tuple(e) for e in tags.extract_entities(sequence)]  # what evaluation scores
        text = "".join(str(i % 10) for i in range(len(sequence)))
        served = serving.entities_of(text, [(i, i + 1) for i in range(len(sequence))], sequence,
                                     [1.0] * len(sequence))
        assert [(e["type"], e["start"], e["end"]) for e in served] == expected, sequence


def test_long_lines_and_batching_do_not_change_the_tags(predictor, people_daily_dir):
    lines = raw_sentences(people_daily_dir, 40)
    together = list(predictor.predict_lines(lines))
    document = "".join(lines)  # ~2,000 characters, ~180 windows
    [long] = predictor.predict_lines([document])
    assert len(long.tags) == len(document)
    alone = [predictor.predict(line) for line in lines[:10]]
    for a, b in zip(together, alone):
        # Tags are exact; probabilities move in the 6th decimal with the padding of a batch.
        assert a.tags == b.tags
        assert [e["text"] for e in a.entities] == [e["text"] for e in b.entities]
        assert a.tag_probs == pytest.approx(b.tag_probs, abs=1e-4)
    short = serving.Predictor(predictor.settings.directory, max_line_chars=100)
    [skipped] = short.predict_lines([document])
    assert skipped.error.startswith(f"{len(document):,} characters") and not skipped.tags


def test_bad_input_gets_a_message_and_the_rest_is_tagged(export_dir, tmp_path):
    stdin = io.BytesIO("北京欢迎你\n\n   \n\xff\n".encode("utf-8") + b"\xff\xfe\n" +
                       "新华社😀电\n".encode("utf-8"))
    out, err = io.StringIO(), io.StringIO()
    assert predict.main([f"--export_dir={export_dir}", "--format=conll"], stdin=stdin,
                        stdout=out, stderr=err) == 0
    messages = err.getvalue()
    assert "line 2: empty line, nothing to tag; skipped" in messages
    assert "line 3: empty line" in messages
    assert "line 5: invalid UTF-8 at byte 0" in messages
    # BERT's normaliser drops U+FFFD, so nothing of line 5 is left to tag.
    assert "line 5: the tokenizer's normaliser removes every character" in messages
    assert "unknown to the tokenizer" in messages and "😀" in messages
    sentences = [s for s in out.getvalue().split("\n\n") if s]
    assert len(sentences) == 3  # lines 1, 4 (ÿ) and 6
    assert sentences[-1].split("\n")[3].startswith("😀 ")

    def fails(argv, match):
        err = io.StringIO()
        assert predict.main(argv, stdin=io.BytesIO(b""), stdout=io.StringIO(), stderr=err) == 2
        assert err.getvalue().startswith("error: ") and match in err.getvalue(), err.getvalue()

    fails([f"--export_dir={tmp_path}", "x"], "is not an export directory")
    fails([f"--export_dir={tmp_path / 'nope'}", "x"], "no such directory")
    fails([f"--export_dir={export_dir}", f"--input_file={tmp_path / 'nope.txt'}"],
          "No such file")


def test_softmax_embedding_tagger_serves_its_argmax_and_probabilities(tmp_path,
                                                                      bert_chinese_dir):
    import numpy as np
    import tensorflow as tf

    from models import TaggerConfig, build_tagger

    backend, info = tokenization.prepare_tokenizer(bert_chinese_dir, word_boundary_marker="auto",
                                                   input_format="char")
    model = build_tagger(TaggerConfig(encoder="embedding", vocab_size=info.vocab_size,
                                      embedding_dim=8, bilstm_layers=1, bilstm_units=4,
                                      head="softmax", label_map=PD_LABELS))
    arguments = dict(label_map=PD_LABELS, tokenizer_json=backend.to_str(),
                     tokenizer_info=info.to_json(), max_seq_length=64, stride=8,
                     input_format="char")
    with pytest.raises(export.ExportError, match="needs a BERT-family encoder"):
        export.export_model(model, tmp_path / "refused", save_pretrained="safetensors",
                            **arguments)
    assert not (tmp_path / "refused").exists()
    directory = export.export_model(model, tmp_path / "softmax", **arguments)

    line = "新华社北京电记者报道"
    [prediction] = serving.Predictor(directory).predict_lines([line])
    encoder = serving.LineEncoder.from_settings(serving.read_export(directory))
    [(ids, char_index, _, _)] = encoder.encode([line])[0].windows
    mask = tf.ones([1, len(ids)], tf.int32)
    logits = model({"input_ids": tf.constant([ids]), "attention_mask": mask})
    probs = tf.nn.softmax(logits, axis=-1).numpy()[0][np.asarray(char_index) >= 0]
    assert prediction.tags == [PD_LABELS[i] for i in probs.argmax(-1)]
    np.testing.assert_allclose(prediction.tag_probs, probs.max(-1), rtol=1e-5)


def test_non_utf8_arguments_are_replaced_and_reported_not_a_traceback(export_dir):
    # What Python puts in sys.argv for the bytes ff fe 北京 (lone surrogates for the bad bytes).
    argument = os.fsdecode(b"\xff\xfe" + "北京".encode())
    assert "\udcff" in argument
    out, err = io.StringIO(), io.StringIO()
    assert predict.main([f"--export_dir={export_dir}", "--format=conll", argument, "上海"],
                        stdin=io.BytesIO(b""), stdout=out, stderr=err) == 0
    assert "line 1: invalid UTF-8 at byte 0; bad bytes replaced by U+FFFD" in err.getvalue()
    sentences = [s for s in out.getvalue().split("\n\n") if s]
    assert [[row.split(" ")[0] for row in s.split("\n")] for s in sentences] == [
        ["\ufffd", "\ufffd", "北", "京"], ["上", "海"]]


def test_conll_and_jsonl_never_write_raw_control_characters(predictor):
    line = "北\x00京\x1b[2J欢\x7f迎\u202e你"
    prediction = predictor.predict(line)
    assert "\x00" in prediction.tokens and "\x1b" in prediction.tokens
    out = io.StringIO()
    predict.write_prediction(prediction, "conll", out)
    text = out.getvalue()
    assert not any(ch in text for ch in "\x00\x1b\x7f\u202e")
    assert [row.split(" ")[0] for row in text.split("\n") if row] == [
        "北", "\\x00", "京", "\\x1b", "[", "2", "J", "欢", "\\x7f", "迎", "\\u202e", "你"]
    entity = {"text": "a\x9b\x00b\u2028", "type": "PER", "start": 0, "end": 5,
              "score": float("nan")}
    fake = serving.LinePrediction(line_number=3, text="", tokens=[], spans=[], tags=[],
                                  tag_probs=[], entities=[entity], unknown=[])
    out = io.StringIO()
    predict.write_prediction(fake, "jsonl", out)
    text = out.getvalue()
    assert not any(ch in text for ch in "\x9b\x00\u2028") and text.endswith("}\n")

    def reject(constant):
        raise ValueError(constant)

    assert json.loads(text, parse_constant=reject) == {"line": 3, **entity, "score": None}


def test_a_directory_as_input_file_is_named_as_such(export_dir, tmp_path):
    err = io.StringIO()
    assert predict.main([f"--export_dir={export_dir}", f"--input_file={tmp_path}"],
                        stdin=io.BytesIO(b""), stdout=io.StringIO(), stderr=err) == 2
    assert err.getvalue() == f"error: --input_file={tmp_path} is a directory, expected a file\n"


def test_a_training_run_directory_is_pointed_to_its_export(tmp_path):
    """A run directory (what trainer/run_dir.py writes) given as --export_dir: the command to
    export it, into a new directory; or the export its run wrote at the end, if there is one."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.json", "model_config.json"):
        (run / name).write_text("{}")

    def error(directory):
        err = io.StringIO()
        assert predict.main([f"--export_dir={directory}", "x"], stdin=io.BytesIO(b""),
                            stdout=io.StringIO(), stderr=err) == 2
        return err.getvalue()

    assert error(run) == (
        f"error: {run} is a training run directory, not an export; export it into a new "
        f"directory with `python -m trainer.export --run_dir={run} --export_dir=NEW_DIR`, then "
        f"pass --export_dir=NEW_DIR\n")
    (run / "export").mkdir()
    (run / "export" / "export.json").write_text("{}")
    assert error(run) == (f"error: {run} is a training run directory, not an export; the export "
                          f"written at the end of that run is --export_dir={run / 'export'}\n")
    # Any other directory: still the command that makes an export there.
    assert error(tmp_path) == (
        f"error: {tmp_path} is not an export directory (no export.json); create one with "
        f"`python -m trainer.export --run_dir=RUN --export_dir={tmp_path}`\n")


def test_flags_help_and_usage_errors_exit_before_the_export_is_read(capsys):
    with pytest.raises(SystemExit) as stop:
        predict.main(["--helpfull"], stdin=io.BytesIO(b""))
    assert stop.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith("Tag raw text with an export")
    for flag in ("--export_dir", "--input_file", "--format", "--batch_size", "--max_line_chars"):
        assert flag in help_text
    for argv, message in (([], "--export_dir must have a value"),
                          (["--export_dir=x", "--format=xml"], "should be one of <jsonl|conll>"),
                          (["--export_dir=x", "--batch_size=two"], "--batch_size=two"),
                          (["--export_dir=x", "--bogus=1"], "Unknown command line flag 'bogus'")):
        err = io.StringIO()
        with pytest.raises(SystemExit) as stop:
            predict.main(argv, stdin=io.BytesIO(b""), stdout=io.StringIO(), stderr=err)
        assert stop.value.code == 2, argv
        assert err.getvalue().startswith("error: ") and message in err.getvalue(), err.getvalue()
        assert "python -m serving.predict --helpfull lists the flags" in err.getvalue()


def test_the_old_command_name_runs_the_same_main():
    from trainer import predict as old_name

    assert old_name.main is predict.main
