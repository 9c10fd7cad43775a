"""What trains: the start-of-run table of variable groups, and `RUN_DIR/variables.json`.

For configs/frozen.flags (multilingual-e5-small-zh frozen, last 4 layers concatenated, a BiLSTM
of 128 units, a softmax head over 7 tags) the log shows:

    variables: 15 groups, 30,110,471 parameters: 1,706,759 trainable, 28,403,712 frozen
    group             parameters  variables  state      peak lr
    embeddings         7,110,144          5  frozen           0
    encoder_layer_0    1,774,464         12  frozen           0
    ...
    encoder_layer_11   1,774,464         12  frozen           0
    bilstm             1,704,960          6  trainable    0.001
    head                   1,799          2  trainable    0.001
    total trainable    1,706,759
    total frozen      28,403,712
    total             30,110,471
    encoder frozen: outside the gradient tape, in inference mode (or read from the feature cache)
    pretrained weights: 197 loaded, pooler (2) unused, 0 missing

A group is frozen when its peak learning rate is 0 (`trainer.optimization`): the optimizer and
the gradient tape never see it. Parameter counts are over the groups, i.e. over every trainable
Keras variable of the model; Keras non-trainable weights (none in the shipped models) are listed
on a line of their own and counted as frozen.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from typing import Any

import tensorflow as tf

from data_pipeline.manifest import strict_json_dumps
from trainer.run_dir import VARIABLES_FILE

FROZEN_ENCODER_NOTE = ("encoder frozen: outside the gradient tape, in inference mode (or read "
                       "from the feature cache)")


@dataclasses.dataclass(frozen=True)
class VariablesReport:
    """The table as text (for the log) and as a JSON-ready dict (for variables.json)."""

    text: str
    data: dict[str, Any]


def _parameters(variable: tf.Variable) -> int:
    return int(math.prod(int(d) for d in variable.shape))


def pretrained_weights_info(model) -> dict[str, Any]:
    """How the encoder got its weights, as recorded by `models.transformer.load_transformer`.

    Returns:
      {"summary": one line, ...}: the `LoadingInfo` as JSON for pretrained weights, else
      {"summary": ..., "source": None} saying that the encoder starts random.
    """
    transformer = getattr(model.encoder, "transformer", None)
    if transformer is None:
        return {"source": None, "summary": "pretrained weights: none (embedding encoder, "
                                           "randomly initialised)"}
    info = transformer.loading_info
    if info is None:
        return {"source": None, "summary": "pretrained weights: none (randomly initialised "
                                           "from the encoder config)"}
    return info.to_json()


def build_report(model, variable_groups: dict[str, list[tf.Variable]],
                 peak_rates: dict[str, float], frozen_groups=()) -> VariablesReport:
    """The variable groups of a built tagger, their sizes, and which of them train.

    Args:
      model: a built `models.Tagger`.
      variable_groups: `model.variable_groups()`.
      peak_rates: peak learning rate per group (`OptimizationPlan.peak_rates`).
      frozen_groups: groups the optimizer leaves out (`OptimizationPlan.frozen_groups`); a group
        whose peak rate is 0 is frozen too.

    Returns:
      A VariablesReport; `data` holds "groups" (name, parameters, variables, trainable,
      peak_learning_rate, encoder, and each variable's name and shape), "totals" (trainable,
      frozen, all), "non_trainable_weights", "encoder_frozen" and "pretrained_weights".

    Raises:
      ValueError: a group has no peak learning rate.
    """
    missing = [name for name in variable_groups if name not in peak_rates]
    if missing:
        raise ValueError(f"no peak learning rate for group(s) {missing}")
    frozen_groups = set(frozen_groups)
    encoder_groups = set(model.encoder_group_names())
    groups = []
    for name, variables in variable_groups.items():
        rate = float(peak_rates[name])
        groups.append({
            "name": name,
            "parameters": sum(_parameters(v) for v in variables),
            "variables": len(variables),
            "trainable": rate > 0 and name not in frozen_groups,
            "peak_learning_rate": rate if rate > 0 and name not in frozen_groups else 0.0,
            "encoder": name in encoder_groups,
            "variable_shapes": {v.name: [int(d) for d in v.shape] for v in variables},
        })
    non_trainable = list(model.non_trainable_weights)
    fixed = sum(_parameters(v) for v in non_trainable)
    trainable = sum(g["parameters"] for g in groups if g["trainable"])
    frozen = sum(g["parameters"] for g in groups if not g["trainable"]) + fixed
    encoder_frozen = all(not g["trainable"] for g in groups if g["encoder"])
    data = {
        "groups": groups,
        "totals": {"trainable": trainable, "frozen": frozen, "all": trainable + frozen},
        "non_trainable_weights": {"parameters": fixed, "variables": len(non_trainable)},
        "encoder_frozen": encoder_frozen,
        "pretrained_weights": pretrained_weights_info(model),
    }
    return VariablesReport(text=_table(data, has_encoder=bool(encoder_groups)), data=data)


def _table(data: dict[str, Any], *, has_encoder: bool) -> str:
    totals = data["totals"]
    rows = [(g["name"], f"{g['parameters']:,}", str(g["variables"]),
             "trainable" if g["trainable"] else "frozen", f"{g['peak_learning_rate']:.3g}")
            for g in data["groups"]]
    fixed = data["non_trainable_weights"]
    if fixed["variables"]:
        rows.append(("(non-trainable)", f"{fixed['parameters']:,}", str(fixed["variables"]),
                     "frozen", "-"))
    rows += [("total trainable", f"{totals['trainable']:,}", "", "", ""),
             ("total frozen", f"{totals['frozen']:,}", "", "", ""),
             ("total", f"{totals['all']:,}", "", "", "")]
    header = ("group", "parameters", "variables", "state", "peak lr")
    width = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]

    def line(row) -> str:
        return (f"{row[0]:<{width[0]}}  {row[1]:>{width[1]}}  {row[2]:>{width[2]}}  "
                f"{row[3]:<{width[3]}}  {row[4]:>{width[4]}}").rstrip()

    lines = [f"variables: {len(data['groups'])} groups, {totals['all']:,} parameters: "
             f"{totals['trainable']:,} trainable, {totals['frozen']:,} frozen",
             line(header)] + [line(row) for row in rows]
    if has_encoder:
        lines.append(FROZEN_ENCODER_NOTE if data["encoder_frozen"]
                     else "encoder trains (fine-tuning)")
    lines.append(data["pretrained_weights"]["summary"])
    return "\n".join(lines)


def write_report(run_dir: str | os.PathLike, report: VariablesReport) -> pathlib.Path:
    """Writes `report.data` as strict JSON to RUN_DIR/variables.json; returns the path."""
    path = pathlib.Path(run_dir) / VARIABLES_FILE
    path.write_text(strict_json_dumps(report.data, indent=1) + "\n", encoding="utf-8")
    return path


def to_markdown(data: dict[str, Any]) -> str:
    """`VariablesReport.data` as a markdown table, for TensorBoard's Text tab: each group with
    its parameters, variables, state and peak learning rate, then the totals and how the
    pretrained weights loaded."""
    totals = data["totals"]
    rows = ["| group | parameters | variables | state | peak lr |",
            "|---|---:|---:|---|---:|"]
    for group in data["groups"]:
        state = "trainable" if group["trainable"] else "**frozen**"
        rows.append(f"| {group['name']} | {group['parameters']:,} | {group['variables']} | "
                    f"{state} | {group['peak_learning_rate']:.3g} |")
    fixed = data["non_trainable_weights"]
    if fixed["variables"]:
        rows.append(f"| (non-trainable) | {fixed['parameters']:,} | {fixed['variables']} | "
                    "**frozen** | - |")
    rows += [f"| total trainable | {totals['trainable']:,} | | | |",
             f"| total frozen | {totals['frozen']:,} | | | |",
             f"| total | {totals['all']:,} | | | |", ""]
    if any(group["encoder"] for group in data["groups"]):
        rows.append(FROZEN_ENCODER_NOTE if data["encoder_frozen"]
                    else "encoder trains (fine-tuning)")
        rows.append("")
    rows.append(data["pretrained_weights"]["summary"])
    return "\n".join(rows)
