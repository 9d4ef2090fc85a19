#!/usr/bin/env bash
# The real worker node of the local cluster, and the network namespace that holds its addresses.
#
#   hack/node.sh check       exit 0 if this machine can run it; else print why, in one line, exit 1
#   hack/node.sh deps        install the Debian packages it needs (runc, CNI plugins, nftables...)
#   hack/node.sh netns-up    create the network namespace (idempotent)
#   hack/node.sh up          start the registry, containerd, kubelet and kube-proxy, wait until the
#                            node is Ready (the control plane must already run in the namespace)
#   hack/node.sh stop        stop the node's processes, keep the namespace
#   hack/node.sh down        stop all of it, delete the namespace, leave the host as it was
#   hack/node.sh exec CMD... run CMD inside the network namespace
#   hack/node.sh status      exit 0 if the node is up and Ready
#
# PERMAFROST_KUBELET_ARGS adds flags to the kubelet's command line. Logs: .cluster/logs/node/.
#
# The network namespace ($PERMAFROST_NETNS, default "permafrost") holds every address the node
# uses: the node IP (also the apiserver's advertised address) on its loopback, the pod bridge
# cni0 with the pod CIDR, the Service CIDR of kube-proxy's rules, and the registry on its
# 127.0.0.1. Pods reach nothing beyond it: a forward rule drops whatever leaves the pod bridge
# for another interface, and the namespace has no route out. Nothing on the host's interfaces,
# routes, sysctls or firewall changes.
#
# containerd and the kubelet run in a private mount namespace inside it, where /run, /var/lib and
# /var/log are bind mounts of directories under the state directory, and the kernel tunables the
# kubelet insists on (vm.overcommit_memory, kernel.panic...) are regular files holding the values
# it expects: so the kubelet never rewrites the host's, and every path either creates
# (/var/lib/kubelet, /run/containerd, /var/log/pods...) lives under the state directory.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=hack/versions.env
. "$ROOT/hack/versions.env"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/permafrost"
K8S_BIN="$CACHE_ROOT/kubernetes-${K8S_VERSION}/bin"
CONTAINERD_BIN="$CACHE_ROOT/containerd-${CONTAINERD_VERSION}/bin"
REGISTRY_BIN="$CACHE_ROOT/registry-${REGISTRY_VERSION}/bin"
CRANE_BIN="$CACHE_ROOT/crane-${CRANE_VERSION}/bin"

CLUSTER_DIR="${PERMAFROST_CLUSTER_DIR:-$ROOT/.cluster}"
NETNS="${PERMAFROST_NETNS:-permafrost}"
NETNS_PATH="/run/netns/$NETNS"
# The namespace belongs to the cluster directory that created it: only that one deletes it.
OWNER="$CLUSTER_DIR/netns"
STATE="$CLUSTER_DIR/node"
# NB: beside the state, not in it: kept after the node stops, for the reason it stopped.
LOGS="$CLUSTER_DIR/logs/node"
KUBECONFIG="${KUBECONFIG:-$CLUSTER_DIR/kubeconfig}"
export KUBECONFIG PATH="$K8S_BIN:$CONTAINERD_BIN:$CRANE_BIN:/usr/sbin:/sbin:$PATH"

# The addresses, all inside the namespace.
NODE_NAME=permafrost-node
# shellcheck source=hack/node.env
. "$ROOT/hack/node.env"
REGISTRY=127.0.0.1:5000
PAUSE_IMAGE="$REGISTRY/pause:3.10"
NODE_LABEL=permafrost.dev/real-node
# The node's cgroups, one tree per cgroup v1 hierarchy (or one in cgroup v2): its own, so two
# nodes never share one and teardown removes exactly what it made.
CGROUP_ROOT="/permafrost-node.$NETNS"
# The Debian packages the node needs, and a command each provides.
PACKAGES=(runc:runc containernetworking-plugins:/usr/lib/cni/bridge nftables:nft iptables:iptables conntrack:conntrack)
# What the kubelet checks and would otherwise rewrite on the host (pkg/kubelet/cm: setupKernelTunables).
TUNABLES=(vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1
          kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000)
# The host paths the node's processes would create whatever their configuration says: hidden
# behind bind mounts in its mount namespace, so never created on the host.
PRIVATE_DIRS=(/run /var/lib /var/log)

log() { printf '[node %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[node] ERROR: %s\n' "$*" >&2; exit 1; }

in_netns() { nsenter --net="$NETNS_PATH" -- "$@"; }

# why_not: the one reason this machine cannot run the node, or nothing.
why_not() {
  [ "$(id -u)" = 0 ] || { echo "the real node needs root (network and mount namespaces, cgroups)"; return; }
  local c
  for c in ip nsenter unshare mount setsid; do
    command -v "$c" >/dev/null 2>&1 || { echo "the real node needs '$c' (util-linux, iproute2)"; return; }
  done
  [ -d /sys/fs/cgroup ] || { echo "the real node needs cgroups mounted at /sys/fs/cgroup"; return; }
  grep -qw overlay /proc/filesystems || { echo "the real node needs the overlay filesystem (containerd's overlayfs snapshotter)"; return; }
  if [ ! -e "$NETNS_PATH" ]; then
    local probe="permafrost-probe-$$" had_run_netns=""
    [ -d /run/netns ] && had_run_netns=1
    if ! ip netns add "$probe" 2>/dev/null; then
      echo "network namespaces cannot be created here (ip netns add failed)"; return
    fi
    ip netns del "$probe" 2>/dev/null || true
    [ -n "$had_run_netns" ] || remove_run_netns_if_ours probe
  fi
  case "$ROOT/" in
    /run/*|/var/lib/*|/var/log/*) echo "the repository is under ${ROOT%/*}: the node hides /run, /var/lib and /var/log in its mount namespace"; return ;;
  esac
}

check() {
  local reason; reason=$(why_not)
  if [ -n "$reason" ]; then echo "$reason"; return 1; fi
}

missing_packages() {
  local p
  for p in "${PACKAGES[@]}"; do
    command -v "${p#*:}" >/dev/null 2>&1 || [ -x "${p#*:}" ] || echo "${p%%:*}"
  done
}

deps() {
  local missing; missing=$(missing_packages)
  [ -z "$missing" ] && { log "Debian packages present: ${PACKAGES[*]%%:*}"; return; }
  command -v apt-get >/dev/null 2>&1 || die "missing packages ($missing) and no apt-get to install them"
  log "installing: $(echo $missing)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >"$LOGS_TMP" 2>&1 || die "apt-get update failed; see $LOGS_TMP"
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >>"$LOGS_TMP" 2>&1 || die "apt-get install failed; see $LOGS_TMP"
  missing=$(missing_packages)
  [ -z "$missing" ] || die "still missing after apt-get install: $missing"
}
LOGS_TMP="${TMPDIR:-/tmp}/permafrost-node-apt.log"

# /run/netns is created (and bind-mounted onto itself) by the first "ip netns add" on a host:
# a host path of ours, removed again when no namespace is left in it.
remove_run_netns_if_ours() {
  [ -f "$CLUSTER_DIR/.run-netns-ours" ] || [ -n "${1:-}" ] || return 0
  if [ -d /run/netns ] && [ -z "$(ls -A /run/netns 2>/dev/null)" ]; then
    while mountpoint -q /run/netns; do umount /run/netns || break; done
    rmdir /run/netns 2>/dev/null || true
  fi
  rm -f "$CLUSTER_DIR/.run-netns-ours"
}

netns_up() {
  [ -e "$NETNS_PATH" ] && return 0
  mkdir -p "$CLUSTER_DIR"
  if [ ! -d /run/netns ]; then touch "$CLUSTER_DIR/.run-netns-ours"; fi
  ip netns add "$NETNS" || die "ip netns add $NETNS failed"
  echo "$NETNS" >"$OWNER"
  ip -n "$NETNS" link set lo up
  # NB: the node IP is on the namespace's loopback: a /32 reachable from pods through the pod
  # bridge (it is a local address), with no link and no route that leads anywhere else.
  ip -n "$NETNS" addr add "$NODE_IP/32" dev lo
  # NB: a route for the Service CIDR, so the namespace's own processes (tests, load generators)
  # reach ClusterIPs: kube-proxy rewrites the destination only after a route was found.
  ip -n "$NETNS" route add "$SERVICE_CIDR" dev lo
  in_netns sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward'
  # NB: per network namespace since Linux 5.3: bridged pod traffic passes kube-proxy's rules.
  if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
    in_netns sh -c 'echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables' 2>/dev/null || true
  fi
  log "network namespace $NETNS: node IP $NODE_IP, pods $POD_CIDR, Services $SERVICE_CIDR"
}

# The guard: pods reach the namespace's own addresses and each other, nothing else.
guard_rules() {
  in_netns nft delete table inet permafrost_guard 2>/dev/null || true
  in_netns nft -f - <<NFT
table inet permafrost_guard {
  chain forward {
    type filter hook forward priority -10; policy accept;
    iifname "cni0" oifname != "cni0" drop
  }
}
NFT
}

write_configs() {
  mkdir -p "$STATE"/{etc/cni,etc/certs.d/$REGISTRY,sys/vm,sys/kernel/keys,root/run,root/var/lib,root/var/log,registry,pids} "$LOGS"
  local pki="$1" t
  for t in "${TUNABLES[@]}"; do printf '%s\n' "${t#*=}" >"$STATE/sys/${t%%=*}"; done
  cat >"$STATE/etc/registry.yaml" <<YAML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $STATE/registry}, delete: {enabled: true}}
http: {addr: $REGISTRY}
YAML
  printf 'nameserver 127.0.0.1\n' >"$STATE/etc/resolv.conf"

  cat >"$STATE/etc/containerd.toml" <<TOML
version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$PAUSE_IMAGE"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "$STATE/etc/certs.d"
[plugins.'io.containerd.cri.v1.runtime']
  # NB: CAP_SYS_RESOURCE may be missing from the bounding set (containers in containers):
  # nothing could lower an OOM score, and runc would fail every sandbox.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "$(command -v runc)"
      SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$STATE/etc/cni"
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
TOML
  cat >"$STATE/etc/certs.d/$REGISTRY/hosts.toml" <<TOML
server = "http://$REGISTRY"
[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
TOML
  cat >"$STATE/etc/cni/10-permafrost.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "permafrost",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}],
              "dataDir": "/var/lib/cni/networks"}},
    {"type": "loopback"}
  ]
}
JSON
  cat >"$STATE/etc/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 hosts: the kubelet refuses them unless told (failCgroupV1), with cgroupfs.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
resolvConf: $STATE/etc/resolv.conf
failSwapOn: false
protectKernelDefaults: false
serializeImagePulls: false
# NB: how often the kubelet syncs each pod, and so refreshes its mounted Secrets and ConfigMaps
# (1m by default, plus up to half of it in jitter): shorter on this one-node cluster, so that a
# rotated certificate reaches its pods in seconds, not a minute and a half.
syncFrequency: 10s
maxPods: 60
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
registerWithTaints:
- {key: $NODE_LABEL, value: "true", effect: NoSchedule}
YAML
  cat >"$STATE/etc/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection: {kubeconfig: $KUBECONFIG}
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
clusterCIDR: $POD_CIDR
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
# NB: every return path through the gateway, so pods reaching a Service that picks a pod on the
# same bridge get their answers un-NATed.
masqueradeAll: true
# NB: 0 = leave the kernel's conntrack settings alone: they are the host's, not the namespace's.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
}

# The process that holds the node's mount namespace: bind mounts, then containerd and the kubelet.
inner() {
  local t
  for t in "${TUNABLES[@]}"; do mount --bind "$STATE/sys/${t%%=*}" "/proc/sys/${t%%=*}"; done
  local d
  for d in "${PRIVATE_DIRS[@]}"; do mount --bind "$STATE/root$d" "$d"; done
  mkdir -p /run/containerd
  containerd --config "$STATE/etc/containerd.toml" >>"$LOGS/containerd.log" 2>&1 &
  echo $! >"$STATE/pids/containerd"
  local i
  for i in $(seq 1 100); do [ -S /run/containerd/containerd.sock ] && break; sleep 0.1; done
  [ -S /run/containerd/containerd.sock ] || { echo "containerd did not start" >>"$LOGS/containerd.log"; exit 1; }
  # shellcheck disable=SC2086
  kubelet --config "$STATE/etc/kubelet.yaml" --kubeconfig "$KUBECONFIG" --node-ip "$NODE_IP" \
    --hostname-override "$NODE_NAME" --node-labels "$NODE_LABEL=true" --v=2 ${PERMAFROST_KUBELET_ARGS:-} \
    >>"$LOGS/kubelet.log" 2>&1 &
  echo $! >"$STATE/pids/kubelet"
  wait
}

# ancestors: this process and its parents, up to init.
ancestors() {
  local pid=$$
  while [ "$pid" -gt 1 ] 2>/dev/null; do
    echo "$pid"
    # NB: the command name, in parentheses, may hold spaces: the parent's PID follows its ")".
    pid=$(sed -E 's/.*\) [A-Za-z] ([0-9]+) .*/\1/' "/proc/$pid/stat" 2>/dev/null) || break
  done
}

running() { local f="$STATE/pids/$1"; [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }

node_ready() {
  kubectl get node "$NODE_NAME" --request-timeout=5s \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True
}

status() { running kubelet && running containerd && running kube-proxy && running registry && node_ready; }

# fail_up WHAT LOG: one line saying what failed and where its log is; the node's processes and
# cgroups are gone again (hack/cluster.sh then stops the rest and deletes the namespace).
fail_up() {
  printf '[node] ERROR: %s; see %s\n' "$1" "$2" >&2
  cleanup_processes >/dev/null 2>&1 || true
  cleanup_host >/dev/null 2>&1 || true
  exit 1
}

up() {
  [ -e "$NETNS_PATH" ] || die "no network namespace $NETNS: hack/cluster.sh up REAL_NODE=1 creates it"
  [ "$(ip netns identify $$ 2>/dev/null)" = "$NETNS" ] || die "hack/node.sh up runs inside the namespace (hack/node.sh exec hack/node.sh up)"
  local b
  for b in "$K8S_BIN/kubelet" "$K8S_BIN/kube-proxy" "$CONTAINERD_BIN/containerd" "$CONTAINERD_BIN/containerd-shim-runc-v2" \
           "$REGISTRY_BIN/registry" "$CRANE_BIN/crane"; do
    [ -x "$b" ] || die "missing $b: run hack/build-binaries.sh node (make binaries REAL_NODE=1) first"
  done
  local missing; missing=$(missing_packages)
  [ -z "$missing" ] || die "missing Debian packages: $(echo $missing) (hack/node.sh deps installs them)"
  if status; then log "reusing the running node $NODE_NAME"; return; fi
  # NB: one node per namespace: its cgroups, ports and registry are the namespace's.
  local pid cmd
  for pid in $(ip netns pids "$NETNS" 2>/dev/null); do
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
    case "$cmd" in
      *"kubelet --config $STATE/"*) ;;
      *"kubelet --config "*) die "the network namespace $NETNS already runs the node of another cluster ($cmd); set PERMAFROST_NETNS, or REAL_NODE=0" ;;
    esac
  done
  [ -s "$KUBECONFIG" ] || die "no kubeconfig at $KUBECONFIG: the control plane must be up first"
  local pki; pki=$(kubeconfig_pki)
  cleanup_processes
  cleanup_host
  rm -rf "$STATE" "$LOGS"
  local start=$SECONDS
  write_configs "$pki"
  make_cgroups
  guard_rules

  log "registry $REGISTRY_VERSION on $REGISTRY (inside $NETNS)"
  OTEL_TRACES_EXPORTER=none setsid "$REGISTRY_BIN/registry" serve "$STATE/etc/registry.yaml" \
    </dev/null >>"$LOGS/registry.log" 2>&1 &
  echo $! >"$STATE/pids/registry"
  local i
  for i in $(seq 1 100); do curl -fsS -o /dev/null --max-time 1 "http://$REGISTRY/v2/" 2>/dev/null && break; sleep 0.1; done
  curl -fsS -o /dev/null --max-time 2 "http://$REGISTRY/v2/" || fail_up "the registry does not answer at http://$REGISTRY/v2/" "$LOGS/registry.log"

  log "pod sandbox image $PAUSE_IMAGE (hack/pause)"
  CRANE="$CRANE_BIN/crane" "$ROOT/hack/image.sh" build "$ROOT/hack/pause" "$PAUSE_IMAGE" >"$STATE/pause-image" 2>>"$LOGS/images.log" \
    || fail_up "the pause image did not build or push" "$LOGS/images.log"

  log "containerd $CONTAINERD_VERSION and kubelet $K8S_VERSION in a private mount namespace"
  setsid unshare --mount --propagation private -- "$0" _inner </dev/null >>"$LOGS/node.log" 2>&1 &
  echo $! >"$STATE/pids/inner"
  setsid kube-proxy --config "$STATE/etc/kube-proxy.yaml" --v=2 </dev/null >>"$LOGS/kube-proxy.log" 2>&1 &
  echo $! >"$STATE/pids/kube-proxy"
  for i in $(seq 1 100); do [ -s "$STATE/pids/kubelet" ] && break; running inner || break; sleep 0.1; done
  running inner || fail_up "containerd or the kubelet did not start" "$LOGS/node.log (and containerd.log)"

  log "waiting for node $NODE_NAME to be Ready"
  for i in $(seq 1 240); do
    node_ready && break
    running kubelet || fail_up "the kubelet exited" "$LOGS/kubelet.log"
    running containerd || fail_up "containerd exited" "$LOGS/containerd.log"
    running kube-proxy || fail_up "kube-proxy exited" "$LOGS/kube-proxy.log"
    sleep 0.25
  done
  node_ready || fail_up "node $NODE_NAME did not become Ready within 60 s" "$LOGS/kubelet.log"
  log "node $NODE_NAME Ready in $((SECONDS - start))s (taint $NODE_LABEL=true:NoSchedule; logs in $LOGS)"
}

# The CA and the client certificate kwokctl made for the cluster, from its kubeconfig.
kubeconfig_pki() {
  local cert; cert=$(kubectl config view -o jsonpath='{.users[0].user.client-certificate}')
  [ -n "$cert" ] && [ -f "$cert" ] || die "the kubeconfig $KUBECONFIG names no client certificate file"
  dirname "$cert"
}

# shims: the containerd shims of the node (they leave containerd's process tree, not the namespace).
shims() {
  [ -e "$NETNS_PATH" ] || return 0
  local pid
  for pid in $(ip netns pids "$NETNS" 2>/dev/null); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = containerd-shim ] && echo "$pid"
  done
  return 0
}

# cgroup_dirs: the node's cgroup directories, one per hierarchy (cgroup v2: the one). With
# cgroup v1, the hybrid layout's unified hierarchy too: runc makes the node's tree there as well.
cgroup_dirs() {
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then echo "/sys/fs/cgroup$CGROUP_ROOT"; return; fi
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -f "$h/cgroup.procs" ] && echo "${h%/}$CGROUP_ROOT"
  done
}

make_cgroups() {
  local d
  for d in $(cgroup_dirs); do
    case "$d" in /sys/fs/cgroup/unified/*) continue ;; esac
    mkdir -p "$d"
    # NB: a new cpuset cgroup has no CPUs and no memory nodes until given its parent's.
    if [ -f "$d/cpuset.cpus" ] && [ -z "$(cat "$d/cpuset.cpus")" ]; then
      cat "$(dirname "$d")/cpuset.cpus" >"$d/cpuset.cpus"
      cat "$(dirname "$d")/cpuset.mems" >"$d/cpuset.mems"
    fi
  done
}

# pids_of_cgroups: every process in the node's cgroups (the containers).
pids_of_cgroups() {
  local d
  for d in $(cgroup_dirs); do
    [ -d "$d" ] && find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
  done
  return 0
}

cleanup_processes() {
  local name pid
  # NB: only a node this cluster directory started: the namespace may hold another's.
  [ -d "$STATE" ] || [ "${1:-}" = all ] || return 0
  # NB: the kubelet first, so it restarts nothing; then the containers and their shims.
  for name in kubelet kube-proxy; do
    [ -s "$STATE/pids/$name" ] && kill -9 "$(cat "$STATE/pids/$name")" 2>/dev/null || true
  done
  local pids
  for _ in 1 2 3 4 5; do
    pids=$( { pids_of_cgroups; shims; } | sort -u)
    [ -z "$pids" ] && break
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    sleep 0.2
  done
  for name in containerd registry inner; do
    [ -s "$STATE/pids/$name" ] && kill -9 "$(cat "$STATE/pids/$name")" 2>/dev/null || true
  done
  # Whatever else still runs in the namespace (the control plane is stopped before: cluster.sh),
  # but this script and what called it, which may run in it too (the tests do).
  if [ -e "$NETNS_PATH" ] && [ "${1:-}" = all ]; then
    local mine; mine=" $(ancestors | tr '\n' ' ') "
    for pid in $(ip netns pids "$NETNS" 2>/dev/null || true); do
      case "$mine" in *" $pid "*) ;; *) kill -9 "$pid" 2>/dev/null || true ;; esac
    done
  fi
  sleep 0.2
}

# The node's cgroups, deepest first (only if this cluster directory started the node).
cleanup_host() {
  [ -d "$STATE" ] || [ "$(cat "$OWNER" 2>/dev/null)" = "$NETNS" ] || return 0
  local d root
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    local left=0
    for root in $(cgroup_dirs); do
      [ -d "$root" ] || continue
      # NB: -depth lists a directory after its children, which must go first.
      for d in $(find "$root" -depth -type d 2>/dev/null); do rmdir "$d" 2>/dev/null || left=1; done
    done
    [ "$left" = 0 ] && return 0
    sleep 0.3
  done
  log "warning: cgroups left under $(cgroup_dirs | head -n 1) and its siblings"
}

down() {
  if [ "$(cat "$OWNER" 2>/dev/null)" = "$NETNS" ]; then
    cleanup_processes all
    cleanup_host
    if [ -e "$NETNS_PATH" ]; then ip netns del "$NETNS" || log "warning: ip netns del $NETNS failed"; fi
    rm -f "$OWNER"
  else
    cleanup_processes
    cleanup_host
  fi
  remove_run_netns_if_ours
  # NB: container layers and volumes were mounted in the node's mount namespace only, gone with it.
  rm -rf "$STATE"
  log "node down"
}

case "${1:-}" in
  check) check ;;
  deps) deps ;;
  netns-up) netns_up ;;
  up) up ;;
  _inner) inner ;;
  down) down ;;
  stop) cleanup_processes; cleanup_host; rm -rf "$STATE" ;;
  status) status ;;
  exec) shift; [ $# -gt 0 ] || die "usage: $0 exec CMD..."; [ -e "$NETNS_PATH" ] || die "no network namespace $NETNS"; exec nsenter --net="$NETNS_PATH" -- "$@" ;;
  *) echo "usage: $0 check|deps|netns-up|up|stop|down|exec CMD...|status" >&2; exit 2 ;;
esac
