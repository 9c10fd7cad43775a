"""Training loop, configuration, checkpoints, evaluation and export."""

import models  # noqa: F401  (models/__init__.py chooses Keras 2 for tf.keras, before any use)
