"""Which files a local pretrained encoder directory must hold, checked before anything loads.

transformers' own errors for an unusable directory point elsewhere: a directory holding only
PyTorch pickles (pytorch_model.bin) gets "Use `from_pt=True`", which this project never passes
(unpickling runs whatever code the file carries). `pretrained_directory_problem` says instead what
is missing and, for pickles, how to convert them once to safetensors. Standard library only, so
the trainer's config can call it before TensorFlow is imported.
"""

from __future__ import annotations

import os

CONFIG_FILE = "config.json"
# What `encoders.load_transformer` reads (from_pt=False): safetensors (a PyTorch checkpoint saved
# as safetensors loads into TensorFlow too) or Keras h5, each whole or sharded with an index.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "tf_model.h5",
                "tf_model.h5.index.json")
PICKLED_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def pretrained_directory_problem(directory: str | os.PathLike) -> str | None:
    """What makes a local pretrained directory unusable, or None when it holds what is needed.

    Args:
      directory: an existing directory (hub names are not checked here).

    Returns:
      A message naming the directory, the missing file(s) and what to do; None if the directory
      has config.json and one of WEIGHT_FILES.
    """
    directory = os.fspath(directory)

    def has(name: str) -> bool:
        return os.path.isfile(os.path.join(directory, name))

    if not has(CONFIG_FILE):
        return (f"{directory} holds no {CONFIG_FILE}: not a transformers model directory (a "
                f"pretrained encoder needs {CONFIG_FILE} and its weights)")
    if any(has(name) for name in WEIGHT_FILES):
        return None
    pickles = [name for name in PICKLED_WEIGHT_FILES if has(name)]
    if pickles:
        return (f"{directory} holds only PyTorch pickles ({', '.join(pickles)}), which are "
                f"refused: loading one runs any code it carries. Convert them to "
                f"model.safetensors once, in a trusted environment with PyTorch: python -c "
                f"\"from transformers import AutoModel; m = AutoModel.from_pretrained('{directory}'"
                f"); m.save_pretrained('{directory}', safe_serialization=True)\"")
    return f"{directory} holds no weights: expected one of {', '.join(WEIGHT_FILES)}"
