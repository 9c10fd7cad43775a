"""Which files a local pretrained encoder directory must hold, checked before anything loads.

The one place that says which weight files the encoder loader (models/transformer/files.py)
reads and how a pickled checkpoint is refused: `pretrained_directory_problem` for the trainer's
flag checks and `pickle_refusal_message` for the loader say the same thing, what is missing and,
for pickles, how to convert them once to safetensors. Standard library only, so the trainer's
config can call it before TensorFlow is imported.
"""

from __future__ import annotations

import os

CONFIG_FILE = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
H5 = "tf_model.h5"
# What models.transformer reads, in this order: safetensors (PyTorch names; whole, or shards
# listed in the index), else transformers' TF h5. Never pickles.
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, H5)
PICKLED_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin",
                        "model.pt", "model.ckpt")


def pickled_weights(directory: str | os.PathLike) -> list[str]:
    """The pickled weight files in `directory`: PICKLED_WEIGHT_FILES, then any other *.bin."""
    directory = os.fspath(directory)
    found = [name for name in PICKLED_WEIGHT_FILES
             if os.path.isfile(os.path.join(directory, name))]
    return found + sorted(name for name in os.listdir(directory)
                          if name.endswith(".bin") and name not in found
                          and os.path.isfile(os.path.join(directory, name)))


def pickle_refusal_message(directory: str | os.PathLike, found: str) -> str:
    """Why the pickled weights `found` (file names, comma-separated) in `directory` (or a hub
    model name) are not loaded, and the one command that converts them."""
    return (f"{directory} holds only PyTorch pickles ({found}), which are refused: loading one "
            f"runs any code it carries. Convert them to {SAFETENSORS} once, in a trusted "
            f"environment with PyTorch: python -c \"from transformers import AutoModel; "
            f"m = AutoModel.from_pretrained('{directory}'); m.save_pretrained('{directory}', "
            f"safe_serialization=True)\"")


def pretrained_directory_problem(directory: str | os.PathLike) -> str | None:
    """What makes a local pretrained directory unusable, or None when it holds what is needed.

    Args:
      directory: an existing directory (hub names are not checked here).

    Returns:
      A message naming the directory, the missing file(s) and what to do; None if the directory
      has config.json and one of WEIGHT_FILES.
    """
    directory = os.fspath(directory)
    if not os.path.isfile(os.path.join(directory, CONFIG_FILE)):
        return (f"{directory} holds no {CONFIG_FILE}: not a transformers model directory (a "
                f"pretrained encoder needs {CONFIG_FILE} and its weights)")
    if any(os.path.isfile(os.path.join(directory, name)) for name in WEIGHT_FILES):
        return None
    pickles = pickled_weights(directory)
    if pickles:
        return pickle_refusal_message(directory, ", ".join(pickles))
    return f"{directory} holds no weights: expected one of {', '.join(WEIGHT_FILES)}"
