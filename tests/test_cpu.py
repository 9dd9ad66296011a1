"""The CPU dtype and thread rules (bf16 only where the CPU computes it natively, else float32; no core reserved for
vLLM's scheduler on machines with at most 2 cores), with faked CPU flags: no model, no engine."""
import pytest

import common
import models

ZEN1 = "fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c avx2 fma bmi2 sha_ni"  # AMD EPYC 7001: AVX2, no AVX-512
ICELAKE = ZEN1 + " avx512f avx512bw avx512vl avx512_vnni"                    # AVX-512 but no bf16
SPR = ICELAKE + " avx512_bf16 amx_tile amx_bf16 amx_int8"                    # Sapphire Rapids: AMX
GRAVITON3 = "fp asimd evtstrm aes sha1 sha2 crc32 atomics fphp asimdhp sve bf16 i8mm"  # aarch64


def fake_cpuinfo(tmp_path, key, flags):
    p = tmp_path / "cpuinfo"
    p.write_text(f"processor\t: 0\nmodel name\t: X\n{key}\t\t: {flags}\n\nprocessor\t: 1\n{key}\t\t: {flags}\n")
    return str(p)


@pytest.mark.parametrize("key,flags,want", [("flags", ZEN1, "float32"), ("flags", ICELAKE, "float32"),
                                            ("flags", SPR, "bfloat16"), ("Features", GRAVITON3, "bfloat16"),
                                            ("flags", "", "float32")])
def test_cpu_dtype_follows_native_bf16(tmp_path, key, flags, want):
    fl = models.cpu_flags(fake_cpuinfo(tmp_path, key, flags))
    assert fl == set(flags.split())
    dtype, why = models.cpu_dtype("auto", fl)
    assert dtype == want
    assert ("natively" in why) == (want == "bfloat16") and ("emulated" in why) == (want == "float32")


def test_cpu_dtype_flag_overrides_and_is_checked():
    for d in ("bfloat16", "float16", "float32"):
        assert models.cpu_dtype(d, set(ZEN1.split())) == (d, f"--dtype {d}")
    with pytest.raises(common.DataError, match="--dtype 'fp8'"):
        models.cpu_dtype("fp8")
    assert models.cpu_flags("/nonexistent/cpuinfo") == set()


def test_thread_setting_follows_the_core_count():
    """bench/cpu_speed.py on an idle 2-core machine: no reserved core is 1.6-1.8x faster (docs/cpu.md); larger
    machines keep vLLM's default of one reserved core."""
    assert models.cpu_thread_env(2) == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    assert models.cpu_thread_env(1) == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    assert models.cpu_thread_env(16) == {}
