#!/usr/bin/env bash
# Builds a Go module into a one-layer OCI image and pushes it to a registry, without Docker:
#
#   hack/image.sh build SRC_DIR REF [VERSION]
#   hack/image.sh build examples/app 127.0.0.1:5000/demo:v1      the demo app, version v1
#   hack/image.sh build hack/pause 127.0.0.1:5000/pause:3.10     the node's sandbox image
#
# The main package in SRC_DIR is built static for linux on this machine's architecture
# (CGO_ENABLED=0, -trimpath, -ldflags "-s -w -X main.version=VERSION") and named after the last
# element of its module path: permafrost.dev/examples/app gives /app, .../pause gives /pause.
# The image holds that one file (mode 0555, owner 65532:65532), runs it as the entrypoint as user
# 65532:65532 and has the label org.opencontainers.image.version=VERSION. VERSION defaults to
# REF's tag. The layer tar is reproducible (sorted, mtime 0, numeric owner), and so is the Go
# build, so the same source, version and Go toolchain give the same digest.
#
# Prints only the pinned reference, REPO@sha256:..., on stdout; logs go to stderr.
#
# Needs go, GNU tar, curl and crane: $CRANE, else crane on PATH, else the one
# "hack/build-binaries.sh node" builds into the cache. REF must name its registry. A registry on
# loopback is spoken to in plain HTTP (crane --insecure); IMAGE_INSECURE=1 does the same for
# another one (say a test host's).
set -euo pipefail

# shellcheck source=hack/versions.env
. "$(dirname "$0")/versions.env"

CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/permafrost"
IMAGE_UID=65532
LABEL_VERSION=org.opencontainers.image.version

log() { printf '[image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[image] ERROR: %s\n' "$*" >&2; exit 1; }
crane="" work="" insecure=()  # set by build, read by crane_run

usage() { die "usage: $0 build SRC_DIR REF [VERSION]   (e.g. $0 build examples/app 127.0.0.1:5000/demo:v1)"; }

find_crane() {
  local cached="$CACHE_ROOT/crane-${CRANE_VERSION}/bin/crane"
  if [ -n "${CRANE:-}" ]; then
    [ -x "$CRANE" ] || die "CRANE=$CRANE is not an executable"
    echo "$CRANE"
  elif command -v crane >/dev/null 2>&1; then
    command -v crane
  elif [ -x "$cached" ]; then
    echo "$cached"
  else
    die "crane not found (\$CRANE, PATH, $cached): run hack/build-binaries.sh node first"
  fi
}

# crane_run COMMAND ARGS...: runs crane with its stdout on ours; on failure, one ERROR line with
# crane's own last message.
crane_run() {
  if ! "$crane" "$@" "${insecure[@]}" 2>"$work/crane.err"; then
    die "crane $1 failed: $(tail -n 1 "$work/crane.err")"
  fi
}

build() {
  if [ $# -lt 2 ] || [ $# -gt 3 ]; then usage; fi
  local src=$1 ref=$2 version=${3:-}

  # REF = REGISTRY/PATH[:TAG]; the registry is named, so it can be checked before building.
  case "$ref" in *@*) die "REF must be a tag reference (REGISTRY/NAME:TAG), not a digest: $ref" ;; esac
  local registry=${ref%%/*} repo=$ref tag=latest
  case "$ref" in */*) ;; *) die "REF must name its registry, as in 127.0.0.1:5000/demo:v1: $ref" ;; esac
  case "$registry" in *.*|*:*|localhost) ;; *) die "REF must name its registry, as in 127.0.0.1:5000/demo:v1: $ref" ;; esac
  local last=${ref##*/}
  if [[ "$last" == *:* ]]; then tag=${last##*:}; repo=${ref%:*}; fi
  version=${version:-$tag}
  # NB: VERSION goes into -ldflags and crane's --label list, where spaces and commas would split it.
  [[ "$version" =~ ^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$ ]] \
    || die "VERSION must be 1-128 of [A-Za-z0-9_.+-], not starting with . + or -: '$version'"

  [ -f "$src/go.mod" ] || die "$src has no go.mod: SRC_DIR must be a Go module"
  command -v go >/dev/null 2>&1 || die "Go is not installed. Install Go >= 1.26 and retry."
  command -v curl >/dev/null 2>&1 || die "curl is not installed (needed to check the registry)"
  tar --version 2>/dev/null | grep -q 'GNU tar' || die "GNU tar is needed for a reproducible layer (--sort, --mtime)"
  crane=$(find_crane)

  insecure=()
  local scheme=https
  case "${registry%:*}" in
    localhost|127.*|\[::1\]) insecure=(--insecure); scheme=http ;;
  esac
  if [ "${IMAGE_INSECURE:-0}" = 1 ]; then insecure=(--insecure); scheme=http; fi
  # NB: any HTTP status (200, or 401 from a registry with auth) means it answers.
  local code
  code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$scheme://$registry/v2/" 2>/dev/null || true)
  [ "${code:-000}" != 000 ] || die "registry $registry does not answer at $scheme://$registry/v2/"

  local start=$SECONDS module name arch
  mkdir -p "$CACHE_ROOT/images"
  work=$(mktemp -d "$CACHE_ROOT/images/build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  module=$(cd "$src" && go list -m) || die "cannot read the module path of $src"
  name=${module##*/}
  arch=$(go env GOARCH)

  log "building $module $version for linux/$arch"
  mkdir "$work/rootfs"
  # NB: -buildvcs=false: otherwise the commit and a dirty flag are stamped into the binary, and
  # every commit of the repository would change the digest of an unchanged source.
  if ! (cd "$src" && CGO_ENABLED=0 GOOS=linux GOARCH="$arch" go build -trimpath -buildvcs=false \
        -ldflags "-s -w -X main.version=$version" -o "$work/rootfs/$name" .); then
    die "go build of $src failed (messages above)"
  fi
  tar --create --file "$work/layer.tar" --directory "$work/rootfs" --format=ustar --sort=name \
    --mtime=@0 --owner="$IMAGE_UID" --group="$IMAGE_UID" --numeric-owner --mode=0555 "$name"

  log "pushing $ref"
  # NB: without -b, crane append starts from an empty image; the config is then set by mutate,
  # which pushes the final image over the same tag.
  crane_run append --oci-empty-base -f "$work/layer.tar" -t "$ref" >/dev/null
  local pinned
  pinned=$(crane_run mutate "$ref" -t "$ref" --entrypoint "/$name" \
    --user "$IMAGE_UID:$IMAGE_UID" --label "$LABEL_VERSION=$version" --set-platform "linux/$arch")
  [[ "$pinned" =~ ^"$repo"@sha256:[0-9a-f]{64}$ ]] || die "crane mutate printed '$pinned', not $repo@sha256:<digest>"
  log "pushed $ref -> $pinned in $((SECONDS - start))s"
  echo "$pinned"
}

main() {
  case "${1:-}" in
    build) shift; build "$@" ;;
    *) usage ;;
  esac
}

main "$@"
