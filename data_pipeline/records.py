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

from data_pipeline.tags import IGNORE_ID

SEQUENCE_FEATURES = ("input_ids", "label_ids", "char_index")
SCALAR_FEATURES = ("sentence_id", "window_start", "window_end", "sentence_length")
# Only in feature-cache records: the frozen encoder's output for the window's real positions,
# float16 [n, F] row-major (see trainer/feature_cache.py).
FEATURES_KEY = "features"


def _varint(value: int) -> bytes:
    """Protobuf varint of an int64 (negative values take ten bytes, two's complement)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# Varints of the values records hold most: ids below 2**18 and the two negative markers.
_VARINTS = [_varint(v) for v in range(1 << 18)]
_NEGATIVE = {IGNORE_ID: _varint(IGNORE_ID), -1: _varint(-1)}


def _int64_feature(name: bytes, values) -> bytes:
    """One `features.feature` map entry holding an Int64List, serialized."""
    table, negative = _VARINTS, _NEGATIVE
    try:
        packed = b"".join([table[v] if v >= 0 else negative[v] for v in values])
    except (IndexError, KeyError):
        packed = b"".join([_varint(int(v)) for v in values])
    size = _VARINTS  # every length here is far below 2**18
    int64_list = b"\x0a" + size[len(packed)] + packed                # Int64List.value, packed
    feature = b"\x1a" + size[len(int64_list)] + int64_list           # Feature.int64_list = 3
    entry = (b"\x0a" + size[len(name)] + name                         # map key
             + b"\x12" + size[len(feature)] + feature)               # map value
    return b"\x0a" + size[len(entry)] + entry                        # Features.feature = 1


def encode_example(*, input_ids, label_ids, char_index, sentence_id: int, window_start: int,
                   window_end: int, sentence_length: int) -> bytes:
    """Serializes one window as a `tf.train.Example`.

    The protobuf wire format is written directly: it is the preprocessor's hot path, and this is
    ~5x faster than building `tf.train.Example` objects (a test checks the bytes parse to the
    same message that protobuf builds).

    Args:
      input_ids, label_ids, char_index: int sequences of equal length n (n <= max_seq_length).
      sentence_id, window_start, window_end, sentence_length: ints, see the module docstring.

    Returns:
      The serialized `tf.train.Example` bytes.
    """
    features = b"".join((
        _int64_feature(b"input_ids", input_ids),
        _int64_feature(b"label_ids", label_ids),
        _int64_feature(b"char_index", char_index),
        _int64_feature(b"sentence_id", (sentence_id,)),
        _int64_feature(b"window_start", (window_start,)),
        _int64_feature(b"window_end", (window_end,)),
        _int64_feature(b"sentence_length", (sentence_length,)),
    ))
    return b"\x0a" + _VARINTS[len(features)] + features              # Example.features = 1


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    """(value, position after it) of the protobuf varint at `position`."""
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def append_bytes_feature(serialized: bytes, name: str, value: bytes) -> bytes:
    """Adds a BytesList feature `name` holding one `value` to a serialized `tf.train.Example`.

    The Example's single `features` message is rewritten with one more map entry (the other
    entries are copied byte for byte), so the result is what protobuf would serialize for the
    extended message. Used by the feature cache to store a window's encoder features beside its
    ids and labels.

    Raises:
      ValueError: `serialized` is not one Example with a features field (as `encode_example`
        writes).
    """
    if not serialized or serialized[0] != 0x0A:
        raise ValueError("not a serialized tf.train.Example with a features field")
    length, start = _read_varint(serialized, 1)
    if start + length != len(serialized):
        raise ValueError("serialized Example has fields after its features")
    key = name.encode()
    bytes_list = b"\x0a" + _varint(len(value)) + value                # BytesList.value = 1
    feature = b"\x0a" + _varint(len(bytes_list)) + bytes_list         # Feature.bytes_list = 1
    entry = (b"\x0a" + _varint(len(key)) + key
             + b"\x12" + _varint(len(feature)) + feature)
    features = serialized[start:] + b"\x0a" + _varint(len(entry)) + entry
    return b"\x0a" + _varint(len(features)) + features


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
