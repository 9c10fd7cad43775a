"""Tagger: shapes, hidden-layer combination, masking, variable groups, mixed precision, XLA.

All on a tiny random BERT (2 layers, hidden 32) so the file runs in well under a minute.
"""

import numpy as np
import pytest

import models  # noqa: F401  (chooses Keras 2 for tf.keras: models/__init__.py)
import tensorflow as tf  # noqa: E402

from data_pipeline.tags import iob2_allowed_transitions  # noqa: E402
from models import Tagger, TaggerConfig, build_tagger  # noqa: E402
from models.encoders import HiddenLayerCombiner  # noqa: E402

LABEL_MAP = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
IGNORE = -100
VOCAB = 60
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=64)
NO_DROPOUT_BERT = dict(TINY_BERT, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_config(**overrides):
    values = dict(encoder_config=TINY_BERT, label_map=LABEL_MAP, bilstm_units=8)
    values.update(overrides)
    return TaggerConfig(**values)


def build(config):
    """build_tagger with the CRF masks the trainer passes (ignored by a softmax head)."""
    return build_tagger(config, transition_constraints=iob2_allowed_transitions(config.label_map))


def make_batch(seed=0, lengths=(8, 5, 3), seq_len=8):
    """Batch with padding, [CLS]/[SEP]-like ignored ends and a sub-token hole in row 0."""
    rng = np.random.default_rng(seed)
    batch = len(lengths)
    attention_mask = (np.arange(seq_len)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
    input_ids = rng.integers(2, VOCAB, size=[batch, seq_len]).astype(np.int32)
    input_ids[attention_mask == 0] = 0
    label_ids = rng.integers(0, len(LABEL_MAP), size=[batch, seq_len]).astype(np.int32)
    label_ids[attention_mask == 0] = IGNORE
    label_ids[:, 0] = IGNORE
    for b, length in enumerate(lengths):
        label_ids[b, length - 1] = IGNORE
    label_ids[0, 3] = IGNORE  # a non-first word piece: a hole inside the sentence
    return input_ids, attention_mask, label_ids


def grads_as_arrays(grads):
    return [tf.convert_to_tensor(g).numpy() for g in grads]


@pytest.fixture
def restore_policy():
    yield
    tf.keras.mixed_precision.set_global_policy("float32")


# ---- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    (dict(head="crff"), "head='crff' is invalid: expected one of softmax|crf"),
    (dict(hidden_layers="sum"), "hidden_layers='sum'"),
    (dict(encoder_config=None), "exactly one of pretrained"),
    (dict(pretrained="some/dir"), "exactly one of pretrained"),
    (dict(num_tags=7), "label_map has 5 tags but num_tags=7"),
    (dict(head="crf", label_map=None, num_tags=5), "needs label_map"),
    (dict(dropout=1.0), r"dropout=1.0 is invalid: expected a fraction in \[0, 1\)"),
    (dict(bilstm_layers=-1), "bilstm_layers=-1 is invalid: expected a number >= 0"),
])
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_a_constrained_crf_needs_masks_that_fit_its_tags():
    with pytest.raises(ValueError, match="needs transition_constraints"):
        build_tagger(tiny_config(head="crf"))
    with pytest.raises(ValueError, match=r"transition_constraints have shapes \(3, 3\)"):
        build_tagger(tiny_config(head="crf"),
                     transition_constraints=iob2_allowed_transitions(LABEL_MAP[:3]))
    # What the trainer does with a label map that is not IOB2 (TaggerConfig parses no tags).
    with pytest.raises(ValueError, match="not IOB2"):
        iob2_allowed_transitions(["O", "B-X", "X"])
    assert build(tiny_config(head="crf")).crf.constrained
    free = build_tagger(tiny_config(head="crf", crf_constrain_transitions=False))
    assert not free.crf.constrained


def test_config_round_trips_through_dict():
    config = tiny_config(head="crf", hidden_layers="concat", num_hidden_layers_used=2)
    assert TaggerConfig.from_dict(config.to_dict()) == config
    assert config.num_tags == len(LABEL_MAP)
    with pytest.raises(ValueError, match="unknown TaggerConfig keys"):
        TaggerConfig.from_dict(dict(config.to_dict(), bogus=1))


def test_too_many_hidden_layers_is_rejected_at_build():
    with pytest.raises(ValueError, match="num_hidden_layers_used=4 but this encoder has 3"):
        build(tiny_config(hidden_layers="concat", num_hidden_layers_used=4))


# ---- forward, combination of hidden layers ----------------------------------------------------


def test_hidden_layer_combiner_values():
    rng = np.random.default_rng(0)
    layers = [tf.constant(rng.normal(size=[2, 3, 4]).astype(np.float32)) for _ in range(3)]
    np.testing.assert_array_equal(HiddenLayerCombiner("last", 3)(layers[-1:]), layers[-1])
    concat = HiddenLayerCombiner("concat", 3)(layers).numpy()
    assert concat.shape == (2, 3, 12)
    np.testing.assert_array_equal(concat[..., 4:8], layers[1])
    np.testing.assert_allclose(HiddenLayerCombiner("mean", 3)(layers),
                               (layers[0] + layers[1] + layers[2]) / 3, rtol=1e-6)
    mix = HiddenLayerCombiner("scalar_mix", 3)
    mix(layers)
    np.testing.assert_allclose(mix(layers), np.mean(layers, axis=0), rtol=1e-5, atol=1e-6)
    mix.mix_weights.assign(np.log([1.0, 2.0, 5.0]).astype(np.float32))
    mix.gamma.assign(3.0)
    expected = 3.0 * (0.125 * layers[0] + 0.25 * layers[1] + 0.625 * layers[2])
    np.testing.assert_allclose(mix(layers), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expects 3 hidden layers, got 2"):
        mix(layers[:2])


@pytest.mark.parametrize("mode, used, features", [
    ("last", 4, 32), ("concat", 3, 96), ("mean", 2, 32), ("scalar_mix", 3, 32)])
def test_hidden_layer_modes_in_the_model(mode, used, features):
    model = build(tiny_config(hidden_layers=mode, num_hidden_layers_used=used,
                              encoder_config=NO_DROPOUT_BERT))
    input_ids, attention_mask, _ = make_batch()
    encoded = model.encode(input_ids, attention_mask, training=False)
    reference = model.encoder.transformer(input_ids, attention_mask)["hidden_states"]  # all
    n = 1 if mode == "last" else used
    assert len(encoded["hidden_states"]) == n
    for ours, theirs in zip(encoded["hidden_states"], reference[-n:]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert model.classifier.kernel.shape == (features, len(LABEL_MAP))
    logits = model(dict(input_ids=input_ids, attention_mask=attention_mask))
    assert logits.shape == (3, 8, len(LABEL_MAP)) and logits.dtype == tf.float32
    np.testing.assert_allclose(model.tag(encoded, attention_mask), logits, rtol=1e-6)
    assert ("layer_mix" in model.variable_groups()) == (mode == "scalar_mix")


# ---- masking --------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["softmax", "crf"])
@pytest.mark.parametrize("bilstm_layers", [0, 1])
def test_masked_positions_change_neither_loss_nor_gradients(head, bilstm_layers):
    tf.keras.utils.set_random_seed(0)
    model = build(tiny_config(
        encoder_config=NO_DROPOUT_BERT, head=head, bilstm_layers=bilstm_layers,
        hidden_layers="scalar_mix", num_hidden_layers_used=2, dropout=0.0,
        bilstm_dropout=0.0))
    input_ids, attention_mask, label_ids = make_batch()
    counted = label_ids != IGNORE
    rng = np.random.default_rng(1)
    other_ids = input_ids.copy()
    other_ids[attention_mask == 0] = rng.integers(2, VOCAB, size=(attention_mask == 0).sum())
    other_labels = label_ids.copy()
    other_labels[~counted] = rng.integers(0, len(LABEL_MAP), size=(~counted).sum())

    def loss_and_grads(ids, labels, label_mask=None):
        with tf.GradientTape() as tape:
            logits = model(dict(input_ids=ids, attention_mask=attention_mask), training=True)
            loss_sum, count = model.compute_loss(logits, labels, label_mask)
        grads = tape.gradient(loss_sum, model.trainable_variables)
        return loss_sum.numpy(), count.numpy(), grads_as_arrays(grads)

    loss, count, grads = loss_and_grads(input_ids, label_ids)
    assert count == counted.sum() and np.isfinite(loss) and loss > 0
    for variant in [(other_ids, label_ids), (other_ids, other_labels, counted)]:
        other_loss, other_count, other_grads = loss_and_grads(*variant)
        assert other_count == count
        np.testing.assert_allclose(other_loss, loss, rtol=1e-6)
        for ours, theirs in zip(grads, other_grads):
            np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-7)
    # The test can fail: the same labels counted everywhere do move the loss.
    moved, _, _ = loss_and_grads(input_ids, other_labels)
    assert abs(moved - loss) > 1e-3


def test_bilstm_ignores_padding_in_both_directions():
    model = build(tiny_config(bilstm_layers=2, dropout=0.0, bilstm_dropout=0.0))
    rng = np.random.default_rng(0)
    lengths = np.array([10, 7, 3])
    short = rng.normal(size=[3, 10, 32]).astype(np.float32)
    long = np.concatenate([short, 5 + rng.normal(size=[3, 10, 32]).astype(np.float32)], axis=1)
    short[1, 7:] = 9.0  # garbage padding, different in the two versions
    short[2, 3:] = -9.0
    mask_short = (np.arange(10)[None] < lengths[:, None]).astype(np.int32)
    mask_long = (np.arange(20)[None] < lengths[:, None]).astype(np.int32)
    logits_short = model.tag({"hidden_states": (short,)}, mask_short).numpy()
    logits_long = model.tag({"hidden_states": (long,)}, mask_long).numpy()
    for b, length in enumerate(lengths):
        np.testing.assert_allclose(logits_long[b, :length], logits_short[b, :length],
                                   rtol=1e-5, atol=1e-6)
    # Without the mask, padding leaks into the backward direction (the check above can fail).
    bilstm = model.bilstm_layers[0]
    unmasked = bilstm(tf.constant(long[2:]))[0, :3].numpy()
    masked = bilstm(tf.constant(long[2:]), mask=tf.constant(mask_long[2:], tf.bool))[0, :3]
    assert np.max(np.abs(unmasked - masked.numpy())) > 1e-3


# ---- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["softmax", "crf"])
def test_decode_respects_label_mask(head):
    model = build(tiny_config(head=head))
    input_ids, attention_mask, label_ids = make_batch()
    logits = model(dict(input_ids=input_ids, attention_mask=attention_mask))
    label_mask = label_ids != IGNORE
    tag_ids, scores = model.decode(logits, label_mask)
    assert tag_ids.dtype == tf.int32 and scores.dtype == tf.float32
    assert np.all(tag_ids.numpy()[~label_mask] == 0)
    assert np.all(scores.numpy() < 0)
    if head == "softmax":
        np.testing.assert_array_equal(tag_ids.numpy()[label_mask],
                                      np.argmax(logits.numpy(), -1)[label_mask])
    else:
        assert model.transitions.shape == (5, 5) and model.transitions.dtype == tf.float32
        # The log-probability of the decoded path is -(its NLL) when scored as gold labels.
        gold = np.where(label_mask, tag_ids.numpy(), IGNORE)
        per_row = [model.compute_loss(logits[b:b + 1], gold[b:b + 1])[0] for b in range(3)]
        np.testing.assert_allclose(-np.array(per_row), scores, rtol=1e-5)


@pytest.mark.parametrize("head", ["softmax", "crf"])
def test_tag_probabilities_are_the_heads_own(head):
    """Per-tag probabilities at labelled positions (sum 1), 0 elsewhere: the softmax of the
    logits, or the CRF's marginals (d log Z / d logits)."""
    model = build(tiny_config(head=head))
    input_ids, attention_mask, label_ids = make_batch()
    logits = model(dict(input_ids=input_ids, attention_mask=attention_mask))
    label_mask = label_ids != IGNORE
    probs = model.tag_probabilities(logits, label_mask)
    assert probs.dtype == tf.float32 and probs.shape == logits.shape
    np.testing.assert_allclose(probs.numpy().sum(-1)[label_mask], 1.0, rtol=1e-5)
    assert np.all(probs.numpy()[~label_mask] == 0.0)
    if head == "softmax":
        expected = tf.nn.softmax(logits).numpy()
    else:
        with tf.GradientTape() as tape:
            tape.watch(logits)
            log_norm = model.crf.log_norm(logits, label_mask)
        expected = tape.gradient(log_norm, logits).numpy()
    np.testing.assert_array_equal(probs.numpy()[label_mask], expected[label_mask])


# ---- variable groups ----------------------------------------------------------------------


@pytest.mark.parametrize("overrides, names", [
    (dict(head="crf", bilstm_layers=1),
     ["embeddings", "encoder_layer_0", "encoder_layer_1", "bilstm", "head", "crf"]),
    (dict(hidden_layers="scalar_mix", num_hidden_layers_used=3),
     ["embeddings", "encoder_layer_0", "encoder_layer_1", "layer_mix", "head"]),
])
def test_variable_groups_cover_every_trainable_variable_once(overrides, names):
    model = build(tiny_config(**overrides))
    groups = model.variable_groups()
    assert list(groups) == names
    grouped = [v.ref() for variables in groups.values() for v in variables]
    assert len(grouped) == len(set(grouped)) == len(model.trainable_variables)
    assert set(grouped) == {v.ref() for v in model.trainable_variables}
    assert model.encoder_group_names() == ["embeddings", "encoder_layer_0", "encoder_layer_1"]
    assert any("word_embeddings" in v.name for v in groups["embeddings"])
    assert all("/embeddings/" in v.name for v in groups["embeddings"])
    for i in range(2):  # fused QKV, output, intermediate, output dense; 2 LayerNorms
        assert len(groups[f"encoder_layer_{i}"]) == 12
        assert all(f"/layer_{i}/" in v.name for v in groups[f"encoder_layer_{i}"])
    assert not any("pooler" in v.name for v in model.trainable_variables)
    assert groups["head"] == model.classifier.trainable_variables
    if "crf" in groups:
        assert {v.ref() for v in groups["crf"]} == {v.ref() for v in model.crf.weights}
        assert len(groups["bilstm"]) == 6  # 2 directions x (kernel, recurrent kernel, bias)


def test_embedding_baseline_bilstm_crf():
    config = TaggerConfig(encoder="embedding", vocab_size=VOCAB, embedding_dim=16,
                          bilstm_layers=1, bilstm_units=8, head="crf", label_map=LABEL_MAP)
    model = build(config)
    groups = model.variable_groups()
    assert list(groups) == ["embeddings", "bilstm", "head", "crf"]
    assert groups["embeddings"][0].shape == (VOCAB, 16)
    assert model.encoder_group_names() == ["embeddings"]
    input_ids, attention_mask, label_ids = make_batch()
    with tf.GradientTape() as tape:
        logits = model(dict(input_ids=input_ids, attention_mask=attention_mask), training=True)
        loss_sum, count = model.compute_loss(logits, label_ids)
    grads = tape.gradient(loss_sum, model.trainable_variables)
    assert all(g is not None for g in grads) and count == (label_ids != IGNORE).sum()


def test_frozen_encoder_runs_outside_the_tape():
    """encode() outside the tape + tag() inside gives the head the same gradients."""
    model = build(tiny_config(encoder_config=NO_DROPOUT_BERT, head="crf",
                              bilstm_layers=1, hidden_layers="scalar_mix",
                              num_hidden_layers_used=2))
    input_ids, attention_mask, label_ids = make_batch()
    trainable = [v for name, variables in model.variable_groups().items()
                 if name not in model.encoder_group_names() for v in variables]
    encoded = model.encode(input_ids, attention_mask, training=False)
    with tf.GradientTape() as tape:
        loss_frozen, _ = model.compute_loss(model.tag(encoded, attention_mask), label_ids)
    frozen = tape.gradient(loss_frozen, trainable)
    with tf.GradientTape() as tape:
        loss_full, _ = model.compute_loss(
            model(dict(input_ids=input_ids, attention_mask=attention_mask)), label_ids)
    full = tape.gradient(loss_full, trainable)
    np.testing.assert_allclose(loss_frozen, loss_full, rtol=1e-6)
    for a, b in zip(grads_as_arrays(frozen), grads_as_arrays(full)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert len(trainable) == 2 + 6 + 2 + 3  # layer_mix, bilstm, head, crf


# ---- precision and compilation --------------------------------------------------------------


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_builds_and_trains_under_mixed_precision(policy, restore_policy):
    tf.keras.mixed_precision.set_global_policy(policy)
    model = build(tiny_config(head="crf", bilstm_layers=1, hidden_layers="scalar_mix",
                              num_hidden_layers_used=2))
    input_ids, attention_mask, label_ids = make_batch()
    with tf.GradientTape() as tape:
        encoded = model.encode(input_ids, attention_mask, training=True)
        logits = model.tag(encoded, attention_mask, training=True)
        loss_sum, count = model.compute_loss(logits, label_ids)
    assert encoded["hidden_states"][0].dtype == tf.dtypes.as_dtype(policy.split("_")[1])
    assert logits.dtype == tf.float32 and loss_sum.dtype == tf.float32
    assert model.transitions.dtype == tf.float32
    grads = tape.gradient(loss_sum, model.trainable_variables)
    assert np.isfinite(loss_sum.numpy()) and loss_sum.numpy() > 0
    assert all(np.all(np.isfinite(g)) for g in grads_as_arrays(grads))
    tag_ids, scores = model.decode(logits, label_ids != IGNORE)
    assert np.all(np.isfinite(scores.numpy()))


def test_xla_train_step_matches_eager():
    model = build(tiny_config(encoder_config=NO_DROPOUT_BERT, head="crf",
                              bilstm_layers=1, dropout=0.0, bilstm_dropout=0.0))
    input_ids, attention_mask, label_ids = make_batch()

    def loss_and_grads(ids, mask, labels):
        with tf.GradientTape() as tape:
            logits = model(dict(input_ids=ids, attention_mask=mask), training=True)
            loss_sum, count = model.compute_loss(logits, labels)
            loss = loss_sum / count
        return loss, tape.gradient(loss, model.trainable_variables)

    eager_loss, eager_grads = loss_and_grads(input_ids, attention_mask, label_ids)
    xla_loss, xla_grads = tf.function(loss_and_grads, jit_compile=True)(
        input_ids, attention_mask, label_ids)
    np.testing.assert_allclose(xla_loss, eager_loss, rtol=1e-4)
    for a, b in zip(grads_as_arrays(xla_grads), grads_as_arrays(eager_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    decode = tf.function(model.decode, jit_compile=True)
    logits = model(dict(input_ids=input_ids, attention_mask=attention_mask))
    np.testing.assert_array_equal(decode(logits, label_ids != IGNORE)[0],
                                  model.decode(logits, label_ids != IGNORE)[0])


def test_build_tagger_returns_a_built_keras_model():
    model = build(tiny_config())
    assert isinstance(model, Tagger) and isinstance(model, tf.keras.Model)
    assert model.built and len(model.trainable_variables) == 5 + 2 * 12 + 2
