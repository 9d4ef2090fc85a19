#!/usr/bin/env bash
# The local cluster: etcd + kube-apiserver + kube-controller-manager + kube-scheduler, with kwok
# faking nodes and pod lifecycles (hack/kwok/stages.yaml), all run as local processes by kwokctl's
# binary runtime from the binaries hack/build-binaries.sh builds; and, with REAL_NODE, a real
# worker node beside the fake ones (hack/node.sh: kubelet, containerd, runc, kube-proxy, a registry).
#
#   hack/cluster.sh up         start it (or reuse a healthy one); kubeconfig in .cluster/kubeconfig
#   hack/cluster.sh down       stop it, delete its state (and the real node's network namespace)
#   hack/cluster.sh status     exit 0 if it answers and has Ready nodes (the real node too, if wanted)
#   hack/cluster.sh exec CMD   run CMD where the cluster is reachable: inside the real node's
#                              network namespace when there is one, else here
#   hack/cluster.sh real-node  print "1" if the cluster has (or will have) the real node, else the
#                              reason it has not
#   hack/cluster.sh env        print the PATH/KUBECONFIG exports for a shell
#
# REAL_NODE=auto (the default) starts the real node where the machine can run it (root, network
# namespaces) and says why not elsewhere; REAL_NODE=1 requires it; REAL_NODE=0 never starts it.
# With the real node, the whole cluster (control plane included) lives in the node's network
# namespace, where its addresses are: so do the commands that talk to it (hack/cluster.sh exec,
# make shell).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=hack/versions.env
. "$ROOT/hack/versions.env"
# shellcheck source=hack/node.env
. "$ROOT/hack/node.env"
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

REAL_NODE="${REAL_NODE:-auto}"
NODE_SH="$ROOT/hack/node.sh"
NETNS="${PERMAFROST_NETNS:-permafrost}"
MODE_FILE="$CLUSTER_DIR/mode"

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }

# real_node: "1" if the cluster is to have the real node, else why not (one line).
real_node() {
  case "$REAL_NODE" in
    0|no|false) echo "REAL_NODE=0" ;;
    1|yes|true) "$NODE_SH" check >/dev/null || die "REAL_NODE=1, but $("$NODE_SH" check)"; echo 1 ;;
    auto) local why; if why=$("$NODE_SH" check); then echo 1; else echo "$why"; fi ;;
    *) die "REAL_NODE must be 0, 1 or auto, not '$REAL_NODE'" ;;
  esac
}

in_netns() { [ "$(ip netns identify $$ 2>/dev/null)" = "$NETNS" ]; }

healthy() {
  [ -s "$KUBECONFIG" ] || return 1
  [ "$(cat "$MODE_FILE" 2>/dev/null)" = "$(mode_name)" ] || return 1
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

delete_control_plane() {
  if [ -d "$KWOK_WORKDIR/clusters/$CLUSTER_NAME" ]; then
    kwokctl delete cluster --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG" >/dev/null 2>&1 || true
  fi
  rm -rf "$KWOK_WORKDIR/clusters/$CLUSTER_NAME"
}

# NB: computed once (the check probes network namespaces), by the commands that need it.
MODE=""
mode_name() { echo "$MODE"; }
compute_mode() { if [ "$(real_node)" = 1 ]; then MODE=real-node; else MODE=kwok; fi; }

# kwokctl's configuration: the components' extra arguments and the apiserver certificate's
# names; with the real node, its addresses. NB: in a file, not as --extra-args flags, which
# kwokctl v0.8.0 mixes up (and panics on) when they name more than one component.
kwokctl_config() {
  local args=(
    # NB: kwokctl's binary runtime makes the kwok controller manage *every* node; it must leave
    # the real node to its kubelet.
    kwok-controller=manage-all-nodes=false
    kwok-controller=manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake
    "kube-apiserver=service-cluster-ip-range=$SERVICE_CIDR"
    # NB: each controller acts as its own ServiceAccount (system:serviceaccount:kube-system:
    # replicaset-controller, ...), as kubeadm, kind and managed clusters run it: admission tells
    # the pods a ReplicaSet creates from the ones a user creates by who creates them.
    kube-controller-manager=use-service-account-credentials=true
  )
  if [ "$(mode_name)" = real-node ]; then
    local pki="$KWOK_WORKDIR/clusters/$CLUSTER_NAME/pki"
    args+=(
      "kube-apiserver=advertise-address=$NODE_IP"
      # NB: the node's name does not resolve; logs, exec and port-forward go to its InternalIP.
      kube-apiserver=kubelet-preferred-address-types=InternalIP
      "kube-apiserver=kubelet-client-certificate=$pki/admin.crt"
      "kube-apiserver=kubelet-client-key=$pki/admin.key"
    )
  elif [ -z "$(ip route show default 2>/dev/null)" ]; then
    # NB: without a default route (inside the real node's namespace: a second cluster of the
    # tests), the apiserver cannot pick an address to advertise, and exits.
    args+=(kube-apiserver=advertise-address=127.0.0.1)
  fi
  {
    echo "kind: KwokctlConfiguration"
    echo "apiVersion: config.kwok.x-k8s.io/v1alpha1"
    echo "options:"
    # The names pods use for the apiserver: the kubernetes Service's IP, the advertised address.
    echo "  kubeApiserverCertSANs: [\"$KUBERNETES_SERVICE_IP\", \"$NODE_IP\"]"
    echo "componentsPatches:"
    local component arg
    for component in kwok-controller kube-apiserver kube-controller-manager; do
      echo "- name: $component"
      echo "  extraArgs:"
      for arg in "${args[@]}"; do
        [ "${arg%%=*}" = "$component" ] || continue
        arg=${arg#*=}
        echo "  - {key: \"${arg%%=*}\", value: \"${arg#*=}\"}"
      done
    done
  } >"$CLUSTER_DIR/kwokctl.yaml"
  echo "$CLUSTER_DIR/kwokctl.yaml"
}

up() {
  if [ "$(mode_name)" = real-node ] && ! in_netns; then
    # NB: a fresh namespace for a fresh cluster; the one we run in cannot be replaced from inside.
    if ! { [ -e "/run/netns/$NETNS" ] && nsenter --net="/run/netns/$NETNS" -- "$0" _healthy; }; then
      delete_control_plane; "$NODE_SH" down
    fi
    "$NODE_SH" netns-up
    exec nsenter --net="/run/netns/$NETNS" -- "$0" up
  fi
  for b in "$K8S_BIN/kube-apiserver" "$K8S_BIN/kube-controller-manager" "$K8S_BIN/kube-scheduler" \
           "$K8S_BIN/kubectl" "$ETCD_BIN/etcd" "$KWOK_BIN/kwok" "$KWOK_BIN/kwokctl"; do
    [ -x "$b" ] || die "missing $b: run hack/build-binaries.sh (make binaries) first"
  done
  if healthy; then
    log "reusing the healthy cluster ($KUBECONFIG, $(mode_name))"
    if [ "$(mode_name)" = real-node ]; then "$NODE_SH" up; fi
    return
  fi
  if [ "$(mode_name)" = kwok ] && [ "$REAL_NODE" = auto ]; then
    log "no real node: $(real_node) (its tests will be skipped)"
  fi
  if in_netns; then "$NODE_SH" stop; else "$NODE_SH" down; fi
  if [ -d "$KWOK_WORKDIR/clusters/$CLUSTER_NAME" ]; then
    log "found a stopped or broken cluster: deleting it"
    delete_control_plane
  fi
  mkdir -p "$CLUSTER_DIR"
  rm -f "$KUBECONFIG"
  log "creating cluster '$CLUSTER_NAME' (kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION, $(mode_name))"
  kwokctl create cluster --name "$CLUSTER_NAME" --runtime binary \
    --kube-apiserver-binary "$K8S_BIN/kube-apiserver" \
    --kube-controller-manager-binary "$K8S_BIN/kube-controller-manager" \
    --kube-scheduler-binary "$K8S_BIN/kube-scheduler" \
    --etcd-binary "$ETCD_BIN/etcd" \
    --kwok-controller-binary "$KWOK_BIN/kwok" \
    --config "$ROOT/hack/kwok/stages.yaml" --config "$(kwokctl_config)" \
    --kubeconfig "$KUBECONFIG" \
    --wait 120s >&2
  log "adding $NODES fake nodes"
  nodes_manifest | kubectl apply -f - >/dev/null
  kubectl wait --for=condition=Ready node -l permafrost.dev/fake-node=true --timeout=60s >/dev/null \
    || die "fake nodes did not become Ready; see $KWOK_WORKDIR/clusters/$CLUSTER_NAME/logs"
  # NB: the namespace's default ServiceAccount must exist before pods can be created in it.
  kubectl get serviceaccount default -n default >/dev/null 2>&1 \
    || log "warning: no default ServiceAccount yet (kube-controller-manager may still be starting)"
  if [ "$(mode_name)" = real-node ]; then
    "$NODE_SH" up || { down >/dev/null 2>&1; die "the real node did not start (the line above says why); the cluster is stopped again"; }
  fi
  mode_name >"$MODE_FILE"
  log "ready: KUBECONFIG=$KUBECONFIG ($(kubectl version -o json | sed -nE 's/.*"gitVersion": "([^"]+)".*/\1/p' | tail -1))"
}

down() {
  if [ -d "$KWOK_WORKDIR/clusters/$CLUSTER_NAME" ]; then
    kwokctl delete cluster --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG" >&2 || true
  fi
  "$NODE_SH" down
  rm -rf "$KWOK_WORKDIR/clusters/$CLUSTER_NAME" "$KUBECONFIG" "$MODE_FILE"
  log "cluster '$CLUSTER_NAME' is down"
}

case "${1:-}" in
  up|status|exec|_healthy) compute_mode ;;
esac
case "${1:-}" in
  up) up ;;
  _healthy) healthy ;;
  down) down ;;
  status)
    if [ "$(mode_name)" = real-node ] && ! in_netns; then
      [ -e "/run/netns/$NETNS" ] && exec nsenter --net="/run/netns/$NETNS" -- "$0" status
      exit 1
    fi
    healthy && { [ "$(mode_name)" = kwok ] || "$NODE_SH" status; } ;;
  real-node) real_node ;;
  exec)
    shift; [ $# -gt 0 ] || die "usage: $0 exec CMD..."
    if [ "$(mode_name)" = real-node ] && ! in_netns; then
      "$NODE_SH" netns-up
      exec nsenter --net="/run/netns/$NETNS" -- "$@"
    fi
    exec "$@" ;;
  logs-dir) echo "$KWOK_WORKDIR/clusters/$CLUSTER_NAME/logs" ;;
  env)
    echo "export KUBECONFIG=$KUBECONFIG"
    echo "export PATH=$K8S_BIN:$KWOK_BIN:\$PATH" ;;
  *) echo "usage: $0 up|down|status|exec CMD...|real-node|logs-dir|env" >&2; exit 2 ;;
esac
