"""The start-of-run variables table: groups, parameter counts, frozen or trainable, peak rates,
and how the pretrained weights loaded (a tiny random BERT saved as model.safetensors, with the
pooler a hub checkpoint has)."""

import json

import models  # noqa: F401  (chooses Keras 2 for tf.keras: models/__init__.py)
import numpy as np
import pytest

from data_pipeline.tags import iob2_allowed_transitions
from models import TaggerConfig, build_tagger
from models.transformer import load_transformer, save_pretrained
from tests.trainer_testing import TINY_BERT
from trainer import optimization, variables_report
from trainer.config import TrainConfig

LABEL_MAP = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
FILES = dict(train_file="a", dev_file="b", test_file="c", tokenizer="t", pretrained="p")
H, I, V, P = (TINY_BERT[k] for k in ("hidden_size", "intermediate_size", "vocab_size",
                                     "max_position_embeddings"))
T = len(LABEL_MAP)
# BERT's parameters from its config (type_vocab_size 2): word, position and token type
# embeddings plus a LayerNorm; per layer Q, K, V (one fused variable) and output projections, two
# LayerNorms and the two feed-forward matrices, each with its bias.
EMBEDDINGS = V * H + P * H + 2 * H + 2 * H
LAYER = 4 * (H * H + H) + 2 * H + (H * I + I) + (I * H + H) + 2 * H
LAYER_VARIABLES = 12  # qkv, attention output, intermediate, output: kernel + bias; 2 LayerNorms


def lstm(features, units):  # both directions: kernel, recurrent kernel, bias
    return 2 * (features * 4 * units + units * 4 * units + 4 * units)


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory):
    """A tiny random BERT saved as a pretrained checkpoint, with a pooler as the hub's have."""
    from safetensors.numpy import load_file, save_file

    directory = tmp_path_factory.mktemp("tiny_bert")
    save_pretrained(load_transformer(encoder_config=TINY_BERT), directory)
    tensors = load_file(directory / "model.safetensors")
    tensors["pooler.dense.weight"] = np.zeros([H, H], np.float32)
    tensors["pooler.dense.bias"] = np.zeros([H], np.float32)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


def report_for(tagger_values, train_values):
    config = TaggerConfig(label_map=LABEL_MAP, **tagger_values)
    constrained = config.head == "crf" and config.crf_constrain_transitions
    model = build_tagger(config, transition_constraints=iob2_allowed_transitions(LABEL_MAP)
                         if constrained else None)  # as trainer.loop builds it
    groups = model.variable_groups()
    plan = optimization.build_optimization(TrainConfig(**{**FILES, **train_values}), groups,
                                           model.encoder_group_names(), total_steps=10)
    return model, variables_report.build_report(model, groups, plan.peak_rates,
                                                plan.frozen_groups)


def rows(text):
    """{group: (parameters, variables, state, peak lr)} from the table's group rows."""
    out = {}
    for line in text.splitlines()[2:]:
        parts = line.split()
        if len(parts) == 5:
            out[parts[0]] = (int(parts[1].replace(",", "")), int(parts[2]), parts[3], parts[4])
    return out


def test_frozen_config_every_encoder_group_frozen_at_rate_zero(tiny_pretrained, tmp_path):
    # configs/frozen.flags on the tiny BERT: frozen encoder, last hidden states concatenated,
    # BiLSTM, softmax head.
    model, report = report_for(
        dict(pretrained=str(tiny_pretrained), hidden_layers="concat", num_hidden_layers_used=3,
             bilstm_layers=1, bilstm_units=16, head="softmax"),
        dict(encoder_learning_rate=0.0, head_learning_rate=1e-3))
    bilstm, head = lstm(3 * H, 16), 2 * 16 * T + T
    assert rows(report.text) == {
        "embeddings": (EMBEDDINGS, 5, "frozen", "0"),
        "encoder_layer_0": (LAYER, LAYER_VARIABLES, "frozen", "0"),
        "encoder_layer_1": (LAYER, LAYER_VARIABLES, "frozen", "0"),
        "bilstm": (bilstm, 6, "trainable", "0.001"),
        "head": (head, 2, "trainable", "0.001"),
    }
    frozen = EMBEDDINGS + 2 * LAYER
    # The model's own count agrees with the formula.
    assert frozen + bilstm + head == model.count_params()
    lines = report.text.splitlines()
    assert lines[0] == (f"variables: 5 groups, {frozen + bilstm + head:,} parameters: "
                        f"{bilstm + head:,} trainable, {frozen:,} frozen")
    assert lines[-5].split() == ["total", "trainable", f"{bilstm + head:,}"]
    assert lines[-4].split() == ["total", "frozen", f"{frozen:,}"]
    assert lines[-3].split() == ["total", f"{frozen + bilstm + head:,}"]
    assert lines[-2] == ("encoder frozen: outside the gradient tape, in inference mode (or "
                         "read from the feature cache)")
    # 5 embedding weights + 2 x 16 layer weights (Q, K and V count as 3, as the checkpoint has
    # them) loaded; the checkpoint's pooler is not used.
    assert lines[-1] == "pretrained weights: 37 loaded, pooler (2) unused, 0 missing"

    data = json.loads((variables_report.write_report(tmp_path, report)).read_text())
    assert data["totals"] == {"trainable": bilstm + head, "frozen": frozen,
                              "all": frozen + bilstm + head}
    assert data["encoder_frozen"] is True
    assert [(g["name"], g["trainable"], g["peak_learning_rate"], g["encoder"])
            for g in data["groups"]] == [
        ("embeddings", False, 0.0, True), ("encoder_layer_0", False, 0.0, True),
        ("encoder_layer_1", False, 0.0, True), ("bilstm", True, 1e-3, False),
        ("head", True, 1e-3, False)]
    pretrained = data["pretrained_weights"]
    assert pretrained["loaded"] == 37 and pretrained["complete"] is True
    assert sorted(pretrained["unused"]) == ["pooler.dense.bias", "pooler.dense.weight"]
    assert pretrained["missing"] == [] and pretrained["mismatched"] == []
    head_shapes = data["groups"][-1]["variable_shapes"]
    assert sorted(head_shapes.values()) == [[T], [2 * 16, T]]


def test_finetune_config_layer_decayed_rates_and_crf(tmp_path):
    # configs/finetune.flags (plus a CRF) on the tiny BERT, randomly initialised.
    _, report = report_for(
        dict(encoder_config=TINY_BERT, hidden_layers="last", bilstm_layers=0, head="crf"),
        dict(encoder_learning_rate=3e-5, layer_decay=0.9, head_learning_rate=1e-3,
             crf_learning_rate=1e-2))
    head, crf = H * T + T, T * T + 2 * T
    assert rows(report.text) == {
        "embeddings": (EMBEDDINGS, 5, "trainable", "2.43e-05"),
        "encoder_layer_0": (LAYER, LAYER_VARIABLES, "trainable", "2.7e-05"),
        "encoder_layer_1": (LAYER, LAYER_VARIABLES, "trainable", "3e-05"),
        "head": (head, 2, "trainable", "0.001"),
        "crf": (crf, 3, "trainable", "0.01"),
    }
    total = EMBEDDINGS + 2 * LAYER + head + crf
    assert report.data["totals"] == {"trainable": total, "frozen": 0, "all": total}
    assert report.data["encoder_frozen"] is False
    lines = report.text.splitlines()
    assert lines[-2] == "encoder trains (fine-tuning)"
    assert lines[-1] == ("pretrained weights: none (randomly initialised from the encoder "
                         "config)")


def test_embedding_encoder_and_a_frozen_head_group():
    _, report = report_for(
        dict(encoder="embedding", vocab_size=50, embedding_dim=8, bilstm_layers=1,
             bilstm_units=4, head="softmax", pretrained=None),
        dict(encoder="embedding", pretrained="", encoder_learning_rate=0.0,
             embeddings_learning_rate=0.1, head_learning_rate=1e-3, bilstm_learning_rate=0.0))
    assert rows(report.text) == {
        "embeddings": (50 * 8, 1, "trainable", "0.1"),
        "bilstm": (lstm(8, 4), 6, "frozen", "0"),
        "head": (2 * 4 * T + T, 2, "trainable", "0.001"),
    }
    assert report.text.splitlines()[-1] == ("pretrained weights: none (embedding encoder, "
                                            "randomly initialised)")


def test_missing_layer_is_named(tiny_pretrained, tmp_path):
    """A checkpoint with 2 layers loaded into a 3-layer config: layer 2 is named as missing."""
    import shutil

    directory = tmp_path / "deeper"
    shutil.copytree(tiny_pretrained, directory)
    config = json.loads((directory / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (directory / "config.json").write_text(json.dumps(config))
    info = load_transformer(pretrained=str(directory)).loading_info
    assert info.summary() == ("pretrained weights: 37 loaded, pooler (2) unused, 16 missing "
                              "(encoder layer 2 (16); randomly initialised)")
    assert not info.complete


def test_a_group_without_a_rate_is_an_error():
    model = build_tagger(TaggerConfig(label_map=LABEL_MAP, encoder_config=TINY_BERT,
                                      bilstm_layers=0))
    with pytest.raises(ValueError, match=r"no peak learning rate for group\(s\) \['head'\]"):
        variables_report.build_report(model, model.variable_groups(),
                                      {"embeddings": 0.0, "encoder_layer_0": 0.0,
                                       "encoder_layer_1": 0.0})
