"""benchmarks/bench_bilstm.py times variants that compute what the shipped BiLSTM computes."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import bench_bilstm
from models.bilstm import MaskedBiLSTM


@pytest.mark.parametrize("variant", [bench_bilstm.block_bilstm, bench_bilstm.unrolled_bilstm])
def test_variants_give_the_scans_output_and_gradients(variant):
    rng = np.random.default_rng(3)
    lengths = np.array([7, 3, 5, 1])
    mask = tf.constant(np.arange(7)[None, :] < lengths[:, None])
    inputs = tf.constant(rng.normal(size=(4, 7, 6)).astype(np.float32))
    layer = MaskedBiLSTM(5)
    layer.build([None, None, 6])

    def scan(layer, inputs, mask):
        return layer(inputs, mask=mask)

    expected = scan(layer, inputs, mask)
    np.testing.assert_allclose(variant(layer, inputs, mask), expected, atol=1e-5)
    assert float(tf.reduce_max(tf.abs(expected))) > 0.05  # not all zeros
    want = bench_bilstm.step_function(layer, scan, mask)(inputs)
    got = bench_bilstm.step_function(layer, variant, mask)(inputs)
    for expected_gradient, gradient in zip(want, got):
        np.testing.assert_allclose(gradient, expected_gradient, atol=1e-4)
