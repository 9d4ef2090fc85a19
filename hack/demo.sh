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

bold "Install the CRDs and the built-in policies, start the operator with its admission guardrails"
kubectl apply --server-side --force-conflicts -f "$ROOT/crds/guardedrelease.yaml" -f "$ROOT/crds/guardrailpolicy.yaml" >/dev/null
kubectl wait --for=condition=Established crd/guardedreleases.permafrost.dev crd/guardrailpolicies.permafrost.dev >/dev/null
kubectl delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
kubectl create namespace "$NS" >/dev/null
kubectl label namespace "$NS" permafrost.dev/enforce=true >/dev/null
kubectl get namespace permafrost-system >/dev/null 2>&1 || kubectl create namespace permafrost-system >/dev/null
LOG=$(mktemp -t permafrost-demo.XXXXXX.log)
"$PY" -m permafrost run -n "$NS" --admission --operator-namespace permafrost-system \
  --webhook-listen 127.0.0.1:9443 --webhook-url https://127.0.0.1:9443 >"$LOG" 2>&1 &
OPERATOR=$!
# NB: when the demo's operator stops, its webhook configuration goes too (its policies webhook
# fails closed, and would block GuardrailPolicy changes); the VAP fail-safe stays.
trap 'kill $OPERATOR 2>/dev/null || true; kubectl delete validatingwebhookconfiguration permafrost-frozen-workloads --ignore-not-found >/dev/null 2>&1 || true' EXIT
echo "operator pid $OPERATOR, log $LOG"
kubectl apply -f "$ROOT/deploy/policies/" >/dev/null
kubectl get guardrailpolicies
webhook_ready() {
  ! kubectl -n "$NS" create deployment probe --image=unpinned:1 --dry-run=server -o name >/dev/null 2>&1
}
wait_for "the admission webhook" webhook_ready

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

bold "2b. An in-place change of the running revision is denied"
kubectl -n "$NS" set image "deployment/checkout-$SECOND" web=registry.example/shop/checkout@sha256:$(printf 'f%.0s' {1..64}) 2>&1 | sed 's/^/    /' || true

bold "2c. An image not pinned by digest is denied (CRD validation and policy)"
kubectl -n "$NS" patch grel checkout --type json -p '[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"registry.example/shop/checkout:latest"}]' 2>&1 | sed 's/^/    /' || true

bold "2d. The same policies offline, as CI runs them"
"$PY" -m permafrost check --stage create "$ROOT/examples/checkout.yaml" | sed 's/^/    /'

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
echo "The built-in GuardrailPolicies stay installed (kubectl get grp); the operator has stopped,"
echo "its fail-safe policy keeps the revisions frozen. Run it again: .venv/bin/permafrost run -n $NS"
echo "Try: kubectl -n $NS get grel,deploy,svc; kubectl -n $NS describe grel checkout;"
echo "     kubectl -n $NS set image deploy/checkout-$(stable) web=x@sha256:$(printf '0%.0s' {1..64})   # denied"
