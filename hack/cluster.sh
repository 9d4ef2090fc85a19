#!/usr/bin/env bash
# The local control plane: etcd + kube-apiserver + kube-controller-manager + kube-scheduler, with
# kwok faking nodes and pod lifecycles (hack/kwok/stages.yaml), all run as local processes by
# kwokctl's binary runtime from the binaries hack/build-binaries.sh builds.
#
#   hack/cluster.sh up       start it (or reuse a healthy one); kubeconfig in .cluster/kubeconfig
#   hack/cluster.sh down     stop it and delete its state
#   hack/cluster.sh status   exit 0 if it answers and has Ready nodes
#   hack/cluster.sh env      print the PATH/KUBECONFIG exports for a shell
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=hack/versions.env
. "$ROOT/hack/versions.env"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/permafrost"
K8S_BIN="$CACHE_ROOT/kubernetes-${K8S_VERSION}/bin"
ETCD_BIN="$CACHE_ROOT/etcd-${ETCD_VERSION}/bin"
KWOK_BIN="$CACHE_ROOT/kwok-${KWOK_VERSION}/bin"

CLUSTER_DIR="${PERMAFROST_CLUSTER_DIR:-$ROOT/.cluster}"
CLUSTER_NAME="${PERMAFROST_CLUSTER_NAME:-permafrost}"
NODES="${PERMAFROST_NODES:-3}"
export KUBECONFIG="$CLUSTER_DIR/kubeconfig"
export KWOK_WORKDIR="$CLUSTER_DIR/kwok"
export KWOK_KUBE_VERSION="$K8S_VERSION"
export KWOK_KUBECTL_BINARY="$K8S_BIN/kubectl"
export PATH="$K8S_BIN:$KWOK_BIN:$PATH"

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }

healthy() {
  [ -s "$KUBECONFIG" ] || return 1
  kubectl get --raw /readyz --request-timeout=3s >/dev/null 2>&1 || return 1
  local ready
  ready=$(kubectl get nodes -l permafrost.dev/fake-node=true --request-timeout=5s \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c True || true)
  [ "${ready:-0}" -ge 1 ]
}

nodes_manifest() {
  for i in $(seq 1 "$NODES"); do
    cat <<YAML
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
    permafrost.dev/fake-node: "true"
spec: {}
YAML
  done
}

up() {
  for b in "$K8S_BIN/kube-apiserver" "$K8S_BIN/kube-controller-manager" "$K8S_BIN/kube-scheduler" \
           "$K8S_BIN/kubectl" "$ETCD_BIN/etcd" "$KWOK_BIN/kwok" "$KWOK_BIN/kwokctl"; do
    [ -x "$b" ] || die "missing $b: run hack/build-binaries.sh (make binaries) first"
  done
  if healthy; then log "reusing the healthy cluster ($KUBECONFIG)"; return; fi
  if [ -d "$KWOK_WORKDIR/clusters/$CLUSTER_NAME" ]; then
    log "found a stopped or broken cluster: deleting it"
    kwokctl delete cluster --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG" >/dev/null 2>&1 || true
    rm -rf "$KWOK_WORKDIR/clusters/$CLUSTER_NAME"
  fi
  mkdir -p "$CLUSTER_DIR"
  rm -f "$KUBECONFIG"
  log "creating cluster '$CLUSTER_NAME' (kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION)"
  kwokctl create cluster --name "$CLUSTER_NAME" --runtime binary \
    --kube-apiserver-binary "$K8S_BIN/kube-apiserver" \
    --kube-controller-manager-binary "$K8S_BIN/kube-controller-manager" \
    --kube-scheduler-binary "$K8S_BIN/kube-scheduler" \
    --etcd-binary "$ETCD_BIN/etcd" \
    --kwok-controller-binary "$KWOK_BIN/kwok" \
    --config "$ROOT/hack/kwok/stages.yaml" \
    --kubeconfig "$KUBECONFIG" \
    --wait 120s >&2
  log "adding $NODES fake nodes"
  nodes_manifest | kubectl apply -f - >/dev/null
  kubectl wait --for=condition=Ready node -l permafrost.dev/fake-node=true --timeout=60s >/dev/null \
    || die "fake nodes did not become Ready; see $KWOK_WORKDIR/clusters/$CLUSTER_NAME/logs"
  # NB: the namespace's default ServiceAccount must exist before pods can be created in it.
  kubectl get serviceaccount default -n default >/dev/null 2>&1 \
    || log "warning: no default ServiceAccount yet (kube-controller-manager may still be starting)"
  log "ready: KUBECONFIG=$KUBECONFIG ($(kubectl version -o json | sed -nE 's/.*"gitVersion": "([^"]+)".*/\1/p' | tail -1))"
}

down() {
  if [ -d "$KWOK_WORKDIR/clusters/$CLUSTER_NAME" ]; then
    kwokctl delete cluster --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG" >&2 || true
  fi
  rm -rf "$KWOK_WORKDIR/clusters/$CLUSTER_NAME" "$KUBECONFIG"
  log "cluster '$CLUSTER_NAME' is down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) healthy ;;
  logs-dir) echo "$KWOK_WORKDIR/clusters/$CLUSTER_NAME/logs" ;;
  env)
    echo "export KUBECONFIG=$KUBECONFIG"
    echo "export PATH=$K8S_BIN:$KWOK_BIN:\$PATH" ;;
  *) echo "usage: $0 up|down|status|logs-dir|env" >&2; exit 2 ;;
esac
