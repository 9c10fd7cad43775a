"""Tagging models: BERT-family encoder, optional BiLSTM, softmax or CRF head, masked losses."""

import os

# transformers' TensorFlow models are Keras 2 models (tf-keras). TensorFlow picks Keras 2 or 3 the
# first time `tf.keras` is touched, so this must be set before anything imports TensorFlow.
# With Keras 3, mixed precision silently leaves BERT in float32. See BUILD.md.
os.environ["TF_USE_LEGACY_KERAS"] = "1"

from models.config import TaggerConfig  # noqa: E402

__all__ = ["TaggerConfig", "Tagger", "build_tagger"]


def __getattr__(name: str):
    """`Tagger` and `build_tagger` import TensorFlow, so only when asked for: the trainer's
    config (which inherits `models.config.ModelSettings`) must load without it."""
    if name in ("Tagger", "build_tagger"):
        from models import tagger

        return getattr(tagger, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
