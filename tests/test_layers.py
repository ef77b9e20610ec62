"""Imports run downward only, read from the code itself (ast, nothing imported):

  runners and predict.py  >  pipeline/, components/  >  trainer/  >  preprocessing/, models/, schema/

A module may import from its own layer or any layer below it, never above: the numerics stay
usable without TFX, and the Trainer without the pipeline's wiring."""
from __future__ import annotations

import ast
import os
import sys
from typing import Iterator, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = {"local_runner": 3, "kubeflow_runner": 3, "predict": 3,
          "pipeline": 2, "components": 2,
          "trainer": 1,
          "preprocessing": 0, "models": 0, "schema": 0}


def layer_of(module: str) -> Optional[int]:
    return LAYERS.get(module.split(".")[0])


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
    found = []
    for module, path in source_files():
        mine = layer_of(module)
        for line, imported in project_imports(path):
            theirs = layer_of(imported)
            if theirs is not None and theirs > mine:
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
    monkeypatch.setattr(this, "LAYERS", {"trainer": 1, "pipeline": 2})
    assert upward_imports() == ["trainer/bad.py:2 imports pipeline.configs"]
