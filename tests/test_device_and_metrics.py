"""Device choice (precision and XLA by what the machine has and measures; overrides win) and
the TFMA Dice arithmetic. The decision is tested with CPU flags, GPU compute capabilities and
probe timings injected; the real probe is run once, for its answer's shape and its time."""
import json
import os
import time

import pytest

from evaluation.tfma_dice import dice_from_counts, iou_from_counts
from trainer import precision as P
from trainer.device import decide_settings, resolve_device_settings

AVX2_ONLY = {"avx", "avx2", "fma", "f16c"}
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512_bf16"}
TINY_WIDTHS = ((4, 8, 16, 32, 64), 4)


def never(*_):
    raise AssertionError("the probe must not run here")


def probe_giving(fp32_s, bf16_s):
    calls = []

    def probe():
        calls.append(1)
        return fp32_s, bf16_s
    probe.calls = calls
    return probe


def test_cpu_without_native_bf16_trains_fp32_without_probing():
    s = decide_settings("auto", "auto", [], AVX2_ONLY, never)
    assert s.policy == "float32" and s.jit_compile is False
    assert "CPU" in s.reason and "without native bf16" in s.reason
    assert s.bf16_speedup is None


@pytest.mark.parametrize("flag", P.NATIVE_BF16_FLAGS)
def test_cpu_with_native_bf16_uses_it_only_when_measured_faster(flag):
    flags = AVX2_ONLY | {flag}
    faster = probe_giving(fp32_s=0.30, bf16_s=0.10)
    s = decide_settings("auto", "auto", [], flags, faster)
    assert s.policy == "mixed_bfloat16" and s.jit_compile is False
    assert s.bf16_speedup == pytest.approx(3.0) and "3.00x" in s.reason
    assert faster.calls == [1]
    slower = decide_settings("auto", "auto", [], flags, probe_giving(0.10, 0.16))
    assert slower.policy == "float32" and slower.bf16_speedup == pytest.approx(0.625)
    # Within the noise margin fp32 stays: bf16 must win clearly.
    assert decide_settings("auto", "auto", [], flags,
                           probe_giving(0.11, 0.10)).policy == "float32"
    # A bf16 step that failed (timed as infinitely slow) means fp32.
    failed = decide_settings("auto", "auto", [], flags, probe_giving(0.1, float("inf")))
    assert failed.policy == "float32" and "bf16 training step failed" in failed.reason


@pytest.mark.parametrize("capabilities, policy", [
    ([(8, 0)], "mixed_bfloat16"),           # one A100
    ([(9, 0), (9, 0)], "mixed_bfloat16"),   # two H100
    ([(7, 5)], "mixed_float16"),            # T4: no bf16 tensor cores
    ([(8, 6), (7, 0)], "mixed_float16"),    # mixed: the oldest GPU decides
])
def test_gpu_precision_follows_compute_capability_with_xla(capabilities, policy):
    devices = tuple(f"/gpu:{i}" for i in range(len(capabilities))) if len(capabilities) > 1 else ()
    s = decide_settings("auto", "auto", capabilities, AVX512_BF16, never, devices)
    assert s.policy == policy and s.jit_compile is True
    assert f"{len(capabilities)} GPU(s)" in s.reason
    assert s.replicas == max(len(capabilities), 1)


def test_every_switch_can_be_overridden():
    s = decide_settings("fp32", "on", [], AVX512_BF16, never)
    assert s.policy == "float32" and s.jit_compile is True
    s = decide_settings("mixed_bfloat16", "off", [(7, 0)], AVX2_ONLY, never)
    assert s.policy == "mixed_bfloat16" and s.jit_compile is False
    assert "forced" in s.reason
    with pytest.raises(ValueError):
        decide_settings("int8", "auto", [], AVX2_ONLY, never)
    with pytest.raises(ValueError):
        decide_settings("auto", "maybe", [], AVX2_ONLY, never)
    with pytest.raises(ValueError):
        resolve_device_settings("int8", "auto")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\n"
                       "flags\t\t: fpu sse2 avx2 avx512_bf16\n\nprocessor\t: 1\n")
    flags = P.cpu_flags(str(cpuinfo))
    assert {"avx2", "avx512_bf16"} <= flags and P.native_bf16(flags) == "avx512_bf16"
    assert P.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_probe_is_bounded_in_time_and_cached(tmp_path, monkeypatch):
    filters, skip = TINY_WIDTHS
    monkeypatch.setenv("UNET3P_CACHE_DIR", str(tmp_path / "machine"))
    probe = P.cached_probe(filters, skip, str(tmp_path))
    start = time.perf_counter()
    fp32_s, bf16_s = probe()
    measured_in = time.perf_counter() - start
    # A few steps of a small network: seconds, not minutes, even on a slow 2-core host.
    assert measured_in < 60, f"probe took {measured_in:.1f} s"
    assert 0 < fp32_s < 5 and bf16_s > 0
    cache = json.loads((tmp_path / P.PROBE_FILE).read_text())
    (entry,) = cache.values()
    assert entry["fp32_s"] == fp32_s and entry["filters"] == list(filters)
    # The second call reads the cache: same answer, no training.
    start = time.perf_counter()
    assert probe() == (fp32_s, bf16_s)
    assert time.perf_counter() - start < 1.0
    # Another pipeline root on this machine reads the machine's cache, and keeps a copy.
    start = time.perf_counter()
    assert P.cached_probe(filters, skip, str(tmp_path / "root2"))() == (fp32_s, bf16_s)
    assert time.perf_counter() - start < 1.0
    assert json.loads((tmp_path / "root2" / P.PROBE_FILE).read_text()) == cache
    assert json.loads((tmp_path / "machine" / P.PROBE_FILE).read_text()) == cache
    # Another width is another entry.
    P.cached_probe((8, 16, 32, 64, 128), 8, str(tmp_path))()
    assert len(json.loads((tmp_path / P.PROBE_FILE).read_text())) == 2


def test_this_machine_gets_a_choice_consistent_with_its_flags(tmp_path):
    filters, skip = TINY_WIDTHS
    s = resolve_device_settings("auto", "auto", filters=filters, skip_filters=skip,
                                probe_cache_dir=str(tmp_path))
    if P.native_bf16(P.cpu_flags()) is None:
        assert s.policy == "float32" and s.bf16_speedup is None
    else:
        assert s.bf16_speedup is not None
        assert (s.policy == "mixed_bfloat16") == (s.bf16_speedup >= P.MIN_BF16_SPEEDUP)
        assert os.path.exists(tmp_path / P.PROBE_FILE)


def test_dice_and_iou_from_counts():
    assert dice_from_counts(0, 0, 0) == 1.0 and iou_from_counts(0, 0, 0) == 1.0
    assert dice_from_counts(0, 10, 0) == 0.0
    assert dice_from_counts(5, 10, 10) == pytest.approx(0.5)
    assert iou_from_counts(5, 10, 10) == pytest.approx(5 / 15)
