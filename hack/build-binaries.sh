#!/usr/bin/env bash
# Builds the local cluster's binaries from Go modules, with pinned versions (hack/versions.env):
#
#   hack/build-binaries.sh          the control plane:
#     kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes)
#     etcd                                                              (go.etcd.io/etcd/server/v3)
#     kwok, kwokctl                                                     (sigs.k8s.io/kwok)
#   hack/build-binaries.sh node     the real worker node and its registry, as well:
#     kubelet, kube-proxy                                               (k8s.io/kubernetes)
#     containerd, ctr, containerd-shim-runc-v2                          (github.com/containerd/containerd/v2)
#     registry                                                          (github.com/distribution/distribution/v3)
#     crane                                                             (github.com/google/go-containerregistry)
#     cosign                                                            (github.com/sigstore/cosign/v2)
#   hack/build-binaries.sh argocd   Argo CD for the GitOps end-to-end tests, as well:
#     argocd (-application-controller, -repo-server) + its CRDs         (github.com/argoproj/argo-cd/v3)
#     kustomize                                                         (sigs.k8s.io/kustomize/kustomize/v5)
#     and redis-server from Debian (apt-get, where it can)
#   hack/build-binaries.sh prometheus  Prometheus for the tests of metric gates, as well:
#     prometheus (Kubernetes service discovery only; no web UI assets)  (github.com/prometheus/prometheus)
#   (node, argocd and prometheus combine: hack/build-binaries.sh node argocd prometheus)
#   hack/build-binaries.sh buildkit the image builder of `make image`, only:
#     buildkitd, buildctl                                               (github.com/moby/buildkit)
#
# into ${XDG_CACHE_HOME:-$HOME/.cache}/permafrost/<component>-<version>/bin, outside the repository,
# so fresh clones and CI reuse them. Idempotent: a binary that exists is not built again.
#
# Prints the cache directory of each component on stdout when done (last line: "bin dirs: ...").
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/versions.env
. "$HACK_DIR/versions.env"

CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/permafrost"
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--mod=mod}"

log() { printf '[build-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[build-binaries] ERROR: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "Go is not installed. Install Go >= 1.26 (https://go.dev/doc/install or your distribution's golang package) and retry."
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
[ "${go_minor:-0}" -ge 26 ] || die "Go $(go env GOVERSION) is too old: k8s.io/kubernetes ${K8S_VERSION} needs Go >= 1.26."

check_proxy() {
  # NB: one cheap request tells "no network / no proxy" apart from a real build failure later.
  local probe
  probe=$(mktemp -d)
  if ! (cd "$probe" && timeout 120 go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" >/dev/null 2>"$probe/err"); then
    cat "$probe/err" >&2
    rm -rf "$probe"
    die "cannot fetch k8s.io/kubernetes@${K8S_VERSION} from the Go module proxy ($(go env GOPROXY)). Check network access to the proxy, or set GOPROXY."
  fi
  rm -rf "$probe"
}

have_all() { local dir=$1; shift; for b in "$@"; do [ -x "$dir/$b" ] || return 1; done; }

build_kubernetes() {
  # build_kubernetes BIN...: the named commands of k8s.io/kubernetes (cmd/BIN), those missing only
  local dest="$CACHE_ROOT/kubernetes-${K8S_VERSION}/bin" missing=()
  for b in "$@"; do [ -x "$dest/$b" ] || missing+=("$b"); done
  if [ "${#missing[@]}" -eq 0 ]; then
    log "kubernetes ${K8S_VERSION}: cached in $dest"; return
  fi
  local work; work=$(mktemp -d "${TMPDIR:-/tmp}/permafrost-k8s.XXXXXX")
  log "kubernetes ${K8S_VERSION}: preparing module in $work"
  local gomod; gomod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | sed -nE 's/^\s*"GoMod": "(.*)",?$/\1/p')
  [ -f "$gomod" ] || die "could not read the go.mod of k8s.io/kubernetes@${K8S_VERSION}"
  local staging_version="v0.${K8S_VERSION#v1.}"
  # NB: k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with local
  # paths (./staging/src/...), which do not exist outside its repository. Every such replace is
  # mapped to the published release of that module; the list comes from the served go.mod.
  local staging
  staging=$(sed -nE 's#^\s*(k8s\.io/[A-Za-z0-9._-]+) => \./staging/src/.*$#\1#p' "$gomod")
  [ -n "$staging" ] || die "found no staging replaces in $gomod"
  {
    echo "module permafrost.dev/hack/kubernetes-build"
    echo
    echo "go $(sed -nE 's/^go (.*)$/\1/p' "$gomod")"
    echo
    echo "require k8s.io/kubernetes ${K8S_VERSION}"
    echo
    echo "replace ("
    for m in $staging; do echo "	$m => $m ${staging_version}"; done
    echo ")"
  } >"$work/go.mod"
  log "kubernetes ${K8S_VERSION}: $(echo "$staging" | wc -l) staging modules replaced by ${staging_version}"
  local pkgs="" b; for b in "${missing[@]}"; do pkgs+=" k8s.io/kubernetes/cmd/$b"; done
  # NB: every package is pinned; a bare "go get PKG" would upgrade k8s.io/kubernetes to @latest.
  local pinned=""; for p in $pkgs; do pinned+=" $p@${K8S_VERSION}"; done
  (cd "$work" && log "kubernetes ${K8S_VERSION}: resolving dependencies" && go get $pinned 2>&1 | grep -v '^go: \(downloading\|added\)' >&2 || true)
  grep -q "k8s.io/kubernetes ${K8S_VERSION}\$" "$work/go.mod" || die "dependency resolution did not keep k8s.io/kubernetes ${K8S_VERSION}; see the messages above"
  local major minor; major=$(echo "${K8S_VERSION#v}" | cut -d. -f1); minor=$(echo "${K8S_VERSION#v}" | cut -d. -f2)
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ld=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=${K8S_VERSION} -X $p.gitMajor=${major} -X $p.gitMinor=${minor}"
    ld+=" -X $p.gitTreeState=clean -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.buildDate=${date}"
  done
  mkdir -p "$dest"
  for p in $pkgs; do
    local name=${p##*/}
    log "kubernetes ${K8S_VERSION}: building $name (the first build takes several minutes)"
    # NB: built beside its final name and renamed, so an interrupted build never looks cached.
    (cd "$work" && go build -trimpath -ldflags "-s -w $ld" -o "$dest/.$name.partial" "$p")
    mv "$dest/.$name.partial" "$dest/$name"
  done
  rm -rf "$work"
  log "kubernetes ${K8S_VERSION}: done -> $dest"
}

build_module_tool() {
  # build_module_tool NAME VERSION MODULE PKG:BIN [PKG:BIN...]
  local name=$1 version=$2 module=$3; shift 3
  local dest="$CACHE_ROOT/${name}-${version}/bin" bins=()
  for pb in "$@"; do bins+=("${pb##*:}"); done
  if have_all "$dest" "${bins[@]}"; then log "$name ${version}: cached in $dest"; return; fi
  local work; work=$(mktemp -d "${TMPDIR:-/tmp}/permafrost-$name.XXXXXX")
  (cd "$work" && go mod init "permafrost.dev/hack/${name}-build" >/dev/null 2>&1 && log "$name ${version}: resolving" && go get "${module}@${version}" 2>&1 | grep -v '^go: \(downloading\|added\)' >&2 || true)
  mkdir -p "$dest.partial"
  local start=$SECONDS
  for pb in "$@"; do
    go_build "$name ${version}" "$work" "$dest.partial/${pb##*:}" "${pb%%:*}"
  done
  rm -rf "$dest"; mv "$dest.partial" "$dest"; rm -rf "$work"
  log "$name ${version}: done in $((SECONDS - start))s -> $dest"
}

go_build() {
  # go_build LABEL WORK OUT PKG: builds PKG in the module at WORK into OUT, printing how far it
  # got every 30 s: a build of a large module takes minutes on a cold cache, and is no hang.
  # NB: BUILD_TAGS (space-separated) is for modules whose optional parts need cgo or libraries
  # (or can be left out); VERSION_LDFLAGS for those that stamp their version at link time.
  local label=$1 work=$2 out=$3 pkg=$4 start=$SECONDS
  local buildlog; buildlog="$work/build-$(basename "$out").log"
  local total; total=$(cd "$work" && go list -tags "${BUILD_TAGS:-}" -deps "$pkg" 2>/dev/null | wc -l)
  log "$label: building ${out##*/} ($total packages)"
  (cd "$work" && go build -v -trimpath -tags "${BUILD_TAGS:-}" -ldflags "-s -w ${VERSION_LDFLAGS:-}" \
    -o "$out" "$pkg" 2>"$buildlog") &
  local pid=$! rc=0 next=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if [ "$SECONDS" -ge "$next" ] && kill -0 "$pid" 2>/dev/null; then
      # NB: go build -v names each package it compiles; the cached ones it does not.
      log "$label: ${out##*/}: $(grep -c '^[a-z]' "$buildlog" || true)/$total packages compiled, $((SECONDS - start))s"
      next=$((SECONDS + 30))
    fi
  done
  wait "$pid" || rc=$?
  if [ "$rc" != 0 ]; then grep -v '^[a-z][^ ]*$' "$buildlog" | tail -40 >&2; die "building ${out##*/} ($label) failed"; fi
}

build_argocd() {
  # Argo CD's application controller and repo server (hack/argocd/main.go) and its CRDs.
  local dest="$CACHE_ROOT/argocd-${ARGOCD_VERSION}"
  if [ -x "$dest/bin/argocd" ] && [ -x "$dest/bin/git-verify-wrapper.sh" ] && [ -d "$dest/crds" ]; then
    log "argocd ${ARGOCD_VERSION}: cached in $dest"; return
  fi
  local start=$SECONDS work; work=$(mktemp -d "${TMPDIR:-/tmp}/permafrost-argocd.XXXXXX")
  # NB: Argo CD needs a newer Go than the rest; the go command fetches that toolchain from the
  # module proxy (golang.org/toolchain) into the module cache, for this build only.
  export GOTOOLCHAIN="$ARGOCD_GO_TOOLCHAIN"
  log "argocd ${ARGOCD_VERSION}: Go toolchain ${GOTOOLCHAIN} (downloaded once, then cached)"
  local tc=$SECONDS
  (cd "$work" && go version >&2) || die "cannot get the Go toolchain ${GOTOOLCHAIN} from $(go env GOPROXY)"
  log "argocd ${ARGOCD_VERSION}: toolchain ready in $((SECONDS - tc))s"
  local info; info=$(cd "$work" && go mod download -json "github.com/argoproj/argo-cd/v3@${ARGOCD_VERSION}")
  local gomod dir
  gomod=$(sed -nE 's/^\s*"GoMod": "(.*)",?$/\1/p' <<<"$info")
  dir=$(sed -nE 's/^\s*"Dir": "(.*)",?$/\1/p' <<<"$info")
  [ -f "$gomod" ] && [ -d "$dir/manifests/crds" ] || die "could not fetch github.com/argoproj/argo-cd/v3@${ARGOCD_VERSION}: $info"
  # NB: replaces in a dependency's go.mod are ignored, so Argo CD's are copied into the build
  # module. The one local replace, ./gitops-engine (a directory of its repository), maps to that
  # module's release of the same version; any other local replace is unknown here and fails.
  local replaces
  replaces=$(awk '
    /^replace \($/ { block = 1; next }
    block && /^\)$/ { block = 0; next }
    block && /=>/ { sub(/\/\/.*/, ""); print; next }
    /^replace .*=>/ { sub(/^replace /, ""); sub(/\/\/.*/, ""); print }
  ' "$gomod" | sed -E 's/^\s+//; s/\s+$//')
  local r out=""
  while IFS= read -r r; do
    [ -n "$r" ] || continue
    case "$r" in
      "github.com/argoproj/argo-cd/gitops-engine/v3 => ./gitops-engine")
        out+="	github.com/argoproj/argo-cd/gitops-engine/v3 => github.com/argoproj/argo-cd/gitops-engine/v3 ${ARGOCD_VERSION}"$'\n' ;;
      *"=> ./"*|*"=> ../"*) die "argo-cd ${ARGOCD_VERSION} has a local replace this script does not know: $r" ;;
      *) out+="	$r"$'\n' ;;
    esac
  done <<<"$replaces"
  {
    echo "module permafrost.dev/hack/argocd-build"
    echo
    echo "go $(sed -nE 's/^go (.*)$/\1/p' "$gomod")"
    echo
    echo "require github.com/argoproj/argo-cd/v3 ${ARGOCD_VERSION}"
    echo
    echo "replace ("
    printf '%s' "$out"
    echo ")"
  } >"$work/go.mod"
  cp "$HACK_DIR/argocd/main.go" "$work/main.go"
  log "argocd ${ARGOCD_VERSION}: $(grep -c '=>' "$work/go.mod") replaces copied; resolving dependencies"
  (cd "$work" && go mod tidy 2>&1 | grep -v '^go: \(downloading\|finding\|found\)' >&2 || true)
  grep -q "github.com/argoproj/argo-cd/v3 ${ARGOCD_VERSION}\$" "$work/go.mod" || die "dependency resolution did not keep argo-cd ${ARGOCD_VERSION}; see the messages above"
  local total; total=$(cd "$work" && go list -deps . | wc -l)
  log "argocd ${ARGOCD_VERSION}: building $total packages (several minutes on a cold cache)"
  mkdir -p "$dest/bin"
  local ld="-s -w -X github.com/argoproj/argo-cd/v3/common.version=${ARGOCD_VERSION#v}"
  # NB: progress every 30 s from the packages go build -v reports; a long build is not a hang.
  (cd "$work" && go build -v -trimpath -ldflags "$ld" -o "$dest/bin/.argocd.partial" . 2>"$work/build.log") &
  local pid=$! rc=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 30 & wait $! || true
    kill -0 "$pid" 2>/dev/null && log "argocd ${ARGOCD_VERSION}: $(grep -c '^[a-z]' "$work/build.log" || true)/$total packages compiled, $((SECONDS - start))s"
  done
  wait "$pid" || rc=$?
  if [ "$rc" != 0 ]; then grep -v '^[a-z][^ ]*$' "$work/build.log" | tail -40 >&2; die "building argocd ${ARGOCD_VERSION} failed"; fi
  mv "$dest/bin/.argocd.partial" "$dest/bin/argocd"
  ln -sf argocd "$dest/bin/argocd-application-controller"
  ln -sf argocd "$dest/bin/argocd-repo-server"
  # NB: the repo server runs these from its PATH (Argo CD's image puts them in /usr/local/bin);
  # without git-verify-wrapper.sh every manifest generation fails with "permission denied".
  install -m 0755 "$dir/hack/git-verify-wrapper.sh" "$dir/hack/gpg-wrapper.sh" "$dest/bin/"
  rm -rf "$dest/crds.partial"; cp -r "$dir/manifests/crds" "$dest/crds.partial"; chmod -R u+w "$dest/crds.partial"
  rm -rf "$dest/crds"; mv "$dest/crds.partial" "$dest/crds"
  unset GOTOOLCHAIN
  rm -rf "$work"
  log "argocd ${ARGOCD_VERSION}: done in $((SECONDS - start))s -> $dest"
}

install_redis() {
  # redis-server from Debian: Argo CD's cache. Installed where this can (root, apt-get).
  command -v redis-server >/dev/null 2>&1 && { log "redis-server: $(command -v redis-server)"; return; }
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "redis-server: installing Debian's package"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >&2 \
      || { DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >&2; } \
      || die "apt-get install redis-server failed"
  else
    log "redis-server: not installed (install Debian's redis-server); the Argo CD tests skip without it"
  fi
}

build_prometheus() {
  # Prometheus's server, with only the service discovery the tests use (Kubernetes; file, HTTP
  # and static configs are always in) and without the web UI's assets: the HTTP API is all the
  # tests and the gates need. NB: both halve what it compiles (the cloud SDKs of the other
  # discoveries), and upstream supports both tags.
  local release; release=$(prometheus_release "$PROMETHEUS_VERSION")
  BUILD_TAGS="netgo remove_all_sd enable_kubernetes_sd" \
  VERSION_LDFLAGS="-X github.com/prometheus/common/version.Version=${release} -X github.com/prometheus/common/version.Branch=v${release}" \
    build_module_tool prometheus "$PROMETHEUS_VERSION" github.com/prometheus/prometheus \
    "github.com/prometheus/prometheus/cmd/prometheus:prometheus"
}

# prometheus_release v0.316.0 -> 3.16.0: the Go module's versions are v0.<major*100+minor>.<patch>.
prometheus_release() {
  local v=${1#v0.}; local mm=${v%%.*}
  echo "$((mm / 100)).$((mm % 100)).${v#*.}"
}

K8S_CONTROL_PLANE=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
K8S_NODE=(kubelet kube-proxy)

main() {
  local with_node=0 with_argocd=0 with_buildkit=0 with_prometheus=0 arg
  for arg in "$@"; do
    case "$arg" in
      node) with_node=1 ;;
      argocd) with_argocd=1 ;;
      prometheus) with_prometheus=1 ;;
      buildkit) with_buildkit=1 ;;
      *) die "usage: $0 [node] [argocd] [prometheus] | buildkit" ;;
    esac
  done
  mkdir -p "$CACHE_ROOT"
  local start=$SECONDS
  if [ "$with_buildkit" = 1 ]; then
    have_all "$CACHE_ROOT/buildkit-${BUILDKIT_VERSION}/bin" buildkitd buildctl || check_proxy
    # NB: static and without cgo, as upstream builds it, minus the seccomp tag (libseccomp, cgo):
    # RUN steps get no seccomp filter of BuildKit's own. The runc it drives is Debian's.
    BUILD_TAGS="osusergo netgo static_build" \
    VERSION_LDFLAGS="-X github.com/moby/buildkit/version.Version=${BUILDKIT_VERSION} -X github.com/moby/buildkit/version.Package=github.com/moby/buildkit" \
      build_module_tool buildkit "$BUILDKIT_VERSION" github.com/moby/buildkit \
      "github.com/moby/buildkit/cmd/buildkitd:buildkitd" \
      "github.com/moby/buildkit/cmd/buildctl:buildctl"
    log "buildkit ready in $((SECONDS - start))s under $CACHE_ROOT"
    return
  fi
  local k8s=("${K8S_CONTROL_PLANE[@]}")
  [ "$with_node" = 1 ] && k8s+=("${K8S_NODE[@]}")
  if ! have_all "$CACHE_ROOT/kubernetes-${K8S_VERSION}/bin" "${k8s[@]}" \
     || ! have_all "$CACHE_ROOT/etcd-${ETCD_VERSION}/bin" etcd \
     || ! have_all "$CACHE_ROOT/kwok-${KWOK_VERSION}/bin" kwok kwokctl \
     || { [ "$with_node" = 1 ] && { ! have_all "$CACHE_ROOT/containerd-${CONTAINERD_VERSION}/bin" containerd ctr containerd-shim-runc-v2 \
          || ! have_all "$CACHE_ROOT/registry-${REGISTRY_VERSION}/bin" registry \
          || ! have_all "$CACHE_ROOT/crane-${CRANE_VERSION}/bin" crane \
          || ! have_all "$CACHE_ROOT/cosign-${COSIGN_VERSION}/bin" cosign; }; }; then
    check_proxy
  fi
  build_module_tool etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 "go.etcd.io/etcd/server/v3:etcd"
  build_module_tool kwok "$KWOK_VERSION" sigs.k8s.io/kwok "sigs.k8s.io/kwok/cmd/kwok:kwok" "sigs.k8s.io/kwok/cmd/kwokctl:kwokctl"
  build_kubernetes "${k8s[@]}"
  if [ "$with_node" = 1 ]; then
    # NB: without cgo the optional snapshotters would not build; the node uses overlayfs only.
    BUILD_TAGS="no_btrfs no_devmapper no_zfs no_aufs urfave_cli_no_docs" \
      build_module_tool containerd "$CONTAINERD_VERSION" github.com/containerd/containerd/v2 \
      "github.com/containerd/containerd/v2/cmd/containerd:containerd" \
      "github.com/containerd/containerd/v2/cmd/ctr:ctr" \
      "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2:containerd-shim-runc-v2"
    build_module_tool registry "$REGISTRY_VERSION" github.com/distribution/distribution/v3 \
      "github.com/distribution/distribution/v3/cmd/registry:registry"
    build_module_tool crane "$CRANE_VERSION" github.com/google/go-containerregistry \
      "github.com/google/go-containerregistry/cmd/crane:crane"
    # NB: the signature tests' cosign; its version is stamped as its own release builds do.
    VERSION_LDFLAGS="-X sigs.k8s.io/release-utils/version.gitVersion=${COSIGN_VERSION}" \
      build_module_tool cosign "$COSIGN_VERSION" github.com/sigstore/cosign/v2 \
      "github.com/sigstore/cosign/v2/cmd/cosign:cosign"
  fi
  if [ "$with_argocd" = 1 ]; then
    build_module_tool kustomize "$KUSTOMIZE_VERSION" sigs.k8s.io/kustomize/kustomize/v5 \
      "sigs.k8s.io/kustomize/kustomize/v5:kustomize"
    build_argocd
    install_redis
  fi
  if [ "$with_prometheus" = 1 ]; then build_prometheus; fi
  log "all binaries ready in $((SECONDS - start))s under $CACHE_ROOT"
}

main "$@"
