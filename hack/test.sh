#!/usr/bin/env bash
# make test's pytest run: the suite in shards side by side, each against a local cluster of its
# own, then the module that must run alone (tests/integration/test_node_teardown.py compares the
# whole host's state, which another running cluster changes).
#
#   hack/test.sh [PYTEST ARGS...]
#
# Most of the suite's time is spent waiting on real pods, the apiserver and Argo CD, not on the
# CPU: two shards finish in a little over half the time of one. tests/shards.py says which
# modules each shard runs (whole modules, balanced by the seconds they took).
#
# PERMAFROST_TEST_SHARDS=N: how many shards (default 2; 1 runs everything in one pytest, as
# before). Shard 1 uses the usual cluster ($PERMAFROST_CLUSTER_DIR or .cluster, in the network
# namespace $PERMAFROST_NETNS or "permafrost"); shard K uses .cluster-K and "<netns>-K". Each
# shard's lines are printed as they come, prefixed "[shard K]", and kept in its cluster
# directory (pytest.log, junit.xml); the slowest modules of the run are listed at the end. The
# clusters of shards 2..N are stopped afterwards; shard 1's is kept with PERMAFROST_KEEP_CLUSTER=1.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N="${PERMAFROST_TEST_SHARDS:-2}"
NETNS="${PERMAFROST_NETNS:-permafrost}"
BASE_DIR="${PERMAFROST_CLUSTER_DIR:-$ROOT/.cluster}"
PYTEST="$ROOT/.venv/bin/pytest"
PYTHON="$ROOT/.venv/bin/python"

log() { printf '[test %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

case "$N" in
  ''|*[!0-9]*|0) log "PERMAFROST_TEST_SHARDS must be a positive number, not '$N'"; exit 2 ;;
esac
if [ "$N" = 1 ]; then
  exec "$ROOT/hack/cluster.sh" exec "$PYTEST" "$@"
fi

dir_of() { if [ "$1" = 1 ]; then echo "$BASE_DIR"; else echo "$BASE_DIR-$1"; fi; }
netns_of() { if [ "$1" = 1 ]; then echo "$NETNS"; else echo "$NETNS-$1"; fi; }

# shard K: its pytest inside its own cluster, its lines prefixed and kept.
shard() {
  local k=$1 dir netns; shift
  dir=$(dir_of "$k"); netns=$(netns_of "$k")
  mkdir -p "$dir"
  # NB: pytest's temporary directories outside the repository (tests compare paths under it).
  PERMAFROST_SHARD="$k/$N" PERMAFROST_CLUSTER_DIR="$dir" PERMAFROST_NETNS="$netns" \
    "$ROOT/hack/cluster.sh" exec "$PYTEST" -p no:cacheprovider \
    --basetemp="${TMPDIR:-/tmp}/permafrost-pytest-$netns" \
    --junitxml="$dir/junit.xml" "$@" 2>&1 | tee "$dir/pytest.log" | sed -u "s/^/[shard $k] /"
  return "${PIPESTATUS[0]}"
}

started=$(date +%s)
log "running the suite in $N shards side by side (tests/shards.py), each against its own cluster"
pids=()
for k in $(seq 1 "$N"); do
  shard "$k" "$@" &
  pids+=("$!")
done
failed=0
for k in $(seq 1 "$N"); do
  wait "${pids[$((k - 1))]}"; rc=$?
  [ "$rc" = 0 ] || { log "shard $k failed (pytest exit $rc; its output: $(dir_of "$k")/pytest.log)"; failed=1; }
done
for k in $(seq 2 "$N"); do
  PERMAFROST_CLUSTER_DIR=$(dir_of "$k") PERMAFROST_NETNS=$(netns_of "$k") \
    "$ROOT/hack/cluster.sh" down >/dev/null 2>&1 || true
done
for k in $(seq 1 "$N"); do
  summary=$(grep -E '^=+ .* in [0-9.]+s' "$(dir_of "$k")/pytest.log" | tail -n 1)
  log "shard $k: ${summary:-no summary (see its pytest.log)}"
done

log "the module that runs alone (no other cluster running)"
PERMAFROST_SHARD=alone "$ROOT/hack/cluster.sh" exec "$PYTEST" -p no:cacheprovider \
  --basetemp="${TMPDIR:-/tmp}/permafrost-pytest-$NETNS-alone" \
  --junitxml="$BASE_DIR/junit-alone.xml" "$@"
rc=$?
# NB: 5 is "no tests collected": the arguments selected none of it.
[ "$rc" = 0 ] || [ "$rc" = 5 ] || { log "the module run alone failed (pytest exit $rc)"; failed=1; }

"$PYTHON" - "$BASE_DIR" <<'PY' || true
import glob, sys, xml.etree.ElementTree as ET
base = sys.argv[1]
seconds: dict[str, float] = {}
failures: list[str] = []
paths = [f"{base}/junit.xml", f"{base}/junit-alone.xml", *glob.glob(f"{base}-*/junit.xml")]
for path in paths:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        continue
    for case in root.iter("testcase"):
        parts = (case.get("classname") or "?").split(".")
        if len(parts) > 1 and parts[-1][:1].isupper():  # a test class: its module
            parts = parts[:-1]
        module = "/".join(parts[1:] if parts[0] == "tests" else parts) + ".py"
        seconds[module] = seconds.get(module, 0.0) + float(case.get("time") or 0)
        for outcome in ("failure", "error"):
            for bad in case.iter(outcome):
                first = ((bad.get("message") or "").strip().splitlines() or [""])[0][:200]
                failures.append(f"{module}::{case.get('name')} ({outcome}): {first}")
top = sorted(seconds.items(), key=lambda kv: -kv[1])[:20]
if top:
    print("[test] the slowest modules (seconds; tests/shards.py balances by them):", file=sys.stderr)
    for module, secs in top:
        print(f"[test]   {secs:7.0f}  {module}", file=sys.stderr)
# NB: last, so that the end of the output (all a CI page may keep) names what failed.
if failures:
    print(f"[test] {len(failures)} failed (each shard's pytest.log has the details):", file=sys.stderr)
    for line in failures:
        print(f"[test]   {line}", file=sys.stderr)
PY
log "done in $(( $(date +%s) - started )) s"
exit "$failed"
