"""The process pool preprocessing runs its jobs in, and what keeps a failure of it from hanging.

Jobs go to a `concurrent.futures.ProcessPoolExecutor` of "spawn" processes (`process_pool`), never
to a `multiprocessing.Pool`: a worker killed by a signal (the out-of-memory killer) breaks the
executor, and `run_jobs` reports that as `WorkerDiedError`, where a `multiprocessing.Pool` would
start a new worker and wait for the lost job forever. A worker also ends when the process that made
the pool does, even when that one is SIGKILLed (`die_with_parent`, called by the worker's
initializer). The jobs themselves are in `scan` and
`shard_writer`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
# Imported by name: `concurrent.futures.process` is a submodule that `import concurrent.futures`
# does not load, so naming it in an `except` clause raised AttributeError (hiding the real error)
# whenever nothing had imported it yet, e.g. with --num_workers=0.
from concurrent.futures.process import BrokenProcessPool


class WorkerDiedError(RuntimeError):
    """A worker process of the preprocessing pool ended abruptly (e.g. SIGKILL)."""


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Makes this worker process end when `parent_pid` does, even if that one is SIGKILLed.

    A killed parent cannot terminate its pool, and a busy worker would otherwise write its shard
    into a staging directory nobody will use, for up to a minute. Linux: the kernel sends
    SIGKILL when the thread that started the worker ends (PR_SET_PDEATHSIG; `preprocess` makes
    and terminates its pool in one call, so that thread outlives the pool); elsewhere a thread
    polls the parent pid.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # it died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


@contextlib.contextmanager
def process_pool(num_workers: int, initializer: Callable, initargs: tuple
                 ) -> Iterator[concurrent.futures.ProcessPoolExecutor | None]:
    """`num_workers` spawned worker processes, each running `initializer(*initargs)` first.

    Yields None for `num_workers` 0 (the caller then runs the jobs itself). On exit, also on an
    error, the jobs not yet started are cancelled and the running ones waited for, so nothing
    is still writing when the caller cleans up after it.
    """
    if num_workers <= 0:
        yield None
        return
    pool = concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=multiprocessing.get_context("spawn"), initializer=initializer,
        initargs=initargs)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_jobs(function: Callable, jobs: list, pool,
             progress: Callable[[dict], None] | None = None) -> list:
    """`function` over `jobs` (in `pool`, a ProcessPoolExecutor, if given); `progress(result)`
    after each one ends, in completion order, so a result must say which job it was.

    Returns:
      The results, in completion order (job order without a pool).

    Raises:
      WorkerDiedError: a worker process ended abruptly (killed, e.g. by the out-of-memory
        killer). A `multiprocessing.Pool` would replace it and wait for its job forever.
    """
    results = []
    if pool is None:
        outputs = (function(job) for job in jobs)
    else:
        outputs = (future.result() for future in concurrent.futures.as_completed(
            [pool.submit(function, job) for job in jobs]))
    try:
        for result in outputs:
            results.append(result)
            if progress is not None:
                progress(result)
    except BrokenProcessPool as error:
        raise WorkerDiedError(
            "a preprocessing worker process died (killed by a signal, e.g. the out-of-memory "
            "killer: try --num_workers=1 or fewer sentences per shard); nothing was written to "
            "the output directory") from error
    return results


class ShardProgress:
    """One log line per finished shard: shards and sentences done of the total, and an ETA.

    Called with each shard job's result ({"split", "index", ...}) as `run_jobs`' `progress`.
    """

    def __init__(self, tasks: list[dict], log: Callable[[str], None]):
        self.log = log
        self.total_shards = len(tasks)
        self.sentences_of = {(task["split"], task["index"]): task["sentences"] for task in tasks}
        self.total_sentences = sum(self.sentences_of.values())
        self.sentences = self.shards = 0
        self.start = time.monotonic()

    def __call__(self, shard: dict) -> None:
        self.shards += 1
        self.sentences += self.sentences_of[shard["split"], shard["index"]]
        elapsed = time.monotonic() - self.start
        done = self.sentences / max(self.total_sentences, 1)
        eta = f", ETA {elapsed * (1 - done) / done:.0f}s" if 0 < done < 1 else ""
        self.log(f"preprocessing: {self.shards}/{self.total_shards} shards, "
                 f"{self.sentences:,}/{self.total_sentences:,} sentences ({done:.0%}) "
                 f"in {elapsed:.0f}s{eta}")
