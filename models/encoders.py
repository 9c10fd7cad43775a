"""Encoders (BERT-family via transformers, or plain embeddings) and hidden-layer combination.

An encoder maps (input_ids, attention_mask) to a dict {"hidden_states": (h_1, ..., h_N)}, the
N hidden layers the tagger combines, each [batch, seq_len, hidden] in the compute dtype. The
combination itself (`HiddenLayerCombiner`) runs in the tagger's `tag()`, so that its learned
weights ("layer_mix") still train when the encoder is frozen and runs outside the gradient tape.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import inspect
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

import tensorflow as tf
import transformers
from transformers.models.auto.modeling_tf_auto import TF_MODEL_MAPPING

from models.pretrained_files import pretrained_directory_problem

# ".../encoder/layer_._3/attention/..." (BERT, RoBERTa, XLM-R, ELECTRA) or
# ".../transformer/layer_._3/..." (DistilBERT): the index of the transformer block.
_LAYER_INDEX = re.compile(r"/layer_\._(\d+)/")

# transformers' TF messages this project replaces by its own (see `LoadingInfo.summary`): the
# deprecation banner every TF model prints once (our stack pins the last TF release, 4.54), and
# the multi-line blocks `from_pretrained` logs about unused / missing / mismatched weights.
# (modeling_tf_pytorch_utils logs them for PyTorch-format safetensors.)
_TF_UTILS_LOGGER = "transformers.modeling_tf_utils"
_LOADING_LOGGERS = (_TF_UTILS_LOGGER, "transformers.modeling_tf_pytorch_utils")
_BANNER = ("TensorFlow and JAX classes are deprecated",)
_LOADING_BLOCKS = ("Some layers from the model checkpoint", "All model checkpoint layers were used",
                   "Some layers of ", "All the layers of ", "Some weights of ",
                   "All PyTorch model weights were used", "All the weights of ")


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


logging.getLogger(_TF_UTILS_LOGGER).addFilter(_DropMessages(_BANNER))


@contextlib.contextmanager
def _without_loading_blocks() -> Iterator[None]:
    """Silences `from_pretrained`'s weight-loading blocks while it runs (only there: other
    callers of transformers in the same process keep them)."""
    loggers = [logging.getLogger(name) for name in _LOADING_LOGGERS]
    quiet = _DropMessages(_LOADING_BLOCKS)
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


@dataclasses.dataclass(frozen=True)
class LoadingInfo:
    """How `from_pretrained` matched a checkpoint's weights to the model's.

    Attributes:
      source: the directory or hub name the weights came from.
      model_weights: number of weights the model has.
      model_prefix: the main layer's name scope ("bert"), left out of the summary's names.
      unused: checkpoint weights the model has no place for (e.g. the pooler, which the tagger
        leaves out), by name as the checkpoint spells them.
      missing: model weights the checkpoint lacks (randomly initialised), by name.
      mismatched: (name, checkpoint shape, model shape) of weights left random for their shape.
    """

    source: str
    model_weights: int
    model_prefix: str = ""
    unused: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()

    @property
    def loaded(self) -> int:
        return self.model_weights - len(self.missing) - len(self.mismatched)

    @property
    def complete(self) -> bool:
        """Every model weight came from the checkpoint."""
        return not self.missing and not self.mismatched

    def summary(self) -> str:
        """One line, e.g. "pretrained weights: 197 loaded, pooler (2) unused, 0 missing"."""
        unused = _by_part(self.unused, self.model_prefix) or "0"
        parts = [f"{self.loaded} loaded", f"{unused} unused"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing "
                         f"({_by_part(self.missing, self.model_prefix)}; randomly initialised)")
        else:
            parts.append("0 missing")
        if self.mismatched:
            shapes = ", ".join(f"{name} {list(found)} in the checkpoint, {list(wanted)} here"
                               for name, found, wanted in self.mismatched[:3])
            more = ", ..." if len(self.mismatched) > 3 else ""
            parts.append(f"{len(self.mismatched)} of another shape, randomly initialised "
                         f"({shapes}{more})")
        return "pretrained weights: " + ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "model_weights": self.model_weights,
                "loaded": self.loaded, "complete": self.complete, "unused": list(self.unused),
                "missing": list(self.missing),
                "mismatched": [{"name": name, "checkpoint_shape": list(found),
                                "model_shape": list(wanted)}
                               for name, found, wanted in self.mismatched],
                "summary": self.summary()}


_BLOCK_OF_WEIGHT = re.compile(r"(?:^|[/.])(encoder|transformer)[/.]layer(?:_\._|[/.])(\d+)[/.]")


def _part(name: str, model_prefix: str) -> str:
    """The component a weight belongs to, for a one-line summary (model prefix "bert"; TF or
    PyTorch names): "bert/pooler/dense/kernel:0" and "bert.pooler.dense.weight" -> "pooler",
    "tf_bert_model/bert/encoder/layer_._3/output/dense/bias:0" -> "encoder layer 3",
    "bert/embeddings/word_embeddings/weight:0" -> "embeddings"."""
    block = _BLOCK_OF_WEIGHT.search(name)
    if block:
        return f"{block.group(1)} layer {block.group(2)}"
    parts = [p for p in re.split(r"[/.]", name) if p]
    while len(parts) > 1 and (parts[0].startswith("tf_") or parts[0] == model_prefix):
        parts = parts[1:]  # the model's and its main layer's name scopes
    return parts[0] if parts else name


def _by_part(names: tuple[str, ...], model_prefix: str) -> str:
    """"pooler (2)", or "pooler (2), mlm___cls (5)"; empty for no names."""
    counts = collections.Counter(_part(name, model_prefix) for name in names)
    return ", ".join(f"{part} ({count})" for part, count in counts.items())


def _transformer_class(config: transformers.PretrainedConfig) -> type:
    """The bare TF encoder class (TFBertModel, TFXLMRobertaModel, ...) for a config."""
    try:
        return TF_MODEL_MAPPING[type(config)]
    except KeyError:
        raise ValueError(
            f"model_type {config.model_type!r} has no TensorFlow model in transformers "
            f"{transformers.__version__}") from None


def _no_pooler_kwargs(model_class: type) -> dict[str, Any]:
    # The pooler would get no gradient from a tagging loss; leave it out where the class can.
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        return {"add_pooling_layer": False}
    return {}


def load_transformer(*, pretrained: str | None = None,
                     encoder_config: str | dict[str, Any] | None = None) -> tf.keras.Model:
    """Creates a bare transformers TF encoder without pooler.

    Args:
      pretrained: local directory or hub name. Weights come from model.safetensors if present,
        else tf_model.h5; pickled PyTorch weights are never loaded (no from_pt) and remote code
        is never run (trust_remote_code=False).
      encoder_config: instead of `pretrained`: a config directory, or a dict of config values
        with optional "model_type" (default "bert"), for a random initialisation.

    Returns:
      A transformers TFPreTrainedModel (e.g. TFBertModel), not yet called if randomly initialised.
      Its `tagger_loading_info` is a `LoadingInfo` for pretrained weights (transformers' own
      messages about them are not logged), None for a random initialisation.

    Raises:
      ValueError: a local `pretrained` directory without config.json or weights this loads
        (`pretrained_files.pretrained_directory_problem` says which, and how to convert pickles).
    """
    if pretrained is not None:
        if os.path.isdir(pretrained):
            problem = pretrained_directory_problem(pretrained)
            if problem:
                raise ValueError(problem)
        config = transformers.AutoConfig.from_pretrained(pretrained, trust_remote_code=False)
        model_class = _transformer_class(config)
        with _without_loading_blocks():
            model, info = model_class.from_pretrained(
                pretrained, config=config, from_pt=False, output_loading_info=True,
                **_no_pooler_kwargs(model_class))
        model.tagger_loading_info = LoadingInfo(
            source=str(pretrained), model_weights=len(model.weights),
            model_prefix=str(getattr(model, "base_model_prefix", "")),
            unused=tuple(info.get("unexpected_keys", ())),
            missing=tuple(info.get("missing_keys", ())),
            mismatched=tuple((name, tuple(found), tuple(wanted))
                             for name, found, wanted in info.get("mismatched_keys", ())))
        return model
    if isinstance(encoder_config, dict):
        values = dict(encoder_config)
        config = transformers.AutoConfig.for_model(values.pop("model_type", "bert"), **values)
    else:
        config = transformers.AutoConfig.from_pretrained(encoder_config, trust_remote_code=False)
    model_class = _transformer_class(config)
    model = model_class(config, **_no_pooler_kwargs(model_class))
    model.tagger_loading_info = None
    return model


class TransformerEncoder(tf.keras.layers.Layer):
    """A BERT-family transformer returning its last `num_layers_used` hidden states."""

    def __init__(self, transformer: tf.keras.Model, *, num_layers_used: int = 1,
                 name: str = "transformer_encoder", **kwargs):
        super().__init__(name=name, **kwargs)
        self.transformer = transformer
        self.num_transformer_layers = int(transformer.config.num_hidden_layers)
        available = self.num_transformer_layers + 1  # the embedding output counts as a layer
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
        need_all = self.num_layers_used > 1
        outputs = self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                   output_hidden_states=need_all, return_dict=True,
                                   training=training)
        if need_all:
            return {"hidden_states": tuple(outputs.hidden_states[-self.num_layers_used:])}
        return {"hidden_states": (outputs.last_hidden_state,)}

    def variable_groups(self) -> dict[str, list[tf.Variable]]:
        """Trainable variables by "embeddings", "encoder_layer_<i>" (i = block index) and, for
        architectures whose variables fit neither (e.g. ALBERT's shared layer group),
        "encoder_other"; empty groups omitted."""
        embeddings, layers, other = [], {}, []
        for variable in self.trainable_variables:
            match = _LAYER_INDEX.search(variable.name)
            if match:
                layers.setdefault(int(match.group(1)), []).append(variable)
            elif "embedding" in variable.name:
                embeddings.append(variable)
            else:
                other.append(variable)
        groups = {"embeddings": embeddings}
        for index in sorted(layers):
            groups[f"encoder_layer_{index}"] = layers[index]
        groups["encoder_other"] = other
        return {name: variables for name, variables in groups.items() if variables}


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
