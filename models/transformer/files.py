"""Checkpoint files: finding them (local directory or hub name) and reading their tensors.

Weights are read from model.safetensors (one file, or shards listed in
model.safetensors.index.json; PyTorch names, read with numpy, no torch) or else from tf_model.h5
(TensorFlow names, as transformers' TF models save them; read with h5py). Pickled weights
(pytorch_model.bin and other .bin/.pt/.ckpt files) are never opened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import struct
from collections.abc import Callable, Iterator

import numpy as np

from models.pretrained_files import (  # the file names and the pickle refusal, said once
    CONFIG_FILE as CONFIG, H5, SAFETENSORS, SAFETENSORS_INDEX, pickle_refusal_message,
    pickled_weights)

# Fetched for a hub name: the config, safetensors weights or else the TF weights; never pickles.
HUB_SAFETENSORS_PATTERNS = [CONFIG, SAFETENSORS, SAFETENSORS_INDEX, "model-*.safetensors"]


class CheckpointError(OSError):
    """A checkpoint directory or file this loader cannot read (missing, pickled, malformed)."""


def pickle_refusal(directory: pathlib.Path, found: str) -> CheckpointError:
    """The error for a checkpoint with only pickled weights (`found`: their names)."""
    return CheckpointError(pickle_refusal_message(directory, found))


def weights_file(directory: pathlib.Path) -> pathlib.Path:
    """The file to read weights from: model.safetensors(.index.json), else tf_model.h5.

    Raises:
      CheckpointError: neither exists (said differently when only pickled weights do).
    """
    for name in (SAFETENSORS, SAFETENSORS_INDEX, H5):
        if (directory / name).is_file():
            return directory / name
    pickles = pickled_weights(directory) if directory.is_dir() else []
    if pickles:
        raise pickle_refusal(directory, ", ".join(pickles))
    raise CheckpointError(f"{directory} has no {SAFETENSORS}, {SAFETENSORS_INDEX} or {H5}")


def resolve_checkpoint(pretrained: str | pathlib.Path) -> pathlib.Path:
    """A local directory holding config.json and the weights: `pretrained` itself, or the
    hub's snapshot of the model named `pretrained` ("org/name"), fetched with huggingface_hub
    (config.json and safetensors weights, else tf_model.h5; never pickles).

    Raises:
      CheckpointError: no such directory, and no such model on the hub (or in its cache).
    """
    path = pathlib.Path(pretrained).expanduser()
    if path.is_dir():
        return path
    snapshot = _hub_download(pretrained, lambda hub, name: hub.snapshot_download(
        name, allow_patterns=HUB_SAFETENSORS_PATTERNS), wanted="")
    name, (huggingface_hub, hub_errors) = _hub_name(pretrained), _hub()
    if not any((snapshot / f).is_file() for f in (SAFETENSORS, SAFETENSORS_INDEX)):
        try:
            huggingface_hub.hf_hub_download(name, H5)
        except hub_errors:
            try:
                pickles = [f for f in huggingface_hub.list_repo_files(name) if f.endswith(".bin")]
            except hub_errors:
                pickles = []
            if pickles:
                raise pickle_refusal(pathlib.Path(name), ", ".join(pickles)) from None
            raise CheckpointError(f"{pretrained}: the hub has no {SAFETENSORS} or {H5} for this "
                                  f"model") from None
    return snapshot


def _hub():
    """(huggingface_hub, the errors a hub lookup raises for a model it cannot give: HTTP errors,
    OSError offline or when not cached, ValueError for a name that is no valid repo id).
    Imported on first use: local directories never need it."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    return huggingface_hub, (HfHubHTTPError, OSError, ValueError)


def _hub_download(pretrained: str | pathlib.Path, download: Callable, *,
                  wanted: str) -> pathlib.Path:
    """`download(huggingface_hub, name)`'s path for the hub model named `pretrained`.

    Raises:
      CheckpointError: `pretrained` looks like a path, or the hub (or its cache) does not have
        it ("... nor a model the hub (or its cache) has{wanted} (ErrorType: ...)").
    """
    name = _hub_name(pretrained)
    huggingface_hub, hub_errors = _hub()
    try:
        return pathlib.Path(download(huggingface_hub, name))
    except hub_errors as error:
        raise CheckpointError(f"{pretrained}: not a local directory, nor a model the hub (or its "
                              f"cache) has{wanted} ({type(error).__name__}: {error})") from None


def _hub_name(pretrained: str | pathlib.Path) -> str:
    """`pretrained` as a hub model name ("org/name" or "name"), for what is not a directory.

    Raises:
      CheckpointError: it looks like a path (exists, starts with ".", "/" or "~", or has more
        than one "/").
    """
    path, name = pathlib.Path(pretrained).expanduser(), str(pretrained)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CheckpointError(f"{pretrained}: not a checkpoint directory (expected a directory "
                              f"with {CONFIG} and {SAFETENSORS} or {H5}, or a hub model name)")
    return name


def resolve_config(pretrained: str | pathlib.Path) -> pathlib.Path:
    """A local directory holding the config.json of `pretrained`: itself if it is a directory,
    else the hub's (or its cache's) copy of that file alone, for building an encoder whose
    weights come from elsewhere (a run's checkpoint).

    Raises:
      CheckpointError: no such directory, and no such model on the hub (or in its cache).
    """
    path = pathlib.Path(pretrained).expanduser()
    if path.is_dir():
        return path
    return _hub_download(pretrained, lambda hub, name: hub.hf_hub_download(name, CONFIG),
                         wanted=f" a {CONFIG} for").parent


@dataclasses.dataclass
class CheckpointTensors:
    """A checkpoint's tensors, read one at a time.

    Attributes:
      path: the weights file (or the safetensors index).
      pytorch: PyTorch names and layout (safetensors), else TensorFlow's (h5).
      names: the tensors' names as the file spells them.
      shapes: name -> shape as stored.
      reader: name -> the tensor as stored (any float dtype).
    """

    path: pathlib.Path
    pytorch: bool
    names: list[str]
    shapes: dict[str, tuple[int, ...]]
    reader: Callable[[str], np.ndarray]

    def read(self, name: str) -> np.ndarray:
        """The tensor `name` as float32, in the file's layout."""
        return np.asarray(self.reader(name), dtype=np.float32)


@contextlib.contextmanager
def open_checkpoint(directory: pathlib.Path) -> Iterator[CheckpointTensors]:
    """Opens the weights of `directory` (see `weights_file`) for reading while in the context.

    Raises:
      CheckpointError: no weights file, or one that cannot be read.
    """
    path = weights_file(directory)
    with contextlib.ExitStack() as stack:
        if path.name == H5:
            yield _open_h5(path, stack)
        else:
            yield _open_safetensors(path, stack)


def _open_safetensors(path: pathlib.Path, stack: contextlib.ExitStack) -> CheckpointTensors:
    from safetensors import safe_open

    if path.name == SAFETENSORS_INDEX:
        try:
            weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{path}: not a safetensors index with a weight_map "
                                  f"({error})") from None
        files = sorted(set(weight_map.values()))
    else:
        files = [path.name]
    shapes, dtypes, handles, owner = {}, {}, {}, {}
    for file in files:
        try:
            handle = stack.enter_context(safe_open(str(path.parent / file), framework="np"))
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(f"{path.parent / file}: cannot read it as safetensors "
                                  f"({error})") from None
        handles[file] = handle
        for name in handle.keys():
            tensor = handle.get_slice(name)
            shapes[name] = tuple(int(d) for d in tensor.get_shape())
            dtypes[name] = tensor.get_dtype()
            owner[name] = file

    def reader(name: str) -> np.ndarray:
        if dtypes[name] == "BF16":  # numpy has no bfloat16: widen its bits to float32's
            return read_bfloat16(path.parent / owner[name], name)
        return handles[owner[name]].get_tensor(name)

    return CheckpointTensors(path, True, list(shapes), shapes, reader)


def read_bfloat16(path: pathlib.Path, name: str) -> np.ndarray:
    """A BF16 tensor of a safetensors file as float32 (its 16 bits are float32's upper half).

    The format: an 8-byte little-endian header size, a JSON header mapping each name to its
    dtype, shape and [begin, end) byte offsets after the header, then the data.
    """
    with open(path, "rb") as file:
        (header_size,) = struct.unpack("<Q", file.read(8))
        entry = json.loads(file.read(header_size))[name]
        begin, end = entry["data_offsets"]
        file.seek(8 + header_size + begin)
        bits = np.frombuffer(file.read(end - begin), dtype="<u2")
    return (bits.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])


def _open_h5(path: pathlib.Path, stack: contextlib.ExitStack) -> CheckpointTensors:
    """transformers' TF weights: one h5 group per top-level Keras layer (attribute
    "layer_names"), each listing its weights (attribute "weight_names") by their full variable
    names, e.g. group "bert", weight "tf_bert_model/bert/embeddings/LayerNorm/gamma:0"."""
    import h5py

    try:
        file = stack.enter_context(h5py.File(path, "r"))
        datasets = {}
        for layer in file.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else str(layer)
            for weight in file[layer].attrs["weight_names"]:
                weight = weight.decode() if isinstance(weight, bytes) else str(weight)
                datasets[weight] = file[layer][weight]
    except (OSError, KeyError) as error:
        raise CheckpointError(f"{path}: not a Keras h5 weights file as transformers' TF models "
                              f"save it ({error})") from None
    shapes = {name: tuple(int(d) for d in dataset.shape) for name, dataset in datasets.items()}
    return CheckpointTensors(path, False, list(datasets), shapes,
                             lambda name: datasets[name][()])
