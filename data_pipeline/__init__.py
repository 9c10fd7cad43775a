"""Corpus reading, label alignment, TFRecord shards + manifest, and the tf.data input pipeline."""
