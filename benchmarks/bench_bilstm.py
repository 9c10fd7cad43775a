"""The frozen path's bottleneck, the BiLSTM: the shipped `tf.scan` against the other ways to run it.

A training step from the feature cache is mostly the BiLSTM's recurrence (benchmarks/RESULTS.md),
so this times forward + backward of `models.bilstm.MaskedBiLSTM` on a batch shaped like
`configs/frozen.flags`' (32 windows, People's Daily's mean of about 34 pieces, 1,536 features =
the last 4 layers of a 384-wide encoder, 128 units) against:

- `block`: TensorFlow's fused LSTM kernel (`BlockLSTM`, one op for the whole sequence; float32
  or float16 only, so bf16 inputs are cast), the backward direction via `tf.reverse_sequence`;
- `unrolled`: the same recurrence as a Python loop over a static length (one graph per length);
- `xla`: the shipped scan, XLA-compiled (one compilation per length).

Each variant is first checked to give the scan's output (max abs difference printed; its
gradients are checked by tests/benchmarks/test_bench_bilstm.py), then the
variants are timed in alternating rounds (scan, variant, scan, variant, ...) so machine noise hits
both; the ratio is scan time / variant time (> 1: the variant is faster).

    python benchmarks/bench_bilstm.py                      # bf16 and float32, 3 rounds
    python benchmarks/bench_bilstm.py --rounds 5 --steps 20
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

from models.bilstm import MaskedBiLSTM  # noqa: E402


def _block_gates(weights: tf.Tensor) -> tf.Tensor:
    """Keras gate order (i, f, c, o) -> BlockLSTM's (i, c, f, o), along the last axis."""
    i, f, c, o = tf.split(weights, 4, axis=-1)
    return tf.concat([i, c, f, o], axis=-1)


def block_bilstm(layer: MaskedBiLSTM, inputs: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Both directions with the fused `BlockLSTM` kernel; right-padded masks only, as the
    tagger's. Not `BlockLSTMV2` (Keras gate order): in TensorFlow 2.21 its registered gradient
    disagrees with finite differences of its own output by up to 0.9 (checked with
    `tf.test.compute_gradient` on a 3-step, 2-unit LSTM), while `BlockLSTM`'s agrees to 1e-4."""
    lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
    time_major = tf.transpose(tf.cast(inputs, tf.float32), [1, 0, 2])
    outputs = []
    for direction in ("forward", "backward"):
        sequence = time_major if direction == "forward" else tf.reverse_sequence(
            time_major, lengths, seq_axis=0, batch_axis=1)
        zeros = tf.zeros([tf.shape(sequence)[1], layer.units])
        no_peephole = tf.zeros([layer.units])
        weights = _block_gates(tf.concat([getattr(layer, f"{direction}_kernel"),
                                          getattr(layer, f"{direction}_recurrent_kernel")], 0))
        hidden = tf.raw_ops.BlockLSTM(
            seq_len_max=tf.cast(tf.shape(sequence)[0], tf.int64), x=sequence, cs_prev=zeros,
            h_prev=zeros, w=weights, wci=no_peephole, wcf=no_peephole, wco=no_peephole,
            b=_block_gates(getattr(layer, f"{direction}_bias")), forget_bias=0.0,
            cell_clip=-1.0, use_peephole=False)[6]
        if direction == "backward":
            hidden = tf.reverse_sequence(hidden, lengths, seq_axis=0, batch_axis=1)
        outputs.append(hidden)
    result = tf.cast(tf.transpose(tf.concat(outputs, -1), [1, 0, 2]), inputs.dtype)
    return tf.where(mask[..., None], result, tf.zeros_like(result))


def unrolled_bilstm(layer: MaskedBiLSTM, inputs: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """MaskedBiLSTM.call's recurrence (the layer's own gates, cell and outputs) as a Python loop
    over the static sequence length instead of `tf.scan`."""
    projected, step_mask, recurrent = layer.time_major_gates(inputs, mask)
    h = c = tf.zeros([2, inputs.shape[0], layer.units], inputs.dtype)
    states = []
    for elems in zip(tf.unstack(projected), tf.unstack(step_mask)):
        h, c = layer.cell((h, c), elems, recurrent)
        states.append(h)
    return layer.batch_major_outputs(tf.stack(states), mask)


def step_function(layer: MaskedBiLSTM, forward, mask: tf.Tensor, jit_compile: bool = False):
    """tf.function: inputs -> gradients of a loss on the outputs w.r.t. inputs and weights."""
    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(tf.square(tf.cast(forward(layer, inputs, mask), tf.float32)))
        return tape.gradient(loss, [inputs] + layer.trainable_variables)
    return tf.function(step, jit_compile=jit_compile, autograph=False)


def median_ms(step, inputs, steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        for gradient in step(inputs):
            gradient.numpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=34)
    parser.add_argument("--features", type=int, default=1536)
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; batch "
          f"{args.batch_size} x {args.seq_len} x {args.features}, {args.units} units, "
          f"forward + backward, median of {args.steps} steps per round, {args.rounds} rounds",
          flush=True)
    rng = np.random.default_rng(0)
    lengths = rng.integers(args.seq_len // 3, args.seq_len + 1, size=args.batch_size)
    lengths[0] = args.seq_len
    mask = tf.constant(np.arange(args.seq_len)[None, :] < lengths[:, None])
    data = rng.normal(size=(args.batch_size, args.seq_len, args.features)).astype(np.float32)
    weights = None

    def scan(layer, inputs, mask):
        return layer(inputs, mask=mask)

    variants = {"block": (block_bilstm, False), "unrolled": (unrolled_bilstm, False),
                "xla": (scan, True)}
    for policy, dtype in (("mixed_bfloat16", tf.bfloat16), ("float32", tf.float32)):
        # The tagger's layers run under the global policy; the same weights for both dtypes.
        layer = MaskedBiLSTM(args.units, dtype=policy)
        layer.build([None, None, args.features])
        if weights is None:
            weights = layer.get_weights()
        layer.set_weights(weights)
        inputs = tf.cast(tf.constant(data), dtype)
        reference = scan(layer, inputs, mask)
        baseline = step_function(layer, scan, mask)
        baseline(inputs)  # trace
        for name, (forward, jit_compile) in variants.items():
            difference = float(tf.reduce_max(tf.abs(tf.cast(
                forward(layer, inputs, mask) - reference, tf.float32))))
            step = step_function(layer, forward, mask, jit_compile)
            start = time.perf_counter()
            step(inputs)
            first = time.perf_counter() - start
            scan_times, variant_times = [], []
            for _ in range(args.rounds):
                scan_times.append(median_ms(baseline, inputs, args.steps))
                variant_times.append(median_ms(step, inputs, args.steps))
            scan_ms, variant_ms = statistics.median(scan_times), statistics.median(variant_times)
            print(f"{dtype.name:8s} scan vs {name:8s}: {scan_ms:6.1f} vs {variant_ms:6.1f} ms "
                  f"-> {scan_ms / variant_ms:.2f}x (first call {first:.1f} s; max |output "
                  f"difference| {difference:.1e})", flush=True)


if __name__ == "__main__":
    main()
