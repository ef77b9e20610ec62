"""Helpers of tests/test_remote_io.py: NIfTI files written to any path (ram:// included), a small
ML Metadata store whose artifacts live at URIs, and the scan of the production code for local-only
file calls with its allow-list."""
from __future__ import annotations

import ast
import gzip
import os
from typing import Dict, Iterator, List, Tuple

import nibabel as nib
import numpy as np

from common import storage
from preprocessing.nifti import CaseFiles
from preprocessing.synthetic_ct import generate_case

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- NIfTI files anywhere ------------------------------------------------------------------------

def nifti_bytes(img: nib.Nifti1Image, gzipped: bool) -> bytes:
    data = img.to_bytes()
    return gzip.compress(data, compresslevel=1) if gzipped else data


def write_nifti(path: str, img: nib.Nifti1Image, gzipped: bool = None) -> str:
    """Writes `img` at a local path or URI; gzip by the name unless `gzipped` says otherwise."""
    storage.write_bytes(path, nifti_bytes(img, path.endswith(".gz") if gzipped is None
                                          else gzipped))
    return path


def write_lits_case(folder: str, index: int, suffix: str = ".nii.gz", in_plane: int = 24,
                    scaling: str = None, orientation: str = None) -> CaseFiles:
    """A synthetic case as volume-N / segmentation-N in `folder` (local or URI)."""
    volume, segmentation = generate_case(index, in_plane=in_plane, slices_range=(8, 8),
                                         scaling=scaling, orientation=orientation).to_nifti()
    image = write_nifti(storage.join(folder, f"volume-{index}{suffix}"), volume)
    label = write_nifti(storage.join(folder, f"segmentation-{index}{suffix}"), segmentation)
    return CaseFiles(f"volume-{index}", image, label)


def gunzipped(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def nifti_from_bytes(data: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gunzipped(data))


def stored_array(img: nib.Nifti1Image) -> np.ndarray:
    return np.asarray(img.dataobj.get_unscaled())


def copy_case(files: CaseFiles, folder: str) -> CaseFiles:
    """The same files, byte for byte, in another folder (e.g. a local copy of a ram:// case)."""
    out = []
    for path in (files.image_path, files.label_path):
        target = storage.join(folder, storage.basename(path))
        storage.write_bytes(target, storage.read_bytes(path))
        out.append(target)
    return CaseFiles(files.case_id, *out)


# --- spoiled files ------------------------------------------------------------------------------

def cut_in_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 16]) + data[middle + 16:]


def _edited(data: bytes, edit) -> bytes:
    img = nifti_from_bytes(data)
    array = edit(np.asanyarray(img.dataobj).copy())
    return nib.Nifti1Image(array, img.affine).to_bytes()


def _nan(a):
    a = a.astype(np.float32)
    a[1, 1, 1] = np.nan
    return a


def _seven(a):
    a[0, 0, 0] = 7
    return a


# name: (which file, bytes -> bytes or None to delete it, words one of which the reason has)
BAD_FILES = {
    "missing": ("image", None, ["not found"]),
    "truncated_gzip": ("image", cut_in_half, ["truncated"]),
    "corrupt_gzip": ("image", _flip_middle, ["corrupt"]),
    "not_nifti": ("image", lambda d: b"this is not a nifti header" * 20, ["nifti"]),
    "four_d": ("image", lambda d: nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.int16),
                                                  np.eye(4)).to_bytes(), ["3-d"]),
    "nan_voxels": ("image", lambda d: _edited(d, _nan), ["nan"]),
    "label_shape": ("label", lambda d: _edited(d, lambda a: np.zeros(
        (a.shape[0] + 1, *a.shape[1:]), np.uint8)), ["shape"]),
    "label_values": ("label", lambda d: _edited(d, _seven), ["outside"]),
}


# --- an ML Metadata store with artifacts at URIs -------------------------------------------------

def metadata_with_artifacts(sqlite_path: str, artifacts: Dict[str, str]) -> None:
    """A store holding one pipeline run whose artifacts are {type name: uri}, as the local
    orchestrator records them, for pipeline/summary.py to read back."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as pb
    config = pb.ConnectionConfig()
    config.sqlite.filename_uri = sqlite_path
    config.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(config)
    run_type = store.put_context_type(pb.ContextType(name="pipeline_run"))
    [run_id] = store.put_contexts([pb.Context(type_id=run_type, name="run-1")])
    ids = []
    for type_name, uri in artifacts.items():
        type_id = store.put_artifact_type(pb.ArtifactType(name=type_name))
        ids += store.put_artifacts([pb.Artifact(type_id=type_id, uri=uri)])
    store.put_attributions_and_associations(
        [pb.Attribution(artifact_id=i, context_id=run_id) for i in ids], [])


# --- local-only file calls in the production code ------------------------------------------------

SCANNED = ("common", "pipeline", "components", "evaluation", "inference", "preprocessing",
           "trainer", "models", "schema", "runners",
           "predict.py", "local_runner.py", "kubeflow_runner.py", "setup.py")
# Calls that take local paths only. A builtin open() is "open("; any use of shutil is "shutil.".
LOCAL_ONLY = {"os.listdir", "os.path.exists", "os.makedirs", "os.path.abspath", "glob.glob",
              "nib.load", "nib.save", "os.path.isdir", "os.path.isfile", "os.path.getsize",
              "os.remove", "os.replace", "os.rename", "os.walk", "os.mkdir", "os.unlink",
              "os.scandir", "gzip.open", "io.open"}

_BY_DESIGN = "common/storage.py is the local backend of every path helper"
_DALI = "DALI reads local files only: its uncompressed cache of the shards is local by design"
_SYNTH = "the synthetic data writer is a local tool (make run's demo data set)"
_SCHEMA = "schema.pbtxt is package data: a file inside the installed package, always local"
_LOCK = ("run locks are local files by design: O_CREAT | O_EXCL has no object-store "
         "equivalent, so locked_outputs skips URIs; /proc is a local kernel file")
_CONSOLE = "the run's log file is local (written by the process that shows the console)"
# (file, call) -> (most occurrences allowed, why). An entry that no longer occurs fails the test,
# so the list stays exact.
ALLOWED: Dict[Tuple[str, str], Tuple[int, str]] = {
    ("common/storage.py", "open("): (2, _BY_DESIGN),
    ("common/storage.py", "os.path.exists"): (1, _BY_DESIGN),
    ("common/storage.py", "os.path.isdir"): (2, _BY_DESIGN),
    ("common/storage.py", "os.path.isfile"): (1, _BY_DESIGN),
    ("common/storage.py", "os.listdir"): (1, _BY_DESIGN),
    ("common/storage.py", "os.makedirs"): (1, _BY_DESIGN),
    ("common/storage.py", "os.path.abspath"): (1, _BY_DESIGN),
    ("common/storage.py", "os.replace"): (2, _BY_DESIGN),
    ("common/storage.py", "os.remove"): (2, _BY_DESIGN),
    ("common/storage.py", "shutil."): (2, _BY_DESIGN),
    ("common/storage.py", "os.path.getsize"): (1, _BY_DESIGN),
    ("common/run_lock.py", "open("): (2, _LOCK),
    ("common/run_lock.py", "os.makedirs"): (1, _LOCK),
    ("common/run_lock.py", "os.path.abspath"): (1, _LOCK),
    ("common/run_lock.py", "os.remove"): (2, _LOCK),
    ("trainer/precision.py", "open("): (1, "/proc/cpuinfo: a local kernel file"),
    ("pipeline/summary.py", "os.path.exists"): (
        2, "the ML Metadata store is a local SQLite file (SQLite opens local files only)"),
    ("schema/__init__.py", "os.path.abspath"): (1, _SCHEMA),
    ("schema/__init__.py", "open("): (1, _SCHEMA),
    ("trainer/dali_input.py", "open("): (4, _DALI),
    ("trainer/dali_input.py", "os.path.exists"): (3, _DALI),
    ("trainer/dali_input.py", "os.path.getsize"): (1, _DALI),
    ("trainer/dali_input.py", "os.makedirs"): (2, _DALI),
    ("trainer/dali_input.py", "os.rename"): (1, _DALI),
    ("trainer/dali_input.py", "shutil."): (3, _DALI),
    ("preprocessing/synthetic_ct/writer.py", "open("): (3, _SYNTH),
    ("preprocessing/synthetic_ct/writer.py", "nib.save"): (1, _SYNTH),
    ("preprocessing/synthetic_ct/writer.py", "os.replace"): (2, _SYNTH),
    ("preprocessing/synthetic_ct/writer.py", "os.remove"): (1, _SYNTH),
    ("preprocessing/synthetic_ct/writer.py", "os.path.exists"): (1, _SYNTH),
    ("preprocessing/synthetic_ct/writer.py", "os.makedirs"): (1, _SYNTH),
    ("preprocessing/synthetic_ct/writer.py", "os.listdir"): (1, _SYNTH),
    ("preprocessing/synthetic_ct/writer.py", "os.path.isfile"): (3, _SYNTH),
    ("preprocessing/synthetic_ct/cli.py", "os.path.abspath"): (1, _SYNTH),
    ("common/logs.py", "os.path.abspath"): (
        3, "source file and interpreter paths (which log lines are this project's), not data"),
    ("common/logs.py", "os.makedirs"): (1, _CONSOLE),
    ("common/console_noise.py", "open("): (1, _CONSOLE),
    ("pipeline/settings_reference.py", "os.path.abspath"): (
        1, "the repository's own docs/settings_reference.md, which a developer regenerates"),
    ("local_runner.py", "os.path.abspath"): (
        2, "the local runner's output dir: its local log file and the copy of the report"),
    ("local_runner.py", "os.makedirs"): (1, "the folder of the local SQLite metadata store"),
}


def _production_files() -> Iterator[str]:
    for name in SCANNED:
        path = os.path.join(REPO, name)
        if os.path.isfile(path):
            yield name
        for root, _, files in os.walk(path):
            for f in sorted(files):
                if f.endswith(".py"):
                    yield os.path.relpath(os.path.join(root, f), REPO)


def _dotted(node: ast.AST) -> str:
    """'os.path.exists' for the expression os.path.exists; '' for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    return ".".join([node.id, *reversed(parts)])


def local_file_calls(source: str) -> List[Tuple[int, str]]:
    """(line, call) of each local-only file call in Python source: builtin open() calls,
    LOCAL_ONLY names (called or passed on), any use of shutil, and imports of their names.
    Comments and strings do not count (the code is parsed, not grepped)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "open"):
            found.append((node.lineno, "open("))
        elif isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Store):
            name = _dotted(node)
            if name in LOCAL_ONLY:
                found.append((node.lineno, name))
            elif name.startswith("shutil.") and name.count(".") == 1:
                found.append((node.lineno, "shutil."))
        elif isinstance(node, ast.ImportFrom) and node.module in ("os", "os.path", "shutil",
                                                                  "glob"):
            found.append((node.lineno, f"from {node.module} import"))
    return sorted(found)


def scan_production_code() -> Dict[Tuple[str, str], List[int]]:
    """{(file, call): [lines]} over SCANNED."""
    out: Dict[Tuple[str, str], List[int]] = {}
    for rel in _production_files():
        with open(os.path.join(REPO, rel)) as f:
            source = f.read()
        for line, call in local_file_calls(source):
            out.setdefault((rel, call), []).append(line)
    return out


def allow_list_violations(found: Dict[Tuple[str, str], List[int]]) -> List[str]:
    """Calls beyond the allow-list, and allow-list entries that no longer occur."""
    problems = []
    for (rel, call), lines in sorted(found.items()):
        allowed = ALLOWED.get((rel, call), (0, ""))[0]
        if len(lines) > allowed:
            problems.append(f"{rel}: {call} at lines {lines} ({allowed} allowed): use "
                            "common/storage.py, or allow-list it with its reason")
    for key in sorted(set(ALLOWED) - set(found)):
        problems.append(f"allow-list entry {key} no longer occurs: remove it")
    return problems

