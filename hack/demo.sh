#!/usr/bin/env bash
# `make demo`: Permafrost at work on the local control plane.
#   1. a first release, verified and promoted;
#   2. an upgrade: a new revision, traffic switched only when it is healthy;
#   3. a bad upgrade (pods never Ready): automatic rollback, traffic never moves;
#   4. a config change: a new revision with its own immutable snapshot.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$ROOT/hack/cluster.sh" env)"
NS=permafrost-demo
PY="$ROOT/.venv/bin/python"

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { kubectl -n "$NS" get grel,deploy,svc -o wide | cut -c1-150; }
phase() { kubectl -n "$NS" get grel checkout -o jsonpath='{.status.phase}'; }
stable() { kubectl -n "$NS" get grel checkout -o jsonpath='{.status.stableRevision}'; }
selector() { kubectl -n "$NS" get svc checkout -o jsonpath='{.spec.selector.permafrost\.dev/revision}'; }
wait_for() {  # wait_for DESCRIPTION COMMAND...
  local what=$1; shift
  for _ in $(seq 1 120); do "$@" && return 0; sleep 0.5; done
  echo "timed out waiting for $what" >&2; exit 1
}
is_phase() { [ "$(phase)" = "$1" ]; }
stable_changed() { [ -n "$(stable)" ] && [ "$(stable)" != "$1" ]; }

bold "Control plane: kube-apiserver $(kubectl version -o json | sed -nE 's/.*"gitVersion": "([^"]+)".*/\1/p' | tail -1), kwok nodes"
kubectl get nodes

bold "Install the GuardedRelease CRD and start the operator"
kubectl apply --server-side --force-conflicts -f "$ROOT/crds/guardedrelease.yaml" >/dev/null
kubectl wait --for=condition=Established crd/guardedreleases.permafrost.dev >/dev/null
kubectl delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
kubectl create namespace "$NS" >/dev/null
LOG=$(mktemp -t permafrost-demo.XXXXXX.log)
"$PY" -m permafrost run -n "$NS" >"$LOG" 2>&1 &
OPERATOR=$!
trap 'kill $OPERATOR 2>/dev/null || true' EXIT
echo "operator pid $OPERATOR, log $LOG"

bold "1. First release (examples/checkout.yaml, faster timings for the demo)"
sed -e 's/minReadySeconds: 5/minReadySeconds: 2/' -e 's/scaleDownDelaySeconds: 30/scaleDownDelaySeconds: 3/' \
    -e 's/progressDeadlineSeconds: 60/progressDeadlineSeconds: 10/' "$ROOT/examples/checkout.yaml" \
  | kubectl -n "$NS" apply -f -
wait_for "the first release" is_phase Stable
show
FIRST=$(stable)
echo "Service checkout selects revision: $(selector)"

bold "2. Upgrade: a new image digest makes a new revision"
kubectl -n "$NS" patch grel checkout --type json -p '[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"registry.example/shop/checkout:1.5.0@sha256:4e2d5f3b0c9e8d7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f"}]'
wait_for "the upgrade" stable_changed "$FIRST"
SECOND=$(stable)
show
echo "Service checkout selects revision: $(selector) (was $FIRST)"

bold "3. A bad upgrade: its pods never become Ready"
kubectl -n "$NS" patch grel checkout --type merge -p '{"spec":{"template":{"metadata":{"annotations":{"sim.permafrost.dev/behavior":"never-ready"}}}}}'
wait_for "the automatic rollback" is_phase RolledBack
show
echo "Service checkout still selects revision: $(selector) (stable: $SECOND)"
kubectl -n "$NS" get grel checkout -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'

bold "4. Fix forward with a config change: the ConfigMap is snapshotted per revision"
kubectl -n "$NS" patch grel checkout --type json -p '[{"op":"remove","path":"/spec/template/metadata/annotations"}]'
kubectl -n "$NS" patch configmap checkout-config -p '{"data":{"PAYMENT_MODE":"live"}}'
wait_for "the config rollout" stable_changed "$SECOND"
show
kubectl -n "$NS" get configmaps -l permafrost.dev/release=checkout -L permafrost.dev/revision

bold "Events"
kubectl -n "$NS" get events --field-selector involvedObject.kind=GuardedRelease --sort-by=.lastTimestamp \
  -o custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message | cut -c1-160
bold "Done. The cluster keeps running: export KUBECONFIG=$ROOT/.cluster/kubeconfig; make cluster-down stops it."
