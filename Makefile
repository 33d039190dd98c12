# memla: the two set-up commands of the README.
#   make demo   create .venv, install (CPU torch first), run `memla demo` on the embedded model
#   make test   the same install, then the fast test suite (tiny random models; no slow or gpu tests)
#   make test-gpu  the tests that need CUDA (tiny models on the GPU, CPU/GPU agreement, two-GPU splits)
#   make test-ui   `memla explore` in a real browser (installs Debian's chromium and the ui extra)
# GPU users: make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP := $(VENV)/bin/python -m pip
STAMP := $(VENV)/.memla-installed

.PHONY: demo test test-slow test-gpu test-lmeval test-ui browser test-all install clean

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
	$(VENV)/bin/python -m pytest -q -m "not slow and not gpu and not ui"

test-slow: install
	$(VENV)/bin/python -m pytest -q -m "slow and not ui"

# needs a CUDA build of torch (TORCH_SPEC) and a GPU; the two-GPU split tests skip on one GPU
test-gpu: install
	$(VENV)/bin/python -m pytest -q -m gpu

# the lm-evaluation-harness engine (optional extra, ~600 MB): installed here, then its adapter tests
test-lmeval: install
	$(PIP) install -q -e ".[dev,lm-eval]"
	$(VENV)/bin/python -c "import lm_eval"
	$(VENV)/bin/python -m pytest -q tests/test_downstream_lmeval.py

# Debian's chromium and its driver for the browser tests, and fonts for the 12 languages' scripts
# (CJK, Thai); skipped when they are there; sudo only when not root
BROWSER_PACKAGES := chromium chromium-driver fonts-wqy-zenhei fonts-tlwg-garuda-ttf
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null && fc-list | grep -qi wqy \
		&& fc-list | grep -qi garuda; then echo "browser: chromium, chromedriver and fonts are installed"; \
	else $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		$(BROWSER_PACKAGES) >/dev/null; fi

# `memla explore` in a real browser (the ui extra: gradio, selenium); the browser comes from apt, not from a download
test-ui: install browser
	$(PIP) install -q -e ".[dev,ui]"
	$(VENV)/bin/python -c "import gradio, selenium"
	$(VENV)/bin/python -m pytest -q -m ui

test-all: install
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
