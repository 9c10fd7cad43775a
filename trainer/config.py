"""Every trainer setting, declared once, read from the flags and turned into a validated config.

`TrainConfig` is the one declaration: each field carries its default, its help text and its rule
(`models.config.setting`); the model's fields are inherited from `models.config.ModelSettings`, so
they are declared there and nowhere else. `define_flags()` generates one absl flag per field on a
`FlagValues` (the global `absl.flags.FLAGS` by default); `config_from_flags()` reads them once,
resolves paths, and validates values and combinations before anything heavy (TensorFlow devices,
preprocessing, model weights) is touched. A bad value raises `ConfigError` naming the flag and
what it accepts. Everything downstream takes the config, never the flags, so tests build a
`TrainConfig` directly or parse a flag list with `parse_flags([...])`.

Paths given as `../shared/...` (the read-only corpora and models) resolve against
`$TAGGER_SHARED_DIR` when it is set, else against the repository root, so a command works from
any directory. Other relative input paths resolve against the repository root too; the outputs
(`--run_dir`, `--data_cache_dir`) resolve against the current directory.

Why one file of about 500 lines: most of it is the declaration itself, one field per setting,
and the point of it is that every setting is declared in one place; the validation of their
combinations and the run-directory check read those fields and belong beside them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Sequence

from absl import flags

from data_pipeline import windows
from models.config import ModelSettings, SettingError, check_fields, fail, setting
from trainer.run_dir import CONFIG_FILE

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_PREFIX = "../shared/"

STRATEGIES = ("default", "mirrored", "multi_worker")
MIXED_PRECISION = ("auto", "none", "fp16", "bf16")
DECAYS = ("linear", "cosine", "constant")

# The command line's defaults where they differ from TrainConfig's: the shared example corpora
# and encoder, so that `python -m trainer.main` runs as it is. (In Python the corpus files are
# required, and no encoder is assumed.)
FLAG_DEFAULTS = {
    "train_file": "../shared/data/people_daily_proxy_train/example.train",
    "dev_file": "../shared/data/people_daily/example.dev",
    "test_file": "../shared/data/people_daily/example.test",
    "pretrained": "../shared/models/multilingual-e5-small-zh",
}

# Fields that control one invocation rather than define the run: changing them does not make a
# run directory "different" (you may resume a run with a later --max_steps or another log rate).
RUN_CONTROL_FIELDS = frozenset({
    "max_steps", "overwrite", "resume_mismatched", "progress_bar", "log_every", "steps_per_loop",
    "eval_every", "checkpoint_every", "keep_checkpoints", "eval_batch_size", "run_dir",
    "data_cache_dir", "manifest", "jit_compile", "num_cpu_devices", "strategy", "export",
    "feature_cache", "eval_every_epochs", "max_evaluations", "early_stopping_patience",
    "loss_upper_bound",
    "loss_upper_bound_factor", "recovery_max_trials", "recovery_lr_factor",
})


class ConfigError(ValueError):
    """A flag has a bad value, or flags are combined in a way that cannot work."""


def _factor_above_one_or_off(value: float) -> str | None:
    if 0.0 < value <= 1.0:
        return "expected 0 (off) or a factor > 1 over the median of recent losses"
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(ModelSettings):
    """The resolved, validated configuration of one training run.

    The model's fields (encoder, pretrained, ..., embedding_dim) come from `ModelSettings`.
    """

    # Data.
    train_file: str = setting(help="Training corpus (`char tag` or CoNLL columns).")
    dev_file: str = setting(help="Dev corpus, evaluated every --eval_every steps.")
    test_file: str = setting(help="Test corpus, evaluated once at the end.")
    tokenizer: str = setting(help="Tokenizer directory or hub name; defaults to --pretrained.")
    max_seq_length: int = setting(windows.MAX_SEQ_LENGTH,
                                  help="Pieces per window (incl. special tokens).")
    stride: int = setting(windows.STRIDE, help="Characters of overlap between windows of a long "
                          "sentence.")
    lowercase: bool = setting(False, help="Make the tokenizer lowercase its input (a cased "
                              "corpus with an uncased vocabulary such as bert-base-chinese's); "
                              "recorded in the manifest and the export, so serving lowercases "
                              "too.")
    data_cache_dir: str = setting("data_cache", help="Where preprocessed shards are cached, one "
                                  "sub-directory per fingerprint of the inputs.")
    manifest: str = setting("", help="Use this preprocessed directory (or manifest.json) instead "
                            "of preprocessing the corpus files.")
    # Optimisation.
    head_learning_rate: float = setting(1e-3, minimum=0, help="Peak learning rate of the head.")
    encoder_learning_rate: float = setting(0.0, minimum=0, help="Peak learning rate of the top "
                                           "encoder layer; 0 freezes the encoder (inference "
                                           "mode, not on the tape).")
    embeddings_learning_rate: float | None = setting(
        None, minimum=0, help="Encoder embeddings; default: --encoder_learning_rate * "
        "--layer_decay**num_layers.")
    layer_decay: float = setting(
        1.0, check=lambda v: None if 0.0 < v <= 1.0 else "expected a factor in (0, 1]",
        help="Layer-wise decay: layer i of L gets encoder_lr * decay**(L-1-i).")
    layer_mix_learning_rate: float | None = setting(None, minimum=0,
                                                    help="Scalar-mix weights; default: head.")
    bilstm_learning_rate: float | None = setting(None, minimum=0, help="BiLSTM; default: head.")
    crf_learning_rate: float | None = setting(None, minimum=0,
                                              help="CRF transitions; default: head.")
    warmup_steps: int = setting(0, minimum=0, help="Linear warmup steps (all groups).")
    warmup_proportion: float = setting(0.0, fraction=True,
                                       help="Warmup as a fraction of --train_steps.")
    decay: str = setting("linear", choices=DECAYS, help="Decay after warmup.")
    end_learning_rate_ratio: float = setting(
        0.0, minimum=0, check=lambda v: None if v <= 1.0 else "expected <= 1",
        help="Final lr as a fraction of the peak.")
    weight_decay: float = setting(0.01, minimum=0, help="AdamW decoupled weight decay (not on "
                                  "LayerNorm or bias).")
    adam_beta1: float = setting(0.9, help="Adam beta1.")  # both betas: checked in `validate`
    adam_beta2: float = setting(0.999, help="Adam beta2.")
    adam_epsilon: float = setting(
        1e-6, check=lambda v: None if v > 0 else "expected a positive number",
        help="Adam epsilon.")
    clip_norm: float = setting(1.0, minimum=0, help="Global-norm gradient clipping; 0 disables.")
    grad_accum_steps: int = setting(1, minimum=1, help="Micro-batches accumulated per update.")
    # Training schedule and input.
    batch_size: int = setting(32, minimum=1, help="Global batch size in windows (over all "
                              "replicas; per update it is batch_size * grad_accum_steps).")
    min_updates_per_epoch: int = setting(
        0, minimum=0, help="Halve --batch_size (down to --min_batch_size) while an epoch would "
        "have fewer than this many updates: a small corpus gets smaller batches (more, noisier "
        "updates an epoch); 0 = always --batch_size. trainer/schedule_plan.py.")
    min_batch_size: int = setting(16, minimum=1, help="The smallest batch that "
                                  "--min_updates_per_epoch halves --batch_size to.")
    train_steps: int = setting(0, minimum=0, help="Optimizer updates in the schedule; 0 derives "
                               "it from --epochs.")
    epochs: float = setting(1.0, help="Epochs when --train_steps=0.")
    min_train_steps: int = setting(0, minimum=0, help="With --train_steps=0, train at least this "
                                   "many updates however small the corpus (more epochs than "
                                   "--epochs; warmup and decay span them); 0 = no floor. "
                                   "trainer/schedule_plan.py.")
    seed: int = setting(42, minimum=0, check=lambda v: None if v < 2 ** 32 else
                        "expected a number < 2**32 (NumPy's seeds)",
                        help="Seed for initialisation, shuffling and dropout.")
    shuffle_buffer: int = setting(10000, minimum=0, help="Shuffle buffer in windows; 0 disables "
                                  "shuffling.")
    bucketing: bool = setting(True, help="Bucket batches by length (else pad to "
                              "--max_seq_length).")
    deterministic: bool = setting(False, help="tf.config.experimental.enable_op_determinism "
                                  "(bit-reproducible resumes).")
    # Runtime.
    strategy: str = setting("default", choices=STRATEGIES, help="tf.distribute strategy; "
                            "multi_worker reads TF_CONFIG.")
    num_cpu_devices: int = setting(0, minimum=0, help="Split the CPU into N logical devices "
                                   "(for --strategy=mirrored without GPUs).")
    mixed_precision: str = setting(
        "auto", choices=MIXED_PRECISION, help="auto: bf16 on GPUs of compute capability >= 8 "
        "and CPUs with AVX512_BF16/AMX, fp16 on older GPUs, else none (float32); fp16 uses "
        "dynamic loss scaling, bf16 needs none (trainer/precision.py).")
    jit_compile: bool = setting(False, help="XLA-compile the forward/backward pass (slower than "
                                "graph mode on CPU).")
    feature_cache: bool = setting(True, help="With a frozen encoder, compute its features once "
                                  "per split, store them on disk beside the data cache and train "
                                  "and evaluate from them (trainer/feature_cache.py).")
    # Run control (see RUN_CONTROL_FIELDS).
    run_dir: str = setting("runs/default", help="Run directory (config, checkpoints, events, "
                           "predictions).")
    max_steps: int = setting(0, minimum=0, help="Stop this invocation at this global step (the "
                             "schedule still spans --train_steps); 0 = no limit.")
    steps_per_loop: int = setting(20, minimum=1, help="Steps per tf.function call.")
    log_every: int = setting(20, minimum=1, help="Steps between TensorBoard training scalars.")
    eval_every: int = setting(0, minimum=0, help="Steps between dev evaluations; 0 = at the end "
                              "only.")
    eval_every_epochs: float = setting(0.0, minimum=0, help="Evaluate dev every this many epochs "
                                       "of the train split (e.g. 1: once per epoch, whatever the "
                                       "corpus size); replaces --eval_every when > 0.")
    max_evaluations: int = setting(0, minimum=0, help="At most this many dev evaluations during "
                                   "training: a longer schedule evaluates every "
                                   "ceil(steps / N) steps instead; 0 = no limit.")
    early_stopping_patience: int = setting(0, minimum=0, help="Stop when dev F1 has not improved "
                                           "for this many evaluations in a row (test then scores "
                                           "the best); 0 = train the whole schedule.")
    checkpoint_every: int = setting(500, minimum=1, help="Steps between checkpoints.")
    keep_checkpoints: int = setting(3, minimum=1, help="Checkpoints kept.")
    eval_batch_size: int = setting(64, minimum=1, help="Evaluation batch size.")
    overwrite: bool = setting(False, help="Delete an existing run directory first.")
    resume_mismatched: bool = setting(False, help="Resume a run directory whose config differs "
                                      "from this one.")
    progress_bar: bool = setting(True, help="Show a progress bar on the terminal.")
    export: bool = setting(True, help="At the end, export the best model as a SavedModel to "
                           "run_dir/export (trainer.export; a failed export only warns).")
    # Divergence (trainer/loop.py: detected before anything is saved).
    loss_upper_bound: float = setting(1e4, minimum=0, help="Training diverged when the mean loss "
                                      "per counted token of a --steps_per_loop call exceeds this "
                                      "(a NaN/inf loss or gradient always counts); checked "
                                      "before anything is saved. 0 = no absolute bound.")
    loss_upper_bound_factor: float = setting(
        1000.0, minimum=0, check=_factor_above_one_or_off, help="... or exceeds this many times "
        "the median of the recent losses (the last 50 calls; medians below 0.01 count as 0.01). "
        "0 = off.")
    recovery_max_trials: int = setting(0, minimum=0, help="On divergence: 0 stops with an error "
                                       "(the checkpoints on disk are all healthy); N > 0 "
                                       "restores the latest checkpoint and retries with the "
                                       "learning rates scaled by --recovery_lr_factor, at most N "
                                       "times over the run.")
    recovery_lr_factor: float = setting(
        0.5, check=lambda v: None if 0.0 < v < 1.0 else "expected a factor in (0, 1)",
        help="Learning-rate scale applied at each recovery (cumulative; kept in the "
        "checkpoints).")

    setting_prefix = "--"  # errors name the flags

    def __post_init__(self):
        try:
            check_fields(self, self.setting_prefix)
            validate(self)
        except SettingError as error:
            raise ConfigError(str(error)) from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Strict JSON (never NaN or Infinity; `validate` rejects those values anyway)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    def replace(self, **changes) -> "TrainConfig":
        """A copy with `changes` applied (and validated again)."""
        return dataclasses.replace(self, **changes)

    def identity(self) -> dict[str, Any]:
        """The fields that define the run (all but RUN_CONTROL_FIELDS), for run-dir reuse checks."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_CONTROL_FIELDS}

    @property
    def uses_bert(self) -> bool:
        return self.encoder == "bert"


def _fail(flag: str, value: Any, accepted: str) -> None:
    fail(flag, value, accepted, prefix="--")


def validate(config: TrainConfig) -> None:
    """The combinations of settings (each field's own rule is declared with it).

    Raises:
      SettingError: naming the flag(s); `TrainConfig` raises it as ConfigError.
    """
    if not 0.0 <= config.adam_beta1 < 1.0 or not 0.0 <= config.adam_beta2 < 1.0:
        _fail("adam_beta1/--adam_beta2", (config.adam_beta1, config.adam_beta2),
              "expected fractions in [0, 1)")
    if config.early_stopping_patience and not (config.eval_every or config.eval_every_epochs):
        raise ConfigError(f"--early_stopping_patience={config.early_stopping_patience} needs "
                          "evaluations during training: set --eval_every_epochs or --eval_every")
    if config.early_stopping_patience and config.strategy == "multi_worker":
        raise ConfigError("--early_stopping_patience does not apply to --strategy=multi_worker "
                          "(only the chief evaluates, so the workers could not stop together)")
    if config.warmup_steps and config.warmup_proportion:
        raise ConfigError("--warmup_steps and --warmup_proportion are both set: give one")
    if config.train_steps == 0 and config.epochs <= 0:
        _fail("epochs", config.epochs, "expected > 0 when --train_steps=0 (steps come from epochs)")
    problem = windows.window_settings_problem(config.max_seq_length, config.stride)
    if problem:
        _fail(*problem)
    if not config.uses_bert and config.encoder_learning_rate == 0 \
            and not config.embeddings_learning_rate:
        raise ConfigError("--encoder=embedding learns its embeddings from scratch: set "
                          "--encoder_learning_rate > 0 (a frozen random embedding tags nothing)")
    config.check_combinations()  # the model's: which of --pretrained/--encoder_config
    if config.head_learning_rate == 0 and config.encoder_learning_rate == 0:
        raise ConfigError("--head_learning_rate=0 and --encoder_learning_rate=0: nothing trains")
    # Distribution.
    replicas = 1
    if config.strategy == "mirrored":
        replicas = max(config.num_cpu_devices, 1)
    elif config.num_cpu_devices > 1:
        raise ConfigError(f"--num_cpu_devices={config.num_cpu_devices} only applies to "
                          f"--strategy=mirrored (got --strategy={config.strategy})")
    if config.strategy == "multi_worker":
        tf_config = os.environ.get("TF_CONFIG", "")
        try:
            cluster = json.loads(tf_config)["cluster"]
            replicas = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
        except (ValueError, KeyError, TypeError):
            raise ConfigError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                              "with a 'cluster' and a 'task' (see tf.distribute), got "
                              f"{tf_config!r}") from None
    if config.batch_size % replicas:
        _fail("batch_size", config.batch_size,
              f"the global batch must divide evenly over {replicas} replicas")


def resolve_input_path(path: str) -> str:
    """Resolves an input path: `../shared/...` via $TAGGER_SHARED_DIR, else the repo root."""
    if not path or os.path.isabs(path):
        return path
    shared = os.environ.get("TAGGER_SHARED_DIR")
    if shared and path.startswith(SHARED_PREFIX):
        return str(pathlib.Path(shared) / path[len(SHARED_PREFIX):])
    return str((REPO_ROOT / path).resolve())


def _is_hub_name(value: str) -> bool:
    """A model name such as `bert-base-chinese` or `hfl/rbt3` rather than a local directory.

    A value that names an existing directory (as given or under the repo root), or that reads as
    a path (`./x`, `../x`, `/x`, `~/x`), is a path.
    """
    if value.startswith((".", "/", "~")) or os.path.exists(value):
        return False
    if os.path.exists(resolve_input_path(value)):
        return False
    return value.count("/") <= 1


_DEFINE = {"str": flags.DEFINE_string, "int": flags.DEFINE_integer,
           "float": flags.DEFINE_float, "bool": flags.DEFINE_boolean}


def flag_default(field: dataclasses.Field) -> Any:
    """A field's command-line default: FLAG_DEFAULTS, else its own (None where it is required)."""
    if field.name in FLAG_DEFAULTS:
        return FLAG_DEFAULTS[field.name]
    return None if field.default is dataclasses.MISSING else field.default


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Declares one flag per TrainConfig field on `flag_values` (idempotent per FlagValues).

    The flag's type is the field's (`float | None` -> a float flag), its help and choices are the
    field's (`models.config.setting`), its default `flag_default(field)`.
    """
    if "train_file" in flag_values:
        return
    for field in dataclasses.fields(TrainConfig):
        default, help_text = flag_default(field), field.metadata["help"]
        if field.metadata["choices"]:
            flags.DEFINE_enum(field.name, default, list(field.metadata["choices"]), help_text,
                              flag_values=flag_values)
        else:
            kind = field.type.split("|")[0].strip()  # "str | None" -> "str"
            _DEFINE[kind](field.name, default, help_text, flag_values=flag_values)


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> TrainConfig:
    """Reads the parsed flags once and returns the validated config.

    Only reads the file system (no TensorFlow, no model, no preprocessing), so every error here
    comes at once.

    Raises:
      ConfigError: a value or combination is invalid, an input file does not exist, --manifest
        holds no finished preprocessing output, or --run_dir/--data_cache_dir cannot be a
        directory.
    """
    values = {field.name: flag_values[field.name].value
              for field in dataclasses.fields(TrainConfig)}
    if values["encoder"] == "embedding":
        # The flag's default names a BERT directory; only a value the user gave is an error
        # (`--pretrained=` as in configs/bilstm_crf.flags says "none" explicitly).
        flag = flag_values["pretrained"]
        if values["pretrained"] and (flag.present or flag.value != flag.default):
            raise ConfigError(f"--pretrained={values['pretrained']!r} does not apply to "
                              f"--encoder=embedding (its embeddings are learned from scratch; "
                              f"the vocabulary comes from --tokenizer): drop it or give "
                              f"--pretrained=")
        values["pretrained"] = ""
    for name in ("train_file", "dev_file", "test_file", "pretrained", "encoder_config",
                 "tokenizer", "manifest"):
        value = values[name]
        if not value or value.lstrip().startswith("{"):
            continue
        if name in ("pretrained", "tokenizer") and _is_hub_name(value):
            continue  # e.g. bert-base-chinese or hfl/rbt3: transformers resolves it
        values[name] = resolve_input_path(value)
    tokenizer_given = bool(values["tokenizer"])
    if not tokenizer_given:
        values["tokenizer"] = values["pretrained"]
    if not values["tokenizer"]:
        raise ConfigError("--tokenizer is required when --pretrained is not given")
    for name in ("run_dir", "data_cache_dir"):
        values[name] = os.path.abspath(values[name])
        _check_output_directory(name, values[name])
    if values["manifest"]:
        _check_manifest(values["manifest"])
    else:
        for name in ("train_file", "dev_file", "test_file"):
            path = values[name]
            if os.path.isdir(path):
                raise ConfigError(f"--{name}={path!r} is a directory, expected a file")
            if not os.path.isfile(path):
                raise ConfigError(f"--{name}={path!r}: no such file")
    _check_encoder_config(values["encoder_config"])
    for name in ("pretrained", "tokenizer"):
        path = values[name]
        if path and not _is_hub_name(path):
            if not os.path.exists(path):
                raise ConfigError(f"--{name}={path!r}: no such directory")
            if not os.path.isdir(path):
                raise ConfigError(f"--{name}={path!r} is a file, expected a directory (of a "
                                  f"transformers model or tokenizer) or a hub name")
    _check_pretrained_files(values, tokenizer_given=tokenizer_given)
    return TrainConfig(**values)


def _check_pretrained_files(values: dict, *, tokenizer_given: bool) -> None:
    """A local --pretrained holds a config and weights this project loads, a local tokenizer
    directory tokenizer files: said here, before the data or the run directory is touched."""
    from data_pipeline.tokenization import tokenizer_directory_problem
    from models.pretrained_files import pretrained_directory_problem

    pretrained, tokenizer = values["pretrained"], values["tokenizer"]
    if pretrained and not _is_hub_name(pretrained):
        problem = pretrained_directory_problem(pretrained)
        if problem:
            raise ConfigError(f"--pretrained={pretrained!r}: {problem}")
    if tokenizer and not _is_hub_name(tokenizer):
        problem = tokenizer_directory_problem(tokenizer)
        if problem and tokenizer_given:
            raise ConfigError(f"--tokenizer={tokenizer!r}: {problem}")
        if problem:
            raise ConfigError(f"--pretrained={tokenizer!r} is also the tokenizer (no --tokenizer "
                              f"given), but {problem}; add them there, or give --tokenizer=DIR")


def _check_encoder_config(value: str) -> None:
    """--encoder_config: inline JSON of an object, a JSON file of one, or a config directory.

    Read here, before any work: the trainer parses it only when it builds the model.
    """
    if not value:
        return
    inline = value.lstrip().startswith("{")
    if not inline and os.path.isdir(value):
        return  # a transformers config directory: transformers reads its config.json
    if not inline and not os.path.isfile(value):
        raise ConfigError(f"--encoder_config={value!r}: no such file or directory (expected "
                          f"inline JSON such as '{{\"num_hidden_layers\": 2}}', a JSON file or "
                          f"a config directory)")
    try:
        text = value if inline else pathlib.Path(value).read_text(encoding="utf-8")
        parsed = json.loads(text)
    except (OSError, ValueError) as error:
        raise ConfigError(f"--encoder_config={value!r} is not a readable JSON object: "
                          f"{error}") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"--encoder_config={value!r} holds {type(parsed).__name__} JSON, "
                          f"expected an object of config values")


def _check_output_directory(name: str, path: str) -> None:
    """--run_dir / --data_cache_dir: a directory, or creatable as one (no file in the way)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--{name}={path!r} is a file, expected a directory")
    parent = os.path.dirname(path)  # `path` is absolute: the loop ends at "/" at the latest
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"--{name}={path!r} cannot be created: {parent!r} is a file")


_SPLITS = ("train", "dev", "test")


def _check_manifest(path: str) -> None:
    """--manifest: a finished preprocessing output (a directory with manifest.json, or the file).

    Read with `data_pipeline.manifest.load_manifest` (standard library only), so a directory
    without a manifest, a damaged manifest or a missing split fails here, before TensorFlow.
    """
    from data_pipeline.manifest import MANIFEST_NAME, load_manifest

    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, MANIFEST_NAME)):
            raise ConfigError(f"--manifest={path!r}: no {MANIFEST_NAME} in this directory (run "
                              f"`python -m data_pipeline.preprocess` first; a directory without "
                              f"{MANIFEST_NAME} is not finished)")
    elif not os.path.exists(path):
        raise ConfigError(f"--manifest={path!r}: no such directory")
    elif os.path.basename(path) != MANIFEST_NAME:
        raise ConfigError(f"--manifest={path!r} is a file but not a {MANIFEST_NAME}: give the "
                          f"preprocessed directory or its {MANIFEST_NAME}")
    try:
        manifest = load_manifest(path)
    except (OSError, ValueError) as error:
        raise ConfigError(f"--manifest={path!r}: {error}") from None
    missing = [split for split in _SPLITS if split not in manifest["splits"]]
    if missing:
        raise ConfigError(f"--manifest={path!r} has no {' or '.join(missing)} split (it has "
                          f"{sorted(manifest['splits'])}); training needs train, dev and test")


def run_dir_differences(config: TrainConfig, run_dir: str | os.PathLike | None = None
                        ) -> list[str] | None:
    """Is RUN_DIR (default: config.run_dir) this run? The one place that decides it.

    Returns:
      None when RUN_DIR holds no run (no config.json); else '--name: old -> new' for every
      run-defining field that differs (fields outside RUN_CONTROL_FIELDS), [] for the same run.
      With --mixed_precision=auto the precision is left out: it is known only once TensorFlow
      sees the hardware, and the trainer asks again with the resolved one.

    Raises:
      ConfigError: config.json exists but cannot be read as a JSON object.
    """
    run_dir = config.run_dir if run_dir is None else run_dir
    path = pathlib.Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        raise ConfigError(f"--run_dir={str(run_dir)!r}: cannot read {path} ({error}); use "
                          f"another --run_dir, or --overwrite to start afresh") from None
    ignored = set(RUN_CONTROL_FIELDS)
    if config.mixed_precision == "auto":
        ignored.add("mixed_precision")
    return config_differences(old, config.to_dict(), ignored=ignored)


def different_run_message(run_dir: str | os.PathLike, differences: list[str]) -> str:
    """What to say when RUN_DIR holds a run with a different config."""
    return (f"--run_dir={str(run_dir)!r} was created with a different config "
            f"({'; '.join(differences)}). Use another --run_dir, --overwrite to start afresh, "
            f"or --resume_mismatched to continue it with the new config.")


def check_run_dir(config: TrainConfig) -> None:
    """Refuses, before TensorFlow is imported, a run directory that holds a different run
    (`run_dir_differences`), unless --overwrite or --resume_mismatched.

    Raises:
      ConfigError: naming the differing flags, or an unreadable config.json.
    """
    if config.overwrite or config.resume_mismatched:
        return
    differences = run_dir_differences(config)
    if differences:
        raise ConfigError(different_run_message(config.run_dir, differences))


def config_differences(old: dict, new: dict, *,
                       ignored: frozenset | set = RUN_CONTROL_FIELDS) -> list[str]:
    """'--name: old -> new' for every run-defining field that differs.

    A field `old` lacks (a setting added since that config.json was written) counts as its
    default, so adding a setting does not make every earlier run directory "different".
    """
    defaults = {field.name: field.default for field in dataclasses.fields(TrainConfig)
                if field.default is not dataclasses.MISSING}
    old = {**{name: value for name, value in defaults.items() if name in new}, **old}
    return [f"--{name}: {old.get(name)!r} -> {new.get(name)!r}"
            for name in sorted((set(old) | set(new)) - ignored)
            if old.get(name) != new.get(name)]


def parse_flags(argv: Sequence[str]) -> TrainConfig:
    """Parses `argv` (without the program name) on a fresh FlagValues; for tests and tools."""
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    flag_values(["trainer"] + list(argv))
    return config_from_flags(flag_values)


def write_config(config: TrainConfig, run_dir: str | os.PathLike) -> pathlib.Path:
    """Writes the resolved config to `run_dir/config.json` (atomically)."""
    path = pathlib.Path(run_dir) / CONFIG_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(config.to_json())
    os.replace(tmp, path)
    return path
