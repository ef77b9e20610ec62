"""The Beam transform volumes -> tf.Examples -> gzip TFRecords, shared by the TFX ExampleGen
executor and the standalone converter (preprocessing/convert.py).

Memory is bounded by about one volume per worker: each element is one case's file paths, the
volume is resampled slice by slice from the stored ints (no float copy of it is made), a case's
examples are streamed out as they are made, and the writer holds at most PENDING_BYTES of examples
waiting for compression and one output shard. With prefetch (the default) the next case's files
are read (gunzip, which releases the GIL) in a thread while the current case is converted, so a
worker then holds one stored volume more.

Writing (`write_examples`) is two passes, so that the output is globally shuffled (the Trainer's
shuffle buffer only mixes nearby examples) without a Beam shuffle of the examples themselves
(TFX's WriteSplit reshuffles every example through the runner, which the DirectRunner holds in
memory, and gzips at zlib's default level 6):
  1. fused with the conversion: each example is framed as a TFRecord record, compressed as its own
     gzip member (in a small thread pool: zlib releases the GIL) and appended to a per-bundle temp
     file; the index (bucket, file, offset, length) goes on. The bucket is a hash of the record.
  2. per bucket (about one case's worth of examples): the members are read back, shuffled with a
     seeded order and concatenated into one shard. Concatenated gzip members are one valid gzip
     stream (RFC 1952), read by tf.data, Beam and TFX like any .gz TFRecord file.

Bad cases never disappear: each becomes a quarantine record (file, case id, reason), and every
case, good or bad, is counted, so that input cases == converted + quarantined.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import random
import struct
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import window
from apache_beam.utils.windowed_value import WindowedValue

from preprocessing.conversion_settings import (DEFAULT_COMPRESS_THREADS,
                                               DEFAULT_COMPRESSION_LEVEL, ConversionSettings)
from preprocessing.examples import example_bytes, label_stats
from preprocessing.nifti import (CaseError, CaseFiles, StoredCase, canonicalize_case,
                                 discover_lits_cases, discover_manifest_cases, read_case)
from preprocessing.slices import SliceConfig, prepare_slices, stack_context_zhw
from preprocessing.splits import EVAL, TRAIN, assign_splits
from schema.contract import (CASES_FILE, CONSOLE_LOGGER, CONVERSION_SUMMARY_FILE,
                             QUARANTINE_FILE, progress_interval)

QUARANTINE_TAG = "quarantine"
SUMMARY_TAG = "case_summary"
COUNTER_NAMESPACE = "nifti_example_gen"


# Serialized examples waiting for a compression thread, per split and worker (~100 examples of
# 320x320x3): about the size of one volume as read, so memory stays about one volume per worker.
PENDING_BYTES = 64 * 2**20
# Stages timed in the conversion (Beam counters "<stage>_us" and the benchmark's breakdown).
STAGES = ("read", "canonicalize", "resample", "serialize", "compress", "write", "merge")


def quarantine_record(error: CaseError, case_id: str = None) -> str:
    return json.dumps({"file": error.path, "case_id": error.case_id or case_id,
                       "reason": error.reason})


# --- finding cases and splitting them ------------------------------------------------------------

@dataclasses.dataclass
class ConversionPlan:
    """What to convert: (case, split) pairs, the cases rejected before reading (pairing or
    manifest errors), and every input case counted once."""
    cases: List[Tuple[CaseFiles, str]]
    errors: List[CaseError]

    @property
    def input_cases(self) -> int:
        return len(self.cases) + len(self.errors)

    def cases_in(self, split: str) -> int:
        return sum(s == split for _, s in self.cases)


def plan_conversion(settings: ConversionSettings, input_base: Optional[str]) -> ConversionPlan:
    """Discovers the cases (the settings' CSV manifest when it has one, else LiTS naming in
    `input_base`) and assigns patient-level splits."""
    manifest = settings.manifest_path(input_base)
    if manifest:
        cases, errors = discover_manifest_cases(manifest, settings.allow_unlabeled)
    else:
        cases, errors = discover_lits_cases(input_base)
    split_of = assign_splits([c.case_id for c in cases], eval_fraction=settings.eval_fraction,
                             seed=settings.split_seed, eval_cases=settings.eval_cases)
    return ConversionPlan([(c, split_of[c.case_id]) for c in cases], errors)


# --- one case -> serialized examples -------------------------------------------------------------

def _lap(timings: Optional[Dict[str, float]], key: str, start: float) -> float:
    now = time.perf_counter()
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + now - start
    return now


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
    _lap(timings, "resample", t)
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
            _lap(timings, "serialize", t0)
            yield data

    return generate(), summary


class _StageCounters:
    """Beam counters of microseconds per stage (summed over workers)."""

    def __init__(self):
        self._counters = {s: beam.metrics.Metrics.counter(COUNTER_NAMESPACE, f"{s}_us")
                          for s in STAGES}

    def add(self, timings: Dict[str, float]):
        for stage, seconds in timings.items():
            self._counters[stage].inc(int(seconds * 1e6))
        timings.clear()


def _read_quietly(files: CaseFiles):
    timings: Dict[str, float] = {}
    try:
        return read_case(files, timings), timings, None
    except CaseError as e:
        return None, timings, e


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


class ConvertCaseFn(beam.DoFn):
    """(CaseFiles, split) -> serialized examples tagged with the split name, plus one summary (or
    one quarantine record) per case.

    With `prefetch`, the next case's files are read (gunzip: zlib releases the GIL) in a thread
    while this case is resampled and serialized, so a worker holds one case being converted and
    one being read; outputs then lag one element behind (the last case is emitted when the bundle
    ends)."""

    def __init__(self, slice_config: dict, prefetch: bool = True,
                 total_cases: Optional[int] = None):
        self._config_dict = slice_config
        self._prefetch = prefetch
        self._total_cases = total_cases
        self._config = None

    def setup(self):
        self._config = SliceConfig.from_dict(self._config_dict)
        self._cases = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "cases_converted")
        self._bad = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "cases_quarantined")
        self._slices = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "slices_written")
        self._input_slices = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "input_slices")
        self._stages = _StageCounters()
        self._reader = ThreadPoolExecutor(1) if self._prefetch else None
        self._progress = _CaseProgress(self._total_cases)

    def start_bundle(self):
        self._ahead = None

    def process(self, element):   # (CaseFiles, split)
        if self._reader is None:
            yield from self._convert(element, *_read_quietly(element[0]))
            return
        previous, self._ahead = self._ahead, (element, self._reader.submit(_read_quietly,
                                                                           element[0]))
        if previous is not None:
            yield from self._convert(previous[0], *previous[1].result())

    def finish_bundle(self):
        if self._ahead is not None:
            (element, future), self._ahead = self._ahead, None
            for out in self._convert(element, *future.result()):
                yield beam.pvalue.TaggedOutput(out.tag, WindowedValue(
                    out.value, window.MIN_TIMESTAMP, [window.GlobalWindow()]))

    def teardown(self):
        if getattr(self, "_reader", None) is not None:
            self._reader.shutdown()

    def _convert(self, element: Tuple[CaseFiles, str], raw: Optional[StoredCase],
                 timings: Dict[str, float], error: Optional[CaseError]):
        files, split = element
        try:
            if error is not None:
                raise error
            examples, summary = case_examples(raw, self._config, split, timings)
        except CaseError as e:
            self._bad.inc()
            logging.warning("Quarantined %s: %s", files.case_id, e)
            yield beam.pvalue.TaggedOutput(QUARANTINE_TAG, quarantine_record(e, files.case_id))
            self._progress.case_done(quarantined=True)
            return
        del raw
        for data in examples:
            yield beam.pvalue.TaggedOutput(split, data)
        self._stages.add(timings)
        self._cases.inc()
        self._slices.inc(summary["slices_written"])
        self._input_slices.inc(summary["num_slices"])
        yield beam.pvalue.TaggedOutput(SUMMARY_TAG, json.dumps(summary))
        self._progress.case_done(quarantined=False)


def convert_cases(pipeline: beam.Pipeline, cases: List[Tuple[CaseFiles, str]],
                  discovery_errors: Iterable[CaseError], split_names: List[str],
                  slice_config: SliceConfig, prefetch: bool = True
                  ) -> Tuple[Dict[str, beam.PCollection], beam.PCollection, beam.PCollection]:
    """Adds the conversion to `pipeline`. Returns (serialized tf.Examples by split, quarantine
    JSON lines, per-case summary JSON lines)."""
    outputs = (
        pipeline
        | "ListCases" >> beam.Create(cases)
        # Spread cases over workers: each worker then holds one volume at a time.
        | "SpreadCases" >> beam.Reshuffle()
        | "ConvertCases" >> beam.ParDo(ConvertCaseFn(slice_config.to_dict(), prefetch,
                                                    total_cases=len(cases)))
        .with_outputs(QUARANTINE_TAG, SUMMARY_TAG, *split_names))
    discovery_quarantine = (
        pipeline | "PairingErrors" >> beam.Create(
            [quarantine_record(e) for e in discovery_errors], reshuffle=False))
    quarantine = ((outputs[QUARANTINE_TAG], discovery_quarantine)
                  | "AllQuarantine" >> beam.Flatten())
    return {s: outputs[s] for s in split_names}, quarantine, outputs[SUMMARY_TAG]


def write_lines(pcoll: beam.PCollection, path: str, label: str):
    """Writes a PCollection of strings to one text file (empty file if nothing)."""
    return pcoll | f"Write{label}" >> beam.io.WriteToText(path, shard_name_template="",
                                                          num_shards=1)


# --- writing gzip TFRecords ----------------------------------------------------------------------

def _crc32c(data) -> int:
    import google_crc32c   # noqa: PLC0415 (a Beam dependency; imported in the worker)
    return google_crc32c.value(data)


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(data: bytes) -> Tuple[bytes, bytes, int]:
    """TFRecord framing of one record: (header, footer, crc32c of the data)."""
    length = struct.pack("<Q", len(data))
    crc = _crc32c(data)
    return (length + struct.pack("<I", _masked(_crc32c(length))),
            struct.pack("<I", _masked(crc)), crc)


def compress_record(data: bytes, level: int) -> Tuple[bytes, int]:
    """One TFRecord record as a complete gzip member, and the record's crc32c."""
    header, footer, crc = tfrecord_frame(data)
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(header) + c.compress(data) + c.compress(footer) + c.flush(), crc


class SpillRecordsFn(beam.DoFn):
    """Pass 1 of write_examples for one split: compress each record into this bundle's temp file
    and emit, when the bundle ends, ((split, bucket), [(path, offset, length, crc), ...])."""

    def __init__(self, split: str, temp_dir: str, num_buckets: int, level: int, threads: int):
        self._split, self._temp_dir = split, temp_dir
        self._buckets, self._level, self._threads = max(1, num_buckets), level, threads

    def setup(self):
        self._pool = ThreadPoolExecutor(self._threads) if self._threads > 0 else None
        self._stages = _StageCounters()

    def start_bundle(self):
        self._file = self._path = None
        self._offset = 0
        self._index = collections.defaultdict(list)
        self._pending = collections.deque()
        self._pending_bytes = 0
        self._timings: Dict[str, float] = {}

    def _timed_compress(self, data: bytes):
        t = time.perf_counter()
        member, crc = compress_record(data, self._level)
        return member, crc, time.perf_counter() - t

    def process(self, data):   # one serialized example
        if self._pool is None:
            self._write(*self._timed_compress(data))
            return
        self._pending.append((len(data), self._pool.submit(self._timed_compress, data)))
        self._pending_bytes += len(data)
        # A backlog (bounded in bytes) lets the compression threads keep working while this
        # thread reads and resamples the next case.
        while self._pending and (self._pending_bytes > PENDING_BYTES
                                 or self._pending[0][1].done()):
            self._pop()

    def _pop(self):
        size, future = self._pending.popleft()
        self._pending_bytes -= size
        self._write(*future.result())

    def _write(self, member: bytes, crc: int, seconds: float):
        self._timings["compress"] = self._timings.get("compress", 0.0) + seconds
        t = time.perf_counter()
        if self._file is None:
            self._path = FileSystems.join(self._temp_dir,
                                          f"{self._split}-{uuid.uuid4().hex}.part")
            self._file = FileSystems.create(self._path,
                                            compression_type=CompressionTypes.UNCOMPRESSED)
        self._file.write(member)
        self._index[crc % self._buckets].append((self._path, self._offset, len(member), crc))
        self._offset += len(member)
        _lap(self._timings, "write", t)

    def finish_bundle(self):
        while self._pending:
            self._pop()
        if self._file is not None:
            self._file.close()
        self._stages.add(self._timings)
        for bucket, entries in sorted(self._index.items()):
            yield WindowedValue(((self._split, bucket), entries), window.MIN_TIMESTAMP,
                                [window.GlobalWindow()])

    def teardown(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown()


def shard_name(prefix: str, bucket: int, num_buckets: int, suffix: str) -> str:
    return f"{prefix}-{bucket:05d}-of-{num_buckets:05d}{suffix}"


class MergeBucketFn(beam.DoFn):
    """Pass 2 of write_examples: one bucket's compressed records, read back, put in a seeded
    random order and written as one shard. Yields (split, records written)."""

    def __init__(self, split_dirs: Dict[str, str], num_buckets: Dict[str, int], prefix: str,
                 suffix: str, seed: int):
        self._dirs, self._buckets = split_dirs, num_buckets
        self._prefix, self._suffix, self._seed = prefix, suffix, seed

    def setup(self):
        self._stages = _StageCounters()
        self._records = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "records_written")

    def process(self, element):
        (split, bucket), groups = element
        t = time.perf_counter()
        entries = sorted(e for group in groups for e in group)
        by_file = collections.defaultdict(list)
        for path, offset, length, crc in entries:
            by_file[path].append((offset, length, crc))
        blobs = []
        for path, parts in by_file.items():
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                position = 0
                for offset, length, crc in parts:
                    if offset != position:
                        f.seek(offset)
                    blobs.append((crc, length, f.read(length)))
                    position = offset + length
        # Independent of how records were spread over workers and bundles: sort, then shuffle.
        blobs.sort(key=lambda b: (b[0], b[1], b[2][:64]))
        random.Random(f"{self._seed}:{split}:{bucket}").shuffle(blobs)
        path = FileSystems.join(self._dirs[split], shard_name(
            self._prefix, bucket, max(1, self._buckets[split]), self._suffix))
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            for _, _, blob in blobs:
                f.write(blob)
        self._stages.add({"merge": time.perf_counter() - t})
        self._records.inc(len(blobs))
        yield split, len(blobs)


def write_examples(examples: Dict[str, beam.PCollection], split_dirs: Dict[str, str],
                   temp_dir: str, num_buckets: Dict[str, int],
                   compression_level: int = DEFAULT_COMPRESSION_LEVEL,
                   compress_threads: int = DEFAULT_COMPRESS_THREADS,
                   prefix: str = "data_tfrecord", suffix: str = ".gz", seed: int = 0,
                   label: str = "WriteExamples") -> beam.PCollection:
    """Writes serialized examples per split as shuffled gzip TFRecord shards
    `<split_dir>/<prefix>-BBBBB-of-NNNNN<suffix>`, about one case's worth of examples per shard
    (`num_buckets[split]` shards, e.g. the number of cases in the split; a bucket no record hashed
    to is not written). Temp files go under `temp_dir`: remove it when the pipeline is done
    (`remove_temp_dir`). Returns a PCollection of (split, records) per shard."""
    for d in list(split_dirs.values()) + [temp_dir]:
        if not FileSystems.exists(d):
            FileSystems.mkdirs(d)
    indexes = []
    for split, pcoll in examples.items():
        indexes.append(pcoll | f"{label}Spill[{split}]" >> beam.ParDo(SpillRecordsFn(
            split, temp_dir, num_buckets[split], compression_level, compress_threads)))
    return (indexes
            | f"{label}Index" >> beam.Flatten()
            | f"{label}GroupBuckets" >> beam.GroupByKey()
            | f"{label}Merge" >> beam.ParDo(MergeBucketFn(split_dirs, num_buckets, prefix,
                                                          suffix, seed)))


def remove_temp_dir(temp_dir: str):
    if "://" in temp_dir:   # object stores delete a "folder" by its prefix
        temp_dir = temp_dir.rstrip("/") + "/"
    if FileSystems.exists(temp_dir):
        FileSystems.delete([temp_dir])


def add_conversion(pipeline: beam.Pipeline, plan: ConversionPlan, slice_config: SliceConfig,
                   split_dirs: Dict[str, str], report_dir: str, temp_dir: str,
                   compression_level: int = DEFAULT_COMPRESSION_LEVEL,
                   compress_threads: int = DEFAULT_COMPRESS_THREADS,
                   prefix: str = "data_tfrecord", suffix: str = ".gz", seed: int = 0,
                   prefetch: bool = True):
    """The whole conversion on `pipeline`: examples written per split, the quarantine report and
    the per-case summaries written to `report_dir` (QUARANTINE_FILE, CASES_FILE)."""
    splits = list(split_dirs)
    examples, quarantine, summaries = convert_cases(pipeline, plan.cases, plan.errors, splits,
                                                    slice_config, prefetch)
    write_examples(examples, split_dirs, temp_dir,
                   {s: max(1, plan.cases_in(s)) for s in splits}, compression_level,
                   compress_threads, prefix, suffix, seed)
    write_lines(quarantine, FileSystems.join(report_dir, QUARANTINE_FILE), "Quarantine")
    write_lines(summaries, FileSystems.join(report_dir, CASES_FILE), "CaseSummaries")


# --- the report and the checks -------------------------------------------------------------------

def _read_jsonl(path: str) -> List[dict]:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]


def summarize_conversion(report_dir: str, input_cases: int,
                         splits: Sequence[str] = (TRAIN, EVAL)) -> Dict[str, Any]:
    """Counts what the Beam run wrote, writes CONVERSION_SUMMARY_FILE and logs it."""
    cases = _read_jsonl(FileSystems.join(report_dir, CASES_FILE))
    quarantined = _read_jsonl(FileSystems.join(report_dir, QUARANTINE_FILE))
    summary = {
        "input_cases": input_cases,
        "cases_converted": len(cases),
        "cases_quarantined": len(quarantined),
        "input_slices": sum(c["num_slices"] for c in cases),
        "examples_per_split": {s: sum(c["slices_written"] for c in cases if c["split"] == s)
                               for s in splits},
        "cases_per_split": {s: sorted(c["case_id"] for c in cases if c["split"] == s)
                            for s in splits},
        "unlabelled_cases": sorted(c["case_id"] for c in cases if not c.get("labelled", True)),
        "quarantined": quarantined,
    }
    with FileSystems.create(FileSystems.join(report_dir, CONVERSION_SUMMARY_FILE),
                            compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(json.dumps(summary, indent=2).encode())
    logging.info("Conversion: %d input cases = %d converted + %d quarantined; examples %s",
                 input_cases, len(cases), len(quarantined), summary["examples_per_split"])
    for q in quarantined:
        logging.warning("Quarantined %s (%s): %s", q["case_id"], q["file"], q["reason"])
    return summary


def check_conversion(summary: Dict[str, Any], max_bad_fraction: float) -> None:
    """Raises RuntimeError, naming the cases, when cases went missing, too many were bad, or
    nothing is left."""
    converted, bad, total = (summary["cases_converted"], summary["cases_quarantined"],
                             summary["input_cases"])
    if converted + bad != total:
        raise RuntimeError(f"Conversion lost cases: {total} in, {converted} converted, "
                           f"{bad} quarantined")
    names = ", ".join(f"{q['case_id']} ({q['reason']})" for q in summary["quarantined"])
    if converted == 0:
        raise RuntimeError(f"Conversion: no case could be converted. Quarantined: {names}")
    if total and bad / total > max_bad_fraction:
        raise RuntimeError(f"Conversion: {bad}/{total} cases are bad, more than the "
                           f"allowed {max_bad_fraction:.0%}: {names}")
    empty = [s for s, n in summary["examples_per_split"].items() if n == 0]
    if empty:
        raise RuntimeError(f"Conversion: split(s) {empty} have no examples; cases per "
                           f"split: {summary['cases_per_split']}")
