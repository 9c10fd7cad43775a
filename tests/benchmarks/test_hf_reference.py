"""benchmarks/hf_reference.py: TFBertForTokenClassification's network and recipe on this
project's encoder, transformers' warmup schedule, and the kashgari-style frozen recipe (issue 9,
runs item 5)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import hf_reference  # imports models, which chooses Keras 2 for tf.keras


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    from models.transformer import load_transformer, save_pretrained

    path = tmp_path_factory.mktemp("tiny_bert")
    save_pretrained(load_transformer(encoder_config=dict(
        vocab_size=50, hidden_size=16, num_hidden_layers=5, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, initializer_range=0.05)), path)
    return path


def batch(seed, batch_size=4, length=12, num_labels=5):
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(1, 50, [batch_size, length]).astype(np.int32)
    attention_mask = np.ones_like(input_ids)
    attention_mask[:, 9:] = 0
    x = {"input_ids": input_ids, "attention_mask": attention_mask,
         "token_type_ids": np.zeros_like(input_ids)}
    labels = np.eye(num_labels, dtype=np.float32)[rng.integers(0, num_labels, [batch_size, length])]
    return x, labels


def test_reference_recipe_fine_tunes_tfbertfortokenclassifications_network(tiny_bert_dir):
    """Encoder -> dropout (hidden_dropout_prob) -> Dense classifier drawn from a truncated normal
    with initializer_range, bias 0; the sparse loss from logits, and every weight (the
    encoder's included) gets a gradient from it."""
    import tensorflow as tf

    model = hf_reference.build_reference_model(5, pretrained=str(tiny_bert_dir), total_steps=4)
    assert isinstance(model, hf_reference.TokenClassifier)
    x, labels = batch(2)
    logits = model(x).numpy()
    assert logits.shape == (4, 12, 5)
    assert model.dropout.rate == pytest.approx(0.1)
    kernel = model.classifier.kernel.numpy()
    assert kernel.shape == (16, 5) and np.abs(kernel).max() <= 2 * 0.05  # truncated at 2 sigma
    assert 0.02 < kernel.std() < 0.05 and not model.classifier.bias.numpy().any()
    assert model.loss.get_config()["from_logits"] is True
    assert len(model.trainable_weights) == 2 + 5 + 5 * 12  # classifier, embeddings, 5 blocks
    with tf.GradientTape() as tape:
        loss = model.loss(labels.argmax(-1), model(x, training=True),
                          sample_weight=x["attention_mask"])
    gradients = tape.gradient(loss, model.trainable_weights)
    assert all(float(tf.norm(tf.convert_to_tensor(g))) > 0 for g in gradients)


def test_warmup_is_transformers_schedule():
    """Linear warmup to the peak, then the decay schedule run from the end of the warmup."""
    rate = hf_reference.learning_rate_schedule(1e-3, total_steps=10, warmup_steps=4)
    values = [float(rate(step)) for step in range(11)]
    np.testing.assert_allclose(values, [0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3 * 5 / 6,
                                        1e-3 * 4 / 6, 1e-3 * 3 / 6, 1e-3 * 2 / 6, 1e-3 / 6, 0],
                               rtol=1e-6, atol=1e-10)
    constant = hf_reference.learning_rate_schedule(1e-3, total_steps=10, warmup_steps=2,
                                                   schedule="constant")
    np.testing.assert_allclose([float(constant(step)) for step in (0, 1, 2, 9)],
                               [0, 5e-4, 1e-3, 1e-3], rtol=1e-6)


def test_kashgari_recipe_trains_the_bilstm_and_head_only(tiny_bert_dir):
    model = hf_reference.build_reference_model(5, pretrained=str(tiny_bert_dir),
                                               recipe="kashgari", total_steps=4)
    assert isinstance(model, hf_reference.KashgariStyleTagger)
    x, labels = batch(0)
    probabilities = model(x).numpy()
    assert probabilities.shape == (4, 12, 5)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)  # softmax outputs
    # The BiLSTM reads the last 4 of the 6 hidden states (embeddings + 5 layers), concatenated.
    assert model.bilstm.forward_layer.cell.kernel.shape == (4 * 16, 4 * 128)
    encoder_before = [w.numpy() for w in model.encoder.weights]
    head_before = [w.numpy() for w in model.trainable_weights]
    assert not {id(w) for w in model.encoder.weights} & {id(w) for w in model.trainable_weights}
    assert model.loss == "categorical_crossentropy"
    assert model.optimizer.learning_rate.numpy() == pytest.approx(1e-3)
    model.fit(x, labels, epochs=2, verbose=0)
    for before, after in zip(encoder_before, model.encoder.weights):
        np.testing.assert_array_equal(before, after.numpy())  # frozen: bit-identical
    assert all(np.abs(b - a.numpy()).max() > 0
               for b, a in zip(head_before, model.trainable_weights))


def test_the_evaluation_view_of_a_probability_model_gives_log_probabilities(tiny_bert_dir):
    import tensorflow as tf

    model = hf_reference.build_reference_model(5, pretrained=str(tiny_bert_dir),
                                               recipe="kashgari")
    x, _ = batch(1)
    probabilities = model(x).numpy()
    logits = hf_reference.tagger_view(model)(
        {k: tf.constant(v) for k, v in x.items()}).numpy()
    np.testing.assert_allclose(np.exp(logits), probabilities, rtol=1e-5, atol=1e-7)
    assert (logits.argmax(-1) == probabilities.argmax(-1)).all()


class KillAt(Exception):
    pass


def test_a_killed_fit_resumes_from_its_backup_and_counts_each_segment(tiny_bert_dir, tmp_path):
    """A fit killed mid-epoch, run again, trains only the steps after its last backup."""
    import tensorflow as tf

    batches = [batch(seed, num_labels=5) for seed in range(6)]
    train = tf.data.Dataset.from_tensor_slices((
        {k: np.concatenate([b[0][k] for b in batches]) for k in batches[0][0]},
        np.concatenate([b[1] for b in batches]))).batch(4)  # 6 steps per epoch

    class Kill(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch_index, logs=None):
            if self.model.optimizer.iterations.numpy() == 9:  # epoch 2, after its 3rd step
                raise KillAt()

    def model():
        return hf_reference.build_reference_model(
            5, pretrained=str(tiny_bert_dir), recipe="kashgari", total_steps=12)

    first = model()
    with pytest.raises(KillAt):
        hf_reference.fit_resumable(first, train, epochs=2, run_dir=tmp_path,
                                   backup_every_steps=4, callbacks=[Kill()], verbose=0)
    assert (tmp_path / "backup").is_dir()
    before = hf_reference.FitClock(tmp_path / "fit_clock.json", 4).before
    assert before > 0  # the clock was saved with the backup at step 8
    backed_up = [w.numpy() for w in first.trainable_weights]
    second = model()
    seen = []

    class Count(tf.keras.callbacks.Callback):
        def on_train_batch_begin(self, batch_index, logs=None):
            seen.append(int(self.model.optimizer.iterations.numpy()))

    history, clock = hf_reference.fit_resumable(second, train, epochs=2, run_dir=tmp_path,
                                                backup_every_steps=4, callbacks=[Count()],
                                                verbose=0)
    # Restored at step 8 (the last backup): steps 8..11 of 12 run again, not 0..11.
    assert seen == [8, 9, 10, 11]
    assert int(second.optimizer.iterations.numpy()) == 12
    assert len(history.history["loss"]) == 1  # only the second epoch ran in this process
    assert clock.seconds() > before
    assert any(np.abs(b - a.numpy()).max() > 0
               for b, a in zip(backed_up, second.trainable_weights))
    with pytest.raises(ValueError, match="known length"):  # where the epoch ends must be known
        hf_reference.fit_resumable(second, train.filter(lambda *_: True), epochs=2,
                                   run_dir=tmp_path, backup_every_steps=4, verbose=0)
    hf_reference.finish_resumable(tmp_path)
    assert not (tmp_path / "backup").exists() and not (tmp_path / "fit_clock.json").exists()
