"""A stand-in for the pipeline's container image, built in seconds: this project's wheel installed
into a fresh venv outside the repository, on top of .venv's packages (the image's preinstalled
stack) added by one `.pth` line.

.venv also holds the editable install of this repository (easy-install.pth, an egg-link). A path
line in a .pth file adds that folder only: the .pth files inside it are not processed, so the
repository does not become importable; `build_image` checks this, and that `pipeline` resolves to
the installed wheel. Tasks must still run with a clean PYTHONPATH and a cwd outside the repository.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Top-level entries of the repository that are not the source (the wheel is built from a copy,
# so the build writes nothing into the repository and no stale build/ folder leaks in).
NOT_SOURCE = {".venv", ".venv-kfp", ".git", "build", "dist", "outputs", "data", ".pytest_cache",
              "tfx_pipeline_output", "bench"}


@dataclasses.dataclass
class Image:
    python: str          # the venv's interpreter: what a task's `python` means
    site_packages: str
    wheel: str


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def run_checked(cmd, cwd: Path) -> str:
    """Runs a command with a clean environment; its stdout, or an assertion with its stderr."""
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=clean_env(), capture_output=True,
                          text=True)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done.stdout


def build_wheel(work: Path) -> Path:
    """`pip wheel --no-deps --no-build-isolation` of a copy of the repository's source."""
    def ignore(folder, names):
        top = Path(folder) == REPO
        return [n for n in names if n == "__pycache__" or n.endswith(".egg-info")
                or (top and n in NOT_SOURCE)]
    source = work / "source"
    shutil.copytree(REPO, source, ignore=ignore)
    run_checked([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
            "-w", work / "wheel", source], cwd=work)
    wheels = sorted((work / "wheel").glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def build_image(work: Path) -> Image:
    """The wheel, installed with --no-deps into a fresh venv under `work` (outside the
    repository) whose base interpreter is .venv's and whose site-packages sees .venv's."""
    work.mkdir(parents=True, exist_ok=True)
    assert REPO not in work.resolve().parents, f"{work} is inside the repository"
    wheel = build_wheel(work)
    base = Path(sys.base_prefix) / "bin" / "python{}.{}".format(*sys.version_info[:2])
    venv = work / "image"
    run_checked([base, "-m", "venv", "--without-pip", venv], cwd=work)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(run_checked([python, "-c", purelib], cwd=work).strip())
    stack = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_preinstalled_stack.pth").write_text("".join(f"{p}\n" for p in sorted(stack)))
    run_checked([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel], cwd=work)
    image = Image(python=str(python), site_packages=str(site), wheel=str(wheel))
    check_image(image, work)
    return image


def check_image(image: Image, cwd: Path) -> None:
    """This project imports from the venv's site-packages, and the repository is not on sys.path."""
    probe = ("import json, sys, pipeline, components, kubeflow_runner; print(json.dumps("
             "{'pipeline': pipeline.__file__, 'components': components.__file__, "
             "'kubeflow_runner': kubeflow_runner.__file__, 'path': sys.path}))")
    found = json.loads(run_checked([image.python, "-c", probe], cwd=cwd).strip().splitlines()[-1])
    for module in ("pipeline", "components", "kubeflow_runner"):
        where = Path(found[module]).resolve()
        assert Path(image.site_packages).resolve() in where.parents, \
            f"{module} imports from {where}, not from the image's {image.site_packages}"
    on_path = [p for p in found["path"] if p and Path(p).resolve() == REPO]
    assert not on_path, f"the repository is on the image's sys.path: {found['path']}"
