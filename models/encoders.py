"""Encoders other than the transformer, and hidden-layer combination.

An encoder maps (input_ids, attention_mask) to a dict {"hidden_states": (h_1, ..., h_N)}, the
N hidden layers the tagger combines, each [batch, seq_len, hidden] in the compute dtype. The
BERT-family encoder is `models.transformer.TransformerEncoder`; this module has the plain
embedding encoder of the classic BiLSTM-CRF. The combination itself (`HiddenLayerCombiner`) runs
in the tagger's `tag()`, so that its learned weights ("layer_mix") still train when the encoder
is frozen and runs outside the gradient tape.
"""

from __future__ import annotations

import tensorflow as tf


class EmbeddingEncoder(tf.keras.layers.Layer):
    """Trainable token embeddings: the encoder of the classic (non-BERT) BiLSTM-CRF."""

    def __init__(self, vocab_size: int, embedding_dim: int, *, name: str = "embedding_encoder",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.embedding = tf.keras.layers.Embedding(
            vocab_size, embedding_dim,
            embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.1),
            name="embeddings")
        self.output_dim = int(embedding_dim)

    def call(self, input_ids: tf.Tensor, attention_mask: tf.Tensor,
             training: bool | None = False) -> dict[str, tuple[tf.Tensor, ...]]:
        """Returns {"hidden_states": (embeddings [batch, seq_len, embedding_dim],)}."""
        del attention_mask, training  # padding is masked downstream (BiLSTM mask, loss mask)
        return {"hidden_states": (self.embedding(input_ids),)}

    def variable_groups(self) -> dict[str, list[tf.Variable]]:
        return {"embeddings": list(self.trainable_variables)}


class HiddenLayerCombiner(tf.keras.layers.Layer):
    """Combines N hidden layers [batch, seq_len, H] into features.

    "last": the last one (H); "concat": all N side by side (N * H); "mean": their mean (H);
    "scalar_mix": gamma * sum_i softmax(w)_i * h_i (H) with learned w [N] (init 0: the mean)
    and gamma (init 1).
    """

    def __init__(self, mode: str, num_layers: int, *, name: str = "layer_mix", **kwargs):
        super().__init__(name=name, **kwargs)
        self.mode = mode
        self.num_layers = 1 if mode == "last" else int(num_layers)
        if mode == "scalar_mix":
            self.mix_weights = self.add_weight(
                name="scalar_mix_weights", shape=[self.num_layers], initializer="zeros",
                trainable=True)
            self.gamma = self.add_weight(name="gamma", shape=[], initializer="ones",
                                         trainable=True)

    def output_dim(self, hidden_size: int) -> int:
        return hidden_size * self.num_layers if self.mode == "concat" else hidden_size

    def call(self, hidden_states: tuple[tf.Tensor, ...]) -> tf.Tensor:
        """hidden_states: N tensors [batch, seq_len, H] -> features [batch, seq_len, F]."""
        hidden_states = list(hidden_states)
        if len(hidden_states) != self.num_layers:
            raise ValueError(f"{self.mode!r} expects {self.num_layers} hidden layers, got "
                             f"{len(hidden_states)}")
        if self.mode == "last":
            return hidden_states[-1]
        if self.mode == "concat":
            return tf.concat(hidden_states, axis=-1)  # [batch, seq_len, N * H]
        stacked = tf.stack(hidden_states, axis=0)  # [N, batch, seq_len, H]
        if self.mode == "mean":
            return tf.reduce_mean(stacked, axis=0)
        weights = tf.cast(tf.nn.softmax(self.mix_weights), stacked.dtype)
        mixed = tf.tensordot(weights, stacked, axes=1)  # [batch, seq_len, H]
        return tf.cast(self.gamma, stacked.dtype) * mixed
