# memla: the two set-up commands of the README.
#   make demo   create .venv, install (CPU torch first), run `memla demo` on the embedded model
#   make test   the same install, then the fast test suite (tiny random models)
# GPU users: make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP := $(VENV)/bin/python -m pip
STAMP := $(VENV)/.memla-installed

.PHONY: demo test test-slow test-all install clean

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
	$(VENV)/bin/python -m pytest -q -m "not slow"

test-slow: install
	$(VENV)/bin/python -m pytest -q -m slow

test-all: install
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
