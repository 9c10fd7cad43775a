"""models/transformer/: the loading report, checkpoint files, configs, and the encoder's options
(hidden states kept, variable groups, dropout, tf.function), on the tiny reference checkpoints."""

import json
import shutil

import numpy as np
import pytest

import models  # noqa: F401  (chooses Keras 2 for tf.keras: models/__init__.py)
import tensorflow as tf  # noqa: E402

from models.pretrained_files import pretrained_directory_problem  # noqa: E402
from models.transformer import (  # noqa: E402
    CheckpointError, EncoderConfig, TransformerEncoder, load_transformer, save_pretrained)
from models.transformer.embeddings import position_ids  # noqa: E402
from tests.fixtures.encoder_reference import FIXTURE_DIR, TINY_MODELS  # noqa: E402

HIDDEN_ATOL = 1e-5
POOLER = "pretrained weights: 37 loaded, pooler (2) unused, 0 missing"


def reference(name):
    return dict(np.load(FIXTURE_DIR / name / "reference.npz"))


def checkpoint(tmp_path, name="bert", weight_file="model.safetensors", **config_changes):
    """A copy of a tiny fixture with one weight file and `config_changes` in its config.json."""
    directory = tmp_path / f"{name}-{weight_file}-{len(list(tmp_path.iterdir()))}"
    directory.mkdir()
    shutil.copy(FIXTURE_DIR / name / weight_file, directory / weight_file)
    config = json.loads((FIXTURE_DIR / name / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(dict(config, **config_changes)))
    return directory


def hidden_states(backbone, arrays, **kwargs):
    outputs = backbone(tf.constant(arrays["input_ids"]), tf.constant(arrays["attention_mask"]),
                       **kwargs)
    return np.stack([h.numpy() for h in outputs["hidden_states"]])


def load_tensors(directory):
    from safetensors.numpy import load_file

    return load_file(directory / "model.safetensors")


def save_tensors(tensors, path):
    from safetensors.numpy import save_file

    save_file(tensors, path, metadata={"format": "pt"})


# ---- the loading report --------------------------------------------------------------------

@pytest.mark.parametrize("weight_file, pooler_names", [
    ("model.safetensors", ("pooler.dense.bias", "pooler.dense.weight")),
    ("tf_model.h5", ("tf_bert_model/bert/pooler/dense/bias:0",
                     "tf_bert_model/bert/pooler/dense/kernel:0"))])
def test_the_pooler_is_unused_and_said_so(tmp_path, weight_file, pooler_names):
    info = load_transformer(pretrained=str(checkpoint(tmp_path, "bert", weight_file))).loading_info
    assert info.summary() == POOLER
    assert sorted(info.unused) == sorted(pooler_names)
    assert info.complete and info.loaded == 37
    assert info.to_json()["summary"] == POOLER


@pytest.mark.parametrize("weight_file, layer_2", [("model.safetensors", "encoder.layer.2."),
                                                  ("tf_model.h5", "encoder/layer_._2/")])
def test_a_layer_the_checkpoint_lacks_is_missing(tmp_path, weight_file, layer_2):
    directory = checkpoint(tmp_path, "bert", weight_file, num_hidden_layers=3)
    backbone = load_transformer(pretrained=str(directory))
    info = backbone.loading_info
    assert info.summary() == ("pretrained weights: 37 loaded, pooler (2) unused, 16 missing "
                              "(encoder layer 2 (16); randomly initialised)")
    assert len(info.missing) == 16 and all(name.startswith(layer_2) for name in info.missing)
    assert not info.complete
    # Layers 0 and 1 loaded: the hidden states before the random layer are the reference's.
    arrays = reference("bert")
    np.testing.assert_allclose(hidden_states(backbone, arrays)[:3], arrays["hidden_states"],
                               rtol=0, atol=HIDDEN_ATOL)


def test_a_weight_of_another_shape_is_mismatched_and_left_random(tmp_path):
    backbone = load_transformer(pretrained=str(checkpoint(tmp_path, "bert", vocab_size=120)))
    info = backbone.loading_info
    assert info.mismatched == (("embeddings.word_embeddings.weight", (99, 32), (120, 32)),)
    assert info.summary() == (
        "pretrained weights: 36 loaded, pooler (2) unused, 0 missing, 1 of another shape, "
        "randomly initialised (embeddings.word_embeddings.weight [99, 32] in the checkpoint, "
        "[120, 32] here)")
    table = backbone.embeddings.word_embeddings.numpy()
    assert not np.allclose(table[:99], load_tensors(FIXTURE_DIR / "bert")[
        "embeddings.word_embeddings.weight"])


def test_mismatched_kernels_are_reported_in_the_checkpoints_layout(tmp_path):
    """TF kernels are [in, out]; PyTorch weights [out, in]: each file's own shapes."""
    for weight_file, shape, wanted in [("tf_model.h5", (32, 37), (32, 40)),
                                       ("model.safetensors", (37, 32), (40, 32))]:
        directory = checkpoint(tmp_path, "bert", weight_file, intermediate_size=40)
        info = load_transformer(pretrained=str(directory)).loading_info
        kernels = [(found, expected) for name, found, expected in info.mismatched
                   if "intermediate" in name and len(found) == 2]
        assert kernels == [(shape, wanted)] * 2, info.mismatched
        assert len(info.mismatched) == 6  # per layer: intermediate kernel + bias, output kernel


def test_a_task_checkpoint_with_prefixed_and_old_names_loads(tmp_path):
    """A fine-tuned checkpoint (BertForTokenClassification) names its weights "bert.*", has a
    classifier, and old conversions call LayerNorm's weights gamma and beta."""
    tensors = {}
    for name, value in load_tensors(FIXTURE_DIR / "bert").items():
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta")
        tensors["bert." + name] = value
    tensors["classifier.weight"] = np.zeros([7, 32], np.float32)
    tensors["classifier.bias"] = np.zeros([7], np.float32)
    directory = checkpoint(tmp_path, "bert")
    save_tensors(tensors, directory / "model.safetensors")
    backbone = load_transformer(pretrained=str(directory))
    assert backbone.loading_info.summary() == (
        "pretrained weights: 37 loaded, pooler (2), classifier (2) unused, 0 missing")
    arrays = reference("bert")
    np.testing.assert_allclose(hidden_states(backbone, arrays), arrays["hidden_states"],
                               rtol=0, atol=HIDDEN_ATOL)


# ---- checkpoint files ----------------------------------------------------------------------

def test_pickled_weights_are_refused(tmp_path):
    directory = tmp_path / "bin-only"
    directory.mkdir()
    shutil.copy(FIXTURE_DIR / "bert" / "config.json", directory)
    (directory / "pytorch_model.bin").write_bytes(b"not opened")
    (directory / "extra.bin").write_bytes(b"not opened either")
    with pytest.raises(CheckpointError) as raised:
        load_transformer(pretrained=str(directory))
    # The loader's refusal is word for word the trainer's flag check (models/pretrained_files).
    assert str(raised.value) == pretrained_directory_problem(directory)
    assert str(raised.value).startswith(
        f"{directory} holds only PyTorch pickles (pytorch_model.bin, extra.bin), which are "
        f"refused: loading one runs any code it carries. Convert them to model.safetensors once")
    # Beside safetensors weights the pickle is ignored.
    shutil.copy(FIXTURE_DIR / "bert" / "model.safetensors", directory)
    assert load_transformer(pretrained=str(directory)).loading_info.summary() == POOLER


def test_no_weights_and_no_directory_are_clear_errors(tmp_path):
    directory = tmp_path / "config-only"
    directory.mkdir()
    shutil.copy(FIXTURE_DIR / "bert" / "config.json", directory)
    with pytest.raises(CheckpointError, match="config-only has no model.safetensors, "
                                              "model.safetensors.index.json or tf_model.h5"):
        load_transformer(pretrained=str(directory))
    with pytest.raises(CheckpointError, match="nowhere: not a checkpoint directory"):
        load_transformer(pretrained=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="exactly one of pretrained= .* or encoder_config="):
        load_transformer(pretrained=str(directory), encoder_config={"hidden_size": 32})


def test_a_hub_name_resolves_to_its_cached_snapshot(tmp_path, monkeypatch):
    """A hub name ("org/name") goes through huggingface_hub; offline, its cache answers."""
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--tiny-org--tiny-bert" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for file in ("config.json", "model.safetensors"):
        shutil.copy(FIXTURE_DIR / "bert" / file, snapshot / file)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    backbone = load_transformer(pretrained="tiny-org/tiny-bert")
    assert backbone.loading_info.source == "tiny-org/tiny-bert"
    assert backbone.loading_info.summary() == POOLER
    with pytest.raises(CheckpointError, match="tiny-org/other: not a local directory, nor a "
                                              "model the hub"):
        load_transformer(pretrained="tiny-org/other")
    # A run's export rebuilds the encoder from the hub name's config.json alone.
    rebuilt = load_transformer(encoder_config="tiny-org/tiny-bert")
    assert rebuilt.loading_info is None and rebuilt.config == backbone.config
    with pytest.raises(CheckpointError, match="tiny-org/other: not a local directory, nor a "
                                              "model the hub .* has a config.json"):
        load_transformer(encoder_config="tiny-org/other")


def test_sharded_safetensors_load_like_one_file(tmp_path):
    directory = checkpoint(tmp_path, "roberta")
    tensors = load_tensors(directory)
    (directory / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    for file, shard in shards.items():
        save_tensors({name: tensors[name] for name in shard}, directory / file)
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {name: file for file, shard in shards.items() for name in shard}}))
    backbone = load_transformer(pretrained=str(directory))
    assert backbone.loading_info.complete
    arrays = reference("roberta")
    np.testing.assert_allclose(hidden_states(backbone, arrays), arrays["hidden_states"],
                               rtol=0, atol=HIDDEN_ATOL)


def test_bfloat16_safetensors_are_widened_exactly(tmp_path):
    """numpy has no bfloat16; the loader reads its bits (the upper half of float32's)."""
    import struct

    tensors = load_tensors(FIXTURE_DIR / "electra")
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, value in sorted(tensors.items()):
        bits = (value.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(value.shape),
                        "data_offsets": [offset, offset + len(bits)]}
        chunks.append(bits)
        offset += len(bits)
    directory = checkpoint(tmp_path, "electra")
    encoded = json.dumps(header).encode()
    (directory / "model.safetensors").write_bytes(
        struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks))
    backbone = load_transformer(pretrained=str(directory))
    assert backbone.loading_info.complete
    truncated = (tensors["embeddings.word_embeddings.weight"].view(np.uint32)
                 & np.uint32(0xFFFF0000)).view(np.float32)
    np.testing.assert_array_equal(backbone.embeddings.word_embeddings.numpy(), truncated)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_save_pretrained_writes_what_transformers_writes(tmp_path, name):
    """Loaded from the TF-named h5 and saved: the PyTorch names and values transformers' own
    name map gave the fixture's model.safetensors (all but the pooler, which is not kept)."""
    backbone = load_transformer(pretrained=str(checkpoint(tmp_path, name, "tf_model.h5")))
    save_pretrained(backbone, tmp_path / "saved")
    saved, expected = load_tensors(tmp_path / "saved"), load_tensors(FIXTURE_DIR / name)
    assert sorted(saved) == sorted(n for n in expected if not n.startswith("pooler."))
    for weight, value in saved.items():
        np.testing.assert_array_equal(value, expected[weight], err_msg=weight)
    assert EncoderConfig.from_pretrained(tmp_path / "saved") == backbone.config


# ---- configs -------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"model_type": "gpt2"}, r"model_type 'gpt2' is not supported; expected one of"),
    ({"position_embedding_type": "relative_key"}, r"position_embedding_type='relative_key'"),
    ({"hidden_act": "mish"}, r"hidden_act='mish' is not supported"),
    ({"num_attention_heads": 5}, r"hidden_size=32 is not a multiple of num_attention_heads=5"),
    ({"embedding_size": 16}, r"embedding_size=16 differs from hidden_size=32"),
    ({"model_type": "roberta", "pad_token_id": None}, r"model_type 'roberta' needs a pad")])
def test_bad_configs_name_the_file_and_the_value(tmp_path, changes, message):
    directory = checkpoint(tmp_path, "bert", **changes)
    with pytest.raises(ValueError, match=f"config.json: {message}"):
        load_transformer(pretrained=str(directory))


def test_random_initialisation_from_a_dict_or_a_directory():
    values = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=37, vocab_size=60, max_position_embeddings=64)
    backbone = load_transformer(encoder_config=values)
    assert backbone.loading_info is None and backbone.config.model_type == "bert"
    assert backbone.embeddings.word_embeddings.shape == (60, 32)
    qkv = backbone.blocks[0].attention.qkv
    assert qkv.kernel.shape == (32, 96) and qkv.bias.shape == (96,)
    kernel = qkv.kernel.numpy()
    assert np.abs(kernel).max() <= 2 * 0.02 and 0.01 < kernel.std() < 0.02  # truncated normal
    assert np.all(qkv.bias.numpy() == 0)
    np.testing.assert_array_equal(backbone.blocks[1].output_layer_norm.gamma.numpy(), 1.0)
    from_directory = load_transformer(encoder_config=str(FIXTURE_DIR / "electra"))
    assert from_directory.loading_info is None
    assert from_directory.embeddings_project.kernel.shape == (16, 32)


# ---- the encoder's options -----------------------------------------------------------------

def test_roberta_position_ids_count_real_tokens_after_padding():
    ids = tf.constant([[5, 9, 7], [5, 9, 1], [5, 1, 9]])
    np.testing.assert_array_equal(position_ids(ids, 1), [[2, 3, 4], [2, 3, 1], [2, 1, 3]])


@pytest.mark.parametrize("name, embeddings_variables", [("bert", 5), ("electra", 7)])
def test_only_the_last_hidden_states_are_returned_and_variables_grouped(
        tmp_path, name, embeddings_variables):
    backbone = load_transformer(pretrained=str(checkpoint(tmp_path, name)))
    encoder = TransformerEncoder(backbone, num_layers_used=2)
    arrays = reference(name)
    outputs = encoder(arrays["input_ids"], arrays["attention_mask"], training=False)
    assert len(outputs["hidden_states"]) == 2
    np.testing.assert_allclose(np.stack(outputs["hidden_states"]), arrays["hidden_states"][-2:],
                               rtol=0, atol=HIDDEN_ATOL)
    groups = encoder.variable_groups()
    assert list(groups) == ["embeddings", "encoder_layer_0", "encoder_layer_1"]
    assert len(groups["embeddings"]) == embeddings_variables
    assert [len(groups[f"encoder_layer_{i}"]) for i in range(2)] == [12, 12]
    grouped = [id(v) for variables in groups.values() for v in variables]
    assert sorted(grouped) == sorted(id(v) for v in encoder.trainable_variables)
    with pytest.raises(ValueError, match="num_hidden_layers_used=4 but this encoder has 3"):
        TransformerEncoder(backbone, num_layers_used=4)


def test_dropout_follows_training_and_tf_function_matches_eager(tmp_path):
    arrays = reference("roberta")
    backbone = load_transformer(pretrained=str(checkpoint(tmp_path, "roberta")))
    inference = hidden_states(backbone, arrays, training=False)
    first = hidden_states(backbone, arrays, training=True)
    second = hidden_states(backbone, arrays, training=True)
    assert np.abs(first - inference).max() > 0.1 and np.abs(first - second).max() > 0.1
    compiled = tf.function(lambda ids, mask: backbone(ids, mask, training=False))
    outputs = compiled(tf.constant(arrays["input_ids"]), tf.constant(arrays["attention_mask"]))
    np.testing.assert_allclose(np.stack(outputs["hidden_states"]), arrays["hidden_states"],
                               rtol=0, atol=HIDDEN_ATOL)
    quiet = load_transformer(pretrained=str(checkpoint(
        tmp_path, "roberta", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)))
    np.testing.assert_allclose(hidden_states(quiet, arrays, training=True), inference,
                               rtol=0, atol=1e-6)
