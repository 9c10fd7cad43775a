"""TaggerConfig: everything needed to build a tagger, validated in one place."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

ENCODERS = ("bert", "embedding")
HIDDEN_LAYER_MODES = ("last", "concat", "mean", "scalar_mix")
HEADS = ("softmax", "crf")


@dataclasses.dataclass(kw_only=True)
class TaggerConfig:
    """Architecture of a tagger: encoder -> (hidden-layer combination) -> BiLSTM? -> head.

    Attributes:
      encoder: "bert" (any BERT-family TensorFlow model transformers loads: BERT, RoBERTa,
        XLM-R, ELECTRA, ...) or "embedding" (trainable embeddings, for the classic BiLSTM-CRF).
      pretrained: "bert" only: local directory or hub name of a checkpoint (tf_model.h5 or
        model.safetensors; never pickled PyTorch weights, never remote code).
      encoder_config: "bert" only, instead of `pretrained`: a config directory or a dict of
        config values (with optional "model_type", default "bert") for a random initialisation.
      hidden_layers: how to turn the encoder's hidden states into features:
        "last" (last layer, H features), "concat" (last N layers side by side, N*H features,
        the kashgari setup with N=4), "mean" (mean of the last N), "scalar_mix" (learned
        softmax-weighted sum of the last N times a learned scale, as in ELMo).
      num_hidden_layers_used: N above; the embedding output counts as a layer, so
        1 <= N <= num_hidden_layers + 1. Ignored for "last".
      bilstm_layers: 0, 1 or 2 bidirectional LSTM layers over the features.
      bilstm_units: units per direction.
      bilstm_dropout: dropout after each BiLSTM layer.
      head: "softmax" (per-token cross-entropy) or "crf" (linear-chain CRF).
      num_tags: number of tags K; defaults to len(label_map).
      label_map: tag strings in IOB2, index = tag id ('O' first); required for CRF constraints.
      crf_constrain_transitions: CRF decoding never produces an invalid IOB2 sequence; the
        caller builds the masks from label_map (`Tagger(config, transition_constraints=...)`).
      dropout: dropout on the combined encoder features (before the BiLSTM / classifier).
      vocab_size, embedding_dim: for the "embedding" encoder.
      ignore_id: label id of positions that must not count (padding, specials, sub-tokens).
    """

    encoder: str = "bert"
    pretrained: str | None = None
    encoder_config: str | dict[str, Any] | None = None
    hidden_layers: str = "last"
    num_hidden_layers_used: int = 4
    bilstm_layers: int = 0
    bilstm_units: int = 128
    bilstm_dropout: float = 0.1
    head: str = "softmax"
    num_tags: int | None = None
    label_map: list[str] | None = None
    crf_constrain_transitions: bool = True
    dropout: float = 0.1
    vocab_size: int | None = None
    embedding_dim: int = 128
    ignore_id: int = -100

    def __post_init__(self):
        if isinstance(self.pretrained, os.PathLike):
            self.pretrained = os.fspath(self.pretrained)
        if isinstance(self.encoder_config, os.PathLike):
            self.encoder_config = os.fspath(self.encoder_config)
        if self.label_map is not None:
            self.label_map = list(self.label_map)
            if self.num_tags is None:
                self.num_tags = len(self.label_map)
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first bad value and what would be accepted."""
        _check_choice("encoder", self.encoder, ENCODERS)
        _check_choice("hidden_layers", self.hidden_layers, HIDDEN_LAYER_MODES)
        _check_choice("head", self.head, HEADS)
        if self.encoder == "bert":
            if (self.pretrained is None) == (self.encoder_config is None):
                raise ValueError(
                    "encoder='bert' needs exactly one of pretrained (a checkpoint directory or "
                    "hub name) or encoder_config (a config directory or dict, random init); got "
                    f"pretrained={self.pretrained!r}, encoder_config={self.encoder_config!r}")
        else:
            if self.pretrained is not None or self.encoder_config is not None:
                raise ValueError("encoder='embedding' takes no pretrained / encoder_config; got "
                                 f"{self.pretrained!r} / {self.encoder_config!r}")
            if not isinstance(self.vocab_size, int) or self.vocab_size < 1:
                raise ValueError(
                    f"encoder='embedding' needs vocab_size >= 1, got {self.vocab_size!r}")
            if not isinstance(self.embedding_dim, int) or self.embedding_dim < 1:
                raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim!r}")
            if self.hidden_layers != "last":
                raise ValueError("encoder='embedding' has a single layer: hidden_layers must be "
                                 f"'last', got {self.hidden_layers!r}")
        _check_int("num_hidden_layers_used", self.num_hidden_layers_used, 1)
        _check_int("bilstm_layers", self.bilstm_layers, 0)
        _check_int("bilstm_units", self.bilstm_units, 1)
        _check_rate("bilstm_dropout", self.bilstm_dropout)
        _check_rate("dropout", self.dropout)
        if self.num_tags is None:
            raise ValueError("num_tags is required (or give label_map)")
        _check_int("num_tags", self.num_tags, 1)
        if self.label_map is not None and len(self.label_map) != self.num_tags:
            raise ValueError(f"label_map has {len(self.label_map)} tags but "
                             f"num_tags={self.num_tags}: {self.label_map}")
        if self.head == "crf" and self.crf_constrain_transitions:
            if self.label_map is None:
                raise ValueError("head='crf' with crf_constrain_transitions=True needs label_map "
                                 "(IOB2 tags); give it or set crf_constrain_transitions=False")

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


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_rate(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a rate in [0, 1), got {value!r}")
