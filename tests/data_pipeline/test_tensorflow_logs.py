"""TensorFlow's false or meaningless log lines are left out at the step that prints them, and
nothing else is: other lines, their order, and what a dying process wrote all arrive."""

import os
import re
import signal
import subprocess
import sys

import pytest

from data_pipeline import tensorflow_logs
from tests.trainer_testing import REPO

# Verbatim from `python -m trainer.main --flagfile=configs/frozen.flags` before the filter
# (TensorFlow 2.21.0, 2-core AMD EPYC with AVX-512, no NVIDIA driver).
PREINIT = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ONEDNN_ON = ("I0000 00:00:1796656327.206891    4586 port.cc:153] oneDNN custom operations are "
             "on. You may see slightly different numerical results due to floating-point "
             "round-off errors from different computation orders. To turn them off, set the "
             "environment variable `TF_ENABLE_ONEDNN_OPTS=0`.")
CUDART = ("I0000 00:00:1796656327.207261    4586 cudart_stub.cc:31] Could not find cuda drivers "
          "on your machine, GPU will not be used.")
FEATURE_GUARD = ("I0000 00:00:1796656327.382214    4586 cpu_feature_guard.cc:227] This "
                 "TensorFlow binary is optimized to use available CPU instructions in "
                 "performance-critical operations.")
FEATURE_GUARD_2 = ("To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 "
                   "FMA, in other operations, rebuild TensorFlow with the appropriate compiler "
                   "flags.")
CUINIT = ("E0000 00:00:1796656329.580583    4586 cuda_platform.cc:52] failed call to cuInit: "
          "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")
DT_BOOL = ("E0000 00:00:1796656382.798565    4586 util.cc:131] oneDNN supports DT_BOOL only on "
           "platforms with AVX-512. Falling back to the default Eigen-based implementation if "
           "present.")


def dropped(line, patterns):
    return any(re.search(pattern, line) for pattern in patterns)


def test_the_patterns_match_tensorflows_lines_and_not_their_neighbours():
    for line in (PREINIT, ONEDNN_ON, CUDART, FEATURE_GUARD, FEATURE_GUARD_2):
        assert dropped(line, tensorflow_logs.IMPORT_NOISE), line
    assert dropped(CUINIT, tensorflow_logs.NO_DRIVER_NOISE)
    assert dropped(DT_BOOL, tensorflow_logs.ONEDNN_DTYPE_NOISE)
    assert dropped(DT_BOOL.replace("DT_BOOL", "DT_INT64"), tensorflow_logs.ONEDNN_DTYPE_NOISE)
    every = (tensorflow_logs.IMPORT_NOISE + tensorflow_logs.NO_DRIVER_NOISE
             + tensorflow_logs.ONEDNN_DTYPE_NOISE)
    kept = [
        CUINIT.replace("UNKNOWN ERROR (303)", "CUDA_ERROR_NO_DEVICE: no CUDA-capable device "
                       "is detected (100)"),                       # a driver that fails
        DT_BOOL.replace("DT_BOOL", "DT_BFLOAT16"),                 # can be true: no AVX-512
        DT_BOOL.replace("DT_BOOL", "DT_HALF"),
        ONEDNN_ON.replace("I0000", "W0000"),                       # another level
        CUDART.replace("cudart_stub.cc:31]", "cuda_driver.cc:31]"),  # another source
        "E0000 00:00:1796656382.798565    4586 util.cc:131] something else",
        "Traceback (most recent call last):",
        "I1207 15:12:13.862240 140491872750464 main.py:54] no GPU visible to TensorFlow",
    ]
    for line in kept:
        assert not dropped(line, every), line


# Writes through descriptor 2 (as C++ does) and sys.stderr (as Python does), inside and around
# the filtered step; argv[1] "abort" ends the process inside it.
WRITER = r"""
import os, sys
from data_pipeline import tensorflow_logs
noise = tensorflow_logs.IMPORT_NOISE + tensorflow_logs.ONEDNN_DTYPE_NOISE
print("before", file=sys.stderr)
with tensorflow_logs.filtered_stderr(noise):
    os.write(2, (sys.argv[2] + "\n").encode())
    print("python inside", file=sys.stderr)
    os.write(2, b"E0000 00:00:1.2    7 real.cc:1] a real error\n" + (sys.argv[3] + "\n").encode())
    if sys.argv[1] == "abort":
        os.write(2, b"F0000 00:00:1.3    7 real.cc:2] Check failed: x\n")
        os.abort()
    os.write(2, b"no newline at the end")
print("", file=sys.stderr)
print("after", file=sys.stderr)
"""


def run_writer(mode, env=None):
    return subprocess.run([sys.executable, "-c", WRITER, mode, PREINIT, DT_BOOL], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **(env or {})))


def test_only_the_listed_lines_are_dropped_and_the_rest_keeps_its_order():
    result = run_writer("normal")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ("before\npython inside\n"
                             "E0000 00:00:1.2    7 real.cc:1] a real error\n"
                             "no newline at the end\nafter\n")


def test_what_a_process_wrote_before_dying_inside_the_step_arrives():
    result = run_writer("abort")
    assert result.returncode == -signal.SIGABRT
    assert result.stderr == ("before\npython inside\n"
                             "E0000 00:00:1.2    7 real.cc:1] a real error\n"
                             "F0000 00:00:1.3    7 real.cc:2] Check failed: x\n")


def test_the_filter_can_be_turned_off():
    result = run_writer("normal", env={tensorflow_logs.FILTER_ENV: "0"})
    assert result.stderr == (f"before\n{PREINIT}\npython inside\n"
                             f"E0000 00:00:1.2    7 real.cc:1] a real error\n{DT_BOOL}\n"
                             "no newline at the end\nafter\n")


# trainer.main's steps: import, the GPU look-up, the strategy's bool transpose, then a model's.
START = """
import sys
from absl import app, logging
import trainer.main as m
from data_pipeline import tensorflow_logs as t

def main(argv):
    tf = t.import_tensorflow()
    logging.set_verbosity(logging.INFO)
    print("note:", m.note_missing_gpu())
    t.absorb_onednn_dtype_error()
    print(tf.function(lambda x: tf.transpose(x))(tf.zeros([2, 3], tf.bool)).shape)

if sys.argv[1] == "app.run":
    app.run(main, argv=sys.argv[:1])
else:
    main(sys.argv)
"""


@pytest.mark.parametrize("how", ["app.run", "plain"])
def test_tensorflow_starts_without_a_line_on_a_cpu_machine(how):
    """Inside absl's app.run (as in trainer.main) TensorFlow looks for GPUs while it is imported,
    outside only when asked: either way only our own note is printed (without an NVIDIA
    driver)."""
    if tensorflow_logs.nvidia_driver_loads():
        pytest.skip("this machine has an NVIDIA driver: TensorFlow's GPU lines are real")
    result = subprocess.run([sys.executable, "-c", START, how], cwd=REPO, capture_output=True,
                            text=True, timeout=300, check=True)
    note = "no GPU visible to TensorFlow: running on the CPU"
    if tensorflow_logs.cuda_without_driver():
        note += " (no NVIDIA driver: libcuda.so.1 cannot be loaded)"
    assert result.stdout == f"note: {note}\n(3, 2)\n"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    if how == "app.run":  # absl's own format: "I1207 15:44:15.751429 140330013952896 main.py:52]"
        assert re.fullmatch(rf"I\d{{4}} [\d:.]+ \d+ main\.py:\d+\] {re.escape(note)}", lines[0])
    else:
        assert lines[0] == f"INFO:absl:{note}"
