# Permafrost — developer entry points. `make test` and `make demo` work on a fresh machine:
# they create .venv, build the local control plane from Go modules (cached outside the repo),
# and run what they promise.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

include hack/versions.env
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CACHE_ROOT := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/permafrost
K8S_BIN := $(CACHE_ROOT)/kubernetes-$(K8S_VERSION)/bin
KWOK_BIN := $(CACHE_ROOT)/kwok-$(KWOK_VERSION)/bin
# NB: the machine's own kubectl may be out of version skew; the built one comes first.
export PATH := $(K8S_BIN):$(KWOK_BIN):$(CURDIR)/$(BIN):$(PATH)
export KUBECONFIG := $(CURDIR)/.cluster/kubeconfig
# The real worker node (hack/node.sh): auto = where the machine can run it (root, network
# namespaces), 1 = required, 0 = kwok's fake nodes only.
export REAL_NODE ?= auto
# Commands that talk to the cluster run where it is: in the real node's network namespace, if any.
IN_CLUSTER := hack/cluster.sh exec

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

.PHONY: venv
venv: $(BIN)/.installed ## create .venv with the project and its dev tools

.PHONY: binaries
binaries: ## build the cluster's binaries, Argo CD's and Prometheus (cached in ~/.cache/permafrost); the real node's and the image builder's too, if it runs here
	@if [ "$$(hack/cluster.sh real-node)" = 1 ]; then hack/node.sh deps && hack/build-binaries.sh node argocd prometheus \
	  && hack/build-binaries.sh buildkit && hack/operator-image.sh deps; \
	else echo "no real node: $$(hack/cluster.sh real-node)"; hack/build-binaries.sh argocd prometheus; fi

.PHONY: lint
lint: venv ## ruff (lint and format check)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

.PHONY: typecheck
typecheck: venv ## mypy --strict
	$(BIN)/mypy

.PHONY: contracts
contracts: venv ## import-linter layering contracts
	$(BIN)/lint-imports

.PHONY: go-test
go-test: ## the Go parts: the demo app (examples/app) and the node's pause (hack/pause)
	@command -v go >/dev/null || { echo "Go is not installed. Install Go >= 1.26 and retry."; exit 1; }
	cd examples/app && go vet ./... && go test ./...
	cd hack/pause && go vet ./... && go test ./...

.PHONY: unit
unit: venv ## the pure unit tests only (seconds)
	$(BIN)/pytest -m unit

.PHONY: test
test: venv binaries lint typecheck contracts go-test ## everything: lint, types, contracts, unit and integration tests (two shards side by side: hack/test.sh)
	hack/test.sh $(PYTEST_ARGS)

.PHONY: cluster-up
cluster-up: binaries ## start (or reuse) the local cluster (REAL_NODE=0|1|auto); kubeconfig in .cluster/kubeconfig
	hack/cluster.sh up

.PHONY: shell
shell: ## a shell where the local cluster is reachable (inside the real node's network namespace)
	$(IN_CLUSTER) bash

# The operator image, from the Dockerfile, by BuildKit (hack/operator-image.sh); pushed to the
# real node's registry, so the build runs where that registry is (buildkitd itself runs in the
# host's network namespace: the Dockerfile's pip needs PyPI). IMAGE_REF: where to push it.
IMAGE_REF ?=
.PHONY: image
image: cluster-up ## build the operator image from the Dockerfile (BuildKit), push it to the node's registry, print REPO@sha256:...
	@[ "$$(hack/cluster.sh real-node)" = 1 ] || { echo "make image pushes to the real node's registry, and this machine has none: $$(hack/cluster.sh real-node)"; exit 1; }
	hack/build-binaries.sh buildkit
	hack/operator-image.sh deps
	$(IN_CLUSTER) hack/operator-image.sh build $(IMAGE_REF)

.PHONY: cluster-down
cluster-down: ## stop the local cluster and delete its state
	hack/cluster.sh down

.PHONY: demo
demo: venv cluster-up ## the story: ship, upgrade, guardrails, automatic rollback (DEMO_NONINTERACTIVE=1: no pauses)
	$(IN_CLUSTER) hack/demo.sh

.PHONY: demo-down
demo-down: ## stop the demo's operator, remove its webhook configuration, stop the cluster
	$(IN_CLUSTER) hack/demo.sh down
	hack/cluster.sh down

.PHONY: crd
crd: venv ## regenerate crds/guardedrelease.yaml from the models
	$(BIN)/python hack/gen_crd.py

.PHONY: fmt
fmt: venv ## format the code
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# --- benchmarks (bench/; results in bench/results/, report in docs/benchmarks.md) -------------
$(BIN)/.bench-installed: pyproject.toml $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	@touch $@

.PHONY: bench
bench: $(BIN)/.bench-installed binaries cluster-up ## benchmarks vs. native baselines (~15 min); writes docs/benchmarks.md
	$(IN_CLUSTER) $(BIN)/python -m bench $(BENCH_ARGS)

.PHONY: bench-memory
bench-memory: $(BIN)/.bench-installed binaries cluster-up ## memory and start-up among 2,000 large Secrets and 5,000 ConfigMaps, before (BENCH_ARGS="--baseline REF", default main) and after (~15 min)
	$(IN_CLUSTER) $(BIN)/python -m bench.memory $(BENCH_ARGS)

# --- reliability: the long runs ---------------------------------------------------------------
CHAOS_TESTS := tests/unit/test_fuzz_planner.py tests/unit/test_hostile_input.py \
	tests/integration/test_fuzz_webhook.py tests/integration/test_chaos.py \
	tests/integration/test_high_availability.py tests/integration/test_outages.py \
	tests/integration/test_webhook_security.py

.PHONY: chaos
chaos: venv binaries ## the long reliability runs (chaos, fuzzing, outages; ~15 min): see docs/reliability.md
	PERMAFROST_CHAOS=long $(IN_CLUSTER) $(BIN)/pytest -s --hypothesis-show-statistics $(CHAOS_TESTS)
