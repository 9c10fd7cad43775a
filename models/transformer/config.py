"""The encoder's hyperparameters, read from a Hugging Face `config.json` (or a dict of its keys).

Only the keys that shape the encoder are read; the rest of a config.json (architectures,
bos_token_id, torch_dtype, ...) is kept nowhere and ignored. Missing keys take the default of the
model type's transformers config class, so a config.json that transformers reads gives the same
encoder here.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

# Defaults of transformers' BertConfig, RobertaConfig, XLMRobertaConfig and ElectraConfig.
_BERT_DEFAULTS = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2,
    initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0)
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "bert": _BERT_DEFAULTS,
    "roberta": dict(_BERT_DEFAULTS, vocab_size=50265, pad_token_id=1),
    "xlm-roberta": dict(_BERT_DEFAULTS, pad_token_id=1),
    "electra": dict(_BERT_DEFAULTS, hidden_size=256, num_attention_heads=4,
                    intermediate_size=1024, embedding_size=128),
}
# Model types whose position ids count real tokens from pad_token_id + 1 (fairseq's convention).
_POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta")
# hidden_act -> whether the GELU is the tanh approximation; other activations by name.
GELU_APPROXIMATE = {"gelu": False, "gelu_new": True, "gelu_fast": True, "gelu_pytorch_tanh": True}
OTHER_ACTIVATIONS = ("relu", "silu", "swish")
# The main layer's name in transformers' checkpoints ("bert.embeddings...", "tf_bert_model/bert/").
MODEL_PREFIX = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta",
                "electra": "electra"}
_INT_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size", "max_position_embeddings", "type_vocab_size", "embedding_size")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """A BERT-family encoder's shape, as Hugging Face's config.json names it.

    Attributes:
      model_type: "bert", "roberta", "xlm-roberta" or "electra" (the discriminator).
      embedding_size: width of the embedding tables; differs from hidden_size only for ELECTRA,
        whose embeddings are then projected ("embeddings_project") to hidden_size.
      pad_token_id: the padding id; RoBERTa and XLM-R count positions from pad_token_id + 1.
      The other fields mean what they mean in transformers' BertConfig.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    hidden_dropout_prob: float
    attention_probs_dropout_prob: float
    max_position_embeddings: int
    type_vocab_size: int
    initializer_range: float
    layer_norm_eps: float
    pad_token_id: int
    embedding_size: int

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "encoder config",
                  default_model_type: str = "bert") -> EncoderConfig:
        """A config from config.json's keys; "model_type" defaults to `default_model_type`.

        Raises:
          ValueError: an unsupported model type or option, or inconsistent sizes, naming `source`.
        """
        model_type = values.get("model_type", default_model_type)
        if model_type not in MODEL_DEFAULTS:
            raise ValueError(f"{source}: model_type {model_type!r} is not supported; expected one "
                             f"of {sorted(MODEL_DEFAULTS)}")
        for key, allowed in (("position_embedding_type", "absolute"), ("is_decoder", False),
                             ("add_cross_attention", False)):
            if values.get(key, allowed) != allowed:
                raise ValueError(f"{source}: {key}={values[key]!r} is not supported "
                                 f"(only {allowed!r})")
        merged = dict(MODEL_DEFAULTS[model_type])
        merged.update({key: values[key] for key in values
                       if key in merged or key == "embedding_size"})
        merged.setdefault("embedding_size", merged["hidden_size"])
        if merged["pad_token_id"] is None:  # BERT ignores it; RoBERTa's positions need it
            if model_type in _POSITIONS_AFTER_PADDING:
                raise ValueError(f"{source}: model_type {model_type!r} needs a pad_token_id")
            merged["pad_token_id"] = 0
        for key in _INT_KEYS + ("pad_token_id",):
            merged[key] = int(merged[key])
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range",
                    "layer_norm_eps"):
            merged[key] = float(merged[key])
        config = cls(model_type=model_type, **merged)
        config.validate(source)
        return config

    @classmethod
    def from_pretrained(cls, directory: str | pathlib.Path) -> EncoderConfig:
        """The config in `directory`/config.json.

        Raises:
          FileNotFoundError: there is no config.json.
          ValueError: it is not a JSON object or not a supported encoder.
        """
        path = pathlib.Path(directory) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (a checkpoint directory needs the "
                                    f"config.json its weights were saved with)")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(values).__name__}")
        if "model_type" not in values:
            raise ValueError(f"{path}: no model_type (expected one of {sorted(MODEL_DEFAULTS)})")
        return cls.from_dict(values, source=str(path))

    def validate(self, source: str = "encoder config") -> None:
        """Raises ValueError naming `source` if the sizes or the activation cannot work."""
        for key in _INT_KEYS:
            if getattr(self, key) < 1:
                raise ValueError(f"{source}: {key}={getattr(self, key)} must be >= 1")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"{source}: hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.hidden_act not in GELU_APPROXIMATE and self.hidden_act not in OTHER_ACTIVATIONS:
            raise ValueError(f"{source}: hidden_act={self.hidden_act!r} is not supported; expected "
                             f"one of {sorted(GELU_APPROXIMATE) + list(OTHER_ACTIVATIONS)}")
        if self.embedding_size != self.hidden_size and self.model_type != "electra":
            raise ValueError(f"{source}: embedding_size={self.embedding_size} differs from "
                             f"hidden_size={self.hidden_size}, which only ELECTRA supports")
        if self.positions_after_padding and (
                self.max_position_embeddings <= self.pad_token_id + 1):
            raise ValueError(f"{source}: max_position_embeddings={self.max_position_embeddings} "
                             f"leaves no position after pad_token_id={self.pad_token_id}")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def positions_after_padding(self) -> bool:
        """Position ids are pad_token_id + 1 + (index among the real tokens), as in fairseq's
        RoBERTa, and pad_token_id on padding; otherwise 0, 1, 2, ... everywhere."""
        return self.model_type in _POSITIONS_AFTER_PADDING

    @property
    def model_prefix(self) -> str:
        """The main layer's name in transformers' checkpoints: "bert", "roberta", "electra"."""
        return MODEL_PREFIX[self.model_type]

    def to_dict(self) -> dict[str, Any]:
        """The config.json keys (transformers reads them back into the same model)."""
        values = dataclasses.asdict(self)
        if self.model_type != "electra":
            del values["embedding_size"]
        values["position_embedding_type"] = "absolute"
        return values
