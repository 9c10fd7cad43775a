"""train_and_evaluate on a tiny corpus, in-process: the run directory a user would look at,
refusing a run directory of another config, fp16/bf16 runs, and preprocessing on demand."""

import json
import math
import pathlib

import pytest
import tensorflow as tf

from tests import trainer_testing as tt
from trainer import cache, checkpointing, config as config_lib, run_events
from trainer.loop import train_and_evaluate


def scalar_tags(run_dir):
    accumulator = run_events.RunEvents(run_dir)  # RUN_DIR and its split directories
    return accumulator, set(accumulator.Tags()["tensors"])


def test_tiny_run_writes_the_run_directory(tiny, tmp_path):
    run_dir = tmp_path / "run"
    results = train_and_evaluate(tt.make_config(tiny, run_dir, eval_every=3, export=True))
    assert results["step"] == 6 and 0.0 <= results["test"]["f1"] <= 1.0
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["train_steps"] == 6 and saved["head"] == "crf"
    assert json.loads((run_dir / "label_map.json").read_text())[0] == "O"
    assert (run_dir / "data_manifest.json").is_file()
    model_config = json.loads((run_dir / "model_config.json").read_text())  # what export reads
    assert model_config["label_map"] == json.loads((run_dir / "label_map.json").read_text())
    assert (model_config["head"], model_config["encoder_config"]["hidden_size"]) == ("crf", 32)
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith("ckpt-6")
    best = json.loads((run_dir / "best" / "best.json").read_text())
    assert results["test_checkpoint_step"] == best["step"]  # test is scored with the best model
    assert (run_dir / "export" / "saved_model.pb").is_file()  # trainer.export's end-of-run hook
    lines = (run_dir / "predictions_test.txt").read_text(encoding="utf-8").split("\n")
    first = lines[0].split(" ")
    assert len(first) == 3 and len(first[0]) == 1 and first[1][0] in "OBI"
    log = tt.train_log(run_dir)
    assert [r["step"] for r in log] == [3, 6]
    assert all(math.isfinite(r["loss"]) for r in log)
    assert set(log[0]["learning_rate"]) == {"bilstm", "head", "crf"}  # the encoder is frozen
    _, tags = scalar_tags(run_dir)
    for tag in ("train/loss", "train/lr/head", "train/grad_norm/crf", "train/tokens_per_s",
                "train/windows_per_s", "dev/f1", "dev/precision", "dev/recall",
                "dev/token_accuracy", "test/f1", "dev/f1/LOC"):
        assert tag in tags, tag

    # The same directory with a different run-defining flag is refused, naming the flag...
    with pytest.raises(checkpointing.RunDirectoryError, match="--batch_size"):
        train_and_evaluate(tt.make_config(tiny, run_dir, batch_size=4))
    # ...but a later --max_steps/--train_steps-compatible resume of the same run is accepted:
    # everything is done, so it only re-evaluates from the latest checkpoint.
    again = train_and_evaluate(tt.make_config(tiny, run_dir, eval_every=3, max_steps=6))
    assert again["step"] == 6 and again["test"]["f1"] == pytest.approx(results["test"]["f1"])


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_runs_have_finite_losses(tiny, tmp_path, precision):
    run_dir = tmp_path / precision
    train_and_evaluate(tt.make_config(tiny, run_dir, mixed_precision=precision, train_steps=4,
                                      steps_per_loop=2, log_every=2, encoder_learning_rate=1e-4))
    assert tf.keras.mixed_precision.global_policy().name == "float32"  # restored afterwards
    log = tt.train_log(run_dir)
    assert [r["step"] for r in log] == [2, 4]
    assert all(math.isfinite(r["loss"]) for r in log)
    accumulator, tags = scalar_tags(run_dir)
    if precision == "fp16":
        assert all(r["loss_scale"] > 0 for r in log)
        # Every TensorBoard item of the issue, from a real training run's event files.
        groups = ["embeddings", "encoder_layer_0", "encoder_layer_1", "bilstm", "head", "crf"]
        expected = ["train/loss", "train/loss_scale", "train/tokens_per_s",
                    "train/windows_per_s"]
        expected += [f"train/{kind}/{g}" for kind in ("lr", "grad_norm") for g in groups]
        expected += [f"{split}/{metric}{suffix}" for split in ("dev", "test")
                     for metric in ("f1", "precision", "recall")
                     for suffix in ("", "/LOC", "/ORG", "/PER")]
        expected += [f"{split}/{metric}" for split in ("dev", "test")
                     for metric in ("token_accuracy", "loss")]
        expected += ["dev/examples", "_hparams_/session_start_info"]
        assert sorted(set(expected) - tags) == []
        assert "crf/transitions" in accumulator.Tags()["images"] or "crf/transitions" in tags
        loss_scales = [tf.make_ndarray(e.tensor_proto) for e in
                       accumulator.Tensors("train/loss_scale")]
        assert loss_scales == [r["loss_scale"] for r in log]
    else:
        assert all(r["loss_scale"] is None for r in log)
        assert "train/loss_scale" not in tags


def test_preprocessing_runs_once_and_is_cached_by_fingerprint(tiny, tmp_path):
    paths, _, tokenizer = tiny
    config = config_lib.TrainConfig(
        train_file=str(paths["train"]), dev_file=str(paths["dev"]), test_file=str(paths["test"]),
        tokenizer=str(tokenizer), encoder_config="{}", max_seq_length=64, stride=16,
        data_cache_dir=str(tmp_path / "cache"))
    messages = []
    first = cache.ensure_preprocessed(config, log=messages.append)
    assert (pathlib.Path(first) / "manifest.json").is_file()
    assert cache.ensure_preprocessed(config, log=messages.append) == first
    assert messages[-1].startswith("reusing")
    other = cache.ensure_preprocessed(config.replace(stride=8), log=messages.append)
    assert other != first
