"""Tagging models: BERT-family encoder, optional BiLSTM, softmax or CRF head, masked losses."""

import os

# The one place that chooses Keras 2 (tf-keras) for `tf.keras`: the project's models and optimizer
# are written for Keras 2 (BUILD.md says why tf-keras stays).
# TensorFlow reads this when `tf.keras` is first touched (not when TensorFlow is imported), so it
# only has to come before that: trainer/ imports this package first; data_pipeline/ and serving/
# never touch tf.keras; scripts that do import `models` before they do.
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
