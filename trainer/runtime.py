"""Where the run executes: logical CPU devices, the distribution strategy, which worker is chief."""

from __future__ import annotations

import tensorflow as tf

from data_pipeline import tensorflow_logs
from trainer.config import ConfigError, TrainConfig


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
    """default | mirrored (over GPUs, or over --num_cpu_devices logical CPUs) | multi_worker.

    Also spends, while the devices are new, TensorFlow's once-per-process false oneDNN error
    (`tensorflow_logs.absorb_onednn_dtype_error`), which the model's first bool transpose
    would print otherwise.
    """
    strategy = _create_strategy(config)
    tensorflow_logs.absorb_onednn_dtype_error()
    return strategy


def _create_strategy(config: TrainConfig) -> tf.distribute.Strategy:
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
    """True for the worker that writes the run directory (the only one outside multi_worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief
