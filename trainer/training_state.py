"""Everything a run builds before its first update: data, model, optimizer, state, checkpoints.

`build_training_state(config, run_dir)` does it in order, each step a function below:

    runtime      strategy, chief, determinism, seed
    data         preprocess if needed, verify every shard
    schedule     trainer.schedule_plan from the config and the train split's window count
    model        the model config, the model and its per-group optimizer; then (only then)
                 prepare RUN_DIR and write the model config there
    variables    step, input position, learning-rate scale, recoveries, pending evaluation
    checkpoints  restore the newest finite checkpoint, if any
    input        the frozen encoder's feature cache, or the shards
    train step   the compiled multi-update tf.function (trainer.step.TrainStep)

The data and the model come first: a data error, or an encoder that cannot be built from the
flags, must never change (or, with --overwrite, delete) the run directory. The result, a
`TrainingState`, is what the controller, the evaluator and the divergence guard share;
benchmarks build one to time the exact training step.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import tensorflow as tf
from absl import logging

from trainer import cache, checkpointing, optimization, runtime
from trainer import run_dir as run_dir_lib
from trainer.config import ConfigError, TrainConfig
from trainer.schedule_plan import SchedulePlan, plan_schedule
from trainer.step import TrainStep


@dataclasses.dataclass
class RunVariables:
    """The loop's own state, checkpointed with the model (all int64 scalars but lr_scale).

    Attributes:
      step: optimizer updates done (the global step).
      input_position: micro-batches each replica has consumed (the input is skipped to it).
      lr_scale: float32; every group's learning rate is multiplied by it (1.0 until a
        divergence recovery lowers it).
      recoveries: divergence recoveries done.
      pending_eval: the step of a dev evaluation that SIGTERM cut short (-1: none); saved with
        that step's checkpoint, so the resumed run evaluates it first.
    """

    step: tf.Variable
    input_position: tf.Variable
    lr_scale: tf.Variable
    recoveries: tf.Variable
    pending_eval: tf.Variable

    @classmethod
    def create(cls) -> RunVariables:
        """Creates them (inside the strategy's scope: one value, kept by the first replica)."""
        def variable(value, dtype, name):
            return tf.Variable(value, dtype=dtype, trainable=False, name=name,
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

        return cls(step=variable(0, tf.int64, "global_step"),
                   input_position=variable(0, tf.int64, "input_position"),
                   lr_scale=variable(1.0, tf.float32, "lr_scale"),
                   recoveries=variable(0, tf.int64, "recoveries"),
                   pending_eval=variable(-1, tf.int64, "pending_eval"))

    def checkpoint_extras(self) -> dict[str, tf.Variable]:
        """What the checkpoint saves beside model, optimizer, step and input position."""
        return {"lr_scale": self.lr_scale, "recoveries": self.recoveries,
                "pending_eval": self.pending_eval}


@dataclasses.dataclass
class TrainingState:
    """One run's built pieces (see the module docstring for the order they are built in).

    Attributes:
      config: the validated config (precision already resolved).
      run_dir: the run directory.
      strategy / chief: the distribution strategy; whether this worker writes RUN_DIR.
      manifest_dir / manifest: the preprocessed shards and their manifest.
      input_dir: what training and evaluation read: manifest_dir, or the feature cache.
      label_map: tag strings, index = tag id.
      model_config: the TaggerConfig the model was built from (RUN_DIR/model_config.json).
      schedule: the SchedulePlan.
      model / plan: the tagger and its `optimization.OptimizationPlan` (groups, rates).
      variables: the RunVariables.
      stop_flag: bool; set when SIGTERM arrives, read by the train step before each update.
      checkpointer: the run's `checkpointing.Checkpointer`.
      restored_step: the step restored from a checkpoint, or None on a fresh start.
      train_step: the compiled multi-update step.
      variables_report: what trains (`variables_report.build_report`).
    """

    config: TrainConfig
    run_dir: pathlib.Path
    strategy: tf.distribute.Strategy
    chief: bool
    manifest_dir: str
    manifest: dict
    input_dir: str
    label_map: list[str]
    model_config: object
    schedule: SchedulePlan
    model: tf.keras.Model
    plan: optimization.OptimizationPlan
    variables: RunVariables
    stop_flag: tf.Variable
    checkpointer: checkpointing.Checkpointer
    restored_step: int | None
    train_step: TrainStep
    variables_report: object

    @property
    def step(self) -> tf.Variable:
        return self.variables.step

    def train_dataset(self) -> tf.distribute.DistributedDataset:
        """Per-replica training input, positioned where the restored checkpoint left off."""
        return train_dataset(self.config, self.strategy, self.input_dir,
                             int(self.variables.input_position.numpy()),
                             batch_size=self.schedule.batch_size)


def train_dataset(config: TrainConfig, strategy: tf.distribute.Strategy, input_dir: str,
                  position: int, batch_size: int = 0) -> tf.distribute.DistributedDataset:
    """The training input of `input_dir`, each replica's pipeline skipped to `position`.

    `batch_size`: the global batch (the schedule's; 0 = --batch_size).
    """
    from data_pipeline.dataset import make_dataset

    replicas = strategy.num_replicas_in_sync

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = input_context.get_per_replica_batch_size(batch_size or config.batch_size)
        # verify_checksums=False: setup verified every shard; the reader still checks each
        # record's CRC and each shard's record count.
        dataset = make_dataset(
            input_dir, "train", batch_size=per_replica, bucketing=config.bucketing,
            shuffle=config.shuffle_buffer > 0, shuffle_buffer=max(config.shuffle_buffer, 1),
            seed=config.seed, repeat=True, input_context=input_context,
            pad_to_length=None,  # without bucketing: the manifest's max_seq_length
            verify_checksums=False)
        # Each step takes one batch per replica from this pipeline.
        replicas_per_pipeline = replicas // input_context.num_input_pipelines
        return dataset.skip(position * replicas_per_pipeline)

    return strategy.distribute_datasets_from_function(dataset_fn)


def prepare_data(config: TrainConfig) -> tuple[str, dict]:
    """Preprocesses if needed and verifies every shard; returns (manifest_dir, manifest).

    Raises:
      data_pipeline.dataset.ShardError: a shard or a count differs from the manifest.
      (and whatever preprocessing raises for a bad corpus)
    """
    from data_pipeline.manifest import load_manifest

    manifest_dir = cache.ensure_preprocessed(config, log=logging.info)
    manifest = load_manifest(manifest_dir)
    cache.verify_data(manifest)
    return manifest_dir, manifest


def build_model_and_plan(config: TrainConfig, model_config, manifest_dir: str,
                         total_steps: int):
    """The tagger and its per-group optimization plan (call inside the strategy's scope).

    Raises:
      ConfigError: the encoder cannot be built from the flags (a config whose hidden size does
        not divide into its heads, more --num_hidden_layers_used than it has layers, a value
        of the wrong type): named, where it was a traceback.
    """
    from data_pipeline.tags import iob2_allowed_transitions
    from models import build_tagger

    token_ids = None
    if config.encoder_learning_rate > 0 or config.embeddings_learning_rate:
        # Trainable token embeddings update only the rows of ids training can see.
        from data_pipeline.dataset import token_ids as split_token_ids

        token_ids = split_token_ids(manifest_dir, "train")
    constrained = model_config.head == "crf" and model_config.crf_constrain_transitions
    try:
        model = build_tagger(model_config, transition_constraints=iob2_allowed_transitions(
            model_config.label_map) if constrained else None)
    except (ValueError, TypeError) as error:
        source = "encoder_config" if config.encoder_config else "pretrained"
        reason = (str(error).strip() or type(error).__name__).splitlines()[0][:300]
        raise ConfigError(f"the model cannot be built from --{source}="
                          f"{getattr(config, source)!r} with --encoder={config.encoder} "
                          f"--hidden_layers={config.hidden_layers} --num_hidden_layers_used="
                          f"{config.num_hidden_layers_used}: {reason}") from error
    plan = optimization.build_optimization(
        config, model.variable_groups(), list(model.encoder_group_names()), total_steps,
        token_embeddings=model.token_embedding_variables(), token_ids=token_ids)
    return model, plan


def report_variables(model, plan, run_dir: pathlib.Path, chief: bool):
    """What trains, before anything does: the table in the log and RUN_DIR/variables.json."""
    from trainer import variables_report

    report = variables_report.build_report(model, model.variable_groups(), plan.peak_rates,
                                           plan.frozen_groups)
    logging.info("%s", report.text)
    if chief:
        variables_report.write_report(run_dir, report)
    return report


def choose_input(config: TrainConfig, model, plan, manifest_dir: str, steps_to_train: int,
                 steps_per_epoch: int, chief: bool) -> str:
    """The frozen encoder's feature cache (built if missing) when it pays, else manifest_dir."""
    from data_pipeline.manifest import load_manifest

    if not (config.feature_cache and config.uses_bert and plan.encoder_frozen):
        return manifest_dir
    if steps_to_train < steps_per_epoch:
        # Caching encodes every window of every split once; a run shorter than an epoch
        # encodes fewer train windows than that by running the encoder in each step.
        logging.info("feature cache: not used: this run trains %d steps, less than one epoch "
                     "(%d steps), so the frozen encoder runs in each step instead",
                     steps_to_train, steps_per_epoch)
        return manifest_dir
    from trainer import feature_cache

    input_dir = feature_cache.ensure_feature_cache(
        model, manifest_dir, pathlib.Path(config.data_cache_dir) / feature_cache.FEATURES_SUBDIR,
        log=logging.info, progress=chief, progress_tty=None if config.progress_bar else False)
    cache.verify_data(load_manifest(input_dir))
    return input_dir


def build_training_state(config: TrainConfig, run_dir: pathlib.Path) -> TrainingState:
    """Builds a run's state in the order of the module docstring (RUN_DIR written by the chief).

    Raises:
      run_dir.RunDirectoryError: RUN_DIR holds a different run (no --overwrite /
        --resume_mismatched).
      data_pipeline.dataset.ShardError, cache.DataError, ...: bad data, before RUN_DIR changes.
    """
    from data_pipeline.manifest import MANIFEST_NAME

    strategy = runtime.build_strategy(config)
    chief = runtime.is_chief(strategy)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.keras.utils.set_random_seed(config.seed)
    manifest_dir, manifest = prepare_data(config)
    # The model config, built once; the run directory keeps it (export builds from it).
    model_config = run_dir_lib.tagger_config(config.model_settings(), manifest)
    counts = manifest["splits"]["train"]["counts"]
    schedule = plan_schedule(config, counts["windows"], counts.get("sentences", 0),
                             replicas=strategy.num_replicas_in_sync)
    logging.info("%s", schedule.describe())
    with strategy.scope():
        model, plan = build_model_and_plan(config, model_config, manifest_dir,
                                           schedule.total_steps)
        variables = RunVariables.create()
    checkpointing.prepare_run_dir(run_dir, config, is_chief=chief)
    if chief:
        run_dir_lib.write_run_files(
            run_dir, manifest_path=os.path.join(manifest_dir, MANIFEST_NAME),
            model_config=model_config, resume_mismatched=config.resume_mismatched,
            log=logging.warning)
    report = report_variables(model, plan, run_dir, chief)
    optimizer = plan.base_optimizer
    optimizer.schedules = {group: optimization.ScaledSchedule(schedule_fn, variables.lr_scale)
                           for group, schedule_fn in optimizer.schedules.items()}
    # Set by the main thread when SIGTERM arrives, read by the training loop before each
    # update (a plain local variable: it is neither distributed nor checkpointed).
    stop_flag = tf.Variable(False, trainable=False, name="stop_requested")
    checkpointer = checkpointing.Checkpointer(
        run_dir, model=model, optimizer=plan.optimizer, step=variables.step,
        input_position=variables.input_position, keep=config.keep_checkpoints, is_chief=chief,
        log=logging.warning, extra=variables.checkpoint_extras())
    try:
        restored = checkpointer.restore_latest()
        if restored is not None:
            logging.info("resumed from step %d (input position %d)", restored,
                         int(variables.input_position.numpy()))
            if int(variables.recoveries.numpy()):
                logging.warning("learning rates are scaled by %g after %d divergence recoveries",
                                float(variables.lr_scale.numpy()),
                                int(variables.recoveries.numpy()))
        input_dir = choose_input(config, model, plan, manifest_dir,
                                 schedule.stop_at - (restored or 0), schedule.steps_per_epoch,
                                 chief)
    except BaseException:
        checkpointer.close()  # a non-chief worker's temporary directory goes with it
        raise
    train_step = TrainStep(model=model, plan=plan, strategy=strategy,
                           grad_accum_steps=config.grad_accum_steps, step=variables.step,
                           input_position=variables.input_position,
                           jit_compile=config.jit_compile, stop_flag=stop_flag)
    return TrainingState(
        config=config, run_dir=run_dir, strategy=strategy, chief=chief,
        manifest_dir=manifest_dir, manifest=manifest, input_dir=input_dir,
        label_map=list(manifest["label_map"]), model_config=model_config, schedule=schedule,
        model=model, plan=plan, variables=variables, stop_flag=stop_flag,
        checkpointer=checkpointer, restored_step=restored, train_step=train_step,
        variables_report=report)
