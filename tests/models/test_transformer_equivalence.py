"""models/transformer/ computes what transformers 4.54.1's TF models compute.

The references (tests/fixtures/encoder_reference/, made by its make_references.py with
transformers 4.54.1) hold every hidden state and the gradients of a tagging loss for tiny random
BERT, RoBERTa and ELECTRA checkpoints and for the shipped multilingual-e5-small-zh. Here the
project's encoder, loaded from the same files (PyTorch-named model.safetensors and TF-named
tf_model.h5), must give the same numbers in float32: hidden states to 1e-5 (absolute), gradients
to a relative 1e-4. The shipped encoder is required: without it these tests fail, never skip.
"""

import shutil

import numpy as np
import pytest

import models  # noqa: F401  (chooses Keras 2 for tf.keras: models/__init__.py)
import tensorflow as tf  # noqa: E402

from models.transformer import (  # noqa: E402
    TransformerEncoder, load_transformer, save_pretrained, weight_slots)
from tests.conftest import find_shared_dir  # noqa: E402
from tests.fixtures.encoder_reference import (  # noqa: E402
    E5_REFERENCE, FIXTURE_DIR, TINY_MODELS, probe, tagging_loss)

HIDDEN_ATOL = 1e-5
GRADIENT_RTOL = 1e-4
WEIGHT_FILES = ("model.safetensors", "tf_model.h5")
# The key bias adds q . b_k to every score of a query alike, which the softmax ignores: its true
# gradient is 0, and both frameworks give float32 noise (~1e-8 here) that cannot be compared.
KEY_BIAS = "attention.self.key.bias"
NOISE = 1e-5  # the key bias's "gradient", relative to the same layer's query bias gradient


def reference(name):
    return dict(np.load(FIXTURE_DIR / name / "reference.npz"))


def checkpoint_with(tmp_path, name, weight_file):
    """A directory with the fixture's config.json and only `weight_file` of its two."""
    directory = tmp_path / f"{name}-{weight_file}"
    directory.mkdir()
    for file in ("config.json", weight_file):
        shutil.copy(FIXTURE_DIR / name / file, directory / file)
    return directory


def forward_and_gradients(backbone, arrays):
    """(hidden states [layers + 1, batch, seq, hidden], loss, {PyTorch name: gradient in
    PyTorch layout}) of the reference's tagging loss, without dropout."""
    slots = weight_slots(backbone)
    variables = list({id(slot.variable): slot.variable for slot in slots}.values())
    with tf.GradientTape() as tape:
        hidden_states = backbone(tf.constant(arrays["input_ids"]),
                                 tf.constant(arrays["attention_mask"]),
                                 training=False)["hidden_states"]
        loss = tagging_loss(hidden_states[-1], arrays["tag_projection"], arrays["label_ids"],
                            arrays["attention_mask"])
    gradients = {id(v): tf.convert_to_tensor(g).numpy()  # IndexedSlices for the word table
                 for v, g in zip(variables, tape.gradient(loss, variables))}
    by_name = {slot.pytorch_name: slot.extract(gradients[id(slot.variable)], pytorch=True)
               for slot in slots}
    return np.stack([h.numpy() for h in hidden_states]), float(loss), by_name


@pytest.fixture(scope="module")
def shipped_encoder_dir():
    """The shipped encoder; its absence is a failure (these tests are the encoder's acceptance)."""
    shared = find_shared_dir()
    directory = None if shared is None else shared / "models" / "multilingual-e5-small-zh"
    if directory is None or not (directory / "tf_model.h5").is_file():
        pytest.fail("the shipped encoder models/multilingual-e5-small-zh (tf_model.h5) was not "
                    "found in the shared directory ($TAGGER_SHARED_DIR or ../shared beside the "
                    "repository): the encoder equivalence tests need it")
    return directory


@pytest.mark.parametrize("weight_file", WEIGHT_FILES)
@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_checkpoint_matches_transformers(tmp_path, name, weight_file):
    arrays = reference(name)
    backbone = load_transformer(pretrained=str(checkpoint_with(tmp_path, name, weight_file)))
    assert backbone.loading_info.complete
    hidden_states, loss, gradients = forward_and_gradients(backbone, arrays)

    np.testing.assert_allclose(hidden_states, arrays["hidden_states"], rtol=0, atol=HIDDEN_ATOL)
    np.testing.assert_allclose(loss, arrays["loss"], rtol=1e-6)
    expected = {key[len("grad/"):]: value for key, value in arrays.items()
                if key.startswith("grad/")}
    assert sorted(gradients) == sorted(expected)  # every weight, and the pooler's not
    for weight, gradient in gradients.items():
        if weight.endswith(KEY_BIAS):
            query = np.abs(expected[weight.replace(".key.", ".query.")]).max()
            assert np.abs(gradient).max() < NOISE * query, weight
            assert np.abs(expected[weight]).max() < NOISE * query, weight
            continue
        scale = np.abs(expected[weight]).max()
        np.testing.assert_allclose(gradient, expected[weight], rtol=GRADIENT_RTOL,
                                   atol=GRADIENT_RTOL * scale, err_msg=weight)


def test_xlm_roberta_is_roberta(tmp_path):
    """model_type "xlm-roberta" is RoBERTa's architecture (the shipped e5's tokenizer's kind)."""
    import json

    directory = checkpoint_with(tmp_path, "roberta", "model.safetensors")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(dict(config, model_type="xlm-roberta")))
    arrays = reference("roberta")
    backbone = load_transformer(pretrained=str(directory))
    hidden_states = backbone(arrays["input_ids"], arrays["attention_mask"])["hidden_states"]
    np.testing.assert_allclose(np.stack(hidden_states), arrays["hidden_states"], rtol=0,
                               atol=HIDDEN_ATOL)


@pytest.fixture(scope="module")
def e5_from_h5(shipped_encoder_dir):
    return load_transformer(pretrained=str(shipped_encoder_dir))


@pytest.fixture(scope="module")
def e5_safetensors_dir(shipped_encoder_dir, e5_from_h5, tmp_path_factory):
    """The same weights written as a PyTorch-named model.safetensors (the hub's format), the
    pooler added from the h5 as the hub's file has it, and loaded from there.
    (save_pretrained's names are checked against transformers' in test_transformer_loading.py.)
    """
    import h5py
    from safetensors.numpy import load_file, save_file

    directory = tmp_path_factory.mktemp("e5-safetensors")
    save_pretrained(e5_from_h5, directory)
    tensors = load_file(directory / "model.safetensors")
    with h5py.File(shipped_encoder_dir / "tf_model.h5", "r") as h5:
        pooler = h5["bert/tf_bert_model/bert/pooler/dense"]
        tensors["pooler.dense.weight"] = np.ascontiguousarray(pooler["kernel:0"][()].T)
        tensors["pooler.dense.bias"] = pooler["bias:0"][()]
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    return directory


@pytest.fixture(scope="module")
def e5_from_safetensors(e5_safetensors_dir):
    return load_transformer(pretrained=str(e5_safetensors_dir))


@pytest.mark.slow
@pytest.mark.parametrize("source", ["e5_from_h5", "e5_from_safetensors"])
def test_shipped_encoder_matches_transformers(source, request):
    backbone = request.getfixturevalue(source)
    assert backbone.loading_info.summary() == (
        "pretrained weights: 197 loaded, pooler (2) unused, 0 missing")
    arrays = dict(np.load(E5_REFERENCE))
    hidden_states, loss, gradients = forward_and_gradients(backbone, arrays)

    np.testing.assert_allclose(hidden_states, arrays["hidden_states"], rtol=0, atol=HIDDEN_ATOL)
    np.testing.assert_allclose(loss, arrays["loss"], rtol=1e-5)
    assert len(gradients) == 197
    for weight, gradient in gradients.items():
        norm = float(arrays[f"grad_norm/{weight}"])
        if weight.endswith(KEY_BIAS):
            query = float(arrays[f"grad_norm/{weight.replace('.key.', '.query.')}"])
            assert np.linalg.norm(gradient) < NOISE * query and norm < NOISE * query, weight
            continue
        # A wrong mapping (Q for K, a missing transpose, gamma for beta) changes these by far
        # more than float32 rounding, which moves them by ~1e-6 relative.
        np.testing.assert_allclose(np.linalg.norm(gradient.astype(np.float64)), norm,
                                   rtol=GRADIENT_RTOL, err_msg=weight)
        # The probe's dot product can be small beside the norm: its tolerance is the norm's.
        probe_vector = probe(weight, gradient.shape).astype(np.float64).ravel()
        dot = float(gradient.astype(np.float64).ravel() @ probe_vector)
        typical = norm * np.linalg.norm(probe_vector) / np.sqrt(probe_vector.size)
        assert abs(dot - float(arrays[f"grad_probe/{weight}"])) <= GRADIENT_RTOL * typical, weight
        if f"grad/{weight}" in arrays:
            expected = arrays[f"grad/{weight}"]
        elif f"grad_rows/{weight}" in arrays:
            rows = arrays[f"grad_row_ids/{weight}"]
            expected = arrays[f"grad_rows/{weight}"]
            gradient = gradient[rows]
            # No gradient outside those rows: they hold the whole norm.
            np.testing.assert_allclose(np.linalg.norm(gradient), norm, rtol=GRADIENT_RTOL)
        else:
            continue
        np.testing.assert_allclose(gradient, expected, rtol=GRADIENT_RTOL,
                                   atol=GRADIENT_RTOL * np.abs(expected).max(), err_msg=weight)


@pytest.mark.slow
def test_shipped_encoder_in_bfloat16_mixed_precision(e5_safetensors_dir):
    """Under mixed_bfloat16 the variables stay float32, the hidden states are bfloat16 and
    close to float32's."""
    arrays = dict(np.load(E5_REFERENCE))
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        backbone = load_transformer(pretrained=str(e5_safetensors_dir))
        encoder = TransformerEncoder(backbone, num_layers_used=2)
        hidden_states = tf.function(encoder)(
            tf.constant(arrays["input_ids"]), tf.constant(arrays["attention_mask"]),
            training=False)["hidden_states"]
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert {v.dtype for v in backbone.weights} == {tf.float32}
    assert [h.dtype for h in hidden_states] == [tf.bfloat16, tf.bfloat16]
    for ours, theirs in zip(hidden_states, arrays["hidden_states"][-2:]):
        ours = ours.numpy().astype(np.float32)
        # bfloat16 keeps 8 bits of mantissa: 12 layers move the states by a few percent of
        # their spread; a broken mask or a float16-style overflow moves them by far more.
        error = np.abs(ours - theirs)
        assert error.mean() < 0.03 * np.abs(theirs).mean(), error.mean()
        cosine = np.sum(ours * theirs, -1) / (
            np.linalg.norm(ours, axis=-1) * np.linalg.norm(theirs, axis=-1))
        assert cosine.min() > 0.99, cosine.min()


def test_exact_gelu_is_tensorflows_gelu_and_its_gradient():
    """The written-out erf GELU (faster on CPU, models/transformer/block.py) is tf.nn.gelu's
    exact GELU, values and gradients, over the range activations take, tails included."""
    from models.transformer.block import exact_gelu

    x = tf.constant(np.linspace(-12.0, 12.0, 4801), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, reference = exact_gelu(x), tf.nn.gelu(x, approximate=False)
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(tape.gradient(ours, x).numpy(),
                               tape.gradient(reference, x).numpy(), rtol=0, atol=2e-6)
    assert abs(float(exact_gelu(tf.constant(1.0))) - 0.8413447) < 1e-6  # 1 * Phi(1)
