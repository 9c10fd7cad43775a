"""The "serving_default" function of an export: token windows in, tags and probabilities out.

    serve = serving_function(model)
    serve(input_ids, attention_mask, label_mask)   # int32 [B, T] each
    # -> {"tag_ids": int32 [B, T], "scores": float32 [B], "tag_probs": float32 [B, T]}

Decoding (CRF Viterbi included) runs inside the graph, so the SavedModel tags without the model
code; `serving.export_format.SIGNATURE` documents the inputs and outputs. The text-in signature
(`trainer.text_signature`) runs the model through `tag_windows` too.
"""

from __future__ import annotations

import tensorflow as tf


def tag_windows(model, input_ids: tf.Tensor, attention_mask: tf.Tensor,
                label_mask: tf.Tensor) -> dict[str, tf.Tensor]:
    """Runs a tagger over windows and decodes them (CRF Viterbi inside the graph).

    Args:
      model: a built Tagger (models/ API: called for logits, then `decode` and
        `tag_probabilities`).
      input_ids, attention_mask, label_mask: int32 [B, T].

    Returns:
      {"tag_ids" int32 [B, T], "scores" float32 [B], "tag_probs" float32 [B, T]}, tags and
      probabilities 0 outside label_mask (see `serving.export_format.SIGNATURE`); tag_probs is
      the probability the head gives the chosen tag (a CRF's marginal).
    """
    logits = model(dict(input_ids=input_ids, attention_mask=attention_mask),
                   training=False)  # float32 [B, T, K]
    mask = tf.cast(label_mask, tf.bool)
    tag_ids, scores = model.decode(logits, mask)
    probs = model.tag_probabilities(logits, mask)  # float32 [B, T, K]
    chosen = tf.gather(probs, tag_ids, batch_dims=2)  # [B, T]
    return {"tag_ids": tf.cast(tag_ids, tf.int32), "scores": tf.cast(scores, tf.float32),
            "tag_probs": tf.where(mask, tf.cast(chosen, tf.float32), 0.0)}


def serving_function(model):
    """The serving tf.function of a tagger (see `serving.export_format.SIGNATURE`).

    Args:
      model: a built Tagger (models/ API).

    Returns:
      A tf.function (input_ids, attention_mask, label_mask: int32 [B, T]) -> {"tag_ids" int32
      [B, T], "scores" float32 [B], "tag_probs" float32 [B, T]}.
    """

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec([None, None], tf.int32, name="input_ids"),
        tf.TensorSpec([None, None], tf.int32, name="attention_mask"),
        tf.TensorSpec([None, None], tf.int32, name="label_mask")])
    def serve(input_ids, attention_mask, label_mask):
        return tag_windows(model, input_ids, attention_mask, label_mask)

    return serve
