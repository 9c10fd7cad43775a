"""Per-variable-group learning rates, AdamW with decoupled weight decay, loss scaling.

The model names its variables in groups (`model.variable_groups()`): "embeddings",
"encoder_layer_0".."encoder_layer_{L-1}", "layer_mix", "bilstm", "head", "crf". Each group gets a
peak learning rate and its own warmup + decay schedule:

    group              peak learning rate (defaults)
    encoder_layer_i    encoder_lr * layer_decay ** (L - 1 - i)     (top layer: encoder_lr)
    embeddings         embeddings_lr, else encoder_lr * layer_decay ** L
    layer_mix          layer_mix_lr, else head_lr
    bilstm             bilstm_lr, else head_lr
    head               head_lr
    crf                crf_lr, else head_lr

A group whose peak is 0 is frozen: its variables are left out of the optimizer and out of the
gradient tape (the loop watches only `OptimizationPlan.trainable_variables`). When every encoder
group is frozen the loop runs the encoder outside the tape in inference mode.

One optimizer (`GroupedAdamW`) updates every trainable group, so one dynamic loss scale (fp16)
covers all groups and one global-norm clip sees all gradients.

Row-compact embedding updates. A token embedding matrix (BERT's word embeddings: 250,037 x 384
for multilingual-e5-small) gets a gradient only in the rows of ids that occur in a batch, and a
row that never occurred has m = v = 0, so dense Adam leaves it where it is. Updating the whole
matrix anyway (plus its m and v) cost more than the rest of a fine-tuning step on 2 CPU cores.
So for each such matrix the plan takes the ids that occur in the train split (`rows`, K of them,
about 5,000 for People's Daily), keeps m and v for those rows only ([K, dim]), turns each
gradient (an IndexedSlices) into a dense [K, dim] one (duplicates summed, so its norm and
clipping are those of the dense gradient), and updates those K rows. The result equals dense
AdamW except that rows of ids absent from the train split are not weight-decayed (they get no
gradient, so they do not train either way).
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import tensorflow as tf

from trainer.config import TrainConfig

_NO_WEIGHT_DECAY = re.compile(r"layer_?norm|/bias(:\d+)?$|^bias(:\d+)?$", re.IGNORECASE)


class WarmupDecaySchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak`, then linear or cosine decay to `peak * end_ratio`.

    Example (peak 1e-3, warmup 10, total 110, linear, end_ratio 0): step 0 -> 0, step 5 -> 5e-4,
    step 10 -> 1e-3, step 60 -> 5e-4, step >= 110 -> 0. "constant" holds the peak after warmup.
    """

    def __init__(self, peak: float, *, warmup_steps: int, total_steps: int, decay: str = "linear",
                 end_ratio: float = 0.0):
        super().__init__()
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), 1)
        self.decay = decay
        self.end_ratio = float(end_ratio)

    def __call__(self, step):
        """step: int or scalar tensor (updates done so far). Returns float32 scalar."""
        step = tf.cast(step, tf.float32)
        peak = tf.constant(self.peak, tf.float32)
        warmup = tf.constant(float(self.warmup_steps), tf.float32)
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = tf.clip_by_value((step - warmup) / float(decay_steps), 0.0, 1.0)
        if self.decay == "linear":
            factor = 1.0 - progress
        elif self.decay == "cosine":
            factor = 0.5 * (1.0 + tf.cos(math.pi * progress))
        else:
            factor = tf.ones_like(progress)
        decayed = peak * (self.end_ratio + (1.0 - self.end_ratio) * factor)
        if self.warmup_steps == 0:
            return decayed
        return tf.where(step < warmup, peak * step / warmup, decayed)

    def get_config(self):
        return dict(peak=self.peak, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                    decay=self.decay, end_ratio=self.end_ratio)


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


def uses_weight_decay(variable_name: str) -> bool:
    """AdamW decays every weight except LayerNorm parameters and biases."""
    return not _NO_WEIGHT_DECAY.search(variable_name)


def peak_learning_rates(config: TrainConfig, group_names: list[str],
                        encoder_group_names: list[str]) -> dict[str, float]:
    """Peak learning rate per group name, following the table in the module docstring."""
    layer_indices = {name: int(name.rsplit("_", 1)[1]) for name in group_names
                     if re.fullmatch(r"encoder_layer_\d+", name)}
    num_layers = len(layer_indices)
    head = config.head_learning_rate
    rates = {}
    for name in group_names:
        if name in layer_indices:
            rate = config.encoder_learning_rate * config.layer_decay ** (
                num_layers - 1 - layer_indices[name])
        elif name == "embeddings":
            rate = config.embeddings_learning_rate
            if rate is None:
                rate = config.encoder_learning_rate * config.layer_decay ** num_layers
        elif name == "layer_mix":
            rate = config.layer_mix_learning_rate
            rate = head if rate is None else rate
        elif name == "bilstm":
            rate = head if config.bilstm_learning_rate is None else config.bilstm_learning_rate
        elif name == "crf":
            rate = head if config.crf_learning_rate is None else config.crf_learning_rate
        elif name in encoder_group_names:
            rate = config.encoder_learning_rate  # any other encoder part follows the encoder
        else:
            rate = head
        rates[name] = float(rate)
    return rates


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    if config.warmup_steps:
        return config.warmup_steps
    return int(round(config.warmup_proportion * total_steps))


class GroupedAdamW(tf.keras.optimizers.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter) and a learning rate per group.

    For a variable w in group g at update t (1-based), with lr = schedule_g(t - 1):
        m = b1 m + (1 - b1) grad;  v = b2 v + (1 - b2) grad^2
        w -= lr * weight_decay * w            (not for LayerNorm / bias)
        w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    Gradients are clipped by their global norm over all groups first (`global_clipnorm`).
    """

    def __init__(self, variable_groups: dict[str, list[tf.Variable]],
                 schedules: dict[str, WarmupDecaySchedule], *, weight_decay: float,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-6,
                 global_clipnorm: float | None = None, name: str = "GroupedAdamW",
                 compact_rows: list[tuple[tf.Variable, tf.Tensor]] = ()):
        """variable_groups: the trainable groups, kept as `variable_groups` (in the order the
        slots are built: `build` is called with their variables in this order).
        compact_rows: (variable, int32 [K] sorted row ids) pairs: those variables get
        [K, ...] slots and [K, ...] gradients (see `CompactRows`); only these rows update."""
        super().__init__(name=name, global_clipnorm=global_clipnorm or None, jit_compile=False)
        # The base class needs a learning rate; the real ones come from `schedules`.
        self._learning_rate = self._build_learning_rate(0.0)
        self.schedules = dict(schedules)
        self.decoupled_weight_decay = float(weight_decay)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self._compact_rows = {self._var_key(v): rows for v, rows in compact_rows}
        # Not tracked: a checkpoint must reach the model's variables through the model only.
        self.variable_groups = self._no_dependency(
            {group: list(vs) for group, vs in variable_groups.items()})
        self._group_of = {}
        self._decays = {}
        for group, variables in variable_groups.items():
            for variable in variables:
                key = self._var_key(variable)
                self._group_of[key] = group
                self._decays[key] = weight_decay > 0 and uses_weight_decay(variable.name)

    def build(self, var_list):
        super().build(var_list)
        if hasattr(self, "_built") and self._built:
            return
        self._built = True
        self._momentums, self._velocities = [], []
        for variable in var_list:
            rows = self._compact_rows.get(self._var_key(variable))
            if rows is None:
                self._momentums.append(self.add_variable_from_reference(variable, "m"))
                self._velocities.append(self.add_variable_from_reference(variable, "v"))
                continue
            shape = [int(rows.shape[0])] + variable.shape.as_list()[1:]  # [K, dim]
            for slots, slot in ((self._momentums, "m"), (self._velocities, "v")):
                slots.append(self.add_variable_from_reference(variable, slot, shape=shape))

    def slots(self, variable: tf.Variable) -> tuple[tf.Variable, tf.Variable]:
        """(m, v) of a variable the optimizer was built with: shaped like it, or [K, ...] for a
        row-compact one."""
        index = self._index_dict[self._var_key(variable)]
        return self._momentums[index], self._velocities[index]

    def learning_rate_of(self, group: str):
        """float32 scalar: the current learning rate of `group`."""
        return self.schedules[group](self.iterations)

    def update_step(self, gradient, variable):
        key = self._var_key(variable)
        index = self._index_dict[key]
        m, v = self._momentums[index], self._velocities[index]
        dtype = variable.dtype
        lr = tf.cast(self.learning_rate_of(self._group_of[key]), dtype)
        t = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        gradient = tf.convert_to_tensor(gradient)  # IndexedSlices (embeddings) -> dense
        m.assign_add((gradient - m) * (1 - beta_1))
        v.assign_add((tf.square(gradient) - v) * (1 - beta_2))
        alpha = lr * tf.sqrt(1 - tf.pow(beta_2, t)) / (1 - tf.pow(beta_1, t))
        rows = self._compact_rows.get(key)
        if rows is not None:  # gradient, m, v: [K, dim] for `rows` of the variable
            values = tf.gather(variable, rows)
            if self._decays[key]:
                values -= values * (lr * self.decoupled_weight_decay)
            values -= alpha * m / (tf.sqrt(v) + self.epsilon)
            variable.scatter_update(tf.IndexedSlices(values, rows))
            return
        if self._decays[key]:
            variable.assign_sub(variable * (lr * self.decoupled_weight_decay))
        variable.assign_sub(alpha * m / (tf.sqrt(v) + self.epsilon))

    def get_config(self):
        config = super().get_config()
        config.update(weight_decay=self.decoupled_weight_decay, beta_1=self.beta_1,
                      beta_2=self.beta_2, epsilon=self.epsilon)
        return config


class CompactRows:
    """Gradients of a token embedding matrix as dense [K, dim] tensors over K fixed rows.

    Example: rows [3, 7, 9] of a [10, 2] matrix; an IndexedSlices gradient with indices [7, 3, 7]
    and values [[1, 1], [2, 2], [4, 4]] becomes [[2, 2], [5, 5], [0, 0]] (rows 3, 7, 9).
    """

    def __init__(self, rows, vocab_size: int):
        """rows: sorted unique ids (ints) < vocab_size."""
        rows = np.asarray(sorted(set(int(r) for r in rows)), np.int32)
        position = np.full([vocab_size], -1, np.int32)
        position[rows] = np.arange(len(rows), dtype=np.int32)
        self.rows = tf.constant(rows)  # int32 [K]
        self._position = tf.constant(position)  # int32 [vocab]: row -> k, or -1

    def compact(self, gradient) -> tf.Tensor:
        """IndexedSlices (or dense [vocab, dim]) gradient -> dense [K, dim]."""
        if isinstance(gradient, tf.IndexedSlices):
            positions = tf.gather(self._position, gradient.indices)
            check = tf.debugging.assert_non_negative(
                positions, message="an input id outside the train split's ids got a gradient "
                "(CompactRows: the row set must hold every id the training batches contain)")
            with tf.control_dependencies([check]):
                return tf.math.unsorted_segment_sum(gradient.values, positions,
                                                    tf.shape(self.rows)[0])
        return tf.gather(gradient, self.rows)


@dataclasses.dataclass
class OptimizationPlan:
    """What the loop needs to train: which variables, with which optimizer.

    Attributes:
      optimizer: GroupedAdamW, wrapped in a LossScaleOptimizer for fp16.
      trainable_groups: group name -> variables, only groups with a peak learning rate > 0.
      frozen_groups: names of groups with peak learning rate 0 (not watched, not updated).
      peak_rates: group name -> peak learning rate (all groups).
      encoder_frozen: every encoder group is frozen -> encode outside the tape, training=False.
      trainable_variables: flat list, the only variables the tape watches.
      compact_rows: index into trainable_variables -> CompactRows, for the token embedding
        matrices updated row-compactly (see the module docstring).
    """

    optimizer: tf.keras.optimizers.Optimizer
    trainable_groups: dict[str, list[tf.Variable]]
    frozen_groups: list[str]
    peak_rates: dict[str, float]
    encoder_frozen: bool
    trainable_variables: list[tf.Variable]
    loss_scaling: bool = False
    compact_rows: dict[int, CompactRows] = dataclasses.field(default_factory=dict)

    def dense_gradients(self, gradients: list) -> list[tf.Tensor]:
        """Gradients aligned with trainable_variables as dense tensors: [K, dim] for the
        row-compact matrices, the variable's shape for the others (IndexedSlices densified, so
        norms, clipping and all-reduce see the dense gradient)."""
        dense = []
        for i, (gradient, variable) in enumerate(zip(gradients, self.trainable_variables)):
            compact = self.compact_rows.get(i)
            if gradient is None:  # no path from the loss: a zero gradient of the slot's shape
                shape = tf.shape(variable) if compact is None else tf.concat(
                    [tf.shape(compact.rows), tf.shape(variable)[1:]], axis=0)
                dense.append(tf.zeros(shape, variable.dtype))
            elif compact is not None:
                dense.append(compact.compact(gradient))
            else:
                dense.append(tf.convert_to_tensor(gradient))
        return dense

    @property
    def base_optimizer(self) -> GroupedAdamW:
        return self.optimizer.inner_optimizer if self.loss_scaling else self.optimizer

    def learning_rates(self) -> dict[str, float]:
        """Current learning rate per trainable group (Python floats, for logging)."""
        opt = self.base_optimizer
        return {g: float(opt.learning_rate_of(g)) for g in self.trainable_groups}

    def loss_scale(self) -> float | None:
        return float(self.optimizer.loss_scale) if self.loss_scaling else None


def build_optimization(config: TrainConfig, variable_groups: dict[str, list[tf.Variable]],
                       encoder_group_names: list[str], total_steps: int, *,
                       token_embeddings: list[tf.Variable] = (),
                       token_ids=None) -> OptimizationPlan:
    """Splits groups into trainable/frozen and builds the optimizer (call in strategy scope).

    Args:
      token_embeddings, token_ids: matrices indexed by input ids, and every id the training
        batches can contain (e.g. the train split's ids and the pad id): trainable ones among
        them are updated row-compactly (module docstring). Without token_ids, densely.

    Raises:
      ValueError: no group has a learning rate > 0.
    """
    rates = peak_learning_rates(config, list(variable_groups), list(encoder_group_names))
    trainable = {g: list(vs) for g, vs in variable_groups.items() if rates[g] > 0 and vs}
    frozen = [g for g in variable_groups if g not in trainable]
    if not trainable:
        raise ValueError("every variable group has learning rate 0: nothing to train")
    warmup = warmup_steps(config, total_steps)
    schedules = {g: WarmupDecaySchedule(rates[g], warmup_steps=warmup, total_steps=total_steps,
                                        decay=config.decay,
                                        end_ratio=config.end_learning_rate_ratio)
                 for g in trainable}
    variables = [v for vs in trainable.values() for v in vs]
    compact = {}
    if token_ids is not None:
        wanted = {v.ref() for v in token_embeddings}
        compact = {i: CompactRows(token_ids, int(v.shape[0])) for i, v in enumerate(variables)
                   if v.ref() in wanted}
    optimizer = GroupedAdamW(trainable, schedules, weight_decay=config.weight_decay,
                             beta_1=config.adam_beta1, beta_2=config.adam_beta2,
                             epsilon=config.adam_epsilon, global_clipnorm=config.clip_norm,
                             compact_rows=[(variables[i], c.rows) for i, c in compact.items()])
    optimizer.build(variables)
    loss_scaling = config.mixed_precision == "fp16"
    if loss_scaling:
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    encoder_frozen = all(g in frozen for g in encoder_group_names)
    return OptimizationPlan(optimizer=optimizer, trainable_groups=trainable, frozen_groups=frozen,
                            peak_rates=rates, encoder_frozen=encoder_frozen,
                            trainable_variables=variables, loss_scaling=loss_scaling,
                            compact_rows=compact)
