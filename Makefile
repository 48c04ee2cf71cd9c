# The two commands: `make run` (the whole service) and `make test` (the suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip install --disable-pip-version-check -q -c requirements/constraints.txt
# Where PyPI's torch is the multi-GB CUDA build, point this at the PyTorch CPU wheel index.
TORCH_INDEX ?=
TORCH_INDEX_ARG := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
SST2_DIR ?= ../shared/data/sst2
PYTEST_ARGS ?=

.PHONY: run test lint install install-dev redis-server redis-sentinel nginx promtool compose chromium jemalloc constraints evaluate model-bench bench export-onnx smoke soak chaos clean

run: install redis-server nginx jemalloc
	$(VENV)/bin/python -m stack

# --durations: the slowest tests, printed at the end, to keep the suite's time in view.
test: install-dev redis-server redis-sentinel nginx promtool chromium jemalloc lint
	$(VENV)/bin/python -m pytest --durations=15 $(PYTEST_ARGS)

lint: install-dev nginx compose
	VENV=$(VENV) scripts/lint.sh

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-installed: requirements/web.txt requirements/worker.txt requirements/constraints.txt | $(VENV)/bin/python
	$(PIP) $(TORCH_INDEX_ARG) -r requirements/web.txt -r requirements/worker.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.run-installed requirements/dev.txt
	$(PIP) $(TORCH_INDEX_ARG) -r requirements/dev.txt
	$(VENV)/bin/pip check
	touch $@

install: $(VENV)/.run-installed
install-dev: $(VENV)/.dev-installed

# Debian packages, installed only when their command is missing: redis-server and nginx (the front
# door) for the stack and the tests, promtool (package prometheus) for the Prometheus config check,
# chromium and chromium-driver for the Swagger UI test (tests/test_docs_ui.py).
# Debian's nginx package also enables its own default site on port 80; the stack does not use it.
APT_INSTALL = if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends

redis-server:
	@command -v redis-server >/dev/null || { $(APT_INSTALL) redis-server; }

# `python -m stack --ha`, its tests and bench.chaos's failover run the main Redis behind Sentinels.
redis-sentinel:
	@command -v redis-sentinel >/dev/null || { $(APT_INSTALL) redis-sentinel; }

# jemalloc: gunicorn runs on it where installed, as in Dockerfile.web (docs/reliability.md, "Soak and memory").
jemalloc:
	@/sbin/ldconfig -p | grep -q 'libjemalloc\.so\.2 ' || { $(APT_INSTALL) libjemalloc2; }

nginx:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { $(APT_INSTALL) nginx; }

promtool:
	@command -v promtool >/dev/null || { $(APT_INSTALL) prometheus; }

# Debian's docker-compose 1.29: make lint checks the compose file with it (scripts/compose_v1.py).
compose:
	@command -v docker-compose >/dev/null || { $(APT_INSTALL) docker-compose; }

chromium:
	@{ command -v chromium && command -v chromedriver; } >/dev/null || { $(APT_INSTALL) chromium chromium-driver; }

constraints:
	{ printf '%s\n' '# Every package, transitive ones included, as resolved and checked with `pip check`.' \
	    '# Regenerate after changing requirements/*.txt: make constraints'; \
	  $(VENV)/bin/pip freeze | sed 's/+cpu$$//' | grep -v '^-e'; } > requirements/constraints.txt

evaluate: install-dev
	$(VENV)/bin/python -m model_tools.evaluate --data $(SST2_DIR)

model-bench: install-dev
	$(VENV)/bin/python -m model_tools.benchmark --data $(SST2_DIR)

# End-to-end benchmark against the ceiling and the naive design; writes results/ (not committed).
BENCH_ARGS ?=
bench: install-dev redis-server jemalloc
	$(VENV)/bin/python -m bench.run --data $(SST2_DIR) $(BENCH_ARGS)

MINUTES ?= 5
soak: install-dev redis-server jemalloc
	$(VENV)/bin/python -m bench.soak --minutes $(MINUTES)

chaos: install-dev redis-server redis-sentinel jemalloc
	$(VENV)/bin/python -m bench.chaos

# Builds both images and runs the compose stack on a local dockerd (see README, "Smoke test").
smoke:
	scripts/smoke-compose.sh

export-onnx: install-dev
	$(VENV)/bin/python -m model_tools.export_onnx --output build/onnx-sst2-minilm-l6

clean:
	rm -rf build results .pytest_cache
