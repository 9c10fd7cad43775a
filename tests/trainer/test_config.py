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
    # tmp_path is also --tokenizer (base_args): a WordPiece vocabulary makes it one.
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n中\n国\n人\n", encoding="utf-8")
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
        for file in ("config.json", "tf_model.h5", "tokenizer.json"):  # what the config checks
            (tmp_path / "shared/models" / name / file).write_text("{}")
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
    # 1e-4: measured in docs/finetune_4k_study.md (3e-5 left e5-small at test F1 0.34 where
    # 1e-4 reached 0.64); well below the 1e-3 that wrecks a pretrained encoder.
    assert finetune.encoder_learning_rate == 1e-4 and finetune.layer_decay == 0.9
    assert finetune.head_learning_rate == 1e-3 and finetune.decay == "linear"
    assert finetune.warmup_proportion > 0 and finetune.weight_decay > 0
    # 5 epochs: finetune_crf's dev F1 rose until epoch 5 (0.919; 0.886 after the 2 shipped before)
    assert finetune.epochs == 5 and finetune.early_stopping_patience == 2
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
    # An existing directory under the repo is resolved there (and then checked: no tokenizer).
    with pytest.raises(ConfigError, match=rf"^--tokenizer='{REPO / 'configs'}': .* holds no "
                                          rf"tokenizer files"):
        config_lib.parse_flags(base_args(corpus)[:-1] + ["--tokenizer=configs"])
    with pytest.raises(ConfigError, match="--pretrained"):
        config_lib.parse_flags(args[:-1] + ["--pretrained=./no/such/model"])


@pytest.mark.parametrize("flag, value", [
    ("head_learning_rate", "nan"),      # NaN compares false: it silently froze the head
    ("clip_norm", "inf"),
    ("encoder_learning_rate", "inf"),
    ("crf_learning_rate", "nan"),
    ("adam_epsilon", "nan"),
    ("end_learning_rate_ratio", "nan"),
    ("epochs", "inf"),
    ("weight_decay", "inf"),
    ("warmup_proportion", "nan"),
])
def test_non_finite_numbers_are_rejected_naming_the_flag(corpus, flag, value):
    with pytest.raises(ConfigError, match=rf"^--{flag}={value} is invalid: expected a finite"):
        config_lib.parse_flags(base_args(corpus) + [f"--{flag}={value}"])


def test_config_json_is_strict(corpus, tmp_path):
    config = config_lib.parse_flags(base_args(corpus))

    def reject(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    assert json.loads(config.to_json(), parse_constant=reject) == config.to_dict()
    object.__setattr__(config, "clip_norm", float("nan"))  # past validation, as a bug would
    with pytest.raises(ValueError):
        config.to_json()


def test_manifest_run_dir_and_input_paths_are_checked_before_anything_runs(corpus, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"^--manifest='.*empty': no manifest.json"):
        config_lib.parse_flags(base_args(corpus) + [f"--manifest={empty}"])
    with pytest.raises(ConfigError, match="--manifest=.*no such directory"):
        config_lib.parse_flags(base_args(corpus) + [f"--manifest={tmp_path / 'nope'}"])
    (empty / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match="--manifest=.*not valid JSON"):
        config_lib.parse_flags(base_args(corpus) + [f"--manifest={empty}"])
    manifest = {"format_version": 1, "label_map": ["O"], "max_seq_length": 8, "stride": 0,
                "compression": "", "tokenizer": {}, "splits": {"train": {}, "dev": {}}}
    (empty / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="--manifest=.*has no test split"):
        config_lib.parse_flags(base_args(corpus) + [f"--manifest={empty / 'manifest.json'}"])
    manifest["splits"]["test"] = {}
    (empty / "manifest.json").write_text(json.dumps(manifest))
    assert config_lib.parse_flags(base_args(corpus) + [f"--manifest={empty}"]).manifest == \
        str(empty)

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=r"^--run_dir='.*a_file' is a file, expected a dir"):
        config_lib.parse_flags(base_args(corpus) + [f"--run_dir={a_file}"])
    with pytest.raises(ConfigError, match=r"^--data_cache_dir=.*cannot be created: .*is a file"):
        config_lib.parse_flags(base_args(corpus) + [f"--data_cache_dir={a_file}/x/y"])
    with pytest.raises(ConfigError, match=r"^--dev_file='.*' is a directory, expected a file"):
        config_lib.parse_flags(base_args(corpus) + [f"--dev_file={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^--tokenizer='.*a_file' is a file, expected a dir"):
        config_lib.parse_flags(base_args(corpus)[:-1] + [f"--tokenizer={a_file}"])


def test_pretrained_with_the_embedding_encoder_is_an_error(corpus):
    args = base_args(corpus)[:3] + [f"--tokenizer={corpus.parent}", "--encoder=embedding",
                                    "--encoder_learning_rate=1e-3"]
    with pytest.raises(ConfigError, match=r"^--pretrained='bert-base-chinese' does not apply to "
                                          r"--encoder=embedding"):
        config_lib.parse_flags(args + ["--pretrained=bert-base-chinese"])
    # The flag's default (a BERT directory) and an explicit `--pretrained=` are fine.
    assert config_lib.parse_flags(args).pretrained == ""
    assert config_lib.parse_flags(args + ["--pretrained="]).pretrained == ""


def test_run_directory_of_another_run_is_refused_before_tensorflow(corpus, tmp_path):
    run_dir = tmp_path / "run"
    args = base_args(corpus) + [f"--run_dir={run_dir}", "--mixed_precision=none"]
    config = config_lib.parse_flags(args)
    config_lib.check_run_dir(config)  # no directory yet
    run_dir.mkdir()
    config_lib.write_config(config, run_dir)
    config_lib.check_run_dir(config_lib.parse_flags(args + ["--max_steps=7"]))  # run control
    changed = config_lib.parse_flags(args + ["--batch_size=16"])
    with pytest.raises(ConfigError, match=r"different config \(--batch_size: 32 -> 16\)"):
        config_lib.check_run_dir(changed)
    config_lib.check_run_dir(changed.replace(overwrite=True))
    config_lib.check_run_dir(changed.replace(resume_mismatched=True))
    # mixed_precision=auto is resolved by TensorFlow later, so it is not compared here.
    config_lib.check_run_dir(config.replace(mixed_precision="auto"))
    (run_dir / "config.json").write_text("{broken")
    with pytest.raises(ConfigError, match="cannot read .*config.json"):
        config_lib.check_run_dir(config)


def test_every_flag_comes_from_the_one_declaration():
    """Each flag's type, default, help and choices are its TrainConfig field's; the model's fields
    are models.config.ModelSettings' own (inherited, not declared a second time)."""
    import dataclasses

    from absl import flags

    from models.config import ModelSettings, TaggerConfig

    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    fields = {field.name: field for field in dataclasses.fields(config_lib.TrainConfig)}
    assert set(flag_values) == set(fields)
    kinds = {"str": flags.ArgumentParser, "int": flags.IntegerParser, "float": flags.FloatParser,
             "bool": flags.BooleanParser}
    for name, field in fields.items():
        flag = flag_values[name]
        default = None if field.default is dataclasses.MISSING else field.default
        assert flag.default == config_lib.FLAG_DEFAULTS.get(name, default), name
        assert field.metadata["help"], name
        if field.metadata["choices"]:
            choices = list(field.metadata["choices"])
            assert flag.parser.enum_values == choices, name
            assert flag.help == f"<{'|'.join(choices)}>: {field.metadata['help']}", name
            assert field.default in field.metadata["choices"], name
        else:
            assert flag.help == field.metadata["help"], name
            assert type(flag.parser) is kinds[field.type.split("|")[0].strip()], name
    assert set(config_lib.FLAG_DEFAULTS) == {"train_file", "dev_file", "test_file", "pretrained"}
    for field in dataclasses.fields(ModelSettings):
        assert fields[field.name] is field  # the very same declaration
        assert {f.name: f for f in dataclasses.fields(TaggerConfig)}[field.name] is field


def test_flag_and_python_api_name_the_same_rule(corpus):
    """One rule, two spellings of its name: `--dropout=...` as a flag, `dropout=...` in Python."""
    from models.config import TaggerConfig

    with pytest.raises(ConfigError, match=r"^--dropout=1.5 is invalid: expected a fraction"):
        config_lib.parse_flags(base_args(corpus) + ["--dropout=1.5"])
    with pytest.raises(ValueError, match=r"^dropout=1.5 is invalid: expected a fraction"):
        TaggerConfig(encoder_config={}, num_tags=3, dropout=1.5)
    with pytest.raises(ConfigError, match=r"^--max_seq_length=600 is invalid: expected 8\.\.512"):
        config_lib.parse_flags(base_args(corpus) + ["--max_seq_length=600"])
    from data_pipeline.preprocess import preprocess

    with pytest.raises(ValueError, match=r"^max_seq_length=600 is invalid: expected 8\.\.512"):
        preprocess({"train": str(corpus)}, corpus.parent / "out", "t", max_seq_length=600)


def test_a_setting_added_later_reads_as_its_default_in_an_old_run_directory(corpus, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = config_lib.parse_flags(base_args(corpus) + [f"--run_dir={run_dir}",
                                                         "--mixed_precision=none"])
    old = config.to_dict()
    del old["lowercase"]  # config.json of a run made before --lowercase existed
    (run_dir / "config.json").write_text(json.dumps(old))
    config_lib.check_run_dir(config)
    with pytest.raises(ConfigError, match=r"--lowercase: False -> True"):
        config_lib.check_run_dir(config.replace(lowercase=True))
