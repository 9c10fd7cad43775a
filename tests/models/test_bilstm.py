"""MaskedBiLSTM computes what tf.keras's Bidirectional(LSTM) computes, and respects the mask."""

import numpy as np
import pytest

import models  # noqa: F401  (chooses Keras 2 for tf.keras: models/__init__.py)
import tensorflow as tf  # noqa: E402

from models.bilstm import MaskedBiLSTM  # noqa: E402


def _pair(units=5, features=3):
    ours = MaskedBiLSTM(units)
    ours.build([None, None, features])
    reference = tf.keras.layers.Bidirectional(tf.keras.layers.LSTM(units, return_sequences=True))
    reference(tf.zeros([1, 2, features]))
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=w.shape).astype(np.float32) * 0.5 for w in reference.weights]
    reference.set_weights(weights)
    # Keras order: forward (kernel, recurrent, bias), backward (kernel, recurrent, bias).
    ours.set_weights(weights)
    return ours, reference


@pytest.mark.parametrize("jit_compile", [False, True])
def test_matches_keras_bidirectional_lstm_with_right_padding(jit_compile):
    ours, reference = _pair()
    rng = np.random.default_rng(1)
    inputs = rng.normal(size=[3, 6, 3]).astype(np.float32)
    lengths = np.array([6, 4, 1])
    mask = np.arange(6)[None, :] < lengths[:, None]
    inputs[~mask] = 7.0  # padding garbage
    call = tf.function(ours.call, jit_compile=jit_compile) if jit_compile else ours
    got = call(tf.constant(inputs), mask=tf.constant(mask)).numpy()
    expected = reference(tf.constant(inputs), mask=tf.constant(mask)).numpy()
    assert got.shape == (3, 6, 10)
    np.testing.assert_allclose(got[mask], expected[mask], rtol=1e-5, atol=1e-6)
    assert np.all(got[~mask] == 0.0)
    full = ours(tf.constant(inputs)).numpy()
    np.testing.assert_allclose(full, reference(tf.constant(inputs)).numpy(), rtol=1e-5,
                               atol=1e-6)
    # The backward half at real steps of padded rows really differs without the mask.
    assert np.max(np.abs(full[1, :4, 5:] - got[1, :4, 5:])) > 1e-3


def test_forget_gate_bias_starts_at_one():
    layer = MaskedBiLSTM(4)
    layer.build([None, None, 2])
    np.testing.assert_array_equal(layer.forward_bias.numpy(), [0] * 4 + [1] * 4 + [0] * 8)
    assert len(layer.trainable_variables) == 6
