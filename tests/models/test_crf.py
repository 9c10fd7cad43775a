"""CRF checked against brute-force enumeration of every tag path (eager, tf.function, XLA)."""

import itertools

import numpy as np
import pytest

import models  # noqa: F401  (chooses Keras 2 for tf.keras: models/__init__.py)
import tensorflow as tf  # noqa: E402

from data_pipeline.tags import iob2_allowed_transitions  # noqa: E402
from models import crf  # noqa: E402

LABEL_MAP = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def _random_case(seed, batch=6, seq_len=5, num_tags=3, holes=True):
    """Random potentials/transitions and a mask with mixed lengths, holes and one empty row."""
    rng = np.random.default_rng(seed)
    potentials = rng.normal(size=[batch, seq_len, num_tags]).astype(np.float32) * 2
    transitions = rng.normal(size=[num_tags, num_tags]).astype(np.float32)
    start = rng.normal(size=[num_tags]).astype(np.float32)
    end = rng.normal(size=[num_tags]).astype(np.float32)
    lengths = rng.integers(1, seq_len + 1, size=batch)
    mask = np.arange(seq_len)[None, :] < lengths[:, None]
    if holes:
        mask &= rng.random([batch, seq_len]) > 0.3
    mask[0] = False  # a row with no labelled position at all
    mask[1] = True  # a full row
    return potentials, mask, transitions, start, end


def _path_score(unary, path, transitions, start, end):
    score = start[path[0]] + end[path[-1]] + sum(unary[i, t] for i, t in enumerate(path))
    return score + sum(transitions[a, b] for a, b in zip(path[:-1], path[1:]))


def _brute_force(potentials, mask, transitions, start, end):
    """Returns (log_norm [B], best_path list, best_score [B]) in float64 by enumeration."""
    log_norms, best_paths, best_scores = [], [], []
    num_tags = potentials.shape[2]
    for row, row_mask in zip(potentials.astype(np.float64), mask):
        unary = row[row_mask]  # labelled positions only: holes are skipped
        if len(unary) == 0:
            log_norms.append(0.0)
            best_paths.append(())
            best_scores.append(0.0)
            continue
        scores = {path: _path_score(unary, path, transitions, start, end)
                  for path in itertools.product(range(num_tags), repeat=len(unary))}
        values = np.array(list(scores.values()))
        log_norms.append(np.log(np.sum(np.exp(values - values.max()))) + values.max())
        best = max(scores, key=scores.get)
        best_paths.append(best)
        best_scores.append(scores[best])
    return np.array(log_norms), best_paths, np.array(best_scores)


def _modes():
    return {
        "eager": lambda fn: fn,
        "tf_function": lambda fn: tf.function(fn),
        "jit_compile": lambda fn: tf.function(fn, jit_compile=True),
    }


@pytest.mark.parametrize("mode", list(_modes()))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_likelihood_matches_brute_force(mode, seed):
    potentials, mask, transitions, start, end = _random_case(seed)
    rng = np.random.default_rng(100 + seed)
    tag_ids = rng.integers(0, 3, size=mask.shape).astype(np.int32)
    tag_ids[~mask] = -100  # ignore ids at unlabelled positions must be harmless

    fn = _modes()[mode](crf.crf_log_likelihood)
    log_likelihood = fn(tf.constant(potentials), tf.constant(tag_ids), tf.constant(mask),
                        tf.constant(transitions), tf.constant(start), tf.constant(end)).numpy()

    log_norm, _, _ = _brute_force(potentials, mask, transitions, start, end)
    expected = []
    for b in range(len(mask)):
        path = tag_ids[b][mask[b]]
        if len(path) == 0:
            expected.append(0.0)
            continue
        unary = potentials[b][mask[b]].astype(np.float64)
        expected.append(_path_score(unary, path, transitions, start, end) - log_norm[b])
    expected = np.array(expected)
    assert expected[0] == 0.0 and log_likelihood[0] == 0.0
    np.testing.assert_allclose(log_likelihood, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_less(log_likelihood, 1e-6)  # a log-probability


@pytest.mark.parametrize("mode", list(_modes()))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_norm_matches_brute_force(mode, seed):
    potentials, mask, transitions, start, end = _random_case(seed, num_tags=4, seq_len=4)
    fn = _modes()[mode](crf.crf_log_norm)
    log_norm = fn(potentials, mask, transitions, start, end).numpy()
    expected, _, _ = _brute_force(potentials, mask, transitions, start, end)
    np.testing.assert_allclose(log_norm, expected, rtol=1e-5)


@pytest.mark.parametrize("mode", list(_modes()))
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_viterbi_matches_brute_force_argmax(mode, seed):
    potentials, mask, transitions, start, end = _random_case(seed, batch=8)
    fn = _modes()[mode](crf.viterbi_decode)
    tags, scores = fn(potentials, mask, transitions, start, end)
    tags, scores = tags.numpy(), scores.numpy()
    _, best_paths, best_scores = _brute_force(potentials, mask, transitions, start, end)
    for b in range(len(mask)):
        assert tuple(tags[b][mask[b]]) == best_paths[b], b
        assert np.all(tags[b][~mask[b]] == 0)
    np.testing.assert_allclose(scores, best_scores, rtol=1e-5, atol=1e-6)


def test_holes_change_nothing_and_get_no_gradient():
    """Potentials at masked positions affect neither the likelihood nor its gradient."""
    potentials, mask, transitions, start, end = _random_case(7)
    tag_ids = np.where(mask, 1, -100).astype(np.int32)
    other = potentials.copy()
    other[~mask] = 50.0 * np.random.default_rng(0).normal(size=other[~mask].shape)

    def loss_and_grads(values):
        variables = [tf.Variable(transitions), tf.Variable(start), tf.Variable(end)]
        values = tf.constant(values)
        with tf.GradientTape() as tape:
            tape.watch(values)
            loss = -tf.reduce_sum(crf.crf_log_likelihood(values, tag_ids, mask, *variables))
        grads = tape.gradient(loss, [values] + variables)
        return loss.numpy(), [g.numpy() for g in grads]

    loss_a, grads_a = loss_and_grads(potentials)
    loss_b, grads_b = loss_and_grads(other)
    assert loss_a == loss_b
    for grad_a, grad_b in zip(grads_a, grads_b):
        np.testing.assert_array_equal(grad_a, grad_b)
    assert np.all(grads_a[0][~mask] == 0.0)
    assert np.any(grads_a[0][mask] != 0.0)


def test_gradient_of_log_norm_is_marginals():
    """d logZ / d potentials are the tag marginals: they sum to 1 at each labelled position."""
    potentials, mask, transitions, start, end = _random_case(3)
    values = tf.constant(potentials)
    with tf.GradientTape() as tape:
        tape.watch(values)
        log_norm = tf.reduce_sum(crf.crf_log_norm(values, mask, transitions, start, end))
    marginals = tape.gradient(log_norm, values).numpy()
    np.testing.assert_allclose(marginals.sum(-1), mask.astype(np.float32), atol=1e-5)


def _brute_force_marginals(potentials, mask, transitions, start, end):
    """p(y_t = k) float64 [B, T, K] by enumerating every path over the labelled positions."""
    marginals = np.zeros(potentials.shape)
    log_norm, _, _ = _brute_force(potentials, mask, transitions, start, end)
    num_tags = potentials.shape[2]
    for b, (row, row_mask) in enumerate(zip(potentials.astype(np.float64), mask)):
        positions = np.flatnonzero(row_mask)
        for path in itertools.product(range(num_tags), repeat=len(positions)):
            if not path:
                continue
            weight = np.exp(_path_score(row[positions], path, transitions, start, end)
                            - log_norm[b])
            marginals[b, positions, path] += weight
    return marginals


@pytest.mark.parametrize("mode", list(_modes()))
@pytest.mark.parametrize("seed", [0, 1])
def test_marginals_match_brute_force(mode, seed):
    """The CRF head's tag probabilities: exact marginals on labelled positions, 0 elsewhere
    (holes, padding, the empty row)."""
    potentials, mask, transitions, start, end = _random_case(seed, num_tags=3, seq_len=4)
    expected = _brute_force_marginals(potentials, mask, transitions, start, end)
    layer = crf.CRF(3)
    layer.set_weights([transitions, start, end])
    marginals = _modes()[mode](layer.marginals)(potentials, mask)
    assert marginals.dtype == tf.float32 and marginals.shape == potentials.shape
    np.testing.assert_allclose(marginals.numpy(), expected, rtol=1e-4, atol=1e-6)
    assert np.all(marginals.numpy()[~mask] == 0.0)


def _is_valid_iob2(tags):
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return False
        previous = tag
    return True


@pytest.mark.parametrize("mode", ["tf_function", "jit_compile"])
def test_constrained_viterbi_never_outputs_invalid_iob2(mode):
    layer = crf.CRF(len(LABEL_MAP), transition_constraints=iob2_allowed_transitions(LABEL_MAP))
    rng = np.random.default_rng(0)
    # Learned transitions that strongly favour invalid moves, and logits that favour I- tags.
    layer.transitions.assign(rng.normal(size=[5, 5]).astype(np.float32) * 5)
    layer.start_transitions.assign(np.array([0, 0, 20, 0, 20], np.float32))
    decode = _modes()[mode](layer.decode)
    unconstrained = crf.CRF(len(LABEL_MAP))
    unconstrained.set_weights(layer.get_weights())
    invalid_without_constraints = 0
    for trial in range(20):
        potentials = rng.normal(size=[64, 12, 5]).astype(np.float32) * 4
        potentials[..., 2] += 2.0
        potentials[..., 4] += 2.0
        mask = rng.random([64, 12]) > 0.2
        mask[:, 0] = rng.random(64) > 0.5
        tags, log_prob = decode(potentials, mask)
        tags = tags.numpy()
        assert np.all(np.isfinite(log_prob.numpy()))
        assert np.all(log_prob.numpy() <= 1e-5)
        for b in range(64):
            assert _is_valid_iob2([LABEL_MAP[t] for t in tags[b][mask[b]]]), (trial, b)
        free_tags, _ = unconstrained.decode(potentials, mask)
        invalid_without_constraints += sum(
            not _is_valid_iob2([LABEL_MAP[t] for t in free_tags.numpy()[b][mask[b]]])
            for b in range(64))
    # The property is not vacuous: the same inputs decoded without constraints break IOB2.
    assert invalid_without_constraints > 100


def test_crf_layer_computes_in_float32_from_half_precision_inputs():
    layer = crf.CRF(3)
    potentials, mask, transitions, start, end = _random_case(5)
    layer.set_weights([transitions, start, end])
    for dtype in (tf.float16, tf.bfloat16):
        half = tf.cast(potentials, dtype)
        log_likelihood = layer.log_likelihood(half, np.zeros(mask.shape, np.int32), mask)
        assert log_likelihood.dtype == tf.float32
        expected = crf.crf_log_likelihood(
            tf.cast(half, tf.float32), np.zeros(mask.shape, np.int32), mask,
            transitions, start, end)
        np.testing.assert_allclose(log_likelihood.numpy(), expected.numpy(), rtol=1e-6)


def test_crf_layer_loss_and_gradient_compile_with_xla():
    """With tf.Variable transitions (as in training), not only constants."""
    layer = crf.CRF(3)
    potentials, mask, transitions, start, end = _random_case(6)
    layer.set_weights([transitions, start, end])
    tag_ids = np.where(mask, 2, -100).astype(np.int32)

    def loss_and_grads(values):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_sum(layer.log_likelihood(values, tag_ids, mask))
        return loss, tape.gradient(loss, layer.trainable_variables)

    eager_loss, eager_grads = loss_and_grads(potentials)
    xla_loss, xla_grads = tf.function(loss_and_grads, jit_compile=True)(potentials)
    np.testing.assert_allclose(xla_loss, eager_loss, rtol=1e-5)
    for a, b in zip(xla_grads, eager_grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
