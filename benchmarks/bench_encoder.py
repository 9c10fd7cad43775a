"""The encoder alone, old against new: transformers' TFBertModel (the models/encoders.py of the
code before issue #22) against the project's own (models/transformer/), forward + backward, on the
shipped encoder's shape.

Both load the same checkpoint (`--pretrained`, default ../shared/models/multilingual-e5-small-zh)
and run the same compiled step on the same batch (`--batch_size` x `--seq_len` tokens, rows padded
to lengths drawn between half and all of seq_len): the encoder's last `--num_layers_used` hidden
states, a fixed projection to 5 tags, masked cross-entropy, and the gradients w.r.t. every
encoder variable (no optimizer update). The two are first compared on the forward pass (the max
absolute difference of their last hidden states is printed), then timed alternately (old, new,
old, new, ...) so that machine noise hits both; each line gives the median step time, real
tokens/s and the ratio old time / new time (> 1: the new one is faster), for float32 and then
under mixed_bfloat16.

    git worktree add /tmp/old 823aaf9                # the code before #22, for the old side
    python benchmarks/bench_encoder.py --old_code=/tmp/old   # 32 x 128, float32 and bf16
    python benchmarks/bench_encoder.py --steps=2 --warmup=1 --batch_size=4 --seq_len=32  # smoke

The old side is that checkout's models/encoders.py, loaded by path; it needs transformers <= 4.54
(the last releases with TF models) in this environment, which this project no longer pins (a venv
with transformers==4.54.1 and tokenizers==0.21.4 runs both sides). Without --old_code, or without
those transformers, only the new side is timed. Figures are only worth recording from a quiet
machine (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import models  # noqa: E402,F401  (chooses Keras 2 for tf.keras: models/__init__.py)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from models import transformer  # noqa: E402

NUM_TAGS = 5


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained",
                        default=str(REPO_ROOT.parent / "shared" / "models" /
                                    "multilingual-e5-small-zh"))
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--num_layers_used", type=int, default=1)
    parser.add_argument("--old_code", default="",
                        help="a checkout of the code before #22 (e.g. commit 823aaf9): its "
                        "models/encoders.py is timed as the old encoder (needs transformers "
                        "<= 4.54)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side")
    parser.add_argument("--precisions", default="none,bf16",
                        help="comma-separated: none (float32), bf16 (mixed_bfloat16)")
    return parser.parse_args(argv)


def make_batch(batch_size: int, seq_len: int, vocab_size: int, pad_token_id: int, seed: int = 0
               ) -> dict[str, tf.Tensor]:
    """input_ids, attention_mask and label_ids, int32 [batch, seq_len] (right-padded)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(seq_len // 2, seq_len + 1, size=batch_size)
    lengths[0] = seq_len  # one full row, as the bucketing batches have
    attention_mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int32)
    input_ids = rng.integers(5, vocab_size, size=attention_mask.shape)
    input_ids = np.where(attention_mask == 1, input_ids, pad_token_id).astype(np.int32)
    labels = rng.integers(0, NUM_TAGS, size=attention_mask.shape).astype(np.int32)
    return {"input_ids": tf.constant(input_ids), "attention_mask": tf.constant(attention_mask),
            "label_ids": tf.constant(labels)}


def step_function(encoder: tf.keras.layers.Layer, projection: tf.Tensor):
    """A compiled forward + backward step of `encoder`; returns the loss (float32 [])."""

    @tf.function
    def step(input_ids, attention_mask, label_ids):
        with tf.GradientTape() as tape:
            hidden = encoder(input_ids, attention_mask, training=True)["hidden_states"]
            features = tf.add_n([tf.cast(h, tf.float32) for h in hidden])
            logits = tf.einsum("bsh,ht->bst", features, projection)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(label_ids, logits)
            weights = tf.cast(attention_mask, tf.float32)
            loss = tf.reduce_sum(losses * weights) / tf.reduce_sum(weights)
        variables = encoder.trainable_variables
        gradients = tape.gradient(loss, variables)
        # Make every gradient an output, so that none of the backward pass is pruned.
        norm = tf.add_n([tf.reduce_sum(tf.square(tf.cast(tf.convert_to_tensor(g), tf.float32)))
                         for g in gradients])
        return loss, norm

    return step


def old_encoders_module(old_code: str):
    """The models/encoders.py of a checkout of the code before #22 (transformers' TFBertModel in
    a TransformerEncoder wrapper), imported by path; None (with a note) when it cannot be."""
    import importlib.util

    path = pathlib.Path(old_code) / "models" / "encoders.py"
    spec = importlib.util.spec_from_file_location("encoders_before_22", path)
    if spec is None or not path.is_file():
        print(f"--old_code={old_code}: no {path}; timing the new encoder only", flush=True)
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except ImportError as error:
        del sys.modules[spec.name]
        print(f"old encoder not available ({error}; it needs transformers <= 4.54): timing the "
              f"new one only", flush=True)
        return None
    return module


def build_encoders(pretrained: str, num_layers_used: int,
                   old_code: str = "") -> dict[str, tf.keras.layers.Layer]:
    """{"old": transformers' TFBertModel in the old models/encoders.py's wrapper (with
    `old_code`, when importable), "new": models/transformer/}; both from `pretrained`, under the
    current global policy."""
    encoders = {}
    old = old_encoders_module(old_code) if old_code else None
    if old is not None:
        encoders["old"] = old.TransformerEncoder(old.load_transformer(pretrained=pretrained),
                                                 num_layers_used=num_layers_used)
    encoders["new"] = transformer.TransformerEncoder(
        transformer.load_transformer(pretrained=pretrained), num_layers_used=num_layers_used)
    return encoders


def time_steps(steps: dict, batch: dict, *, timed: int, warmup: int) -> dict[str, list[float]]:
    """Warms each step up, then times `timed` calls of each, alternating."""
    args = (batch["input_ids"], batch["attention_mask"], batch["label_ids"])
    for step in steps.values():
        for _ in range(warmup):
            [t.numpy() for t in step(*args)]
    times = {name: [] for name in steps}
    for _ in range(timed):
        for name, step in steps.items():
            started = time.perf_counter()
            [t.numpy() for t in step(*args)]
            times[name].append(time.perf_counter() - started)
    return times


def run_precision(args, precision: str) -> None:
    policy = "mixed_bfloat16" if precision == "bf16" else "float32"
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        encoders = build_encoders(args.pretrained, args.num_layers_used, args.old_code)
        config = encoders["new"].transformer.config
        batch = make_batch(args.batch_size, args.seq_len, config.vocab_size, config.pad_token_id)
        projection = tf.constant(np.random.default_rng(1).standard_normal(
            [config.hidden_size, NUM_TAGS]).astype(np.float32))
        steps = {name: step_function(encoder, projection) for name, encoder in encoders.items()}
        last = {name: tf.cast(encoder(batch["input_ids"], batch["attention_mask"],
                                      training=False)["hidden_states"][-1], tf.float32)
                for name, encoder in encoders.items()}
        if "old" in last:  # same weights, same batch, no dropout: the same states
            difference = float(tf.reduce_max(tf.abs(last["old"] - last["new"])))
            print(f"{policy}: last hidden states differ by at most {difference:.2e} "
                  f"(largest value {float(tf.reduce_max(tf.abs(last['old']))):.2f})", flush=True)
        times = time_steps(steps, batch, timed=args.steps, warmup=args.warmup)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    tokens = float(tf.reduce_sum(batch["attention_mask"]))
    medians = {name: statistics.median(values) for name, values in times.items()}
    line = ", ".join(f"{name} {median * 1e3:.0f} ms/step ({tokens / median:.0f} real tokens/s)"
                     for name, median in medians.items())
    if "old" in medians:
        line += f", old/new {medians['old'] / medians['new']:.2f}x"
    print(f"{policy} {args.batch_size} x {args.seq_len}: {line}", flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"tensorflow {tf.__version__}, {os.cpu_count()} CPUs; {args.pretrained}", flush=True)
    for precision in args.precisions.split(","):
        run_precision(args, precision)


if __name__ == "__main__":
    main()
