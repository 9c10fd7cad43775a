"""Throughput and padding of `make_dataset`: bucketed vs fixed-length batches.

Usage (after `python -m data_pipeline.preprocess ... --output_dir DIR`):

    python benchmarks/bench_dataset.py --manifest DIR --split train

For each mode, one warm-up epoch, then `--epochs` timed full passes over the split, consumed by
a Python loop as a training loop would. Prints sentences/s and windows/s (wall clock, best and
median epoch), the CPU seconds per epoch of this process (less sensitive to other processes on
the machine than wall clock) and the padding share (padding tokens / all tokens).
Goal (issue 2): >= 50,000 sentences/s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipeline.dataset import make_dataset, padding_share  # noqa: E402
from data_pipeline.manifest import load_manifest  # noqa: E402


def time_epochs(dataset, epochs: int) -> tuple[list[float], list[float], int]:
    """Returns (wall seconds per epoch, CPU seconds per epoch, windows per epoch)."""
    for _ in dataset:  # warm-up: builds functions, fills file caches, lets AUTOTUNE settle
        pass
    walls, cpus, windows = [], [], 0
    for _ in range(epochs):
        windows = 0
        wall, cpu = time.perf_counter(), time.process_time()
        for batch in dataset:
            windows += batch["sentence_id"].shape[0]
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return walls, cpus, windows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", required=True, help="manifest.json or its directory")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--tokens_per_batch", type=int, default=None,
                        help="also time token-budget batching with this budget")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up")
    parser.add_argument("--no_shuffle", action="store_true", help="read in order (evaluation)")
    parser.add_argument("--no_verify", action="store_true", help="skip shard sha256 checks")
    args = parser.parse_args(argv)

    manifest = load_manifest(args.manifest)
    counts = manifest["splits"][args.split]["counts"]
    sentences = counts["sentences"]
    print(f"manifest {manifest['directory']} split {args.split}: {sentences:,} sentences, "
          f"{counts['windows']:,} windows, max_seq_length {manifest['max_seq_length']}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")

    common = dict(shuffle=not args.no_shuffle, seed=0, verify_checksums=not args.no_verify)
    modes = {
        f"bucketed batch_size={args.batch_size}": dict(batch_size=args.batch_size),
        f"fixed    batch_size={args.batch_size}": dict(batch_size=args.batch_size,
                                                       bucketing=False),
    }
    if args.tokens_per_batch:
        modes[f"bucketed tokens_per_batch={args.tokens_per_batch}"] = dict(
            tokens_per_batch=args.tokens_per_batch)
    for name, kwargs in modes.items():
        start = time.perf_counter()
        dataset = make_dataset(args.manifest, args.split, **common, **kwargs)
        setup = time.perf_counter() - start
        share = padding_share(dataset)
        walls, cpus, windows = time_epochs(dataset, args.epochs)
        best, median = min(walls), statistics.median(walls)
        print(f"{name}: {sentences / best:,.0f} sentences/s best, {sentences / median:,.0f} "
              f"median ({windows / best:,.0f} windows/s); {statistics.median(cpus):.2f} CPU-s "
              f"per epoch ({sentences / statistics.median(cpus):,.0f} sentences per CPU-s); "
              f"padding share {share:.2%}; make_dataset() {setup:.2f} s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
