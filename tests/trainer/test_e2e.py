"""The real entry point on the real data and model: `python -m trainer.main
--flagfile=configs/frozen.flags` (and frozen_crf.flags) with multilingual-e5-small-zh, the
People's Daily proxy train split (preprocessed on demand once, then reused from the cache), and
the original dev/test files (cut to their first sentences here so that evaluating with the
12-layer encoder stays quick)."""

import json
import pathlib
import re

import pytest
import tensorflow as tf

from data_pipeline import tensorflow_logs
from tests import trainer_testing as tt

EVAL_SENTENCES = 150


def head_of_corpus(path, count, out_path):
    sentences = [s for s in pathlib.Path(path).read_text(encoding="utf-8").split("\n\n")
                 if s.strip()]
    out_path.write_text("\n\n".join(sentences[:count]) + "\n", encoding="utf-8")
    return out_path


@pytest.fixture(scope="module")
def real_data(shared_dir, tmp_path_factory):
    """dev/test cuts and a preprocessing cache shared by the tests of this module."""
    out = tmp_path_factory.mktemp("real")
    people_daily = shared_dir / "data" / "people_daily"
    dev = head_of_corpus(people_daily / "example.dev", EVAL_SENTENCES, out / "dev.txt")
    test = head_of_corpus(people_daily / "example.test", EVAL_SENTENCES, out / "test.txt")
    return dev, test, out / "cache"


@pytest.mark.slow
def test_frozen_flagfile_end_to_end(shared_dir, real_data, tmp_path):
    dev, test, cache = real_data
    run_dir = tmp_path / "run"
    args = ["--flagfile=configs/frozen.flags", "--train_steps=3", "--steps_per_loop=3",
            "--log_every=3", f"--run_dir={run_dir}", f"--data_cache_dir={cache}",
            f"--dev_file={dev}", f"--test_file={test}", "--eval_batch_size=64",
            "--noexport"]
    result = tt.run_main(args, env={"TAGGER_SHARED_DIR": str(shared_dir)}, timeout=900)
    assert "test f1" in result.stdout
    # Issue #24: on a CPU machine the shipped flagfile's run prints no warning or error, nor
    # TensorFlow's import-time lines, also not from preprocessing's worker processes (the 11.9 MB
    # train split is preprocessed by a pool of them).
    assert " processes\n" in result.stderr and "preprocessing: 1/" in result.stderr
    output = result.stdout + result.stderr
    if not tensorflow_logs.nvidia_driver_loads():
        assert tt.loud_lines(output) == []
    assert [line for line in output.splitlines()
            if any(re.search(noise, line) for noise in tensorflow_logs.IMPORT_NOISE)] == []

    config = json.loads((run_dir / "config.json").read_text())
    assert config["pretrained"].endswith("multilingual-e5-small-zh")
    assert config["train_file"].endswith("people_daily_proxy_train/example.train")
    assert (config["hidden_layers"], config["bilstm_units"], config["max_seq_length"]) == (
        "concat", 128, 100)
    manifest = json.loads((run_dir / "data_manifest.json").read_text())
    assert manifest["splits"]["train"]["counts"]["sentences"] == 45055
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith("ckpt-3")
    assert list(run_dir.glob("events.out.tfevents.*"))  # hparams, variables
    assert list((run_dir / "train").glob("events.out.tfevents.*"))
    assert list((run_dir / "dev").glob("events.out.tfevents.*"))
    predictions = (run_dir / "predictions_test.txt").read_text(encoding="utf-8")
    assert predictions.count("\n\n") == EVAL_SENTENCES
    assert all(len(line.split(" ")) == 3 for line in predictions.splitlines() if line)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["step"] == 3 and 0.0 <= results["test"]["f1"] <= 1.0
    # The shards are cached by the fingerprint of the inputs: exactly one preprocessed copy.
    assert len(list(cache.glob("*/manifest.json"))) == 1
    # 3 steps are far less than an epoch: the encoder runs in each step, no feature cache.
    assert "feature cache: not used: this run trains 3 steps, less than one epoch" in (
        result.stdout + result.stderr)
    assert not (cache / "features").exists()


@pytest.mark.slow
def test_short_frozen_bilstm_crf_run_beats_the_all_o_tagger(shared_dir, real_data, tmp_path):
    """Frozen e5, last 4 layers concatenated, BiLSTM 128, CRF: 80 updates of 16 sentences.

    Measured (2 cores): dev F1 0.207 (P 0.339, R 0.149) on the first 150 dev sentences after 80
    steps; predicting O everywhere scores 0. The floor leaves a factor 2 of margin.
    """
    from trainer import evaluation

    dev, test, cache = real_data
    run_dir = tmp_path / "run"
    args = ["--flagfile=configs/frozen_crf.flags", "--train_steps=80", "--steps_per_loop=20",
            "--log_every=20", "--batch_size=16", "--head_learning_rate=5e-3",
            "--crf_learning_rate=5e-2", "--warmup_proportion=0", f"--run_dir={run_dir}",
            f"--data_cache_dir={cache}", f"--dev_file={dev}", f"--test_file={test}",
            "--noexport"]
    tt.run_main(args, env={"TAGGER_SHARED_DIR": str(shared_dir)}, timeout=900)
    results = json.loads((run_dir / "results.json").read_text())
    gold = [line.split(" ")[1] for line in
            (run_dir / "predictions_dev.txt").read_text(encoding="utf-8").splitlines() if line]
    all_o = evaluation.entity_metrics(evaluation.count_entities([gold], [["O"] * len(gold)]))
    assert all_o["f1"] == 0.0
    assert results["dev"]["f1"] >= 0.10, results["dev"]
