"""The encoder: embeddings, ELECTRA's projection, the transformer blocks; and the tagger's view
of it, which asks for the last N hidden states only and groups the variables by layer."""

from __future__ import annotations

import tensorflow as tf

from models.transformer.attention import attention_bias
from models.transformer.block import TransformerBlock
from models.transformer.config import EncoderConfig
from models.transformer.embeddings import Embeddings, initializer


class TransformerBackbone(tf.keras.layers.Layer):
    """A BERT-family encoder without pooler (BERT, RoBERTa, XLM-RoBERTa, ELECTRA discriminator).

    Its hidden states are numbered as transformers numbers them: 0 is the embeddings' output
    (after ELECTRA's projection), i is block i's output, num_hidden_layers the last.

    Attributes:
      config: the `EncoderConfig` it was built from.
      embeddings: the `Embeddings` layer.
      embeddings_project: ELECTRA's Dense [embedding_size -> hidden_size], or None.
      blocks: the `TransformerBlock`s, in order.
      loading_info: a `LoadingInfo` when `models.transformer.load_transformer` filled it from a
        checkpoint, None for a random initialisation.
    """

    def __init__(self, config: EncoderConfig, *, name: str | None = None, **kwargs):
        super().__init__(name=name or config.model_prefix, **kwargs)
        self.config = config
        self.embeddings = Embeddings(config, name="embeddings")
        self.embeddings_project = None
        if config.embedding_size != config.hidden_size:
            self.embeddings_project = tf.keras.layers.Dense(
                config.hidden_size, kernel_initializer=initializer(config),
                name="embeddings_project")
        self.blocks = [TransformerBlock(config, name=f"layer_{index}")
                       for index in range(config.num_hidden_layers)]
        self.loading_info = None

    def call(self, input_ids: tf.Tensor, attention_mask: tf.Tensor,
             training: bool | None = False, *, num_hidden_states: int | None = None,
             token_type_ids: tf.Tensor | None = None) -> dict[str, tuple[tf.Tensor, ...]]:
        """Runs the encoder.

        Args:
          input_ids: int32 [batch, seq_len], padded with config.pad_token_id (RoBERTa's positions
            are counted from it).
          attention_mask: int32 [batch, seq_len], 1 on real tokens, 0 on padding.
          training: enables dropout.
          num_hidden_states: how many of the last hidden states to return (1 to
            num_hidden_layers + 1); None for all. Earlier ones are not kept.
          token_type_ids: int32 [batch, seq_len], or None for all 0.

        Returns:
          {"hidden_states": tuple of num_hidden_states tensors [batch, seq_len, hidden] in the
          compute dtype, the last ones in order}.
        """
        total = self.config.num_hidden_layers + 1
        keep = total if num_hidden_states is None else int(num_hidden_states)
        if not 1 <= keep <= total:
            raise ValueError(f"num_hidden_states={keep}: this encoder has {total}")
        bias = attention_bias(attention_mask)  # float32 [batch, 1, 1, seq_len], for all blocks
        hidden = self.embeddings(input_ids, token_type_ids=token_type_ids, training=training)
        if self.embeddings_project is not None:
            hidden = self.embeddings_project(hidden)
        kept = [hidden] if keep == total else []
        for index, block in enumerate(self.blocks):
            hidden = block(hidden, bias, training=training)
            if index + 1 >= total - keep:
                kept.append(hidden)
        return {"hidden_states": tuple(kept)}

    def build_variables(self) -> None:
        """Creates the variables (by running a 1 x 2 batch), so that weights can be loaded."""
        if not self.built:
            self(tf.ones([1, 2], tf.int32), tf.ones([1, 2], tf.int32), training=False)


class TransformerEncoder(tf.keras.layers.Layer):
    """A `TransformerBackbone` returning its last `num_layers_used` hidden states.

    Args:
      transformer: the backbone (`models.transformer.load_transformer`).
      num_layers_used: 1 to num_hidden_layers + 1 (the embedding output counts as a layer).

    Raises:
      ValueError: num_layers_used out of range.
    """

    def __init__(self, transformer: TransformerBackbone, *, num_layers_used: int = 1,
                 name: str = "transformer_encoder", **kwargs):
        super().__init__(name=name, **kwargs)
        self.transformer = transformer
        self.num_transformer_layers = int(transformer.config.num_hidden_layers)
        available = self.num_transformer_layers + 1
        if not 1 <= num_layers_used <= available:
            raise ValueError(f"num_hidden_layers_used={num_layers_used} but this encoder has "
                             f"{available} hidden states (embeddings + "
                             f"{self.num_transformer_layers} layers)")
        self.num_layers_used = int(num_layers_used)
        self.output_dim = int(transformer.config.hidden_size)

    def call(self, input_ids: tf.Tensor, attention_mask: tf.Tensor,
             training: bool | None = False) -> dict[str, tuple[tf.Tensor, ...]]:
        """Runs the transformer.

        Args:
          input_ids: int32 [batch, seq_len].
          attention_mask: int32 [batch, seq_len], 1 on real tokens, 0 on padding.
          training: enables the transformer's dropout.

        Returns:
          {"hidden_states": tuple of num_layers_used tensors [batch, seq_len, hidden]}, the
          last ones, in order (compute dtype of the global policy).
        """
        return self.transformer(input_ids, attention_mask, training=training,
                                num_hidden_states=self.num_layers_used)

    def variable_groups(self) -> dict[str, list[tf.Variable]]:
        """Trainable variables by "embeddings" (ELECTRA's projection included) and
        "encoder_layer_<i>" (i = block index); empty groups omitted."""
        transformer = self.transformer
        groups = {"embeddings": list(transformer.embeddings.trainable_variables)}
        if transformer.embeddings_project is not None:
            groups["embeddings"] += transformer.embeddings_project.trainable_variables
        for index, block in enumerate(transformer.blocks):
            groups[f"encoder_layer_{index}"] = list(block.trainable_variables)
        return {name: variables for name, variables in groups.items() if variables}
