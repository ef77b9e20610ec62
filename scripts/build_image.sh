#!/usr/bin/env bash
# Builds the pipeline image (Dockerfile) and, with PUSH=1, pushes it.
#   IMAGE=registry.example/unet3plus-tfx:0.1.0 scripts/build_image.sh     # or: make image IMAGE=...
#   PUSH=1 IMAGE=... scripts/build_image.sh
#   CUDA=0 ...   a CPU-only image (no CUDA/cuDNN wheels, ~3 GB smaller)
# The Beam version and the DALI plugin pin come from the repo (requirements/lock.txt,
# scripts/setup_env.sh), so the image and `make setup` install the same stack.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-unet3plus-tfx:latest}
PUSH=${PUSH:-0}
CUDA=${CUDA:-1}
DOCKER=${DOCKER:-docker}

beam_version=$(sed -n 's/^apache-beam==//p' requirements/lock.txt)
dali_plugin=$(sed -n 's/^DALI_PLUGIN="\(.*\)"$/\1/p' scripts/setup_env.sh)
if [[ -z "$beam_version" || -z "$dali_plugin" ]]; then
  echo "build_image: could not read the Beam version (requirements/lock.txt) or the DALI plugin" \
       "pin (scripts/setup_env.sh)" >&2
  exit 1
fi
if ! command -v "$DOCKER" >/dev/null 2>&1; then
  echo "build_image: '$DOCKER' not found; install Docker (or set DOCKER=podman)" >&2
  exit 1
fi

echo "build_image: $IMAGE (Beam $beam_version, $dali_plugin, CUDA=$CUDA)"
"$DOCKER" build \
  --build-arg "BEAM_VERSION=$beam_version" \
  --build-arg "DALI_PLUGIN=$dali_plugin" \
  --build-arg "CUDA=$CUDA" \
  -t "$IMAGE" .

if [[ "$PUSH" == "1" ]]; then
  "$DOCKER" push "$IMAGE"
  echo "build_image: pushed $IMAGE"
  # The digest pins exactly this build; give it to kubeflow_runner.py --image for a
  # reproducible pipeline.
  "$DOCKER" image inspect --format '{{join .RepoDigests "\n"}}' "$IMAGE" || true
fi
