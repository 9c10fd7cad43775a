"""Export a trained tagger: `python -m trainer.export --run_dir=RUN --export_dir=DIR`.

    python -m trainer.export --run_dir=runs/pd --export_dir=exports/pd \\
        [--checkpoint=best|latest|PATH] [--save_pretrained=h5|safetensors] [--overwrite]

The export directory alone is enough to serve (`trainer.predict`, `trainer.serving.Predictor`,
or `tf.saved_model.load` from any Python with TensorFlow): a SavedModel whose signature
"serving_default" maps (input_ids, attention_mask, label_mask) to (tag_ids, scores, tag_probs),
CRF Viterbi decoding inside the graph, plus the label map, the tokenizer exactly as preprocessing
used it, the windowing settings and export.json (see `trainer.serving` for the layout).

The model is rebuilt from the run directory (config.json, data_manifest.json) with the same
mixed precision policy as in training, and its weights are restored from the checkpoint, so the
export tags exactly as the trainer's evaluation did. A pretrained encoder is rebuilt from its
config only: the checkpoint holds every weight, so the pretrained weights are not read again.

`--checkpoint=best` (the default) is the model of the best dev evaluation (run_dir/best); a run
that kept none (no dev evaluation finished) falls back to the latest checkpoint, with a note.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import shutil
import sys
import uuid
from typing import Any, Callable

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow is imported

from data_pipeline.manifest import file_sha256, replace_directory  # noqa: E402
from trainer import serving  # noqa: E402

CHECKPOINT_CHOICES = ("best", "latest")
PRETRAINED_FORMATS = ("h5", "safetensors")
ENCODER_DIR = "encoder"
_MARKER_SETTING = {"dropped": "drop", "kept": "keep", "none": "auto"}


class ExportError(ValueError):
    """The run directory, checkpoint or export directory cannot be used; the message says why."""


# ------------------------------------------------------------------------------------------------
# Reading a run directory
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunInfo:
    """What a run directory says about the model to export.

    Attributes:
      run_dir: absolute path.
      config: the run's config.json (dict).
      manifest: the run's data_manifest.json (the preprocessing manifest).
      label_map: tag strings, index = tag id.
      input_format: "char" or "conll", the corpus format the model was trained on.
    """

    run_dir: pathlib.Path
    config: dict[str, Any]
    manifest: dict[str, Any]
    label_map: list[str]
    input_format: str


def _read_json(path: pathlib.Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path.parent} is not a run directory ({path.name} is missing: {what})"
                          ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path}: not valid JSON ({e})") from None


def read_run(run_dir: str | os.PathLike) -> RunInfo:
    """Reads config.json, data_manifest.json and label_map.json of a run directory.

    Raises:
      ExportError: a file is missing or unreadable.
    """
    path = pathlib.Path(run_dir).resolve()
    if not path.is_dir():
        raise ExportError(f"--run_dir={run_dir}: no such directory")
    config = _read_json(path / "config.json", "written when training starts")
    manifest = _read_json(path / "data_manifest.json", "the preprocessing manifest")
    label_map = manifest.get("label_map")
    if (path / "label_map.json").is_file():
        label_map = _read_json(path / "label_map.json", "the label map")
    formats = {split["source"]["format"] for split in manifest.get("splits", {}).values()}
    if len(formats) != 1 or not label_map:
        raise ExportError(f"{path / 'data_manifest.json'}: no label map or no single input "
                          f"format (found {sorted(formats)})")
    return RunInfo(path, config, manifest, list(label_map), formats.pop())


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

    from trainer import checkpointing

    run_dir = pathlib.Path(run_dir)
    if checkpoint == "best":
        best = run_dir / checkpointing.BEST_DIR
        if (best / "model.index").is_file():
            step = None
            if (best / "best.json").is_file():
                step = json.loads((best / "best.json").read_text()).get("step")
            return str(best / "model"), step
        log(f"note: {best} holds no best checkpoint (no dev evaluation finished); exporting the "
            f"latest checkpoint instead")
        checkpoint = "latest"
    if checkpoint == "latest":
        directory = run_dir / checkpointing.CHECKPOINT_DIR
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


# ------------------------------------------------------------------------------------------------
# Rebuilding tokenizer and model
# ------------------------------------------------------------------------------------------------


def prepare_serving_tokenizer(manifest: dict, input_format: str) -> tuple[str, dict]:
    """The backend tokenizer JSON and TokenizerInfo exactly as preprocessing used them.

    The tokenizer is prepared again from its recorded name with the recorded `▁` marker setting,
    and its fingerprint must equal the manifest's: then it tokenizes every token as the shards
    were tokenized.

    Returns:
      (backend tokenizer JSON str, TokenizerInfo as a dict).

    Raises:
      ExportError: the tokenizer cannot be loaded, or it changed since preprocessing.
    """
    from data_pipeline import tokenization

    recorded = manifest["tokenizer"]
    marker = _MARKER_SETTING.get(recorded.get("word_boundary_marker"), "auto")
    try:
        backend, info = tokenization.prepare_tokenizer(
            recorded["name"], word_boundary_marker=marker, input_format=input_format)
    except ValueError as e:
        raise ExportError(f"the run's tokenizer cannot be loaded: {e}") from None
    if info.fingerprint != recorded["fingerprint"]:
        raise ExportError(
            f"tokenizer {recorded['name']!r} differs from the one preprocessing used "
            f"(fingerprint {info.fingerprint[:12]} != {recorded['fingerprint'][:12]}): the export "
            f"would not tokenize as the model was trained; restore the original tokenizer files")
    return backend.to_str(), info.to_json()


def _train_config(run: RunInfo):
    from trainer.config import ConfigError, TrainConfig

    known = {field.name for field in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in run.config.items() if k in known}
    # The export runs on one device, whatever the run was distributed over.
    values.update(strategy="default", num_cpu_devices=0)
    try:
        return TrainConfig(**values)
    except (ConfigError, TypeError) as e:
        raise ExportError(f"{run.run_dir / 'config.json'}: {e}") from None


def build_model(run: RunInfo, checkpoint_prefix: str):
    """Rebuilds the run's tagger and restores every weight from `checkpoint_prefix`.

    Built under the run's mixed precision policy (restored afterwards), so it computes exactly
    as in training and evaluation.

    Returns:
      (model, TaggerConfig as the run trained it).

    Raises:
      ExportError: the model cannot be built, or the checkpoint does not hold all its weights.
    """
    import tensorflow as tf

    from trainer.loop import tagger_config

    config = _train_config(run)
    trained = tagger_config(config, run.manifest)
    tagger = trained
    if tagger.pretrained is not None:
        # Same architecture from the config alone; the checkpoint supplies every weight.
        tagger = dataclasses.replace(tagger, pretrained=None, encoder_config=tagger.pretrained)
    from models import build_tagger
    from trainer import precision

    with precision.global_policy(precision.resolve(config.mixed_precision)[0]):
        try:
            model = build_tagger(tagger)
        except (OSError, ValueError) as e:
            raise ExportError(f"cannot rebuild the run's model: {e}") from None
    status = tf.train.Checkpoint(model=model).read(checkpoint_prefix)
    try:
        status.expect_partial()  # optimizer slots, step, input position are not exported
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise ExportError(f"{checkpoint_prefix} does not hold every weight of the run's model: "
                          f"{str(e)[:500]}") from None
    return model, trained


# ------------------------------------------------------------------------------------------------
# The serving function and the export directory
# ------------------------------------------------------------------------------------------------


def serving_function(model):
    """The serving tf.function of a tagger (see `trainer.serving.SIGNATURE`).

    Args:
      model: a built Tagger (models/ API).

    Returns:
      A tf.function (input_ids, attention_mask, label_mask: int32 [B, T]) -> {"tag_ids" int32
      [B, T], "scores" float32 [B], "tag_probs" float32 [B, T]}.
    """
    import tensorflow as tf

    crf = model.config.head == "crf"

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec([None, None], tf.int32, name="input_ids"),
        tf.TensorSpec([None, None], tf.int32, name="attention_mask"),
        tf.TensorSpec([None, None], tf.int32, name="label_mask")])
    def serve(input_ids, attention_mask, label_mask):
        logits = model(dict(input_ids=input_ids, attention_mask=attention_mask),
                       training=False)  # float32 [B, T, K]
        mask = tf.cast(label_mask, tf.bool)
        tag_ids, scores = model.decode(logits, mask)
        if crf:
            # Marginals p(y_t = k | x) = d log Z / d logits[t, k] (forward-backward by autodiff).
            with tf.GradientTape() as tape:
                tape.watch(logits)
                log_norm = model.crf.log_norm(logits, mask)
            probs = tape.gradient(log_norm, logits)  # [B, T, K]
        else:
            probs = tf.nn.softmax(logits, axis=-1)
        chosen = tf.gather(probs, tag_ids, batch_dims=2)  # [B, T]
        return {"tag_ids": tf.cast(tag_ids, tf.int32), "scores": tf.cast(scores, tf.float32),
                "tag_probs": tf.where(mask, tf.cast(chosen, tf.float32), 0.0)}

    return serve


def _write_json(path: pathlib.Path, payload) -> None:
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def _check_export_dir(export_dir: pathlib.Path, overwrite: bool) -> None:
    if not export_dir.exists():
        return
    if not export_dir.is_dir():
        raise ExportError(f"--export_dir={export_dir} exists and is not a directory")
    if any(export_dir.iterdir()) and not overwrite:
        raise ExportError(f"--export_dir={export_dir} is not empty; pass --overwrite to replace "
                          f"it, or choose another directory")


def export_model(model, export_dir: str | os.PathLike, *, label_map: list[str],
                 tokenizer_json: str, tokenizer_info: dict, max_seq_length: int, stride: int,
                 input_format: str, source: dict | None = None, model_config: dict | None = None,
                 save_pretrained: str | None = None, pretrained_tokenizer: str | None = None,
                 overwrite: bool = False) -> pathlib.Path:
    """Writes an export directory for a built tagger.

    Everything is written into a staging directory beside `export_dir` and renamed into place
    at the end, so `export_dir` never holds half an export.

    Args:
      model: a built Tagger with its final weights.
      export_dir: where the export goes (must not exist, be empty, or `overwrite`).
      label_map: tag strings, index = tag id.
      tokenizer_json, tokenizer_info: from `prepare_serving_tokenizer`.
      max_seq_length, stride, input_format: the preprocessing settings the model was trained on.
      source: provenance for export.json (run directory, checkpoint, step).
      model_config: the TaggerConfig dict for export.json (default: the model's own).
      save_pretrained: None, "h5" or "safetensors": also write the fine-tuned encoder with
        transformers' `save_pretrained` into export_dir/encoder.
      pretrained_tokenizer: tokenizer name or directory to save beside that encoder.
      overwrite: replace an existing export_dir.

    Returns:
      The export directory (absolute).

    Raises:
      ExportError: bad arguments or export_dir in the way.
    """
    import tensorflow as tf

    export_dir = pathlib.Path(export_dir).resolve()
    _check_export_dir(export_dir, overwrite)
    if input_format not in serving.INPUT_FORMATS:
        raise ExportError(f"input_format must be one of {serving.INPUT_FORMATS}, got "
                          f"{input_format!r}")
    if save_pretrained is not None:
        if save_pretrained not in PRETRAINED_FORMATS:
            raise ExportError(f"--save_pretrained={save_pretrained!r}: expected one of "
                              f"{PRETRAINED_FORMATS}")
        if model.config.encoder != "bert":
            raise ExportError("--save_pretrained needs a transformers encoder (--encoder=bert); "
                              f"this model's encoder is {model.config.encoder!r}")
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = export_dir.parent / f".{export_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        module = tf.Module()
        # Only the variables are tracked (not the Keras model), so saving does not serialise
        # every Keras layer's call functions: the serving function is the whole graph.
        module.model_variables = list(model.variables)
        module.serve = serving_function(model)
        tf.saved_model.save(module, str(staging),
                            signatures={serving.SIGNATURE_NAME: module.serve})
        _write_json(staging / serving.LABEL_MAP_FILE, list(label_map))
        (staging / serving.TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")
        _write_json(staging / serving.TOKENIZER_INFO_FILE, tokenizer_info)
        preprocessing = {"max_seq_length": int(max_seq_length), "stride": int(stride),
                         "input_format": input_format,
                         "word_boundary_marker": tokenizer_info.get("word_boundary_marker")}
        _write_json(staging / serving.PREPROCESSING_FILE, preprocessing)
        pretrained = None
        if save_pretrained is not None:
            pretrained = _save_pretrained(model, staging / ENCODER_DIR, save_pretrained,
                                          pretrained_tokenizer)
        files = [path for path in sorted(staging.rglob("*")) if path.is_file()]
        for path in files:  # save_pretrained writes some files private (0600)
            path.chmod(0o644)
        checksums = {str(path.relative_to(staging)): file_sha256(path) for path in files}
        _write_json(staging / serving.EXPORT_MANIFEST, {
            "format_version": serving.EXPORT_FORMAT_VERSION,
            "created_by": "trainer.export",
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "source": source or {},
            "model": model_config or model.config.to_dict(),
            "label_map": list(label_map),
            "preprocessing": preprocessing,
            "tokenizer": {k: tokenizer_info.get(k) for k in ("name", "fingerprint",
                                                             "word_boundary_marker")},
            "signature": {"name": serving.SIGNATURE_NAME, **serving.SIGNATURE},
            "encoder_pretrained": pretrained,
            "versions": _versions(),
            "sha256": checksums,
        })
        replace_directory(staging, export_dir)
        return export_dir
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _save_pretrained(model, directory: pathlib.Path, fmt: str,
                     tokenizer: str | None) -> dict:
    """Writes the encoder (a transformers TF model) and its original tokenizer.

    The tagger's transformer was built inside the tagger, so its weight names carry the
    tagger's scopes ("transformer_encoder/tf_bert_model_1/bert/...") and transformers could not
    match them when loading. The weights are copied into a fresh, top-level instance of the same
    class and config ("tf_bert_model/bert/..."), which is what `save_pretrained` writes.
    """
    from models.encoders import load_transformer

    transformer = model.encoder.transformer
    fresh = load_transformer(encoder_config=transformer.config.to_dict())
    fresh(fresh.dummy_inputs, training=False)  # build its variables
    source, target = transformer.weights, fresh.weights
    tails = [w.name.split("/", 1)[1] for w in target]
    if len(source) != len(target) or any(
            not s.name.endswith(tail) or s.shape != t.shape
            for s, t, tail in zip(source, target, tails)):
        raise ExportError(f"cannot save the encoder with save_pretrained: the weights of a fresh "
                          f"{type(fresh).__name__} do not line up with the trained ones")
    for s, t in zip(source, target):
        t.assign(s)
    fresh.save_pretrained(str(directory), safe_serialization=(fmt == "safetensors"))
    saved_tokenizer = False
    if tokenizer:
        from data_pipeline.tokenization import load_tokenizer

        try:
            load_tokenizer(tokenizer).save_pretrained(str(directory))
            saved_tokenizer = True
        except ValueError:
            pass
    return {"directory": ENCODER_DIR, "format": fmt,
            "model_class": type(fresh).__name__, "tokenizer": saved_tokenizer}


def _versions() -> dict:
    import importlib.metadata

    out = {}
    for name in ("tensorflow", "tf-keras", "transformers", "tokenizers"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def export_run(run_dir: str | os.PathLike, export_dir: str | os.PathLike, *,
               checkpoint: str = "best", save_pretrained: str | None = None,
               overwrite: bool = False, log: Callable[[str], None] = print) -> pathlib.Path:
    """Exports a checkpoint of a run directory (what `python -m trainer.export` does).

    Args:
      run_dir: a run directory written by `trainer.loop.train_and_evaluate`.
      export_dir: where the export goes.
      checkpoint: "best", "latest", or a checkpoint prefix / directory.
      save_pretrained: None, "h5" or "safetensors" (see `export_model`).
      overwrite: replace an existing export_dir.
      log: receives progress messages.

    Returns:
      The export directory (absolute).

    Raises:
      ExportError: the run, checkpoint, tokenizer or export directory cannot be used.
    """
    run = read_run(run_dir)
    _check_export_dir(pathlib.Path(export_dir).resolve(), overwrite)
    prefix, step = resolve_checkpoint(run.run_dir, checkpoint, log=log)
    tokenizer_json, tokenizer_info = prepare_serving_tokenizer(run.manifest, run.input_format)
    model, trained = build_model(run, prefix)
    source = {"run_dir": str(run.run_dir), "checkpoint": prefix,
              "checkpoint_kind": checkpoint if checkpoint in CHECKPOINT_CHOICES else "path",
              "step": step, "mixed_precision": run.config.get("mixed_precision", "none")}
    path = export_model(
        model, export_dir, label_map=run.label_map, tokenizer_json=tokenizer_json,
        tokenizer_info=tokenizer_info, max_seq_length=run.manifest["max_seq_length"],
        stride=run.manifest["stride"], input_format=run.input_format, source=source,
        model_config=trained.to_dict(),
        save_pretrained=save_pretrained, pretrained_tokenizer=run.manifest["tokenizer"]["name"],
        overwrite=overwrite)
    log(f"exported {prefix} (step {step}) to {path}")
    return path


def export_after_training(run_dir: str | os.PathLike, *,
                          export_dir: str | os.PathLike | None = None, checkpoint: str = "best",
                          save_pretrained: str | None = None, log: Callable[[str], None] = print,
                          warn: Callable[[str], None] = print) -> pathlib.Path | None:
    """The trainer's hook: exports a finished run to `run_dir/export` (replacing an older one).

    Call it once at the end of training, on the chief, after the final checkpoint is saved. A
    failed export does not fail the training run: it is reported through `warn` (the command
    `python -m trainer.export` can retry it) and None is returned.

    Returns:
      The export directory, or None if the export failed.
    """
    target = pathlib.Path(export_dir) if export_dir else pathlib.Path(run_dir) / "export"
    try:
        return export_run(run_dir, target, checkpoint=checkpoint, save_pretrained=save_pretrained,
                          overwrite=True, log=log)
    except (ExportError, serving.ExportError, OSError) as e:
        warn(f"export to {target} failed: {e}; retry with `python -m trainer.export "
             f"--run_dir={run_dir} --export_dir={target}`")
        return None


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def _parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m trainer.export",
        description="Export a run's checkpoint as a SavedModel directory that alone can serve.")
    parser.add_argument("--run_dir", required=True, help="Run directory of trainer.main.")
    parser.add_argument("--checkpoint", default="best",
                        help="best (default; the best dev evaluation), latest, or a checkpoint "
                             "prefix or directory.")
    parser.add_argument("--export_dir", required=True, help="Where the export is written.")
    parser.add_argument("--save_pretrained", choices=PRETRAINED_FORMATS, default=None,
                        help="Also write the fine-tuned encoder with transformers' "
                             "save_pretrained into EXPORT_DIR/encoder.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an existing, non-empty --export_dir.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        export_run(args.run_dir, args.export_dir, checkpoint=args.checkpoint,
                   save_pretrained=args.save_pretrained, overwrite=args.overwrite,
                   log=lambda message: print(message, flush=True))
    except (ExportError, serving.ExportError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
