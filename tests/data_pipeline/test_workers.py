"""Preprocessing's worker processes: a killed worker is an error, a killed parent ends them."""

import os
import subprocess
import sys

import pytest

from data_pipeline.workers import WorkerDiedError, run_jobs

WORKER_SCRIPT = r"""
import multiprocessing, os, sys, time
from data_pipeline import shard_writer, tokenization
backend, info = tokenization.prepare_tokenizer(sys.argv[1], word_boundary_marker="auto",
                                               input_format="char")
pool = multiprocessing.get_context("spawn").Pool(
    2, initializer=shard_writer.init_worker,
    initargs=(backend.to_str(), info.to_json(), os.getpid()))
print(" ".join(str(worker.pid) for worker in multiprocessing.active_children()), flush=True)
pool.map(abs, range(8))  # the workers have run their initializer
pool.map_async(time.sleep, [60, 60], chunksize=1)  # busy, as when writing a shard
time.sleep(1)
print("ready", flush=True)
time.sleep(600)
"""


def test_pool_workers_die_with_a_killed_parent(tmp_path, bert_chinese_dir):
    """SIGKILL leaves no chance to terminate the pool: the workers must go by themselves."""
    import signal

    import psutil

    parent = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, str(bert_chinese_dir)],
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                              stdout=subprocess.PIPE, text=True)
    pids = []
    try:
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert parent.stdout.readline().strip() == "ready"
        workers = [psutil.Process(pid) for pid in pids]
        assert len(workers) == 2 and all(w.is_running() for w in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert alive == [], f"workers {[w.pid for w in alive]} outlived their killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in pids:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass


def _kill_own_process_on_3(job):
    """A pool job that dies as the out-of-memory killer would kill it (SIGKILL) on job 3."""
    import signal

    if job == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return job


def test_a_killed_worker_is_an_error_not_a_hang():
    """multiprocessing.Pool replaces a killed worker and waits for its job forever; the pool
    preprocessing uses reports it."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(
            2, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert sorted(run_jobs(abs, [-1, -2, 3], pool)) == [1, 2, 3]
        with pytest.raises(WorkerDiedError,
                           match="worker process died .*out-of-memory"):
            run_jobs(_kill_own_process_on_3, list(range(6)), pool)


def _bad_line(job):
    from data_pipeline.corpus import CorpusError

    raise CorpusError("corpus.txt", 402, "expected 2 columns (token tag), found 3")


def test_a_bad_line_in_a_worker_is_reported_as_the_bad_line():
    """The worker's CorpusError crosses the process boundary whole: not 'a worker died'."""
    import concurrent.futures
    import multiprocessing

    from data_pipeline.corpus import CorpusError

    with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn")) as pool:
        with pytest.raises(CorpusError, match=r"^corpus.txt:402: expected 2 columns") as caught:
            run_jobs(_bad_line, [0], pool)
    assert (caught.value.path, caught.value.line) == ("corpus.txt", 402)


def test_an_error_without_a_pool_is_that_error_in_a_fresh_interpreter():
    """Without a pool, in a process where nothing has imported concurrent.futures.process (the
    pytest process has), the job's error must come out as itself."""
    script = ("from data_pipeline.workers import run_jobs\n"
              "def job(_):\n    raise ValueError('corpus.txt:7: an I- without a B-')\n"
              "run_jobs(job, [0], None)\n")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    done = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "ValueError: corpus.txt:7: an I- without a B-"
    assert "AttributeError" not in done.stderr


# A worker that dies at start-up: unpickling its initializer's arguments ends the process (as an
# import error or a kill before the worker has read them would) and the arguments are larger than
# a pipe holds (the tokenizer's JSON is ~230 KiB). CPython wrote them into the worker's start-up
# pipe, holding its read end itself, so `submit` blocked forever; it must be an error in seconds.
STARTUP_DEATH_SCRIPT = r"""
import os, sys
from data_pipeline.workers import WorkerDiedError, process_pool, run_jobs

class DiesWhenUnpickled:
    def __reduce__(self):
        return os._exit, (3,)

with process_pool(2, print, (DiesWhenUnpickled(), "x" * (1 << 20))) as pool:
    try:
        run_jobs(abs, [-1, -2, -3], pool)
    except WorkerDiedError as error:
        print("error:", error)
        sys.exit(2)
print("no error")
"""


def test_a_worker_that_dies_at_start_up_is_an_error_not_a_hang():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    try:
        done = subprocess.run([sys.executable, "-c", STARTUP_DEATH_SCRIPT], cwd=repo,
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("a worker that died at start-up hung the pool for 120 s")
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stdout.startswith("error: a preprocessing worker process died"), done.stdout
    assert "failed at start-up" in done.stdout
    assert "Traceback" not in done.stderr
