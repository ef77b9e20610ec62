#!/usr/bin/env bash
# Creates .venv with Python 3.10 and the pinned stack (requirements/lock.txt), then builds the DALI
# TensorFlow plugin against the installed TensorFlow, then installs this project in editable mode.
# Idempotent: a stamp records the lock file's hash, so a second call returns at once. Then the kfp
# SDK's own venv (scripts/setup_kfp_sdk.sh) and the real CT crop (scripts/fetch_real_ct.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
LOCK=requirements/lock.txt
DALI_PLUGIN="nvidia-dali-tf-plugin-cuda120==2.4.0"
STAMP="$VENV/.setup-stamp"
want_stamp="$(cat "$LOCK" setup.py | sha256sum | cut -d' ' -f1) $DALI_PLUGIN"

# What the tests need beside .venv: the kfp SDK's own venv, and the real CT crop.
extras() {
  bash scripts/setup_kfp_sdk.sh
  VENV="$VENV" bash scripts/fetch_real_ct.sh
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]]; then
  extras
  exit 0
fi

find_python310() {
  # A user's machine: a plain python3.10 on PATH. This workplace: pyenv has 3.10 but not as global.
  local candidates=()
  [[ -n "${PYTHON:-}" ]] && candidates+=("$PYTHON")
  candidates+=(python3.10)
  if command -v pyenv >/dev/null 2>&1; then
    local v
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.10(\.[0-9]+)?$' | sort -rV); do
      candidates+=("$(pyenv prefix "$v")/bin/python")
    done
  fi
  local c
  for c in "${candidates[@]}"; do
    if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; then
      echo "$c"; return 0
    fi
  done
  return 1
}

if [[ ! -x "$VENV/bin/python" ]]; then
  if ! PY=$(find_python310); then
    echo "setup: Python 3.10 is required (TFX 1.16 supports 3.9-3.10) and none was found." >&2
    echo "setup: install python3.10 (or 'pyenv install 3.10'), or set PYTHON=/path/to/python3.10." >&2
    exit 1
  fi
  echo "setup: creating $VENV with $PY ($("$PY" --version))"
  "$PY" -m venv "$VENV"
fi

echo "setup: installing the pinned stack from $LOCK (a few minutes the first time)"
"$VENV/bin/python" -m pip install --quiet --upgrade "pip<25" "setuptools<80" wheel
"$VENV/bin/python" -m pip install --quiet -r "$LOCK"
# The plugin is an sdist compiled against the TensorFlow installed above, so no build isolation.
echo "setup: building $DALI_PLUGIN against the installed TensorFlow"
"$VENV/bin/python" -m pip install --quiet --no-build-isolation --no-deps "$DALI_PLUGIN"
"$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
"$VENV/bin/python" -m pip check
echo "$want_stamp" > "$STAMP"
echo "setup: done ($VENV)"
extras
