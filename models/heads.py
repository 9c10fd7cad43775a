"""Softmax and CRF heads: masked losses (sum + count), decoding and tag probabilities.

Losses are returned as a masked SUM and the COUNT of counted tokens, never a mean, so the trainer
divides once by the global count (one replica and N replicas give the same gradient).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from models import crf as crf_lib


def counted_positions(label_ids: tf.Tensor, ignore_id: int,
                      label_mask: tf.Tensor | None = None) -> tf.Tensor:
    """bool [batch, seq_len]: label_ids != ignore_id, and inside label_mask if given."""
    counted = tf.not_equal(label_ids, ignore_id)
    if label_mask is not None:
        counted = tf.logical_and(counted, tf.cast(label_mask, tf.bool))
    return counted


class SoftmaxHead:
    """Independent per-token softmax over the tags."""

    def __init__(self, *, ignore_id: int = -100):
        self.ignore_id = ignore_id

    def loss(self, logits: tf.Tensor, label_ids: tf.Tensor,
             label_mask: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """Sparse cross-entropy summed over counted positions.

        Args:
          logits: float [batch, seq_len, num_tags] (cast to float32).
          label_ids: int32 [batch, seq_len], ignore_id where nothing is counted.
          label_mask: optional bool [batch, seq_len]; positions outside are not counted either.

        Returns:
          (loss_sum float32 [], count float32 []).
        """
        counted = counted_positions(label_ids, self.ignore_id, label_mask)
        safe_labels = tf.where(counted, tf.cast(label_ids, tf.int32), 0)  # no -100 into the op
        token_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=safe_labels, logits=tf.cast(logits, tf.float32))  # [batch, seq_len]
        loss_sum = tf.reduce_sum(tf.where(counted, token_loss, 0.0))
        return loss_sum, tf.reduce_sum(tf.cast(counted, tf.float32))

    def decode(self, logits: tf.Tensor, label_mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-token argmax.

        Args:
          logits: float [batch, seq_len, num_tags].
          label_mask: bool [batch, seq_len], positions to tag.

        Returns:
          (tag_ids int32 [batch, seq_len], 0 outside label_mask;
           log_prob float32 [batch], sum over label_mask of the chosen tags' log-softmax).
        """
        label_mask = tf.cast(label_mask, tf.bool)
        log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
        tag_ids = tf.argmax(log_probs, axis=-1, output_type=tf.int32)
        best = tf.reduce_max(log_probs, axis=-1)
        return (tf.where(label_mask, tag_ids, 0),
                tf.reduce_sum(tf.where(label_mask, best, 0.0), axis=1))

    def tag_probabilities(self, logits: tf.Tensor, label_mask: tf.Tensor) -> tf.Tensor:
        """Each tag's softmax probability at each position.

        Args:
          logits: float [batch, seq_len, num_tags].
          label_mask: bool [batch, seq_len], positions to tag.

        Returns:
          float32 [batch, seq_len, num_tags], softmax over the tags; 0 outside label_mask.
        """
        probs = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        return tf.where(tf.cast(label_mask, tf.bool)[:, :, None], probs, 0.0)


class CRFHead:
    """Linear-chain CRF over the labelled positions (see models/crf.py)."""

    def __init__(self, num_tags: int, *,
                 transition_constraints: tuple[np.ndarray, np.ndarray] | None = None,
                 ignore_id: int = -100):
        self.ignore_id = ignore_id
        self.crf = crf_lib.CRF(num_tags, transition_constraints=transition_constraints,
                               name="crf")

    def loss(self, logits: tf.Tensor, label_ids: tf.Tensor,
             label_mask: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """Sum of sentence negative log-likelihoods over the counted positions.

        The chain runs over the counted positions only (holes allowed), so a sentence's NLL
        does not depend on what sits at uncounted positions.

        Args:
          logits: float [batch, seq_len, num_tags] (cast to float32).
          label_ids: int32 [batch, seq_len], ignore_id where nothing is counted.
          label_mask: optional bool [batch, seq_len]; positions outside are not counted either.

        Returns:
          (loss_sum float32 [], count float32 [] = number of counted tokens).
        """
        counted = counted_positions(label_ids, self.ignore_id, label_mask)
        log_likelihood = self.crf.log_likelihood(logits, label_ids, counted)  # [batch]
        return -tf.reduce_sum(log_likelihood), tf.reduce_sum(tf.cast(counted, tf.float32))

    def decode(self, logits: tf.Tensor, label_mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Viterbi over the positions in label_mask; see `CRF.decode`."""
        return self.crf.decode(logits, tf.cast(label_mask, tf.bool))

    def tag_probabilities(self, logits: tf.Tensor, label_mask: tf.Tensor) -> tf.Tensor:
        """Each tag's marginal probability under the (unconstrained) CRF, over the chain of the
        positions in label_mask; see `CRF.marginals`.

        Args:
          logits: float [batch, seq_len, num_tags].
          label_mask: bool [batch, seq_len], positions to tag.

        Returns:
          float32 [batch, seq_len, num_tags], p(y_t = k | logits); 0 outside label_mask.
        """
        return self.crf.marginals(logits, tf.cast(label_mask, tf.bool))
