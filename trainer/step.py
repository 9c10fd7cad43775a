"""The train step: `TrainStep.run(iterator, num_steps)` runs `num_steps` optimizer updates in one
`tf.function` (orbit's standard-runner style; `trainer.loop` is the controller around it).

`num_steps` is a tensor, so changing it does not retrace. Each update, on each replica:

    count    = all-reduce SUM over replicas of the counted tokens (label != IGNORE_ID) of all
               micro-batches of this update
    loss     = sum over micro-batches of  compute_loss(...).loss_sum / count
    grads    = all-reduce SUM over replicas of d loss / d (trainable variables only)

so one replica with a global batch of B and N replicas with B/N each compute the same gradient,
and gradient accumulation over k micro-batches equals one batch k times larger. Logging,
entity scoring and checkpointing stay in plain Python between calls (trainer.loop).
"""

from __future__ import annotations

import tensorflow as tf

from data_pipeline.records import FEATURES_KEY
from data_pipeline.tags import IGNORE_ID
from trainer import optimization


class TrainStep:
    """Builds the tf.function that runs `num_steps` updates per call.

    Attributes:
      watched_variable_names: names of the variables the gradient tape watched (recorded while
        tracing): exactly the trainable groups' variables, never a frozen group's.
    """

    def __init__(self, *, model, plan: optimization.OptimizationPlan,
                 strategy: tf.distribute.Strategy, grad_accum_steps: int, step: tf.Variable,
                 input_position: tf.Variable, jit_compile: bool = False,
                 stop_flag: tf.Variable | None = None):
        """stop_flag: a bool variable read before every update; once True, the call returns
        after the update in progress (the loop sets it when SIGTERM arrives)."""
        self.model = model
        self.stop_flag = stop_flag
        self.plan = plan
        self.strategy = strategy
        self.accum = grad_accum_steps
        self.step = step
        self.input_position = input_position
        self.group_names = list(plan.trainable_groups)
        self._group_sizes = [len(plan.trainable_groups[g]) for g in self.group_names]
        self.watched_variable_names: set[str] = set()
        self._gradients = tf.function(self._micro_batch_gradients, jit_compile=True) \
            if jit_compile else self._micro_batch_gradients
        self.run = tf.function(self._loop)

    def _micro_batch_gradients(self, batch: dict, denominator: tf.Tensor):
        """Gradients of (loss_sum / denominator) for one micro-batch on one replica.

        Args:
          batch: input_ids, attention_mask, label_ids int32 [B, T] (+ other features).
          denominator: float32 scalar, the global count of counted tokens of this update.

        Returns:
          (gradients aligned with plan.trainable_variables, loss_sum float32 scalar)
        """
        model, plan = self.model, self.plan
        variables = plan.trainable_variables
        encoded = None
        if plan.encoder_frozen and FEATURES_KEY in batch:
            # The feature cache holds what the frozen encoder computed (feature_cache.py).
            encoded = model.encoded_from_features(batch[FEATURES_KEY])
        elif plan.encoder_frozen:
            # No dropout, no tape: the frozen encoder is inference only.
            encoded = model.encode(batch["input_ids"], batch["attention_mask"], training=False)
            encoded = tf.nest.map_structure(tf.stop_gradient, encoded)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(variables)
            if encoded is None:
                encoded = model.encode(batch["input_ids"], batch["attention_mask"], training=True)
            logits = model.tag(encoded, batch["attention_mask"], training=True)
            loss_sum, _ = model.compute_loss(logits, batch["label_ids"])
            loss_sum = tf.cast(loss_sum, tf.float32)
            loss = loss_sum / denominator
            if plan.loss_scaling:
                loss = plan.optimizer.get_scaled_loss(loss)
        self.watched_variable_names.update(v.name for v in tape.watched_variables())
        # Dense gradients: the norm of an IndexedSlices (embedding lookups) is the norm of its
        # values, which over-counts repeated token ids, so clipping would differ from the dense
        # (all-reduced) gradient of a multi-replica run. Token embedding matrices come back as
        # [K, dim] over the train split's ids (optimization.CompactRows), the rest as dense.
        return plan.dense_gradients(tape.gradient(loss, variables)), loss_sum

    def _replica_update(self, micro_batches: list[dict]):
        """One optimizer update on one replica (runs under `strategy.run`).

        Args:
          micro_batches: grad_accum_steps batches as from make_dataset (int32 [B, T] / [B]).

        Returns:
          ({"loss_sum", "count", "tokens", "windows"}: float32 scalars of this replica,
           gradient norm per trainable group before clipping: float32 [num_groups]).
        """
        plan = self.plan
        context = tf.distribute.get_replica_context()
        local_count = tf.add_n([tf.reduce_sum(tf.cast(b["label_ids"] != IGNORE_ID, tf.float32))
                                for b in micro_batches])
        global_count = context.all_reduce(tf.distribute.ReduceOp.SUM, local_count)
        denominator = tf.maximum(global_count, 1.0)
        gradients, loss_sum = None, 0.0
        for batch in micro_batches:
            batch_gradients, batch_loss = self._gradients(batch, denominator)
            loss_sum += batch_loss
            if gradients is None:
                gradients = batch_gradients
            else:
                gradients = [a + b for a, b in zip(gradients, batch_gradients)]
        if self.strategy.num_replicas_in_sync > 1:
            gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
        if plan.loss_scaling:
            gradients = plan.optimizer.get_unscaled_gradients(gradients)
        norms, start = [], 0
        for size in self._group_sizes:  # gradient norm per group, before clipping
            norms.append(tf.linalg.global_norm(gradients[start:start + size]))
            start += size
        plan.optimizer.apply_gradients(zip(gradients, plan.trainable_variables),
                                       skip_gradients_aggregation=True)
        tokens = tf.add_n([tf.reduce_sum(tf.cast(b["attention_mask"], tf.float32))
                           for b in micro_batches])
        windows = tf.add_n([tf.cast(tf.shape(b["input_ids"])[0], tf.float32)
                            for b in micro_batches])
        totals = {"loss_sum": loss_sum, "count": local_count, "tokens": tokens,
                  "windows": windows}
        return totals, tf.stack(norms)

    def _stop_requested(self) -> tf.Tensor:
        if self.stop_flag is None:
            return tf.constant(False)
        return tf.convert_to_tensor(self.stop_flag)

    def _loop(self, iterator, num_steps: tf.Tensor):
        """Runs up to `num_steps` (int32 scalar tensor) updates (fewer once stop_flag is set).

        Returns:
          totals: float32 scalars summed over the updates: "loss_sum" and "count" over the
            updates whose loss and gradient norms are all finite, "non_finite" (updates where
            one was NaN or infinite: with fp16 loss scaling the optimizer skipped those),
            "tokens", "windows", "steps" (updates run).
          norms: float32 [num_groups], the gradient norms of the last update.
        """
        strategy = self.strategy
        names = ("loss_sum", "count", "tokens", "windows", "non_finite", "steps")
        totals = {name: tf.constant(0.0) for name in names}
        norms = tf.zeros([len(self.group_names)])
        for _ in tf.range(num_steps):
            if self._stop_requested():
                break
            micro_batches = [next(iterator) for _ in range(self.accum)]
            step_totals, step_norms = strategy.run(self._replica_update, args=(micro_batches,))
            step_totals = {name: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                           for name, value in step_totals.items()}
            norms = strategy.reduce(tf.distribute.ReduceOp.MEAN, step_norms, axis=None)
            finite = tf.logical_and(tf.math.is_finite(step_totals["loss_sum"]),
                                    tf.reduce_all(tf.math.is_finite(norms)))
            for name in ("loss_sum", "count"):
                step_totals[name] = tf.where(finite, step_totals[name], 0.0)
            step_totals["non_finite"] = 1.0 - tf.cast(finite, tf.float32)
            step_totals["steps"] = tf.constant(1.0)
            totals = {name: totals[name] + step_totals[name] for name in names}
            self.step.assign_add(1)
            self.input_position.assign_add(self.accum)
        return totals, norms
