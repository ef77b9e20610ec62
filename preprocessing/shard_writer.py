"""Serialized examples per split -> globally shuffled gzip TFRecord shards (`write_examples`).

Two passes, so that the output is globally shuffled (the Trainer's shuffle buffer only mixes
nearby examples) without a Beam shuffle of the examples themselves (TFX's WriteSplit reshuffles
every example through the runner, which the DirectRunner holds in memory, and gzips at zlib's
default level 6):
  1. fused with the conversion: each example is framed as a TFRecord record, compressed as its own
     gzip member (in a small thread pool: zlib releases the GIL) and appended to a per-bundle temp
     file. The bucket is a hash (crc32c) of the record. The bundle's file goes on once per bucket
     it holds records of, ((split, bucket), file), emitted from process(); where each record lies
     (bucket, offset, length, crc) is written beside the file, `<file>.index`, when the bundle
     ends. Nothing is emitted from finish_bundle, which Beam 2.74's DaskRunner would drop.
  2. per bucket (about one case's worth of examples), after the GroupByKey (so every bundle that
     wrote to it has finished): the bucket's members are read back through the files' indexes,
     shuffled with a seeded order and concatenated into one shard. Concatenated gzip members are
     one valid gzip stream (RFC 1952), read by tf.data, Beam and TFX like any .gz TFRecord file.
The writer holds at most PENDING_BYTES of examples waiting for compression and one output shard.
Files go through Beam's filesystems (local, gs://, s3:// with apache-beam[aws]; not TensorFlow's
ram://), which every Beam worker has.
"""
from __future__ import annotations

import collections
import contextlib
import random
import struct
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from common.storage import is_uri
from preprocessing.conversion_settings import DEFAULT_COMPRESS_THREADS, DEFAULT_COMPRESSION_LEVEL
from preprocessing.conversion_stages import COUNTER_NAMESPACE, StageCounters, lap

# Serialized examples waiting for a compression thread, per split and worker (~100 examples of
# 320x320x3): about the size of one volume as read, so memory stays about one volume per worker.
PENDING_BYTES = 64 * 2**20


def _crc32c(data) -> int:
    import google_crc32c  # noqa: PLC0415 (a Beam dependency; imported in the worker)
    return google_crc32c.value(data)


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _frame(data: bytes, crc: int) -> Tuple[bytes, bytes]:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked(_crc32c(length))), struct.pack("<I", _masked(crc))


def tfrecord_frame(data: bytes) -> Tuple[bytes, bytes, int]:
    """TFRecord framing of one record: (header, footer, crc32c of the data)."""
    crc = _crc32c(data)
    return (*_frame(data, crc), crc)


# One index entry per record of a spill file: bucket, offset, length, crc32c.
_INDEX_ENTRY = struct.Struct("<IQQI")


def index_path(spill_path: str) -> str:
    return spill_path + ".index"


def read_index(spill_path: str) -> List[Tuple[int, int, int, int]]:
    """(bucket, offset, length, crc) of every record in a spill file, in file order."""
    with FileSystems.open(index_path(spill_path),
                          compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return list(_INDEX_ENTRY.iter_unpack(f.read()))


def compress_record(data: bytes, level: int, crc: Optional[int] = None) -> Tuple[bytes, int]:
    """One TFRecord record as a complete gzip member, and the record's crc32c (`crc`, when given,
    is the crc32c of `data`, already computed)."""
    if crc is None:
        header, footer, crc = tfrecord_frame(data)
    else:
        header, footer = _frame(data, crc)
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(header) + c.compress(data) + c.compress(footer) + c.flush(), crc


@contextlib.contextmanager
def _naming(path: str):
    """An OSError (a full disk: ENOSPC, EFBIG) re-raised naming the file being written."""
    try:
        yield
    except OSError as e:
        raise OSError(f"cannot write {path} ({e})") from e


class SpillRecordsFn(beam.DoFn):
    """Pass 1 of write_examples for one split: compress each record into this bundle's temp file,
    emit ((split, bucket), file) the first time the bundle has a record for a bucket, and write
    the file's index when the bundle ends."""

    def __init__(self, split: str, temp_dir: str, num_buckets: int, level: int, threads: int):
        self._split, self._temp_dir = split, temp_dir
        self._buckets, self._level, self._threads = max(1, num_buckets), level, threads

    def setup(self):
        self._pool = ThreadPoolExecutor(self._threads) if self._threads > 0 else None
        self._stages = StageCounters()

    def start_bundle(self):
        self._file = None
        self._path = FileSystems.join(self._temp_dir, f"{self._split}-{uuid.uuid4().hex}.part")
        self._offset = 0
        self._index = []
        self._buckets_seen = set()
        self._pending = collections.deque()
        self._pending_bytes = 0
        self._timings: Dict[str, float] = {}

    def _timed_compress(self, data: bytes, crc: int):
        t = time.perf_counter()
        member, _ = compress_record(data, self._level, crc)
        return member, crc, time.perf_counter() - t

    def process(self, data):   # one serialized example
        crc = _crc32c(data)   # its bucket, known now so that the file goes on from here
        bucket = crc % self._buckets
        if bucket not in self._buckets_seen:
            self._buckets_seen.add(bucket)
            yield (self._split, bucket), self._path
        if self._pool is None:
            self._write(*self._timed_compress(data, crc))
            return
        self._pending.append((len(data), self._pool.submit(self._timed_compress, data, crc)))
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
        with _naming(self._path):
            if self._file is None:
                self._file = FileSystems.create(self._path,
                                                compression_type=CompressionTypes.UNCOMPRESSED)
            self._file.write(member)
        self._index.append((crc % self._buckets, self._offset, len(member), crc))
        self._offset += len(member)
        lap(self._timings, "write", t)

    def finish_bundle(self):
        while self._pending:
            self._pop()
        if self._file is not None:
            t = time.perf_counter()
            with _naming(self._path):
                self._file.close()
            with _naming(index_path(self._path)), FileSystems.create(
                    index_path(self._path), compression_type=CompressionTypes.UNCOMPRESSED) as f:
                f.write(b"".join(_INDEX_ENTRY.pack(*entry) for entry in self._index))
            lap(self._timings, "write", t)
        self._stages.add(self._timings)

    def teardown(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown()


def shard_name(prefix: str, bucket: int, num_buckets: int, suffix: str) -> str:
    return f"{prefix}-{bucket:05d}-of-{num_buckets:05d}{suffix}"


class MergeBucketFn(beam.DoFn):
    """Pass 2 of write_examples: one bucket's compressed records, read back, put in a seeded
    random order and written as one shard. Yields (split, records written).

    A bundle's spill file holds records of many buckets, so its index is wanted by each of them:
    indexes read are kept per worker (up to INDEX_CACHE_ENTRIES entries, least recently used
    dropped), so that a worker reads each index once rather than once per bucket (one request
    per read on an object store)."""

    INDEX_CACHE_ENTRIES = 2_000_000   # ~100 bytes each: ~200 MB per worker at the most

    def __init__(self, split_dirs: Dict[str, str], num_buckets: Dict[str, int], prefix: str,
                 suffix: str, seed: int, temp_dir: str):
        self._dirs, self._buckets, self._temp_dir = split_dirs, num_buckets, temp_dir
        self._prefix, self._suffix, self._seed = prefix, suffix, seed

    def setup(self):
        self._stages = StageCounters()
        self._records = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "records_written")
        self._index_reads = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "spill_index_reads")
        # spill path -> {bucket: [(offset, length, crc), ...]}, least recently used first
        self._indexes: "collections.OrderedDict[str, Dict[int, list]]" = collections.OrderedDict()
        self._cached_entries = 0

    def _bucket_parts(self, path: str, bucket: int) -> List[Tuple[int, int, int]]:
        """(offset, length, crc) of the records of `bucket` in the spill file, in file order."""
        if path in self._indexes:
            self._indexes.move_to_end(path)
        else:
            entries = read_index(path)
            self._index_reads.inc()
            by_bucket: Dict[int, list] = collections.defaultdict(list)
            for b, offset, length, crc in entries:
                by_bucket[b].append((offset, length, crc))
            self._indexes[path] = dict(by_bucket)
            self._cached_entries += len(entries)
            while self._cached_entries > self.INDEX_CACHE_ENTRIES and len(self._indexes) > 1:
                _, dropped = self._indexes.popitem(last=False)
                self._cached_entries -= sum(len(v) for v in dropped.values())
        return self._indexes[path].get(bucket, [])

    def process(self, element):
        (split, bucket), paths = element
        t = time.perf_counter()
        blobs = []
        for path in sorted(set(paths)):
            parts = self._bucket_parts(path, bucket)
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
        write_whole(path, blobs, self._temp_dir)
        self._stages.add({"merge": time.perf_counter() - t})
        self._records.inc(len(blobs))
        yield split, len(blobs)


def write_whole(path: str, blobs, temp_dir: str) -> None:
    """The shard at `path`, written under a temporary name in `temp_dir` and renamed onto `path`
    when complete: a write that fails (a full disk) or is interrupted leaves no partial shard
    that the Transform would read. The error names the shard."""
    tmp = FileSystems.join(temp_dir, f"shard-{uuid.uuid4().hex}.writing")
    try:
        with _naming(path), FileSystems.create(
                tmp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            for _, _, blob in blobs:
                f.write(blob)
        if FileSystems.exists(path):   # a retried bundle: the same records, rewritten
            FileSystems.delete([path])
        FileSystems.rename([tmp], [path])
    finally:
        if FileSystems.exists(tmp):
            FileSystems.delete([tmp])


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
                                                          suffix, seed, temp_dir)))


def remove_temp_dir(temp_dir: str):
    if is_uri(temp_dir):   # object stores delete a "folder" by its prefix
        temp_dir = temp_dir.rstrip("/") + "/"
    if FileSystems.exists(temp_dir):
        FileSystems.delete([temp_dir])
