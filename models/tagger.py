"""The tagger: encoder -> hidden-layer combination -> optional BiLSTM -> softmax or CRF head.

The forward pass is split in two so a frozen encoder can run outside the gradient tape:

    encoded = model.encode(input_ids, attention_mask, training)   # encoder only
    logits = model.tag(encoded, attention_mask, training)          # everything trainable after

`tag()` depends only on `encode()`'s output and the attention mask.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from models import encoders, heads
from models.bilstm import MaskedBiLSTM
from models.config import TaggerConfig
from models.transformer import TransformerEncoder, load_transformer


class Tagger(tf.keras.Model):
    """Sequence tagger (Keras 2 model). Build it with `build_tagger(config, ...)`.

    Args:
      config: the architecture.
      transition_constraints: for head="crf" with crf_constrain_transitions: (allowed bool
        [num_tags, num_tags] indexed [from, to], start_allowed bool [num_tags]), the tag
        transitions the label map's scheme allows (the trainer passes
        `data_pipeline.tags.iob2_allowed_transitions(config.label_map)`; models/ parses no tags).
        Not used otherwise.

    Raises:
      ValueError: a bad config, or a constrained CRF without (or with wrongly shaped) masks.
    """

    def __init__(self, config: TaggerConfig, *,
                 transition_constraints: tuple[np.ndarray, np.ndarray] | None = None, **kwargs):
        super().__init__(name=kwargs.pop("name", "tagger"), **kwargs)
        config.validate()
        self.config = config
        if config.encoder == "bert":
            transformer = load_transformer(pretrained=config.pretrained,
                                           encoder_config=config.encoder_config)
            num_used = 1 if config.hidden_layers == "last" else config.num_hidden_layers_used
            self.encoder = TransformerEncoder(transformer, num_layers_used=num_used)
        else:
            self.encoder = encoders.EmbeddingEncoder(config.vocab_size, config.embedding_dim)
        self.combiner = encoders.HiddenLayerCombiner(
            config.hidden_layers, config.num_hidden_layers_used)
        self.feature_dropout = tf.keras.layers.Dropout(config.dropout, name="feature_dropout")
        self.bilstm_layers = [MaskedBiLSTM(config.bilstm_units, name=f"bilstm_{i}")
                              for i in range(config.bilstm_layers)]
        self.bilstm_dropouts = [
            tf.keras.layers.Dropout(config.bilstm_dropout, name=f"bilstm_dropout_{i}")
            for i in range(config.bilstm_layers)]
        # float32 classifier: logits (and everything after them) stay float32 under mixed
        # precision; it costs one [features x num_tags] matmul.
        self.classifier = tf.keras.layers.Dense(
            config.num_tags, dtype="float32",
            kernel_initializer=tf.keras.initializers.TruncatedNormal(stddev=0.02),
            name="classifier")
        if config.head == "crf":
            if config.crf_constrain_transitions and transition_constraints is None:
                raise ValueError(
                    "head='crf' with crf_constrain_transitions=True needs transition_constraints="
                    "(allowed, start_allowed), e.g. data_pipeline.tags.iob2_allowed_transitions("
                    "label_map); or set crf_constrain_transitions=False")
            self._head = heads.CRFHead(
                config.num_tags, ignore_id=config.ignore_id,
                transition_constraints=(transition_constraints
                                        if config.crf_constrain_transitions else None))
            self.crf = self._head.crf  # tracked by Keras (weights, checkpoints)
        else:
            self._head = heads.SoftmaxHead(ignore_id=config.ignore_id)
            self.crf = None

    # ---- forward ---------------------------------------------------------------------------

    def encode(self, input_ids: tf.Tensor, attention_mask: tf.Tensor,
               training: bool | None = False) -> dict[str, tuple[tf.Tensor, ...]]:
        """Runs the encoder only.

        Args:
          input_ids: int32 [batch, seq_len].
          attention_mask: int32 [batch, seq_len], 1 on real tokens (incl. specials), 0 on padding.
          training: enables the encoder's dropout.

        Returns:
          {"hidden_states": tuple of N tensors [batch, seq_len, hidden]} in the compute dtype;
          N = 1 for hidden_layers="last", else num_hidden_layers_used.
        """
        return self.encoder(input_ids, attention_mask, training=training)

    def cache_features(self, input_ids: tf.Tensor, attention_mask: tf.Tensor) -> tf.Tensor:
        """The encoder's output as one tensor, for a frozen-encoder feature cache.

        Args:
          input_ids, attention_mask: int32 [batch, seq_len], as for `encode`.

        Returns:
          [batch, seq_len, N * hidden] in the compute dtype: the N hidden states `encode`
          returns (inference mode), concatenated in order; `encoded_from_features` inverts it.
        """
        hidden_states = self.encode(input_ids, attention_mask, training=False)["hidden_states"]
        if len(hidden_states) == 1:
            return hidden_states[0]
        return tf.concat(hidden_states, axis=-1)  # [batch, seq_len, N * hidden]

    @property
    def cached_feature_dim(self) -> int:
        """F of `cache_features`: N hidden states times the encoder's output size."""
        return self.combiner.num_layers * self.encoder.output_dim

    def encoded_from_features(self, features: tf.Tensor) -> dict[str, tuple[tf.Tensor, ...]]:
        """`cache_features`' output (any float dtype) -> what `encode` returns, for `tag`.

        Args:
          features: [batch, seq_len, N * hidden].

        Returns:
          {"hidden_states": N tensors [batch, seq_len, hidden]} in the compute dtype.
        """
        features = tf.cast(features, self.compute_dtype)
        num_layers = self.combiner.num_layers
        if num_layers == 1:
            return {"hidden_states": (features,)}
        return {"hidden_states": tuple(tf.split(features, num_layers, axis=-1))}

    def tag(self, encoded: dict[str, tuple[tf.Tensor, ...]], attention_mask: tf.Tensor,
            training: bool | None = False) -> tf.Tensor:
        """Everything after the encoder: layer combination, dropout, BiLSTM, classifier.

        Args:
          encoded: the output of `encode`.
          attention_mask: int32 [batch, seq_len]; the BiLSTM skips padding in both directions.
          training: enables dropout.

        Returns:
          logits: float32 [batch, seq_len, num_tags].
        """
        features = self.combiner(encoded["hidden_states"])  # [batch, seq_len, F]
        features = self.feature_dropout(features, training=training)
        if self.bilstm_layers:
            mask = tf.cast(attention_mask, tf.bool)
            for bilstm, dropout in zip(self.bilstm_layers, self.bilstm_dropouts):
                # [batch, seq_len, 2 * units]; padding never reaches real steps (bilstm.py).
                features = bilstm(features, mask=mask, training=training)
                features = dropout(features, training=training)
        return tf.cast(self.classifier(features), tf.float32)

    def call(self, inputs: dict[str, tf.Tensor], training: bool | None = False) -> tf.Tensor:
        """inputs: dict with input_ids, attention_mask int32 [batch, seq_len] (other keys are
        ignored) -> logits float32 [batch, seq_len, num_tags]."""
        encoded = self.encode(inputs["input_ids"], inputs["attention_mask"], training=training)
        return self.tag(encoded, inputs["attention_mask"], training=training)

    # ---- loss and decoding -----------------------------------------------------------------

    def compute_loss(self, logits: tf.Tensor, label_ids: tf.Tensor,
                     label_mask: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """Masked loss as a sum plus the number of counted tokens.

        Softmax: sum of token cross-entropies. CRF: sum of sentence negative log-likelihoods,
        the chain running over the counted positions only (holes allowed). The trainer divides
        the summed loss by the GLOBAL count.

        Args:
          logits: float32 [batch, seq_len, num_tags] from `tag` / `call`.
          label_ids: int32 [batch, seq_len], config.ignore_id where nothing is counted.
          label_mask: optional bool [batch, seq_len]; if given, positions outside it are not
            counted even if their label is not the ignore id.

        Returns:
          (loss_sum float32 [], count float32 []).
        """
        return self._head.loss(logits, label_ids, label_mask)

    def decode(self, logits: tf.Tensor, label_mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Best tags at the labelled positions.

        Args:
          logits: float32 [batch, seq_len, num_tags].
          label_mask: bool [batch, seq_len], positions carrying a label (char_index >= 0).

        Returns:
          (tag_ids int32 [batch, seq_len], 0 outside label_mask;
           scores float32 [batch], log-probability of the decoded sequence under the model:
           softmax: sum of the chosen tags' log-softmax; CRF: Viterbi path score minus the log
           partition function, the path constrained to valid IOB2 if configured).
        """
        return self._head.decode(logits, label_mask)

    def tag_probabilities(self, logits: tf.Tensor, label_mask: tf.Tensor) -> tf.Tensor:
        """The probability of each tag at each labelled position, as the head defines it.

        Args:
          logits: float32 [batch, seq_len, num_tags].
          label_mask: bool [batch, seq_len], positions carrying a label.

        Returns:
          float32 [batch, seq_len, num_tags], 0 outside label_mask; at a labelled position the
          tags' probabilities sum to 1. Softmax: the softmax of the logits. CRF: the marginals
          p(y_t = k | x) of the unconstrained CRF over the labelled positions (forward-backward).
        """
        return self._head.tag_probabilities(logits, label_mask)

    @property
    def transitions(self) -> tf.Variable:
        """CRF transition scores float32 [num_tags, num_tags], indexed [from, to]."""
        if self.crf is None:
            raise AttributeError("transitions: this tagger has a softmax head, not a CRF")
        return self.crf.transitions

    # ---- variable groups -------------------------------------------------------------------

    def variable_groups(self) -> dict[str, list[tf.Variable]]:
        """Trainable variables in named groups, in order: "embeddings", "encoder_layer_0" ..
        "encoder_layer_{L-1}", "layer_mix", "bilstm", "head", "crf". Empty groups are omitted;
        every trainable variable is in exactly one group.

        Raises:
          RuntimeError: the groups do not cover the trainable variables exactly once.
        """
        groups = dict(self.encoder.variable_groups())
        groups["layer_mix"] = list(self.combiner.trainable_variables)
        groups["bilstm"] = [v for layer in self.bilstm_layers for v in layer.trainable_variables]
        groups["head"] = list(self.classifier.trainable_variables)
        groups["crf"] = list(self.crf.trainable_variables) if self.crf is not None else []
        groups = {name: variables for name, variables in groups.items() if variables}
        grouped = [v.ref() for variables in groups.values() for v in variables]
        expected = {v.ref() for v in self.trainable_variables}
        if len(grouped) != len(set(grouped)) or set(grouped) != expected:
            missing = sorted(r.deref().name for r in expected - set(grouped))
            raise RuntimeError(f"variable groups do not cover the trainable variables exactly "
                               f"once; ungrouped: {missing}")
        return groups

    def token_embedding_variables(self) -> list[tf.Variable]:
        """The trainable matrices indexed by input ids ([vocab, dim]: BERT's word embeddings, or
        the embedding encoder's table). Only rows of ids that occur in the input ever get a
        gradient, which lets the optimizer update just those rows (trainer/optimization.py)."""
        return [v for v in self.encoder.trainable_variables
                if "word_embeddings" in v.name or "embedding_encoder/" in v.name]

    def encoder_group_names(self) -> list[str]:
        """Names of the groups that belong to the encoder (not "layer_mix", which runs in
        `tag()` and trains even when the encoder is frozen)."""
        return list(self.encoder.variable_groups())


def build_tagger(config: TaggerConfig, *,
                 transition_constraints: tuple[np.ndarray, np.ndarray] | None = None) -> Tagger:
    """Creates a tagger and builds all its variables (call it after setting the mixed
    precision policy, which the layers pick up when they are created).

    Args:
      config: a TaggerConfig; validated again here.
      transition_constraints: the CRF's masks, see `Tagger`.

    Returns:
      A built Tagger (tf.keras.Model).
    """
    model = Tagger(config, transition_constraints=transition_constraints)
    dummy = {"input_ids": tf.zeros([1, 2], tf.int32), "attention_mask": tf.ones([1, 2], tf.int32)}
    model(dummy, training=False)
    return model
