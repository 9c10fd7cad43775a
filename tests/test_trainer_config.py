"""Flags -> validated config: bad values fail at once naming the flag; flagfiles compose."""

import json

import pytest

from trainer import config as config_lib
from trainer.config import ConfigError

REPO = config_lib.REPO_ROOT


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("中 B-LOC\n国 I-LOC\n\n人 O\n", encoding="utf-8")
    return path


def base_args(corpus):
    return [f"--train_file={corpus}", f"--dev_file={corpus}", f"--test_file={corpus}",
            '--encoder_config={"num_hidden_layers": 2}', "--pretrained=",
            f"--tokenizer={corpus.parent}"]


@pytest.mark.parametrize("flag, value, message", [
    ("head", "mlp", "--head"),
    ("batch_size", "0", "--batch_size"),
    ("stride", "100", "--stride"),
    ("dropout", "1.5", "--dropout"),
    ("layer_decay", "0", "--layer_decay"),
    ("mixed_precision", "fp8", "--mixed_precision"),
])
def test_bad_value_names_the_flag(corpus, flag, value, message):
    with pytest.raises((ConfigError, Exception)) as error:
        config_lib.parse_flags(base_args(corpus) + [f"--{flag}={value}"])
    assert message.lstrip("-") in str(error.value)


def test_bad_combinations(corpus, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    cases = [
        (["--strategy=multi_worker"], "TF_CONFIG"),
        (["--strategy=mirrored", "--num_cpu_devices=3", "--batch_size=8"], "--batch_size"),
        (["--num_cpu_devices=2"], "--num_cpu_devices"),
        (["--warmup_steps=3", "--warmup_proportion=0.1"], "--warmup_steps"),
        (["--head_learning_rate=0", "--encoder_learning_rate=0"], "nothing trains"),
        (["--pretrained=/nonexistent/model"], "--pretrained"),
        (["--encoder=embedding", "--encoder_learning_rate=0"], "--encoder_learning_rate"),
    ]
    for extra, message in cases:
        with pytest.raises(ConfigError, match=message):
            config_lib.parse_flags(base_args(corpus) + extra)
    with pytest.raises(ConfigError, match="--train_file"):
        config_lib.parse_flags(base_args(corpus) + ["--train_file=/no/such/file"])


def test_shipped_flagfiles_parse_compose_and_command_line_overrides(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)  # nested --flagfile paths are relative to the repo root
    monkeypatch.setenv("TAGGER_SHARED_DIR", str(tmp_path / "shared"))
    for name in ("people_daily_proxy_train/example.train", "people_daily/example.dev",
                 "people_daily/example.test"):
        (tmp_path / "shared/data" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "shared/data" / name).write_text("中 O\n")
    for name in ("multilingual-e5-small-zh", "bert-base-chinese-vocab"):
        (tmp_path / "shared/models" / name).mkdir(parents=True, exist_ok=True)
    frozen = config_lib.parse_flags(["--flagfile=configs/frozen.flags", "--max_steps=3"])
    assert (frozen.encoder_learning_rate, frozen.hidden_layers, frozen.bilstm_units,
            frozen.head, frozen.max_seq_length) == (0.0, "concat", 128, "softmax", 100)
    assert frozen.bilstm_layers == 1 and frozen.num_hidden_layers_used == 4
    assert frozen.max_steps == 3
    assert frozen.train_file == str(tmp_path / "shared/data/people_daily_proxy_train/"
                                    "example.train")
    crf = config_lib.parse_flags(["--flagfile=configs/frozen_crf.flags", "--bilstm_units=64"])
    assert crf.head == "crf" and crf.bilstm_units == 64 and crf.hidden_layers == "concat"
    finetune = config_lib.parse_flags(["--flagfile=configs/finetune.flags"])
    assert 2e-5 <= finetune.encoder_learning_rate <= 5e-5
    assert finetune.head_learning_rate == 1e-3 and finetune.decay == "linear"
    assert finetune.warmup_proportion > 0 and finetune.weight_decay > 0
    assert config_lib.parse_flags(["--flagfile=configs/finetune_crf.flags"]).head == "crf"
    bilstm = config_lib.parse_flags(["--flagfile=configs/bilstm_crf.flags"])
    assert bilstm.encoder == "embedding" and not bilstm.pretrained and bilstm.head == "crf"


def test_config_is_frozen_and_round_trips_through_json(corpus, tmp_path):
    config = config_lib.parse_flags(base_args(corpus) + [f"--run_dir={tmp_path / 'run'}"])
    with pytest.raises(Exception):
        config.batch_size = 3
    (tmp_path / "run").mkdir()
    path = config_lib.write_config(config, tmp_path / "run")
    assert config_lib.TrainConfig(**json.loads(path.read_text())) == config
    assert "max_steps" not in config.identity() and "batch_size" in config.identity()


def test_hub_names_are_kept_and_paths_are_resolved(corpus):
    """`bert-base-chinese` or `hfl/rbt3` go to transformers as names; paths are resolved."""
    args = base_args(corpus)[:3] + ["--pretrained=bert-base-chinese"]
    config = config_lib.parse_flags(args)
    assert config.pretrained == "bert-base-chinese" and config.tokenizer == "bert-base-chinese"
    config = config_lib.parse_flags(args + ["--tokenizer=hfl/rbt3"])
    assert config.tokenizer == "hfl/rbt3"
    config = config_lib.parse_flags(base_args(corpus)[:-1] + ["--tokenizer=configs"])
    assert config.tokenizer == str(REPO / "configs")  # an existing directory under the repo
    with pytest.raises(ConfigError, match="--pretrained"):
        config_lib.parse_flags(args[:-1] + ["--pretrained=./no/such/model"])
