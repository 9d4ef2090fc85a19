#!/usr/bin/env bash
# Builds the operator image from the project's Dockerfile with BuildKit, and pushes it:
#
#   hack/operator-image.sh build [REF]   build and push; prints REPO@sha256:... on stdout
#   hack/operator-image.sh pin DIGEST    make deploy/ reference the published image by DIGEST
#   hack/operator-image.sh deps          install the Debian packages it needs (mmdebstrap)
#   hack/operator-image.sh rootfs        make (or find) the local base's root filesystem; print its path
#
# REF defaults to 127.0.0.1:5000/permafrost:<version> (the real node's registry, in the
# cluster's network namespace: `make image` runs this there). Logs go to stderr.
#
# The builder: buildkitd and buildctl (hack/build-binaries.sh buildkit), rootful, with the runc
# worker and Debian's runc. buildkitd runs for one build only, in a private mount namespace (its
# overlay mounts never reach the host), with its state under
# ${XDG_CACHE_HOME:-$HOME/.cache}/permafrost/buildkit-<version>/state, so rebuilds reuse its cache.
#
# The base: the Dockerfile's BASE_IMAGE defaults to the pinned python:3.13-slim-trixie, from
# Docker Hub. Where that cannot be pulled (BASE_IMAGE=local, the default here), a local
# equivalent is built first: Debian trixie's python3 (3.13) and pip, as a root filesystem made
# by mmdebstrap from deb.debian.org (cached per Debian point release under
# .../permafrost/python-base-trixie-<release>/), packed into an image by BuildKit
# (hack/base-image/Dockerfile), pushed beside the operator's image as REGISTRY/python, and given
# to the operator's build by digest, as a named context. BASE_IMAGE=dockerfile keeps the
# Dockerfile's own (as a release is built); BASE_IMAGE=<pinned ref> uses that one.
#
# The network: the Dockerfile's build stage runs `pip wheel`, which needs PyPI. buildkitd's RUN
# steps share its network namespace (--oci-worker-net=host; the bridge and CNI modes would add a
# bridge and NAT rules to the host). The cluster's namespace, where this script runs to reach the
# registry, has no route out: so buildkitd (and mmdebstrap, which downloads from Debian) run in
# the nearest network namespace with a default route among this process and its parents (the one
# `make image` was started from), or in BUILDKIT_NETNS=/path/to/netns. The image is exported as an OCI layout and pushed from here with
# crane, so the registry only ever has to be reachable from here.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=hack/versions.env
. "$ROOT/hack/versions.env"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/permafrost"
BUILDKIT_BIN="$CACHE_ROOT/buildkit-${BUILDKIT_VERSION}/bin"
BUILDKIT_STATE="$CACHE_ROOT/buildkit-${BUILDKIT_VERSION}/state"
CRANE_BIN="$CACHE_ROOT/crane-${CRANE_VERSION}/bin"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
BASE_SUITE=trixie
PACKAGES=(mmdebstrap:mmdebstrap runc:runc)
LOCAL_CAS=/usr/local/share/ca-certificates
LOCAL_CAS_HOOK='if [ -n "$(ls -A '"$LOCAL_CAS"' 2>/dev/null)" ]; then cp -r '"$LOCAL_CAS"'/. "$1"'"$LOCAL_CAS"'/ && chroot "$1" update-ca-certificates >/dev/null; fi'

log() { printf '[operator-image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[operator-image] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { die "usage: $0 build [REF] | pin DIGEST | deps | rootfs"; }

missing_packages() {
  local p
  for p in "${PACKAGES[@]}"; do command -v "${p#*:}" >/dev/null 2>&1 || echo "${p%%:*}"; done
}

deps() {
  local missing; missing=$(missing_packages)
  [ -z "$missing" ] && { log "Debian packages present: ${PACKAGES[*]%%:*}"; return; }
  command -v apt-get >/dev/null 2>&1 || die "missing packages ($(echo $missing)) and no apt-get to install them"
  log "installing: $(echo $missing)"
  local out="${TMPDIR:-/tmp}/permafrost-image-apt.log"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >"$out" 2>&1 || die "apt-get update failed; see $out"
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >>"$out" 2>&1 || die "apt-get install failed; see $out"
}

work="" buildkitd_pid=""
cleanup() {
  if [ -n "$buildkitd_pid" ]; then
    kill "$buildkitd_pid" 2>/dev/null || true
    local i
    for i in $(seq 1 50); do kill -0 "$buildkitd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$buildkitd_pid" 2>/dev/null || true
  fi
  [ -z "$work" ] || rm -rf "$work"
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

# build_netns: the network namespace for buildkitd (its RUN steps need PyPI): BUILDKIT_NETNS, or
# the nearest one with a default route among this process and its parents.
build_netns() {
  if [ -n "${BUILDKIT_NETNS:-}" ]; then
    [ -e "$BUILDKIT_NETNS" ] || die "BUILDKIT_NETNS=$BUILDKIT_NETNS does not exist"
    echo "$BUILDKIT_NETNS"; return
  fi
  local pid
  for pid in $(ancestors); do
    if [ -n "$(nsenter --net="/proc/$pid/ns/net" -- ip route show default 2>/dev/null)" ]; then
      echo "/proc/$pid/ns/net"; return
    fi
  done
  die "no network namespace with a route out among this process and its parents: the build's pip needs PyPI (set BUILDKIT_NETNS)"
}

# in_build_net CMD...: CMD in the network namespace of the build (BUILD_NETNS, from build_netns).
BUILD_NETNS=""
in_build_net() {
  [ -n "$BUILD_NETNS" ] || BUILD_NETNS=$(build_netns)
  nsenter --net="$BUILD_NETNS" -- "$@"
}

# start_buildkitd: buildkitd on a socket of this build, in a network namespace with a route out
# and a mount namespace of its own; waits until its worker answers.
start_buildkitd() {
  mkdir -p "$BUILDKIT_STATE"
  # NB: one buildkitd at a time on the shared state (its database is locked by the first): a
  # second build (another clone's tests, the other shard of make test) waits here for its turn.
  exec 9>"$BUILDKIT_STATE.lock"
  if ! flock -n 9; then
    log "another build holds the builder's state; waiting for it"
    flock 9
  fi
  local sock="$work/buildkitd.sock" attempt i
  [ -n "$BUILD_NETNS" ] || BUILD_NETNS=$(build_netns)
  # NB: a buildkitd started without the lock above (an older checkout's) still holds the state:
  # wait for it too, up to 10 minutes, rather than fail the build.
  for attempt in $(seq 1 120); do
    # NB: nsenter and unshare exec what they run: $! is buildkitd's own PID, which cleanup stops.
    nsenter --net="$BUILD_NETNS" -- unshare --mount --propagation private -- \
      "$BUILDKIT_BIN/buildkitd" --root "$BUILDKIT_STATE" --addr "unix://$sock" \
      --oci-worker=true --containerd-worker=false --oci-worker-net=host \
      --oci-worker-binary="$(command -v runc)" --oci-worker-gc=true \
      </dev/null >"$work/buildkitd.log" 2>&1 &
    buildkitd_pid=$!
    BUILDKIT_HOST="unix://$sock"; export BUILDKIT_HOST
    for i in $(seq 1 100); do
      "$BUILDKIT_BIN/buildctl" debug workers >/dev/null 2>&1 && return
      kill -0 "$buildkitd_pid" 2>/dev/null || break
      sleep 0.2
    done
    grep -q "could not lock" "$work/buildkitd.log" || break
    [ "$attempt" -gt 1 ] || log "another buildkitd holds the builder's state; waiting for it"
    buildkitd_pid=""
    sleep 5
  done
  tail -n 20 "$work/buildkitd.log" >&2
  die "buildkitd did not start (the last lines of its log above)"
}

# buildctl_build WHAT ARGS...: one build; its progress goes to WHAT's log, its last lines to
# stderr if it fails.
buildctl_build() {
  local what=$1; shift
  # NB: the Dockerfile's "# syntax=docker/dockerfile:1" would have BuildKit pull that frontend
  # image from Docker Hub and forward to it; "cmdline" (what the forwarded frontend is given)
  # has the built-in Dockerfile frontend, the same code at the pinned BuildKit version, build it.
  if ! "$BUILDKIT_BIN/buildctl" build --progress=plain --frontend dockerfile.v0 \
       --opt cmdline=docker/dockerfile:1 "$@" >"$work/$what.log" 2>&1; then
    tail -n 25 "$work/$what.log" >&2
    die "the $what build failed (its last lines above)"
  fi
}

# layout_digest DIR: the digest of the one manifest of an OCI layout.
layout_digest() {
  sed -nE 's/.*"digest":"(sha256:[0-9a-f]{64})".*/\1/p' "$1/index.json" | head -n 1
}

# base_rootfs: the cached root filesystem of the local base, made if missing; prints its path.
base_rootfs() {
  local release
  release=$(in_build_net curl -fsS --max-time 20 "$DEBIAN_MIRROR/dists/$BASE_SUITE/Release" | sed -nE 's/^Version: (.*)$/\1/p') \
    || die "cannot read $DEBIAN_MIRROR/dists/$BASE_SUITE/Release"
  [ -n "$release" ] || die "no Version in $DEBIAN_MIRROR/dists/$BASE_SUITE/Release"
  # NB: the builder's own certificate authorities (Debian's place for them), if any, are trusted
  # in the local base too: where a proxy re-signs TLS, pip in the build stage needs them. So the
  # cache key names them, and the local base is never one to publish.
  local cas=none
  if [ -n "$(ls -A "$LOCAL_CAS" 2>/dev/null)" ]; then
    cas=$(cd "$LOCAL_CAS" && find . -type f | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-12)
  fi
  local dir="$CACHE_ROOT/python-base-$BASE_SUITE-$release-cas-$cas"
  if [ -s "$dir/rootfs.tar" ]; then log "base root filesystem: Debian $release, cached in $dir" >&2; echo "$dir/rootfs.tar"; return; fi
  command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap is not installed ($0 deps installs it)"
  log "base root filesystem: Debian $BASE_SUITE ($release) with python3 and pip, by mmdebstrap" >&2
  mkdir -p "$dir"
  # NB: Recommends left out and docs, man pages and locales not unpacked, as the slim images do.
  # SOURCE_DATE_EPOCH (the release's date) makes the tar reproducible for the same packages.
  local epoch
  epoch=$(in_build_net curl -fsS --max-time 20 "$DEBIAN_MIRROR/dists/$BASE_SUITE/Release" | sed -nE 's/^Date: (.*)$/\1/p' | xargs -I{} date -d {} +%s)
  if ! SOURCE_DATE_EPOCH="$epoch" in_build_net mmdebstrap --mode=root --variant=minbase --format=tar \
       --include=python3,python3-pip,ca-certificates \
       --aptopt='APT::Install-Recommends "false"' \
       --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
       --dpkgopt='path-exclude=/usr/share/locale/*' \
       --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
       --customize-hook="$LOCAL_CAS_HOOK" \
       "$BASE_SUITE" "$dir/.rootfs.tar.partial" \
       "deb $DEBIAN_MIRROR $BASE_SUITE main" "deb $DEBIAN_MIRROR $BASE_SUITE-updates main" \
       "deb $DEBIAN_SECURITY_MIRROR $BASE_SUITE-security main" >"$work/mmdebstrap.log" 2>&1; then
    tail -n 15 "$work/mmdebstrap.log" >&2
    die "mmdebstrap failed (its last lines above)"
  fi
  mv "$dir/.rootfs.tar.partial" "$dir/rootfs.tar"
  echo "$dir/rootfs.tar"
}

build() {
  [ $# -le 1 ] || usage
  local version
  version=$(sed -nE 's/^version = "(.*)"$/\1/p' "$ROOT/pyproject.toml" | head -n 1)
  local ref=${1:-127.0.0.1:5000/permafrost:$version}
  case "$ref" in *@*) die "REF must be a tag reference (REGISTRY/NAME:TAG), not a digest: $ref" ;; esac
  case "${ref##*/}" in *:*) ;; *) die "REF must have a tag, as in 127.0.0.1:5000/permafrost:$version: $ref" ;; esac
  local repo=${ref%:*} registry=${ref%%/*}

  [ "$(id -u)" = 0 ] || die "rootful BuildKit needs root"
  for b in "$BUILDKIT_BIN/buildkitd" "$BUILDKIT_BIN/buildctl"; do
    [ -x "$b" ] || die "missing $b: run hack/build-binaries.sh buildkit first"
  done
  local crane="$CRANE_BIN/crane"
  [ -x "$crane" ] || die "missing $crane: run hack/build-binaries.sh node first"
  local missing; missing=$(missing_packages)
  [ -z "$missing" ] || die "missing Debian packages: $(echo $missing) ($0 deps installs them)"
  local insecure=() scheme=https
  case "${registry%:*}" in localhost|127.*|\[::1\]) insecure=(--insecure); scheme=http ;; esac
  local code
  code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$scheme://$registry/v2/" 2>/dev/null || true)
  [ "${code:-000}" != 000 ] || die "registry $registry does not answer (is the cluster up, and is this its network namespace?)"

  BUILD_NETNS=$(build_netns)
  local start=$SECONDS
  mkdir -p "$CACHE_ROOT/images"
  work=$(mktemp -d "$CACHE_ROOT/images/operator.XXXXXX")
  trap cleanup EXIT
  start_buildkitd
  log "buildkitd $BUILDKIT_VERSION (runc worker, $(runc --version | head -n 1)) up"

  local base=${BASE_IMAGE:-local} base_args=()
  case "$base" in
    local|dockerfile) ;;
    *@sha256:*) base_args=(--opt "build-arg:BASE_IMAGE=$base") ;;
    *) die "BASE_IMAGE must be local, dockerfile or a reference pinned by digest: $base" ;;
  esac
  if [ "$base" = local ]; then
    local rootfs; rootfs=$(base_rootfs)
    mkdir -p "$work/base-context"
    ln "$rootfs" "$work/base-context/rootfs.tar" 2>/dev/null || cp "$rootfs" "$work/base-context/rootfs.tar"
    log "building the local base image (hack/base-image/Dockerfile)"
    buildctl_build base --local context="$work/base-context" --local dockerfile="$ROOT/hack/base-image" \
      --output "type=oci,dest=$work/base,tar=false"
    local base_digest; base_digest=$(layout_digest "$work/base")
    [ -n "$base_digest" ] || die "the base image's OCI layout has no manifest"
    local base_repo="$registry/python"
    "$crane" push "${insecure[@]}" "$work/base" "$base_repo:$BASE_SUITE-local" >/dev/null 2>"$work/crane.err" \
      || die "crane push of the base failed: $(tail -n 1 "$work/crane.err")"
    base="$base_repo@$base_digest"
    log "base image: $base"
    base_args=(--opt "build-arg:BASE_IMAGE=$base" --oci-layout "base=$work/base"
               --opt "context:$base=oci-layout://base@$base_digest")
  fi

  log "building $ref from the Dockerfile (BASE_IMAGE=$base)"
  buildctl_build operator --local context="$ROOT" --local dockerfile="$ROOT" "${base_args[@]}" \
    --output "type=oci,dest=$work/image,tar=false,name=$ref"
  local digest; digest=$(layout_digest "$work/image")
  [ -n "$digest" ] || die "the operator image's OCI layout has no manifest"
  "$crane" push "${insecure[@]}" "$work/image" "$ref" >/dev/null 2>"$work/crane.err" \
    || die "crane push failed: $(tail -n 1 "$work/crane.err")"
  local pushed; pushed=$("$crane" digest "${insecure[@]}" "$ref" 2>"$work/crane.err") \
    || die "crane digest failed: $(tail -n 1 "$work/crane.err")"
  [ "$pushed" = "$digest" ] || die "the registry has $pushed for $ref, not the built $digest"
  log "pushed $ref -> $repo@$digest in $((SECONDS - start))s"
  echo "$repo@$digest"
}

# pin DIGEST: deploy/kustomization.yaml's image entry for the operator, by digest instead of tag.
# NB: only for a digest the published image (ghcr.io/permafrost-dev/permafrost) really has: the
# one `make image IMAGE_REF=ghcr.io/permafrost-dev/permafrost:<version> BASE_IMAGE=dockerfile`
# printed when it pushed the release.
pin() {
  [ $# -eq 1 ] || usage
  local digest=$1 file="${KUSTOMIZATION:-$ROOT/deploy/kustomization.yaml}"
  [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || die "DIGEST must be sha256:<64 hex>, not '$digest'"
  grep -q '^  - name: ghcr.io/permafrost-dev/permafrost$' "$file" || die "$file has no image entry for ghcr.io/permafrost-dev/permafrost"
  # NB: the line after the entry's name is its newTag (or an earlier digest): replaced in place.
  sed -i -E '/^  - name: ghcr\.io\/permafrost-dev\/permafrost$/{n;s/^    (newTag|digest): .*$/    digest: '"$digest"'/}' "$file"
  grep -q "^    digest: $digest\$" "$file" || die "could not set the digest in $file"
  log "deploy/ now references ghcr.io/permafrost-dev/permafrost@$digest"
}

case "${1:-}" in
  build) shift; build "$@" ;;
  pin) shift; pin "$@" ;;
  rootfs) BUILD_NETNS=$(build_netns); work=$(mktemp -d); trap cleanup EXIT; base_rootfs ;;
  deps) deps ;;
  *) usage ;;
esac
