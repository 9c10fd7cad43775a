"""TensorBoard summaries of a run: training and evaluation scalars, dev examples, hparams, CRF.

All summaries are TF2 `tf.summary` ops, written eagerly from plain Python. The layout is the
Model Garden one, one event-file directory per split, so that `tensorboard --logdir runs` lists
each run by its directory name and the same tag of train and dev (`loss`) overlays in one chart:

    RUN_DIR/          hparams (the HParams dashboard's session, named after RUN_DIR),
                      variables (text: the start-of-run table of variable groups),
                      crf/transitions (image: the transition matrix as a heatmap)
    RUN_DIR/train/    loss  lr/<group>  grad_norm/<group>  loss_scale (fp16 only)
                      tokens_per_s  sentences_per_s
                      (a frozen group's lr/<group> is written once, as 0, at step 0)
    RUN_DIR/dev/      loss  f1  precision  recall  token_accuracy  f1/<TYPE> ...
                      examples (text: a markdown table of a few sentences, gold and predicted)
    RUN_DIR/test/     the same scalars as dev/, once, at the end

So TensorBoard shows the runs `frozen`, `frozen/train`, `frozen/dev`, `frozen/test`; the chart
`loss` holds train, dev and test, the chart `f1` dev and test; the HParams dashboard lists the
session `frozen` with the metrics `dev/f1` etc. (metric tag `f1` of the group `dev`).

In this module (and in `RunEvents`) a summary is named by its flat name "<split>/<tag>" for a
split's directory ("train/loss" is the tag `loss` in RUN_DIR/train/) and by its tag alone in
RUN_DIR itself ("crf/transitions"): `SummaryWriter.scalars(step, {"train/loss": x})` writes
into train/.

TF2 summaries are stored as tensors: read them back with `RunEvents(run_dir).Tensors(name)` or
`EventAccumulator(RUN_DIR/train).Tensors(tag)` (not `.Scalars`).
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from data_pipeline.manifest import strict_json_dumps
from data_pipeline.tags import Entity, extract_entities
from trainer import evaluation

# Evaluation scalars the HParams dashboard shows as columns.
DEFAULT_HPARAM_METRICS = ("dev/f1", "dev/precision", "dev/recall", "dev/loss",
                          "test/f1", "test/precision", "test/recall")

# Transition scores at least this large in magnitude (or not finite) are constraints, not learned
# values (models.crf uses -1e4 for a forbidden transition); the heatmap shows them in gray so they
# do not flatten the colour scale of the rest.
CONSTRAINT_MAGNITUDE = 1e3


def _to_float(value: Any) -> float:
    """A Python float from a number, numpy scalar or scalar tensor."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    return float(value)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str | float | bool]:
    """Flattens a (nested) config into hparams values: {"optimizer": {"lr": 1}} ->
    {"optimizer.lr": 1.0}. bool stays bool, other numbers become float, None and strings become
    str, lists and tuples their JSON text, anything else its str()."""
    flat: dict[str, str | float | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=name + "."))
        elif isinstance(value, (bool, np.bool_)):
            flat[name] = bool(value)
        elif isinstance(value, (int, float, np.integer, np.floating)):
            flat[name] = float(value)
        elif isinstance(value, str):
            flat[name] = value
        elif isinstance(value, (list, tuple)):
            flat[name] = strict_json_dumps(value, non_finite="null", ensure_ascii=False,
                                           default=str)
        else:
            flat[name] = str(value)
    return flat


# The splits that get an event-file directory of their own (RUN_DIR/<split>/).
SPLITS = ("train", "dev", "test")


def split_name(name: str) -> tuple[str, str]:
    """A flat summary name -> (subdirectory, tag): "train/lr/head" -> ("train", "lr/head"),
    "crf/transitions" -> ("", "crf/transitions") (RUN_DIR itself)."""
    head, _, rest = name.partition("/")
    if head in SPLITS and rest:
        return head, rest
    return "", name


def flat_name(subdirectory: str, tag: str) -> str:
    """The inverse of `split_name`: ("dev", "f1") -> "dev/f1", ("", "variables") -> "variables"."""
    return f"{subdirectory}/{tag}" if subdirectory else tag


class SummaryWriter:
    """Writes the run's TensorBoard summaries into `run_dir` and its split subdirectories.

    Each directory's writer (and event file) is opened when its first summary is written, so a
    split that is never evaluated leaves no directory behind.

    Example:
        writer = SummaryWriter(run_dir)
        writer.hparams(config_dict)
        writer.train_step(step, loss, {"head": 1e-3}, {"head": 0.7}, None, 5e3, 120.0)
        writer.eval(step, "dev", result.metrics)
        writer.close()
    """

    def __init__(self, run_dir: str | os.PathLike, *, flush_millis: int = 10_000):
        """Args:
          run_dir: the run directory (created if needed, as are its split subdirectories).
          flush_millis: longest time a summary waits in memory before it is written.
        """
        import tensorflow as tf

        self._tf = tf
        self.logdir = os.fspath(run_dir)
        self._flush_millis = flush_millis
        self._writers: dict[str, Any] = {}
        self._restart_step: int | None = None

    def directory(self, subdirectory: str = "") -> str:
        """The event-file directory of a split ("" for RUN_DIR itself)."""
        return os.path.join(self.logdir, subdirectory) if subdirectory else self.logdir

    def _writer(self, subdirectory: str = ""):
        writer = self._writers.get(subdirectory)
        if writer is None:
            writer = self._tf.summary.create_file_writer(self.directory(subdirectory),
                                                         flush_millis=self._flush_millis)
            self._writers[subdirectory] = writer
            if self._restart_step is not None:
                self._write_restart(writer, self._restart_step)
        return writer

    # ---- scalars -------------------------------------------------------------------------------

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        """Writes {flat name: number} at `step` ("train/loss" -> tag loss in train/); None values
        are skipped."""
        tf = self._tf
        for name, value in values.items():
            if value is None:
                continue
            subdirectory, tag = split_name(name)
            with self._writer(subdirectory).as_default():
                tf.summary.scalar(tag, _to_float(value), step=int(step))

    def train_step(self, step: int, loss: Any,
                   lr_by_group: Mapping[str, Any] | None = None,
                   grad_norm_by_group: Mapping[str, Any] | None = None,
                   loss_scale: Any = None, tokens_per_s: Any = None,
                   sentences_per_s: Any = None) -> None:
        """Writes the training scalars of one logged step into train/.

        Args:
          step: the global step.
          loss: mean training loss (per counted token) since the last log -> "loss".
          lr_by_group: {group name: learning rate} -> "lr/<group>".
          grad_norm_by_group: {group name: global gradient norm of the group} ->
            "grad_norm/<group>".
          loss_scale: the fp16 dynamic loss scale; None (no loss scaling) writes nothing.
          tokens_per_s, sentences_per_s: throughput; None writes nothing.
        """
        values = {"train/loss": loss, "train/loss_scale": loss_scale,
                  "train/tokens_per_s": tokens_per_s, "train/sentences_per_s": sentences_per_s}
        for group, lr in (lr_by_group or {}).items():
            values[f"train/lr/{group}"] = lr
        for group, norm in (grad_norm_by_group or {}).items():
            values[f"train/grad_norm/{group}"] = norm
        self.scalars(step, values)

    def frozen_learning_rates(self, step: int, groups: Sequence[str]) -> None:
        """Writes "lr/<group>" = 0 into train/ for each frozen group, so the Scalars tab shows
        what does not train next to what does (call it once: the rate never changes)."""
        self.scalars(step, {f"train/lr/{group}": 0.0 for group in groups})

    def eval(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
        """Writes every metric of an evaluation into the split's directory, e.g. "f1/PER" in
        dev/ (flat name "dev/f1/PER")."""
        tf = self._tf
        with self._writer(split).as_default():
            for key, value in metrics.items():
                if value is not None:
                    tf.summary.scalar(key, _to_float(value), step=int(step))

    # ---- text ----------------------------------------------------------------------------------

    def text(self, step: int, name: str, markdown: str) -> None:
        """Writes a markdown text summary under its flat name (e.g. "variables" in RUN_DIR)."""
        subdirectory, tag = split_name(name)
        with self._writer(subdirectory).as_default():
            self._tf.summary.text(tag, markdown, step=int(step))

    def text_examples(self, step: int, examples: Sequence[Any],
                      sentences: Sequence[Sequence[str]] | None = None, *, split: str = "dev",
                      max_examples: int = 5) -> str:
        """Writes "examples" into the split's directory: a markdown table of a few sentences
        with their gold and predicted entities (wrong predictions struck through).

        Two ways to call it:
          text_examples(step, result.predictions, sentences): shows the first `max_examples`
            sentences (by sentence_id) that have a gold entity, so the same sentences appear at
            every step and can be compared over training.
          text_examples(step, [(tokens, gold_tags, pred_tags), ...]): shows the given sentences
            (the first `max_examples` of them).

        Args:
          step: the global step.
          examples: `evaluation.SentencePrediction`s (with `sentences`), or
            (tokens, gold_tags, pred_tags) triples (without).
          sentences: source tokens (characters) indexed by sentence_id.
          split: the split (its directory).
          max_examples: how many sentences to show.

        Returns:
          The markdown written.
        """
        if sentences is None:
            predictions = [evaluation.SentencePrediction(i, list(pred), list(gold), None)
                           for i, (_, gold, pred) in enumerate(examples)]
            markdown = examples_markdown(predictions, [tokens for tokens, _, _ in examples],
                                         max_examples=max_examples, only_with_entities=False)
        else:
            markdown = examples_markdown(examples, sentences, max_examples=max_examples)
        with self._writer(split).as_default():
            self._tf.summary.text("examples", markdown, step=int(step))
        return markdown

    # ---- hparams -------------------------------------------------------------------------------

    def hparams(self, config: Mapping[str, Any], *,
                metrics: Sequence[str] = DEFAULT_HPARAM_METRICS,
                trial_id: str | None = None) -> dict[str, str | float | bool]:
        """Records the run's configuration for the HParams dashboard (in RUN_DIR itself: the
        session; its metrics are read from the split subdirectories, TensorBoard's metric
        groups).

        Args:
          config: the resolved config (nested dicts are flattened to "a.b" keys).
          metrics: flat names of the scalars the dashboard shows next to the hparams
            ("dev/f1": tag f1 of the group dev).
          trial_id: the run's name in the dashboard; default: the run directory's name.

        Returns:
          The flattened hparams that were written.
        """
        from tensorboard.plugins.hparams import api as hp

        flat = flatten_config(config)
        metric_infos = []
        for name in metrics:
            group, tag = split_name(name)
            metric_infos.append(hp.Metric(tag, group=group or None))
        with self._writer().as_default():
            hp.hparams_config(hparams=[hp.HParam(name) for name in flat], metrics=metric_infos)
            hp.hparams(flat, trial_id=trial_id or os.path.basename(os.path.abspath(self.logdir)))
        return flat

    # ---- CRF transitions -----------------------------------------------------------------------

    def transitions_image(self, step: int, matrix: Any,
                          label_map: Sequence[str] | None = None, *,
                          tag: str = "crf/transitions") -> np.ndarray:
        """Writes the CRF transition matrix as a heatmap image (in RUN_DIR itself).

        Args:
          step: the global step.
          matrix: float [num_tags, num_tags] (array, tensor or variable), indexed [from, to].
          label_map: tag names; drawn as row and column labels if given.
          tag: the image's flat name.

        Returns:
          The image, uint8 [height, width, 3].
        """
        values = np.asarray(matrix.numpy() if hasattr(matrix, "numpy") else matrix, np.float64)
        image = render_heatmap(values, labels=label_map)
        scale = _color_scale(values)
        names = ", ".join(f"{i}={name}" for i, name in enumerate(label_map or []))
        description = (f"CRF transition scores, row = from tag, column = to tag. Blue < 0 < red, "
                       f"full colour at |score| = {scale:.3g}; gray: constraint (|score| >= "
                       f"{CONSTRAINT_MAGNITUDE:g} or not finite). {names}")
        subdirectory, image_tag = split_name(tag)
        with self._writer(subdirectory).as_default():
            self._tf.summary.image(image_tag, image[None], step=int(step),
                                   description=description)
        return image

    # ---- restarts ------------------------------------------------------------------------------

    def restart(self, step: int) -> None:
        """Marks a restart at `step` for TensorBoards that already read the earlier events.

        `truncate_event_files` removes from the files what a resumed run writes again, but a
        TensorBoard that is running has read them already. This writes an event with
        `SessionLog.START` at `step` into each directory this writer writes to (as the first
        event of its new file: a directory gets it when its first summary is written, so no
        file holds a marker alone): TensorBoard's Python data path (`--load_fast=false`, its
        `plugin_event_accumulator`) then drops the events of that run with a step >= `step` it
        holds (`purge_orphaned_data`, on by default). Its Rust data server (the default) needs
        no marker: per tag, a step written again replaces the points from that step on.
        (`event_accumulator.EventAccumulator` ignores the marker for TF2 summaries, which are
        tensors; it reads the truncated files.)
        """
        self._restart_step = int(step)
        for writer in self._writers.values():
            self._write_restart(writer, self._restart_step)

    def _write_restart(self, writer, step: int) -> None:
        from tensorflow.core.util import event_pb2
        from tensorflow.python.ops import summary_ops_v2  # import_event: not in the public API

        tf = self._tf
        event = event_pb2.Event(step=int(step), wall_time=time.time(),
                                session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))
        with writer.as_default():
            summary_ops_v2.import_event(tf.constant(event.SerializeToString()))

    # ---- lifetime ------------------------------------------------------------------------------

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


EVENT_FILE_MARKER = "tfevents"  # TensorBoard reads every file whose name contains it
_REWRITE_SUFFIX = ".rewrite.partial"  # no EVENT_FILE_MARKER in it: never read as events


def event_directories(logdir: str | os.PathLike) -> list[pathlib.Path]:
    """`logdir` and each of its direct subdirectories that holds an event file (a run
    directory and its split directories), `logdir` first."""
    directory = pathlib.Path(logdir)
    found = [directory]
    if directory.is_dir():
        found += [child for child in sorted(directory.iterdir()) if child.is_dir()
                  and any(child.glob(f"*{EVENT_FILE_MARKER}*"))]
    return found


def truncate_event_files(logdir: str | os.PathLike, last_step: int) -> int:
    """Removes every event with a step > `last_step` from the event files of a run.

    A resumed run writes the steps after its checkpoint again (into new event files); without
    this every reader would see those steps twice. The files in `logdir` and in each of its
    direct subdirectories (train/, dev/, test/) are rewritten atomically (a record a kill cut
    short is dropped too), a file left with no summary is deleted, and a file with nothing to
    drop is not touched. Call it before a writer opens a new file in the run.

    Args:
      logdir: the run directory.
      last_step: the restored step; -1 removes every summary (a run that restarts from scratch).

    Returns:
      The number of events removed.
    """
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    removed = 0
    for directory in event_directories(logdir):
        for leftover in directory.glob("*" + _REWRITE_SUFFIX):
            leftover.unlink()
        for path in sorted(directory.glob(f"*{EVENT_FILE_MARKER}*")):
            if not path.is_file():
                continue
            kept, changed = [], False
            try:
                for record in tf.data.TFRecordDataset(str(path)):
                    raw = record.numpy()
                    event = event_pb2.Event.FromString(raw)
                    if event.step > last_step and event.WhichOneof("what") != "file_version":
                        removed += 1
                        changed = True
                    else:
                        kept.append((raw, event.WhichOneof("what")))
            except tf.errors.DataLossError:  # the tail a kill cut short
                changed = True
            if not changed:
                continue
            if not any(what == "summary" for _, what in kept):
                path.unlink()
                continue
            partial = path.with_name(path.name.replace(EVENT_FILE_MARKER, "events")
                                     + _REWRITE_SUFFIX)
            with tf.io.TFRecordWriter(str(partial)) as writer:
                for raw, _ in kept:
                    writer.write(raw)
            os.replace(partial, path)
    return removed


class RunEvents:
    """A run's event files read back (RUN_DIR and its split directories), one flat namespace.

    Mirrors the `EventAccumulator` methods the tests and benchmarks use, with flat names:
    `RunEvents(run_dir).Tensors("train/loss")` is `EventAccumulator(RUN_DIR/train)
    .Tensors("loss")`, `.Tensors("crf/transitions")` reads RUN_DIR itself.

    Attributes:
      accumulators: {subdirectory ("" for RUN_DIR): its loaded EventAccumulator}.
    """

    def __init__(self, run_dir: str | os.PathLike, size_guidance: Mapping[str, int] | None = None):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        guidance = dict(size_guidance or {"tensors": 0})
        root = pathlib.Path(run_dir)
        self.accumulators = {}
        for directory in event_directories(root):
            accumulator = EventAccumulator(str(directory), size_guidance=guidance)
            accumulator.Reload()
            self.accumulators["" if directory == root else directory.name] = accumulator

    def _find(self, name: str):
        subdirectory, tag = split_name(name)
        accumulator = self.accumulators.get(subdirectory)
        if accumulator is None:
            raise KeyError(f"no event files for {name!r} (no {subdirectory}/ directory)")
        return accumulator, tag

    def Tags(self) -> dict[str, list[str]]:  # noqa: N802 (EventAccumulator's name)
        tags: dict[str, list[str]] = {}
        for subdirectory, accumulator in self.accumulators.items():
            for kind, names in accumulator.Tags().items():
                if isinstance(names, list):
                    tags.setdefault(kind, []).extend(flat_name(subdirectory, n) for n in names)
        return tags

    def Tensors(self, name: str):  # noqa: N802
        accumulator, tag = self._find(name)
        return accumulator.Tensors(tag)

    def SummaryMetadata(self, name: str):  # noqa: N802
        accumulator, tag = self._find(name)
        return accumulator.SummaryMetadata(tag)

    def PluginTagToContent(self, plugin_name: str) -> dict[str, bytes]:  # noqa: N802
        content: dict[str, bytes] = {}
        for subdirectory, accumulator in self.accumulators.items():
            try:
                found = accumulator.PluginTagToContent(plugin_name)
            except KeyError:
                continue
            content.update({flat_name(subdirectory, tag): value for tag, value in found.items()})
        return content


# ------------------------------------------------------------------------------------------------
# Markdown for the text panel
# ------------------------------------------------------------------------------------------------

_MARKDOWN_SPECIAL = "\\`*_[]<>#|~"


def _escape_markdown(text: str) -> str:
    return "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in text)


def _entity_text(tokens: Sequence[str], entity: Entity) -> str:
    separator = "" if all(len(t) == 1 for t in tokens) else " "  # characters vs words
    return _escape_markdown(separator.join(tokens[entity.start:entity.end])) + f" ({entity.type})"


def examples_markdown(predictions: Sequence[evaluation.SentencePrediction],
                      sentences: Sequence[Sequence[str]], *, max_examples: int = 5,
                      only_with_entities: bool = True) -> str:
    """A markdown table: sentence id, sentence, gold entities, predicted entities (a wrong
    prediction is struck through). Shows the first `max_examples` sentences, by sentence_id,
    skipping sentences without a gold entity if `only_with_entities`."""
    rows = ["| id | sentence | gold entities | predicted entities |",
            "|---:|---|---|---|"]
    shown = 0
    for prediction in sorted(predictions, key=lambda p: p.sentence_id):
        if shown >= max_examples:
            break
        gold = extract_entities(prediction.gold)
        if only_with_entities and not gold:
            continue
        tokens = list(sentences[prediction.sentence_id])
        pred = extract_entities(prediction.pred)
        gold_set = set(gold)
        separator = "" if all(len(t) == 1 for t in tokens) else " "
        rendered_pred = [_entity_text(tokens, e) if e in gold_set
                         else f"~~{_entity_text(tokens, e)}~~" for e in pred]
        rows.append(f"| {prediction.sentence_id} | {_escape_markdown(separator.join(tokens))} | "
                    f"{', '.join(_entity_text(tokens, e) for e in gold) or '(none)'} | "
                    f"{', '.join(rendered_pred) or '(none)'} |")
        shown += 1
    if not shown:
        rows.append("| | (no sentence to show) | | |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------------
# Heatmap rendering (numpy only)
# ------------------------------------------------------------------------------------------------

# A 3x5 pixel font for tag names, one row per "/" ("#" = ink): upper-case letters, digits,
# a few signs.
_GLYPHS = {
    "A": ".#./#.#/###/#.#/#.#", "B": "##./#.#/##./#.#/##.", "C": ".##/#../#../#../.##",
    "D": "##./#.#/#.#/#.#/##.", "E": "###/#../##./#../###", "F": "###/#../##./#../#..",
    "G": ".##/#../#.#/#.#/.##", "H": "#.#/#.#/###/#.#/#.#", "I": "###/.#./.#./.#./###",
    "J": "..#/..#/..#/#.#/.#.", "K": "#.#/#.#/##./#.#/#.#", "L": "#../#../#../#../###",
    "M": "#.#/###/###/#.#/#.#", "N": "##./#.#/#.#/#.#/#.#", "O": ".#./#.#/#.#/#.#/.#.",
    "P": "##./#.#/##./#../#..", "Q": ".#./#.#/#.#/.#./..#", "R": "##./#.#/##./#.#/#.#",
    "S": ".##/#../.#./..#/##.", "T": "###/.#./.#./.#./.#.", "U": "#.#/#.#/#.#/#.#/###",
    "V": "#.#/#.#/#.#/#.#/.#.", "W": "#.#/#.#/###/###/#.#", "X": "#.#/#.#/.#./#.#/#.#",
    "Y": "#.#/#.#/.#./.#./.#.", "Z": "###/..#/.#./#../###", "0": "###/#.#/#.#/#.#/###",
    "1": ".#./##./.#./.#./###", "2": "##./..#/.#./#../###", "3": "##./..#/.#./..#/##.",
    "4": "#.#/#.#/###/..#/..#", "5": "###/#../##./..#/##.", "6": ".##/#../###/#.#/###",
    "7": "###/..#/.#./.#./.#.", "8": "###/#.#/###/#.#/###", "9": "###/#.#/###/..#/##.",
    "-": ".../.../###/.../...", "_": ".../.../.../.../###", ".": ".../.../.../.../.#.",
    "/": "..#/..#/.#./#../#..", " ": ".../.../.../.../...",
}
_GLYPH_W, _GLYPH_H = 3, 5


def _glyph(char: str) -> np.ndarray:
    """bool [5, 3]; an unknown character is a filled box."""
    rows = _GLYPHS.get(char.upper(), "/".join(["###"] * _GLYPH_H)).split("/")
    return np.array([[c == "#" for c in row] for row in rows], bool)


def render_text(text: str, *, scale: int = 2) -> np.ndarray:
    """Renders `text` with the built-in 3x5 font: bool [5 * scale, 4 * scale * len(text)]."""
    if not text:
        return np.zeros([_GLYPH_H * scale, 0], bool)
    spaced = [np.pad(_glyph(c), ((0, 0), (0, 1))) for c in text]  # one column between glyphs
    bitmap = np.concatenate(spaced, axis=1)
    return bitmap.repeat(scale, axis=0).repeat(scale, axis=1)


def _color_scale(values: np.ndarray) -> float:
    learned = values[np.isfinite(values) & (np.abs(values) < CONSTRAINT_MAGNITUDE)]
    peak = float(np.max(np.abs(learned))) if learned.size else 0.0
    return peak if peak > 0 else 1.0


_NEGATIVE = np.array([33, 102, 172], np.float64)   # blue
_POSITIVE = np.array([178, 24, 43], np.float64)    # red
_WHITE = np.array([255, 255, 255], np.float64)
_CONSTRAINT = np.array([96, 96, 96], np.uint8)      # gray


def render_heatmap(values: np.ndarray, *, labels: Sequence[str] | None = None,
                   cell_size: int = 24, font_scale: int = 2) -> np.ndarray:
    """Renders a matrix as a diverging heatmap (blue < 0 < red, white at 0).

    The colour scale is symmetric, full colour at the largest |value| that is not a constraint
    (see CONSTRAINT_MAGNITUDE); constraints are gray. With `labels`, row labels are drawn on the
    left and column labels, rotated, on top.

    Args:
      values: float [rows, cols].
      labels: optional names of the rows (and columns: the matrix is square then).
      cell_size: pixels per cell side.
      font_scale: pixel size of one font dot.

    Returns:
      uint8 [height, width, 3] RGB image.
    """
    values = np.asarray(values, np.float64)
    if values.ndim != 2:
        raise ValueError(f"render_heatmap: expected a matrix, got shape {values.shape}")
    rows, cols = values.shape
    constraint = ~np.isfinite(values) | (np.abs(values) >= CONSTRAINT_MAGNITUDE)
    t = np.clip(np.where(constraint, 0.0, values) / _color_scale(values), -1.0, 1.0)[..., None]
    colors = np.where(t < 0, _WHITE - t * (_NEGATIVE - _WHITE), _WHITE + t * (_POSITIVE - _WHITE))
    colors = np.round(colors).astype(np.uint8)
    colors[constraint] = _CONSTRAINT
    cells = colors.repeat(cell_size, axis=0).repeat(cell_size, axis=1)  # [rows*cell, cols*cell, 3]

    if not labels:
        return cells
    labels = list(labels)
    if len(labels) != rows or rows != cols:
        raise ValueError(f"render_heatmap: {len(labels)} labels for a {rows}x{cols} matrix")
    margin = 4
    bitmaps = [render_text(label, scale=font_scale) for label in labels]
    label_width = max(b.shape[1] for b in bitmaps) + 2 * margin
    height, width = label_width + rows * cell_size, label_width + cols * cell_size
    image = np.full([height, width, 3], 255, np.uint8)
    image[label_width:, label_width:] = cells
    for i, bitmap in enumerate(bitmaps):
        h, w = bitmap.shape
        # Row label: right-aligned, vertically centred on row i.
        top = label_width + i * cell_size + max((cell_size - h) // 2, 0)
        left = label_width - margin - w
        image[top:top + h, left:left + w][bitmap[:cell_size]] = 0
        # Column label: rotated a quarter turn (reads bottom to top), centred on column i.
        rotated = np.rot90(bitmap)
        rh, rw = rotated.shape
        top = label_width - margin - rh
        left = label_width + i * cell_size + max((cell_size - rw) // 2, 0)
        image[top:top + rh, left:left + rw][rotated[:, :cell_size]] = 0
    return image
