"""The training loop: strategy, input, model, per-group optimizer, checkpoints, evaluation.

`train_and_evaluate(config, run_dir)` is the whole job; `trainer.main` only parses flags and calls
it, and tests call it directly.

One call of the train step's `tf.function` (`trainer.step.TrainStep`) runs `n` optimizer updates,
the loss scaled so that one replica and N replicas compute the same gradient (see trainer/step.py).
This module is the controller around it: logging, entity scoring and checkpointing stay in plain
Python between calls. The run directory's layout is trainer/run_dir.py.

Between calls, before anything is logged, evaluated or saved, the call's updates are checked:
a NaN/inf loss or gradient norm, a loss above --loss_upper_bound or above
--loss_upper_bound_factor x the median of recent losses, or (before an evaluation or a save)
non-finite weights mean divergence. The run then stops with `DivergenceError` (the checkpoints
on disk are all finite), or restores the latest checkpoint with lower learning rates
(--recovery_max_trials). A restart resumes from the newest finite checkpoint and first removes
what an earlier attempt logged after it (train_log.jsonl records, events), so each step is
logged once. SIGTERM ends a call after the update in progress and an evaluation between two
batches; the loop then saves and returns.
"""

from __future__ import annotations

import collections
import json
import math
import os
import pathlib
import statistics
import threading
import time
from typing import Any

import tensorflow as tf
from absl import logging

from trainer import cache, checkpointing, export, optimization, precision
from trainer import run_dir as run_dir_lib
from trainer.config import ConfigError, TrainConfig
from trainer.step import TrainStep

TRAIN_LOG = "train_log.jsonl"
RESULTS = "results.json"


# ------------------------------------------------------------------------------------------------
# Runtime: devices, strategy, precision
# ------------------------------------------------------------------------------------------------


def split_cpu(num_devices: int) -> None:
    """Splits the physical CPU into `num_devices` logical devices (before TF initialises them).

    Raises:
      ConfigError: TensorFlow already initialised its devices with a different split.
    """
    if num_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])
    except RuntimeError:
        found = len(tf.config.list_logical_devices("CPU"))
        if found != num_devices:
            raise ConfigError(f"--num_cpu_devices={num_devices}: TensorFlow already initialised "
                              f"{found} CPU device(s) in this process; split the CPU before any "
                              "other TensorFlow work (e.g. run trainer.main in a new process)")


def build_strategy(config: TrainConfig) -> tf.distribute.Strategy:
    """default | mirrored (over GPUs, or over --num_cpu_devices logical CPUs) | multi_worker."""
    if config.strategy == "multi_worker":
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    split_cpu(config.num_cpu_devices)
    if config.strategy == "mirrored":
        devices = None
        if not tf.config.list_physical_devices("GPU"):
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(
            devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


# ------------------------------------------------------------------------------------------------
# Data checks, logs, learning-rate scale
# ------------------------------------------------------------------------------------------------


def verify_data(manifest: dict, splits: tuple[str, ...] = ("train", "dev", "test")) -> None:
    """Checks every shard of `splits` against the manifest, before anything trains.

    Each shard's presence, size and sha256 (`data_pipeline.dataset.check_shards`), and that each
    split's `counts.windows` equals the sum of its shards' record counts (the schedule, epochs
    and evaluation cadence are computed from it).

    Raises:
      ShardError: naming the shard and what differs, or the manifest and the count.
    """
    from data_pipeline.dataset import ShardError, check_shards
    from data_pipeline.manifest import MANIFEST_NAME

    path = pathlib.Path(manifest["directory"]) / MANIFEST_NAME
    for split in splits:
        info = manifest["splits"][split]
        shards = list(info.get("shards") or [])
        if not shards:
            raise ShardError(f"{path}: split {split!r} lists no shards")
        check_shards(manifest, shards)
        records = sum(int(shard["records"]) for shard in shards)
        windows = (info.get("counts") or {}).get("windows")
        if not isinstance(windows, int) or windows != records:
            raise ShardError(f"{path}: split {split!r} says counts.windows = {windows!r}, but its "
                             f"{len(shards)} shard(s) hold {records} records: the manifest was "
                             "edited or damaged; preprocess again")


def _next_boundary(step: int, every: int) -> int:
    return (step // every + 1) * every


def _append_jsonl(path: pathlib.Path, record: dict) -> None:
    from data_pipeline.manifest import strict_json_dumps

    with open(path, "a") as stream:
        stream.write(strict_json_dumps(record, non_finite="null", sort_keys=True) + "\n")


def truncate_train_log(path: pathlib.Path, last_step: int) -> list[dict]:
    """Keeps the records of steps <= `last_step` in train_log.jsonl; returns them.

    A resumed (or recovered) run trains the steps after its checkpoint again and logs them
    again: without this, train_log.jsonl would hold those steps twice. A line a kill cut short
    is dropped too, and of two records of one step (written by an older version) the later is
    kept. The file is rewritten atomically, and only when something changes.
    """
    if not path.is_file():
        return []
    text = path.read_text()
    by_step: dict[int, dict] = {}
    changed = bool(text) and not text.endswith("\n")
    for line in text.splitlines():
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, TypeError, KeyError):
            changed = True
            continue
        if step > last_step or step in by_step:
            changed = True
            if step > last_step:
                continue
        by_step[step] = record
    records = [by_step[step] for step in sorted(by_step)]
    if changed:
        from data_pipeline.manifest import strict_json_dumps

        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(strict_json_dumps(r, non_finite="null", sort_keys=True) + "\n"
                               for r in records))
        os.replace(tmp, path)
    return records


class ScaledSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """A learning-rate schedule times a scale variable (1.0, lowered by divergence recovery).

    The scale is a variable, so lowering it needs no retrace; at 1.0 the product is exactly the
    schedule's value.
    """

    def __init__(self, schedule, scale: tf.Variable):
        super().__init__()
        self.schedule = schedule
        self.scale = scale

    def __call__(self, step):
        return self.schedule(step) * tf.cast(self.scale, tf.float32)

    def get_config(self):
        return self.schedule.get_config()


class _StopRequested(Exception):
    """SIGTERM arrived during an evaluation (the loop saves, or has saved, and stops)."""


class _StoppableBatches:
    """Iterates a dataset, raising _StopRequested between batches once a stop is requested."""

    def __init__(self, dataset, stop: checkpointing.StopRequest | None):
        self._dataset = dataset
        self._stop = stop
        self.element_spec = dataset.element_spec

    def __iter__(self):
        for batch in self._dataset:
            if self._stop is not None and self._stop.requested:
                raise _StopRequested()
            yield batch


# ------------------------------------------------------------------------------------------------
# train_and_evaluate
# ------------------------------------------------------------------------------------------------

# The loss bound of --loss_upper_bound_factor: that many times the median of the last
# LOSS_HISTORY per-call training losses, once MIN_LOSS_HISTORY are known. A median below
# LOSS_MEDIAN_FLOOR counts as the floor, so a nearly perfect fit does not make an ordinary batch
# look like a blow-up (factor 1000: the bound is never below 10 nats per token).
LOSS_HISTORY = 50
MIN_LOSS_HISTORY = 3
LOSS_MEDIAN_FLOOR = 0.01
# Progress: the step variable is read this often during a training call, and no more than this
# many seconds pass without a line (a plain progress line, or "still tracing").
PROGRESS_POLL_S = 1.0
SILENCE_S = 30.0


class _Run:
    """State of one train_and_evaluate call (kept in one place so the steps read top-down)."""

    def __init__(self, config: TrainConfig, run_dir: pathlib.Path):
        self.config = config
        self.run_dir = run_dir
        # Set before anything can fail, so close() never masks a setup error.
        self.summaries = self.progress = None
        self.checkpointer = None
        self.stop: checkpointing.StopRequest | None = None
        self.early_stopped_at = None
        self._gold: dict = {}
        self._evaluated: dict = {}  # split -> (step, EvaluationResult) of its last evaluation
        self._recent_losses: collections.deque = collections.deque(maxlen=LOSS_HISTORY)
        self._log_records: list[dict] = []
        self._traced = False  # the training tf.function has run once (tracing announced)
        self._last_loss: float | None = None

    # -- setup ---------------------------------------------------------------------------------

    def setup(self) -> None:
        config = self.config
        self.strategy = build_strategy(config)
        self.chief = is_chief(self.strategy)
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()
        tf.keras.utils.set_random_seed(config.seed)
        # The data first: a data error must never change (or, with --overwrite, delete) the run
        # directory. Every shard of every split is verified here, not when first read.
        self.manifest_dir = cache.ensure_preprocessed(config, log=logging.info)
        from data_pipeline.manifest import MANIFEST_NAME, load_manifest

        self.manifest = load_manifest(self.manifest_dir)
        verify_data(self.manifest)
        self.resuming = checkpointing.prepare_run_dir(self.run_dir, config, is_chief=self.chief)
        self.label_map = list(self.manifest["label_map"])
        # The model config, built once; the run directory keeps it (export builds from it).
        self.model_config = run_dir_lib.tagger_config(config.model_settings(), self.manifest)
        if self.chief:
            run_dir_lib.write_run_files(
                self.run_dir, manifest_path=os.path.join(self.manifest_dir, MANIFEST_NAME),
                model_config=self.model_config, resume_mismatched=config.resume_mismatched,
                log=logging.warning)
        train_windows = self.manifest["splits"]["train"]["counts"]["windows"]
        per_update = config.batch_size * config.grad_accum_steps
        self.total_steps = config.train_steps or max(
            1, math.ceil(config.epochs * train_windows / per_update))
        self.stop_at = min(self.total_steps, config.max_steps or self.total_steps)
        # Dev cadence in steps: --eval_every_epochs scales with the corpus, --eval_every not.
        self.steps_per_epoch = max(1, math.ceil(train_windows / per_update))
        self.eval_every = config.eval_every
        if config.eval_every_epochs:
            self.eval_every = max(1, round(config.eval_every_epochs * self.steps_per_epoch))
        logging.info("schedule: %d steps (%d per epoch of %d windows), dev evaluation every %s",
                     self.total_steps, self.steps_per_epoch, train_windows,
                     f"{self.eval_every} steps" if self.eval_every else "run (at the end)")

        token_ids = None
        if config.encoder_learning_rate > 0 or config.embeddings_learning_rate:
            # Trainable token embeddings update only the rows of ids training can see.
            from data_pipeline.dataset import token_ids as split_token_ids

            token_ids = split_token_ids(self.manifest_dir, "train")
        with self.strategy.scope():
            from data_pipeline.tags import iob2_allowed_transitions
            from models import build_tagger

            tagger = self.model_config
            constrained = tagger.head == "crf" and tagger.crf_constrain_transitions
            self.model = build_tagger(tagger, transition_constraints=iob2_allowed_transitions(
                tagger.label_map) if constrained else None)
            self.plan = optimization.build_optimization(
                config, self.model.variable_groups(), list(self.model.encoder_group_names()),
                self.total_steps, token_embeddings=self.model.token_embedding_variables(),
                token_ids=token_ids)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.input_position = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="input_position",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            # Divergence recovery: every group's learning rate is scaled by lr_scale (1.0 until
            # a recovery lowers it); both are checkpointed, so a resumed run keeps them.
            self.lr_scale = tf.Variable(1.0, dtype=tf.float32, trainable=False, name="lr_scale",
                                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.recoveries = tf.Variable(0, dtype=tf.int64, trainable=False, name="recoveries",
                                          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            # The step of a dev evaluation that SIGTERM cut short (-1: none): saved with the
            # checkpoint of that step, so the resumed run evaluates it first.
            self.pending_eval = tf.Variable(-1, dtype=tf.int64, trainable=False,
                                            name="pending_eval",
                                            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        # What trains, before anything does: the table in the log, RUN_DIR/variables.json, and
        # (on a fresh start) a text summary for TensorBoard.
        from trainer import variables_report

        self.variables_report = variables_report.build_report(
            self.model, self.model.variable_groups(), self.plan.peak_rates,
            self.plan.frozen_groups)
        logging.info("%s", self.variables_report.text)
        if self.chief:
            variables_report.write_report(self.run_dir, self.variables_report)
        optimizer = self.plan.base_optimizer
        optimizer.schedules = {group: ScaledSchedule(schedule, self.lr_scale)
                               for group, schedule in optimizer.schedules.items()}
        # Set by the main thread when SIGTERM arrives, read by the training loop before each
        # update (a plain local variable: it is neither distributed nor checkpointed).
        self.stop_flag = tf.Variable(False, trainable=False, name="stop_requested")
        self.checkpointer = checkpointing.Checkpointer(
            self.run_dir, model=self.model, optimizer=self.plan.optimizer, step=self.step,
            input_position=self.input_position, keep=config.keep_checkpoints,
            is_chief=self.chief, log=logging.warning, extra={
                "lr_scale": self.lr_scale, "recoveries": self.recoveries,
                "pending_eval": self.pending_eval})
        restored = self.checkpointer.restore_latest()
        self.restored_step = restored
        if restored is not None:
            logging.info("resumed from step %d (input position %d)", restored,
                         int(self.input_position.numpy()))
            if int(self.recoveries.numpy()):
                logging.warning("learning rates are scaled by %g after %d divergence recoveries",
                                float(self.lr_scale.numpy()), int(self.recoveries.numpy()))
        # Train and evaluate from the frozen encoder's cached output, or from the shards.
        self.input_dir = self.manifest_dir
        use_cache = config.feature_cache and config.uses_bert and self.plan.encoder_frozen
        steps_to_train = self.stop_at - (restored or 0)
        if use_cache and steps_to_train < self.steps_per_epoch:
            # Caching encodes every window of every split once; a run shorter than an epoch
            # encodes fewer train windows than that by running the encoder in each step.
            logging.info("feature cache: not used: this run trains %d steps, less than one epoch "
                         "(%d steps), so the frozen encoder runs in each step instead",
                         steps_to_train, self.steps_per_epoch)
            use_cache = False
        if use_cache:
            from trainer import feature_cache

            self.input_dir = feature_cache.ensure_feature_cache(
                self.model, self.manifest_dir,
                pathlib.Path(config.data_cache_dir) / feature_cache.FEATURES_SUBDIR,
                log=logging.info, progress=self.chief,
                progress_tty=None if config.progress_bar else False)
            verify_data(load_manifest(self.input_dir))
        self.train_step = TrainStep(model=self.model, plan=self.plan, strategy=self.strategy,
                                    grad_accum_steps=config.grad_accum_steps, step=self.step,
                                    input_position=self.input_position,
                                    jit_compile=config.jit_compile, stop_flag=self.stop_flag)
        if self.chief:
            self._open_logs(restored)

    def _open_logs(self, restored: int | None) -> None:
        """Opens train_log.jsonl and the event files so that each step is in them once.

        The steps after the restored checkpoint are trained and logged again, so what an
        earlier attempt wrote for them is removed first: records from train_log.jsonl, events
        from the event files (plus a restart marker for a TensorBoard that already read them:
        `summaries.SummaryWriter.restart`). A run that had finished training repeats its final
        evaluation at the last step, and a run stopped during a dev evaluation repeats it:
        then that step's events go too, and its training record is written again from
        train_log.jsonl.
        """
        if restored is None:  # maybe an attempt killed before its first checkpoint
            self._reopen_logs(-1, -1)
            self.summaries.hparams(self.config.to_dict())
            self._write_variables_summaries()
            return
        finished = (restored >= self.stop_at or self._patience_exhausted(restored)
                    or int(self.pending_eval.numpy()) == restored)
        self._reopen_logs(restored, restored - 1 if finished else restored)
        if self.config.strategy != "multi_worker":  # other workers cannot read the log
            self._recent_losses.extend(r["loss"] for r in self._log_records[-LOSS_HISTORY:]
                                       if isinstance(r.get("loss"), float))
        if finished and self._log_records and self._log_records[-1]["step"] == restored:
            self._write_train_summaries(self._log_records[-1])

    def _write_variables_summaries(self) -> None:
        """Once per run, at step 0: the variables table (text, in RUN_DIR) and a learning rate
        of 0 for each frozen group (train/lr/<group>), so TensorBoard shows what is frozen."""
        from trainer import variables_report

        report = getattr(self, "variables_report", None)
        if report is None:
            return
        self.summaries.text(0, "variables", variables_report.to_markdown(report.data))
        frozen = [g["name"] for g in report.data["groups"] if not g["trainable"]]
        self.summaries.frozen_learning_rates(0, frozen)

    def _reopen_logs(self, last_logged: int, last_event: int) -> None:
        """Keeps train_log.jsonl records up to step `last_logged` and events up to
        `last_event`, then (re)opens the event writer (chief only)."""
        from trainer import summaries

        if self.summaries is not None:
            self.summaries.close()
            self.summaries = None
        (self.run_dir / (TRAIN_LOG + ".tmp")).unlink(missing_ok=True)
        self._log_records = truncate_train_log(self.run_dir / TRAIN_LOG, max(last_logged, 0))
        summaries.truncate_event_files(self.run_dir, last_event)
        self.summaries = summaries.SummaryWriter(str(self.run_dir))
        self.summaries.restart(last_event + 1)

    def train_dataset(self) -> tf.distribute.DistributedDataset:
        """Per-replica training input, positioned where the restored checkpoint left off."""
        from data_pipeline.dataset import make_dataset

        config = self.config
        position = int(self.input_position.numpy())
        replicas = self.strategy.num_replicas_in_sync

        def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
            batch_size = input_context.get_per_replica_batch_size(config.batch_size)
            # verify_checksums=False: setup verified every shard; the reader still checks each
            # record's CRC and each shard's record count.
            dataset = make_dataset(
                self.input_dir, "train", batch_size=batch_size, bucketing=config.bucketing,
                shuffle=config.shuffle_buffer > 0, shuffle_buffer=max(config.shuffle_buffer, 1),
                seed=config.seed, repeat=True, input_context=input_context,
                pad_to_length=None,  # without bucketing: the manifest's max_seq_length
                verify_checksums=False)
            # Each step takes one batch per replica from this pipeline.
            replicas_per_pipeline = replicas // input_context.num_input_pipelines
            return dataset.skip(position * replicas_per_pipeline)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    # -- evaluation ----------------------------------------------------------------------------

    def evaluate(self, split: str, step: int, *, write_predictions: bool = False) -> dict:
        """Evaluates `split` at `step` (once: a second call at the same step reuses the result).

        Raises:
          _StopRequested: SIGTERM arrived; the evaluation stopped between two batches.
        """
        from data_pipeline.dataset import make_dataset
        from trainer import evaluation

        if split not in self._gold:
            self._gold[split] = cache.read_gold(self.manifest, split)
        tokens, gold_tags = self._gold[split]
        cached = self._evaluated.get(split)
        if cached is not None and cached[0] == step:
            # e.g. early stopping evaluated dev at this step just before finish() does
            result = cached[1]
        else:
            from trainer import progress

            dataset = make_dataset(self.input_dir, split, batch_size=self.config.eval_batch_size,
                                   shuffle=False, repeat=False, verify_checksums=False)
            counts = self.manifest["splits"][split]["counts"]
            logging.info("step %d %s: evaluating %d windows of %d sentences", step, split,
                         counts["windows"], counts["sentences"])
            # Windows done / total and ETA: a bar on a terminal, else a log line at the first
            # batch, every 30 s and at the last.
            bar = progress.ProgressBar(
                counts["windows"], description=f"{split} evaluation", unit="window",
                is_tty=None if self.config.progress_bar else False, log_every_s=SILENCE_S)
            started = time.time()
            try:
                result = evaluation.evaluate(self.model, _StoppableBatches(dataset, self.stop),
                                             self.label_map, gold_tags=gold_tags,
                                             progress=bar.update)
            finally:
                bar.close()
            metrics = result.metrics
            logging.info("step %d %s: f1 %.4f precision %.4f recall %.4f token_accuracy %.4f "
                         "(%.1f s)\n%s", step, split, metrics["f1"], metrics["precision"],
                         metrics["recall"], metrics["token_accuracy"], time.time() - started,
                         evaluation.format_report(metrics, result.entity_counts))
            if self.summaries is not None:
                self.summaries.eval(step, split, metrics)
                if split == "dev":
                    self.summaries.text_examples(step, result.predictions, tokens)
            self._evaluated[split] = (step, result)
        if write_predictions and self.chief:
            evaluation.write_predictions(self.run_dir / f"predictions_{split}.txt",
                                         result.predictions, tokens)
        return dict(result.metrics)

    def _load_best(self) -> None:
        if not hasattr(self, "_best_f1"):  # a resumed run competes with its earlier best
            best = run_dir_lib.read_best(self.run_dir / run_dir_lib.BEST_DIR)
            self._best_f1, self._best_step = -1.0, 0
            if best is not None:
                self._best_f1, self._best_step = best["f1"], int(best.get("step", 0))

    def _maybe_keep_best(self, step: int, metrics: dict) -> None:
        self._load_best()
        if metrics["f1"] > self._best_f1:
            self.checkpointer.save_best(step, metrics)
            self._best_f1, self._best_step = metrics["f1"], step

    def _patience_exhausted(self, step: int) -> bool:
        """True when the last `early_stopping_patience` evaluations did not improve dev F1.

        Counted from the best checkpoint's step, so a resumed run keeps counting where it was.
        (Only the chief evaluates; config validation refuses early stopping with multi_worker.)
        """
        patience = self.config.early_stopping_patience
        if not patience or not self.eval_every:
            return False
        self._load_best()
        if self._best_f1 < 0:  # no evaluation yet
            return False
        return (step - self._best_step) // self.eval_every >= patience

    # -- divergence ----------------------------------------------------------------------------

    def _loss_bound(self) -> tuple[float | None, str]:
        config = self.config
        bounds = []
        if config.loss_upper_bound > 0:
            bounds.append((config.loss_upper_bound,
                           f"--loss_upper_bound={config.loss_upper_bound:g}"))
        history = self._recent_losses
        if config.loss_upper_bound_factor > 0 and len(history) >= MIN_LOSS_HISTORY:
            median = statistics.median(history)
            factor = config.loss_upper_bound_factor
            bounds.append((factor * max(median, LOSS_MEDIAN_FLOOR),
                           f"--loss_upper_bound_factor={factor:g} x the median {median:.4g} of "
                           f"the last {len(history)} losses"))
        return min(bounds) if bounds else (None, "")

    def _divergence(self, first: int, step: int, loss: float, totals: dict, norms,
                    *, check_weights: bool) -> str | None:
        """What is wrong with the updates of steps first..step, or None if they are healthy."""
        steps = f"step {step}" if first == step else f"steps {first}..{step}"
        if totals["non_finite"] and not self.plan.loss_scaling:
            last = ", ".join(f"{group} {float(norm):.3g}"
                             for group, norm in zip(self.train_step.group_names, norms.numpy()))
            return (f"the loss or a gradient norm was NaN or infinite in "
                    f"{int(totals['non_finite'])} of the {int(totals['steps'])} updates of "
                    f"{steps} (gradient norms of the last: {last})")
        bound, why = self._loss_bound()
        if bound is not None and totals["count"] > 0 and loss > bound:
            return f"the mean training loss of {steps} is {loss:.4g}, above {why}"
        if check_weights:
            names = self.checkpointer.non_finite_variables()
            if names:
                return (f"{', '.join(names[:3])}{' and others' if len(names) > 3 else ''} hold "
                        f"NaN or infinity after {steps}")
        return None

    def _recover_or_stop(self, problem: str, step: int) -> None:
        """Stops with DivergenceError, or (--recovery_max_trials) restores the latest checkpoint
        and lowers every learning rate by --recovery_lr_factor."""
        config = self.config
        latest = self.checkpointer.latest_checkpoint
        trials = int(self.recoveries.numpy())
        kept = (f"the latest checkpoint, {latest}, is healthy and kept" if latest
                else "no checkpoint was written")
        if trials >= config.recovery_max_trials or latest is None:
            advice = ("lower the learning rates (or set --clip_norm), or pass "
                      "--recovery_max_trials=N to restore the latest checkpoint and retry with "
                      "lower learning rates")
            if config.recovery_max_trials:
                advice = (f"all {config.recovery_max_trials} recovery trial(s) are used up "
                          f"(learning rates x{float(self.lr_scale.numpy()):g}): lower the "
                          "learning rates (or set --clip_norm)")
            raise checkpointing.DivergenceError(
                f"training diverged at step {step}: {problem}. Nothing was saved after the "
                f"divergence; {kept}. To go on, {advice}")
        scale = float(self.lr_scale.numpy()) * config.recovery_lr_factor
        restored = self.checkpointer.restore_latest()
        self.lr_scale.assign(scale)
        self.recoveries.assign(trials + 1)
        logging.warning("training diverged at step %d: %s. Recovery %d of %d: restored %s "
                        "(step %d) and retrying with learning rates x%g", step, problem,
                        trials + 1, config.recovery_max_trials, latest, restored, scale)
        if self.chief:
            self._reopen_logs(restored, restored)

    # -- the loop ------------------------------------------------------------------------------

    def _run_steps(self, iterator, num_steps: int, stop: checkpointing.StopRequest):
        """Calls the training tf.function; returns (totals as floats, norms).

        The call runs in a helper thread while this (main) thread waits in short intervals:
        Python runs signal handlers only in the main thread and only between bytecodes, so a
        SIGTERM during a long call would otherwise wait for the whole call (`steps_per_loop`
        updates). Here the handler runs at once, and the stop flag it leads to ends the call
        after the update in progress.
        """
        outcome: dict[str, Any] = {}

        def call():
            try:
                outcome["value"] = self.train_step.run(iterator, tf.constant(num_steps, tf.int32))
            except BaseException as error:  # re-raised in the main thread
                outcome["error"] = error

        flagged = False
        if stop.requested:
            self.stop_flag.assign(True)
            flagged = True
        tracing = not self._traced
        started = time.monotonic()
        if tracing:
            logging.info("tracing the train step: TensorFlow builds and optimises the graph on "
                         "the first call (%d update(s) in this call), which can take a minute",
                         num_steps)
        thread = threading.Thread(target=call, name="train-steps", daemon=True)
        thread.start()
        try:
            last_poll = last_note = started
            seen = int(self.step.numpy())
            while thread.is_alive():
                thread.join(0.05)
                if stop.requested and not flagged:
                    self.stop_flag.assign(True)
                    flagged = True
                now = time.monotonic()
                if now - last_poll < PROGRESS_POLL_S:
                    continue
                last_poll = now
                # The step variable advances inside the call: progress from the first update,
                # not only after the call's `num_steps` updates.
                current = int(self.step.numpy())
                if tracing and current > seen:
                    tracing = False
                    logging.info("train step traced: the first update finished %.1f s after "
                                 "the call started", now - started)
                if self.progress is not None and current > seen:
                    self.progress.update(current, loss=self._last_loss)
                elif self.progress is not None:
                    self.progress.refresh()  # a long step: the line again after log_every_s
                seen = max(seen, current)
                if tracing and now - last_note >= SILENCE_S:
                    last_note = now
                    logging.info("still tracing the train step (%.0f s)", now - started)
        except BaseException:  # e.g. KeyboardInterrupt: end the call after this update
            self.stop_flag.assign(True)
            thread.join()
            raise
        if "error" in outcome:
            raise outcome["error"]
        if not self._traced:
            self._traced = True
            if tracing:  # the whole call ended before a poll saw its first update
                logging.info("train step traced: the first call (%d update(s)) took %.1f s",
                             num_steps, time.monotonic() - started)
        totals, norms = outcome["value"]
        return {name: float(value) for name, value in totals.items()}, norms

    def _start_progress(self, step: int) -> None:
        """The chief's progress: a bar on a terminal (--progress_bar), else a plain log line at
        the first update and then every 30 s."""
        if self.chief:
            from trainer import progress

            if self.progress is not None and hasattr(self.progress, "close"):
                self.progress.close()
            self.progress = progress.ProgressBar(
                self.stop_at, initial_step=step,
                is_tty=None if self.config.progress_bar else False, log_every_s=SILENCE_S)

    def train(self, stop: checkpointing.StopRequest) -> bool:
        """Trains up to `stop_at`; returns False if a stop was requested (checkpoint saved)."""
        config = self.config
        step = int(self.step.numpy())
        if stop.requested:  # during setup: nothing new to save
            return False
        if int(self.pending_eval.numpy()) == step:
            if self.chief:  # SIGTERM cut this step's dev evaluation short: do it now
                try:
                    self._maybe_keep_best(step, self.evaluate("dev", step))
                except _StopRequested:
                    return False
            self.pending_eval.assign(-1)
        if step >= self.stop_at:
            return True
        if self._patience_exhausted(step):  # resumed after it had stopped early
            self.early_stopped_at = step
            return True
        if config.recovery_max_trials and self.checkpointer.latest_checkpoint is None:
            self.checkpointer.save()  # a healthy state for a recovery to return to
        iterator = iter(self.train_dataset())
        self._start_progress(step)
        log_path = self.run_dir / TRAIN_LOG
        while step < self.stop_at:
            boundaries = [self.stop_at, step + config.steps_per_loop,
                          _next_boundary(step, config.log_every),
                          _next_boundary(step, config.checkpoint_every)]
            if self.eval_every:
                boundaries.append(_next_boundary(step, self.eval_every))
            num_steps = min(boundaries) - step
            started = time.time()
            totals, norms = self._run_steps(iterator, num_steps, stop)
            elapsed = max(time.time() - started, 1e-9)
            first, step = step + 1, int(self.step.numpy())  # fewer than num_steps on a stop
            evaluating = bool(self.eval_every and step % self.eval_every == 0
                              and step < self.stop_at and totals["steps"])
            saving = (step % config.checkpoint_every == 0 or step == self.stop_at
                      or stop.requested)
            # NaN when no update counted (fp16: the optimizer skipped every one of them).
            loss = totals["loss_sum"] / totals["count"] if totals["count"] else math.nan
            problem = None
            if totals["steps"]:
                problem = self._divergence(first, step, loss, totals, norms,
                                           check_weights=evaluating or saving)
            if problem is not None:
                # Nothing of these steps is logged, evaluated or saved.
                self._recover_or_stop(problem, step)
                step = int(self.step.numpy())
                iterator = iter(self.train_dataset())
                self._start_progress(step)
                continue
            if totals["count"] > 0:
                self._recent_losses.append(loss)
                self._last_loss = loss
            tokens_per_s = totals["tokens"] / elapsed
            if self.progress is not None:
                self.progress.update(step, loss=loss, tokens_per_s=tokens_per_s)
            if totals["steps"] and (step % config.log_every == 0 or step == self.stop_at):
                self._log_train(log_path, step, loss, norms, totals, elapsed)
            early_stop = False
            if evaluating:
                if self.chief:
                    try:
                        self._maybe_keep_best(step, self.evaluate("dev", step))
                    except _StopRequested:
                        logging.warning("signal %s during the dev evaluation of step %d: saving "
                                        "a checkpoint and stopping (a restart evaluates first)",
                                        stop.signal_number, step)
                        self.pending_eval.assign(step)
                        self.checkpointer.save()
                        return False
                early_stop = self._patience_exhausted(step)
            if step % config.checkpoint_every == 0 or early_stop:
                self.checkpointer.save()
            if early_stop:
                logging.info("early stopping at step %d: dev F1 has not improved on %.4f (step "
                             "%d) for %d evaluations", step, self._best_f1, self._best_step,
                             config.early_stopping_patience)
                self.early_stopped_at = step
                return True
            if stop.requested:
                logging.warning("signal %s: saving a checkpoint at step %d and stopping",
                                stop.signal_number, step)
                self.checkpointer.save()
                return False
        self.checkpointer.save()
        return True

    def _log_train(self, log_path, step, loss, norms, totals, elapsed) -> None:
        if not self.chief:
            return
        learning_rates = self.plan.learning_rates()
        grad_norms = {g: float(n) for g, n in zip(self.train_step.group_names, norms.numpy())}
        record = {"step": step, "loss": loss, "learning_rate": learning_rates,
                  "grad_norm": grad_norms, "tokens_per_s": totals["tokens"] / elapsed,
                  "sentences_per_s": totals["windows"] / elapsed,
                  "loss_scale": self.plan.loss_scale()}
        _append_jsonl(log_path, record)
        self._write_train_summaries(record)

    def _write_train_summaries(self, record: dict) -> None:
        self.summaries.train_step(record["step"], loss=record["loss"],
                                  lr_by_group=record.get("learning_rate"),
                                  grad_norm_by_group=record.get("grad_norm"),
                                  loss_scale=record.get("loss_scale"),
                                  tokens_per_s=record.get("tokens_per_s"),
                                  sentences_per_s=record.get("sentences_per_s"))

    def finish(self) -> dict[str, Any]:
        """Final dev and test evaluation, results.json, export (chief).

        Raises:
          _StopRequested: SIGTERM arrived before the export (training is saved; a restart
            evaluates again).
        """
        step = int(self.step.numpy())
        results: dict[str, Any] = {"step": step, "total_steps": self.total_steps}
        if self.early_stopped_at is not None:
            results["early_stopped_at"] = self.early_stopped_at
        if self.chief:
            from data_pipeline.manifest import strict_json_dumps

            dev = self.evaluate("dev", step, write_predictions=True)
            self._maybe_keep_best(step, dev)
            # Test is scored once, with the model chosen on dev: the best checkpoint, which is
            # also what the export below serves. The final weights are already saved in
            # checkpoints/, so a later resume is unaffected.
            best_step = self.checkpointer.restore_best()
            if best_step is not None and best_step != step:
                logging.info("evaluating test with the best dev checkpoint (step %d)", best_step)
            test = self.evaluate("test", step, write_predictions=True)
            results.update(dev=dev, test=test, test_checkpoint_step=best_step or step)
            if self.config.head == "crf" and hasattr(self.model, "transitions"):
                self.summaries.transitions_image(step, self.model.transitions.numpy(),
                                                 self.label_map)
            (self.run_dir / RESULTS).write_text(
                strict_json_dumps(results, non_finite="null", indent=2, sort_keys=True))
            if self.stop is not None and self.stop.requested:
                raise _StopRequested()
            if self.config.export:
                export.export_after_training(self.run_dir, log=logging.info,
                                             warn=logging.warning)
        return results

    def close(self) -> None:
        if self.summaries is not None:
            self.summaries.close()
        if self.progress is not None and hasattr(self.progress, "close"):
            self.progress.close()
        if self.checkpointer is not None:
            self.checkpointer.close()


def train_and_evaluate(config: TrainConfig, run_dir: str | os.PathLike | None = None
                       ) -> dict[str, Any]:
    """Trains as `config` says, evaluates dev (and test at the end), writes the run directory.

    Args:
      config: the validated run configuration.
      run_dir: overrides `config.run_dir`.

    Returns:
      {"step", "total_steps", "dev": metrics, "test": metrics} (metrics on the chief only), or
      {"step", "stopped": True} when SIGTERM stopped the run early (training is saved in a
      checkpoint; a restart resumes, or repeats the final evaluation).

    Raises:
      checkpointing.DivergenceError: training diverged (and --recovery_max_trials is 0 or used
        up); every checkpoint on disk is finite.
    """
    if run_dir is not None:
        config = config.replace(run_dir=os.path.abspath(run_dir))
    # config.json records the precision used, so export and resume on this machine agree.
    chosen, reason = precision.resolve(config.mixed_precision)
    if config.mixed_precision == "auto":
        logging.info("mixed precision: auto -> %s (%s)", chosen, reason)
        config = config.replace(mixed_precision=chosen)
    run = _Run(config, pathlib.Path(config.run_dir))
    # The policy must be set before the model is built (its layers read it when created).
    with precision.global_policy(config.mixed_precision):
        try:
            with checkpointing.StopRequest() as stop:
                run.stop = stop
                run.setup()
                finished = run.train(stop)
                if finished:
                    try:
                        return run.finish()
                    except _StopRequested:
                        logging.warning("signal %s during the final evaluation: stopping (the "
                                        "last checkpoint is saved; a restart evaluates again)",
                                        stop.signal_number)
                return {"step": int(run.step.numpy()), "stopped": True}
        finally:
            run.close()
