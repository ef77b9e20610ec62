#!/usr/bin/env bash
# UNet 3+ training throughput with the repo's Keras 3 model code on JAX, for a GPU machine that
# has Python + JAX (PyTorch may be there too) but no TensorFlow, no Keras and no network.
#
# 1. Here, with network (once):
#        bash bench/gpu_keras_jax.sh prepare
#    downloads into bench/wheels/ (git-ignored) the Keras wheel pinned in requirements/lock.txt
#    and the dependencies Keras 3 needs (absl-py, h5py, ml-dtypes, namex, optree, packaging,
#    rich, markdown-it-py, mdurl, pygments, typing-extensions) as cp312 manylinux2014_x86_64
#    wheels, plus a pip wheel (used only if the device's Python has no pip).  numpy is left out
#    (JAX needs it, so the device has it).  Prints the wheels and their total size (~16 MB).
#    Other targets: KJX_PY_VERSION=3.10 KJX_WHEELS=/tmp/wheels310 bash ... prepare
#
# 2. On the device, from the repository root (bench/wheels/ must travel with the tree, e.g. the
#    run tool's carry=["bench/wheels"]):
#        bash bench/gpu_keras_jax.sh [run] [options of bench/gpu_keras_jax.py]
#    e.g. --size 320 --batch 16 --steps 30 --warmup 3 --precision mixed_bfloat16
#         --variant base|ds|ds_cgm --widths paper|demo --metrics none|dice
#         --loop fit|train_on_batch   (see the docstring of bench/gpu_keras_jax.py)
#    Installs nothing globally: makes a venv in $KJX_ENV (default ${TMPDIR:-/tmp}/kjx-env) with
#    --system-site-packages (plus a .pth with the host interpreter's sys.path, so JAX stays
#    visible even when the host Python is itself a venv), pip-installs keras from bench/wheels
#    with --no-index (dependencies already present on the host are kept as they are), then runs
#    bench/gpu_keras_jax.py with KERAS_BACKEND=jax and KERAS_HOME inside the venv.  The last
#    line printed is "RESULT images/s=... device=... batch=... size=... precision=...";
#    $OUT/result.json too if $OUT is set.  Default run (paper widths, 320x320, batch 16,
#    mixed_bfloat16, 3 warm-up + 30 timed steps) is sized for ~1-3 minutes on an H100/H200.
#
# Environment: PYTHON (host interpreter with JAX; default python3), KJX_ENV, KJX_WHEELS.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
WHEELS="${KJX_WHEELS:-$HERE/wheels}"

keras_version() {
  local v
  v="$(sed -n 's/^keras==\([0-9][0-9.]*\).*/\1/p' "$REPO/requirements/lock.txt" 2>/dev/null \
    | head -n 1)"
  if [[ -z "$v" ]]; then
    echo "cannot read the keras pin from requirements/lock.txt" >&2
    return 1
  fi
  echo "$v"
}

prepare() {
  local version pyver platform pip_py
  version="$(keras_version)"
  pyver="${KJX_PY_VERSION:-3.12}"
  platform="${KJX_PLATFORM:-manylinux2014_x86_64}"
  pip_py="${PREPARE_PYTHON:-}"
  if [[ -z "$pip_py" ]]; then
    pip_py=python3
    if [[ -x "$REPO/.venv/bin/python" ]]; then pip_py="$REPO/.venv/bin/python"; fi
  fi
  mkdir -p "$WHEELS"
  rm -f "$WHEELS"/*.whl
  echo "downloading keras==$version + dependencies for cp${pyver/./} $platform into $WHEELS"
  "$pip_py" -m pip download --disable-pip-version-check --only-binary=:all: \
    --python-version "$pyver" --implementation cp --abi "cp${pyver/./}" --platform "$platform" \
    --dest "$WHEELS" "keras==$version" pip
  # JAX depends on numpy, so the device has it; shipping it would cost ~16 MB.
  if [[ "${KJX_KEEP_NUMPY:-0}" != 1 ]]; then rm -f "$WHEELS"/numpy-*.whl; fi
  echo "wheels in $WHEELS:"
  (cd "$WHEELS" && ls -l -- *.whl | awk '{printf "  %10d  %s\n", $5, $NF}')
  local total
  total="$(cat "$WHEELS"/*.whl | wc -c)"
  awk -v b="$total" \
    'BEGIN {printf "total %d bytes = %.1f MiB (carry limit 64 MiB incl. the repo)\n", b, b / 1048576}'
  if (( total > 40 * 1048576 )); then
    echo "wheels exceed 40 MiB: too big to carry" >&2
    return 1
  fi
}

setup_env() {
  local host_py="$1" version="$2" env="$3"
  if [[ -f "$env/.kjx-ready-$version" ]] && "$env/bin/python" -c \
      "import importlib.metadata as m, sys; sys.exit(m.version('keras') != sys.argv[1])" \
      "$version" 2>/dev/null; then
    echo "reusing $env"
    return 0
  fi
  if [[ -e "$env" && ! -f "$env/.kjx" ]]; then
    echo "$env exists and was not made by this script; set KJX_ENV elsewhere" >&2
    return 1
  fi
  rm -rf "$env"
  "$host_py" -m venv --without-pip --system-site-packages "$env"
  touch "$env/.kjx"
  local site
  site="$("$env/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  # Everything on the host interpreter's sys.path that the venv does not already see (the host
  # may itself be a venv or conda env, whose packages --system-site-packages does not reach).
  "$env/bin/python" -c 'import sys; print("\n".join(sys.path))' > "$env/.venv-path"
  "$host_py" - "$env/.venv-path" > "$site/_kjx_host.pth" <<'PYEOF'
import os, sys
have = set(open(sys.argv[1]).read().splitlines())
for p in sys.path:
    if p and os.path.isdir(p) and p not in have and os.path.abspath(p) != os.getcwd():
        print(p)
PYEOF
  local -a pip_cmd
  if "$env/bin/python" -m pip --version >/dev/null 2>&1; then
    pip_cmd=("$env/bin/python" -m pip)
  else
    local pip_whl
    pip_whl="$(ls "$WHEELS"/pip-*.whl 2>/dev/null | head -n 1 || true)"
    if [[ -z "$pip_whl" ]]; then
      echo "no pip on $host_py and no pip wheel in $WHEELS" >&2
      return 1
    fi
    pip_cmd=("$env/bin/python" "$pip_whl/pip")
  fi
  echo "installing keras==$version from $WHEELS into $env" \
    "($("${pip_cmd[@]}" --version | cut -d' ' -f1-2))"
  # Ignore pip config files and index settings of the machine: only the carried wheels count.
  env -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT -u PIP_REQUIREMENT \
    PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "${pip_cmd[@]}" install --no-index --find-links "$WHEELS" --no-cache-dir \
    --no-warn-script-location --progress-bar off "keras==$version"
  touch "$env/.kjx-ready-$version"
}

run() {
  local host_py version env
  host_py="${PYTHON:-$(command -v python3 || command -v python)}"
  version="$(keras_version)"
  env="${KJX_ENV:-${TMPDIR:-/tmp}/kjx-env}"
  if ! ls "$WHEELS"/keras-"$version"-*.whl >/dev/null 2>&1; then
    echo "no keras-$version wheel in $WHEELS: run 'bash bench/gpu_keras_jax.sh prepare' first" >&2
    return 1
  fi
  echo "host python: $host_py ($("$host_py" -c 'import sys; print(sys.version.split()[0])'))"
  if ! "$host_py" -c 'import jax' 2>/dev/null; then
    echo "warning: $host_py cannot import jax" >&2
  fi
  setup_env "$host_py" "$version" "$env"
  cd "$REPO"
  mkdir -p "$env/keras_home"
  KERAS_BACKEND=jax KERAS_HOME="$env/keras_home" \
    exec "$env/bin/python" "$HERE/gpu_keras_jax.py" "$@"
}

case "${1:-run}" in
  prepare) shift; prepare "$@" ;;
  run) [[ $# -gt 0 ]] && shift; run "$@" ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
  *) run "$@" ;;
esac
