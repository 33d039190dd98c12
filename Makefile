# memla: the two set-up commands of the README.
#   make demo   create .venv, install (CPU torch first), run `memla demo` on the embedded model
#   make test   the same install, then the fast test suite (tiny random models; no slow or gpu tests)
#   make test-gpu  the tests that need CUDA (tiny models on the GPU, CPU/GPU agreement, two-GPU splits)
# GPU users: make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP := $(VENV)/bin/python -m pip
STAMP := $(VENV)/.memla-installed

.PHONY: demo test test-slow test-gpu test-lmeval test-all install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/memla demo

test: install
	$(VENV)/bin/python -m pytest -q -m "not slow and not gpu"

test-slow: install
	$(VENV)/bin/python -m pytest -q -m slow

# needs a CUDA build of torch (TORCH_SPEC) and a GPU; the two-GPU split tests skip on one GPU
test-gpu: install
	$(VENV)/bin/python -m pytest -q -m gpu

# the lm-evaluation-harness engine (optional extra, ~600 MB): installed here, then its adapter tests
test-lmeval: install
	$(PIP) install -q -e ".[dev,lm-eval]"
	$(VENV)/bin/python -c "import lm_eval"
	$(VENV)/bin/python -m pytest -q tests/test_downstream_lmeval.py

test-all: install
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
