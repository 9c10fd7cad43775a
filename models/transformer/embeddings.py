"""The embedding layer: word + position + token type embeddings, LayerNorm, dropout."""

from __future__ import annotations

import tensorflow as tf

from models.transformer.config import EncoderConfig


def initializer(config: EncoderConfig) -> tf.keras.initializers.Initializer:
    """transformers' initialisation of every kernel and table: truncated normal."""
    return tf.keras.initializers.TruncatedNormal(stddev=config.initializer_range)


def position_ids(input_ids: tf.Tensor, pad_token_id: int) -> tf.Tensor:
    """RoBERTa's position ids: real tokens count from pad_token_id + 1, padding gets pad_token_id.

    With pad_token_id 1, the ids [[5, 9, 7], [5, 9, 1]] get positions [[2, 3, 4], [2, 3, 1]],
    as transformers' `create_position_ids_from_input_ids` gives them (a padding id amid real
    tokens is skipped: [5, 1, 9] -> [2, 1, 3]).

    Args:
      input_ids: int32 [batch, seq_len].
      pad_token_id: the padding id.

    Returns:
      int32 [batch, seq_len].
    """
    is_token = tf.cast(tf.not_equal(input_ids, pad_token_id), tf.int32)
    return tf.cumsum(is_token, axis=1) * is_token + pad_token_id


class Embeddings(tf.keras.layers.Layer):
    """Sums the word, position and token type embeddings, normalises them, applies dropout.

    The tables are float32 and are read in float32 whatever the mixed precision policy (a gather
    needs no cast of the whole [vocab_size, embedding_size] table), the sum and its LayerNorm are
    float32 too, and only the result is cast to the compute dtype.

    Variables (float32): word_embeddings [vocab_size, embedding_size], position_embeddings
    [max_position_embeddings, embedding_size], token_type_embeddings [type_vocab_size,
    embedding_size], layer_norm/gamma and layer_norm/beta [embedding_size].
    """

    def __init__(self, config: EncoderConfig, *, name: str = "embeddings", **kwargs):
        super().__init__(name=name, autocast=False, **kwargs)
        self.config = config
        self.layer_norm = tf.keras.layers.LayerNormalization(
            epsilon=config.layer_norm_eps, dtype="float32", name="layer_norm")
        self.dropout = tf.keras.layers.Dropout(config.hidden_dropout_prob)

    def build(self, input_shape: tf.TensorShape) -> None:
        config = self.config
        width = config.embedding_size
        self.word_embeddings = self.add_weight(
            name="word_embeddings", shape=[config.vocab_size, width],
            initializer=initializer(config), dtype=tf.float32)
        self.position_embeddings = self.add_weight(
            name="position_embeddings", shape=[config.max_position_embeddings, width],
            initializer=initializer(config), dtype=tf.float32)
        self.token_type_embeddings = self.add_weight(
            name="token_type_embeddings", shape=[config.type_vocab_size, width],
            initializer=initializer(config), dtype=tf.float32)
        super().build(input_shape)

    def call(self, input_ids: tf.Tensor, token_type_ids: tf.Tensor | None = None,
             training: bool | None = False) -> tf.Tensor:
        """Embeds the tokens.

        Args:
          input_ids: int32 [batch, seq_len].
          token_type_ids: int32 [batch, seq_len], or None for all 0 (what the tagger passes).
          training: enables dropout.

        Returns:
          [batch, seq_len, embedding_size] in the compute dtype of the layer's policy.
        """
        words = tf.gather(self.word_embeddings, input_ids)  # float32 [batch, seq_len, width]
        if self.config.positions_after_padding:
            positions = tf.gather(self.position_embeddings,
                                  position_ids(input_ids, self.config.pad_token_id))
        else:
            seq_len = tf.shape(input_ids)[1]
            positions = self.position_embeddings[tf.newaxis, :seq_len]  # [1, seq_len, width]
        if token_type_ids is None:
            token_types = self.token_type_embeddings[0]  # [width], the same for every token
        else:
            token_types = tf.gather(self.token_type_embeddings, token_type_ids)
        embeddings = self.layer_norm(words + positions + token_types)
        embeddings = tf.cast(embeddings, self.compute_dtype)
        return self.dropout(embeddings, training=training)
