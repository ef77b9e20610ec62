"""Known noise, filtered where it starts, each filter with why it is safe: google-api-core's
Python-version FutureWarning, TensorFlow's CUDA-factory registration lines on import, absl's
pre-init warnings. common/logs.py installs these before TensorFlow, TFX or
google-api-core are imported."""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
import warnings
from typing import Optional

# google-api-core warns on import that Python 3.10 will get no more of its updates. It is a
# notice about future releases, not about this run; the pinned stack needs Python 3.10. Matched
# by its message, so any other FutureWarning still shows.
_API_CORE_WARNING = "You are using a non-supported Python version"
# TensorFlow's CUDA plugins (cuFFT, cuDNN, cuBLAS) register twice when TF is imported, and each
# prints "Unable to register ... factory: Attempting to register factory for plugin ... when one
# has already been registered" at level E, GPU or not. The first registration is the one used,
# so nothing is missing; only these exact lines are dropped.
# absl's C++ "WARNING: All log messages before absl::InitializeLog() is called are written to
# STDERR" says where early C++ log lines go: to stderr, which is where they go anyway.
_TF_IMPORT_NOISE = re.compile(
    r"Unable to register cu\w+ factory: Attempting to register factory for plugin"
    r"|All log messages before absl::InitializeLog\(\) is called are written to STDERR")


def silence_known_noise(verbose: bool = False) -> None:
    """Filters the known noise at its source. In this process and, through the environment, in
    the processes it starts (Beam workers, the tfx CLI's run)."""
    warnings.filterwarnings("ignore", message=_API_CORE_WARNING, category=FutureWarning)
    entry = f"ignore:{_API_CORE_WARNING}:FutureWarning"
    current = os.environ.get("PYTHONWARNINGS", "")
    if entry not in current:
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [current, entry]))
    if not verbose:
        # TF's C++ INFO and WARNING lines (oneDNN notice, "could not find cuda drivers",
        # TensorRT) only describe the build and the machine; errors still print. An explicit
        # setting (the Makefile exports 2) wins.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # absl's Python handler warns "Logging before flag parsing goes to stderr" when absl logs
    # before flags are parsed; here Python logging handles absl's records, so it does not apply.
    try:
        from absl import logging as absl_logging
        absl_logging._warn_preinit_stderr = False   # absl clears it itself after warning once
    except ImportError:
        pass


@contextlib.contextmanager
def _filtered_fd2(log_file: Optional[str]):
    """Captures fd 2 for the duration, then writes what was printed back to stderr minus the
    known lines in _TF_IMPORT_NOISE, and all of it to `log_file`. Also when the body fails, so
    nothing is lost before the error propagates."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            if log_file and text:
                with open(log_file, "a") as f:
                    f.write(text)
            kept = [line for line in text.splitlines(keepends=True)
                    if not _TF_IMPORT_NOISE.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Runs TensorFlow's first import, whenever it happens, inside _filtered_fd2: C++ writes
    those lines to fd 2 directly, out of reach of Python's filters. Only that import is
    captured; this finder then removes itself."""

    def __init__(self, log_file: Optional[str]):
        self.log_file = log_file

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader, log_file = spec.loader, self.log_file

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                with _filtered_fd2(log_file):
                    loader.exec_module(module)

            def __getattr__(self, attr):   # get_source, get_resource_reader...
                return getattr(loader, attr)

        spec.loader = _Loader()
        return spec


def quiet_tensorflow_import(log_file: Optional[str] = None) -> None:
    """Filters the known lines TensorFlow prints when it is first imported (see
    _TF_IMPORT_NOISE), now or later; what it prints goes whole to `log_file`."""
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlowImport)
                                          for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlowImport(log_file))


def stop_quieting_tensorflow_import() -> None:
    """Removes the import filter if TensorFlow was never imported (the end of a run)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietTensorFlowImport)]
