"""The old encoder against the new inside the tagger (issue #22): section 5 of bench_training.py.

    git worktree add --detach /tmp/old 823aaf9      # the code before #22, for the old side
    python benchmarks/bench_training.py --only=encoder --old_code=/tmp/old

"Old" is transformers' TFBertModel in the TransformerEncoder wrapper of that checkout's
models/encoders.py (loaded by path, as benchmarks/bench_encoder.py does; it needs transformers
<= 4.54); "new" is models/transformer/. The old one is plugged into the current `Tagger` while
`build_training_state` builds the run: `old_encoder_in_tagger` swaps the two names the tagger
builds its encoder with, `load_transformer` and `TransformerEncoder`, whose interfaces are the
same in both; the only adapter is that the old loading report (`tagger_loading_info`) is also
given the name the variables report reads (`loading_info`). Everything else (data, optimizer
groups, clipping, the compiled `TrainStep`, the feature cache code) is this checkout's, so only
the encoder differs. For each precision (float32, then mixed_bfloat16):

  - the tf.matmul peak (4096^2, bench_training.matmul_peak) is measured first;
  - fine-tuning: two runs built from `configs/finetune.flags` exactly as bench_training's
    `finetune` section builds them (same bucketed People's Daily batches, same seed), one
    optimizer update per call, old and new alternating (A B A B); median step time, real
    tokens/s, FLOP/s (6 x non-embedding parameters x real tokens/s) as a fraction of the peak,
    and new/old throughput (goal >= 1.3x);
  - the cache-building pass: two taggers built from `configs/frozen.flags` (last 4 layers
    concatenated, max_seq_length 100, feature cache off so that nothing is built at setup), then
    `trainer.feature_cache.encode_block` (what the cache build does per block of `--cache_windows`
    windows of the train shards: parse, encode sorted by length in ~8,192-token batches, append
    float16 features; reading and writing shards aside) over the same blocks, one block per side
    untimed, then `--cache_blocks` each, alternating; tokens/s, FLOP/s (2 x parameters x tokens)
    as a fraction of the peak, and new/old.

Before timing, each pair's encoder outputs (`Tagger.cache_features` in inference mode, on the
same training batch, real tokens only) are compared: the max absolute difference is printed, and
in float32 a difference above 1e-3 stops the script (the two would not be doing the same work).
Without --old_code, or when its encoder cannot be imported, one line says so and only the new
side is timed.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator

import tensorflow as tf

from benchmarks import bench_training
from benchmarks.bench_encoder import old_encoders_module
from trainer import feature_cache, precision
from trainer.training_state import TrainingState

MAX_FLOAT32_DIFFERENCE = 1e-3


@contextlib.contextmanager
def old_encoder_in_tagger(old) -> Iterator[None]:
    """While active, `models.Tagger` builds `old`'s encoder (the models/encoders.py module of the
    code before #22) in place of models.transformer's."""
    from unittest import mock

    from models import tagger

    def load_old_transformer(*, pretrained=None, encoder_config=None):
        transformer = old.load_transformer(pretrained=pretrained, encoder_config=encoder_config)
        transformer.loading_info = transformer.tagger_loading_info  # as variables_report reads
        return transformer

    with mock.patch.object(tagger, "load_transformer", load_old_transformer), \
            mock.patch.object(tagger, "TransformerEncoder", old.TransformerEncoder):
        yield


def build_pair(flag_args: list[str], run_dir: pathlib.Path, mixed: str, old
               ) -> dict[str, TrainingState]:
    """{"old": the run with `old`'s encoder (when `old` is not None), "new": the run as this
    checkout builds it}, both from the same flags, under the current global policy."""
    runs = {}
    if old is not None:
        with old_encoder_in_tagger(old):
            runs["old"] = bench_training.build_run(flag_args, run_dir.with_name(
                run_dir.name + "_old"), mixed)
    runs["new"] = bench_training.build_run(flag_args, run_dir.with_name(run_dir.name + "_new"),
                                           mixed)
    return runs


def check_same_output(runs: dict[str, TrainingState], label: str, policy: str) -> None:
    """Prints how far apart the old and new encoders' outputs are on the new run's first
    training batch; exits when they differ by more than MAX_FLOAT32_DIFFERENCE in float32."""
    if "old" not in runs:
        return
    batch = next(iter(runs["new"].train_dataset()))
    real = tf.cast(batch["attention_mask"], tf.float32)[:, :, None]  # [batch, seq_len, 1]
    outputs = {name: tf.cast(run.model.cache_features(batch["input_ids"],
                                                      batch["attention_mask"]), tf.float32) * real
               for name, run in runs.items()}
    difference = float(tf.reduce_max(tf.abs(outputs["old"] - outputs["new"])))
    largest = float(tf.reduce_max(tf.abs(outputs["new"])))
    old, new = (type(runs[name].model.encoder.transformer).__name__ for name in ("old", "new"))
    bench_training.report(
        f"encoder {policy} {label}: old ({old}) and new ({new}) encoder outputs on one training "
        f"batch ({tuple(outputs['new'].shape)}, real tokens) differ by at most {difference:.2e} "
        f"(largest value {largest:.2f})")
    if policy == "float32" and difference > MAX_FLOAT32_DIFFERENCE:
        raise SystemExit(f"error: encoder {label}: the old and new encoders' float32 outputs "
                         f"differ by {difference:.2e} > {MAX_FLOAT32_DIFFERENCE:g}: they do not "
                         f"compute the same function, so their speeds are not comparable")


class CacheBlocks:
    """One call encodes the next block as the feature-cache build does; returns its real tokens."""

    def __init__(self, model, blocks: list[list[bytes]], tokens: list[float], pad_token_id: int):
        self.encode = feature_cache.encoder_function(model)
        self.blocks, self.tokens, self.pad_token_id = blocks, tokens, pad_token_id
        self.next = 0

    def __call__(self) -> float:
        index, self.next = self.next, self.next + 1
        feature_cache.encode_block(self.encode, self.blocks[index], self.pad_token_id)
        return self.tokens[index]


def train_blocks(run: TrainingState, windows: int, count: int
                 ) -> tuple[list[list[bytes]], list[float]]:
    """The first `count` blocks of `windows` train records of `run`'s shards, and each block's
    real tokens (window lengths, special tokens included)."""
    from data_pipeline.records import feature_spec

    manifest = run.manifest
    files = [str(pathlib.Path(manifest["directory"]) / shard["file"])
             for shard in manifest["splits"]["train"]["shards"]]
    records = tf.data.TFRecordDataset(files, compression_type=manifest.get("compression") or "")
    blocks, tokens = [], []
    for block in records.batch(windows, drop_remainder=True).take(count):
        blocks.append([bytes(record) for record in block.numpy()])
        parsed = tf.io.parse_example(block, feature_spec())
        tokens.append(float(tf.reduce_sum(parsed["input_ids"].row_lengths())))
    if len(blocks) < count:
        raise SystemExit(f"error: --cache_blocks/--cache_windows: the train split has "
                         f"{len(blocks)} blocks of {windows} windows, {count} needed")
    return blocks, tokens


def report_sides(label: str, results: dict, flops_per_token: float, peak: float) -> None:
    """One line: each side's median time, tokens/s and fraction of the peak, new/old, and the
    warm-up (tracing included) of each side."""
    sides = []
    for name, result in results.items():
        fraction = flops_per_token * result["tokens_per_s"] / peak
        sides.append(f"{name} {1000 * result['median_s']:.0f} ms median, "
                     f"{result['tokens_per_s']:.0f} real tokens/s, {100 * fraction:.0f}% of peak")
    line = "; ".join(sides)
    if "old" in results:
        ratio = results["new"]["tokens_per_s"] / results["old"]["tokens_per_s"]
        line += f"; new/old {ratio:.2f}x (goal >= 1.3x)"
    warmups = " vs ".join(f"{result['warmup_s']:.0f} s" for result in results.values())
    line += f" (warm-up incl. tracing {warmups})"
    bench_training.report(f"encoder {label}: {line}")


def encoder_section(args, work: pathlib.Path) -> None:
    """Old vs new encoder, fine-tuning step and cache-building pass, per precision."""
    old = old_encoders_module(args.old_code) if args.old_code else None
    if not args.old_code:
        bench_training.report("encoder: no --old_code (a checkout of the code before #22): "
                              "timing the new encoder only")
    params = bench_training.non_embedding_parameters()
    for mixed in args.precisions.split(","):
        policy = "float32" if mixed == "none" else "mixed_bfloat16"
        with precision.global_policy(mixed):
            peak = bench_training.matmul_peak(mixed)
            bench_training.report(
                f"encoder {policy}: tf.matmul 4096^2 peak {peak / 1e9:.1f} GFLOP/s; "
                f"{params / 1e6:.1f} M non-embedding parameters")
            runs = build_pair(["--flagfile=configs/finetune.flags",
                               f"--batch_size={args.batch_size}"], work / f"enc_ft_{mixed}",
                              mixed, old)
            check_same_output(runs, "fine-tuning", policy)
            results = bench_training.alternate(
                {name: bench_training.OurSteps(run) for name, run in runs.items()},
                steps=args.steps, warmup=args.warmup)
            report_sides(f"{policy} fine-tuning step (finetune.flags, batch {args.batch_size})",
                         results, 6 * params, peak)
            del runs
            runs = build_pair(["--flagfile=configs/frozen.flags", "--nofeature_cache",
                               f"--batch_size={args.batch_size}"], work / f"enc_cache_{mixed}",
                              mixed, old)
            check_same_output(runs, "cache building", policy)
            blocks, tokens = train_blocks(runs["new"], args.cache_windows, 1 + args.cache_blocks)
            pad_token_id = int(runs["new"].manifest["tokenizer"].get("pad_token_id", 0))
            results = bench_training.alternate(
                {name: CacheBlocks(run.model, blocks, tokens, pad_token_id)
                 for name, run in runs.items()}, steps=args.cache_blocks, warmup=1)
            report_sides(f"{policy} cache building (frozen.flags, blocks of "
                         f"{args.cache_windows} windows)", results, 2 * params, peak)
            del runs
