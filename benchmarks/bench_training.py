"""Training speed side by side, in one invocation: this project against transformers' `fit`
(and, section 5, the encoder before issue #22 against the new one).

    python benchmarks/bench_training.py                 # sections 1-4: 401 s, 2 quiet cores
    python benchmarks/bench_training.py --only=finetune,frozen --steps=6

On the same encoder (`../shared/models/multilingual-e5-small-zh`), the same People's Daily
windows and batch size (32), each comparison alternates its two sides step by step (A B A B ...)
so that machine noise hits both alike, and prints a line with the ratio per measurement:

1. finetune  real tokens/s of this project's fine-tuning step (`trainer.step.TrainStep` exactly as
             `configs/finetune.flags` builds it: bucketed batches, AdamW, layer decay, clipping)
             against `TFBertForTokenClassification` + `compile(Adam(5e-5),
             SparseCategoricalCrossentropy(from_logits=True))` + `fit` on the same windows padded
             to 128 with padding masked by sample weights (benchmarks/hf_reference.py; since
             transformers 5 that network is built on this project's encoder, see there); float32,
             then both under mixed_bfloat16. Goal >= 4x.
2. frozen    `configs/frozen.flags` steps from the feature cache against steps that re-run the
             frozen encoder, on a subset of the train split; epoch times are those step times x
             the full split's steps per epoch, and the first (cache-building) epoch adds the
             measured cache-building rate x the full split's windows. Goal: later epochs >= 10x.
3. crf       CRF vs softmax fine-tuning step (benchmarks/bench_crf_vs_softmax.py). Goal <= 1.3x.
4. flops     the fine-tuning step's FLOP/s counting real tokens only (6 x non-embedding
             parameters x real tokens per second) as a fraction of the `tf.matmul` peak measured
             here (4096 x 4096, same precision). Goal >= 60%.
5. encoder   not in the default run: the encoder before issue #22 (transformers' TFBertModel)
             against the new one (models/transformer/) inside the same tagger, in the
             fine-tuning step (finetune.flags) and the feature cache's building pass
             (frozen.flags), float32 and mixed_bfloat16: real tokens/s, fraction of the matmul
             peak, new/old (benchmarks/bench_encoder_training.py). Goal >= 1.3x. It needs a
             checkout of the old code and transformers <= 4.54 (without them it times the new
             side only):
                 git worktree add --detach /tmp/old 823aaf9
                 python benchmarks/bench_training.py --only=encoder --old_code=/tmp/old

The whole default main job (`configs/frozen.flags`) is timed separately (README, "Measured
here"): it does not fit in this script's budget.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.chdir(REPO_ROOT)  # flagfiles name each other relative to the repo root

import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from benchmarks import hf_reference  # noqa: E402
from trainer import config as config_lib, feature_cache, precision  # noqa: E402
from trainer.evaluator import Evaluator  # noqa: E402
from trainer.training_state import TrainingState, build_training_state  # noqa: E402

SECTIONS = ("finetune", "frozen", "crf", "flops", "encoder")
DEFAULT_SECTIONS = SECTIONS[:4]
FULL_TRAIN = "../shared/data/people_daily_proxy_train/example.train"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(DEFAULT_SECTIONS),
                        help="comma-separated sections: " + ",".join(SECTIONS))
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--frozen_subset", type=int, default=1500,
                        help="train sentences of the frozen section's subset corpus")
    parser.add_argument("--precisions", default="none,bf16",
                        help="fine-tuning precisions to compare (none = float32)")
    parser.add_argument("--old_code", default="",
                        help="encoder section: a checkout of the code before #22 (e.g. commit "
                        "823aaf9) whose models/encoders.py is the old encoder")
    parser.add_argument("--cache_blocks", type=int, default=4,
                        help="encoder section: timed cache-building blocks per side")
    parser.add_argument("--cache_windows", type=int, default=feature_cache.BLOCK_WINDOWS,
                        help="encoder section: windows per cache-building block (default: the "
                        "cache build's own)")
    return parser.parse_args(argv)


def machine() -> str:
    model = "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                     if line.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    flags = precision.cpu_flags()
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags] or ["no bf16 instructions"]
    return (f"{model}, {os.cpu_count()} cores, {', '.join(bf16)}; TensorFlow {tf.__version__}, "
            f"Python {platform.python_version()}; load average at start "
            f"{os.getloadavg()[0]:.2f}")


def build_run(flag_args: list[str], run_dir: pathlib.Path, mixed_precision: str
              ) -> TrainingState:
    """A run's state built exactly as `trainer.main` would (model, plan, TrainStep)."""
    config = config_lib.parse_flags(flag_args + [
        f"--run_dir={run_dir}", f"--mixed_precision={mixed_precision}", "--noprogress_bar",
        "--noexport", "--overwrite"])
    return build_training_state(config, run_dir)


class OurSteps:
    """One optimizer update per call of the project's compiled loop (TrainStep.run)."""

    def __init__(self, run: TrainingState):
        self.run = run
        self.iterator = iter(run.train_dataset())
        self.one = tf.constant(1, tf.int32)

    def __call__(self) -> float:
        """Runs one step; returns the real (non-padding) tokens it trained on."""
        totals, _ = self.run.train_step.run(self.iterator, self.one)
        return float(totals["tokens"])


class FitSteps:
    """One step of Keras `fit` (`model.make_train_function()`, what fit calls per batch)."""

    def __init__(self, model, manifest_dir: str, batch_size: int):
        dataset = hf_reference.fit_dataset(manifest_dir, "train", batch_size, 128,
                                           repeat=True, seed=0)
        self.iterator = iter(dataset)
        self.model = model
        self.function = model.make_train_function()

    def __call__(self) -> float:
        x, _, _ = batch = next(self.iterator)
        # A one-batch tf.data iterator: same type spec every step, so no retracing.
        self.function(iter(tf.data.Dataset.from_tensors(batch)))["loss"].numpy()
        return float(tf.reduce_sum(x["attention_mask"]))


def alternate(sides: dict, *, steps: int, warmup: int) -> dict[str, dict[str, float]]:
    """Times `steps` calls of each side, alternating; returns per-side median step time, real
    tokens/s (sum of tokens / sum of times), and the warm-up (tracing) time."""
    results = {name: {"times": [], "tokens": 0.0} for name in sides}
    for name, side in sides.items():
        started = time.perf_counter()
        for _ in range(warmup):
            side()
        results[name]["warmup_s"] = time.perf_counter() - started
    for _ in range(steps):
        for name, side in sides.items():
            started = time.perf_counter()
            tokens = side()
            results[name]["times"].append(time.perf_counter() - started)
            results[name]["tokens"] += tokens
    for result in results.values():
        result["median_s"] = statistics.median(result["times"])
        result["tokens_per_s"] = result["tokens"] / sum(result["times"])
    return results


def report(line: str) -> None:
    print(line, flush=True)


def finetune_section(args, work: pathlib.Path) -> dict[str, float]:
    """Ours vs transformers fit, per precision; returns our tokens/s per precision."""
    ours_per_precision = {}
    for mixed in args.precisions.split(","):
        with precision.global_policy(mixed):
            run = build_run(["--flagfile=configs/finetune.flags",
                             f"--batch_size={args.batch_size}"], work / f"ft_{mixed}", mixed)
            manifest_dir = run.manifest_dir
            label_count = len(run.label_map)
            reference = hf_reference.build_reference_model(label_count)
            sides = {"ours": OurSteps(run),
                     "fit": FitSteps(reference, manifest_dir, args.batch_size)}
            results = alternate(sides, steps=args.steps, warmup=args.warmup)
        ours, fit = results["ours"], results["fit"]
        ratio = ours["tokens_per_s"] / fit["tokens_per_s"]
        name = "float32" if mixed == "none" else mixed
        report(f"finetune {name}: ours {ours['tokens_per_s']:.0f} real tokens/s "
               f"({1000 * ours['median_s']:.0f} ms/step median) vs transformers fit "
               f"{fit['tokens_per_s']:.0f} ({1000 * fit['median_s']:.0f} ms/step, padded to 128)"
               f": {ratio:.2f}x (goal >= 4x; warm-up incl. tracing {ours['warmup_s']:.0f} s vs "
               f"{fit['warmup_s']:.0f} s)")
        ours_per_precision[mixed] = ours["tokens_per_s"]
        del run, reference, sides
    return ours_per_precision


def write_subset(source: str, out: pathlib.Path, sentences: int) -> str:
    text = pathlib.Path(config_lib.resolve_input_path(source)).read_text(encoding="utf-8")
    chosen = [s for s in text.split("\n\n") if s.strip()][:sentences]
    out.write_text("\n\n".join(chosen) + "\n", encoding="utf-8")
    return str(out)


def frozen_section(args, work: pathlib.Path) -> dict[str, float]:
    mixed, reason = precision.resolve("auto")
    subset = write_subset(FULL_TRAIN, work / "subset.train", args.frozen_subset)
    # Small dev and test too: the cache covers every split, and only its rate is measured here.
    small = {split: write_subset(f"../shared/data/people_daily/example.{split}",
                                 work / f"subset.{split}", args.frozen_subset // 5)
             for split in ("dev", "test")}
    flags_common = ["--flagfile=configs/frozen.flags", f"--train_file={subset}",
                    f"--dev_file={small['dev']}", f"--test_file={small['test']}",
                    f"--batch_size={args.batch_size}", f"--data_cache_dir={work / 'cache'}"]
    with precision.global_policy(mixed):
        cached_run = build_run(flags_common, work / "frozen_cached", mixed)
        cache_manifest = cached_run.input_dir
        from data_pipeline.manifest import load_manifest

        cache = load_manifest(cache_manifest)
        windows_cached = sum(s["records"] for split in cache["splits"].values()
                             for s in split["shards"])
        # The build time alone: build it again into an empty root.
        started = time.perf_counter()
        feature_cache.ensure_feature_cache(cached_run.model, cached_run.manifest_dir,
                                           work / "cache_again", log=lambda _: None)
        build_s = time.perf_counter() - started
        plain_run = build_run(flags_common + ["--nofeature_cache"], work / "frozen_plain",
                              mixed)
        results = alternate({"cached": OurSteps(cached_run), "encoder": OurSteps(plain_run)},
                            steps=args.steps * 3, warmup=args.warmup)
        # Evaluation speed: dev once to trace, then timed, from the cache and with the encoder.
        eval_rates = {}
        dev_windows = sum(s["records"] for s in cache["splits"]["dev"]["shards"])
        for name, run in (("cache", cached_run), ("encoder", plain_run)):
            evaluator = Evaluator(run, logs=None, stop=None)
            evaluator.evaluate("dev", 0)
            started = time.perf_counter()
            evaluator.evaluate("dev", 1)  # another step: a same-step result would be reused
            eval_rates[name] = dev_windows / (time.perf_counter() - started)
    full = load_manifest(hf_reference.prepare_manifest(max_seq_length=100, stride=24))
    full_windows = {s: int(full["splits"][s]["counts"]["windows"]) for s in full["splits"]}
    steps_per_epoch = math.ceil(full_windows["train"] / args.batch_size)
    cached, plain = results["cached"], results["encoder"]
    epoch_cached = steps_per_epoch * cached["median_s"]
    epoch_plain = steps_per_epoch * plain["median_s"]
    rate = windows_cached / build_s
    first_epoch = sum(full_windows.values()) / rate + epoch_cached
    report(f"frozen ({mixed}: {reason}): step from the cache {1000 * cached['median_s']:.0f} ms "
           f"vs re-running the encoder {1000 * plain['median_s']:.0f} ms median: epoch of "
           f"People's Daily train ({steps_per_epoch} steps) {epoch_cached:.0f} s vs "
           f"{epoch_plain:.0f} s: {epoch_plain / epoch_cached:.1f}x faster (goal >= 10x)")
    report(f"frozen first epoch: cache building {rate:.0f} windows/s (measured on "
           f"{windows_cached} windows), all splits' {sum(full_windows.values())} windows "
           f"{sum(full_windows.values()) / rate:.0f} s + one cached epoch = {first_epoch:.0f} s "
           f"vs an epoch re-running the encoder {epoch_plain:.0f} s: "
           f"{epoch_plain / first_epoch:.2f}x")
    report(f"evaluation (dev, {dev_windows} windows, after tracing): from the cache "
           f"{eval_rates['cache']:.0f} windows/s, re-running the encoder "
           f"{eval_rates['encoder']:.0f} windows/s; the encoder's forward pass alone (cache "
           f"building) {rate:.0f} windows/s: evaluation runs at "
           f"{eval_rates['encoder'] / rate:.2f}x forward-pass speed")
    report(f"frozen cache size: {cache['features']['bytes'] / 2**20:.0f} MiB for "
           f"{windows_cached} windows (F = {cache['features']['dim']} float16)")
    return {"epoch_cached": epoch_cached, "epoch_plain": epoch_plain,
            "first_epoch": first_epoch, "steps_per_epoch": steps_per_epoch}


def crf_section(args) -> None:
    for mixed, policy in (("none", "float32"), ("bf16", "mixed_bfloat16")):
        if mixed not in args.precisions.split(","):
            continue
        out = subprocess.run(
            [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_crf_vs_softmax.py"),
             f"--policy={policy}", f"--steps={args.steps}"], capture_output=True, text=True,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        lines = [line for line in out.stdout.splitlines() if "CRF" in line]
        for line in lines:
            report(f"crf {policy}: {line}")
        if out.returncode:
            report(f"crf {policy}: FAILED\n{out.stderr[-2000:]}")


def matmul_peak(mixed: str, size: int = 4096, repeats: int = 5) -> float:
    dtype = tf.bfloat16 if mixed == "bf16" else tf.float32
    a = tf.random.normal([size, size], dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)
    matmul = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.matmul(x, y)[:1, :1],
                                                            tf.float32)))
    matmul(a, b).numpy()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        matmul(a, b).numpy()
        times.append(time.perf_counter() - started)
    return 2 * size ** 3 / min(times)


def non_embedding_parameters() -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(hf_reference.resolve_path(
        hf_reference.DEFAULT_PRETRAINED))
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = 4 * h * h + 4 * h + 2 * h * i + h + i + 4 * h  # attention, FFN, 2 LayerNorms
    return n * per_layer


def flops_section(ours_tokens_per_s: dict[str, float]) -> None:
    params = non_embedding_parameters()
    for mixed, tokens_per_s in ours_tokens_per_s.items():
        peak = matmul_peak(mixed)
        achieved = 6 * params * tokens_per_s
        name = "float32" if mixed == "none" else mixed
        report(f"flops {name}: fine-tuning step {achieved / 1e9:.1f} GFLOP/s on real tokens "
               f"(6 x {params / 1e6:.1f} M non-embedding parameters x {tokens_per_s:.0f} "
               f"tokens/s) vs tf.matmul 4096^2 peak {peak / 1e9:.1f} GFLOP/s: "
               f"{100 * achieved / peak:.0f}% (goal >= 60%)")


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    sections = args.only.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        sys.exit(f"error: --only: unknown sections {sorted(unknown)}; expected {SECTIONS}")
    report(f"machine: {machine()}")
    report(f"command: python benchmarks/bench_training.py {' '.join(argv or sys.argv[1:])}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
        work = pathlib.Path(tmp)
        ours = {}
        if "finetune" in sections or "flops" in sections:
            ours = finetune_section(args, work)
        if "frozen" in sections:
            frozen_section(args, work)
        if "crf" in sections:
            crf_section(args)
        if "flops" in sections:
            flops_section(ours)
        if "encoder" in sections:
            # Imported here: that module builds on this one's helpers.
            from benchmarks import bench_encoder_training

            bench_encoder_training.encoder_section(args, work)
    report(f"total wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
