"""Export a trained tagger: `python -m trainer.export --run_dir=RUN --export_dir=DIR`.

    python -m trainer.export --run_dir=runs/pd --export_dir=exports/pd \\
        [--checkpoint=best|latest|PATH] [--save_pretrained=h5|safetensors] [--overwrite]

The export directory alone is enough to serve (`serving.predict`, `serving.Predictor`,
or `tf.saved_model.load` from any Python with TensorFlow): a SavedModel whose signature
"serving_default" maps (input_ids, attention_mask, label_mask) to (tag_ids, scores, tag_probs),
CRF Viterbi decoding inside the graph, plus the label map, the tokenizer exactly as preprocessing
used it, the windowing settings and export.json (see `serving.export_format` for the layout).

A character model's SavedModel also has the signature "tag_text": raw UTF-8 lines in, entities
with character offsets out, tokenization (a per-code-point piece table built here with the real
tokenizer), windows, merging and entity extraction all inside the graph, so TF Serving or any
TensorFlow runtime can serve text without this project (see "The text-in signature" below).
Word-level models do not get it (it would need tensorflow-text); export.json says why.

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
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import pathlib
import shutil
import sys
import uuid
from typing import Any, Callable

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow is imported

from absl import flags  # noqa: E402

# TensorFlow, transformers and the model code are imported inside the functions that use them, on
# purpose: a bad flag or run directory is reported in a second, before they load.
from data_pipeline.cli import parse_flags  # noqa: E402
from data_pipeline.manifest import file_sha256, replace_directory  # noqa: E402
from data_pipeline.tags import entity_type, iob2_allowed_transitions  # noqa: E402
from models.config import TaggerConfig  # noqa: E402
from serving import export_format  # noqa: E402
from serving.export_format import ExportError, read_json  # noqa: E402
from trainer import precision  # noqa: E402
from trainer import run_dir as run_dir_lib  # noqa: E402

CHECKPOINT_CHOICES = ("best", "latest")
PRETRAINED_FORMATS = ("h5", "safetensors")
ENCODER_DIR = "encoder"
_MARKER_SETTING = {"dropped": "drop", "kept": "keep", "none": "auto"}


# ------------------------------------------------------------------------------------------------
# Reading a run directory
# ------------------------------------------------------------------------------------------------


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


def _run_precision(run: RunInfo) -> str:
    """The run's --mixed_precision as config.json records it (`auto` is resolved when training
    starts, so this is what the run computed in)."""
    return run.config.get("mixed_precision", "none")


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
    with precision.global_policy(precision.resolve(_run_precision(run))[0]):
        try:
            constrained = tagger.head == "crf" and tagger.crf_constrain_transitions
            model = build_tagger(tagger, transition_constraints=iob2_allowed_transitions(
                tagger.label_map) if constrained else None)
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


def tag_windows(model, input_ids, attention_mask, label_mask):
    """Runs a tagger over windows and decodes them (CRF Viterbi inside the graph).

    Args:
      model: a built Tagger (models/ API).
      input_ids, attention_mask, label_mask: int32 [B, T].

    Returns:
      {"tag_ids" int32 [B, T], "scores" float32 [B], "tag_probs" float32 [B, T]}, tags and
      probabilities 0 outside label_mask (see `serving.export_format.SIGNATURE`).
    """
    import tensorflow as tf

    logits = model(dict(input_ids=input_ids, attention_mask=attention_mask),
                   training=False)  # float32 [B, T, K]
    mask = tf.cast(label_mask, tf.bool)
    tag_ids, scores = model.decode(logits, mask)
    if model.config.head == "crf":
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


def serving_function(model):
    """The serving tf.function of a tagger (see `serving.export_format.SIGNATURE`).

    Args:
      model: a built Tagger (models/ API).

    Returns:
      A tf.function (input_ids, attention_mask, label_mask: int32 [B, T]) -> {"tag_ids" int32
      [B, T], "scores" float32 [B], "tag_probs" float32 [B, T]}.
    """
    import tensorflow as tf

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec([None, None], tf.int32, name="input_ids"),
        tf.TensorSpec([None, None], tf.int32, name="attention_mask"),
        tf.TensorSpec([None, None], tf.int32, name="label_mask")])
    def serve(input_ids, attention_mask, label_mask):
        return tag_windows(model, input_ids, attention_mask, label_mask)

    return serve


# ------------------------------------------------------------------------------------------------
# The text-in signature (character models)
# ------------------------------------------------------------------------------------------------
#
# "tag_text" does in the graph what `serving.Predictor` does in Python, step for step:
#
#   b"北京 欢迎你"  -unicode_decode->  北 京 ␠ 欢 迎 你        (invalid bytes -> U+FFFD, as Python)
#                 -drop separators->  tokens at offsets 0 1 3 4 5   (spaces, tabs, line ends)
#                 -piece table----->  piece ids per token: what TokenEncoder gives each
#                                     character alone (normaliser included); none -> unknown id
#                 -plan_windows---->  windows of <= budget pieces overlapping <= stride pieces
#                 -model------------>  tag ids and probabilities per window (batched by length)
#                 -merge------------>  each token from the window where it has most context
#                 -IOB2 entities---->  start/end as character offsets into the line as given
#
# The piece table is computed at export time by running the real tokenizer on every code point
# (U+0000..U+10FFFF) exactly as preprocessing tokenizes a character, and stored run-length
# encoded: consecutive code points with the same pieces share an entry (unassigned and private-use
# blocks, the unknown id's long runs), looked up with searchsorted.

TEXT_WINDOW_BATCH = 32  # windows per model call inside tag_text (Predictor's default batch_size)
_CODE_POINTS = 0x110000


@dataclasses.dataclass(frozen=True)
class PieceTable:
    """Every code point's piece ids, as preprocessing tokenizes it as a one-character token.

    Entry k covers the code points starts[k] .. starts[k + 1] - 1 (the last one up to U+10FFFF);
    all of them have the same pieces:

        starts     0 .. 19968 (中 is U+4E2D) ..        one entry per run of equal pieces
        pieces     [unk] [unk] .. [704] [705] ..

    Attributes:
      starts: int32 [K] increasing, starts[0] = 0.
      row_splits: int64 [K + 1]; entry k's pieces are piece_ids[row_splits[k]:row_splits[k + 1]]
        (at least one).
      piece_ids: int32 [total pieces].
      pieceless: bool [K]; the tokenizer gives these characters no piece (its normaliser removes
        them); they are tagged from one [unk] piece, and a line of only such characters is not
        tagged (TokenEncoder).
      unknown: bool [K]; the pieces are exactly [unk] (LineEncoder's `unknown`).
    """

    starts: Any
    row_splits: Any
    piece_ids: Any
    pieceless: Any
    unknown: Any

    def pieces(self, char: str) -> list[int]:
        """The piece ids of one character (for tests and debugging)."""
        import numpy as np

        k = int(np.searchsorted(self.starts, ord(char), side="right")) - 1
        return self.piece_ids[self.row_splits[k]:self.row_splits[k + 1]].tolist()


@functools.lru_cache(maxsize=4)
def piece_table(tokenizer_json: str, unk_token_id: int) -> PieceTable:
    """Runs the backend tokenizer over every code point, one character per token.

    Each character is encoded exactly as `data_pipeline.tokenization.TokenEncoder` encodes a
    token (`encode_batch([[char]], is_pretokenized=True, add_special_tokens=False)`), so the
    table holds what preprocessing gives every possible character. Takes ~10 s (cached per
    tokenizer within a process). Surrogates (U+D800..U+DFFF) cannot be in decoded text; they
    join the run before them.
    """
    import numpy as np
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer_json)
    code_points = [c for c in range(_CODE_POINTS) if not 0xD800 <= c <= 0xDFFF]
    encodings = backend.encode_batch([[chr(c)] for c in code_points], is_pretokenized=True,
                                     add_special_tokens=False)
    starts, splits, values, pieceless = [], [0], [], []
    previous = None
    for code_point, encoding in zip(code_points, encodings):
        ids = tuple(encoding.ids)
        if ids == previous:
            continue
        previous = ids
        starts.append(code_point)
        pieceless.append(not ids)
        values.extend(ids or [unk_token_id])
        splits.append(len(values))
    piece_ids = np.asarray(values, np.int32)
    row_splits = np.asarray(splits, np.int64)
    lengths = np.diff(row_splits)
    unknown = (lengths == 1) & (piece_ids[row_splits[:-1]] == unk_token_id)
    return PieceTable(np.asarray(starts, np.int32), row_splits, piece_ids,
                      np.asarray(pieceless, bool), unknown)


def text_signature_unavailable(tokenizer_json: str, input_format: str) -> str | None:
    """Why a model cannot get the text-in signature, or None if it can."""
    from tokenizers import Tokenizer

    from data_pipeline.tokenization import TokenEncoder

    if input_format != "char":
        return ("word-level model (input_format=conll): splitting words into WordPiece or "
                "SentencePiece pieces inside the graph needs tensorflow-text, which this project "
                "does not depend on; tokenize with serving.predict / serving.Predictor and call "
                "serving_default")
    if not TokenEncoder(Tokenizer.from_str(tokenizer_json), 0).context_free:
        return ("the tokenizer's pieces for a character depend on its position in the line "
                "(Metaspace prepend_scheme=first), so no per-character table reproduces them")
    return None


def text_signature_function(model, table: PieceTable, *, label_map: list[str],
                            prefix_ids: list[int], suffix_ids: list[int], pad_token_id: int,
                            max_seq_length: int, stride: int,
                            window_batch_size: int = TEXT_WINDOW_BATCH,
                            max_line_chars: int = export_format.MAX_LINE_CHARS):
    """The text-in tf.function of a character tagger (`serving.export_format.TEXT_SIGNATURE`).

    Args:
      model: a built Tagger (models/ API) of a character model.
      table: `piece_table` of the tokenizer preprocessing used.
      label_map: tag strings, index = tag id.
      prefix_ids, suffix_ids, pad_token_id: from the tokenizer's TokenizerInfo.
      max_seq_length, stride: the windowing settings the model was trained with.
      window_batch_size: windows per model call (memory stays bounded for long lines).
      max_line_chars: longer lines are not tagged (error says so).

    Returns:
      A tf.function (text: string [B]) -> dict of padded tensors, each with batch dimension B.
    """
    import numpy as np
    import tensorflow as tf

    from data_pipeline.windows import window_budget

    budget = window_budget(max_seq_length, prefix_ids, suffix_ids)
    if budget < 1:
        raise ExportError(f"max_seq_length={max_seq_length} leaves no room for a piece beside "
                          f"the special tokens")
    num_tags = len(label_map)
    kinds = [entity_type(tag) for tag in label_map]
    kind_names = sorted(set(kinds))
    separators = np.asarray([ord(c) for c in export_format.SEPARATORS], np.int32)
    too_long = (f"more than max_line_chars={max_line_chars:,} characters; split it into "
                f"several lines")

    gather, segment_sum = tf.gather, tf.math.unsorted_segment_sum

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec([None], tf.string, name="text")])
    def tag_text(text):
        run_starts = tf.constant(table.starts)
        pieces_of = tf.RaggedTensor.from_row_splits(tf.constant(table.piece_ids),
                                                    tf.constant(table.row_splits))
        pieceless_of = tf.constant(table.pieceless)
        unknown_of = tf.constant(table.unknown)
        tag_names = tf.constant(list(label_map) + [""])  # index num_tags = not tagged
        is_begin = tf.constant([tag.startswith("B") for tag in label_map])
        is_inside = tf.constant([tag.startswith("I") for tag in label_map])
        kind_id = tf.constant([kind_names.index(kind) for kind in kinds], tf.int32)
        kind_strings = tf.constant(kind_names)
        i64 = tf.int64

        # Characters. Invalid UTF-8 is read as U+FFFD exactly as Python's errors="replace".
        chars = tf.strings.unicode_decode(text, "UTF-8", errors="replace",
                                          replacement_char=0xFFFD)  # int32 [B, (C)]
        num_lines = tf.shape(text, out_type=i64)[0]
        num_chars = chars.row_lengths()                   # [B]
        code_points = chars.flat_values                   # [sum C]
        char_line = chars.value_rowids()                  # [sum C]
        char_offset = (tf.range(tf.size(code_points, out_type=i64))
                       - gather(chars.row_splits, char_line))  # offset in its line
        is_token = tf.reduce_all(code_points[:, None] != separators[None, :], axis=1)
        entry = tf.searchsorted(run_starts, code_points, side="right", out_type=i64) - 1

        # Lines that are not tagged, with serving.predict's reasons.
        tokens_in_line = segment_sum(tf.cast(is_token, i64), char_line, num_lines)
        real_in_line = segment_sum(tf.cast(is_token & ~gather(pieceless_of, entry), i64),
                                   char_line, num_lines)
        long_line = num_chars > max_line_chars
        error = tf.where(long_line, too_long, tf.where(
            tokens_in_line == 0, export_format.EMPTY_LINE,
            tf.where(real_in_line == 0, export_format.NORMALISED_AWAY, "")))
        tagged = is_token & gather(~long_line & (real_in_line > 0), char_line)

        # Tokens of the lines to tag, line by line: N of them.
        token_char = tf.where(tagged)[:, 0]                          # [N] index into chars
        token_line = gather(char_line, token_char)                   # [N]
        token_entry = gather(entry, token_char)                      # [N]
        num_tokens = tf.size(token_char, out_type=i64)
        line_tokens = segment_sum(tf.ones_like(token_line), token_line, num_lines)  # [B]
        line_first = tf.cumsum(line_tokens, exclusive=True)          # [B] first token of a line
        token_index = tf.range(num_tokens) - gather(line_first, token_line)  # in its line
        # A token of more than `budget` pieces is cut to fit, as window_records does.
        pieces = gather(pieces_of, token_entry)[:, :budget]          # [N, (k)]
        cum = tf.concat([tf.zeros([1], i64), tf.cumsum(pieces.row_lengths())], 0)  # [N + 1]

        # plan_windows for every line at once: one window per line and iteration. With cum
        # strictly increasing (a token has >= 1 piece), the greedy loops of plan_windows are
        # searches: end = the most tokens from start whose pieces fit the budget (at least
        # one), next start = the first token after start from which the pieces up to end fit
        # the stride.
        def at(local):  # cum at a line-local token index, for every line
            return gather(cum, tf.minimum(line_first + local, num_tokens))

        def plan(start, active, lines_out, starts_out, ends_out, step):
            end = tf.searchsorted(cum, at(start) + budget, side="right", out_type=i64) - 1
            end = tf.maximum(tf.minimum(end - line_first, line_tokens), start + 1)
            following = tf.searchsorted(cum, at(end) - stride, side="left", out_type=i64)
            following = tf.maximum(following - line_first, start + 1)
            rows = tf.where(active)[:, 0]
            return (following, active & (end < line_tokens), lines_out.write(step, rows),
                    starts_out.write(step, gather(start, rows)),
                    ends_out.write(step, gather(end, rows)), step + 1)

        def vectors():
            return tf.TensorArray(i64, size=0, dynamic_size=True, infer_shape=False,
                                  element_shape=tf.TensorShape([None]))

        _, _, lines_out, starts_out, ends_out, _ = tf.while_loop(
            lambda start, active, *_: tf.reduce_any(active), plan,
            [tf.zeros_like(line_tokens), line_tokens > 0, vectors(), vectors(), vectors(),
             tf.constant(0)])
        # Line by line, each line's windows in order: the order serving.Predictor sees them in.
        order = tf.argsort(lines_out.concat(), stable=True)
        window_line = gather(lines_out.concat(), order)              # [W]
        window_start = gather(starts_out.concat(), order)            # [W] line-local tokens
        window_end = gather(ends_out.concat(), order)                # [W]
        num_windows = tf.size(window_line)

        # Window inputs: [prefix] pieces [suffix]; char_index = line-local token at a token's
        # first piece, -1 elsewhere (window_records).
        first_of_line = gather(line_first, window_line)
        piece_range = tf.ragged.range(gather(cum, first_of_line + window_start),
                                      gather(cum, first_of_line + window_end))  # [W, (len)]
        piece_token = pieces.value_rowids()                          # [P] token of a piece
        piece_first = tf.range(tf.size(piece_token, out_type=i64)) == gather(
            pieces.row_splits, piece_token)
        piece_index = tf.where(piece_first, gather(token_index, piece_token), -1)

        def framed(values, head, tail):  # [W, (len)] -> [W, (len + specials)]
            rows = tf.stack([num_windows, 1])
            return tf.concat([
                tf.RaggedTensor.from_tensor(tf.tile(tf.constant([head], i64), rows)),
                values,
                tf.RaggedTensor.from_tensor(tf.tile(tf.constant([tail], i64), rows))], axis=1)

        window_ids = framed(gather(tf.cast(pieces.flat_values, i64), piece_range),
                            prefix_ids, suffix_ids)
        window_chars = framed(gather(piece_index, piece_range), [-1] * len(prefix_ids),
                              [-1] * len(suffix_ids))
        input_ids = tf.cast(window_ids.to_tensor(default_value=pad_token_id), tf.int32)  # [W, T]
        char_index = window_chars.to_tensor(default_value=-1)                # [W, T]
        lengths = window_ids.row_lengths()                                   # [W]
        width = tf.shape(input_ids)[1]

        # The model over windows of similar length, window_batch_size at a time (the batches
        # serving.Predictor makes for up to 256 lines).
        by_length = tf.argsort(lengths, stable=True)
        num_batches = (num_windows + window_batch_size - 1) // window_batch_size

        def run(step, tags, probs):
            rows = by_length[step * window_batch_size:(step + 1) * window_batch_size]
            size = tf.cast(tf.reduce_max(gather(lengths, rows)), tf.int32)
            out = tag_windows(
                model, gather(input_ids, rows)[:, :size],
                tf.sequence_mask(tf.cast(gather(lengths, rows), tf.int32), size, tf.int32),
                tf.cast(gather(char_index, rows)[:, :size] >= 0, tf.int32))
            pad = [[0, 0], [0, width - size]]
            return (step + 1, tags.write(step + 1, tf.pad(out["tag_ids"], pad)),
                    probs.write(step + 1, tf.pad(out["tag_probs"], pad)))

        def matrices(dtype):  # element 0 is [0, T], so concat works for no windows too
            array = tf.TensorArray(dtype, size=1, dynamic_size=True, infer_shape=False,
                                   element_shape=tf.TensorShape([None, None]))
            return array.write(0, tf.zeros([0, width], dtype))

        _, tags, probs = tf.while_loop(lambda step, *_: step < num_batches, run,
                                       [tf.constant(0), matrices(tf.int32),
                                        matrices(tf.float32)])
        restore = tf.math.invert_permutation(by_length)
        window_tags = gather(tags.concat(), restore)                 # [W, T]
        window_probs = gather(probs.concat(), restore)               # [W, T]

        # merge_window_predictions: a token takes the window where it has the most context,
        # min(distance to the window's start, to its end), where an end that is the line's
        # end does not count (n, more than any distance); ties go to the earlier window.
        labelled = tf.where(char_index >= 0)                         # [M, 2]
        window = labelled[:, 0]
        local = tf.gather_nd(char_index, labelled)
        start, end = gather(window_start, window), gather(window_end, window)
        length = gather(line_tokens, gather(window_line, window))
        context = tf.minimum(tf.where(start > 0, local - start, length),
                             tf.where(end < length, end - 1 - local, length))
        rank = context * (length + 1) + (length - start)
        token = gather(first_of_line, window) + local                # [M] global token
        best = tf.math.unsorted_segment_max(rank, token, num_tokens)
        wins = rank == gather(best, token)
        token_tag = segment_sum(tf.where(wins, tf.gather_nd(window_tags, labelled), 0), token,
                                num_tokens)                          # [N]
        token_prob = segment_sum(tf.where(wins, tf.gather_nd(window_probs, labelled), 0.0),
                                 token, num_tokens)                  # [N]

        # Per-character outputs.
        total_chars = tf.size(code_points, out_type=i64)
        char_tag = tf.tensor_scatter_nd_update(tf.fill([total_chars], num_tags),
                                               token_char[:, None], token_tag)
        char_prob = tf.tensor_scatter_nd_update(tf.zeros([total_chars]), token_char[:, None],
                                                token_prob)
        tags_out = tf.RaggedTensor.from_row_splits(gather(tag_names, char_tag),
                                                   chars.row_splits).to_tensor(default_value="")
        probs_out = tf.RaggedTensor.from_row_splits(char_prob, chars.row_splits).to_tensor()

        # Entities, strict IOB2 (data_pipeline.tags.extract_entities): a token continues the
        # entity of the token before it if it is an I- of the same type after a B- or I-. Runs
        # of continuing tokens start at a head; a run whose head is a B- is an entity.
        previous = tf.roll(token_tag, 1, axis=0)
        continues = ((token_index > 0) & gather(is_inside, token_tag)
                     & (gather(kind_id, token_tag) == gather(kind_id, previous))
                     & (gather(is_begin, previous) | gather(is_inside, previous)))
        run_of = tf.cumsum(tf.cast(~continues, i64)) - 1             # [N]
        heads = tf.where(~continues)[:, 0]                           # [R]
        num_runs = tf.size(heads, out_type=i64)
        run_length = segment_sum(tf.ones_like(run_of), run_of, num_runs)
        run_prob = segment_sum(tf.cast(token_prob, tf.float64), run_of, num_runs)
        is_entity = gather(is_begin, gather(token_tag, heads))
        first = tf.boolean_mask(heads, is_entity)                    # [E] first token
        count = tf.boolean_mask(run_length, is_entity)
        score = tf.cast(tf.boolean_mask(run_prob, is_entity) / tf.cast(count, tf.float64),
                        tf.float32)
        entity_line = gather(token_line, first)
        entity_start = gather(char_offset, gather(token_char, first))
        entity_end = gather(char_offset, gather(token_char, first + count - 1)) + 1
        entity_type = gather(kind_strings, gather(kind_id, gather(token_tag, first)))
        line_start = gather(chars.row_splits, entity_line)
        entity_text = tf.strings.unicode_encode(
            gather(code_points, tf.ragged.range(line_start + entity_start,
                                                line_start + entity_end)), "UTF-8")

        def per_line(values, default):
            return tf.RaggedTensor.from_value_rowids(values, entity_line, nrows=num_lines
                                                     ).to_tensor(default_value=default)

        num_unknown = segment_sum(tf.cast(gather(unknown_of, token_entry), tf.int32),
                                  token_line, num_lines)
        return {
            "num_chars": tf.cast(num_chars, tf.int32),
            "tags": tags_out,
            "tag_probs": probs_out,
            "num_entities": tf.cast(segment_sum(tf.ones_like(entity_line), entity_line,
                                                num_lines), tf.int32),
            "entity_start": tf.cast(per_line(entity_start, -1), tf.int32),
            "entity_end": tf.cast(per_line(entity_end, -1), tf.int32),
            "entity_type": per_line(entity_type, ""),
            "entity_text": per_line(entity_text, ""),
            "entity_score": per_line(score, 0.0),
            "num_unknown": num_unknown,
            "error": error,
        }

    return tag_text


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
    if input_format not in export_format.INPUT_FORMATS:
        raise ExportError(f"input_format must be one of {export_format.INPUT_FORMATS}, got "
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
        signatures = {export_format.SIGNATURE_NAME: module.serve}
        unavailable = text_signature_unavailable(tokenizer_json, input_format)
        if unavailable is None:
            module.tag_text = text_signature_function(
                model, piece_table(tokenizer_json, int(tokenizer_info["unk_token_id"])),
                label_map=list(label_map), prefix_ids=list(tokenizer_info["prefix_ids"]),
                suffix_ids=list(tokenizer_info["suffix_ids"]),
                pad_token_id=int(tokenizer_info["pad_token_id"]),
                max_seq_length=int(max_seq_length), stride=int(stride))
            signatures[export_format.TEXT_SIGNATURE_NAME] = module.tag_text
            text_signature = {"name": export_format.TEXT_SIGNATURE_NAME,
                              **export_format.TEXT_SIGNATURE,
                              "max_line_chars": export_format.MAX_LINE_CHARS,
                              "window_batch_size": TEXT_WINDOW_BATCH}
        else:
            text_signature = {"name": None, "unavailable": unavailable}
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
            pretrained = _save_pretrained(model, staging / ENCODER_DIR, save_pretrained,
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
    run = read_run(run_dir, log=log)
    _check_export_dir(pathlib.Path(export_dir).resolve(), overwrite)
    prefix, step = resolve_checkpoint(run.run_dir, checkpoint, log=log)
    tokenizer_json, tokenizer_info = prepare_serving_tokenizer(run.manifest, run.input_format)
    model, trained = build_model(run, prefix)
    source = {"run_dir": str(run.run_dir), "checkpoint": prefix,
              "checkpoint_kind": checkpoint if checkpoint in CHECKPOINT_CHOICES else "path",
              "step": step, "mixed_precision": _run_precision(run)}
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
                      "encoder with transformers' save_pretrained into EXPORT_DIR/encoder.", **f)
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
