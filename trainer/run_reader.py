"""Reads a run directory back for export: what it says about the model, and which checkpoint.

    run = read_run("runs/pd")                               # RunInfo: config, manifest, labels
    prefix, step = resolve_checkpoint(run.run_dir, "best")   # "runs/pd/best/model", 1200

The files and their layout are `trainer.run_dir`'s; this module only reads them, and raises
`ExportError` (a message that names the file and what is wrong) where a run cannot be exported.
A run directory written before model_config.json existed still reads: its model config is built
again from config.json and data_manifest.json, as the trainer built it, with a note.

TensorFlow is imported only by `resolve_checkpoint`, so a bad run directory is reported before
it loads.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Callable

from models.config import TaggerConfig
from serving.export_format import ExportError, read_json
from trainer import run_dir as run_dir_lib


@dataclasses.dataclass
class RunInfo:
    """What a run directory says about the model to export.

    Attributes:
      run_dir: absolute path.
      config: the run's config.json (dict; export reads only its mixed_precision).
      manifest: the run's data_manifest.json (the preprocessing manifest).
      label_map: tag strings, index = tag id.
      input_format: "char" or "conll", the corpus format the model was trained on.
      model_config: the model as the run built it (its model_config.json).
    """

    run_dir: pathlib.Path
    config: dict[str, Any]
    manifest: dict[str, Any]
    label_map: list[str]
    input_format: str
    model_config: TaggerConfig

    @property
    def mixed_precision(self) -> str:
        """The run's --mixed_precision as config.json records it (`auto` is resolved when
        training starts, so this is what the run computed in)."""
        return self.config.get("mixed_precision", "none")


def _read_json(path: pathlib.Path, what: str):
    return read_json(path, missing=f"{path.parent} is not a run directory ({path.name} is "
                                   f"missing: {what})")


def read_run(run_dir: str | os.PathLike, log: Callable[[str], None] = print) -> RunInfo:
    """Reads config.json, model_config.json, data_manifest.json and label_map.json of a run.

    Args:
      run_dir: the run directory.
      log: receives the note when the run has no model_config.json (`legacy_model_config`).

    Raises:
      ExportError: a file is missing or unreadable.
    """
    path = pathlib.Path(run_dir).resolve()
    if not path.is_dir():
        raise ExportError(f"--run_dir={run_dir}: no such directory")
    config = _read_json(path / run_dir_lib.CONFIG_FILE, "written when training starts")
    manifest_path = path / run_dir_lib.DATA_MANIFEST_FILE
    manifest = _read_json(manifest_path, "the preprocessing manifest")
    label_map = manifest.get("label_map")
    if (path / run_dir_lib.LABEL_MAP_FILE).is_file():
        label_map = _read_json(path / run_dir_lib.LABEL_MAP_FILE, "the label map")
    formats = {split["source"]["format"] for split in manifest.get("splits", {}).values()}
    if len(formats) != 1 or not label_map:
        raise ExportError(f"{manifest_path}: no label map or no single input format (found "
                          f"{sorted(formats)})")
    try:
        model_config = run_dir_lib.read_model_config(path)
    except ValueError as e:
        raise ExportError(str(e)) from None
    if model_config is None:
        model_config = legacy_model_config(path, config, manifest, log=log)
    if model_config.label_map != list(label_map):
        raise ExportError(f"{path / run_dir_lib.MODEL_CONFIG_FILE}: its label map "
                          f"{model_config.label_map} is not the run's {list(label_map)}")
    return RunInfo(path, config, manifest, list(label_map), formats.pop(), model_config)


def legacy_model_config(run_dir: pathlib.Path, config: dict[str, Any], manifest: dict[str, Any],
                        log: Callable[[str], None] = print) -> TaggerConfig:
    """The model config of a run directory written before model_config.json existed.

    Built from its config.json and data_manifest.json exactly as the trainer builds it
    (`trainer.run_dir.tagger_config`), with a note through `log`.

    Raises:
      ExportError: they do not give a valid model config; the message says how to convert the
        run directory (write its model_config.json).
    """
    log(f"note: {run_dir} has no {run_dir_lib.MODEL_CONFIG_FILE} (a run directory of an older "
        f"trainer): its model config is built from {run_dir_lib.CONFIG_FILE} and "
        f"{run_dir_lib.DATA_MANIFEST_FILE}")
    try:
        return run_dir_lib.tagger_config(config, manifest)
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise ExportError(
            f"{run_dir} has no {run_dir_lib.MODEL_CONFIG_FILE} and its "
            f"{run_dir_lib.CONFIG_FILE} does not give a model config ({type(e).__name__}: {e}). "
            f"To convert it, write {run_dir / run_dir_lib.MODEL_CONFIG_FILE}: the TaggerConfig "
            f"of the trained model as JSON (`models.TaggerConfig(...).to_dict()`; see "
            f"trainer/run_dir.py)") from None


def resolve_checkpoint(run_dir: str | os.PathLike, checkpoint: str = "best",
                       log: Callable[[str], None] = print) -> tuple[str, int | None]:
    """Finds the checkpoint to export.

    Args:
      run_dir: the run directory.
      checkpoint: "best" (run_dir/best, else the latest with a note), "latest"
        (run_dir/checkpoints), or a checkpoint prefix or directory.
      log: receives the fallback note.

    Returns:
      (checkpoint prefix, its training step if known).

    Raises:
      ExportError: no such checkpoint.
    """
    import tensorflow as tf

    run_dir = pathlib.Path(run_dir)
    if checkpoint == "best":
        best = run_dir / run_dir_lib.BEST_DIR
        if (best / "model.index").is_file():
            return str(best / "model"), (run_dir_lib.read_best(best) or {}).get("step")
        log(f"note: {best} holds no best checkpoint (no dev evaluation finished); exporting the "
            f"latest checkpoint instead")
        checkpoint = "latest"
    if checkpoint == "latest":
        directory = run_dir / run_dir_lib.CHECKPOINT_DIR
        prefix = tf.train.latest_checkpoint(str(directory))
        if prefix is None:
            raise ExportError(f"{directory}: no checkpoint (has the run trained a step?)")
    else:
        path = pathlib.Path(checkpoint)
        if path.is_dir():
            prefix = tf.train.latest_checkpoint(str(path))
            if prefix is None and (path / "model.index").is_file():
                prefix = str(path / "model")
            if prefix is None:
                raise ExportError(f"--checkpoint={checkpoint}: no checkpoint in this directory")
        elif pathlib.Path(str(path) + ".index").is_file():
            prefix = str(path)
        else:
            raise ExportError(f"--checkpoint={checkpoint}: expected best, latest, a checkpoint "
                              f"prefix (e.g. {run_dir}/checkpoints/ckpt-100) or a directory")
    reader = tf.train.load_checkpoint(prefix)
    key = "step/.ATTRIBUTES/VARIABLE_VALUE"
    step = int(reader.get_tensor(key)) if reader.has_tensor(key) else None
    return prefix, step
