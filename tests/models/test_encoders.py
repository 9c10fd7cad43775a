"""The project's encoder loads a real BERT-family checkpoint exactly as transformers does."""

import numpy as np
import pytest

import models  # noqa: F401  (chooses Keras 2 for tf.keras: models/__init__.py)
import tensorflow as tf  # noqa: E402

from models import TaggerConfig, build_tagger  # noqa: E402


@pytest.mark.slow
def test_e5_encoder_matches_transformers(e5_dir):
    from transformers import AutoTokenizer, TFBertModel

    tokenizer = AutoTokenizer.from_pretrained(str(e5_dir))
    batch = tokenizer(["王小明在北京大学读书。", "上海"], padding=True, return_tensors="np")
    input_ids = batch["input_ids"].astype(np.int32)
    attention_mask = batch["attention_mask"].astype(np.int32)
    assert attention_mask[1].sum() < attention_mask[0].sum()  # padding is exercised

    reference = TFBertModel.from_pretrained(str(e5_dir))
    expected = reference(input_ids=input_ids, attention_mask=attention_mask,
                         output_hidden_states=True)

    model = build_tagger(TaggerConfig(pretrained=e5_dir, hidden_layers="concat",
                                      num_hidden_layers_used=4, num_tags=7))
    hidden_states = model.encode(tf.constant(input_ids), tf.constant(attention_mask))[
        "hidden_states"]
    assert len(hidden_states) == 4
    np.testing.assert_allclose(hidden_states[-1], expected.last_hidden_state,
                               rtol=1e-4, atol=1e-5)
    for ours, theirs in zip(hidden_states, expected.hidden_states[-4:]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    assert model.classifier.kernel.shape == (4 * 384, 7)
    # Pretrained, not random: a freshly initialised BERT would not match above; also no pooler.
    assert not any("pooler" in v.name for v in model.trainable_variables)
    groups = model.variable_groups()
    assert [name for name in groups if name.startswith("encoder_layer_")] == [
        f"encoder_layer_{i}" for i in range(12)]
