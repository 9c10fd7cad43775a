"""The tagger's encoder path with a real checkpoint: the shipped multilingual-e5-small-zh loaded
by `build_tagger` gives the hidden states transformers 4.54.1's TFBertModel gave (the committed
reference of tests/fixtures/encoder_reference), the last N of them, without the pooler."""

import numpy as np
import pytest

import models  # noqa: F401  (chooses Keras 2 for tf.keras: models/__init__.py)
import tensorflow as tf  # noqa: E402

from models import TaggerConfig, build_tagger  # noqa: E402
from tests.fixtures.encoder_reference import E5_REFERENCE  # noqa: E402


@pytest.mark.slow
def test_e5_tagger_encodes_as_transformers_did(e5_dir):
    arrays = dict(np.load(E5_REFERENCE))
    expected = arrays["hidden_states"]  # [13, batch, seq_len, 384]: embeddings + 12 layers
    assert arrays["attention_mask"][1].sum() < arrays["attention_mask"][0].sum()  # padding

    model = build_tagger(TaggerConfig(pretrained=e5_dir, hidden_layers="concat",
                                      num_hidden_layers_used=4, num_tags=7))
    hidden_states = model.encode(tf.constant(arrays["input_ids"]),
                                 tf.constant(arrays["attention_mask"]))["hidden_states"]
    assert len(hidden_states) == 4
    for ours, theirs in zip(hidden_states, expected[-4:]):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    assert model.classifier.kernel.shape == (4 * 384, 7)
    # Pretrained, not random: a freshly initialised BERT would not match above; also no pooler.
    assert not any("pooler" in v.name for v in model.trainable_variables)
    assert model.encoder.transformer.loading_info.summary() == (
        "pretrained weights: 197 loaded, pooler (2) unused, 0 missing")
    groups = model.variable_groups()
    assert [name for name in groups if name.startswith("encoder_layer_")] == [
        f"encoder_layer_{i}" for i in range(12)]
    assert [len(groups[f"encoder_layer_{i}"]) for i in range(12)] == [12] * 12  # fused QKV
