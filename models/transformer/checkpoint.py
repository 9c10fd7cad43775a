"""Building an encoder from a checkpoint or a config, and writing one back as a checkpoint."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from models.transformer import files
from models.transformer.backbone import TransformerBackbone
from models.transformer.config import EncoderConfig
from models.transformer.names import WeightSlot, pytorch_alias, weight_slots
from models.transformer.report import LoadingInfo


def checkpoint_key(name: str, *, pytorch: bool, model_prefix: str) -> str:
    """A checkpoint weight's name as `WeightSlot` spells it, below the model prefix.

    PyTorch: "bert.encoder.layer.0.output.LayerNorm.gamma" -> "encoder.layer.0.output.LayerNorm
    .weight" (the prefix is there in checkpoints of task models, not in bare ones).
    TensorFlow: "tf_bert_for_token_classification/bert/embeddings/LayerNorm/beta:0" ->
    "embeddings/LayerNorm/beta:0" (the model's scope, then the main layer's, dropped);
    "tf_bert_for_token_classification/classifier/kernel:0" -> "classifier/kernel:0".
    """
    if pytorch:
        if name.startswith(model_prefix + "."):
            name = name[len(model_prefix) + 1:]
        return pytorch_alias(name)
    parts = name.split("/")[1:]
    if parts and parts[0] == model_prefix:
        parts = parts[1:]
    return "/".join(parts)


def load_weights(backbone: TransformerBackbone, directory: pathlib.Path, *,
                 source: str | None = None) -> LoadingInfo:
    """Fills a built backbone's variables from the checkpoint in `directory`, by name.

    Weights the checkpoint lacks, or has in another shape, keep their random initialisation;
    checkpoint weights without a place (the pooler, a task head) are left unread.

    Args:
      backbone: a backbone with its variables (`build_variables()`).
      directory: holds model.safetensors(.index.json) or tf_model.h5 (see `files`).
      source: what the report names as the source (default: `directory`).

    Returns:
      The `LoadingInfo`, weights named as the checkpoint spells them (missing ones in its naming,
      below the model prefix).

    Raises:
      files.CheckpointError: no readable weights file (pickles are refused).
    """
    slots = weight_slots(backbone)
    prefix = backbone.config.model_prefix
    values: dict[int, np.ndarray] = {}  # index in `slots` -> weight in TF layout
    unused, mismatched, mismatched_indices = [], [], set()
    with files.open_checkpoint(pathlib.Path(directory)) as checkpoint:
        pytorch = checkpoint.pytorch
        index_of = {(slot.pytorch_name if pytorch else slot.tensorflow_name): index
                    for index, slot in enumerate(slots)}
        for name in checkpoint.names:
            index = index_of.get(checkpoint_key(name, pytorch=pytorch, model_prefix=prefix))
            if index is None or index in values:
                unused.append(name)
                continue
            slot = slots[index]
            wanted = slot.checkpoint_shape(pytorch)
            if checkpoint.shapes[name] != wanted:
                mismatched.append((name, checkpoint.shapes[name], wanted))
                mismatched_indices.add(index)
                continue
            value = checkpoint.read(name)
            values[index] = value.T if pytorch and slot.transpose else value
    _assign(slots, values)
    missing = [(slot.pytorch_name if pytorch else slot.tensorflow_name)
               for index, slot in enumerate(slots)
               if index not in values and index not in mismatched_indices]
    return LoadingInfo(source=str(directory if source is None else source),
                       model_weights=len(slots), model_prefix=prefix, unused=tuple(unused),
                       missing=tuple(missing), mismatched=tuple(mismatched))


def _assign(slots: list[WeightSlot], values: dict[int, np.ndarray]) -> None:
    """Writes each loaded weight into its variable (or its part of it), one assign a variable."""
    by_variable: dict[int, list[int]] = {}
    for index in values:
        by_variable.setdefault(id(slots[index].variable), []).append(index)
    for indices in by_variable.values():
        variable = slots[indices[0]].variable
        merged = variable.numpy()
        for index in indices:
            merged[..., slots[index].columns()] = values[index]
        variable.assign(merged)


def load_transformer(*, pretrained: str | pathlib.Path | None = None,
                     encoder_config: str | dict[str, Any] | None = None
                     ) -> TransformerBackbone:
    """Builds a BERT-family encoder (no pooler), with pretrained weights or at random.

    Args:
      pretrained: local directory or hub name. Weights come from model.safetensors if present,
        else tf_model.h5; pickled weights are never loaded.
      encoder_config: instead of `pretrained`: a config directory or hub name (its config.json
        alone is read), or a dict of config.json values with optional "model_type" (default
        "bert"), for a random initialisation.

    Returns:
      A `TransformerBackbone` with its variables. Its `loading_info` is a `LoadingInfo` for
      pretrained weights, None for a random initialisation.

    Raises:
      ValueError: not exactly one of `pretrained` and `encoder_config`, or a bad config.
      files.CheckpointError (an OSError): the checkpoint cannot be found or read.
    """
    if bool(pretrained) == bool(encoder_config):
        raise ValueError(f"load_transformer needs exactly one of pretrained= (weights) or "
                         f"encoder_config= (random init); got pretrained={pretrained!r}, "
                         f"encoder_config={encoder_config!r}")
    if pretrained:
        directory = files.resolve_checkpoint(pretrained)
        backbone = TransformerBackbone(EncoderConfig.from_pretrained(directory))
        backbone.build_variables()
        backbone.loading_info = load_weights(backbone, directory, source=str(pretrained))
        return backbone
    if isinstance(encoder_config, dict):
        config = EncoderConfig.from_dict(encoder_config)
    else:
        config = EncoderConfig.from_pretrained(files.resolve_config(encoder_config))
    backbone = TransformerBackbone(config)
    backbone.build_variables()
    return backbone


def save_pretrained(backbone: TransformerBackbone, directory: str | pathlib.Path) -> None:
    """Writes config.json and model.safetensors (PyTorch names without prefix, float32), the
    files transformers' `BertModel.save_pretrained` (or Roberta..., Electra...) would write, so
    that transformers, this loader and the hub read them.

    Raises:
      ValueError: the backbone has no variables yet.
    """
    from safetensors.numpy import save_file

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {slot.pytorch_name: slot.value(pytorch=True) for slot in weight_slots(backbone)}
    save_file(tensors, str(directory / files.SAFETENSORS), metadata={"format": "pt"})
    (directory / files.CONFIG).write_text(
        json.dumps(backbone.config.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
