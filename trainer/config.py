"""Every trainer flag, read in one place and turned into a frozen, validated `TrainConfig`.

`define_flags()` declares the flags on a `FlagValues` (the global `absl.flags.FLAGS` by default);
`config_from_flags()` reads them once, resolves paths, and validates values and combinations
before anything heavy (TensorFlow devices, preprocessing, model weights) is touched. A bad value
raises `ConfigError` naming the flag and what it accepts. Everything downstream takes the config,
never the flags, so tests build a `TrainConfig` directly or parse a flag list with
`parse_flags([...])`.

Paths given as `../shared/...` (the read-only corpora and models) resolve against
`$TAGGER_SHARED_DIR` when it is set, else against the repository root, so a command works from
any directory. Other relative input paths resolve against the repository root too; the outputs
(`--run_dir`, `--data_cache_dir`) resolve against the current directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Sequence

from absl import flags

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_PREFIX = "../shared/"

STRATEGIES = ("default", "mirrored", "multi_worker")
MIXED_PRECISION = ("auto", "none", "fp16", "bf16")
ENCODERS = ("bert", "embedding")
HIDDEN_LAYERS = ("last", "concat", "mean", "scalar_mix")
HEADS = ("softmax", "crf")
DECAYS = ("linear", "cosine", "constant")

# Fields that control one invocation rather than define the run: changing them does not make a
# run directory "different" (you may resume a run with a later --max_steps or another log rate).
RUN_CONTROL_FIELDS = frozenset({
    "max_steps", "overwrite", "resume_mismatched", "progress_bar", "log_every", "steps_per_loop",
    "eval_every", "checkpoint_every", "keep_checkpoints", "eval_batch_size", "run_dir",
    "data_cache_dir", "manifest", "jit_compile", "num_cpu_devices", "strategy", "export",
    "feature_cache", "eval_every_epochs", "early_stopping_patience", "loss_upper_bound",
    "loss_upper_bound_factor", "recovery_max_trials", "recovery_lr_factor",
})


class ConfigError(ValueError):
    """A flag has a bad value, or flags are combined in a way that cannot work."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The resolved, validated configuration of one training run (see `define_flags` for docs)."""

    # Data.
    train_file: str
    dev_file: str
    test_file: str
    tokenizer: str
    max_seq_length: int = 128
    stride: int = 32
    data_cache_dir: str = "data_cache"
    manifest: str = ""
    # Model.
    encoder: str = "bert"
    pretrained: str = ""
    encoder_config: str = ""
    hidden_layers: str = "last"
    num_hidden_layers_used: int = 4
    bilstm_layers: int = 0
    bilstm_units: int = 128
    bilstm_dropout: float = 0.1
    head: str = "softmax"
    dropout: float = 0.1
    crf_constrain_transitions: bool = True
    embedding_dim: int = 128
    # Optimisation.
    head_learning_rate: float = 1e-3
    encoder_learning_rate: float = 0.0
    embeddings_learning_rate: float | None = None
    layer_decay: float = 1.0
    layer_mix_learning_rate: float | None = None
    bilstm_learning_rate: float | None = None
    crf_learning_rate: float | None = None
    warmup_steps: int = 0
    warmup_proportion: float = 0.0
    decay: str = "linear"
    end_learning_rate_ratio: float = 0.0
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-6
    clip_norm: float = 1.0
    grad_accum_steps: int = 1
    # Training schedule and input.
    batch_size: int = 32
    train_steps: int = 0
    epochs: float = 1.0
    seed: int = 42
    shuffle_buffer: int = 10000
    bucketing: bool = True
    deterministic: bool = False
    # Runtime.
    strategy: str = "default"
    num_cpu_devices: int = 0
    mixed_precision: str = "auto"
    jit_compile: bool = False
    feature_cache: bool = True
    # Run control (see RUN_CONTROL_FIELDS).
    run_dir: str = "runs/default"
    max_steps: int = 0
    steps_per_loop: int = 20
    log_every: int = 20
    eval_every: int = 0
    eval_every_epochs: float = 0.0
    early_stopping_patience: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    eval_batch_size: int = 64
    overwrite: bool = False
    resume_mismatched: bool = False
    progress_bar: bool = True
    export: bool = True
    # Divergence (trainer/loop.py: detected before anything is saved).
    loss_upper_bound: float = 1e4
    loss_upper_bound_factor: float = 1000.0
    recovery_max_trials: int = 0
    recovery_lr_factor: float = 0.5

    def __post_init__(self):
        validate(self)

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
    raise ConfigError(f"--{flag}={value!r} is invalid: {accepted}")


def _one_of(config: TrainConfig, name: str, choices: Sequence[str]) -> None:
    value = getattr(config, name)
    if value not in choices:
        _fail(name, value, "expected one of " + "|".join(choices))


def _at_least(config: TrainConfig, name: str, minimum: float) -> None:
    value = getattr(config, name)
    if value is None or value < minimum:
        _fail(name, value, f"expected a number >= {minimum}")


def validate(config: TrainConfig) -> None:
    """Checks single values and combinations; raises ConfigError naming the flag."""
    # NaN compares false with everything, so it would slip through every range check below
    # (--head_learning_rate=nan froze the head), and inf is no meaningful rate, norm, fraction or
    # epoch count either: no float field of the config accepts a non-finite value.
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            _fail(field.name, value, "expected a finite number")
    _one_of(config, "strategy", STRATEGIES)
    _one_of(config, "mixed_precision", MIXED_PRECISION)
    _one_of(config, "encoder", ENCODERS)
    _one_of(config, "hidden_layers", HIDDEN_LAYERS)
    _one_of(config, "head", HEADS)
    _one_of(config, "decay", DECAYS)
    for name in ("batch_size", "grad_accum_steps", "steps_per_loop", "log_every",
                 "keep_checkpoints", "eval_batch_size", "num_hidden_layers_used", "bilstm_units",
                 "embedding_dim", "checkpoint_every"):
        _at_least(config, name, 1)
    for name in ("train_steps", "max_steps", "eval_every", "warmup_steps", "bilstm_layers",
                 "eval_every_epochs", "early_stopping_patience",
                 "num_cpu_devices", "head_learning_rate", "encoder_learning_rate", "weight_decay",
                 "clip_norm", "shuffle_buffer", "end_learning_rate_ratio", "seed",
                 "loss_upper_bound", "loss_upper_bound_factor", "recovery_max_trials"):
        _at_least(config, name, 0)
    for name in ("embeddings_learning_rate", "layer_mix_learning_rate", "bilstm_learning_rate",
                 "crf_learning_rate"):
        if getattr(config, name) is not None:
            _at_least(config, name, 0)
    for name in ("dropout", "bilstm_dropout", "warmup_proportion"):
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            _fail(name, value, "expected a fraction in [0, 1)")
    if 0.0 < config.loss_upper_bound_factor <= 1.0:
        _fail("loss_upper_bound_factor", config.loss_upper_bound_factor,
              "expected 0 (off) or a factor > 1 over the median of recent losses")
    if not 0.0 < config.recovery_lr_factor < 1.0:
        _fail("recovery_lr_factor", config.recovery_lr_factor, "expected a factor in (0, 1)")
    if not 0.0 < config.layer_decay <= 1.0:
        _fail("layer_decay", config.layer_decay, "expected a factor in (0, 1]")
    if not 0.0 <= config.adam_beta1 < 1.0 or not 0.0 <= config.adam_beta2 < 1.0:
        _fail("adam_beta1/--adam_beta2", (config.adam_beta1, config.adam_beta2),
              "expected fractions in [0, 1)")
    if config.adam_epsilon <= 0:
        _fail("adam_epsilon", config.adam_epsilon, "expected a positive number")
    if config.end_learning_rate_ratio > 1.0:
        _fail("end_learning_rate_ratio", config.end_learning_rate_ratio, "expected <= 1")
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
    if not 8 <= config.max_seq_length <= 512:
        _fail("max_seq_length", config.max_seq_length, "expected 8..512 (BERT positions)")
    if not 0 <= config.stride < config.max_seq_length // 2:
        _fail("stride", config.stride, f"expected 0..{config.max_seq_length // 2 - 1} "
              "(the window overlap must leave room for new characters)")
    # Encoder choice and where its weights come from.
    if config.encoder == "bert":
        if bool(config.pretrained) == bool(config.encoder_config):
            raise ConfigError("--encoder=bert needs exactly one of --pretrained (weights) or "
                              f"--encoder_config (random init); got --pretrained="
                              f"{config.pretrained!r} --encoder_config={config.encoder_config!r}")
    else:
        if config.encoder_learning_rate == 0 and not config.embeddings_learning_rate:
            raise ConfigError("--encoder=embedding learns its embeddings from scratch: set "
                              "--encoder_learning_rate > 0 (a frozen random embedding tags "
                              "nothing)")
        if config.hidden_layers != "last":
            _fail("hidden_layers", config.hidden_layers,
                  "only 'last' applies to --encoder=embedding (it has one layer)")
        if config.pretrained or config.encoder_config:
            raise ConfigError("--pretrained/--encoder_config do not apply to --encoder=embedding")
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


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Declares every trainer flag on `flag_values` (idempotent per FlagValues)."""
    if "train_file" in flag_values:
        return
    f = dict(flag_values=flag_values)
    # Data.
    flags.DEFINE_string("train_file", "../shared/data/people_daily_proxy_train/example.train",
                        "Training corpus (`char tag` or CoNLL columns).", **f)
    flags.DEFINE_string("dev_file", "../shared/data/people_daily/example.dev",
                        "Dev corpus, evaluated every --eval_every steps.", **f)
    flags.DEFINE_string("test_file", "../shared/data/people_daily/example.test",
                        "Test corpus, evaluated once at the end.", **f)
    flags.DEFINE_string("tokenizer", None,
                        "Tokenizer directory or hub name; defaults to --pretrained.", **f)
    flags.DEFINE_integer("max_seq_length", 128, "Pieces per window (incl. special tokens).", **f)
    flags.DEFINE_integer("stride", 32, "Characters of overlap between windows of a long "
                         "sentence.", **f)
    flags.DEFINE_string("data_cache_dir", "data_cache", "Where preprocessed shards are cached, "
                        "one sub-directory per fingerprint of the inputs.", **f)
    flags.DEFINE_string("manifest", "", "Use this preprocessed directory (or manifest.json) "
                        "instead of preprocessing the corpus files.", **f)
    # Model.
    flags.DEFINE_enum("encoder", "bert", list(ENCODERS), "BERT-family encoder or trainable "
                      "embeddings (the classic BiLSTM-CRF).", **f)
    flags.DEFINE_string("pretrained", "../shared/models/multilingual-e5-small-zh",
                        "Pretrained encoder directory or hub name.", **f)
    flags.DEFINE_string("encoder_config", "", "A BERT config (JSON file or inline JSON) for a "
                        "randomly initialised encoder; replaces --pretrained.", **f)
    flags.DEFINE_enum("hidden_layers", "last", list(HIDDEN_LAYERS), "How encoder layers are "
                      "combined.", **f)
    flags.DEFINE_integer("num_hidden_layers_used", 4, "Layers combined by concat/mean/"
                         "scalar_mix.", **f)
    flags.DEFINE_integer("bilstm_layers", 0, "BiLSTM layers between encoder and head.", **f)
    flags.DEFINE_integer("bilstm_units", 128, "Units per direction of each BiLSTM.", **f)
    flags.DEFINE_float("bilstm_dropout", 0.1, "Dropout after each BiLSTM layer.", **f)
    flags.DEFINE_enum("head", "softmax", list(HEADS), "Tagging head.", **f)
    flags.DEFINE_float("dropout", 0.1, "Dropout of encoder and head.", **f)
    flags.DEFINE_boolean("crf_constrain_transitions", True, "Forbid IOB2-invalid "
                         "transitions in the CRF.", **f)
    flags.DEFINE_integer("embedding_dim", 128, "Embedding size for --encoder=embedding.", **f)
    # Optimisation.
    flags.DEFINE_float("head_learning_rate", 1e-3, "Peak learning rate of the head.", **f)
    flags.DEFINE_float("encoder_learning_rate", 0.0, "Peak learning rate of the top encoder "
                       "layer; 0 freezes the encoder (inference mode, not on the tape).", **f)
    flags.DEFINE_float("embeddings_learning_rate", None, "Encoder embeddings; default: "
                       "--encoder_learning_rate * --layer_decay**num_layers.", **f)
    flags.DEFINE_float("layer_decay", 1.0, "Layer-wise decay: layer i of L gets "
                       "encoder_lr * decay**(L-1-i).", **f)
    flags.DEFINE_float("layer_mix_learning_rate", None, "Scalar-mix weights; default: head.", **f)
    flags.DEFINE_float("bilstm_learning_rate", None, "BiLSTM; default: head.", **f)
    flags.DEFINE_float("crf_learning_rate", None, "CRF transitions; default: head.", **f)
    flags.DEFINE_integer("warmup_steps", 0, "Linear warmup steps (all groups).", **f)
    flags.DEFINE_float("warmup_proportion", 0.0, "Warmup as a fraction of --train_steps.", **f)
    flags.DEFINE_enum("decay", "linear", list(DECAYS), "Decay after warmup.", **f)
    flags.DEFINE_float("end_learning_rate_ratio", 0.0, "Final lr as a fraction of the peak.", **f)
    flags.DEFINE_float("weight_decay", 0.01, "AdamW decoupled weight decay (not on LayerNorm "
                       "or bias).", **f)
    flags.DEFINE_float("adam_beta1", 0.9, "Adam beta1.", **f)
    flags.DEFINE_float("adam_beta2", 0.999, "Adam beta2.", **f)
    flags.DEFINE_float("adam_epsilon", 1e-6, "Adam epsilon.", **f)
    flags.DEFINE_float("clip_norm", 1.0, "Global-norm gradient clipping; 0 disables.", **f)
    flags.DEFINE_integer("grad_accum_steps", 1, "Micro-batches accumulated per update.", **f)
    # Schedule and input.
    flags.DEFINE_integer("batch_size", 32, "Global batch size in windows (over all replicas; "
                         "per update it is batch_size * grad_accum_steps).", **f)
    flags.DEFINE_integer("train_steps", 0, "Optimizer updates in the schedule; 0 derives it "
                         "from --epochs.", **f)
    flags.DEFINE_float("epochs", 1.0, "Epochs when --train_steps=0.", **f)
    flags.DEFINE_integer("seed", 42, "Seed for initialisation, shuffling and dropout.", **f)
    flags.DEFINE_integer("shuffle_buffer", 10000, "Shuffle buffer in windows; 0 disables "
                         "shuffling.", **f)
    flags.DEFINE_boolean("bucketing", True, "Bucket batches by length (else pad to "
                         "--max_seq_length).", **f)
    flags.DEFINE_boolean("deterministic", False, "tf.config.experimental."
                         "enable_op_determinism (bit-reproducible resumes).", **f)
    # Runtime.
    flags.DEFINE_enum("strategy", "default", list(STRATEGIES), "tf.distribute strategy; "
                      "multi_worker reads TF_CONFIG.", **f)
    flags.DEFINE_integer("num_cpu_devices", 0, "Split the CPU into N logical devices (for "
                         "--strategy=mirrored without GPUs).", **f)
    flags.DEFINE_enum("mixed_precision", "auto", list(MIXED_PRECISION), "auto: bf16 on GPUs "
                      "of compute capability >= 8 and CPUs with AVX512_BF16/AMX, fp16 on older "
                      "GPUs, else none (float32); fp16 uses dynamic loss scaling, bf16 needs "
                      "none (trainer/precision.py).", **f)
    flags.DEFINE_boolean("jit_compile", False, "XLA-compile the forward/backward pass (slower "
                         "than graph mode on CPU).", **f)
    flags.DEFINE_boolean("feature_cache", True, "With a frozen encoder, compute its features "
                         "once per split, store them on disk beside the data cache and train "
                         "and evaluate from them (trainer/feature_cache.py).", **f)
    # Run control.
    flags.DEFINE_string("run_dir", "runs/default", "Run directory (config, checkpoints, events, "
                        "predictions).", **f)
    flags.DEFINE_integer("max_steps", 0, "Stop this invocation at this global step (the "
                         "schedule still spans --train_steps); 0 = no limit.", **f)
    flags.DEFINE_integer("steps_per_loop", 20, "Steps per tf.function call.", **f)
    flags.DEFINE_integer("log_every", 20, "Steps between TensorBoard training scalars.", **f)
    flags.DEFINE_integer("eval_every", 0, "Steps between dev evaluations; 0 = at the end "
                         "only.", **f)
    flags.DEFINE_float("eval_every_epochs", 0.0, "Evaluate dev every this many epochs of the "
                       "train split (e.g. 1: once per epoch, whatever the corpus size); "
                       "replaces --eval_every when > 0.", **f)
    flags.DEFINE_integer("early_stopping_patience", 0, "Stop when dev F1 has not improved for "
                         "this many evaluations in a row (test then scores the best); 0 = train "
                         "the whole schedule.", **f)
    flags.DEFINE_integer("checkpoint_every", 500, "Steps between checkpoints.", **f)
    flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept.", **f)
    flags.DEFINE_integer("eval_batch_size", 64, "Evaluation batch size.", **f)
    flags.DEFINE_boolean("overwrite", False, "Delete an existing run directory first.", **f)
    flags.DEFINE_boolean("resume_mismatched", False, "Resume a run directory whose config "
                         "differs from this one.", **f)
    flags.DEFINE_boolean("progress_bar", True, "Show a progress bar on the terminal.", **f)
    flags.DEFINE_boolean("export", True, "At the end, export the best model as a SavedModel to "
                         "run_dir/export (trainer.export; a failed export only warns).", **f)
    # Divergence.
    flags.DEFINE_float("loss_upper_bound", 1e4, "Training diverged when the mean loss per "
                       "counted token of a --steps_per_loop call exceeds this (a NaN/inf loss "
                       "or gradient always counts); checked before anything is saved. 0 = no "
                       "absolute bound.", **f)
    flags.DEFINE_float("loss_upper_bound_factor", 1000.0, "... or exceeds this many times the "
                       "median of the recent losses (the last 50 calls; medians below 0.01 "
                       "count as 0.01). 0 = off.", **f)
    flags.DEFINE_integer("recovery_max_trials", 0, "On divergence: 0 stops with an error (the "
                         "checkpoints on disk are all healthy); N > 0 restores the latest "
                         "checkpoint and retries with the learning rates scaled by "
                         "--recovery_lr_factor, at most N times over the run.", **f)
    flags.DEFINE_float("recovery_lr_factor", 0.5, "Learning-rate scale applied at each recovery "
                       "(cumulative; kept in the checkpoints).", **f)


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
    if not values["tokenizer"]:
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
    for name in ("pretrained", "tokenizer"):
        path = values[name]
        if path and not _is_hub_name(path):
            if not os.path.exists(path):
                raise ConfigError(f"--{name}={path!r}: no such directory")
            if not os.path.isdir(path):
                raise ConfigError(f"--{name}={path!r} is a file, expected a directory (of a "
                                  f"transformers model or tokenizer) or a hub name")
    return TrainConfig(**values)


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


def check_run_dir(config: TrainConfig) -> None:
    """Refuses, before TensorFlow is imported, a run directory that holds a different run.

    The same rule as `checkpointing.prepare_run_dir` (which checks again once the precision is
    resolved): a config.json whose run-defining fields differ, unless --overwrite or
    --resume_mismatched. With --mixed_precision=auto the precision is only known after
    TensorFlow sees the hardware, so it is left to that later check.

    Raises:
      ConfigError: naming the differing flags, or an unreadable config.json.
    """
    path = pathlib.Path(config.run_dir) / "config.json"
    if config.overwrite or config.resume_mismatched or not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        raise ConfigError(f"--run_dir={config.run_dir!r}: cannot read {path} ({error}); use "
                          f"another --run_dir, or --overwrite to start afresh") from None
    new = config.to_dict()
    ignored = set(RUN_CONTROL_FIELDS)
    if config.mixed_precision == "auto":
        ignored.add("mixed_precision")
    differences = [f"--{name}: {old.get(name)!r} -> {new.get(name)!r}"
                   for name in sorted((set(old) | set(new)) - ignored)
                   if old.get(name) != new.get(name)]
    if differences:
        raise ConfigError(f"--run_dir={config.run_dir!r} was created with a different config "
                          f"({'; '.join(differences)}). Use another --run_dir, --overwrite to "
                          f"start afresh, or --resume_mismatched to continue it with the new "
                          f"config.")


def parse_flags(argv: Sequence[str]) -> TrainConfig:
    """Parses `argv` (without the program name) on a fresh FlagValues; for tests and tools."""
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    flag_values(["trainer"] + list(argv))
    return config_from_flags(flag_values)


def write_config(config: TrainConfig, run_dir: str | os.PathLike) -> pathlib.Path:
    """Writes the resolved config to `run_dir/config.json` (atomically)."""
    path = pathlib.Path(run_dir) / "config.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(config.to_json())
    os.replace(tmp, path)
    return path
