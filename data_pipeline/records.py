"""The TFRecord schema shared by the preprocessor (writer) and the input pipeline (reader).

One record is one window of one sentence. Example: the sentence "中国人" (3 characters) tokenized
as `<s> 中 国 人 </s>` with labels B-LOC I-LOC O (ids 1 2 0):

    position      0    1    2    3    4
    input_ids     0   23   45   67    2      (`<s>`=0, `</s>`=2)
    label_ids  -100    1    2    0 -100      (IGNORE_ID on special tokens and non-first pieces)
    char_index   -1    0    1    2   -1      (which character of the sentence a label belongs to)

`window_start`/`window_end` give the character span [start, end) of the sentence that the window
covers, `sentence_length` the sentence's length in characters (or words), `sentence_id` its
0-based index in the split. Together they let predictions be merged back to exactly one tag per
character (see `windows.merge_window_predictions`).
"""

from __future__ import annotations

import numpy as np

# The label id that losses and metrics skip: special tokens, non-first pieces, padding.
IGNORE_ID = -100

SEQUENCE_FEATURES = ("input_ids", "label_ids", "char_index")
SCALAR_FEATURES = ("sentence_id", "window_start", "window_end", "sentence_length")


def encode_example(*, input_ids, label_ids, char_index, sentence_id: int, window_start: int,
                   window_end: int, sentence_length: int) -> bytes:
    """Serializes one window as a `tf.train.Example`.

    Args:
      input_ids, label_ids, char_index: int sequences of equal length n (n <= max_seq_length).
      sentence_id, window_start, window_end, sentence_length: ints, see the module docstring.

    Returns:
      The serialized `tf.train.Example` bytes.
    """
    from tensorflow.core.example import example_pb2, feature_pb2  # protos only: cheap to build

    def int_feature(values) -> feature_pb2.Feature:
        return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=values))

    example = example_pb2.Example(features=feature_pb2.Features(feature={
        "input_ids": int_feature(input_ids),
        "label_ids": int_feature(label_ids),
        "char_index": int_feature(char_index),
        "sentence_id": int_feature([sentence_id]),
        "window_start": int_feature([window_start]),
        "window_end": int_feature([window_end]),
        "sentence_length": int_feature([sentence_length]),
    }))
    return example.SerializeToString()


def decode_example(serialized: bytes) -> dict[str, np.ndarray | int]:
    """Inverse of `encode_example`, in plain Python (for tests and tools, not the hot path)."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example.FromString(serialized)
    feature = example.features.feature
    out: dict[str, np.ndarray | int] = {}
    for name in SEQUENCE_FEATURES:
        out[name] = np.asarray(feature[name].int64_list.value, dtype=np.int64)
    for name in SCALAR_FEATURES:
        out[name] = int(feature[name].int64_list.value[0])
    return out


def feature_spec():
    """The `tf.io.parse_example` spec for a record: sequences as `tf.io.RaggedFeature`."""
    import tensorflow as tf

    spec = {name: tf.io.RaggedFeature(tf.int64) for name in SEQUENCE_FEATURES}
    spec.update({name: tf.io.FixedLenFeature([], tf.int64) for name in SCALAR_FEATURES})
    return spec
