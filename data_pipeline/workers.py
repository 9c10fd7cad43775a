"""The process pool preprocessing runs its jobs in, and what keeps a failure of it from hanging.

Jobs go to a `concurrent.futures.ProcessPoolExecutor` of "spawn" processes (`process_pool`), never
to a `multiprocessing.Pool`: a worker killed by a signal (the out-of-memory killer) breaks the
executor, and `run_jobs` reports that as `WorkerDiedError`, where a `multiprocessing.Pool` would
start a new worker and wait for the lost job forever. A worker also ends when the process that made
the pool does, even when that one is SIGKILLed (`die_with_parent`, called by the worker's
initializer), and a worker that dies at start-up, before it has read what the pool sends it, is
a `WorkerDiedError` too rather than a hang (`process_pool`). The jobs themselves are in `scan` and
`shard_writer`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import multiprocessing
import os
import pickle
import signal
import sys
import tempfile
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


def _run_initializer(path: str) -> None:
    """A worker's initializer: loads (initializer, initargs) from `path` and runs it."""
    with open(path, "rb") as stream:
        initializer, initargs = pickle.load(stream)
    initializer(*initargs)


@contextlib.contextmanager
def process_pool(num_workers: int, initializer: Callable, initargs: tuple
                 ) -> Iterator[concurrent.futures.ProcessPoolExecutor | None]:
    """`num_workers` spawned worker processes, each running `initializer(*initargs)` first.

    Yields None for `num_workers` 0 (the caller then runs the jobs itself). On exit, also on an
    error, the jobs not yet started are cancelled and the running ones waited for, so nothing
    is still writing when the caller cleans up after it.

    `initargs` reach the workers through a temporary file, not through the pipe that starts
    each one: CPython writes that pipe from the thread that calls `submit` while it still holds
    the pipe's read end itself, so when a worker died at start-up (killed, or failing to import)
    before it had read more than the pipe holds (64 KiB; the tokenizer's JSON is several
    hundred KiB), that write, and preprocessing with it, blocked forever.
    """
    if num_workers <= 0:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="tagger-pool-") as scratch:
        path = os.path.join(scratch, "initializer.pickle")
        with open(path, "wb") as stream:
            pickle.dump((initializer, initargs), stream)
        pool = concurrent.futures.ProcessPoolExecutor(
            num_workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_run_initializer, initargs=(path,))
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
    try:
        if pool is None:
            outputs = (function(job) for job in jobs)
        else:
            # `submit` raises BrokenProcessPool too, once a worker has died (at start-up, say).
            futures = [pool.submit(function, job) for job in jobs]
            outputs = (future.result() for future in concurrent.futures.as_completed(futures))
        for result in outputs:
            results.append(result)
            if progress is not None:
                progress(result)
    except BrokenProcessPool as error:
        raise WorkerDiedError(
            "a preprocessing worker process died (killed by a signal, e.g. the out-of-memory "
            "killer: try --num_workers=1 or fewer sentences per shard; or it failed at "
            "start-up: see the messages above, or try --num_workers=0); nothing was written to "
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
