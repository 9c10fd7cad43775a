"""benchmarks/fault_injection.py with 3 cycles (a SIGKILL at a random moment, a SIGKILL inside
a checkpoint write, a SIGTERM at a random moment): each resumed run ends bit-identical to an
uninterrupted one, with each step logged once and nothing left behind."""

import os
import subprocess
import sys

import pytest

from tests import trainer_testing as tt


@pytest.mark.slow
def test_three_fault_cycles_end_like_an_uninterrupted_run(shared_dir, tmp_path):
    env = dict(os.environ, TAGGER_SHARED_DIR=str(shared_dir))
    result = subprocess.run(
        [sys.executable, "benchmarks/fault_injection.py", "--cycles=3", "--seed=11",
         f"--work_dir={tmp_path / 'work'}"],
        cwd=tt.REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    assert "3/3 cycles identical to the uninterrupted run" in result.stdout, result.stdout
    for fault in ("kill", "checkpoint_write", "sigterm"):
        assert f": {fault} " in result.stdout
    assert not (tmp_path / "work").exists()  # removed after a clean pass
