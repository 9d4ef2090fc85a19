#!/usr/bin/env bash
# Regenerate tests/fixtures/argocd/: GuardedReleases captured from a real run of the operator
# in every state the Argo CD health check maps (tests/integration/test_argocd_health.py).
# Needs the local cluster (hack/cluster.sh up) and .venv (make venv).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f tests/fixtures/argocd/*.yaml
PERMAFROST_CAPTURE_ARGOCD=tests/fixtures/argocd \
  .venv/bin/pytest -q tests/integration/test_argocd_health.py
ls tests/fixtures/argocd
