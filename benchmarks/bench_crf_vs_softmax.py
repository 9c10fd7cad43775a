"""Training-step time of the CRF head against the softmax head on the same encoder and batch.

Prints the median time of a `tf.function` train step (forward, loss, gradients, Adam update)
for each head and their ratio. Goal: CRF <= 1.3x softmax (kashgari's CRF model trains about
13x slower than its softmax model).

    python benchmarks/bench_crf_vs_softmax.py                       # e5-small, 32 x 64 tokens
    python benchmarks/bench_crf_vs_softmax.py --tiny --steps 20     # tiny random BERT, seconds
    python benchmarks/bench_crf_vs_softmax.py --jit_compile          # XLA-compiled steps

The two heads' steps are timed alternately so that machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import models  # noqa: E402,F401  (chooses Keras 2 for tf.keras: models/__init__.py)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from data_pipeline.tags import IGNORE_ID, iob2_allowed_transitions  # noqa: E402
from models import TaggerConfig, build_tagger  # noqa: E402

TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=37, vocab_size=1000)


def default_pretrained() -> str:
    shared = os.environ.get("TAGGER_SHARED_DIR", str(REPO_ROOT.parent / "shared"))
    return str(pathlib.Path(shared) / "models" / "multilingual-e5-small-zh")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", default=default_pretrained(),
                        help="checkpoint directory or hub name of the encoder")
    parser.add_argument("--tiny", action="store_true",
                        help="use a tiny random 2-layer BERT instead of --pretrained")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--num_entity_types", type=int, default=3,
                        help="tags = O + B/I per type (People's Daily: 3 types, 7 tags)")
    parser.add_argument("--bilstm_layers", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--jit_compile", action="store_true")
    parser.add_argument("--policy", default="float32",
                        choices=["float32", "mixed_float16", "mixed_bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def make_batch(rng: np.random.Generator, *, batch_size: int, seq_len: int, vocab_size: int,
               num_tags: int) -> dict[str, tf.Tensor]:
    """A padded batch shaped like the data pipeline's: specials and padding carry IGNORE_ID."""
    lengths = rng.integers(seq_len // 2, seq_len + 1, size=batch_size)
    lengths[0] = seq_len
    attention_mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int32)
    input_ids = rng.integers(5, vocab_size, size=[batch_size, seq_len]).astype(np.int32)
    input_ids[attention_mask == 0] = 0
    label_ids = rng.integers(0, num_tags, size=[batch_size, seq_len]).astype(np.int32)
    label_ids[attention_mask == 0] = IGNORE_ID
    label_ids[:, 0] = IGNORE_ID  # [CLS]
    label_ids[np.arange(batch_size), lengths - 1] = IGNORE_ID  # [SEP]
    return {"input_ids": tf.constant(input_ids), "attention_mask": tf.constant(attention_mask),
            "label_ids": tf.constant(label_ids)}


def make_train_step(model: tf.keras.Model, jit_compile: bool):
    optimizer = tf.keras.optimizers.Adam(learning_rate=1e-5)

    @tf.function(jit_compile=jit_compile)
    def train_step(batch):
        with tf.GradientTape() as tape:
            logits = model(batch, training=True)
            loss_sum, count = model.compute_loss(logits, batch["label_ids"])
            loss = loss_sum / tf.maximum(count, 1.0)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return train_step


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tf.keras.mixed_precision.set_global_policy(args.policy)
    tf.keras.utils.set_random_seed(args.seed)
    label_map = ["O"] + [f"{prefix}-T{i}" for i in range(args.num_entity_types)
                         for prefix in ("B", "I")]
    encoder = dict(encoder_config=TINY_BERT) if args.tiny else dict(pretrained=args.pretrained)
    common = dict(encoder, label_map=label_map, bilstm_layers=args.bilstm_layers)
    taggers = {head: build_tagger(TaggerConfig(head=head, **common),
                                  transition_constraints=iob2_allowed_transitions(label_map))
               for head in ("softmax", "crf")}
    # Same encoder (and BiLSTM) weights in both; the classifier is re-initialised per model.
    taggers["crf"].encoder.set_weights(taggers["softmax"].encoder.get_weights())
    for crf_layer, softmax_layer in zip(taggers["crf"].bilstm_layers,
                                        taggers["softmax"].bilstm_layers):
        crf_layer.set_weights(softmax_layer.get_weights())
    transformer = getattr(taggers["softmax"].encoder, "transformer", None)
    vocab_size = transformer.config.vocab_size if transformer is not None else 1000
    batch = make_batch(np.random.default_rng(args.seed), batch_size=args.batch_size,
                       seq_len=args.seq_len, vocab_size=vocab_size, num_tags=len(label_map))
    steps = {head: make_train_step(model, args.jit_compile) for head, model in taggers.items()}

    encoder_name = "tiny random BERT (2 x 32)" if args.tiny else args.pretrained
    print(f"encoder: {encoder_name}")
    print(f"batch: {args.batch_size} x {args.seq_len} tokens, {len(label_map)} tags, "
          f"bilstm_layers={args.bilstm_layers}, policy={args.policy}, "
          f"jit_compile={args.jit_compile}, TensorFlow {tf.__version__}, "
          f"{os.cpu_count()} CPUs, GPUs: {len(tf.config.list_physical_devices('GPU'))}")
    for head, step in steps.items():
        started = time.perf_counter()
        for _ in range(args.warmup):
            step(batch).numpy()
        print(f"{head}: {args.warmup} warm-up steps (incl. tracing/compilation) "
              f"{time.perf_counter() - started:.1f} s")

    times = {head: [] for head in steps}
    for _ in range(args.steps):
        for head, step in steps.items():  # alternate, so noise hits both heads alike
            started = time.perf_counter()
            step(batch).numpy()
            times[head].append(time.perf_counter() - started)
    medians = {head: statistics.median(values) for head, values in times.items()}
    for head, values in times.items():
        print(f"{head:8s} train step: median {1000 * medians[head]:8.1f} ms  "
              f"(min {1000 * min(values):.1f}, max {1000 * max(values):.1f}, n={len(values)})")
    ratio = medians["crf"] / medians["softmax"]
    verdict = "meets" if ratio <= 1.3 else "MISSES"
    print(f"CRF - softmax: {1000 * (medians['crf'] - medians['softmax']):+.1f} ms per step")
    print(f"CRF / softmax step time: {ratio:.3f}x ({verdict} the goal of <= 1.3x)")


if __name__ == "__main__":
    main()
