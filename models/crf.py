"""Linear-chain CRF in plain TensorFlow: forward algorithm, gold-path score, Viterbi.

Runs eagerly, inside `tf.function` and with `jit_compile=True` (the loops are `tf.scan`, every
shape is static once the batch shape is). Everything is computed in float32: potentials are cast
on entry, so the CRF is exact even when the network around it runs in float16 or bfloat16.

Masks may have holes. The chain links the *labelled* positions only: at a masked step the forward
variables (and Viterbi scores) are carried through unchanged and the Viterbi backpointer is the
identity. With word pieces, special tokens and padding masked out:

    position     0      1     2     3      4     5      6
    token      [CLS]   王    ##x    小     明   [SEP]  [PAD]
    mask         0      1     0     1      1     0      0
    chain             start -> 王 -------> 小 -> 明 -> end

so the sentence score is start[y1] + u1[y1] + A[y1, y3] + u3[y3] + A[y3, y4] + u4[y4] + end[y4],
exactly as if the masked positions had never been there. A row with no labelled position has
score 0 and log-partition 0 (log-likelihood 0).

Transitions are indexed `transitions[from_tag, to_tag]`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# Score of a forbidden transition. Large enough that no path through it can win or carry any
# probability mass (exp(-1e4) == 0 in float32), small enough to stay finite in float16
# (max 65504) and bfloat16, and under XLA, where -inf would turn into NaN in logsumexp gradients.
FORBIDDEN_TRANSITION_SCORE = -1e4


def _prepare(potentials: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Casts potentials to float32 and the mask to bool."""
    potentials = tf.cast(potentials, tf.float32)
    mask = tf.cast(mask, tf.bool)
    return potentials, mask


def _float32(value) -> tf.Tensor:
    # Read variables into tensors first: XLA has no kernel for ResourceGatherNd.
    return tf.cast(tf.convert_to_tensor(value), tf.float32)


def crf_log_norm(
    potentials: tf.Tensor,
    mask: tf.Tensor,
    transitions: tf.Tensor,
    start_transitions: tf.Tensor,
    end_transitions: tf.Tensor,
) -> tf.Tensor:
    """Log partition function by the forward algorithm.

    Args:
      potentials: float [batch, seq_len, num_tags] unary scores (logits); cast to float32.
      mask: bool or int [batch, seq_len]; positions that belong to the chain (holes allowed).
      transitions: float32 [num_tags, num_tags], `transitions[from, to]`.
      start_transitions: float32 [num_tags], score of starting in a tag.
      end_transitions: float32 [num_tags], score of ending in a tag.

    Returns:
      float32 [batch]: log of the sum over all tag paths on the masked positions of
      exp(path score); 0 for a row without any masked-in position.
    """
    potentials, mask = _prepare(potentials, mask)
    transitions = _float32(transitions)
    start_transitions = _float32(start_transitions)
    end_transitions = _float32(end_transitions)
    batch_size = tf.shape(potentials)[0]
    num_tags = tf.shape(potentials)[2]

    def step(carry, elems):
        alpha, started = carry  # [batch, num_tags], [batch]
        unary, is_labelled = elems  # [batch, num_tags], [batch]
        # [batch, from, 1] + [1, from, to] -> logsumexp over `from` -> [batch, to]
        chained = tf.reduce_logsumexp(alpha[:, :, None] + transitions[None], axis=1) + unary
        first = start_transitions[None] + unary
        new_alpha = tf.where(started[:, None], chained, first)
        alpha = tf.where(is_labelled[:, None], new_alpha, alpha)
        return alpha, tf.logical_or(started, is_labelled)

    initial = (tf.zeros([batch_size, num_tags], tf.float32), tf.zeros([batch_size], tf.bool))
    # Time-major elements: [seq_len, batch, num_tags] and [seq_len, batch].
    alpha, started = tf.foldl(
        step, (tf.transpose(potentials, [1, 0, 2]), tf.transpose(mask)), initializer=initial)
    log_norm = tf.reduce_logsumexp(alpha + end_transitions[None], axis=1)
    return tf.where(started, log_norm, tf.zeros_like(log_norm))


def _pack_labelled(tag_ids: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Moves the tags at labelled positions to the front of each row, keeping their order.

    Returns:
      (packed_tags int32 [batch, seq_len], lengths int32 [batch]); packed_tags[b, :lengths[b]]
      are the labelled tags of row b in order, the rest is filler.
    """
    seq_len = tf.shape(mask)[1]
    positions = tf.range(seq_len)[None, :]  # [1, seq_len]
    sort_key = tf.where(mask, positions, positions + seq_len)  # labelled first, order kept
    order = tf.argsort(sort_key, axis=1, stable=True)
    packed = tf.gather(tag_ids, order, batch_dims=1)
    lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
    return packed, lengths


def crf_sequence_score(
    potentials: tf.Tensor,
    tag_ids: tf.Tensor,
    mask: tf.Tensor,
    transitions: tf.Tensor,
    start_transitions: tf.Tensor,
    end_transitions: tf.Tensor,
) -> tf.Tensor:
    """Unnormalised score of given tag paths.

    Args:
      potentials: float [batch, seq_len, num_tags]; cast to float32.
      tag_ids: int [batch, seq_len]; values at masked-out positions are ignored (any value,
        including negative ignore ids, is fine there).
      mask: bool or int [batch, seq_len]; positions in the chain.
      transitions, start_transitions, end_transitions: as in `crf_log_norm`.

    Returns:
      float32 [batch]: start + unaries + transitions between consecutive labelled positions + end.
    """
    potentials, mask = _prepare(potentials, mask)
    transitions = _float32(transitions)
    start_transitions = _float32(start_transitions)
    end_transitions = _float32(end_transitions)
    num_tags = tf.shape(potentials)[2]
    tag_ids = tf.where(mask, tf.cast(tag_ids, tf.int32), 0)
    unary = tf.reduce_sum(tf.one_hot(tag_ids, num_tags, dtype=tf.float32) * potentials, axis=2)
    unary_score = tf.reduce_sum(tf.where(mask, unary, 0.0), axis=1)

    packed, lengths = _pack_labelled(tag_ids, mask)
    seq_len = tf.shape(mask)[1]
    pair_mask = tf.range(1, seq_len)[None, :] < lengths[:, None]  # [batch, seq_len - 1]
    pairs = tf.stack([packed[:, :-1], packed[:, 1:]], axis=-1)  # [batch, seq_len - 1, 2]
    pair_scores = tf.gather_nd(transitions, pairs)
    transition_score = tf.reduce_sum(tf.where(pair_mask, pair_scores, 0.0), axis=1)

    has_labels = lengths > 0
    first_tag = packed[:, 0]
    last_tag = tf.gather(packed, tf.maximum(lengths - 1, 0), batch_dims=1)
    boundary = tf.gather(start_transitions, first_tag) + tf.gather(end_transitions, last_tag)
    return unary_score + transition_score + tf.where(has_labels, boundary, 0.0)


def crf_log_likelihood(
    potentials: tf.Tensor,
    tag_ids: tf.Tensor,
    mask: tf.Tensor,
    transitions: tf.Tensor,
    start_transitions: tf.Tensor,
    end_transitions: tf.Tensor,
) -> tf.Tensor:
    """Log-probability of the given tag paths: float32 [batch] (see `crf_sequence_score`)."""
    score = crf_sequence_score(
        potentials, tag_ids, mask, transitions, start_transitions, end_transitions)
    log_norm = crf_log_norm(potentials, mask, transitions, start_transitions, end_transitions)
    return score - log_norm


def viterbi_decode(
    potentials: tf.Tensor,
    mask: tf.Tensor,
    transitions: tf.Tensor,
    start_transitions: tf.Tensor,
    end_transitions: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Highest-scoring tag path over the masked positions.

    Args:
      potentials: float [batch, seq_len, num_tags]; cast to float32.
      mask: bool or int [batch, seq_len]; positions in the chain (holes allowed).
      transitions, start_transitions, end_transitions: as in `crf_log_norm`.

    Returns:
      (tag_ids int32 [batch, seq_len] with 0 at masked-out positions,
       best_score float32 [batch], the unnormalised score of that path; 0 for an empty row).
    """
    potentials, mask = _prepare(potentials, mask)
    transitions = _float32(transitions)
    start_transitions = _float32(start_transitions)
    end_transitions = _float32(end_transitions)
    batch_size = tf.shape(potentials)[0]
    num_tags = tf.shape(potentials)[2]
    identity = tf.broadcast_to(tf.range(num_tags)[None, :], [batch_size, num_tags])

    def step(carry, elems):
        delta, started, _ = carry
        unary, is_labelled = elems
        scores = delta[:, :, None] + transitions[None]  # [batch, from, to]
        best_prev = tf.argmax(scores, axis=1, output_type=tf.int32)  # [batch, to]
        chained = tf.reduce_max(scores, axis=1) + unary
        first = start_transitions[None] + unary
        new_delta = tf.where(started[:, None], chained, first)
        # Identity backpointers on masked steps and on the first labelled step, so backtracking
        # passes through holes unchanged.
        backpointers = tf.where((is_labelled & started)[:, None], best_prev, identity)
        delta = tf.where(is_labelled[:, None], new_delta, delta)
        return delta, tf.logical_or(started, is_labelled), backpointers

    initial = (tf.zeros([batch_size, num_tags], tf.float32), tf.zeros([batch_size], tf.bool),
               identity)
    deltas, started, backpointers = tf.scan(
        step, (tf.transpose(potentials, [1, 0, 2]), tf.transpose(mask)), initializer=initial)
    # deltas [seq_len, batch, num_tags]; backpointers [seq_len, batch, num_tags] (time-major).
    final = deltas[-1] + end_transitions[None]
    last_tag = tf.argmax(final, axis=1, output_type=tf.int32)  # [batch]
    best_score = tf.where(started[-1], tf.reduce_max(final, axis=1), 0.0)

    def back(next_tag, step_backpointers):
        return tf.gather(step_backpointers, next_tag, batch_dims=1)

    # earlier[t] = tag at position t for t < seq_len - 1, following backpointers[t + 1].
    earlier = tf.scan(back, backpointers[1:], initializer=last_tag, reverse=True)
    tags = tf.transpose(tf.concat([earlier, last_tag[None]], axis=0))  # [batch, seq_len]
    return tf.where(mask, tags, 0), best_score


class CRF(tf.keras.layers.Layer):
    """Transition parameters of a linear-chain CRF, with its loss and decoder.

    The layer always keeps its variables and computes in float32, whatever the global mixed
    precision policy.

    Constraints (if `transition_constraints` are given) are applied when DECODING only. The
    likelihood used for training is unconstrained on purpose: gold paths that break the scheme
    occur in real data (a sliding window that starts inside an entity begins with I-X;
    annotation errors give O -> I-X), and under constrained transitions each such sentence would
    cost about 1e4 nats of loss. Training learns low scores for those transitions anyway.

    The constraints are boolean masks, not tags: which tag may follow which is a convention of
    the tag scheme, and the caller builds them from its label map (the trainer with
    `data_pipeline.tags.iob2_allowed_transitions`), so this package parses no tag strings.

    Args:
      num_tags: K.
      transition_constraints: None (decode unconstrained) or (allowed bool [K, K] indexed
        [from, to], start_allowed bool [K]); a forbidden transition or first tag is never decoded.
    """

    def __init__(self, num_tags: int, *,
                 transition_constraints: tuple[np.ndarray, np.ndarray] | None = None,
                 name: str = "crf", **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(name=name, **kwargs)
        self.num_tags = int(num_tags)
        self.transitions = self.add_weight(
            name="transitions", shape=[self.num_tags, self.num_tags], dtype=tf.float32,
            initializer="zeros", trainable=True)
        self.start_transitions = self.add_weight(
            name="start_transitions", shape=[self.num_tags], dtype=tf.float32,
            initializer="zeros", trainable=True)
        self.end_transitions = self.add_weight(
            name="end_transitions", shape=[self.num_tags], dtype=tf.float32,
            initializer="zeros", trainable=True)
        penalty = np.zeros([self.num_tags, self.num_tags], np.float32)
        start_penalty = np.zeros([self.num_tags], np.float32)
        if transition_constraints is not None:
            allowed, start_allowed = (np.asarray(mask, bool) for mask in transition_constraints)
            if allowed.shape != (self.num_tags, self.num_tags) or \
                    start_allowed.shape != (self.num_tags,):
                raise ValueError(
                    f"transition_constraints have shapes {allowed.shape} and "
                    f"{start_allowed.shape}, expected ({self.num_tags}, {self.num_tags}) and "
                    f"({self.num_tags},) for num_tags={self.num_tags}")
            penalty[~allowed] = FORBIDDEN_TRANSITION_SCORE
            start_penalty[~start_allowed] = FORBIDDEN_TRANSITION_SCORE
        self.constrained = transition_constraints is not None
        self._transition_penalty = tf.constant(penalty)  # float32 [num_tags, num_tags]
        self._start_penalty = tf.constant(start_penalty)  # float32 [num_tags]

    def call(self, potentials: tf.Tensor) -> tf.Tensor:
        """Identity on float32 potentials (the CRF has no forward transform of its own)."""
        return tf.cast(potentials, tf.float32)

    def log_likelihood(self, potentials: tf.Tensor, tag_ids: tf.Tensor,
                       mask: tf.Tensor) -> tf.Tensor:
        """Unconstrained log p(tag_ids | potentials).

        Args:
          potentials: float [batch, seq_len, num_tags].
          tag_ids: int [batch, seq_len]; ignored where mask is False.
          mask: bool [batch, seq_len].

        Returns:
          float32 [batch].
        """
        return crf_log_likelihood(potentials, tag_ids, mask, self.transitions,
                                  self.start_transitions, self.end_transitions)

    def log_norm(self, potentials: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        """Unconstrained log partition function: float32 [batch]."""
        return crf_log_norm(potentials, mask, self.transitions, self.start_transitions,
                            self.end_transitions)

    def marginals(self, potentials: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        """Unconstrained tag marginals p(y_t = k | potentials), by forward-backward through
        autodiff: d log Z / d potentials[b, t, k] = p(y_t = k).

        Args:
          potentials: float [batch, seq_len, num_tags]; cast to float32.
          mask: bool [batch, seq_len]; positions in the chain (holes allowed).

        Returns:
          float32 [batch, seq_len, num_tags]: at a masked-in position the tags' marginals (they
          sum to 1); 0 at masked-out positions and in rows without any masked-in position.
        """
        potentials = tf.cast(potentials, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(potentials)
            log_norm = self.log_norm(potentials, mask)  # [batch]
        return tape.gradient(log_norm, potentials)

    def decode(self, potentials: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(Constrained) Viterbi path and its log-probability under the trained model.

        Args:
          potentials: float [batch, seq_len, num_tags].
          mask: bool [batch, seq_len]; positions to tag.

        Returns:
          (tag_ids int32 [batch, seq_len], 0 at masked-out positions;
           log_prob float32 [batch], log p(path | potentials) under the unconstrained model,
           which equals the constrained Viterbi score minus the log partition function because
           a constrained best path never takes a penalised transition).
        """
        tag_ids, best_score = viterbi_decode(
            potentials, mask, self.transitions + self._transition_penalty,
            self.start_transitions + self._start_penalty, self.end_transitions)
        return tag_ids, best_score - self.log_norm(potentials, mask)
