"""The house's floors, read from the code itself (ast, nothing imported). Each room may import
from the rooms listed under it here and from nothing above or beside it:

  local_runner, kubeflow_runner, predict   the entry points: anything below
  pipeline/      the TFX graph, settings, targets, console and run summary
  components/    thin TFX adapters over the rooms below
  trainer/       run_fn: inputs, fit, export              (never evaluation/ or inference/)
  evaluation/    scoring: metrics, the volume evaluation, the TFMA Dice, the report
  inference/     segmenting a volume with an exported model
  preprocessing/, models/   the pure core (volume -> slices; Keras 3 models); never each other
  common/        the ground floor: storage (paths and URIs), process exit, console set-up
  schema/        the contract every room shares: feature and file names, schema.pbtxt

So the numerics stay usable without TFX, the Trainer without the pipeline's wiring, and no arrow
runs back up. docs/layout.md describes the same picture."""
from __future__ import annotations

import ast
import os
import sys
from typing import Iterator, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_GROUND = {"schema", "common"}
_CORE = _GROUND | {"preprocessing", "models"}
# Room -> the rooms it may import (its own always).
MAY_IMPORT = {
    "schema": set(), "common": {"schema"},
    "preprocessing": _GROUND, "models": _GROUND,
    "inference": _CORE,
    "evaluation": _CORE | {"inference"},
    "trainer": _CORE,
    "components": _CORE | {"inference", "evaluation", "trainer"},
}
MAY_IMPORT["pipeline"] = MAY_IMPORT["components"] | {"components"}
for _entry in ("local_runner", "kubeflow_runner", "predict"):
    MAY_IMPORT[_entry] = MAY_IMPORT["pipeline"] | {"pipeline"}
LAYERS = MAY_IMPORT   # every room the checks walk
# The production code's size limits: a module a reader takes in at once, a function on a screen.
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60


def room_of(module: str) -> Optional[str]:
    room = module.split(".")[0]
    return room if room in LAYERS else None


def project_imports(path: str) -> Iterator[Tuple[int, str]]:
    """(line, module) of every absolute import in a file, inside functions too."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def source_files():
    for name in LAYERS:
        if os.path.isfile(os.path.join(REPO, name + ".py")):
            yield name, os.path.join(REPO, name + ".py")
            continue
        for root, _, files in os.walk(os.path.join(REPO, name)):
            for f in sorted(files):
                if f.endswith(".py"):
                    path = os.path.join(root, f)
                    yield os.path.relpath(path, REPO)[:-3].replace(os.sep, "."), path


def upward_imports():
    """Imports of a room that its MAY_IMPORT does not allow (upward or sideways)."""
    found = []
    for module, path in source_files():
        mine = room_of(module)
        for line, imported in project_imports(path):
            theirs = room_of(imported)
            if theirs is not None and theirs != mine and theirs not in MAY_IMPORT[mine]:
                found.append(f"{os.path.relpath(path, REPO)}:{line} imports {imported}")
    return found


def test_every_package_is_checked():
    modules = {m.split(".")[0] for m, _ in source_files()}
    assert modules == set(LAYERS), set(LAYERS) - modules


def test_imports_only_run_downward():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a trainer module importing pipeline.configs is reported."""
    package = tmp_path / "trainer"
    package.mkdir()
    (package / "bad.py").write_text("def f():\n    from pipeline.configs import TrainConfig\n")
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "REPO", str(tmp_path))
    rooms = {"trainer": {"models"}, "pipeline": {"trainer"}, "models": set()}
    monkeypatch.setattr(this, "LAYERS", rooms)
    monkeypatch.setattr(this, "MAY_IMPORT", rooms)
    assert upward_imports() == ["trainer/bad.py:2 imports pipeline.configs"]


def test_the_check_sees_a_sideways_import(tmp_path, monkeypatch):
    """Rooms on one floor stay apart: the Trainer importing the evaluation is reported."""
    package = tmp_path / "trainer"
    package.mkdir()
    (package / "bad.py").write_text("from evaluation import volume_eval\n")
    (tmp_path / "evaluation").mkdir()
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "REPO", str(tmp_path))
    monkeypatch.setattr(this, "LAYERS", {"trainer": set(), "evaluation": set()})
    monkeypatch.setattr(this, "MAY_IMPORT", {"trainer": set(), "evaluation": set()})
    assert upward_imports() == ["trainer/bad.py:1 imports evaluation"]


def oversized(limit_module: int = MAX_MODULE_LINES, limit_function: int = MAX_FUNCTION_LINES):
    """Production modules over the line limit, and functions over theirs."""
    found = []
    for _, path in source_files():
        with open(path) as f:
            text = f.read()
        name = os.path.relpath(path, REPO)
        if text.count("\n") > limit_module:
            found.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text, path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit_function:
                    found.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    return found


def test_modules_and_functions_stay_small():
    assert oversized() == []


def test_the_size_check_sees_a_long_function():
    assert any(" main: " in entry for entry in oversized(limit_function=20)), oversized(
        limit_function=20)
