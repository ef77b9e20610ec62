"""A cap on the volumes one conversion worker process holds at a time.

A Beam worker process may run several DoFn threads (Dataflow's and Flink's SDK harnesses do, as
does the in-process runner in multi_threading mode), and each ConvertCaseFn may read one case
ahead. Without a cap the volumes held are threads x (1 + prefetch). With it, a volume takes a
slot before its files are read and gives it back when its last example has been emitted (or it
was quarantined), so a process never holds more than `max_volumes_in_flight` volumes, however
many threads the runner gives it. The memory bound of a worker is then about

    baseline + 1.9 x (bytes of the largest stored volume) x max_volumes_in_flight

(bench/peak_memory.py measures both terms; docs/robustness.md has the figures).

The slots are per process (a module-level semaphore per cap), so every DoFn instance in a process
shares them; the high-water mark is kept for tests and the Beam gauge.
"""
from __future__ import annotations

import threading
from typing import Dict

DEFAULT_VOLUMES_IN_FLIGHT = 2      # one being converted, one read ahead (prefetch)


class VolumeSlots:
    """A counting semaphore that remembers how many slots were ever held at once."""

    def __init__(self, size: int):
        if int(size) < 1:
            raise ValueError(f"max_volumes_in_flight must be >= 1, got {size}")
        self.size = int(size)
        self._free = threading.Semaphore(self.size)
        self._lock = threading.Lock()
        self.held = 0
        self.high_water = 0

    def acquire(self, blocking: bool = True) -> bool:
        """Takes a slot (waiting for one unless not `blocking`); whether one was taken."""
        if not self._free.acquire(blocking):
            return False
        with self._lock:
            self.held += 1
            self.high_water = max(self.high_water, self.held)
        return True

    def release(self) -> None:
        with self._lock:
            if self.held == 0:
                raise RuntimeError("a volume slot was released that was never taken")
            self.held -= 1
        self._free.release()


_PER_PROCESS: Dict[int, VolumeSlots] = {}
_PER_PROCESS_LOCK = threading.Lock()


def process_slots(size: int) -> VolumeSlots:
    """This process's slots for a cap of `size` (one shared object per cap)."""
    with _PER_PROCESS_LOCK:
        if size not in _PER_PROCESS:
            _PER_PROCESS[size] = VolumeSlots(size)
        return _PER_PROCESS[size]
