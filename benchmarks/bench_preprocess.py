"""Preprocessing speed and memory: seconds for a corpus, and peak memory at 1x and 10x its size.

    python benchmarks/bench_preprocess.py                       # MSRA train, 1x and 10x
    python benchmarks/bench_preprocess.py --scales 1 --repeats 3

Each run is `python -m data_pipeline.preprocess` in a child process (the way users run it); the
peak resident memory of its whole process tree (the main process plus its workers) is sampled
every 20 ms with psutil. The 10x corpus is the file repeated ten times, written to a temp dir.
Goals (issue #2): MSRA train in <= 20 s on 2 cores; peak memory at 10x <= 1.2x the 1x peak.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import psutil

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("TAGGER_SHARED_DIR", REPO.parent / "shared"))


def run_once(corpus: pathlib.Path, tokenizer: pathlib.Path, output_dir: pathlib.Path,
             workers: int) -> tuple[float, int]:
    """Returns (wall seconds, peak RSS bytes of the process tree)."""
    command = [sys.executable, "-m", "data_pipeline.preprocess", f"--train={corpus}",
               f"--tokenizer={tokenizer}", f"--output_dir={output_dir}", "--overwrite",
               f"--num_workers={workers}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    root = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"preprocess failed:\n{process.stderr.read()}")
    return elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=pathlib.Path,
                        default=SHARED / "data" / "msra" / "train.bmes")
    parser.add_argument("--tokenizer", type=pathlib.Path,
                        default=SHARED / "models" / "multilingual-e5-small-zh")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()

    work = pathlib.Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    try:
        results = {}
        for scale in args.scales:
            corpus = args.corpus
            if scale != 1:
                corpus = work / f"{args.corpus.name}.x{scale}"
                with open(corpus, "wb") as out:
                    data = args.corpus.read_bytes()
                    if not data.endswith(b"\n\n") and not data.endswith(b"\r\n\r\n"):
                        data += b"\n"
                    for _ in range(scale):
                        out.write(data)
            runs = [run_once(corpus, args.tokenizer, work / f"out{scale}", args.workers)
                    for _ in range(args.repeats)]
            seconds = min(r[0] for r in runs)
            peak = max(r[1] for r in runs)
            results[scale] = (seconds, peak)
            print(f"scale {scale:>3}x  {corpus.stat().st_size / 2**20:8.1f} MiB  "
                  f"best of {args.repeats}: {seconds:7.2f} s  peak RSS {peak / 2**20:8.1f} MiB",
                  flush=True)
        if 1 in results:
            print(f"goal: scale 1x <= 20 s on 2 cores: {results[1][0]:.2f} s")
            for scale, (seconds, peak) in results.items():
                if scale != 1:
                    print(f"peak memory {scale}x / 1x = {peak / results[1][1]:.3f} "
                          f"(goal <= 1.2); time {scale}x / 1x = {seconds / results[1][0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
