"""The model's settings, declared once, and TaggerConfig: everything needed to build a tagger.

A setting is a dataclass field made with `setting(default, help=..., <rule>)`: its default, a
one-line help text and the rule its value must satisfy live in that one declaration. The fields
a user chooses (encoder, head, BiLSTM, dropout, ...) are `ModelSettings`; `TaggerConfig` adds what
the data decides (the label map, the vocabulary size). The trainer's `TrainConfig` inherits
`ModelSettings` and generates its command-line flags from these fields (trainer/config.py), so no
default, choice or range of a model setting is written anywhere else.

A bad value raises `SettingError` naming the setting, e.g.
`head='mlp' is invalid: expected one of softmax|crf` (the trainer reports it as `--head=...`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, ClassVar, Sequence

ENCODERS = ("bert", "embedding")
HIDDEN_LAYER_MODES = ("last", "concat", "mean", "scalar_mix")
HEADS = ("softmax", "crf")


class SettingError(ValueError):
    """A setting has a bad value, or settings are combined in a way that cannot work."""


def setting(default: Any = dataclasses.MISSING, *, help: str,
            choices: Sequence[str] | None = None, minimum: float | None = None,
            fraction: bool = False, check: Callable[[Any], str | None] | None = None):
    """A dataclass field declared with its help text and its rule (see `check_fields`).

    Args:
      default: the default; none makes the field required.
      help: one line for the user (the trainer's flag help).
      choices: the accepted values.
      minimum: the smallest accepted number (None is accepted when the default is None).
      fraction: a number in [0, 1).
      check: value -> what is accepted (a phrase such as "expected a factor in (0, 1]") when the
        value is bad, else None; for a rule the above do not cover.
    """
    metadata = {"help": help, "choices": tuple(choices) if choices else None,
                "minimum": minimum, "fraction": fraction, "check": check}
    return dataclasses.field(default=default, metadata=metadata)


def fail(name: str, value: Any, accepted: str, prefix: str = "") -> None:
    """Raises SettingError: `{prefix}{name}={value!r} is invalid: {accepted}`."""
    raise SettingError(f"{prefix}{name}={value!r} is invalid: {accepted}")


def _problem(field: dataclasses.Field, value: Any) -> str | None:
    """What `field` accepts, if `value` breaks its rule; else None."""
    rule = field.metadata
    if rule.get("choices") and value not in rule["choices"]:
        return "expected one of " + "|".join(rule["choices"])
    if rule.get("minimum") is not None and not (value is None and field.default is None):
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or value < rule["minimum"]):
            return f"expected a number >= {rule['minimum']}"
    if rule.get("fraction") and not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        return "expected a fraction in [0, 1)"
    if rule.get("check") is not None:
        return rule["check"](value)
    return None


def check_fields(settings: Any, prefix: str = "") -> None:
    """Checks every field of a dataclass against its own rule (declared with `setting`).

    No float setting accepts NaN or infinity: NaN compares false with everything, so it would
    slip through every range check (a NaN learning rate froze the head), and inf is no
    meaningful rate, norm, fraction or count either.

    Raises:
      SettingError: naming the first bad field as `prefix + name`.
    """
    fields = dataclasses.fields(settings)
    for field in fields:
        value = getattr(settings, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            fail(field.name, value, "expected a finite number", prefix)
    for field in fields:
        value = getattr(settings, field.name)
        problem = _problem(field, value)
        if problem:
            fail(field.name, value, problem, prefix)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """The settings of a tagger's architecture a user chooses (the trainer's model flags).

    What the values mean, beyond their help:
      encoder: "bert" is any BERT-family TensorFlow model transformers loads (BERT, RoBERTa,
        XLM-R, ELECTRA, ...); "embedding" is trainable embeddings, for the classic BiLSTM-CRF.
      pretrained: "bert" only: a local directory or hub name of a checkpoint (tf_model.h5 or
        model.safetensors; never pickled PyTorch weights, never remote code). "" or None: none.
      encoder_config: "bert" only, instead of `pretrained`: a config directory or a dict of
        config values (with optional "model_type", default "bert") for a random initialisation
        (the trainer's flag gives a JSON file or inline JSON, parsed before the model is built).
      hidden_layers: how to turn the encoder's hidden states into features:
        "last" (last layer, H features), "concat" (last N layers side by side, N*H features,
        the kashgari setup with N=4), "mean" (mean of the last N), "scalar_mix" (learned
        softmax-weighted sum of the last N times a learned scale, as in ELMo).
      num_hidden_layers_used: N above; the embedding output counts as a layer, so
        1 <= N <= num_hidden_layers + 1. Ignored for "last".
      dropout: on the combined encoder features (before the BiLSTM / classifier).
      crf_constrain_transitions: CRF decoding never produces an invalid IOB2 sequence; the
        caller builds the masks from label_map (`Tagger(config, transition_constraints=...)`).
    """

    encoder: str = setting("bert", choices=ENCODERS, help="BERT-family encoder or trainable "
                           "embeddings (the classic BiLSTM-CRF).")
    pretrained: str | None = setting("", help="Pretrained encoder directory or hub name.")
    encoder_config: str | dict[str, Any] | None = setting(
        "", help="A BERT config (JSON file or inline JSON) for a randomly initialised encoder; "
        "replaces --pretrained.")
    hidden_layers: str = setting("last", choices=HIDDEN_LAYER_MODES,
                                 help="How encoder layers are combined.")
    num_hidden_layers_used: int = setting(4, minimum=1,
                                          help="Layers combined by concat/mean/scalar_mix.")
    bilstm_layers: int = setting(0, minimum=0, help="BiLSTM layers between encoder and head.")
    bilstm_units: int = setting(128, minimum=1, help="Units per direction of each BiLSTM.")
    bilstm_dropout: float = setting(0.1, fraction=True, help="Dropout after each BiLSTM layer.")
    head: str = setting("softmax", choices=HEADS, help="Tagging head.")
    dropout: float = setting(0.1, fraction=True, help="Dropout of encoder and head.")
    crf_constrain_transitions: bool = setting(True, help="Forbid IOB2-invalid transitions in "
                                              "the CRF.")
    embedding_dim: int = setting(128, minimum=1, help="Embedding size for --encoder=embedding.")

    # Names in messages: "" for Python arguments, "--" where the settings are flags.
    setting_prefix: ClassVar[str] = ""

    def check_settings(self) -> None:
        """Each field's own rule (`check_fields`), then `check_combinations`."""
        check_fields(self, self.setting_prefix)
        self.check_combinations()

    def check_combinations(self) -> None:
        """The combinations of the model settings that cannot work.

        Raises:
          SettingError: naming the settings, prefixed with `setting_prefix`.
        """
        p = self.setting_prefix
        if self.encoder == "bert":
            if bool(self.pretrained) == bool(self.encoder_config):
                raise SettingError(f"{p}encoder=bert needs exactly one of {p}pretrained "
                                   f"(weights) or {p}encoder_config (random init); got "
                                   f"{p}pretrained={self.pretrained!r} "
                                   f"{p}encoder_config={self.encoder_config!r}")
        else:
            if self.hidden_layers != "last":
                fail("hidden_layers", self.hidden_layers,
                     f"only 'last' applies to {p}encoder=embedding (it has one layer)", p)
            if self.pretrained or self.encoder_config:
                raise SettingError(f"{p}pretrained/{p}encoder_config do not apply to "
                                   f"{p}encoder=embedding")

    def model_settings(self) -> dict[str, Any]:
        """The values of the ModelSettings fields (e.g. of a TrainConfig, for a TaggerConfig)."""
        return {field.name: getattr(self, field.name)
                for field in dataclasses.fields(ModelSettings)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaggerConfig(ModelSettings):
    """Architecture of a tagger: encoder -> (hidden-layer combination) -> BiLSTM? -> head.

    The chosen settings are the `ModelSettings` fields; the data gives the rest.

    Attributes:
      num_tags: number of tags K; defaults to len(label_map).
      label_map: tag strings in IOB2, index = tag id ('O' first); required for CRF constraints.
      vocab_size: for the "embedding" encoder.
      ignore_id: label id of positions that must not count (padding, specials, sub-tokens).
    """

    num_tags: int | None = None
    label_map: list[str] | None = None
    vocab_size: int | None = None
    ignore_id: int = -100

    def __post_init__(self):
        # Frozen: the values are normalised once, here ("" means none, as None does).
        for name in ("pretrained", "encoder_config"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
            elif value == "":
                object.__setattr__(self, name, None)
        if self.label_map is not None:
            object.__setattr__(self, "label_map", list(self.label_map))
            if self.num_tags is None:
                object.__setattr__(self, "num_tags", len(self.label_map))
        self.validate()

    def validate(self) -> None:
        """Raises SettingError (a ValueError) naming the first bad value and what is accepted."""
        self.check_settings()
        if self.encoder == "embedding" and (
                isinstance(self.vocab_size, bool) or not isinstance(self.vocab_size, int)
                or self.vocab_size < 1):
            fail("vocab_size", self.vocab_size, "encoder=embedding needs a vocab_size >= 1")
        if self.num_tags is None:
            raise SettingError("num_tags is required (or give label_map)")
        if isinstance(self.num_tags, bool) or not isinstance(self.num_tags, int) \
                or self.num_tags < 1:
            fail("num_tags", self.num_tags, "expected a number >= 1")
        if self.label_map is not None and len(self.label_map) != self.num_tags:
            raise SettingError(f"label_map has {len(self.label_map)} tags but "
                               f"num_tags={self.num_tags}: {self.label_map}")
        if self.head == "crf" and self.crf_constrain_transitions:
            if self.label_map is None:
                raise SettingError("head='crf' with crf_constrain_transitions=True needs "
                                   "label_map (IOB2 tags); give it or set "
                                   "crf_constrain_transitions=False")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict; TaggerConfig.from_dict(config.to_dict()) == config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TaggerConfig":
        """Builds a config from `to_dict` output; unknown keys raise ValueError."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TaggerConfig keys {unknown}; known: {sorted(known)}")
        return cls(**values)
