"""TensorFlow's own log lines that say nothing true about a run, removed where they are printed.

On a CPU-only machine TensorFlow 2.21 (the pinned CUDA build from PyPI) prints these in every
process that imports it, none of them about the run:

    when                      line (C++, absl format)                          why it goes
    import                    WARNING: All log messages before                 about absl's setup:
                              absl::InitializeLog() is called are written      printed once by each
                              to STDERR                                        of the two libraries
                                                                               with a copy of absl
    import                    I... port.cc] oneDNN custom operations are on.   the default of every
                              ... set TF_ENABLE_ONEDNN_OPTS=0                  x86 build, twice
    import                    I... cudart_stub.cc] Could not find cuda         twice; `find_gpus`'
                              drivers on your machine, GPU will not be used.   caller says it once
    import                    I... cpu_feature_guard.cc] This TensorFlow       asks to rebuild
                              binary is optimized ... rebuild TensorFlow ...   TensorFlow (2 lines)
    first look for GPUs (in   E... cuda_platform.cc] failed call to cuInit:    error 303 is "no
    the import, inside absl's ... UNKNOWN ERROR (303)                          libcuda.so.1": only
    app.run)                                                                   dropped when it
                                                                               cannot be loaded
    first transpose of a      E... util.cc] oneDNN supports DT_BOOL only on    false on every CPU
    bool or integer tensor    platforms with AVX-512. Falling back to the      (see below)
                              default Eigen-based implementation if present.

The oneDNN line is wrong, not merely loud: `IsDataTypeSupportedByOneDNNOnThisCPU` (TensorFlow's
tensorflow/core/util/util.cc) answers yes for float32, for bfloat16, float16 and the quantized
types given the CPU features each needs, and no for bool and every plain integer type whatever
the CPU. So the line is printed at ERROR level on a CPU that has AVX-512 (this one: `lscpu` lists
avx512f, avx512bw, avx512_bf16), and what it announces, the Eigen kernel, is the kernel those
types always use. Our models transpose bool masks (BiLSTM, CRF); the line is printed once per
process (an absl::call_once in libtensorflow_framework), for the first such type.

No setting removes these lines without hiding real errors. TF_CPP_MIN_LOG_LEVEL leaves the
import-time lines at every level, 3 included (they come from absl's C++ LOG before Python could
call absl::InitializeLog, which nothing exposes), and the level that removes the two errors, 3,
removes every real C++ error with them. So each line is removed at the one step that prints it:
`filtered_stderr` points file descriptor 2 at a pipe for that step only (importing TensorFlow,
the first look for GPUs, one bool transpose done on purpose), and a small separate process
copies everything else to the real stderr, unchanged and in order: Python warnings, real C++
errors, and whatever a crash prints (the copying process holds the real stderr, so what this
process wrote arrives even if it dies inside the step). `TAGGER_TF_LOG_FILTER=0` turns the
filtering off.

It lives in data_pipeline/, the package every other one may import, because preprocessing's
worker processes import TensorFlow too (for its TFRecord writer). Nothing here imports
TensorFlow at module level.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence

FILTER_ENV = "TAGGER_TF_LOG_FILTER"  # "0": print TensorFlow's lines as it writes them

# The prefix absl gives a C++ log line before absl::InitializeLog (no local time, hence 0000):
# "I0000 00:00:1796656327.206891    4586 port.cc:153] ".
_CPP = r"{severity}\d{{4}} [\d:.]+ +\d+ {source}:\d+\] "


def _cpp_line(severity: str, source: str, message: str) -> str:
    return "^" + _CPP.format(severity=severity, source=source.replace(".", r"\.")) + message


IMPORT_NOISE = (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    r"STDERR$",
    _cpp_line("I", "port.cc", r"oneDNN custom operations are on\. "),
    _cpp_line("I", "cudart_stub.cc",
              r"Could not find cuda drivers on your machine, GPU will not be used\.$"),
    _cpp_line("I", "cpu_feature_guard.cc", r"This TensorFlow binary is optimized to use "
              r"available CPU instructions in performance-critical operations\.$"),
    r"^To enable the following instructions: [A-Za-z0-9_. ]+, in other operations, rebuild "
    r"TensorFlow with the appropriate compiler flags\.$",
)
NO_DRIVER_NOISE = (
    _cpp_line("E", "cuda_platform.cc", r"failed call to cuInit: .*\(303\)$"),
)
# Not bfloat16 or float16: for those the line can be true (a CPU without AVX-512).
ONEDNN_DTYPE_NOISE = (
    _cpp_line("E", "util.cc", r"oneDNN supports DT_(?!BFLOAT16 |HALF )[A-Z0-9_]+ only on "
              r"platforms with AVX-512\. Falling back to the default Eigen-based implementation "
              r"if present\.$"),
)

# The copying process: stdin (the pipe) to stdout (the real stderr), less the matching lines.
# It ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole process group): it ends when the
# last writer closes the pipe, after copying all of it.
_COPIER = r"""
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
drop = [re.compile(pattern.encode()) for pattern in sys.argv[1:]]
pending = b""
while True:
    chunk = os.read(0, 1 << 16)
    if not chunk:
        break
    *lines, pending = (pending + chunk).split(b"\n")
    kept = b"".join(line + b"\n" for line in lines
                    if not any(pattern.search(line) for pattern in drop))
    while kept:
        kept = kept[os.write(1, kept):]
if pending:
    os.write(1, pending)
"""
_COPIER_EXIT_WAIT_S = 10.0
_done: set[str] = set()  # the once-per-process steps already taken


@contextlib.contextmanager
def filtered_stderr(patterns: Sequence[str]) -> Iterator[None]:
    """Inside the block, lines written to file descriptor 2 that match a pattern are dropped.

    Everything written to descriptor 2 in the block (by C++ or Python code, or a child process
    started in it) goes through a separate copying process to the real stderr; lines that match
    one of `patterns` (regular expressions, searched in the line without its newline) are left
    out, all else is copied unchanged and in order. When the block ends, descriptor 2 is the real
    stderr again and the copy is complete (unless a child process still holds the pipe: then the
    copying goes on until that one ends). Without `patterns`, with TAGGER_TF_LOG_FILTER=0, or if
    the copying process cannot be started, nothing is filtered.
    """
    if not patterns or os.environ.get(FILTER_ENV, "1") == "0":
        yield
        return
    _flush_python_stderr()
    try:
        real_stderr = os.dup(2)
    except OSError:  # no descriptor 2 at all
        yield
        return
    read_end, write_end = os.pipe()
    try:
        copier = subprocess.Popen([sys.executable, "-I", "-S", "-c", _COPIER, *patterns],
                                  stdin=read_end, stdout=real_stderr, stderr=real_stderr)
    except OSError:
        for fd in (read_end, write_end, real_stderr):
            os.close(fd)
        yield
        return
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        _flush_python_stderr()
        os.dup2(real_stderr, 2)  # closes this process's last write end of the pipe
        os.close(real_stderr)
        with contextlib.suppress(subprocess.TimeoutExpired):
            copier.wait(timeout=_COPIER_EXIT_WAIT_S)


def _flush_python_stderr() -> None:
    """What Python buffered for descriptor 2 goes where it was written, before it is switched."""
    if sys.stderr is not None:
        sys.stderr.flush()


def import_tensorflow():
    """Imports TensorFlow (if no one has yet) without its import-time lines; returns the module.

    Call it before anything else imports TensorFlow: once it is imported, the lines were printed.
    """
    if "tensorflow" not in sys.modules:
        with filtered_stderr(IMPORT_NOISE + _no_driver_noise()):
            import tensorflow  # noqa: F401
    return sys.modules["tensorflow"]


@functools.cache
def nvidia_driver_loads() -> bool:
    """Whether this process can load the NVIDIA driver's CUDA library, libcuda.so.1 (Linux)."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def _no_driver_noise() -> tuple[str, ...]:
    """The cuInit line, when libcuda.so.1 cannot be loaded. A CUDA build prints it the first time
    it looks for GPUs: at its import when that runs inside absl's app.run (as in trainer.main),
    else at the first device listing."""
    return () if nvidia_driver_loads() else NO_DRIVER_NOISE


def cuda_without_driver() -> bool:
    """True for a CUDA build of TensorFlow on a machine without the NVIDIA driver's library:
    its cuInit must then fail with error 303, and no GPU can be used."""
    tf = import_tensorflow()
    return bool(tf.sysconfig.get_build_info().get("is_cuda_build")) and not nvidia_driver_loads()


def find_gpus() -> list:
    """`tf.config.list_physical_devices("GPU")`, without TensorFlow's cuInit error (303) when
    libcuda.so.1 cannot be loaded: the caller says, once, that there is no GPU and why.

    Listing physical devices does not initialise TensorFlow's logical devices, so the CPU can
    still be split (`trainer.runtime.split_cpu`) and a multi-worker strategy still be created.
    """
    tf = import_tensorflow()
    with filtered_stderr(() if "find_gpus" in _done else _no_driver_noise()):
        gpus = tf.config.list_physical_devices("GPU")
    _done.add("find_gpus")
    return gpus


def absorb_onednn_dtype_error() -> None:
    """Transposes a bool tensor on the CPU once, with TensorFlow's false oneDNN error filtered.

    TensorFlow prints that line once per process, at the first transpose (or other
    oneDNN-rewritten op) of a type oneDNN lacks, wherever in a model that is; doing it here, at
    a known step, uses up that one time. Call it after the distribution strategy is built: the
    op initialises TensorFlow's devices.
    """
    if "onednn_dtype" in _done:
        return
    tf = import_tensorflow()
    with filtered_stderr(ONEDNN_DTYPE_NOISE), tf.device("/CPU:0"):
        tf.transpose(tf.zeros([1, 2], tf.bool))
    _done.add("onednn_dtype")
