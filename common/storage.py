"""Paths that may be URIs: local files, gs://, s3://, and TensorFlow's in-memory ram:// (tests).

Every file the pipeline reads or writes goes through here (or through tf.io.gfile directly), so a
Kubeflow run with its data and pipeline root in object storage works like a local one.

- Local paths use the os module and open(): no TensorFlow import (predict.py rejects a bad local
  volume before TensorFlow loads), and no detour through TensorFlow's file layer for the bulk
  reads. This module is the one place in the production code where they are used on data paths
  (tests/test_remote_io.py checks that).
- URIs go through tf.io.gfile. gs:// is built into TensorFlow; s3:// comes from tensorflow-io,
  imported on first use of an s3:// path (credentials and endpoint from the environment:
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, and S3_ENDPOINT=http://host:port for
  MinIO, with the scheme). A process that used s3:// this way aborts at interpreter exit
  (tensorflow-io 0.37.1): end it with common/process_exit.py's exit_process.
- TensorFlow's errors are raised as OSError (FileNotFoundError for a missing file), like the
  local ones, so callers catch one kind.
- Local paths are made absolute (a relative path means the working directory of the caller, not
  of a Beam worker); URIs are returned unchanged: os.path.abspath("gs://b/x") would turn a URI
  into a local path.
"""
from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import uuid
from typing import Iterator, List

_S3_LOADED = False
# Object stores make an object appear whole when its upload ends, and "rename" there is a copy
# plus a delete: write the final name directly.
_ATOMIC_UPLOAD_SCHEMES = ("gs://", "s3://")


def is_uri(path: str) -> bool:
    """True for scheme://... paths (gs, s3, ram, hdfs, ...), False for local paths."""
    return "://" in str(path)


def ensure_filesystem(path: str) -> None:
    """Registers the filesystem a path needs with tf.io.gfile: tensorflow-io's s3 on first use.
    Call it before handing an s3:// path to code that uses tf.io.gfile itself (Keras, TF)."""
    global _S3_LOADED
    if str(path).startswith("s3://") and not _S3_LOADED:
        import tensorflow_io  # noqa: F401  (registers s3:// with tf.io.gfile)
        _S3_LOADED = True


def _gfile(path: str):
    """tf.io.gfile, imported on first URI I/O (the path helpers need no TensorFlow, so the
    runners' flag parsing stays fast), with the filesystem the path needs registered."""
    import tensorflow as tf
    ensure_filesystem(path)
    return tf.io.gfile


@contextlib.contextmanager
def _os_errors(path: str) -> Iterator[None]:
    """TensorFlow's file errors as the OSError a local call raises."""
    import tensorflow as tf
    try:
        yield
    except tf.errors.NotFoundError as e:
        raise FileNotFoundError(2, e.message or "not found", path) from e
    except tf.errors.OpError as e:
        raise OSError(f"{path}: {type(e).__name__}: {e.message}") from e


# --- path arithmetic (no I/O) --------------------------------------------------------------------

def absolute(path: str) -> str:
    """A local path made absolute; a URI unchanged."""
    path = os.fspath(path)
    return path if is_uri(path) else os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    """os.path.join for local paths, '/'-joined for URIs (the same thing on POSIX)."""
    return posixpath.join(base, *parts) if is_uri(base) else os.path.join(base, *parts)


def dirname(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) if is_uri(path) else os.path.dirname(path)


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_uri(path) else os.path.basename(path)


def normpath(path: str) -> str:
    """'a/../b' folded, for URIs too (after the scheme: gs://b/x/../y -> gs://b/y)."""
    if not is_uri(path):
        return os.path.normpath(path)
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{posixpath.normpath(rest)}"


def resolve(folder: str, path: str) -> str:
    """`path` as written in a file that lives in `folder`: URIs and absolute paths as they are
    (~ expanded), relative ones joined to the folder and normalized."""
    if is_uri(path):
        return path
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else normpath(join(folder, path))


# --- queries -------------------------------------------------------------------------------------

def exists(path: str) -> bool:
    if not is_uri(path):
        return os.path.exists(path)
    with _os_errors(path):
        return _gfile(path).exists(path)


def isdir(path: str) -> bool:
    if not is_uri(path):
        return os.path.isdir(path)
    with _os_errors(path):
        return _gfile(path).isdir(path)


def isfile(path: str) -> bool:
    if not is_uri(path):
        return os.path.isfile(path)
    return exists(path) and not isdir(path)


def listdir(path: str) -> List[str]:
    """Entry names (no trailing '/', which some object stores add to 'folders')."""
    if not is_uri(path):
        return os.listdir(path)
    with _os_errors(path):
        return [name.rstrip("/") for name in _gfile(path).listdir(path)]


# --- reading and writing -------------------------------------------------------------------------

def makedirs(path: str) -> None:
    if not is_uri(path):
        os.makedirs(path, exist_ok=True)
        return
    with _os_errors(path):
        _gfile(path).makedirs(path)


def size(path: str) -> int:
    """The file's size in bytes (FileNotFoundError when missing)."""
    if not is_uri(path):
        return os.path.getsize(path)
    with _os_errors(path):
        return int(_gfile(path).stat(path).length)


def read_bytes(path: str) -> bytes:
    if not is_uri(path):
        with open(path, "rb") as f:
            return f.read()
    with _os_errors(path):
        with _gfile(path).GFile(path, "rb") as f:
            return f.read()


def read_text(path: str, encoding: str = "utf-8") -> str:
    return read_bytes(path).decode(encoding)


def _temporary_name(path: str) -> str:
    return f"{path}.tmp-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def _local_temporary(path: str) -> Iterator[str]:
    """A temporary name beside a local `path`, renamed onto it when the block succeeds and
    removed when it fails."""
    tmp = _temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def _is_bucket(path: str) -> bool:
    """gs://b or s3://b: a bucket, which exists or not, but is no folder to make (TensorFlow's
    s3 makedirs refuses it: "S3 path doesn't contain a bucket name")."""
    return path.startswith(_ATOMIC_UPLOAD_SCHEMES) and "/" not in path.split("://", 1)[1].strip("/")


def _make_parent(path: str) -> None:
    parent = dirname(path)
    if parent and not _is_bucket(parent):
        makedirs(parent)


def write_bytes(path: str, data: bytes) -> None:
    """Writes via a temporary name and a rename, so a reader never sees half a file (object
    stores: the final name directly, see _ATOMIC_UPLOAD_SCHEMES). Creates the folder."""
    _make_parent(path)
    if not is_uri(path):
        with _local_temporary(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
        return
    gfile = _gfile(path)
    with _os_errors(path):
        if path.startswith(_ATOMIC_UPLOAD_SCHEMES):
            with gfile.GFile(path, "wb") as f:
                f.write(data)
            return
        tmp = _temporary_name(path)
        with gfile.GFile(tmp, "wb") as f:
            f.write(data)
        gfile.rename(tmp, path, overwrite=True)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def rename(src: str, dst: str) -> None:
    """Replaces `dst` by `src` (atomic on a local disk)."""
    if not (is_uri(src) or is_uri(dst)):
        os.replace(src, dst)
        return
    _gfile(src)
    with _os_errors(src):
        _gfile(dst).rename(src, dst, overwrite=True)


def copy(src: str, dst: str) -> None:
    """Copies a file, between any two kinds of path, via a temporary name at `dst` (a reader
    never sees half a file). Creates the destination folder."""
    _make_parent(dst)
    if not (is_uri(src) or is_uri(dst)):
        with _local_temporary(dst) as tmp:
            shutil.copyfile(src, tmp)
        return
    _gfile(src)
    gfile = _gfile(dst)
    with _os_errors(src):
        if dst.startswith(_ATOMIC_UPLOAD_SCHEMES):
            gfile.copy(src, dst, overwrite=True)
            return
        tmp = _temporary_name(dst)
        gfile.copy(src, tmp, overwrite=True)
        gfile.rename(tmp, dst, overwrite=True)


def remove_tree(path: str) -> None:
    """Deletes a folder (or file) if it exists."""
    if not is_uri(path):
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        return
    gfile = _gfile(path)
    with _os_errors(path):
        if gfile.isdir(path):
            gfile.rmtree(path)
        elif gfile.exists(path):
            gfile.remove(path)
