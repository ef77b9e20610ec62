# The two commands: `make run` and `make test`. Both set up the environment first (idempotent).
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Quieter TensorFlow C++ logs; Python logging still says what each component does.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup run run-tumour test test-fast data image clean help

help:
	@echo "make run    - set up if needed, make the synthetic CT set, run the whole pipeline (demo)"
	@echo "make run-tumour - the same with a liver + tumour model (profile tumour, outputs/tumour)"
	@echo "make test   - set up if needed, run the test suite"
	@echo "make setup  - create $(VENV) with Python 3.10 and the pinned stack"
	@echo "make data   - only generate the built-in synthetic CT set (outputs/)"
	@echo "make image  - build the Kubeflow/Vertex task image: IMAGE=registry/name:tag [PUSH=1] [CUDA=0]"
	@echo "make clean  - remove outputs/ (pipeline artifacts, metadata, pushed models)"

setup:
	@bash scripts/setup_env.sh

run: setup
	$(PY) local_runner.py $(ARGS)

# Liver and tumour (three classes), its own output folder: its models never compete for blessing
# with make run's liver-only ones.
run-tumour: setup
	$(PY) local_runner.py --profile tumour --output_dir outputs/tumour $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Unit tests only (no full pipeline runs).
test-fast: setup
	$(PY) -m pytest -m "not pipeline" $(PYTEST_ARGS)

data: setup
	$(PY) -m preprocessing.synthetic_ct --output outputs/synthetic_ct_n12_s128_seed0 --num_cases 12 --size 128 --min_slices 24 --max_slices 56

# The image Kubeflow / Vertex tasks and Beam workers run in (Docker needed; docs/deploy.md).
image:
	IMAGE="$(IMAGE)" PUSH="$(PUSH)" CUDA="$(CUDA)" bash scripts/build_image.sh

clean:
	rm -rf outputs
