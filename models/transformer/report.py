"""The loading report: which checkpoint weights were loaded, unused, missing or of another shape.

Its fields, summary line and JSON are those the trainer's variables report (RUN_DIR/variables.json)
has recorded since the encoder was transformers' TF model, whose `from_pretrained` they described,
so reports of old and new runs read alike.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any

# "encoder.layer.3." (PyTorch) or "encoder/layer_._3/" (TensorFlow): the block of a weight.
_BLOCK_OF_WEIGHT = re.compile(r"(?:^|[/.])(encoder|transformer)[/.]layer(?:_\._|[/.])(\d+)[/.]")


@dataclasses.dataclass(frozen=True)
class LoadingInfo:
    """How a checkpoint's weights were matched to the encoder's.

    Counts are of checkpoint weights (a block's query, key and value are three, though they fill
    one fused variable), so they read like transformers' own.

    Attributes:
      source: the directory or hub name the weights came from.
      model_weights: number of weights the encoder takes from a checkpoint.
      model_prefix: the main layer's name ("bert"), left out of the summary's names.
      unused: checkpoint weights the encoder has no place for (e.g. the pooler, which the tagger
        leaves out), by name as the checkpoint spells them.
      missing: encoder weights the checkpoint lacks (randomly initialised), by name.
      mismatched: (name, checkpoint shape, model shape) of weights left random for their shape.
    """

    source: str
    model_weights: int
    model_prefix: str = ""
    unused: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()

    @property
    def loaded(self) -> int:
        return self.model_weights - len(self.missing) - len(self.mismatched)

    @property
    def complete(self) -> bool:
        """Every encoder weight came from the checkpoint."""
        return not self.missing and not self.mismatched

    def summary(self) -> str:
        """One line, e.g. "pretrained weights: 197 loaded, pooler (2) unused, 0 missing"."""
        unused = by_part(self.unused, self.model_prefix) or "0"
        parts = [f"{self.loaded} loaded", f"{unused} unused"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing "
                         f"({by_part(self.missing, self.model_prefix)}; randomly initialised)")
        else:
            parts.append("0 missing")
        if self.mismatched:
            shapes = ", ".join(f"{name} {list(found)} in the checkpoint, {list(wanted)} here"
                               for name, found, wanted in self.mismatched[:3])
            more = ", ..." if len(self.mismatched) > 3 else ""
            parts.append(f"{len(self.mismatched)} of another shape, randomly initialised "
                         f"({shapes}{more})")
        return "pretrained weights: " + ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "model_weights": self.model_weights,
                "loaded": self.loaded, "complete": self.complete, "unused": list(self.unused),
                "missing": list(self.missing),
                "mismatched": [{"name": name, "checkpoint_shape": list(found),
                                "model_shape": list(wanted)}
                               for name, found, wanted in self.mismatched],
                "summary": self.summary()}


def part_of(name: str, model_prefix: str) -> str:
    """The component a weight belongs to, for a one-line summary (model prefix "bert"; TF or
    PyTorch names): "bert/pooler/dense/kernel:0" and "bert.pooler.dense.weight" -> "pooler",
    "tf_bert_model/bert/encoder/layer_._3/output/dense/bias:0" -> "encoder layer 3",
    "embeddings.word_embeddings.weight" -> "embeddings"."""
    block = _BLOCK_OF_WEIGHT.search(name)
    if block:
        return f"{block.group(1)} layer {block.group(2)}"
    parts = [p for p in re.split(r"[/.]", name) if p]
    while len(parts) > 1 and (parts[0].startswith("tf_") or parts[0] == model_prefix):
        parts = parts[1:]  # the model's and its main layer's name scopes
    return parts[0] if parts else name


def by_part(names: tuple[str, ...], model_prefix: str) -> str:
    """"pooler (2)", or "pooler (2), classifier (2)"; empty for no names."""
    counts = collections.Counter(part_of(name, model_prefix) for name in names)
    return ", ".join(f"{part} ({count})" for part, count in counts.items())
