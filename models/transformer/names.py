"""Which checkpoint tensor goes where: transformers' weight names, PyTorch and TensorFlow, mapped
to the backbone's variables.

A checkpoint names each weight in one of two ways (shown for block 3's query projection):

    PyTorch (model.safetensors)   [bert.]encoder.layer.3.attention.self.query.weight   [out, in]
    TensorFlow (tf_model.h5)      .../bert/encoder/layer_._3/attention/self/query/kernel:0
                                                                                       [in, out]

and a `WeightSlot` holds both names of one weight, below the model prefix ("bert", "roberta",
"electra"), with the variable (or the part of it) that takes the weight. The query, key and value
weights of a block are the three parts of its fused "qkv" variable:

    qkv/kernel [hidden, 3 * hidden] = [query kernel | key kernel | value kernel]
    qkv/bias   [3 * hidden]         = [query bias   | key bias   | value bias  ]
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from models.transformer.backbone import TransformerBackbone


@dataclasses.dataclass(frozen=True)
class WeightSlot:
    """One checkpoint weight and the variable, or equal part of a variable, it fills.

    Attributes:
      pytorch_name: e.g. "encoder.layer.0.attention.self.query.weight" (no model prefix).
      tensorflow_name: e.g. "encoder/layer_._0/attention/self/query/kernel:0" (below the model
        prefix).
      variable: the backbone's variable.
      transpose: the PyTorch tensor is the transpose of the TensorFlow one (Linear weights).
      part, parts: the weight is part `part` of `parts` equal slices of the variable's last axis.
    """

    pytorch_name: str
    tensorflow_name: str
    variable: tf.Variable
    transpose: bool = False
    part: int = 0
    parts: int = 1

    @property
    def shape(self) -> tuple[int, ...]:
        """The weight's shape in TensorFlow layout (a kernel is [in, out])."""
        shape = [int(d) for d in self.variable.shape]
        shape[-1] //= self.parts
        return tuple(shape)

    def checkpoint_shape(self, pytorch: bool) -> tuple[int, ...]:
        """The shape the weight has in a PyTorch (`pytorch`) or TensorFlow checkpoint."""
        return self.shape[::-1] if pytorch and self.transpose else self.shape

    def columns(self) -> slice:
        """The variable's last-axis slice this weight fills."""
        width = self.shape[-1]
        return slice(self.part * width, (self.part + 1) * width)

    def extract(self, array: np.ndarray, *, pytorch: bool) -> np.ndarray:
        """This weight's part of `array` (shaped like the variable, e.g. its value or its
        gradient) as a checkpoint stores it: float32, PyTorch or TensorFlow layout."""
        part = np.asarray(array, dtype=np.float32)[..., self.columns()]
        return np.ascontiguousarray(part.T) if pytorch and self.transpose else part

    def value(self, *, pytorch: bool) -> np.ndarray:
        """The weight's current value as a checkpoint stores it (see `extract`)."""
        return self.extract(self.variable.numpy(), pytorch=pytorch)


def _linear(pytorch: str, tensorflow: str, layer: tf.keras.layers.Dense, *, part: int = 0,
            parts: int = 1) -> list[WeightSlot]:
    """The kernel and bias of a Dense layer (or of its part `part` of `parts`)."""
    return [WeightSlot(f"{pytorch}.weight", f"{tensorflow}/kernel:0", layer.kernel,
                       transpose=True, part=part, parts=parts),
            WeightSlot(f"{pytorch}.bias", f"{tensorflow}/bias:0", layer.bias, part=part,
                       parts=parts)]


def _layer_norm(pytorch: str, tensorflow: str,
                layer: tf.keras.layers.LayerNormalization) -> list[WeightSlot]:
    return [WeightSlot(f"{pytorch}.weight", f"{tensorflow}/gamma:0", layer.gamma),
            WeightSlot(f"{pytorch}.bias", f"{tensorflow}/beta:0", layer.beta)]


def weight_slots(backbone: TransformerBackbone) -> list[WeightSlot]:
    """Every weight of a built backbone, in transformers' order (embeddings, then the blocks).

    Raises:
      ValueError: the backbone has no variables yet (call `build_variables()` first).
    """
    if not backbone.built:
        raise ValueError("the backbone has no variables yet: call build_variables() first")
    embeddings = backbone.embeddings
    slots = [
        WeightSlot("embeddings.word_embeddings.weight", "embeddings/word_embeddings/weight:0",
                   embeddings.word_embeddings),
        WeightSlot("embeddings.position_embeddings.weight",
                   "embeddings/position_embeddings/embeddings:0", embeddings.position_embeddings),
        WeightSlot("embeddings.token_type_embeddings.weight",
                   "embeddings/token_type_embeddings/embeddings:0",
                   embeddings.token_type_embeddings),
        *_layer_norm("embeddings.LayerNorm", "embeddings/LayerNorm", embeddings.layer_norm),
    ]
    if backbone.embeddings_project is not None:
        slots += _linear("embeddings_project", "embeddings_project", backbone.embeddings_project)
    for index, block in enumerate(backbone.blocks):
        pytorch, tensorflow = f"encoder.layer.{index}", f"encoder/layer_._{index}"
        for part, name in enumerate(("query", "key", "value")):
            slots += _linear(f"{pytorch}.attention.self.{name}",
                             f"{tensorflow}/attention/self/{name}", block.attention.qkv,
                             part=part, parts=3)
        slots += _linear(f"{pytorch}.attention.output.dense",
                         f"{tensorflow}/attention/output/dense", block.attention.output_dense)
        slots += _layer_norm(f"{pytorch}.attention.output.LayerNorm",
                             f"{tensorflow}/attention/output/LayerNorm",
                             block.attention_layer_norm)
        slots += _linear(f"{pytorch}.intermediate.dense", f"{tensorflow}/intermediate/dense",
                         block.intermediate)
        slots += _linear(f"{pytorch}.output.dense", f"{tensorflow}/output/dense",
                         block.output_dense)
        slots += _layer_norm(f"{pytorch}.output.LayerNorm", f"{tensorflow}/output/LayerNorm",
                             block.output_layer_norm)
    return slots


def pytorch_alias(name: str) -> str:
    """Old PyTorch checkpoints (e.g. Google's BERT converted in 2019) call LayerNorm's weight
    and bias "gamma" and "beta", as transformers still accepts: "x.LayerNorm.gamma" ->
    "x.LayerNorm.weight", "x.LayerNorm.beta" -> "x.LayerNorm.bias"; other names unchanged."""
    if name.endswith("LayerNorm.gamma"):
        return name[:-len("gamma")] + "weight"
    if name.endswith("LayerNorm.beta"):
        return name[:-len("beta")] + "bias"
    return name
