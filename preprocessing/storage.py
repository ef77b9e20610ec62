"""Paths that may be URIs: local files, gs://, s3://, and TensorFlow's in-memory ram:// (tests).

Every file the pipeline reads or writes goes through here (or through tf.io.gfile directly), so a
Kubeflow run with its data and pipeline root in object storage works like a local one.

- gs:// is built into TensorFlow; s3:// comes from tensorflow-io, imported on first use of an
  s3:// path (credentials and endpoint from the environment: AWS_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY, AWS_REGION, S3_ENDPOINT for MinIO, S3_USE_HTTPS=0 for plain http).
- Local paths are made absolute (a relative path means the working directory of the caller, not
  of a Beam worker); URIs are returned unchanged: os.path.abspath("gs://b/x") would turn a URI
  into a local path.
"""
from __future__ import annotations

import os
import posixpath
import uuid
from typing import List

_S3_LOADED = False


def _gfile(path: str):
    """tf.io.gfile, imported on first I/O (the path helpers above it need no TensorFlow, so the
    runners' flag parsing stays fast), with the filesystem the path needs registered."""
    import tensorflow as tf
    ensure_filesystem(path)
    return tf.io.gfile


def is_uri(path: str) -> bool:
    """True for scheme://... paths (gs, s3, ram, hdfs, ...), False for local paths."""
    return "://" in str(path)


def ensure_filesystem(path: str) -> None:
    """Registers the filesystem a path needs: tensorflow-io's s3 on first use."""
    global _S3_LOADED
    if str(path).startswith("s3://") and not _S3_LOADED:
        import tensorflow_io  # noqa: F401  (registers s3:// with tf.io.gfile)
        _S3_LOADED = True


def absolute(path: str) -> str:
    """A local path made absolute; a URI unchanged."""
    path = os.fspath(path)
    return path if is_uri(path) else os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    """os.path.join for local paths, '/'-joined for URIs (the same thing on POSIX)."""
    return posixpath.join(base, *parts) if is_uri(base) else os.path.join(base, *parts)


def dirname(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) if is_uri(path) else os.path.dirname(path)


def exists(path: str) -> bool:
    return _gfile(path).exists(path)


def isdir(path: str) -> bool:
    return _gfile(path).isdir(path)


def listdir(path: str) -> List[str]:
    """Entry names (no trailing '/', which some object stores add to 'folders')."""
    return [name.rstrip("/") for name in _gfile(path).listdir(path)]


def makedirs(path: str) -> None:
    _gfile(path).makedirs(path)


def read_bytes(path: str) -> bytes:
    with _gfile(path).GFile(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """Writes via a temporary name and a rename, so a reader never sees half a file (object
    stores make the final object appear at once anyway)."""
    gfile = _gfile(path)
    parent = dirname(path)
    if parent:
        gfile.makedirs(parent)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with gfile.GFile(tmp, "wb") as f:
        f.write(data)
    gfile.rename(tmp, path, overwrite=True)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def copy(src: str, dst: str) -> None:
    _gfile(src)
    gfile = _gfile(dst)
    parent = dirname(dst)
    if parent:
        gfile.makedirs(parent)
    gfile.copy(src, dst, overwrite=True)


def remove_tree(path: str) -> None:
    """Deletes a folder (or file) if it exists."""
    gfile = _gfile(path)
    if gfile.isdir(path):
        gfile.rmtree(path)
    elif gfile.exists(path):
        gfile.remove(path)
