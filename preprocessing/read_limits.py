"""Size limits on an input volume, checked before any voxel is read, and a gzip stream inflated
with a hard cap, so that one hostile or broken file cannot take a worker's memory.

A `.nii.gz` of a few MB can declare 1024x1024x3000 int16 (6.3 GB inflated); one that declares a
small volume can still inflate to gigabytes. So:

1. the file's own size is checked first (stat, no read);
2. only the first HEADER_BYTES of the stream are inflated, and the header's declared shape and
   dtype are checked against `max_voxels` and `max_inflated_bytes`;
3. the rest is inflated into a buffer of exactly the declared size, in CHUNK_BYTES steps, and
   the read stops at once if the stream holds more than the header declares (or fewer: a
   truncated file).

Peak memory of reading one volume is then its compressed bytes + its declared size + one chunk.

The defaults let every LiTS volume through with a wide margin: the largest, 512x512x987 int16,
is 258.7 M voxels and 517 MB inflated; the limits are 2^30 voxels (4.2x: 1024x1024x1024) and
2 GiB inflated (4.2x). Both are settings (conversion.max_voxels / max_inflated_bytes, the
converter's and predict.py's --max_voxels / --max_inflated_bytes).
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Optional

from preprocessing.case_error import CaseError

GZIP_MAGIC = b"\x1f\x8b"
HEADER_BYTES = 1 << 16         # inflated first: the NIfTI header (348 / 540 bytes) and more
CHUNK_BYTES = 64 << 20         # inflated per step after the header
_INPUT_BYTES = 1 << 20         # compressed bytes fed to zlib per call (its tail stays small)


@dataclasses.dataclass(frozen=True)
class ReadLimits:
    max_voxels: int = 1 << 30              # voxels per volume (1024^3; LiTS max 258.7 M)
    max_inflated_bytes: int = 2 << 30      # bytes of a file, inflated (LiTS max 517 MB)

    def __post_init__(self):
        if int(self.max_voxels) < 1 or int(self.max_inflated_bytes) < 1:
            raise ValueError(f"read limits must be >= 1, got {self}")

    def check_file_size(self, path: str, size: int, case_id: Optional[str]) -> None:
        """A file larger than max_inflated_bytes (compressed or not) is refused unread."""
        if size > self.max_inflated_bytes:
            raise CaseError(path, f"file of {size:,} bytes, over the limit of "
                                  f"{self.max_inflated_bytes:,} (max_inflated_bytes)", case_id)

    def check_declared(self, path: str, shape, itemsize: int, data_bytes: int,
                       case_id: Optional[str]) -> None:
        """The header's declared volume (`data_bytes`: header + voxels) within the limits."""
        voxels = 1
        for n in shape:
            voxels *= int(n)
        dims = "x".join(str(int(n)) for n in shape)
        if voxels > self.max_voxels:
            raise CaseError(path, f"the header declares {dims} = {voxels:,} voxels, over the "
                                  f"limit of {self.max_voxels:,} (max_voxels); not read",
                            case_id)
        if data_bytes > self.max_inflated_bytes:
            raise CaseError(path, f"the header declares {dims} x {itemsize} bytes = "
                                  f"{data_bytes:,} bytes, over the limit of "
                                  f"{self.max_inflated_bytes:,} (max_inflated_bytes); not read",
                            case_id)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEFAULT_LIMITS = ReadLimits()


def add_read_limit_flags(p, defaults: ReadLimits = DEFAULT_LIMITS) -> None:
    """--max_voxels and --max_inflated_bytes (the converter, predict.py, the volume eval)."""
    p.add_argument("--max_voxels", type=int, default=defaults.max_voxels,
                   help="an input whose header declares more voxels is refused unread "
                        "(default %(default)s)")
    p.add_argument("--max_inflated_bytes", type=int, default=defaults.max_inflated_bytes,
                   help="an input file larger than this, inflated, is refused and its read "
                        "stopped there (default %(default)s)")


class GzipStream:
    """Inflates a gzip byte string (all its members) on demand, `read(n)` bytes at a time."""

    def __init__(self, data: bytes):
        self._data = memoryview(data)
        self._pos = 0
        self._pending = b""        # compressed input zlib has not taken yet
        self._inflater = zlib.decompressobj(31)
        self.finished = False      # the end-of-stream marker of the last member was seen

    def _next_input(self):
        if self._pending:
            return self._pending
        chunk = self._data[self._pos:self._pos + _INPUT_BYTES]
        self._pos += len(chunk)
        return chunk

    def read(self, n: int) -> bytes:
        """Up to `n` inflated bytes; fewer only at the end of the input. zlib.error on corrupt
        data."""
        parts, got = [], 0
        while got < n and not self.finished:
            source = self._next_input()
            if not len(source):
                break   # input ended: a truncated stream unless `finished`
            piece = self._inflater.decompress(source, n - got)
            self._pending = self._inflater.unconsumed_tail
            parts.append(piece)
            got += len(piece)
            if self._inflater.eof:
                rest = self._inflater.unused_data + bytes(self._data[self._pos:self._pos + 2])
                if rest.startswith(GZIP_MAGIC):    # another member follows
                    self._pending = self._inflater.unused_data
                    self._inflater = zlib.decompressobj(31)
                else:                              # trailing padding, as gzip ignores it
                    self.finished = True
        return parts[0] if len(parts) == 1 else b"".join(parts)


def inflate_exactly(stream: GzipStream, head: bytes, total: int, path: str,
                    case_id: Optional[str]) -> bytearray:
    """The whole inflated file, `total` bytes as the header declares (`head`: what was read
    already): stops at once when the stream holds more, and CaseError when it holds less."""
    out = bytearray(total)
    filled = min(len(head), total)
    out[:filled] = head[:filled]
    if len(head) > total:
        raise _longer(path, total, case_id)
    try:
        while filled < total:
            piece = stream.read(min(CHUNK_BYTES, total - filled))
            if not piece:
                break
            out[filled:filled + len(piece)] = piece
            filled += len(piece)
        extra = stream.read(1)
    except zlib.error as e:
        raise CaseError(path, f"truncated or corrupt data (error: {e})", case_id) from e
    if filled < total:
        raise CaseError(path, f"truncated or corrupt data (EOFError: {filled:,} bytes, the "
                              f"header needs {total:,})", case_id)
    if extra:
        raise _longer(path, total, case_id)
    if not stream.finished:
        raise CaseError(path, "truncated or corrupt data (EOFError: compressed file ended "
                              "before the end-of-stream marker)", case_id)
    return out


def _longer(path: str, total: int, case_id: Optional[str]) -> CaseError:
    return CaseError(path, f"inflates to more than the {total:,} bytes its header declares: "
                           "stopped there (a lying or corrupt file)", case_id)
