"""--mixed_precision=auto: the rule by hardware, and what a run records."""

import pytest

from trainer import precision

CPUINFO_SPR = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
CPUINFO_EPYC = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"


def test_cpu_flags_read_from_cpuinfo_text():
    assert {"avx512_bf16", "amx_bf16"} <= precision.cpu_flags(CPUINFO_SPR)
    assert "avx512_bf16" not in precision.cpu_flags(CPUINFO_EPYC)
    assert precision.cpu_flags("no flags here") == set()


@pytest.mark.parametrize("gpus, cpuinfo, expected", [
    ([], CPUINFO_EPYC, "none"),                   # AVX2 only: bf16 would be emulated
    ([], CPUINFO_SPR, "bf16"),                    # AVX512_BF16 / AMX
    ([], "flags : avx2 amx_bf16\n", "bf16"),
    ([(8, 0)], CPUINFO_EPYC, "bf16"),             # A100: the GPU decides, not the CPU
    ([(9, 0), (8, 6)], CPUINFO_EPYC, "bf16"),
    ([(7, 0)], CPUINFO_SPR, "fp16"),              # V100: fp16 with loss scaling
    ([(8, 0), (7, 5)], CPUINFO_SPR, "fp16"),      # the slowest GPU decides
])
def test_auto_rule(gpus, cpuinfo, expected):
    chosen, reason = precision.choose(gpu_capabilities=gpus, flags=precision.cpu_flags(cpuinfo))
    assert chosen == expected
    assert reason


def test_explicit_values_pass_through():
    for value in ("none", "fp16", "bf16"):
        assert precision.resolve(value) == (value, "as requested")


def test_resolve_auto_matches_this_machine():
    chosen, _ = precision.resolve("auto")
    flags = precision.cpu_flags()
    expected = "bf16" if flags & {"avx512_bf16", "amx_bf16"} else "none"
    assert chosen == expected  # CI machines have no GPU


def test_global_policy_is_restored():
    import tensorflow as tf

    before = tf.keras.mixed_precision.global_policy().name
    with precision.global_policy("bf16"):
        assert tf.keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert tf.keras.mixed_precision.global_policy().name == before
