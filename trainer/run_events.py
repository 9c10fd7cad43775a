"""Reads a run's TensorBoard event files back, by flat summary name ("dev/f1").

TF2 summaries are stored as tensors: read them with `RunEvents(run_dir).Tensors(name)` or
`EventAccumulator(RUN_DIR/train).Tensors(tag)` (not `.Scalars`).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

from trainer.event_layout import event_directories, flat_name, split_name


class RunEvents:
    """A run's event files read back (RUN_DIR and its split directories), one flat namespace.

    Mirrors the `EventAccumulator` methods the tests and benchmarks use, with flat names:
    `RunEvents(run_dir).Tensors("train/loss")` is `EventAccumulator(RUN_DIR/train)
    .Tensors("loss")`, `.Tensors("crf/transitions")` reads RUN_DIR itself. Every tag a run
    holds is readable, also those an older writer wrote (e.g. "train/sentences_per_s", which
    is "train/windows_per_s" today).

    Attributes:
      accumulators: {subdirectory ("" for RUN_DIR): its loaded EventAccumulator}.
    """

    def __init__(self, run_dir: str | os.PathLike, size_guidance: Mapping[str, int] | None = None):
        """Args:
          run_dir: the run directory.
          size_guidance: EventAccumulator's, {kind: events kept per tag (0: all)}; default:
            every tensor.
        """
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
