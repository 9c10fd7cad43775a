"""The hand-written protobuf encoding of records equals what protobuf itself builds."""

import numpy as np
import pytest
from tensorflow.core.example import example_pb2, feature_pb2

from data_pipeline import records


def protobuf_reference(**features) -> example_pb2.Example:
    def int_feature(values):
        return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=values))
    return example_pb2.Example(features=feature_pb2.Features(feature={
        name: int_feature(value if isinstance(value, list) else [value])
        for name, value in features.items()}))


@pytest.mark.parametrize("seed", range(5))
def test_encode_example_matches_protobuf(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 600))
    features = dict(
        input_ids=rng.integers(0, 300_000, n).tolist(),   # beyond the varint table too
        label_ids=rng.choice([records.IGNORE_ID, 0, 1, 5, -7], n).tolist(),
        char_index=rng.integers(-1, 1 << 20, n).tolist(),
        sentence_id=int(rng.integers(0, 1 << 40)), window_start=0, window_end=n,
        sentence_length=n)
    serialized = records.encode_example(**features)
    assert example_pb2.Example.FromString(serialized) == protobuf_reference(**features)
    decoded = records.decode_example(serialized)
    assert decoded["input_ids"].tolist() == features["input_ids"]
    assert decoded["label_ids"].tolist() == features["label_ids"]
    assert decoded["sentence_id"] == features["sentence_id"]
