"""Per-group learning rates, schedules and the AdamW update, checked against hand computation."""

import numpy as np
import pytest
import tensorflow as tf

from trainer import optimization
from trainer.config import TrainConfig

FILES = dict(train_file="a", dev_file="b", test_file="c", tokenizer="t", pretrained="p")


def make_config(**changes):
    return TrainConfig(**{**FILES, **changes})


def test_schedule_warmup_then_linear_and_cosine_decay():
    linear = optimization.WarmupDecaySchedule(1e-3, warmup_steps=10, total_steps=110)
    assert [round(float(linear(s)), 8) for s in (0, 5, 10, 60, 110, 200)] == [
        0.0, 5e-4, 1e-3, 5e-4, 0.0, 0.0]
    cosine = optimization.WarmupDecaySchedule(1.0, warmup_steps=0, total_steps=100,
                                              decay="cosine", end_ratio=0.1)
    assert float(cosine(0)) == pytest.approx(1.0)
    assert float(cosine(50)) == pytest.approx(0.1 + 0.9 * 0.5)
    assert float(cosine(100)) == pytest.approx(0.1)


def test_peak_rates_layer_decay_and_defaults():
    config = make_config(encoder_learning_rate=4e-5, layer_decay=0.5, head_learning_rate=1e-3,
                         crf_learning_rate=1e-2)
    groups = ["embeddings", "encoder_layer_0", "encoder_layer_1", "bilstm", "head", "crf"]
    rates = optimization.peak_learning_rates(config, groups, groups[:3])
    assert rates == pytest.approx({"embeddings": 1e-5, "encoder_layer_0": 2e-5,
                                   "encoder_layer_1": 4e-5, "bilstm": 1e-3, "head": 1e-3,
                                   "crf": 1e-2})


def test_weight_decay_skips_layer_norm_and_bias():
    assert optimization.uses_weight_decay("encoder/layer_._0/attention/output/dense/kernel:0")
    assert not optimization.uses_weight_decay("encoder/layer_._0/output/LayerNorm/gamma:0")
    assert not optimization.uses_weight_decay("head/dense/bias:0")
    assert not optimization.uses_weight_decay("bias:0")


def test_grouped_adamw_matches_reference_and_freezes_zero_rate_groups():
    config = make_config(encoder_learning_rate=0.0, head_learning_rate=0.1, weight_decay=0.5,
                         clip_norm=0.0, decay="constant")
    kernel = tf.Variable([[1.0, -2.0]], name="head/kernel")
    bias = tf.Variable([0.5], name="head/bias")
    frozen = tf.Variable([3.0], name="embeddings/weight")
    groups = {"embeddings": [frozen], "head": [kernel, bias]}
    plan = optimization.build_optimization(config, groups, ["embeddings"], total_steps=10)
    assert plan.frozen_groups == ["embeddings"] and plan.encoder_frozen
    assert [v.name for v in plan.trainable_variables] == [kernel.name, bias.name]

    def reference(w, grads, decay):
        m = np.zeros_like(w)
        v = np.zeros_like(w)
        for t, g in enumerate(grads, start=1):
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            if decay:
                w = w - 0.1 * 0.5 * w
            w = w - 0.1 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-6)
        return w

    kernel_grads = [np.array([[0.3, -0.1]]), np.array([[0.2, 0.4]])]
    bias_grads = [np.array([1.0]), np.array([-0.5])]
    for kg, bg in zip(kernel_grads, bias_grads):
        plan.optimizer.apply_gradients([(tf.constant(kg, tf.float32), kernel),
                                        (tf.constant(bg, tf.float32), bias)])
    expected_kernel = reference(np.array([[1.0, -2.0]]), kernel_grads, True)
    np.testing.assert_allclose(kernel.numpy(), expected_kernel, rtol=1e-5)
    np.testing.assert_allclose(bias.numpy(), reference(np.array([0.5]), bias_grads, False),
                               rtol=1e-5)
    assert frozen.numpy()[0] == 3.0
    assert plan.learning_rates() == pytest.approx({"head": 0.1})


def test_compact_rows_sum_duplicates_into_the_chosen_rows():
    rows = optimization.CompactRows([9, 3, 7, 3], vocab_size=10)
    assert rows.rows.numpy().tolist() == [3, 7, 9]
    gradient = tf.IndexedSlices(tf.constant([[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]]),
                                tf.constant([7, 3, 7]), tf.constant([10, 2]))
    assert rows.compact(gradient).numpy().tolist() == [[2, 2], [5, 5], [0, 0]]
    dense = tf.reshape(tf.range(20, dtype=tf.float32), [10, 2])
    assert rows.compact(dense).numpy().tolist() == [[6, 7], [14, 15], [18, 19]]
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the train split"):
        rows.compact(tf.IndexedSlices(tf.ones([1, 2]), tf.constant([4]), tf.constant([10, 2])))


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_row_compact_adamw_equals_dense_adamw(weight_decay):
    """Same updates as dense AdamW on the rows that get gradients; rows of ids never seen do not
    move at all (dense AdamW would only weight-decay them)."""
    seen = [1, 4, 5, 8]
    config = make_config(encoder_learning_rate=1e-2, head_learning_rate=1e-2,
                         weight_decay=weight_decay, clip_norm=0.5, warmup_steps=0)
    initial = np.random.default_rng(0).normal(size=[10, 3]).astype(np.float32)
    results = {}
    for compact in (False, True):
        table = tf.Variable(initial, name="word_embeddings/weight")
        plan = optimization.build_optimization(
            config, {"embeddings": [table]}, ["embeddings"], total_steps=10,
            token_embeddings=[table], token_ids=seen if compact else None)
        assert bool(plan.compact_rows) == compact
        rng = np.random.default_rng(1)
        for _ in range(4):
            ids = rng.choice(seen, size=6)  # with repeats
            gradient = tf.IndexedSlices(tf.constant(rng.normal(size=[6, 3]), tf.float32),
                                        tf.constant(ids), tf.constant([10, 3]))
            [dense] = plan.dense_gradients([gradient])
            assert dense.shape == ([4, 3] if compact else [10, 3])
            plan.optimizer.apply_gradients([(dense, table)], skip_gradients_aggregation=True)
        results[compact] = table.numpy()
        slots = [v for v in plan.optimizer.variables if v.shape.rank == 2]
        assert all(v.shape == ([4, 3] if compact else [10, 3]) for v in slots)
    np.testing.assert_allclose(results[True][seen], results[False][seen], rtol=1e-6, atol=1e-7)
    unseen = [0, 2, 3, 6, 7, 9]
    np.testing.assert_array_equal(results[True][unseen], initial[unseen])
    if weight_decay:
        assert not np.allclose(results[False][unseen], initial[unseen])
    else:
        np.testing.assert_array_equal(results[False][unseen], initial[unseen])
