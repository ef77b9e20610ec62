"""A small, strict reader of MRC volume files (the MRC2014 format of electron microscopy, which
some CT tools use for plain 3-D arrays).

An MRC file is a 1024-byte header, an optional extended header of `nsymbt` bytes, then the voxel
data, columns fastest, then rows, then sections. The array comes back in (z, y, x) order, that is
numpy shape (nz, ny, nx) = (sections, rows, columns), in native byte order (a copy, writable).

The header fields read here (byte offsets; 4-byte words in the file's byte order):

    0-11     nx, ny, nz        int32, voxels along columns, rows, sections (each >= 1)
    12-15    mode              int32: 0 int8, 1 int16, 2 float32, 6 uint16, 12 float16
    28-39    mx, my, mz        int32, sampling of the unit cell (for the voxel size)
    40-51    cella             float32, cell size in angstroms (all 0: no voxel size stored)
    64-75    mapc, mapr, maps  int32, which axis is columns, rows, sections: must be 1, 2, 3
    92-95    nsymbt            int32, extended header bytes (>= 0); the data start at 1024 + nsymbt
    208-211  map               the bytes b"MAP "
    212-215  machst            machine stamp: 0x44 0x44 (or 0x44 0x41) little-endian, 0x11 0x11
                               big-endian; the last two bytes are not looked at

Strict: the file must be exactly 1024 + nsymbt + nx*ny*nz*itemsize bytes. Any problem (too
short, too long, no 'MAP ', unknown byte order, unsupported mode, bad dimensions, permuted axes)
raises `MrcError`, a `CaseError` that names the file and the reason, as every reader of this
project does. Complex modes (3, 4) and packed 4-bit data (101) are rejected: they are no CT.

No TensorFlow, no mrcfile: numpy and the project's storage helpers only (so the path may be a
URI). `read_mrc_bytes` reads bytes already in memory, e.g. a member of a zip (wheel) archive.
"""
from __future__ import annotations

import dataclasses
import struct
from typing import Optional, Tuple

import numpy as np

from common import storage
from preprocessing.nifti import CaseError

HEADER_BYTES = 1024
MAP_MAGIC = b"MAP "
# mode -> numpy dtype (byte order added from the machine stamp).
MODES = {0: "i1", 1: "i2", 2: "f4", 6: "u2", 12: "f2"}
_MODE_NAMES = {3: "complex int16", 4: "complex float32", 101: "packed 4-bit"}
_STAMPS = {b"\x44\x44": "<", b"\x44\x41": "<", b"\x11\x11": ">"}


class MrcError(CaseError):
    """An MRC file that cannot be read: `path` names it, `reason` says why."""


@dataclasses.dataclass(frozen=True)
class MrcHeader:
    """What the reader takes from the 1024-byte header."""
    shape: Tuple[int, int, int]    # (nz, ny, nx): the array's (z, y, x) shape
    mode: int
    dtype: np.dtype                # with the file's byte order
    byte_order: str                # "<" or ">"
    nsymbt: int                    # extended header bytes
    # Voxel size in angstroms (x, y, z) from cella / mxyz; None when the cell is all zeros
    # (nothing stored, as in files that hold a bare array).
    voxel_size: Optional[Tuple[float, float, float]]

    @property
    def data_offset(self) -> int:
        return HEADER_BYTES + self.nsymbt

    @property
    def expected_size(self) -> int:
        return self.data_offset + int(np.prod(self.shape)) * self.dtype.itemsize


def _byte_order(header: bytes, name: str) -> str:
    stamp = header[212:214]
    if stamp in _STAMPS:
        return _STAMPS[stamp]
    raise MrcError(name, f"unknown machine stamp {header[212:216].hex()} at bytes 212-215 "
                         "(expected 4444 or 4441 little-endian, 1111 big-endian)")


def _dtype(mode: int, order: str, name: str) -> np.dtype:
    if mode in MODES:
        return np.dtype(order + MODES[mode])
    kind = _MODE_NAMES.get(mode, "unknown")
    raise MrcError(name, f"unsupported mode {mode} ({kind}); supported: 0 int8, 1 int16, "
                         "2 float32, 6 uint16, 12 float16")


def _voxel_size(words: Tuple[int, ...], cella: Tuple[float, ...]
                ) -> Optional[Tuple[float, float, float]]:
    sampling = words[7:10]
    if not any(cella) or min(sampling) < 1:
        return None
    return tuple(float(c) / s for c, s in zip(cella, sampling))


def parse_header(data: bytes, name: str) -> MrcHeader:
    """The header of the MRC file whose bytes (at least the first 1024) are `data`; `name` is
    what errors call the file. Raises MrcError."""
    if len(data) < HEADER_BYTES:
        raise MrcError(name, f"truncated: {len(data)} bytes, shorter than the "
                             f"{HEADER_BYTES}-byte MRC header")
    header = data[:HEADER_BYTES]
    if header[208:212] != MAP_MAGIC:
        raise MrcError(name, f"not an MRC file: bytes 208-211 are {header[208:212]!r}, "
                             f"not {MAP_MAGIC!r}")
    order = _byte_order(header, name)
    words = struct.unpack(order + "24i", header[:96])
    cella = struct.unpack(order + "3f", header[40:52])
    nx, ny, nz, mode = words[:4]
    if min(nx, ny, nz) < 1:
        raise MrcError(name, f"bad dimensions nx, ny, nz = {nx}, {ny}, {nz} (each must be >= 1)")
    if tuple(words[16:19]) != (1, 2, 3):
        raise MrcError(name, f"axis order mapc, mapr, maps = {tuple(words[16:19])}: only "
                             "(1, 2, 3) (columns x, rows y, sections z) is supported")
    nsymbt = words[23]
    if nsymbt < 0:
        raise MrcError(name, f"negative extended header size nsymbt = {nsymbt}")
    return MrcHeader(shape=(nz, ny, nx), mode=mode, dtype=_dtype(mode, order, name),
                     byte_order=order, nsymbt=nsymbt, voxel_size=_voxel_size(words, cella))


def read_mrc_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """The volume of an MRC file held in `data`, shape (nz, ny, nx), native byte order.
    Raises MrcError (naming `name`) for a truncated, oversized or malformed file."""
    header = parse_header(data, name)
    expected = header.expected_size
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "oversized"
        raise MrcError(name, f"{what}: {len(data)} bytes, the header says {expected} "
                             f"({HEADER_BYTES} header + {header.nsymbt} extended + "
                             f"{'x'.join(map(str, header.shape))} x {header.dtype.itemsize}-byte "
                             f"mode-{header.mode} voxels)")
    count = int(np.prod(header.shape))
    array = np.frombuffer(data, header.dtype, count, header.data_offset)
    return array.reshape(header.shape).astype(header.dtype.newbyteorder("="))


def read_mrc(path: str) -> np.ndarray:
    """The volume of the MRC file at `path` (local or a URI), shape (nz, ny, nx)."""
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError as e:
        raise MrcError(path, "file not found") from e
    except OSError as e:
        raise MrcError(path, f"cannot read the file ({type(e).__name__}: {e})") from e
    return read_mrc_bytes(data, path)


def mrc_bytes(array: np.ndarray) -> bytes:
    """A minimal little-endian MRC2014 file holding `array` (z, y, x), no voxel size: for tests
    and small fixtures, the inverse of read_mrc_bytes."""
    modes = {np.dtype(v).newbyteorder("<"): k for k, v in MODES.items()}
    dtype = np.dtype(array.dtype).newbyteorder("<")
    if array.ndim != 3 or dtype not in modes:
        raise ValueError(f"need a 3-D array of {sorted(MODES.values())}, got "
                         f"{array.ndim}-D {array.dtype}")
    nz, ny, nx = array.shape
    header = bytearray(HEADER_BYTES)
    struct.pack_into("<4i", header, 0, nx, ny, nz, modes[dtype])
    struct.pack_into("<3i", header, 28, nx, ny, nz)
    struct.pack_into("<3i", header, 64, 1, 2, 3)
    struct.pack_into("<i", header, 108, 20140)      # nversion
    header[208:212] = MAP_MAGIC
    header[212:216] = b"\x44\x44\x00\x00"
    return bytes(header) + np.ascontiguousarray(array, dtype).tobytes()
