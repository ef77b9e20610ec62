# The image every Kubeflow / Vertex task runs in, and the Beam workers' environment on Dataflow,
# Flink or Spark (ENTRYPOINT is Beam's SDK harness boot; Kubeflow tasks give their own command).
# Build with scripts/build_image.sh (`make image`), which passes the pins below from the repo.
#
# Base: Ubuntu 22.04, whose system Python is 3.10 (TFX 1.16 supports 3.9-3.10). GPU support
# comes from pip, not from the base: tensorflow[and-cuda] pins the CUDA 12.3 / cuDNN 8.9 wheels
# TensorFlow 2.16 was built against, and DALI (cuda120) brings its own CUDA 12 libraries. The GPU
# node supplies only the NVIDIA driver. Why not another base: docs/deploy.md.

ARG UBUNTU=ubuntu:22.04
ARG BEAM_VERSION=2.74.0

# Beam's SDK harness boot binary, of the Beam version in requirements/lock.txt.
FROM apache/beam_python3.10_sdk:${BEAM_VERSION} AS beam_sdk

FROM ${UBUNTU} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.10 python3.10-venv python3.10-dev \
      build-essential ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3.10 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install "pip<25" "setuptools<80" wheel

# The locked stack first (its own layer: it changes far less often than the code).
COPY requirements/lock.txt /build/requirements/lock.txt
ARG CUDA=1
RUN pip install -r /build/requirements/lock.txt \
 && if [ "$CUDA" = "1" ]; then \
      tf=$(sed -n 's/^tensorflow==//p' /build/requirements/lock.txt); \
      pip install -c /build/requirements/lock.txt "tensorflow[and-cuda]==${tf}"; \
    fi
# An sdist compiled against the TensorFlow installed above (as scripts/setup_env.sh does).
ARG DALI_PLUGIN=nvidia-dali-tf-plugin-cuda120==2.4.0
RUN pip install --no-build-isolation --no-deps "$DALI_PLUGIN"

# This project as a wheel (not editable): packages, py_modules and schema/schema.pbtxt.
COPY . /build/src
RUN pip wheel --no-deps --no-build-isolation -w /build/wheels /build/src \
 && pip install --no-deps /build/wheels/unet3plus_tfx-*.whl \
 && pip check
# Fails the build if a task's entrypoint or our executors cannot be imported from the wheel,
# or the schema is not where the installed package looks for it.
RUN cd / && TF_CPP_MIN_LOG_LEVEL=3 python -c "\
import os, tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor; \
import tfx.orchestration.kubeflow.v2.file_based_example_gen.driver, components.task_entrypoint; \
import components.byte_size_batching, components.packaged_schema_gen, kubeflow_runner; \
import components.anomalies_gate, components.volume_evaluator, evaluation.tfma_dice; \
import schema; assert '/site-packages/' in schema.SCHEMA_PATH, schema.SCHEMA_PATH; \
assert os.path.isfile(schema.SCHEMA_PATH), schema.SCHEMA_PATH"

FROM ${UBUNTU}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.10 libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam
ARG SITE=/opt/venv/lib/python3.10/site-packages
# XLA (the Trainer compiles with it on GPU) finds libdevice and ptxas in the nvcc wheel.
ENV PATH=/opt/venv/bin:${SITE}/nvidia/cuda_nvcc/bin:$PATH \
    XLA_FLAGS=--xla_gpu_cuda_data_dir=${SITE}/nvidia/cuda_nvcc \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=1 \
    RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1
# (The last: Beam's boot runs the workers in this venv instead of making a new one at start.)

# Not root; a numeric USER lets Kubernetes' runAsNonRoot check it. Tasks write only to their
# artifact URIs and /tmp; the working directory is the user's home, not a source tree.
RUN useradd --create-home --uid 1000 --shell /bin/bash pipeline
USER 1000
WORKDIR /home/pipeline
ENTRYPOINT ["/opt/apache/beam/boot"]
