"""Rebuilds a run's tokenizer and model, exactly as the run used them, for export.

    tokenizer_json, tokenizer_info = prepare_serving_tokenizer(run.manifest, run.input_format)
    model, trained_config = build_model(run, checkpoint_prefix)

The tokenizer is prepared again from its recorded name and settings and must have the manifest's
fingerprint. The model is rebuilt from the model config the run directory carries (see
`trainer.run_reader`) under the run's mixed precision policy, and every weight is restored from
the checkpoint, so the export tags exactly as the trainer's evaluation did. A pretrained encoder
is rebuilt from its config only: the checkpoint holds every weight, so the pretrained weights are
not read again. A checkpoint written before #22 (transformers' TF encoder) is read by the name
map of `trainer.legacy_checkpoint`.

TensorFlow, transformers and the model code are imported inside the functions that use them.
"""

from __future__ import annotations

import dataclasses

from data_pipeline.tags import iob2_allowed_transitions
from serving.export_format import ExportError
from trainer import precision
from trainer.run_reader import RunInfo

# The manifest's record of the `▁` marker -> `prepare_tokenizer`'s word_boundary_marker setting.
_MARKER_SETTING = {"dropped": "drop", "kept": "keep", "none": "auto"}


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
            recorded["name"], word_boundary_marker=marker, input_format=input_format,
            lowercase=bool(recorded.get("lowercase", False)))
    except ValueError as e:
        raise ExportError(f"the run's tokenizer cannot be loaded: {e}") from None
    if info.fingerprint != recorded["fingerprint"]:
        raise ExportError(
            f"tokenizer {recorded['name']!r} differs from the one preprocessing used "
            f"(fingerprint {info.fingerprint[:12]} != {recorded['fingerprint'][:12]}): the export "
            f"would not tokenize as the model was trained; restore the original tokenizer files")
    return backend.to_str(), info.to_json()


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

    from models import build_tagger

    trained = tagger = run.model_config
    if tagger.pretrained is not None:
        # Same architecture from the config alone; the checkpoint supplies every weight.
        tagger = dataclasses.replace(tagger, pretrained=None, encoder_config=tagger.pretrained)
    with precision.global_policy(precision.resolve(run.mixed_precision)[0]):
        try:
            constrained = tagger.head == "crf" and tagger.crf_constrain_transitions
            model = build_tagger(tagger, transition_constraints=iob2_allowed_transitions(
                tagger.label_map) if constrained else None)
        except (OSError, ValueError) as e:
            raise ExportError(f"cannot rebuild the run's model: {e}") from None
    from trainer import legacy_checkpoint

    if legacy_checkpoint.is_legacy(checkpoint_prefix):  # written before #22: by a name map
        try:
            legacy_checkpoint.restore(checkpoint_prefix, {"model": model})
        except legacy_checkpoint.LegacyCheckpointError as e:
            raise ExportError(str(e)) from None
        return model, trained
    status = tf.train.Checkpoint(model=model).read(checkpoint_prefix)
    try:
        status.expect_partial()  # optimizer slots, step, input position are not exported
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise ExportError(f"{checkpoint_prefix} does not hold every weight of the run's model: "
                          f"{str(e)[:500]}") from None
    return model, trained
