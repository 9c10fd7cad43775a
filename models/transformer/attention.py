"""Multi-head self-attention with one fused query/key/value projection, and its padding mask."""

from __future__ import annotations

import math

import tensorflow as tf

from models.transformer.config import EncoderConfig
from models.transformer.embeddings import initializer

# Added to the scores of padded keys before the softmax: exp(-10000) is 0 in float32, as in
# transformers' TF BERT, which uses the same value (so even a row of padding only attends alike).
MASKED_SCORE = -10000.0


def attention_bias(attention_mask: tf.Tensor) -> tf.Tensor:
    """The additive mask every layer adds to its attention scores; built once per batch.

    Args:
      attention_mask: int [batch, seq_len], 1 on real tokens, 0 on padding.

    Returns:
      float32 [batch, 1, 1, seq_len]: 0 on real keys, MASKED_SCORE on padded keys (broadcast over
      heads and queries).
    """
    mask = tf.cast(attention_mask, tf.float32)[:, tf.newaxis, tf.newaxis, :]
    return (1.0 - mask) * MASKED_SCORE


class SelfAttention(tf.keras.layers.Layer):
    """Scaled dot-product self-attention over `num_attention_heads` heads.

    One matmul projects the input to queries, keys and values at once: the kernel "qkv" is
    [hidden, 3 * hidden], the query, key and value kernels of a checkpoint side by side (in that
    order), each with its heads side by side (head h of the query is columns
    [h * head_size, (h + 1) * head_size)). The scores are computed in the compute dtype and
    taken to float32 for the mask and the softmax; the probabilities go back to the compute dtype
    for the product with the values.

    Variables: qkv/kernel [hidden, 3 * hidden], qkv/bias [3 * hidden], output/kernel
    [hidden, hidden], output/bias [hidden] (float32; read in the compute dtype).
    """

    def __init__(self, config: EncoderConfig, *, name: str = "attention", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        self.hidden_size = config.hidden_size
        self.scale = 1.0 / math.sqrt(config.head_size)
        self.qkv = tf.keras.layers.Dense(3 * config.hidden_size,
                                         kernel_initializer=initializer(config), name="qkv")
        self.probs_dropout = tf.keras.layers.Dropout(config.attention_probs_dropout_prob)
        self.output_dense = tf.keras.layers.Dense(config.hidden_size,
                                                  kernel_initializer=initializer(config),
                                                  name="output")

    def call(self, hidden_states: tf.Tensor, bias: tf.Tensor,
             training: bool | None = False) -> tf.Tensor:
        """Attends every position to every unmasked position.

        Args:
          hidden_states: [batch, seq_len, hidden] in the compute dtype.
          bias: float32 [batch, 1, 1, seq_len] from `attention_bias`.
          training: enables dropout on the attention probabilities.

        Returns:
          [batch, seq_len, hidden] in the compute dtype: the heads' outputs concatenated and
          projected by "output" (before the block's dropout, residual and LayerNorm).
        """
        batch, seq_len = tf.shape(hidden_states)[0], tf.shape(hidden_states)[1]
        qkv = self.qkv(hidden_states)  # [batch, seq_len, 3 * hidden]
        qkv = tf.reshape(qkv, [batch, seq_len, 3, self.num_heads, self.head_size])
        qkv = tf.transpose(qkv, [2, 0, 3, 1, 4])  # [3, batch, heads, seq_len, head_size]
        # unstack, not qkv[0], qkv[1], qkv[2]: each slice's gradient is a zero-filled tensor of
        # qkv's full size (three of them, then summed), unstack's is one stack: the fine-tuning
        # step's backward pass was slower than transformers' (benchmarks/RESULTS.md).
        query, key, value = tf.unstack(qkv, num=3, axis=0)
        scores = tf.matmul(query, key, transpose_b=True)  # [batch, heads, seq_len, seq_len]
        scores = tf.cast(scores, tf.float32) * self.scale + bias
        probs = self.probs_dropout(tf.nn.softmax(scores, axis=-1), training=training)
        context = tf.matmul(tf.cast(probs, value.dtype), value)  # [batch, heads, seq, head_size]
        context = tf.transpose(context, [0, 2, 1, 3])  # [batch, seq_len, heads, head_size]
        context = tf.reshape(context, [batch, seq_len, self.hidden_size])
        return self.output_dense(context)
