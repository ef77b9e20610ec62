#!/usr/bin/env bash
# Creates .venv-kfp: the kfp SDK 2.17.3 (what users upload and start runs with) in its own venv,
# because it needs protobuf 6 and .venv pins protobuf 3.20.3 for TFX 1.16. The tests load and
# validate the compiled pipeline file with it (tests/test_kfp_sdk.py). About 20 s, 80 MB.
# Idempotent: a stamp records the lock file's hash.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
KFP_VENV=${KFP_VENV:-.venv-kfp}
LOCK=requirements/kfp-sdk-lock.txt
STAMP="$KFP_VENV/.setup-stamp"
want_stamp="$(sha256sum "$LOCK" | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]]; then
  exit 0
fi
echo "setup: creating $KFP_VENV with the kfp SDK ($LOCK)"
# The same interpreter as .venv (Python 3.10), as a venv of its own: nothing shared with .venv.
BASE=$("$VENV/bin/python" -c 'import os, sys
exe = os.path.join(sys.base_prefix, "bin", "python%d.%d" % sys.version_info[:2])
print(exe if os.path.exists(exe) else sys._base_executable)')
"$BASE" -m venv --clear "$KFP_VENV"
"$KFP_VENV/bin/python" -m pip install --quiet --upgrade "pip<25"
"$KFP_VENV/bin/python" -m pip install --quiet --no-deps -r "$LOCK"
"$KFP_VENV/bin/python" -m pip check
echo "$want_stamp" > "$STAMP"
echo "setup: done ($KFP_VENV)"
