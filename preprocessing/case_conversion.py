"""One case -> serialized tf.Examples (`case_examples`), and the Beam DoFn that does it for every
case (`ConvertCaseFn`), tagging examples by split plus one summary or quarantine record per case.

The tags travel in the elements, (tag, payload), on the DoFn's one output, and `SelectTag` picks
one tag's payloads, rather than Beam's multi-output ParDo (`with_outputs`): Beam 2.74's
DaskRunner hands every consumer of such a ParDo all of its outputs, whatever their tag (the
reports then held the examples).

Memory is bounded by about one volume per worker: the volume is resampled slice by slice from
the stored ints (no float copy of it is made) and a case's examples are streamed out as they are
made. With prefetch (the default) the next case's files are read (gunzip, which releases the
GIL) in a thread while the current case is converted, so a worker then holds one stored volume
more.
"""
from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterator, Optional, Tuple

import apache_beam as beam
from apache_beam.transforms import window
from apache_beam.utils.windowed_value import WindowedValue

from preprocessing.conversion_stages import COUNTER_NAMESPACE, StageCounters, lap
from preprocessing.examples import example_bytes, label_stats
from preprocessing.nifti import CaseError, CaseFiles, StoredCase, canonicalize_case, read_case
from preprocessing.read_limits import DEFAULT_LIMITS, ReadLimits
from preprocessing.slices import SliceConfig, prepare_slices, stack_context_zhw
from preprocessing.volume_slots import DEFAULT_VOLUMES_IN_FLIGHT, VolumeSlots, process_slots
from schema.contract import CONSOLE_LOGGER, progress_interval

QUARANTINE_TAG = "quarantine"
SUMMARY_TAG = "case_summary"


def quarantine_record(error: CaseError, case_id: str = None) -> str:
    return json.dumps({"file": error.path, "case_id": error.case_id or case_id,
                       "reason": error.reason})


def case_examples(case: "CaseFiles | StoredCase", config: SliceConfig, split: str,
                  timings: Optional[Dict[str, float]] = None
                  ) -> Tuple[Iterator[bytes], Dict[str, Any]]:
    """Loads one case (its files, or its data already read by read_case; CaseError if bad) and
    returns (serialized tf.Examples of its selected slices, generated lazily; its summary,
    complete once the iterator is exhausted). `timings` accumulates seconds per stage: read,
    canonicalize, resample, serialize."""
    raw = case if isinstance(case, StoredCase) else read_case(case, timings)
    case = canonicalize_case(raw, timings, hu=False)   # HU applied slice by slice
    t = time.perf_counter()
    prepared = prepare_slices(case, config, selected_only=True)
    indices = prepared.selected
    num_slices = prepared.num_slices
    case.stored = case.labels = None   # the resampled copies are all that is needed from here on
    lap(timings, "resample", t)
    summary = {"case_id": case.case_id, "split": split, "num_slices": int(num_slices),
               "slices_written": 0, "slices_with_liver": 0, "slices_with_tumor": 0,
               "labelled": prepared.labels is not None, "spacing": list(case.spacing)}

    def generate() -> Iterator[bytes]:
        stack = None
        for z in indices:
            t0 = time.perf_counter()
            stack = stack_context_zhw(prepared.image, int(z), config.context, out=stack)
            label = None if prepared.labels is None else prepared.labels[int(z)]
            data = example_bytes(case.case_id, case.spacing, stack, int(z), num_slices, label)
            if label is not None:
                has_liver, has_tumor, _, _ = label_stats(label)
                summary["slices_with_liver"] += has_liver
                summary["slices_with_tumor"] += has_tumor
            summary["slices_written"] += 1
            lap(timings, "serialize", t0)
            yield data

    return generate(), summary


def _read_quietly(files: CaseFiles, limits: ReadLimits):
    timings: Dict[str, float] = {}
    try:
        return read_case(files, timings, limits), timings, None
    except CaseError as e:
        return None, timings, e


def _read_in_slot(slots: VolumeSlots, files: CaseFiles, limits: ReadLimits):
    """_read_quietly by a caller holding a slot; the slot is given back if the read fails
    unexpectedly (a CaseError result keeps it until the quarantine record is out)."""
    try:
        return _read_quietly(files, limits)
    except BaseException:
        slots.release()
        raise


# Progress of the conversion goes to the console's logger: the first case, then at most one
# line per interval, and the last.


class _CaseProgress:
    """ "Conversion: 7/12 cases done (1 quarantined), 14 s". Counts this worker's cases: with
    one worker (the in-process runner's default) that is all of them."""

    def __init__(self, total: Optional[int]):
        self.total = total
        self.done = self.bad = 0
        self.start = self.last = time.time()
        self.interval = progress_interval()

    def case_done(self, quarantined: bool):
        self.done += 1
        self.bad += quarantined
        now = time.time()
        if self.done == 1 or self.done == self.total or now - self.last >= self.interval:
            self.last = now
            logging.getLogger(CONSOLE_LOGGER).info(
                "Conversion: %d%s cases done (%d quarantined), %.0f s", self.done,
                f"/{self.total}" if self.total else "", self.bad, now - self.start)


class SelectTag(beam.DoFn):
    """(tag, payload) -> payload, for one tag."""

    def __init__(self, tag: str):
        self._tag = tag

    def process(self, element):
        if element[0] == self._tag:
            yield element[1]


class ConvertCaseFn(beam.DoFn):
    """(CaseFiles, split) -> (split, serialized example) per example, plus one (SUMMARY_TAG,
    summary) or (QUARANTINE_TAG, quarantine record) per case.

    With `prefetch`, the next case's files are read (gunzip: zlib releases the GIL) in a thread
    while this case is resampled and serialized; outputs then lag one element behind (the last
    case is emitted when the bundle ends; a runner that drops what finish_bundle emits, like the
    DaskRunner, needs prefetch off). Every volume held takes one of the process's
    `volumes_in_flight` slots (volume_slots.py): a read ahead happens only when a slot is free,
    otherwise the case is read when its turn comes."""

    def __init__(self, slice_config: dict, prefetch: bool = True,
                 total_cases: Optional[int] = None, read_limits: Optional[dict] = None,
                 volumes_in_flight: int = DEFAULT_VOLUMES_IN_FLIGHT):
        self._config_dict = slice_config
        self._limits_dict = read_limits
        self._prefetch = prefetch
        self._total_cases = total_cases
        self._volumes_in_flight = int(volumes_in_flight)
        self._config = None

    def setup(self):
        self._config = SliceConfig.from_dict(self._config_dict)
        self._limits = ReadLimits(**self._limits_dict) if self._limits_dict else DEFAULT_LIMITS
        self._slots = process_slots(self._volumes_in_flight)
        self._cases = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "cases_converted")
        self._bad = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "cases_quarantined")
        self._slices = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "slices_written")
        self._input_slices = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "input_slices")
        self._held = beam.metrics.Metrics.gauge(COUNTER_NAMESPACE, "volumes_in_flight_max")
        self._stages = StageCounters()
        self._reader = ThreadPoolExecutor(1) if self._prefetch else None
        self._progress = _CaseProgress(self._total_cases)
        self._ahead = None

    def start_bundle(self):
        # A failed bundle may have left a case read ahead: give its slot back.
        if self._ahead is not None and self._ahead[1] is not None:
            if self._ahead[1].exception() is None:
                self._slots.release()
        self._ahead = None

    def _read_now(self, files: CaseFiles):
        self._slots.acquire()
        return _read_in_slot(self._slots, files, self._limits)

    def _read_ahead(self, files: CaseFiles):
        """A future of the read when a slot is free now, else None (read at its turn)."""
        if not self._slots.acquire(blocking=False):
            return None
        return self._reader.submit(_read_in_slot, self._slots, files, self._limits)

    def _take_ahead(self):
        """The case read ahead and its read result (waiting for it, or reading it now)."""
        (element, future), self._ahead = self._ahead, None
        return element, (future.result() if future is not None else self._read_now(element[0]))

    def process(self, element):   # (CaseFiles, split)
        if self._reader is None:
            yield from self._convert(element, *self._read_now(element[0]))
            return
        previous = self._take_ahead() if self._ahead is not None else None
        # The previous case holds its slot before this one may take another: a process never
        # waits for a slot while holding one of its own that it has not started converting.
        self._ahead = (element, self._read_ahead(element[0]))
        if previous is not None:
            yield from self._convert(previous[0], *previous[1])

    def finish_bundle(self):
        if self._ahead is not None:
            element, read = self._take_ahead()
            for out in self._convert(element, *read):
                yield WindowedValue(out, window.MIN_TIMESTAMP, [window.GlobalWindow()])

    def teardown(self):
        if getattr(self, "_reader", None) is not None:
            self._reader.shutdown()

    def _convert(self, element: Tuple[CaseFiles, str], raw: Optional[StoredCase],
                 timings: Dict[str, float], error: Optional[CaseError]):
        """Emits one case's outputs, then gives back the slot its volume held."""
        try:
            self._held.set(self._slots.high_water)
            yield from self._emit(element, raw, timings, error)
        finally:
            self._slots.release()

    def _emit(self, element: Tuple[CaseFiles, str], raw: Optional[StoredCase],
              timings: Dict[str, float], error: Optional[CaseError]):
        files, split = element
        try:
            if error is not None:
                raise error
            examples, summary = case_examples(raw, self._config, split, timings)
        except CaseError as e:
            self._bad.inc()
            logging.warning("Quarantined %s: %s", files.case_id, e)
            yield QUARANTINE_TAG, quarantine_record(e, files.case_id)
            self._progress.case_done(quarantined=True)
            return
        del raw
        for data in examples:
            yield split, data
        self._stages.add(timings)
        self._cases.inc()
        self._slices.inc(summary["slices_written"])
        self._input_slices.inc(summary["num_slices"])
        yield SUMMARY_TAG, json.dumps(summary)
        self._progress.case_done(quarantined=False)
