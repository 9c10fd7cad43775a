"""Bidirectional LSTM that skips masked steps in both directions, as one `tf.scan`.

Why not `tf.keras.layers.Bidirectional(LSTM)`: inside a `jit_compile=True` train step with an
optimizer update, tf-keras's LSTM (its implementation-selector functions) made XLA recompile the
step on every call (about 13 s per step for a 2-layer, hidden-32 BERT). This layer is a plain
scan and compiles once.

Masking: at a masked step both directions carry (h, c) through unchanged, and the output there is
zero. The backward direction runs over the time-reversed sequence, where right padding comes
first; its state therefore stays at the initial zeros through the padding and the first state it
sees at the last real token is the initial one:

    tokens     a    b    c   PAD  PAD
    forward    ->   ->   ->   =    =       (= : state carried, output 0)
    backward   <-   <-   <-   =    =       starts fresh at c
"""

from __future__ import annotations

import tensorflow as tf


class MaskedBiLSTM(tf.keras.layers.Layer):
    """Bidirectional LSTM (Keras gate order i, f, c, o; forget-gate bias initialised to 1)."""

    def __init__(self, units: int, *, name: str = "bilstm", **kwargs):
        super().__init__(name=name, **kwargs)
        self.units = int(units)
        self.supports_masking = True

    def build(self, input_shape):
        features = int(input_shape[-1])
        units = self.units

        def forget_bias_one(shape, dtype=None):
            return tf.concat([tf.zeros([units]), tf.ones([units]), tf.zeros([2 * units])], 0)

        for direction in ("forward", "backward"):
            setattr(self, f"{direction}_kernel", self.add_weight(
                name=f"{direction}_kernel", shape=[features, 4 * units],
                initializer="glorot_uniform", trainable=True))
            setattr(self, f"{direction}_recurrent_kernel", self.add_weight(
                name=f"{direction}_recurrent_kernel", shape=[units, 4 * units],
                initializer="orthogonal", trainable=True))
            setattr(self, f"{direction}_bias", self.add_weight(
                name=f"{direction}_bias", shape=[4 * units], initializer=forget_bias_one,
                trainable=True))
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, mask: tf.Tensor | None = None) -> tf.Tensor:
        """Runs both directions.

        Args:
          inputs: float [batch, seq_len, features] (compute dtype).
          mask: bool [batch, seq_len], True on real steps; None = all real.

        Returns:
          float [batch, seq_len, 2 * units]: forward then backward outputs, 0 at masked steps.
        """
        batch_size, seq_len = tf.shape(inputs)[0], tf.shape(inputs)[1]
        if mask is None:
            mask = tf.ones([batch_size, seq_len], tf.bool)
        mask = tf.cast(mask, tf.bool)
        projected, step_mask, recurrent = self.time_major_gates(inputs, mask)

        def step(carry, elems):
            return self.cell(carry, elems, recurrent)

        zeros = tf.zeros([2, batch_size, self.units], inputs.dtype)
        states, _ = tf.scan(step, (projected, step_mask), initializer=(zeros, zeros))
        return self.batch_major_outputs(states, mask)

    def time_major_gates(self, inputs: tf.Tensor, mask: tf.Tensor
                         ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The input projections of every step at once, time-major, backward direction reversed.

        Returns:
          (projected [seq_len, 2, batch, 4 * units], step_mask bool [seq_len, 2, batch],
           recurrent kernels [2, units, 4 * units]), all but the mask in `inputs.dtype`.
        """
        dtype = inputs.dtype
        kernel = tf.cast(tf.stack([self.forward_kernel, self.backward_kernel]), dtype)
        recurrent = tf.cast(
            tf.stack([self.forward_recurrent_kernel, self.backward_recurrent_kernel]), dtype)
        bias = tf.cast(tf.stack([self.forward_bias, self.backward_bias]), dtype)
        # Input projections for all steps at once: [2, batch, seq_len, 4 * units].
        projected = tf.einsum("btf,dfg->dbtg", inputs, kernel) + bias[:, None, None, :]
        # Backward direction over the reversed sequence, then time-major: [seq_len, 2, batch, 4U].
        projected = tf.stack([projected[0], tf.reverse(projected[1], axis=[1])])
        projected = tf.transpose(projected, [2, 0, 1, 3])
        step_mask = tf.transpose(tf.stack([mask, tf.reverse(mask, axis=[1])]), [2, 0, 1])
        return projected, step_mask, recurrent

    @staticmethod
    def cell(carry: tuple[tf.Tensor, tf.Tensor], elems: tuple[tf.Tensor, tf.Tensor],
             recurrent: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One step of both directions: (h, c) [2, batch, units] each, (x_gates [2, batch, 4U],
        is_real [2, batch]) -> the new (h, c), carried through unchanged where not real."""
        h, c = carry
        x_gates, is_real = elems
        gates = x_gates + tf.matmul(h, recurrent)  # [2, batch, 4 * units]
        i, f, g, o = tf.split(gates, 4, axis=-1)
        new_c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        new_h = tf.sigmoid(o) * tf.tanh(new_c)
        is_real = is_real[..., None]
        return tf.where(is_real, new_h, h), tf.where(is_real, new_c, c)

    @staticmethod
    def batch_major_outputs(states: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        """h of every step [seq_len, 2, batch, units] -> [batch, seq_len, 2 * units], forward
        then backward (back in input order), 0 at masked steps."""
        states = tf.transpose(states, [1, 2, 0, 3])  # [2, batch, seq_len, units]
        outputs = tf.concat([states[0], tf.reverse(states[1], axis=[1])], axis=-1)
        return tf.where(mask[..., None], outputs, tf.zeros_like(outputs))

    def compute_mask(self, inputs, mask=None):
        return mask
