"""What the conversion counts and times: the Beam counter namespace, the timed stages and the
counters of microseconds per stage (summed over workers), shared by the case conversion
(preprocessing/case_conversion.py) and the shard writer (preprocessing/shard_writer.py)."""
from __future__ import annotations

import time
from typing import Dict, Optional

import apache_beam as beam

COUNTER_NAMESPACE = "nifti_example_gen"
# Stages timed in the conversion (Beam counters "<stage>_us" and the benchmark's breakdown).
STAGES = ("read", "canonicalize", "resample", "serialize", "compress", "write", "merge")


def lap(timings: Optional[Dict[str, float]], key: str, start: float) -> float:
    now = time.perf_counter()
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + now - start
    return now


class StageCounters:
    """Beam counters of microseconds per stage (summed over workers)."""

    def __init__(self):
        self._counters = {s: beam.metrics.Metrics.counter(COUNTER_NAMESPACE, f"{s}_us")
                          for s in STAGES}

    def add(self, timings: Dict[str, float]):
        for stage, seconds in timings.items():
            self._counters[stage].inc(int(seconds * 1e6))
        timings.clear()
