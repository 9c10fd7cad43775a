"""One transformer block (post-LayerNorm, as in BERT): attention, then the feed-forward network."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from models.transformer.attention import SelfAttention
from models.transformer.config import GELU_APPROXIMATE, EncoderConfig
from models.transformer.embeddings import initializer


def activation(hidden_act: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """The feed-forward activation named by config.json's `hidden_act`.

    "gelu" is the exact GELU, x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2))), written out: TensorFlow
    2.21's `tf.nn.gelu(approximate=False)` computes it through erfc, which on this CPU made a
    bf16 forward pass of the whole 12-layer encoder 1.6x slower than the same formula with erf
    (float32 1.07x; benchmarks/RESULTS.md). "gelu_new", "gelu_fast" and "gelu_pytorch_tanh" are
    its tanh approximation (`tf.nn.gelu(approximate=True)`); "relu", "silu" and "swish" are
    themselves.
    """
    if hidden_act in GELU_APPROXIMATE and not GELU_APPROXIMATE[hidden_act]:
        return exact_gelu
    if hidden_act in GELU_APPROXIMATE:
        return lambda x: tf.nn.gelu(x, approximate=True)
    if hidden_act == "relu":
        return tf.nn.relu
    if hidden_act in ("silu", "swish"):
        return tf.nn.silu
    raise ValueError(f"hidden_act={hidden_act!r} is not supported")


def exact_gelu(x: tf.Tensor) -> tf.Tensor:
    """0.5 x (1 + erf(x / sqrt(2))), in x's dtype (any float shape)."""
    return 0.5 * x * (1.0 + tf.math.erf(x * 0.7071067811865476))


class TransformerBlock(tf.keras.layers.Layer):
    """x -> LN(x + drop(attention(x))) = a -> LN(a + drop(output(act(intermediate(a))))).

    Variables (float32, read in the compute dtype): attention/* (see `SelfAttention`),
    attention_layer_norm/{gamma,beta} [hidden], intermediate/kernel [hidden, intermediate_size],
    intermediate/bias [intermediate_size], output/kernel [intermediate_size, hidden],
    output/bias [hidden], output_layer_norm/{gamma,beta} [hidden].
    """

    def __init__(self, config: EncoderConfig, *, name: str, **kwargs):
        super().__init__(name=name, **kwargs)
        self.attention = SelfAttention(config, name="attention")
        self.attention_dropout = tf.keras.layers.Dropout(config.hidden_dropout_prob)
        self.attention_layer_norm = tf.keras.layers.LayerNormalization(
            epsilon=config.layer_norm_eps, name="attention_layer_norm")
        self.intermediate = tf.keras.layers.Dense(
            config.intermediate_size, activation=activation(config.hidden_act),
            kernel_initializer=initializer(config), name="intermediate")
        self.output_dense = tf.keras.layers.Dense(
            config.hidden_size, kernel_initializer=initializer(config), name="output")
        self.output_dropout = tf.keras.layers.Dropout(config.hidden_dropout_prob)
        self.output_layer_norm = tf.keras.layers.LayerNormalization(
            epsilon=config.layer_norm_eps, name="output_layer_norm")

    def call(self, hidden_states: tf.Tensor, bias: tf.Tensor,
             training: bool | None = False) -> tf.Tensor:
        """Runs the block.

        Args:
          hidden_states: [batch, seq_len, hidden] in the compute dtype.
          bias: float32 [batch, 1, 1, seq_len] from `attention.attention_bias`.
          training: enables dropout.

        Returns:
          [batch, seq_len, hidden] in the compute dtype.
        """
        attended = self.attention(hidden_states, bias, training=training)
        attended = self.attention_layer_norm(
            self.attention_dropout(attended, training=training) + hidden_states)
        outputs = self.output_dense(self.intermediate(attended))
        return self.output_layer_norm(
            self.output_dropout(outputs, training=training) + attended)
