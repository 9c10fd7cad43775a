"""Export a trained tagger: `python -m trainer.export --run_dir=RUN --export_dir=DIR`.

    python -m trainer.export --run_dir=runs/pd --export_dir=exports/pd \\
        [--checkpoint=best|latest|PATH] [--save_pretrained=safetensors] [--overwrite]

The export directory alone is enough to serve (`serving.predict`, `serving.Predictor`,
or `tf.saved_model.load` from any Python with TensorFlow): a SavedModel whose signature
"serving_default" maps (input_ids, attention_mask, label_mask) to (tag_ids, scores, tag_probs),
CRF Viterbi decoding inside the graph, plus the label map, the tokenizer exactly as preprocessing
used it, the windowing settings and export.json (see `serving.export_format` for the layout).

A character model's SavedModel also has the signature "tag_text": raw UTF-8 lines in, entities
with character offsets out, tokenization (a per-code-point piece table built at export with the
real tokenizer), windows, merging and entity extraction all inside the graph, so TF Serving or any
TensorFlow runtime can serve text without this project (see trainer/text_signature.py). A
word-level model with a WordPiece tokenizer gets it too, its words tokenized with
tensorflow-text (which the loading process must import); other word-level models do not, and
export.json and a line of the command's output say why.

The model is rebuilt from the model config the run directory carries (model_config.json, written
by the trainer when the run starts; see trainer/run_dir.py) with the same mixed precision policy as
in training, and its weights are restored from the checkpoint, so the export tags exactly as the
trainer's evaluation did. A pretrained encoder is rebuilt from its config only: the checkpoint
holds every weight, so the pretrained weights are not read again. A run directory written before
model_config.json existed still exports: its model config is built again from config.json and
data_manifest.json, as the trainer built it, with a note.

`--checkpoint=best` (the default) is the model of the best dev evaluation (run_dir/best); a run
that kept none (no dev evaluation finished) falls back to the latest checkpoint, with a note.

Flags are absl flags (`--helpfull` lists them, `--flagfile=FILE` reads them from a file). A bad or
missing flag, like a run that cannot be exported, ends with `error: ...` and exit status 2.

This file writes the export directory and holds the command line; the parts it puts together:

    trainer/run_reader.py        reads the run directory: RunInfo, the checkpoint to export
    trainer/rebuild.py           rebuilds the run's tokenizer and model from the checkpoint
    trainer/serving_function.py  the "serving_default" tf.function
    trainer/piece_table.py       every code point's piece ids, for "tag_text"
    trainer/word_tokenizer.py    a word model's WordPiece tables, for "tag_text"
    trainer/text_signature.py    the "tag_text" tf.function (its steps: text_signature_steps.py,
                                 text_signature_words.py)
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil
import sys
import uuid
from typing import Callable

from absl import flags

# TensorFlow, transformers and the model code are imported inside the functions that use them, on
# purpose: a bad flag or run directory is reported in a second, before they load.
from data_pipeline.cli import parse_flags  # noqa: E402
from data_pipeline.manifest import file_sha256, replace_directory  # noqa: E402
from serving import export_format  # noqa: E402
from serving.export_format import ExportError  # noqa: E402
from trainer import run_dir as run_dir_lib  # noqa: E402
from trainer.rebuild import build_model, prepare_serving_tokenizer  # noqa: E402
from trainer.run_reader import read_run, resolve_checkpoint  # noqa: E402

CHECKPOINT_CHOICES = ("best", "latest")
# config.json + model.safetensors with PyTorch names, what the hub serves. (tf_model.h5 is no
# longer written: transformers 5 reads no TensorFlow weights; models.transformer still reads it.)
PRETRAINED_FORMATS = ("safetensors",)
ENCODER_DIR = "encoder"


# ------------------------------------------------------------------------------------------------
# Writing an export directory
# ------------------------------------------------------------------------------------------------


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


def _serving_module(model, *, label_map: list[str], tokenizer_json: str, tokenizer_info: dict,
                    max_seq_length: int, stride: int, input_format: str):
    """What `export_model` saves: (tf.Module, its signatures, export.json's "text_signature").

    "serving_default" always; "tag_text" when the model and tokenizer allow it (character
    models; word models with a WordPiece tokenizer), else the "text_signature" entry says why
    not.
    """
    import tensorflow as tf

    from trainer.serving_function import serving_function
    from trainer.text_signature import TEXT_WINDOW_BATCH, text_signature_unavailable

    module = tf.Module()
    # Only the variables are tracked (not the Keras model), so saving does not serialise
    # every Keras layer's call functions: the serving function is the whole graph.
    module.model_variables = list(model.variables)
    module.serve = serving_function(model)
    signatures = {export_format.SIGNATURE_NAME: module.serve}
    unavailable = text_signature_unavailable(tokenizer_json, input_format)
    if unavailable is not None:
        return module, signatures, {"name": None, "unavailable": unavailable}
    settings = dict(label_map=list(label_map), prefix_ids=list(tokenizer_info["prefix_ids"]),
                    suffix_ids=list(tokenizer_info["suffix_ids"]),
                    pad_token_id=int(tokenizer_info["pad_token_id"]),
                    max_seq_length=int(max_seq_length), stride=int(stride))
    if input_format == "char":
        from trainer.piece_table import piece_table
        from trainer.text_signature import text_signature_function

        module.tag_text = text_signature_function(
            model, piece_table(tokenizer_json, int(tokenizer_info["unk_token_id"])), **settings)
        described = {**export_format.TEXT_SIGNATURE,
                     "tokenizer": "piece table: every code point's pieces, core TensorFlow ops"}
    else:
        import importlib.metadata

        from trainer.text_signature import word_text_signature_function
        from trainer.word_tokenizer import wordpiece_tables

        module.tag_text = word_text_signature_function(
            model, wordpiece_tables(tokenizer_json),
            unk_token_id=int(tokenizer_info["unk_token_id"]), **settings)
        described = {**export_format.WORD_TEXT_SIGNATURE,
                     "tokenizer": "WordPiece: per-code-point normaliser and pre-tokenizer "
                                  "tables, tensorflow-text FastWordpieceTokenizer",
                     "requires": f"tensorflow-text=={importlib.metadata.version('tensorflow-text')}"
                                 f": import tensorflow_text before loading the SavedModel"}
    signatures[export_format.TEXT_SIGNATURE_NAME] = module.tag_text
    return module, signatures, {"name": export_format.TEXT_SIGNATURE_NAME, **described,
                                "max_line_chars": export_format.MAX_LINE_CHARS,
                                "window_batch_size": TEXT_WINDOW_BATCH}


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
      tokenizer_json, tokenizer_info: from `trainer.rebuild.prepare_serving_tokenizer`.
      max_seq_length, stride, input_format: the preprocessing settings the model was trained on.
      source: provenance for export.json (run directory, checkpoint, step).
      model_config: the TaggerConfig dict for export.json (default: the model's own).
      save_pretrained: None or "safetensors": also write the fine-tuned encoder as a Hugging
        Face checkpoint into export_dir/encoder (see `save_pretrained_encoder`).
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
    if input_format not in export_format.INPUT_FORMATS:
        raise ExportError(f"input_format must be one of {export_format.INPUT_FORMATS}, got "
                          f"{input_format!r}")
    if save_pretrained is not None:
        if save_pretrained not in PRETRAINED_FORMATS:
            raise ExportError(f"--save_pretrained={save_pretrained!r}: expected one of "
                              f"{PRETRAINED_FORMATS}")
        if model.config.encoder != "bert":
            raise ExportError("--save_pretrained needs a BERT-family encoder (--encoder=bert); "
                              f"this model's encoder is {model.config.encoder!r}")
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = export_dir.parent / f".{export_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        module, signatures, text_signature = _serving_module(
            model, label_map=label_map, tokenizer_json=tokenizer_json,
            tokenizer_info=tokenizer_info, max_seq_length=max_seq_length, stride=stride,
            input_format=input_format)
        tf.saved_model.save(module, str(staging), signatures=signatures)
        _write_json(staging / export_format.LABEL_MAP_FILE, list(label_map))
        (staging / export_format.TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")
        _write_json(staging / export_format.TOKENIZER_INFO_FILE, tokenizer_info)
        preprocessing = {"max_seq_length": int(max_seq_length), "stride": int(stride),
                         "input_format": input_format,
                         "word_boundary_marker": tokenizer_info.get("word_boundary_marker")}
        _write_json(staging / export_format.PREPROCESSING_FILE, preprocessing)
        pretrained = None
        if save_pretrained is not None:
            pretrained = save_pretrained_encoder(model, staging / ENCODER_DIR, save_pretrained,
                                                 pretrained_tokenizer)
        files = [path for path in sorted(staging.rglob("*")) if path.is_file()]
        for path in files:  # save_pretrained writes some files private (0600)
            path.chmod(0o644)
        checksums = {str(path.relative_to(staging)): file_sha256(path) for path in files}
        _write_json(staging / export_format.EXPORT_MANIFEST, {
            "format_version": export_format.EXPORT_FORMAT_VERSION,
            "created_by": "trainer.export",
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "source": source or {},
            "model": model_config or model.config.to_dict(),
            "label_map": list(label_map),
            "preprocessing": preprocessing,
            "tokenizer": {k: tokenizer_info.get(k) for k in ("name", "fingerprint",
                                                             "word_boundary_marker", "lowercase")},
            "signature": {"name": export_format.SIGNATURE_NAME, **export_format.SIGNATURE},
            "text_signature": text_signature,
            "encoder_pretrained": pretrained,
            "versions": _versions(),
            "sha256": checksums,
        })
        replace_directory(staging, export_dir)
        return export_dir
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def save_pretrained_encoder(model, directory: pathlib.Path, fmt: str,
                            tokenizer: str | None) -> dict:
    """Writes a tagger's fine-tuned encoder as a Hugging Face checkpoint, and its original
    tokenizer beside it (what `--save_pretrained` adds to an export as encoder/).

    The checkpoint is config.json and model.safetensors with PyTorch names
    (`models.transformer.save_pretrained`): transformers' `AutoModel` (PyTorch), this project's
    `--pretrained` and the hub read it. It has no pooler (the tagger has none).

    Args:
      model: a built Tagger with a BERT-family encoder (encoder="bert").
      directory: where the encoder is written.
      fmt: "safetensors" (the one format, see PRETRAINED_FORMATS).
      tokenizer: tokenizer name or directory to save beside it (skipped if it cannot be loaded),
        or None.

    Returns:
      export.json's "encoder_pretrained" entry: {"directory", "format", "model_type",
      "tokenizer": whether the tokenizer was saved}.
    """
    from models.transformer import save_pretrained

    backbone = model.encoder.transformer
    save_pretrained(backbone, directory)
    saved_tokenizer = False
    if tokenizer:
        from data_pipeline.tokenization import backend_tokenizer_json, load_tokenizer

        try:
            loaded = load_tokenizer(tokenizer)
            loaded.save_pretrained(str(directory))
            # Its tokenizer.json as it was read (transformers 5 would write its own rebuild).
            (directory / "tokenizer.json").write_text(backend_tokenizer_json(loaded, tokenizer),
                                                      encoding="utf-8")
            saved_tokenizer = True
        except ValueError:
            pass
    return {"directory": ENCODER_DIR, "format": fmt, "model_type": backbone.config.model_type,
            "tokenizer": saved_tokenizer}


def _versions() -> dict:
    import importlib.metadata

    out = {}
    for name in ("tensorflow", "tf-keras", "transformers", "tokenizers", "tensorflow-text"):
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
      save_pretrained: None or "safetensors" (see `export_model`).
      overwrite: replace an existing export_dir.
      log: receives progress messages.

    Returns:
      The export directory (absolute).

    Raises:
      ExportError: the run, checkpoint, tokenizer or export directory cannot be used.
    """
    run = read_run(run_dir, log=log)
    _check_export_dir(pathlib.Path(export_dir).resolve(), overwrite)
    prefix, step = resolve_checkpoint(run.run_dir, checkpoint, log=log)
    tokenizer_json, tokenizer_info = prepare_serving_tokenizer(run.manifest, run.input_format)
    model, trained = build_model(run, prefix)
    source = {"run_dir": str(run.run_dir), "checkpoint": prefix,
              "checkpoint_kind": checkpoint if checkpoint in CHECKPOINT_CHOICES else "path",
              "step": step, "mixed_precision": run.mixed_precision}
    path = export_model(
        model, export_dir, label_map=run.label_map, tokenizer_json=tokenizer_json,
        tokenizer_info=tokenizer_info, max_seq_length=run.manifest["max_seq_length"],
        stride=run.manifest["stride"], input_format=run.input_format, source=source,
        model_config=trained.to_dict(),
        save_pretrained=save_pretrained, pretrained_tokenizer=run.manifest["tokenizer"]["name"],
        overwrite=overwrite)
    log(f"exported {prefix} (step {step}) to {path}")
    text_signature = json.loads((path / export_format.EXPORT_MANIFEST).read_text(
        encoding="utf-8"))["text_signature"]
    if text_signature["name"] is None:
        log(f"note: no {export_format.TEXT_SIGNATURE_NAME} signature (text in, entities out): "
            f"{text_signature['unavailable']}")
    elif "requires" in text_signature:
        log(f"note: its {export_format.TEXT_SIGNATURE_NAME} signature needs "
            f"{text_signature['requires']}")
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
    target = pathlib.Path(export_dir or pathlib.Path(run_dir) / run_dir_lib.EXPORT_DIR)
    try:
        return export_run(run_dir, target, checkpoint=checkpoint, save_pretrained=save_pretrained,
                          overwrite=True, log=log)
    except (ExportError, OSError) as e:
        warn(f"export to {target} failed: {e}; retry with `python -m trainer.export "
             f"--run_dir={run_dir} --export_dir={target}`")
        return None


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def define_flags(flag_values: flags.FlagValues) -> None:
    """Declares the command's flags on `flag_values`."""
    f = dict(flag_values=flag_values)
    flags.DEFINE_string("run_dir", None, "Run directory of trainer.main.", required=True, **f)
    flags.DEFINE_string("checkpoint", "best", "best (default; the best dev evaluation), latest, "
                        "or a checkpoint prefix or directory.", **f)
    flags.DEFINE_string("export_dir", None, "Where the export is written.", required=True, **f)
    flags.DEFINE_enum("save_pretrained", None, PRETRAINED_FORMATS, "Also write the fine-tuned "
                      "encoder as a Hugging Face checkpoint (config.json, model.safetensors) "
                      "into EXPORT_DIR/encoder.", **f)
    flags.DEFINE_boolean("overwrite", False, "Replace an existing, non-empty --export_dir.", **f)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 2 bad input).

    Args:
      argv: the arguments without the program name (default: sys.argv[1:]); absl flags
        (`--helpfull` lists them, `--flagfile=FILE` reads them from a file).

    Raises:
      SystemExit: 0 after --helpfull, 2 after a bad or missing flag (the message printed).
    """
    args = flags.FlagValues()
    define_flags(args)
    parse_flags(args, argv, program="python -m trainer.export", description=__doc__)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        export_run(args.run_dir, args.export_dir, checkpoint=args.checkpoint,
                   save_pretrained=args.save_pretrained, overwrite=args.overwrite,
                   log=lambda message: print(message, flush=True))
    except (ExportError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
