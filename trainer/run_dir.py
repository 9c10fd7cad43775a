"""The run directory's layout, in one place: what a run writes where, and how it is read back.

    RUN_DIR/
      config.json         the resolved TrainConfig, written when the run starts (trainer.config)
      model_config.json   the TaggerConfig the model was built from (`TaggerConfig.to_dict()`):
                          export and reload build the model from it, never from training flags
      data_manifest.json  the preprocessing manifest of the run's data (tokenizer, windows, tags)
      label_map.json      tag strings, index = tag id
      checkpoints/        ckpt-N: model, optimizer, step, input position (trainer.checkpointing)
      best/               model + best.json ({"step": ..., "f1": ..., ...}) of the best dev
                          evaluation
      export/             the export written at the end of training (trainer.export)
      variables.json      what trains: each variable's group, shape and learning rate
                          (trainer.variables_report)
      train_log.jsonl     one record per logged training step (trainer.run_logs)
      results.json        final dev and test metrics, the step and checkpoint they came from,
                          the schedule plan (trainer.schedule_plan)
      predictions_*.txt   dev and test predictions of the final evaluation
      events in RUN_DIR and train/, dev/, test/: TensorBoard (trainer.summaries writes them)

The trainer builds the model config once (`tagger_config`: the run's model settings plus what
its data decides, the label map and the vocabulary size) and writes it at the start of the run
(`write_run_files`, chief only); a resumed run checks that it still builds the same model. For a
run directory written before model_config.json existed, `tagger_config` builds it again from
config.json and data_manifest.json, as the trainer did (`trainer.export` says so when it does).

This module imports neither TensorFlow nor the trainer's config, so `trainer.export` can read a
run directory without the training stack.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any, Callable, Mapping

from data_pipeline.manifest import strict_json_dumps, write_json_atomic
from models.config import ModelSettings, TaggerConfig

CONFIG_FILE = "config.json"
MODEL_CONFIG_FILE = "model_config.json"
DATA_MANIFEST_FILE = "data_manifest.json"
LABEL_MAP_FILE = "label_map.json"
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
BEST_FILE = "best.json"  # in BEST_DIR
EXPORT_DIR = "export"
VARIABLES_FILE = "variables.json"
TRAIN_LOG = "train_log.jsonl"
RESULTS = "results.json"

_MODEL_SETTINGS = tuple(field.name for field in dataclasses.fields(ModelSettings))


class RunDirectoryError(RuntimeError):
    """The run directory holds a different run; pass --overwrite or --resume_mismatched."""


# ------------------------------------------------------------------------------------------------
# model_config.json
# ------------------------------------------------------------------------------------------------


def _encoder_config_value(value: str | dict | None) -> str | dict | None:
    """--encoder_config: inline JSON or a .json file -> dict; a directory stays a path."""
    if not value or isinstance(value, dict):
        return value or None
    if value.lstrip().startswith("{"):
        return json.loads(value)
    if os.path.isfile(value):
        return json.loads(pathlib.Path(value).read_text())
    return value


def tagger_config(settings: Mapping[str, Any], manifest: dict) -> TaggerConfig:
    """The model's config: the run's model settings, and the tags and vocabulary of its data.

    Args:
      settings: the ModelSettings values (`TrainConfig.model_settings()`, or a config.json
        dict: other keys are ignored, missing ones take their defaults).
      manifest: the preprocessing manifest (label_map, tokenizer.vocab_size).

    Raises:
      ValueError: a setting is bad (`models.config.SettingError`), or --encoder_config is not
        valid JSON.
    """
    values = {name: settings[name] for name in _MODEL_SETTINGS if name in settings}
    values["encoder_config"] = _encoder_config_value(values.get("encoder_config"))
    encoder = values.get("encoder", TaggerConfig.encoder)
    return TaggerConfig(**values, label_map=list(manifest["label_map"]),
                        vocab_size=None if encoder == "bert"
                        else int(manifest["tokenizer"]["vocab_size"]))


def read_model_config(run_dir: str | os.PathLike) -> TaggerConfig | None:
    """RUN_DIR/model_config.json as a TaggerConfig, or None if the run has none (an older run).

    Raises:
      ValueError: the file is not a valid TaggerConfig (the message names it).
    """
    path = pathlib.Path(run_dir) / MODEL_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return TaggerConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None


def _differences(old: TaggerConfig, new: TaggerConfig) -> list[str]:
    old_values, new_values = old.to_dict(), new.to_dict()
    return [f"{name}: {old_values[name]!r} -> {new_values[name]!r}"
            for name in sorted(new_values) if old_values[name] != new_values[name]]


def write_run_files(run_dir: str | os.PathLike, *, manifest_path: str | os.PathLike,
                    model_config: TaggerConfig, resume_mismatched: bool = False,
                    log: Callable[[str], None] = print) -> None:
    """Writes data_manifest.json, label_map.json and model_config.json (the chief, at the start).

    A resumed run's model_config.json must describe the model it builds now (its checkpoints
    hold that model's weights); with `resume_mismatched` a different one is replaced, with a
    message. A run directory without one (written before it existed) gets it now.

    Raises:
      RunDirectoryError: model_config.json differs (or is unreadable) and not resume_mismatched.
    """
    run_dir = pathlib.Path(run_dir)
    path = run_dir / MODEL_CONFIG_FILE
    try:
        old = read_model_config(run_dir)
        problem = None if old is None or old == model_config else \
            f"a different model ({'; '.join(_differences(old, model_config))})"
    except ValueError as e:
        problem = f"an unreadable model config ({e})"
    if problem is not None:
        if not resume_mismatched:
            raise RunDirectoryError(
                f"{path} describes {problem}, and its checkpoints hold that model. Use another "
                "--run_dir, --overwrite to start afresh, or --resume_mismatched to continue it "
                "with the new model config.")
        log(f"--resume_mismatched: {path} described {problem}; replaced by this run's")
    shutil.copyfile(manifest_path, run_dir / DATA_MANIFEST_FILE)
    write_json_atomic(run_dir / LABEL_MAP_FILE, model_config.label_map)
    write_json_atomic(path, model_config.to_dict())


# ------------------------------------------------------------------------------------------------
# best/best.json
# ------------------------------------------------------------------------------------------------


def read_best(best_dir: str | os.PathLike) -> dict[str, Any] | None:
    """best.json of a best-checkpoint directory ({"step", "f1", ...}), or None if it has none."""
    path = pathlib.Path(best_dir) / BEST_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def write_best(best_dir: str | os.PathLike, best: dict[str, Any]) -> None:
    """Writes best.json ({"step", metric: value, ...}, strict JSON) into `best_dir`."""
    pathlib.Path(best_dir, BEST_FILE).write_text(strict_json_dumps(best, indent=2,
                                                                   sort_keys=True))
