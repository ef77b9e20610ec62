"""The wheel the image installs (Dockerfile: built from the context .dockerignore leaves) holds
what the tasks import and read: every package and module of the project and the schema file."""
from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from test_layers import LAYERS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The house's rooms (tests/test_layers.py): the folders are packages, the rest top-level modules.
PACKAGES = tuple(r for r in LAYERS if os.path.isdir(os.path.join(REPO, r)))
PY_MODULES = tuple(f"{r}.py" for r in LAYERS if r not in PACKAGES)


def _dockerignore_patterns():
    with open(os.path.join(REPO, ".dockerignore")) as f:
        lines = [line.strip() for line in f]
    return [line for line in lines if line and not line.startswith("#")]


def _ignore(patterns):
    """shutil.copytree's ignore, read like Docker does for these simple lines: a plain pattern
    matches at the top level only, **/pattern at any depth."""
    def ignore(folder, names):
        top = os.path.abspath(folder) == REPO
        return {n for n in names for p in patterns
                if (p.startswith("**/") and fnmatch.fnmatch(n, p[3:]))
                or (top and fnmatch.fnmatch(n, p))}
    return ignore


def _source_files():
    """Every .py file of the project's packages, as wheel paths."""
    found = set()
    for package in PACKAGES:
        for root, _, files in os.walk(os.path.join(REPO, package)):
            if "__pycache__" in root:
                continue
            found.update(os.path.relpath(os.path.join(root, f), REPO).replace(os.sep, "/")
                         for f in files if f.endswith(".py"))
    return found


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory):
    context = tmp_path_factory.mktemp("context") / "src"
    shutil.copytree(REPO, context, ignore=_ignore(_dockerignore_patterns()))
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(context)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [wheel] = list(out.glob("unet3plus_tfx-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def test_wheel_holds_the_schema(wheel_names):
    assert "schema/schema.pbtxt" in wheel_names


def test_wheel_holds_every_package_and_module(wheel_names):
    for package in PACKAGES + ("preprocessing/synthetic_ct",):
        assert f"{package}/__init__.py" in wheel_names, package
    missing = _source_files() - wheel_names
    assert not missing, sorted(missing)
    for module in PY_MODULES:
        assert module in wheel_names, module


def test_wheel_holds_no_tests_or_benchmarks(wheel_names):
    assert not [n for n in wheel_names if n.startswith(("tests/", "bench/"))]
