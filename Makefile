# session-sidecar: the two commands are `make run` (local demo) and `make test` (the whole suite).
# Everything they need is installed here: the venv, the Python packages, Debian's redis-server and nginx-light for tests.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install system-deps run test test-fast lint bench fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests run for real: redis-server (Redis 7, the second server the store contract runs against)
# and nginx-light (auth_request in front of /forward-auth). One apt-get update, only when one is missing.

system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	{ command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } || missing="$$missing nginx-light"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian$$missing (tests run them for real)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing; run 'sudo apt-get install$$missing' (their tests are skipped without them)"; \
	  fi; \
	fi

# The real login apps of tests/integration/test_framework_writers.py (examples/frameworks/): PHP with phpredis and Rails'
# session stack (redis-actionpack, rackup, WEBrick), Node.js and npm from Debian, and the Express app's npm packages
# (npm ci). Django and Flask come with the dev extras. Installs only what is missing; a failed install leaves those
# tests skipped, with why.
.PHONY: framework-deps
framework-deps:
	@missing=""; \
	command -v php >/dev/null 2>&1 || missing="$$missing php-cli"; \
	php -m 2>/dev/null | grep -qx redis || missing="$$missing php-redis"; \
	ruby -e 'require "action_dispatch"; require "redis-actionpack"' >/dev/null 2>&1 || missing="$$missing ruby-redis-actionpack"; \
	command -v rackup >/dev/null 2>&1 || missing="$$missing ruby-rack"; \
	ruby -e 'require "webrick"' >/dev/null 2>&1 || missing="$$missing ruby-webrick"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian$$missing (the Express, PHP and Rails writer tests run them for real)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; } \
	      || echo "could not install$$missing: those writer tests are skipped"; \
	  else \
	    echo "missing Debian packages:$$missing; run 'sudo apt-get install$$missing' (their tests are skipped without them)"; \
	  fi; \
	fi
	@if [ ! -d examples/frameworks/express/node_modules ]; then \
	  if command -v npm >/dev/null 2>&1; then \
	    (cd examples/frameworks/express && npm ci --no-audit --no-fund --loglevel=error) \
	      || echo "npm ci failed in examples/frameworks/express: the Express writer tests are skipped"; \
	  else \
	    echo "npm is missing: the Express writer tests are skipped (install Node.js 18+ and npm)"; \
	  fi; \
	fi

run: $(STAMP)
	$(BIN)/python -m demo.run

# The same stack reading the sessions of a real Express app (examples/frameworks/express) on its Valkey; it needs
# Node.js and the example's npm packages (`make framework-deps`), and says so when they are missing.
.PHONY: run-express
run-express: $(STAMP)
	$(BIN)/python -m demo.run express

test: $(STAMP) system-deps framework-deps lint
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest tests/unit

lint: $(STAMP)
	$(BIN)/ruff check sidecar tests bench demo
	$(BIN)/ruff format --check sidecar tests bench demo
	$(BIN)/mypy

bench: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || if [ "$$(id -u)" = 0 ]; then echo "installing Debian wrk (the load generator of bench/throughput.py)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; else echo "wrk is missing: run 'sudo apt-get install wrk' (bench/throughput.py needs it)"; exit 1; fi
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/redis_commands.py
	$(BIN)/python bench/check_cost.py
	$(BIN)/python bench/assertion.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/profile_parts.py

# The decision-path fuzz of tests/fuzz run long (FUZZ_ARGS, e.g. "--seconds 60"), written to bench/results/fuzz.md.
fuzz: $(STAMP)
	$(BIN)/python bench/fuzz.py $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# The container image (Dockerfile), built with Debian's buildah (no daemon, no registry) from a Debian base made
# locally with debootstrap; installs buildah and debootstrap when missing (root). IMAGE=name:tag to rename it;
# BASE_IMAGE/RUNTIME_IMAGE to build on your registry's Python images. See README "Container image".
.PHONY: image
image:
	image/build.sh

# Regenerate the SessionService code from proto/ (checked in; tests/unit/api/test_proto.py fails when it is stale).
.PHONY: proto
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. \
	  proto/sidecar/api/v1/session.proto
