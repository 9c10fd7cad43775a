"""The training step: frozen groups are not watched and stay bit-identical; fine-tuning moves
them; gradient accumulation over k micro-batches equals one k-times larger batch."""

import numpy as np
import pytest
import tensorflow as tf

from data_pipeline.tags import iob2_allowed_transitions
from models import TaggerConfig, build_tagger
from trainer import optimization
from trainer.config import TrainConfig
from trainer.step import TrainStep

LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
TINY_BERT = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=32)


def make_batches(num_batches, batch_size, seq_len=12, seed=0):
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(num_batches):
        lengths = rng.integers(4, seq_len + 1, size=batch_size)
        mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int32)
        ids = rng.integers(5, 64, size=(batch_size, seq_len)).astype(np.int32) * mask
        labels = rng.integers(0, len(LABELS), size=(batch_size, seq_len)).astype(np.int32)
        labels = np.where(mask == 1, labels, -100)
        labels[:, 0] = -100  # the [CLS] position
        batches.append(dict(input_ids=ids, attention_mask=mask, label_ids=labels))
    return batches


def train_config(**changes):
    values = dict(train_file="x", dev_file="x", test_file="x", tokenizer="x", pretrained="",
                  encoder_config="{}", head_learning_rate=1e-2, warmup_steps=0, dropout=0.1)
    values.update(changes)
    return TrainConfig(**values)


def build(config, head="crf", hidden_layers="concat", jit_compile=False):
    tf.keras.utils.set_random_seed(1)
    bert = dict(TINY_BERT, hidden_dropout_prob=config.dropout,
                attention_probs_dropout_prob=config.dropout)
    model = build_tagger(TaggerConfig(encoder_config=bert, hidden_layers=hidden_layers,
                                      num_hidden_layers_used=2, bilstm_layers=1, bilstm_units=8,
                                      bilstm_dropout=config.bilstm_dropout, head=head,
                                      label_map=LABELS, dropout=config.dropout),
                         transition_constraints=iob2_allowed_transitions(LABELS))
    plan = optimization.build_optimization(config, model.variable_groups(),
                                           model.encoder_group_names(), total_steps=10)
    step = tf.Variable(0, dtype=tf.int64)
    position = tf.Variable(0, dtype=tf.int64)
    train_step = TrainStep(model=model, plan=plan, strategy=tf.distribute.get_strategy(),
                           grad_accum_steps=config.grad_accum_steps, step=step,
                           input_position=position, jit_compile=jit_compile)
    return model, plan, train_step


def encoder_variables(model):
    return [v for g in model.encoder_group_names() for v in model.variable_groups()[g]]


def run_steps(train_step, batches, num_steps):
    iterator = iter(tf.data.Dataset.from_tensor_slices(
        {k: np.stack([b[k] for b in batches]) for k in batches[0]}))
    totals, norms = train_step.run(iterator, tf.constant(num_steps, tf.int32))
    return {k: float(v) for k, v in totals.items()}, norms.numpy()


def test_frozen_encoder_is_not_watched_and_stays_bit_identical():
    model, plan, train_step = build(train_config(encoder_learning_rate=0.0))
    assert plan.encoder_frozen
    encoder = encoder_variables(model)
    before = [v.numpy().copy() for v in encoder]
    head_before = [v.numpy().copy() for v in plan.trainable_variables]
    totals, norms = run_steps(train_step, make_batches(3, 4), 3)
    assert np.isfinite(totals["loss_sum"]) and totals["count"] > 0
    encoder_names = {v.name for v in encoder}
    assert train_step.watched_variable_names, "the tape watched nothing"
    assert not encoder_names & train_step.watched_variable_names
    assert train_step.watched_variable_names == {v.name for v in plan.trainable_variables}
    for old, variable in zip(before, encoder):
        assert np.array_equal(old, variable.numpy()), variable.name
    assert any(not np.array_equal(old, v.numpy())
               for old, v in zip(head_before, plan.trainable_variables))
    assert int(train_step.step.numpy()) == 3 and int(train_step.input_position.numpy()) == 3
    assert set(train_step.group_names) == {"bilstm", "head", "crf"}  # concat has no weights
    assert np.all(norms > 0)


def test_fine_tuning_moves_the_encoder():
    model, plan, train_step = build(train_config(encoder_learning_rate=1e-3), head="softmax",
                                    hidden_layers="last")
    assert not plan.encoder_frozen
    encoder = encoder_variables(model)
    before = [v.numpy().copy() for v in encoder]
    batches = make_batches(3, 4)
    run_steps(train_step, batches[:2], 2)
    run_steps(train_step, batches[2:], 1)  # another step count: a tensor, so no retracing
    assert train_step.run.experimental_get_tracing_count() == 1
    assert {v.name for v in encoder} <= train_step.watched_variable_names
    changed = [not np.array_equal(old, v.numpy()) for old, v in zip(before, encoder)]
    assert all(changed)


@pytest.mark.parametrize("head", ["crf"])  # the CRF loss is the one with cross-token terms
def test_gradient_accumulation_equals_a_larger_batch(head):
    config = dict(encoder_learning_rate=1e-3, dropout=0.0, bilstm_dropout=0.0, clip_norm=0.0)
    batches = make_batches(4, 3)
    merged = []
    for first, second in zip(batches[::2], batches[1::2]):
        merged.append({k: np.concatenate([first[k], second[k]]) for k in first})
    model_a, _, step_a = build(train_config(grad_accum_steps=2, **config), head=head)
    totals_a, _ = run_steps(step_a, batches, 2)
    model_b, _, step_b = build(train_config(**config), head=head)
    totals_b, _ = run_steps(step_b, merged, 2)
    assert totals_a["loss_sum"] == pytest.approx(totals_b["loss_sum"], rel=1e-5)
    for a, b in zip(model_a.trainable_variables, model_b.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


def test_jit_compiled_step_matches_graph_mode():
    config = train_config(encoder_learning_rate=1e-3, dropout=0.0, bilstm_dropout=0.0)
    batches = make_batches(2, 4)
    model_a, _, step_a = build(config, head="softmax", hidden_layers="last", jit_compile=True)
    totals_a, _ = run_steps(step_a, batches, 2)
    model_b, _, step_b = build(config, head="softmax", hidden_layers="last")
    totals_b, _ = run_steps(step_b, batches, 2)
    assert totals_a["loss_sum"] == pytest.approx(totals_b["loss_sum"], rel=1e-4)
    for a, b in zip(model_a.trainable_variables, model_b.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-5)
