"""Which compute precision trains fastest here, decided by what the machine has and by timing.

Hosts differ from run to run. On a CPU with native bf16 instructions (`avx512_bf16` or
`amx_bf16`) bf16 convolutions can be 2-3x faster than fp32 at the paper's widths, yet slower
than fp32 for a narrow model, where the casts cost more than the cheaper convolutions save. On a
CPU without them bf16 is emulated and ~7x slower. So on CPU, bf16 is chosen only where the
flags say it is native AND a short timed probe of the configured widths says it is faster.
On GPU: bf16 from compute capability 8.0 (Ampere) on, fp16 with loss scaling below that.

Everything here is pure decision logic plus one probe; trainer/device.py applies the result.
The decision functions take the CPU flags, GPU compute capabilities and probe timings as
arguments, so tests inject them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import math
import platform
import time
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

from common import storage

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# bf16 must beat fp32 by this much in the probe: a ratio within timing noise keeps fp32, the
# numerically safer choice.
MIN_BF16_SPEEDUP = 1.15
PROBE_FILE = "precision_probe.json"


@dataclasses.dataclass(frozen=True)
class PrecisionChoice:
    policy: str                    # Keras dtype policy name: float32 | mixed_bfloat16 | ...
    reason: str                    # one line for the run log and the run summary
    bf16_speedup: Optional[float] = None   # probe: fp32 step time / bf16 step time


def _cpuinfo_field(names: Tuple[str, ...], cpuinfo_path: str = "/proc/cpuinfo") -> Optional[str]:
    """The value of the first /proc/cpuinfo line starting with one of `names` (Linux). A local
    kernel file, read with open() (never a URI)."""
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                if line.startswith(names):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags(cpuinfo_path: str = "/proc/cpuinfo") -> frozenset:
    """The instruction-set flags of the first CPU; empty where unknown."""
    return frozenset((_cpuinfo_field(("flags", "Features"), cpuinfo_path) or "").split())


def native_bf16(flags: Iterable[str]) -> Optional[str]:
    """The first flag that makes bf16 native, or None."""
    flags = set(flags)
    return next((f for f in NATIVE_BF16_FLAGS if f in flags), None)


def choose_gpu_precision(compute_capabilities: Sequence[Tuple[int, int]]) -> PrecisionChoice:
    """bf16 when every GPU used has compute capability >= 8.0 (bf16 tensor cores, no loss
    scaling needed); fp16 with loss scaling otherwise (Keras wraps the optimizer in a
    LossScaleOptimizer under mixed_float16)."""
    if not compute_capabilities:
        raise ValueError("choose_gpu_precision needs at least one GPU")
    oldest = min(tuple(cc) for cc in compute_capabilities)
    if oldest >= (8, 0):
        return PrecisionChoice("mixed_bfloat16",
                               f"GPU compute capability {oldest[0]}.{oldest[1]} >= 8.0 -> bf16")
    return PrecisionChoice("mixed_float16", f"GPU compute capability {oldest[0]}.{oldest[1]} "
                                            "< 8.0 -> fp16 with loss scaling")


def choose_cpu_precision(flags: Iterable[str],
                         probe: Callable[[], Tuple[float, float]]) -> PrecisionChoice:
    """fp32 unless the CPU has native bf16 and `probe()` -> (fp32 s/step, bf16 s/step) shows
    bf16 at least MIN_BF16_SPEEDUP faster. The probe is only called where bf16 is native."""
    flag = native_bf16(flags)
    if flag is None:
        return PrecisionChoice("float32", "CPU without native bf16 (no "
                                          f"{' or '.join(NATIVE_BF16_FLAGS)} flag) -> fp32")
    fp32_s, bf16_s = probe()
    if not math.isfinite(bf16_s):
        return PrecisionChoice("float32", f"CPU has {flag}, but a bf16 training step failed "
                                          "here -> fp32", 0.0)
    speedup = fp32_s / bf16_s
    if speedup >= MIN_BF16_SPEEDUP:
        return PrecisionChoice("mixed_bfloat16", f"CPU has {flag}; probe: bf16 {speedup:.2f}x "
                                                 "fp32 -> bf16", speedup)
    return PrecisionChoice("float32", f"CPU has {flag}, but probe: bf16 only {speedup:.2f}x "
                                      f"fp32 (< {MIN_BF16_SPEEDUP}) at these widths -> fp32",
                           speedup)


# ---------------------------------------------------------------------------------------------
# The probe: a few training steps of the configured UNet 3+ (its own widths) at a small size.
# A stack of conv + BatchNorm blocks alone is not enough: at the demo widths it measured bf16
# 1.2x faster, while the whole network trained 0.44-0.63x as fast in bf16, because at narrow
# widths the decoder's resizes, concatenations and casts cost more than the convolutions save.

def _compiled_probe_model(filters: Sequence[int], skip_filters: int, dtype: str, size: int,
                         channels: int):
    import keras

    from models.losses import get_loss
    from models.unet3plus import build_unet3plus

    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(dtype)
    try:
        model = build_unet3plus((size, size, channels), filters=tuple(filters),
                                skip_filters=int(skip_filters), dropout=0.0)
    finally:   # the probe leaves the global policy as it found it
        keras.mixed_precision.set_dtype_policy(previous)
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss={"mask": get_loss("bce_dice")},
                  jit_compile=False)
    return model


def time_train_steps(filters: Sequence[int], skip_filters: int,
                     dtypes: Sequence[str] = ("float32", "mixed_bfloat16"), size: int = 64,
                     channels: int = 3, batch: int = 2, steps: int = 2, rounds: int = 3
                     ) -> Dict[str, float]:
    """{dtype: seconds per training step} (forward, loss, backward, SGD update) of UNet 3+
    with these widths: each model traced by one step, then `rounds` rounds of `steps` steps
    that alternate between the dtypes, the best round of each. Alternating matters on a
    shared VM whose speed drifts: timed one after the other, the same pair of settings gave
    ratios from 0.97x to 1.58x. A dtype whose model fails to build or run gets inf."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size, channels), np.float32)
    data = tf.data.Dataset.from_tensors((x, {"mask": (x[..., :1] > 0.5).astype(np.float32)}))
    data = data.repeat()
    models, best = {}, {}
    for dtype in dtypes:
        try:
            models[dtype] = _compiled_probe_model(filters, skip_filters, dtype, size, channels)
            models[dtype].fit(data, steps_per_epoch=1, epochs=1, verbose=0)   # trace, warm up
        except Exception as e:   # noqa: BLE001  any failure means: not usable here
            logging.warning("Precision probe: a %s training step failed (%s)", dtype,
                            str(e).strip().splitlines()[0][:200])
            models.pop(dtype, None)
        best[dtype] = float("inf")
    for _ in range(rounds):
        for dtype, model in models.items():
            start = time.perf_counter()
            model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
            best[dtype] = min(best[dtype], (time.perf_counter() - start) / steps)
    return best


def probe_key(filters: Sequence[int], skip_filters: int, size: int) -> str:
    """The probe's answer holds for one machine, one TensorFlow and one model width."""
    import tensorflow as tf
    what = {"machine": platform.node(), "cpu": _cpuinfo_field(("model name",)) or platform.processor(), "flags": sorted(cpu_flags()),
            "tf": tf.__version__, "filters": [int(f) for f in filters],
            "skip_filters": int(skip_filters), "size": int(size)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def machine_cache_path() -> Optional[str]:
    """This machine's own copy of the probe's answers, shared by every pipeline root:
    $UNET3P_CACHE_DIR/precision_probe.json (set it empty to keep none), else
    $XDG_CACHE_HOME/unet3plus/ or ~/.cache/unet3plus/."""
    folder = os.environ.get("UNET3P_CACHE_DIR")
    if folder is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                ".cache")
        folder = os.path.join(base, "unet3plus")
    return storage.join(folder, PROBE_FILE) if folder else None


def cached_probe(filters: Sequence[int], skip_filters: int, cache_dir: Optional[str],
                 size: int = 64) -> Callable[[], Tuple[float, float]]:
    """A probe for choose_cpu_precision: (fp32, bf16) seconds per step, read from
    `cache_dir`/precision_probe.json, or this machine's cache (machine_cache_path), when this
    machine, TF and width were measured before, measured and stored in both otherwise. A bf16
    step that fails (e.g. oneDNN limited to AVX2 by ONEDNN_MAX_CPU_ISA has no bf16 convolution)
    counts as infinitely slow."""
    def probe() -> Tuple[float, float]:
        key = probe_key(filters, skip_filters, size)
        path = storage.join(cache_dir, PROBE_FILE) if cache_dir else None   # may be gs://
        paths = [p for p in (path, machine_cache_path()) if p]
        caches = {p: _read_json(p) for p in paths}
        for p in paths:
            if key in caches[p]:
                logging.info("Precision probe: cached result for this machine and width (%s)",
                             p)
                _store(caches, key, caches[p][key], skip=p)
                return caches[p][key]["fp32_s"], caches[p][key]["bf16_s"]
        start = time.perf_counter()
        timings = time_train_steps(filters, skip_filters, ("float32", "mixed_bfloat16"), size)
        fp32_s, bf16_s = timings["float32"], timings["mixed_bfloat16"]
        logging.info("Precision probe (%.1f s): fp32 %.1f ms/step, bf16 %.1f ms/step, widths %s "
                     "at %dx%d", time.perf_counter() - start, fp32_s * 1e3, bf16_s * 1e3,
                     list(filters), size, size)
        _store(caches, key, {"fp32_s": fp32_s, "bf16_s": bf16_s, "filters": list(filters),
                             "skip_filters": skip_filters, "size": size,
                             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return fp32_s, bf16_s
    return probe


def _store(caches: dict, key: str, record: dict, skip: Optional[str] = None) -> None:
    """Adds `record` to every cache but `skip`. Written through storage (tmp + rename: a
    concurrent reader never sees half a file); the machine's cache is a convenience, so a home
    that cannot be written is logged, not fatal."""
    machine = machine_cache_path()
    for p, cache in caches.items():
        if p == skip:
            continue
        cache[key] = record
        try:
            storage.write_text(p, json.dumps(cache, indent=1))
        except OSError as e:
            if p != machine:
                raise
            logging.info("Precision probe: cannot write the machine's cache %s (%s)", p, e)


def _read_json(path: str) -> dict:
    try:
        return json.loads(storage.read_text(path))
    except (OSError, ValueError):   # absent or half written: measure again
        return {}
