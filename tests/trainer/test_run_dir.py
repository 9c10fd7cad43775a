"""trainer/run_dir.py: the model config a run directory carries (built once, checked on resume),
best.json, and the layout's names."""

import json

import pytest

from models.config import TaggerConfig
from trainer import run_dir as run_dir_lib

LABELS = ["O", "B-LOC", "I-LOC"]
MANIFEST = {"label_map": LABELS, "tokenizer": {"vocab_size": 50}}


def write_manifest(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(MANIFEST))
    return path


def test_tagger_config_from_settings_or_a_config_json(tmp_path):
    encoder_json = tmp_path / "encoder.json"
    encoder_json.write_text('{"hidden_size": 32}')
    # A config.json dict: keys other than the model settings are ignored.
    config = run_dir_lib.tagger_config({"encoder_config": str(encoder_json), "pretrained": "",
                                        "head": "crf", "batch_size": 8}, MANIFEST)
    assert config.encoder_config == {"hidden_size": 32} and config.pretrained is None
    assert (config.head, config.label_map, config.num_tags, config.vocab_size) == (
        "crf", LABELS, 3, None)
    inline = run_dir_lib.tagger_config({"encoder_config": '{"hidden_size": 16}'}, MANIFEST)
    assert inline.encoder_config == {"hidden_size": 16}
    embedding = run_dir_lib.tagger_config({"encoder": "embedding"}, MANIFEST)
    assert embedding.vocab_size == 50
    with pytest.raises(ValueError, match="head='mlp' is invalid"):
        run_dir_lib.tagger_config({"encoder": "embedding", "head": "mlp"}, MANIFEST)


def test_write_run_files_writes_the_model_config_and_checks_it_on_resume(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    manifest_path = write_manifest(tmp_path)
    model = run_dir_lib.tagger_config({"encoder": "embedding", "head": "crf"}, MANIFEST)
    assert run_dir_lib.read_model_config(run_dir) is None  # an older run's layout
    run_dir_lib.write_run_files(run_dir, manifest_path=manifest_path, model_config=model)
    assert json.loads((run_dir / "data_manifest.json").read_text()) == MANIFEST
    assert json.loads((run_dir / "label_map.json").read_text()) == LABELS
    on_disk = json.loads((run_dir / "model_config.json").read_text())
    assert on_disk == model.to_dict() and run_dir_lib.read_model_config(run_dir) == model

    # Resuming with the same model is fine; with another one it is refused, naming what differs.
    run_dir_lib.write_run_files(run_dir, manifest_path=manifest_path, model_config=model)
    other = run_dir_lib.tagger_config({"encoder": "embedding", "head": "softmax"}, MANIFEST)
    with pytest.raises(run_dir_lib.RunDirectoryError, match="head: 'crf' -> 'softmax'"):
        run_dir_lib.write_run_files(run_dir, manifest_path=manifest_path, model_config=other)
    assert run_dir_lib.read_model_config(run_dir) == model
    messages = []
    run_dir_lib.write_run_files(run_dir, manifest_path=manifest_path, model_config=other,
                                resume_mismatched=True, log=messages.append)
    assert run_dir_lib.read_model_config(run_dir) == other and "resume_mismatched" in messages[0]

    (run_dir / "model_config.json").write_text('{"head": "crf", "colour": 1}')
    with pytest.raises(ValueError, match="model_config.json: unknown TaggerConfig keys"):
        run_dir_lib.read_model_config(run_dir)
    with pytest.raises(run_dir_lib.RunDirectoryError, match="unreadable model config"):
        run_dir_lib.write_run_files(run_dir, manifest_path=manifest_path, model_config=model)


def test_best_json_round_trip(tmp_path):
    assert run_dir_lib.read_best(tmp_path) is None
    run_dir_lib.write_best(tmp_path, {"step": 3, "f1": 0.5})
    assert run_dir_lib.read_best(tmp_path) == {"step": 3, "f1": 0.5}
    with pytest.raises(ValueError, match=r"refusing to write NaN or infinity as JSON \(at f1\)"):
        run_dir_lib.write_best(tmp_path, {"step": 4, "f1": float("nan")})
    assert run_dir_lib.read_best(tmp_path)["step"] == 3


def test_model_config_json_is_a_tagger_config(tmp_path):
    config = TaggerConfig(encoder="embedding", vocab_size=10, label_map=LABELS)
    (tmp_path / run_dir_lib.MODEL_CONFIG_FILE).write_text(json.dumps(config.to_dict()))
    assert run_dir_lib.read_model_config(tmp_path) == config
