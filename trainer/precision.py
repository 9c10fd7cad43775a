"""Mixed precision: choosing it by hardware (`--mixed_precision=auto`) and setting the policy.

    value   Keras policy       loss scaling   chosen by auto when
    none    float32            -              a CPU without bf16 instructions (e.g. AVX2 only)
    bf16    mixed_bfloat16     -              a GPU of compute capability >= 8.0 (Ampere+), or a
                                              CPU with AVX512_BF16 or AMX (bf16 matmuls)
    fp16    mixed_float16      dynamic        an older GPU (compute capability 7.x and below)

Why by hardware: on a 2-core Xeon with AVX512_BF16 `mixed_bfloat16` made the fine-tuning step
about 1.35x faster, on an AVX2-only EPYC it made it 13-24% slower (README, "Measured here"): on a
CPU without native bf16 every bf16 matmul is emulated through float32 conversions.
"""

from __future__ import annotations

import contextlib
import pathlib
from typing import Iterator

POLICIES = {"none": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    if cpuinfo is None:
        try:
            cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def choose(*, gpu_capabilities: list[tuple[int, int]], flags: set[str]) -> tuple[str, str]:
    """The `auto` rule (see the module docstring), from what the hardware reports.

    Args:
      gpu_capabilities: CUDA compute capability (major, minor) of each visible GPU.
      flags: CPU feature flags, as from `cpu_flags`.

    Returns:
      (precision "none" | "fp16" | "bf16", the reason in words, for the log).
    """
    if gpu_capabilities:
        lowest = min(gpu_capabilities)
        if lowest >= (8, 0):
            return "bf16", f"GPU compute capability {lowest[0]}.{lowest[1]} >= 8.0 has bf16"
        return "fp16", (f"GPU compute capability {lowest[0]}.{lowest[1]} < 8.0 has no fast "
                        "bf16; fp16 with dynamic loss scaling")
    found = [flag for flag in _BF16_CPU_FLAGS if flag in flags]
    if found:
        return "bf16", f"CPU has {' and '.join(found).upper()} (native bf16 matmuls)"
    return "none", ("CPU has neither AVX512_BF16 nor AMX_BF16: bf16 would be emulated and "
                    "slower than float32")


def resolve(value: str) -> tuple[str, str]:
    """`value` if it is none/fp16/bf16, else the precision `auto` picks on this machine.

    Returns:
      (precision, reason).
    """
    if value != "auto":
        return value, "as requested"
    import tensorflow as tf

    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capabilities.append(tuple(details.get("compute_capability") or (0, 0)))
    return choose(gpu_capabilities=capabilities, flags=cpu_flags())


@contextlib.contextmanager
def global_policy(precision: str) -> Iterator[None]:
    """Sets the Keras policy of `precision` (none/fp16/bf16) and restores the previous one.

    Layers read the policy when they are created, so build models inside this block.
    """
    import tensorflow as tf

    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(POLICIES[precision])
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
