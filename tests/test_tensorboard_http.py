"""Starts a real `tensorboard` on 127.0.0.1 and finds the run's tags through its HTTP API."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.test_summaries import EVAL_STEPS, REQUIRED_SCALARS, TRAIN_STEPS, write_example_run

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def get_json(port: int, path: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{HOST}:{port}{path}", data=data,
                                     headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read().decode("utf-8"))


def test_tensorboard_serves_every_tag(tmp_path):
    logdir = tmp_path / "runs"
    run_dir = logdir / "frozen_crf"
    expected = write_example_run(run_dir)
    port = free_port()
    log_path = tmp_path / "tensorboard.log"
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", HOST,
             "--port", str(port), "--load_fast", "false", "--reload_interval", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        scalar_tags: dict = {}
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"tensorboard exited with {process.returncode}:\n"
                            f"{log_path.read_text(errors='replace')[-3000:]}")
            try:
                scalar_tags = get_json(port, "/data/plugin/scalars/tags").get("frozen_crf", {})
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                scalar_tags = {}
            if set(REQUIRED_SCALARS) <= set(scalar_tags):
                break
            time.sleep(0.25)
        else:
            log_tail = log_path.read_text(errors="replace")[-3000:]
            pytest.fail(f"tensorboard did not serve the scalar tags within {STARTUP_TIMEOUT_S} s;"
                        f" got {sorted(scalar_tags)}\n{log_tail}")

        assert get_json(port, "/data/runs") == ["frozen_crf"]
        assert set(scalar_tags) == set(expected)

        # The time-series dashboard (TensorBoard's default view) sees the same scalars.
        timeseries = get_json(port, "/data/plugin/timeseries/tags")
        assert set(timeseries["scalars"]["runTagInfo"]["frozen_crf"]) == set(expected)

        # Values, not only names.
        query = urllib.parse.urlencode({"run": "frozen_crf", "tag": "train/loss"})
        points = get_json(port, f"/data/plugin/scalars/scalars?{query}")
        assert [step for _, step, _ in points] == list(TRAIN_STEPS)
        assert [value for _, _, value in points] == pytest.approx(
            [expected["train/loss"][s] for s in TRAIN_STEPS], rel=1e-6)
        query = urllib.parse.urlencode({"run": "frozen_crf", "tag": "dev/f1/PER"})
        points = get_json(port, f"/data/plugin/scalars/scalars?{query}")
        assert [(step, value) for _, step, value in points] == [
            (s, pytest.approx(expected["dev/f1/PER"][s], rel=1e-6)) for s in EVAL_STEPS]

        assert "crf/transitions" in get_json(port, "/data/plugin/images/tags")["frozen_crf"]
        assert "dev/examples" in get_json(port, "/data/plugin/text/tags")["frozen_crf"]
        experiment = get_json(port, "/data/plugin/hparams/experiment", {"experimentName": ""})
        names = {info["name"] for info in experiment["hparamInfos"]}
        assert {"model.encoder", "optimizer.head_lr", "freeze_encoder"} <= names
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
