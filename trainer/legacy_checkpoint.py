"""Checkpoints written before issue #22 (the encoder was transformers' TFBertModel & co.),
restored into today's model and optimizer by a name map.

A checkpoint names each variable by its path through the object graph. Everything but the encoder
kept its path; the encoder's variables moved, and the query, key and value projections of a
block became one variable (their kernels side by side, see models/transformer/names.py). Below
`model/encoder/transformer/`, for block 3 of a BERT (RoBERTa and XLM-R: "roberta", ELECTRA:
"electra", which also has embeddings_project/{kernel,bias} in both):

    before #22                                            now
    bert/embeddings/weight                                embeddings/word_embeddings
    bert/embeddings/embeddings                            embeddings/position_embeddings
    bert/embeddings/token_type_embeddings                 embeddings/token_type_embeddings
    bert/embeddings/LayerNorm/{gamma,beta}                embeddings/layer_norm/{gamma,beta}
    bert/encoder/layer/3/attention/self_attention/        blocks/3/attention/qkv/{kernel,bias}
        {query,key,value}/{kernel,bias}                       = [query | key | value]
    bert/encoder/layer/3/attention/dense_output/dense/*   blocks/3/attention/output_dense/*
    bert/encoder/layer/3/attention/dense_output/LayerNorm blocks/3/attention_layer_norm
    bert/encoder/layer/3/intermediate/dense/*             blocks/3/intermediate/*
    bert/encoder/layer/3/bert_output/dense/*              blocks/3/output_dense/*
    bert/encoder/layer/3/bert_output/LayerNorm/*          blocks/3/output_layer_norm/*
    roberta/pooler/dense/*  (RoBERTa kept its pooler)     -- (no pooler: left unread)

The new paths need no table: they are read off the objects being restored (`checkpoint_keys`);
the old ones follow from each weight's TensorFlow name (`models.transformer.WeightSlot`).

The optimizer's slots (m and v of GroupedAdamW) are saved by position, `optimizer/_variables/N`:
1 + 2j and 2 + 2j are the m and v of the j-th variable the optimizer was built with, i.e. of the
j-th variable of the trainable groups in order. That order is today's but for the encoder: each
block's query, key and value were three variables (in that order, as `weight_slots` lists them),
the embedding tables came word, token type, position, and RoBERTa's pooler (which the old model
kept and trained) followed the last block. A fused variable's slots are its three old variables'
slots side by side; the pooler's are left unread. The count of saved slots is checked.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import tensorflow as tf

from models.transformer import weight_slots

ENCODER_PATH = "model/encoder/transformer"
VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
LEGACY_PREFIXES = ("bert", "roberta", "electra")  # transformers' main layer names
# A weight's TensorFlow name (below the main layer) -> its path in a checkpoint before #22.
_LEGACY_PATHS = [
    (re.compile(r":0$"), ""),
    (re.compile(r"^embeddings/word_embeddings/weight$"), "embeddings/weight"),
    (re.compile(r"^embeddings/position_embeddings/embeddings$"), "embeddings/embeddings"),
    (re.compile(r"^embeddings/token_type_embeddings/embeddings$"),
     "embeddings/token_type_embeddings"),
    (re.compile(r"^encoder/layer_\._(\d+)/"), r"encoder/layer/\1/"),
    (re.compile(r"/attention/self/"), "/attention/self_attention/"),
    (re.compile(r"/attention/output/"), "/attention/dense_output/"),
    (re.compile(r"^(encoder/layer/\d+)/output/"), r"\1/bert_output/"),
]
_SLOT = re.compile(r"^(.*)/_variables/\d+" + re.escape(VALUE) + "$")


class LegacyCheckpointError(ValueError):
    """A checkpoint from before #22 that cannot be restored into this model (one line)."""


def is_legacy(path: str) -> bool:
    """Whether the checkpoint `path` (a prefix) holds the tagger's encoder as transformers'
    TF model, i.e. was written before #22."""
    starts = tuple(f"{ENCODER_PATH}/{prefix}/" for prefix in LEGACY_PREFIXES)
    return any(name.startswith(starts) for name, _ in tf.train.list_variables(path))


def legacy_path(tensorflow_name: str) -> str:
    """A weight's path below the main layer in a checkpoint before #22, from its TensorFlow name:
    "encoder/layer_._3/output/dense/kernel:0" -> "encoder/layer/3/bert_output/dense/kernel"."""
    for pattern, replacement in _LEGACY_PATHS:
        tensorflow_name = pattern.sub(replacement, tensorflow_name)
    return tensorflow_name


def _escape(name: str) -> str:
    """A child's name as a checkpoint key spells it (TensorFlow escapes "." and "/")."""
    return name.replace(".", "..").replace("/", ".S")


def checkpoint_keys(objects: dict[str, Any]) -> dict[int, tuple[tf.Variable, str]]:
    """id(variable) -> (variable, its key) for every variable `tf.train.Checkpoint(**objects)`
    saves: the path of names by which a breadth-first walk of the object graph first reaches it,
    as TensorFlow names them."""
    root = tf.train.Checkpoint(**objects)
    view = tf.train.TrackableView(root)
    seen, keys = {id(root)}, {}
    queue = [(root, "")]
    while queue:
        parent, path = queue.pop(0)
        for name, child in view.children(parent).items():
            if id(child) in seen:
                continue
            seen.add(id(child))
            child_path = f"{path}/{_escape(name)}" if path else _escape(name)
            if isinstance(child, tf.Variable):
                keys[id(child)] = (child, child_path + VALUE)
            else:
                queue.append((child, child_path))
    return keys


def encoder_sources(model) -> dict[int, list[str]]:
    """id(encoder variable) -> the keys before #22 its value is made of (the fused QKV
    variable: query, key and value, concatenated on the last axis)."""
    backbone = model.encoder.transformer
    prefix = backbone.config.model_prefix
    sources: dict[int, list[str]] = {}
    for slot in weight_slots(backbone):  # a fused variable's parts come in order
        key = f"{ENCODER_PATH}/{prefix}/{legacy_path(slot.tensorflow_name)}{VALUE}"
        sources.setdefault(id(slot.variable), []).append(key)
    return sources


# Before #22 the embeddings group's variables came in this order (TFBertEmbeddings built its
# tables word, token type, position), by their TensorFlow names below the main layer.
_OLD_EMBEDDINGS_ORDER = ("embeddings/word_embeddings/weight:0",
                         "embeddings/token_type_embeddings/embeddings:0",
                         "embeddings/position_embeddings/embeddings:0",
                         "embeddings/LayerNorm/gamma:0", "embeddings/LayerNorm/beta:0",
                         "embeddings_project/kernel:0", "embeddings_project/bias:0")
# Model types whose TF model kept its pooler (TFRobertaModel had no add_pooling_layer): its
# kernel and bias were trained in a group "encoder_other" after the encoder layers.
_OLD_POOLER = ("roberta", "xlm-roberta")


def _old_optimizer_variables(model, base) -> list[tuple[int, int] | None]:
    """The variables the optimizer (`trainer.optimization.GroupedAdamW`) was built with before
    #22, in order: (id of today's variable, part of it) each, None for the pooler (which has no
    variable today)."""
    backbone = model.encoder.transformer
    slots_by_name = {slot.tensorflow_name: slot for slot in weight_slots(backbone)}
    old: list[tuple[int, int] | None] = []
    after_encoder = False
    for group, variables in base.variable_groups.items():
        encoder_group = group == "embeddings" or group.startswith("encoder_layer_")
        if not encoder_group and not after_encoder:
            after_encoder = True
            if backbone.config.model_type in _OLD_POOLER and any(
                    name.startswith("encoder_layer_") for name in base.variable_groups):
                old += [None, None]
        if group == "embeddings":
            slots = [slots_by_name[name] for name in _OLD_EMBEDDINGS_ORDER
                     if name in slots_by_name]
        elif group.startswith("encoder_layer_"):
            index = int(group.rsplit("_", 1)[1])
            slots = [slot for name, slot in slots_by_name.items()
                     if name.startswith(f"encoder/layer_._{index}/")]
        else:
            old += [(id(variable), 0) for variable in variables]
            continue
        old += [(id(slot.variable), slot.part) for slot in slots]
    return old


def optimizer_sources(model, optimizer, keys: dict[int, tuple[tf.Variable, str]],
                      shapes: dict[str, list[int]]) -> dict[int, list[str]]:
    """id(slot variable) -> the keys before #22 of its value (see the module docstring).

    Raises:
      LegacyCheckpointError: the checkpoint's slots do not line up with this optimizer's.
    """
    base = getattr(optimizer, "inner_optimizer", optimizer)  # fp16: a LossScaleOptimizer
    if not (hasattr(base, "slots") and hasattr(base, "variable_groups")):  # GroupedAdamW's
        raise LegacyCheckpointError(f"cannot map the slots of a {type(base).__name__}")
    old = _old_optimizer_variables(model, base)
    first_slot = base.slots(next(iter(base.variable_groups.values()))[0])[0]
    optimizer_path = _SLOT.match(keys[id(first_slot)][1]).group(1)
    saved = [name for name in shapes if _SLOT.match(name)
             and _SLOT.match(name).group(1) == optimizer_path]
    if len(saved) != 2 * len(old):
        raise LegacyCheckpointError(
            f"the checkpoint has {len(saved) // 2} optimizer slot pairs, this config's optimizer "
            f"{len(old)} as before #22: the run's groups or learning rates differ from this "
            f"config's")
    parts: dict[int, list[int]] = {}
    for index, entry in enumerate(old):
        if entry is not None:
            parts.setdefault(entry[0], []).append(index)
    sources = {}
    for variables in base.variable_groups.values():
        for variable in variables:
            for slot, first in zip(base.slots(variable), (1, 2)):
                sources[id(slot)] = [f"{optimizer_path}/_variables/{first + 2 * index}{VALUE}"
                                     for index in parts[id(variable)]]
    return sources


def restore(path: str, objects: dict[str, Any], *, optional: tuple[str, ...] = ()) -> None:
    """Restores `objects` from a checkpoint written before #22 with the same objects, as
    `tf.train.Checkpoint(**objects).restore(path)` restores one written today.

    Args:
      path: the checkpoint prefix.
      objects: by name, as the checkpoint was written: "model" (a Tagger) and, for the trainer's
        checkpoints, "optimizer" (GroupedAdamW, or a LossScaleOptimizer around one), "step",
        "input_position", ...
      optional: names in `objects` the checkpoint may lack (they keep their values).

    Raises:
      LegacyCheckpointError: a variable has no value in the checkpoint, or one of another shape.
    """
    reader = tf.train.load_checkpoint(path)
    shapes = reader.get_variable_to_shape_map()
    keys = checkpoint_keys(objects)
    model = objects["model"]
    if getattr(model.encoder, "transformer", None) is None:
        raise LegacyCheckpointError(f"{path} holds a BERT-family encoder; this model has "
                                    f"{type(model.encoder).__name__}")
    sources = encoder_sources(model)
    if "optimizer" in objects:
        try:
            sources.update(optimizer_sources(model, objects["optimizer"], keys, shapes))
        except LegacyCheckpointError as error:
            raise LegacyCheckpointError(f"{path} (written before #22): {error}") from None
    values, missing = [], []
    for variable_id, (variable, key) in keys.items():
        wanted = sources.get(variable_id, [key])
        if not all(name in shapes for name in wanted):
            if key.split("/", 1)[0] not in optional:
                missing.append(next(name for name in wanted if name not in shapes))
            continue
        parts = [reader.get_tensor(name) for name in wanted]
        value = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
        if tuple(value.shape) != tuple(variable.shape):
            raise LegacyCheckpointError(
                f"{path}: {wanted[0]} has shape {list(value.shape)}, but {variable.name} here "
                f"is {variable.shape.as_list()}: the checkpoint is of another model")
        values.append((variable, value))
    if missing:
        raise LegacyCheckpointError(
            f"{path} (written before #22, by transformers' TF encoder) lacks {len(missing)} "
            f"variable(s) of this model, e.g. {', '.join(missing[:3])}: it is of another model")
    for variable, value in values:
        variable.assign(value)
