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

from tests.trainer.test_summaries import (EVAL_STEPS, REQUIRED_SCALARS, TRAIN_STEPS,
                                          write_example_run)

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


def flat_tags(tags_by_run: dict, run: str) -> set[str]:
    """The tags of `run` and of its split runs ("run/train", ...) as flat names ("train/loss"),
    as `trainer.summaries` names them."""
    names = set()
    for name, tags in tags_by_run.items():
        if name == run:
            names.update(tags)
        elif name.startswith(run + "/"):
            names.update(f"{name[len(run) + 1:]}/{tag}" for tag in tags)
    return names


class TensorBoard:
    """A real `tensorboard` on 127.0.0.1 over `logdir` (Python data path, reloading every s)."""

    def __init__(self, logdir, log_path):
        self.port = free_port()
        self.log_path = log_path
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
                 HOST, "--port", str(self.port), "--load_fast", "false", "--reload_interval",
                 "1"], stdout=log, stderr=subprocess.STDOUT, env=env)

    def get(self, path: str, body: dict | None = None):
        return get_json(self.port, path, body)

    def wait_for(self, ready, what: str):
        """Polls `ready()` (a value or None) until it is not None; returns it."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        last = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"tensorboard exited with {self.process.returncode}:\n"
                            f"{self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                last = ready()
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                last = None
            if last is not None:
                return last
            time.sleep(0.25)
        pytest.fail(f"tensorboard did not serve {what} within {STARTUP_TIMEOUT_S} s\n"
                    f"{self.log_path.read_text(errors='replace')[-3000:]}")

    def close(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def test_tensorboard_serves_every_tag(tmp_path):
    logdir = tmp_path / "runs"
    run_dir = logdir / "frozen_crf"
    expected = write_example_run(run_dir)
    board = TensorBoard(logdir, tmp_path / "tensorboard.log")
    try:
        def every_scalar():
            # Each directory is a run TensorBoard loads on its own: wait for all four.
            tags = flat_tags(board.get("/data/plugin/scalars/tags"), "frozen_crf")
            loaded = len(board.get("/data/runs")) == 4
            return tags if loaded and set(REQUIRED_SCALARS) <= tags else None

        scalar_tags = board.wait_for(every_scalar, "the scalar tags of every run")
        # The run by its directory name, and one run per split directory under it.
        # TensorBoard lists runs by the wall time of their first event, not by name.
        assert sorted(board.get("/data/runs")) == ["frozen_crf", "frozen_crf/dev",
                                                   "frozen_crf/test", "frozen_crf/train"]
        assert set(scalar_tags) == set(expected)

        # The time-series dashboard (TensorBoard's default view) sees the same scalars.
        timeseries = board.get("/data/plugin/timeseries/tags")
        assert flat_tags(timeseries["scalars"]["runTagInfo"], "frozen_crf") == set(expected)

        # Values, not only names.
        query = urllib.parse.urlencode({"run": "frozen_crf/train", "tag": "loss"})
        points = board.get(f"/data/plugin/scalars/scalars?{query}")
        assert [step for _, step, _ in points] == list(TRAIN_STEPS)
        assert [value for _, _, value in points] == pytest.approx(
            [expected["train/loss"][s] for s in TRAIN_STEPS], rel=1e-6)
        query = urllib.parse.urlencode({"run": "frozen_crf/dev", "tag": "f1/PER"})
        points = board.get(f"/data/plugin/scalars/scalars?{query}")
        assert [(step, value) for _, step, value in points] == [
            (s, pytest.approx(expected["dev/f1/PER"][s], rel=1e-6)) for s in EVAL_STEPS]

        assert "crf/transitions" in board.get("/data/plugin/images/tags")["frozen_crf"]
        assert "examples" in board.get("/data/plugin/text/tags")["frozen_crf/dev"]
        experiment = board.get("/data/plugin/hparams/experiment", {"experimentName": ""})
        names = {info["name"] for info in experiment["hparamInfos"]}
        assert {"model.encoder", "optimizer.head_lr", "freeze_encoder"} <= names
    finally:
        board.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, people_daily_dir, bert_chinese_dir):
    from tests import trainer_testing as tt

    out = tmp_path_factory.mktemp("tiny_tensorboard")
    paths, manifest_dir = tt.preprocess_tiny(people_daily_dir, bert_chinese_dir, out)
    return paths, manifest_dir, bert_chinese_dir


def test_two_real_runs_side_by_side(tiny, tmp_path):
    """`tensorboard --logdir runs` over two short real runs (a frozen and a fine-tuned encoder):
    both listed by directory name, train and dev `loss` in one chart, both in HParams."""
    from tests import trainer_testing as tt
    from trainer import config as config_lib
    from trainer.loop import train_and_evaluate

    paths, manifest_dir, tokenizer = tiny
    logdir = tmp_path / "runs"
    overrides = {"frozen": {}, "finetune": {"encoder_learning_rate": 1e-4}}
    results = {}
    for name, extra in overrides.items():
        config = config_lib.parse_flags(tt.tiny_args(
            paths, manifest_dir, tokenizer, logdir / name, eval_every=3,
            data_cache_dir=tmp_path / "data_cache", **extra))
        results[name] = train_and_evaluate(config)
    train_steps = [3, 6]  # log_every 3, 6 steps
    dev_steps = [3, 6]  # eval_every 3, and the final evaluation (at 6: the same step)

    board = TensorBoard(logdir, tmp_path / "tensorboard.log")
    try:
        runs = [f"{name}/{split}" for name in ("finetune", "frozen")
                for split in ("dev", "test", "train")]

        def all_runs():  # each directory is a run TensorBoard loads on its own
            listed = board.get("/data/runs")
            return listed if set(runs) | {"finetune", "frozen"} <= set(listed) else None

        listed = board.wait_for(all_runs, "both runs")
        # Each run by its directory name (RUN_DIR: hparams, the variables table; its splits).
        assert sorted(listed) == sorted(runs + ["finetune", "frozen"])

        # `loss` is one tag in train/, dev/ and test/ of both runs: one chart, six series.
        scalar_tags = board.get("/data/plugin/scalars/tags")
        for run in runs:
            assert "loss" in scalar_tags[run], run
        for name in overrides:
            assert "f1" in scalar_tags[f"{name}/dev"] and "f1" in scalar_tags[f"{name}/test"]
        timeseries = board.get("/data/plugin/timeseries/tags")["scalars"]["runTagInfo"]
        assert {run for run, tags in timeseries.items() if "loss" in tags} == set(runs)
        for name in overrides:
            log = {r["step"]: r["loss"] for r in tt.train_log(logdir / name)}
            query = urllib.parse.urlencode({"run": f"{name}/train", "tag": "loss"})
            points = board.get(f"/data/plugin/scalars/scalars?{query}")
            assert [step for _, step, _ in points] == train_steps == sorted(log)
            assert [value for _, _, value in points] == pytest.approx(
                [log[s] for s in train_steps], rel=1e-6)
            query = urllib.parse.urlencode({"run": f"{name}/dev", "tag": "loss"})
            points = board.get(f"/data/plugin/scalars/scalars?{query}")
            assert [step for _, step, _ in points] == dev_steps
            assert points[-1][2] == pytest.approx(results[name]["dev"]["loss"], rel=1e-6)
            # Frozen groups visible: their learning rate, 0, once at step 0.
            query = urllib.parse.urlencode({"run": f"{name}/train", "tag": "lr/encoder_layer_0"})
            points = board.get(f"/data/plugin/scalars/scalars?{query}")
            if name == "frozen":
                assert [(step, value) for _, step, value in points] == [(0, 0.0)]
            else:
                assert [step for _, step, _ in points] == train_steps and points[0][2] > 0
            assert "variables" in board.get("/data/plugin/text/tags")[name]

        # HParams: both runs as sessions, side by side, with their dev/test metrics.
        experiment = board.get("/data/plugin/hparams/experiment", {"experimentName": ""})
        metrics = {(m["name"].get("group", ""), m["name"]["tag"])
                   for m in experiment["metricInfos"]}
        assert {("dev", "f1"), ("dev", "loss"), ("test", "f1")} <= metrics
        hparams = {info["name"] for info in experiment["hparamInfos"]}
        assert "encoder_learning_rate" in hparams
        groups = board.get("/data/plugin/hparams/session_groups", {
            "experimentName": "", "allowedStatuses": [
                "STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": [{"hparam": "encoder_learning_rate"},
                          {"metric": {"group": "dev", "tag": "f1"}}],
            "startIndex": 0, "sliceSize": 10})
        by_name = {g["name"]: g for g in groups["sessionGroups"]}
        assert set(by_name) == {"frozen", "finetune"}
        assert by_name["frozen"]["hparams"]["encoder_learning_rate"] == 0.0
        assert by_name["finetune"]["hparams"]["encoder_learning_rate"] == pytest.approx(1e-4)
        for name, group in by_name.items():
            [dev_f1] = [m for m in group["metricValues"]
                        if m["name"] == {"group": "dev", "tag": "f1"}]
            assert dev_f1["value"] == pytest.approx(results[name]["dev"]["f1"], abs=1e-6)
            assert dev_f1["trainingStep"] == 6
    finally:
        board.close()
