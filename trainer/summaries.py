"""Writes a run's TensorBoard summaries: training and evaluation scalars, dev examples, hparams,
CRF transitions.

All summaries are TF2 `tf.summary` ops, written eagerly from plain Python. The layout is the
Model Garden one, one event-file directory per split (`trainer.event_layout`), so that
`tensorboard --logdir runs` lists each run by its directory name and the same tag of train and
dev (`loss`) overlays in one chart:

    RUN_DIR/          hparams (the HParams dashboard's session, named after RUN_DIR),
                      variables (text: the start-of-run table of variable groups),
                      crf/transitions (image: the transition matrix as a heatmap)
    RUN_DIR/train/    loss  lr/<group>  grad_norm/<group>  loss_scale (fp16 only)
                      tokens_per_s  windows_per_s (older runs named it sentences_per_s;
                      it always counted windows)
                      (a frozen group's lr/<group> is written once, as 0, at step 0)
    RUN_DIR/dev/      loss  f1  precision  recall  token_accuracy  f1/<TYPE> ...
                      examples (text: a markdown table of a few sentences, gold and predicted)
    RUN_DIR/test/     the same scalars as dev/, once, at the end

So TensorBoard shows the runs `frozen`, `frozen/train`, `frozen/dev`, `frozen/test`; the chart
`loss` holds train, dev and test, the chart `f1` dev and test; the HParams dashboard lists the
session `frozen` with the metrics `dev/f1` etc. (metric tag `f1` of the group `dev`).

A summary is named by its flat name (`trainer.event_layout.split_name`):
`SummaryWriter.scalars(step, {"train/loss": x})` writes the tag `loss` into train/. Read the
summaries back with `trainer.run_events.RunEvents`; a resumed run first removes what it writes
again with `trainer.event_truncation.truncate_event_files`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from data_pipeline.manifest import strict_json_dumps
from trainer import evaluation
from trainer.event_layout import split_name
from trainer.heatmap import CONSTRAINT_MAGNITUDE, color_scale, render_heatmap
from trainer.summary_markdown import examples_markdown

__all__ = ["DEFAULT_HPARAM_METRICS", "SummaryWriter", "flatten_config"]

# Evaluation scalars the HParams dashboard shows as columns.
DEFAULT_HPARAM_METRICS = ("dev/f1", "dev/precision", "dev/recall", "dev/loss",
                          "test/f1", "test/precision", "test/recall")


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
                   windows_per_s: Any = None) -> None:
        """Writes the training scalars of one logged step into train/.

        Args:
          step: the global step.
          loss: mean training loss (per counted token) since the last log -> "loss".
          lr_by_group: {group name: learning rate} -> "lr/<group>".
          grad_norm_by_group: {group name: global gradient norm of the group} ->
            "grad_norm/<group>".
          loss_scale: the fp16 dynamic loss scale; None (no loss scaling) writes nothing.
          tokens_per_s, windows_per_s: throughput (a sentence longer than the model's window
            is several windows); None writes nothing.
        """
        values = {"train/loss": loss, "train/loss_scale": loss_scale,
                  "train/tokens_per_s": tokens_per_s, "train/windows_per_s": windows_per_s}
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
        scale = color_scale(values)
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
