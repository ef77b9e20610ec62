#!/usr/bin/env bash
# Fetches one real CT crop (LiTS volume 117, liver + tumour labels) and writes it as two NIfTI
# cases in the LiTS layout under .cache/real_ct/lits/ (docs/real_ct.md). The crop ships inside
# the PyPI wheel liver-ct-segmentation-package 1.6.0: the wheel is only downloaded (pip
# download --no-deps), never installed (it pins torch 1.7); preprocessing/lits_crop.py reads
# the two MRC files out of the zip. Idempotent: a wheel with the pinned sha256 is not fetched
# again, and a finished conversion (its crop.json) is not redone. Needs the registry
# (pypi.org) the first time only; a failed download or a wrong hash stops with status 1.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
CACHE=${REAL_CT_CACHE:-.cache/real_ct}
PACKAGE="liver-ct-segmentation-package==1.6.0"
WHEEL="$CACHE/liver_ct_segmentation_package-1.6.0-py2.py3-none-any.whl"
WHEEL_SHA256="67ffa526d8500ce5e3d9f2c96c1690543d811d352d93d531301d35791b9d6bba"
OUT="$CACHE/lits"

sha_ok() {
  [[ -f "$WHEEL" ]] && [[ "$(sha256sum "$WHEEL" | cut -d' ' -f1)" == "$WHEEL_SHA256" ]]
}

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "fetch_real_ct: no $VENV/bin/python; run 'make setup' first" >&2
  exit 1
fi

mkdir -p "$CACHE"
if sha_ok; then
  echo "fetch_real_ct: $WHEEL already there (sha256 ok)"
else
  rm -f "$WHEEL"
  echo "fetch_real_ct: downloading $PACKAGE (4.5 MB, the wheel only, no dependencies)"
  if ! "$VENV/bin/python" -m pip download --quiet --no-deps --only-binary=:all: \
      "$PACKAGE" -d "$CACHE"; then
    echo "fetch_real_ct: error: pip download $PACKAGE failed (is pypi.org reachable?)" >&2
    exit 1
  fi
  if ! sha_ok; then
    got=$([[ -f "$WHEEL" ]] && sha256sum "$WHEEL" | cut -d' ' -f1 || echo "no file")
    echo "fetch_real_ct: error: $WHEEL: sha256 $got, expected $WHEEL_SHA256" >&2
    rm -f "$WHEEL"
    exit 1
  fi
fi

converted() {
  local f
  for f in crop.json volume-0.nii.gz segmentation-0.nii.gz volume-1.nii.gz \
      segmentation-1.nii.gz NOTICE; do
    [[ -f "$OUT/$f" ]] || return 1
  done
}

if converted; then
  echo "fetch_real_ct: $OUT already converted (crop.json)"
  exit 0
fi
"$VENV/bin/python" -m preprocessing.lits_crop --wheel "$WHEEL" --output "$OUT"
