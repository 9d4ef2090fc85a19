#!/usr/bin/env bash
# `make demo`: Permafrost at work on the local control plane, told as a story with a timeline.
#
#   hack/demo.sh          the story: ship v1, upgrade to v2, in-place edits and unpinned images
#                         denied, a broken v3 rolled back automatically; with the real node,
#                         real containers serving real requests through a crash and a rollout;
#                         the releases' history
#   hack/demo.sh down     stop the demo's operator and remove its webhook configuration
#
# The cluster must be up (`make demo` starts it). The operator runs in the background with its
# admission guardrails; its log and pid are kept next to the cluster's state. It keeps running
# after the story so the printed commands can be tried; `make demo-down` stops it and the cluster.
#
# DEMO_NONINTERACTIVE=1 (or no terminal on stdin): no pauses between chapters. With
# DEMO_NONINTERACTIVE=1 the operator is also stopped at the end, its webhook configuration
# removed (what tests need); the demo's namespace and the built-in policies stay.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$ROOT/hack/cluster.sh" env)"
NS=permafrost-demo
OPERATOR_NS=permafrost-system
WEBHOOK_CONFIGURATION=permafrost-frozen-workloads
STATE="$(dirname "$KUBECONFIG")/demo"
PIDFILE="$STATE/operator.pid"
LOG="$STATE/operator.log"
PY="$ROOT/.venv/bin/python"
permafrost() { "$PY" -m permafrost "$@"; }

# --- stopping the demo's operator ---------------------------------------------------------------

our_operator() {  # the pid in $PIDFILE, if that process is still the demo's operator
  local pid
  [ -s "$PIDFILE" ] || return 1
  pid=$(cat "$PIDFILE")
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "permafrost run" \
    && echo "$pid"
}

stop_operator() {
  local pid
  if pid=$(our_operator); then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
  # NB: its webhook configuration would point at a closed port, and the policies webhook fails
  # closed; the ValidatingAdmissionPolicy fail-safe stays and keeps revisions frozen.
  kubectl delete validatingwebhookconfiguration "$WEBHOOK_CONFIGURATION" --ignore-not-found \
    --request-timeout=10s >/dev/null 2>&1 || true
}

if [ "${1:-}" = down ]; then
  stop_operator
  echo "demo operator stopped; webhook configuration $WEBHOOK_CONFIGURATION removed"
  exit 0
fi

# --- telling the story --------------------------------------------------------------------------

INTERACTIVE=1
if [ "${DEMO_NONINTERACTIVE:-0}" = 1 ] || [ ! -t 0 ]; then INTERACTIVE=0; fi
START=$SECONDS
bold=$'\033[1m' dim=$'\033[2m' red=$'\033[31m' green=$'\033[32m' plain=$'\033[0m'
if [ ! -t 1 ]; then bold='' dim='' red='' green='' plain=''; fi

chapter() {
  if [ "$INTERACTIVE" = 1 ] && [ "$1" != 0 ]; then
    read -r -p "${dim}(press Enter for chapter $1)${plain}" _ || true
  fi
  printf '\n%s== %s. %s%s\n' "$bold" "$1" "$2" "$plain"
}
# A line of the timeline: wall-clock time, seconds since the start, what happened.
at() { printf '%s %s[%s +%3ss]%s %s\n' "${2:-}" "$dim" "$(date +%H:%M:%S)" "$((SECONDS - START))" "$plain" "$1"; }
ok() { at "$1" "${green}✔${plain}"; }
denied() { at "$1" "${red}✘${plain}"; }
run() { printf '  %s$ %s%s\n' "$dim" "$*" "$plain"; "$@" 2>&1 | sed 's/^/    /'; }
fail() { printf '%sdemo failed: %s%s\n' "$red" "$*" "$plain" >&2; exit 1; }
field() { kubectl -n "$NS" get grel checkout -o jsonpath="{.status.$1}"; }
selector() { kubectl -n "$NS" get svc checkout -o jsonpath='{.spec.selector.permafrost\.dev/revision}'; }
set_image() {  # set_image IMAGE [BEHAVIOUR]: a new spec for the release (only the image changes)
  local ops="{\"op\":\"replace\",\"path\":\"/spec/template/spec/containers/0/image\",\"value\":\"$1\"}"
  [ -z "${2:-}" ] || ops="$ops,{\"op\":\"add\",\"path\":\"/spec/template/metadata/annotations\",\"value\":{\"sim.permafrost.dev/behavior\":\"$2\"}}"
  kubectl -n "$NS" patch grel checkout --type json -p "[$ops]" >/dev/null
}
V1="registry.example/shop/checkout:1.4.2@sha256:3f1c4e2a9b8d7c6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e"
V2="registry.example/shop/checkout:1.5.0@sha256:4e2d5f3b0c9e8d7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f"
V3="registry.example/shop/checkout:1.6.0@sha256:5f3e6a4c1d0f9e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a"

chapter 0 "Setting up: the CRDs, the built-in policies, the operator with its admission guardrails"
at "control plane: kube-apiserver $(kubectl version -o json | sed -nE 's/.*"gitVersion": "([^"]+)".*/\1/p' | tail -1), $(kubectl get nodes -l permafrost.dev/fake-node=true --no-headers | wc -l) kwok nodes"
kubectl apply --server-side --force-conflicts -k "$ROOT/crds/" >/dev/null
# NB: two waits, as docs/install.md: until the apiserver has written the CRDs' status, then until
# they are Established (--for=condition=Established fails at once while .status.conditions is null).
kubectl wait --for=jsonpath='{.status.conditions[0]}' --timeout=60s \
  crd/guardedreleases.permafrost.dev crd/guardrailpolicies.permafrost.dev >/dev/null
kubectl wait --for=condition=Established --timeout=60s \
  crd/guardedreleases.permafrost.dev crd/guardrailpolicies.permafrost.dev >/dev/null
ok "CRDs installed: GuardedRelease, GuardrailPolicy"
stop_operator  # a previous demo's, if any
kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=120s >/dev/null
kubectl create namespace "$NS" >/dev/null
kubectl label namespace "$NS" permafrost.dev/enforce=true >/dev/null
kubectl get namespace "$OPERATOR_NS" >/dev/null 2>&1 || kubectl create namespace "$OPERATOR_NS" >/dev/null
kubectl wait -n "$NS" --for=create serviceaccount/default --timeout=60s >/dev/null
ok "namespace $NS created, opted in to the guardrails (label permafrost.dev/enforce=true)"
mkdir -p "$STATE"
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
nohup "$PY" -m permafrost run -n "$NS" --admission --operator-namespace "$OPERATOR_NS" \
  --webhook-listen "127.0.0.1:$PORT" --webhook-url "https://127.0.0.1:$PORT" >"$LOG" 2>&1 &
echo $! >"$PIDFILE"
OPERATOR=$!
WATCHER=
cleanup() {
  local code=$?
  [ -z "$WATCHER" ] || kill "$WATCHER" 2>/dev/null || true
  if [ "$code" != 0 ] || [ "${DEMO_NONINTERACTIVE:-0}" = 1 ]; then
    stop_operator
    [ "$code" = 0 ] || echo "the demo's operator is stopped; its log: $LOG" >&2
  fi
}
trap cleanup EXIT
at "operator started (pid $OPERATOR, log $LOG), webhooks on 127.0.0.1:$PORT"
webhook_answers() {
  # NB: only the operator's webhook judges GuardrailPolicies (the fail-safe policy does not):
  # a policy that does not compile, created in dry-run, is refused once the webhook is serving.
  local out
  out=$(printf '%s\n' 'apiVersion: permafrost.dev/v1alpha1' 'kind: GuardrailPolicy' \
    'metadata: {name: readiness-probe}' \
    'spec: {stages: [create], rules: [{name: probe, expression: "(", message: x}]}' \
    | kubectl create --dry-run=server -f - 2>&1) && return 1
  grep -q "policies.permafrost.dev" <<<"$out" && ! grep -q "127.0.0.1:$PORT" <<<"$out"
}
for _ in $(seq 1 120); do webhook_answers && break; kill -0 "$OPERATOR" || fail "the operator exited (see $LOG)"; sleep 0.5; done
webhook_answers || fail "the operator's webhook did not answer within a minute (see $LOG)"
ok "admission webhook serving; fail-safe ValidatingAdmissionPolicy installed"
kubectl apply -f "$ROOT/deploy/policies/" >/dev/null
ok "built-in GuardrailPolicies installed: $(kubectl get guardrailpolicies --no-headers | wc -l) (kubectl get grp)"

chapter 1 "Ship v1: a GuardedRelease, verified before it takes traffic"
sed -e 's/minReadySeconds: 5/minReadySeconds: 2/' -e 's/scaleDownDelaySeconds: 30/scaleDownDelaySeconds: 3/' \
    -e 's/progressDeadlineSeconds: 60/progressDeadlineSeconds: 10/' "$ROOT/examples/checkout.yaml" \
  | kubectl -n "$NS" apply -f - | sed 's/^/    /'
at "applied examples/checkout.yaml (image checkout:1.4.2, 3 replicas, a ConfigMap, a Service)"
permafrost status checkout -n "$NS" --watch --timeout 120 | sed 's/^/    /' || fail "v1 did not become Stable"
FIRST=$(field stableRevision)
ok "v1 is Stable: revision $FIRST serves (Deployment checkout-$FIRST)"
ok "Service checkout selects revision $(selector)"

chapter 2 "Upgrade to v2: a new revision, traffic switched once it is healthy"
set_image "$V2"
at "spec.template changed: image checkout:1.5.0"
permafrost status checkout -n "$NS" --watch --timeout 120 | sed 's/^/    /' || fail "v2 did not become Stable"
SECOND=$(field stableRevision)
[ "$SECOND" != "$FIRST" ] || fail "v2 made no new revision"
ok "v2 is Stable: revision $SECOND serves (was $FIRST)"
run kubectl -n "$NS" get deploy -l permafrost.dev/release=checkout -L permafrost.dev/revision
[ "$(selector)" = "$SECOND" ] || fail "the Service does not select v2"
ok "Service checkout selects revision $(selector): $(kubectl -n "$NS" get svc checkout -o jsonpath='{.spec.selector}')"

chapter 3 "Guardrails: what runs is never changed in place"
printf '  %s$ kubectl set image deployment/checkout-%s web=…@sha256:ffff…%s\n' "$dim" "$SECOND" "$plain"
if out=$(kubectl -n "$NS" set image "deployment/checkout-$SECOND" "web=registry.example/shop/checkout@sha256:$(printf 'f%.0s' {1..64})" 2>&1); then
  fail "an in-place change of the frozen revision was allowed: $out"
fi
sed 's/^/    /' <<<"$out"
denied "denied: in-place kubectl set image on checkout-$SECOND (revision $SECOND stays as it was)"
printf '  %s$ kubectl patch grel checkout … image: checkout:latest%s\n' "$dim" "$plain"
if out=$(kubectl -n "$NS" patch grel checkout --type json -p '[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"registry.example/shop/checkout:latest"}]' 2>&1); then
  fail "an unpinned image was accepted: $out"
fi
sed 's/^/    /' <<<"$out"
printf '  %s$ kubectl create deployment cart --image=registry.example/shop/cart:2.0%s\n' "$dim" "$plain"
if out=$(kubectl -n "$NS" create deployment cart --image=registry.example/shop/cart:2.0 2>&1); then
  fail "a Deployment with an unpinned image was accepted: $out"
fi
sed 's/^/    /' <<<"$out"
denied "denied: unpinned image (a tag, not @sha256:…) in a GuardedRelease and in a plain Deployment"
at "the same policies run offline, as CI would run them:"
(cd "$ROOT" && run permafrost check --stage create examples/checkout.yaml)

chapter 4 "A broken v3: its pods never become Ready, so it never takes traffic"
# NB: `kubectl get -w` prints the Service's selector on every change: evidence, not sampling.
SELECTIONS="$STATE/selections.txt"
kubectl -n "$NS" get svc checkout -w -o jsonpath='{.spec.selector.permafrost\.dev/revision}{"\n"}' >"$SELECTIONS" 2>/dev/null &
WATCHER=$!
set_image "$V3" never-ready
at "spec.template changed: image checkout:1.6.0, whose pods never become Ready (kwok)"
if permafrost status checkout -n "$NS" --watch --timeout 120 | sed 's/^/    /'; then :; fi
PHASE=$(field phase)
kill "$WATCHER" 2>/dev/null || true
wait "$WATCHER" 2>/dev/null || true
WATCHER=
[ "$PHASE" = RolledBack ] || fail "v3 was not rolled back (phase $PHASE)"
THIRD=$(field desiredRevision)
ok "v3 rolled back automatically: revision $THIRD failed ($(kubectl -n "$NS" get grel checkout -o jsonpath='{.status.conditions[?(@.type=="RolledBack")].reason}')), spec left as it is"
SELECTED=$(sort -u "$SELECTIONS" | grep -v '^$' | paste -sd, -)
[ "$SELECTED" = "$SECOND" ] && [ "$(selector)" = "$SECOND" ] || fail "the Service selected $SELECTED during the v3 rollout"
ok "Service checkout selected only revision $SECOND during the v3 rollout (kubectl get -w saw every change of the Service)"
run kubectl -n "$NS" get deploy -l permafrost.dev/release=checkout -L permafrost.dev/revision

# --- real containers, where the cluster has the real node (hack/node.sh) ------------------------
web_release() {  # web_release IMAGE [ENV_NAME=VALUE]: the manifest of the release "web"
  local env=""
  [ -z "${2:-}" ] || env="        env: [{name: ${2%%=*}, value: \"${2#*=}\"}]"
  cat <<YAML
apiVersion: permafrost.dev/v1alpha1
kind: GuardedRelease
metadata: {name: web, namespace: $NS}
spec:
  replicas: 2
  service: {name: web}
  rollout: {progressDeadlineSeconds: 30, minReadySeconds: 2, scaleDownDelaySeconds: 2}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {permafrost.dev/real-node: "true"}
      tolerations: [{key: permafrost.dev/real-node, operator: Exists, effect: NoSchedule}]
      containers:
      - name: app
        image: $1
$env
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
        securityContext: {runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}
        resources: {limits: {cpu: 200m, memory: 64Mi}}
YAML
}
web_status() { kubectl -n "$NS" get grel web -o jsonpath="{.status.$1}"; }

if [ "$("$ROOT/hack/cluster.sh" real-node)" = 1 ] && kubectl get node permafrost-node >/dev/null 2>&1; then
  chapter 5 "Real containers on the real node: every request answered, and only by a verified revision"
  WEB1=$("$ROOT/hack/image.sh" build "$ROOT/examples/app" 127.0.0.1:5000/demo:v1 2>>"$STATE/images.log") \
    || fail "the demo app's image did not build (see $STATE/images.log)"
  WEB2=$("$ROOT/hack/image.sh" build "$ROOT/examples/app" 127.0.0.1:5000/demo:v2 2>>"$STATE/images.log") \
    || fail "the demo app's image did not build (see $STATE/images.log)"
  ok "examples/app built without Docker and pushed to the node's registry: $WEB1, $WEB2"
  # The trusted-registries policy says to edit its list: the platform team trusts the local one.
  sed "s|i\[1\].startsWith('ghcr.io/permafrost/')|& \|\| i[1].startsWith('127.0.0.1:5000/')|" \
    "$ROOT/deploy/policies/permafrost-trusted-registries.yaml" | kubectl apply -f - >/dev/null
  # NB: until the edited list is compiled, the apiserver still runs the old one and refuses
  # the local registry: wait until the policy's status has seen its new generation.
  GENERATION=$(kubectl get grp permafrost-trusted-registries -o jsonpath='{.metadata.generation}')
  kubectl wait grp/permafrost-trusted-registries --timeout 60s \
    --for=jsonpath='{.status.observedGeneration}'="$GENERATION" >/dev/null \
    || fail "the edited permafrost-trusted-registries was not compiled in 60 s"
  ok "permafrost-trusted-registries now trusts 127.0.0.1:5000/ too (its list edited, as it asks; enforced by $(kubectl get grp permafrost-trusted-registries -o jsonpath='{.status.enforcedBy}'))"
  web_release "$WEB1" | kubectl apply -f - >/dev/null
  permafrost status web -n "$NS" --watch --timeout 120 | sed 's/^/    /' || true
  [ "$(web_status phase)" = Stable ] || fail "web v1 did not become Stable ($(web_status phase))"
  WEB_FIRST=$(web_status stableRevision)
  URL="http://$(kubectl -n "$NS" get svc web -o jsonpath='{.spec.clusterIP}')/"
  run curl -sS --max-time 2 "$URL"
  ok "web v1 ($WEB_FIRST) answers through its ClusterIP and kube-proxy, from real pods"

  ANSWERS="$STATE/answers.jsonl"
  STOP="$STATE/traffic.stop"
  rm -f "$ANSWERS" "$STOP"
  # Steady requests (bench/traffic.py: 50 a second, each on a new connection, at most 10
  # minutes) for the rest of the chapter; one line a second counts them, live: sent, failed, and
  # the answers by version. Every request is kept in $ANSWERS.
  (cd "$ROOT" && exec "$PY" -m bench.traffic "$URL" --rate 50 --seconds 600 --out "$ANSWERS" \
     --until "$STOP") > >(sed -u "s/^/    ${dim}requests:${plain} /") 2>>"$STATE/traffic.log" &
  WATCHER=$!
  at "steady requests to web's ClusterIP: 50 a second, counted live below (sent, failed, answers by version)"
  web_release "$WEB2" CRASH_ON_START=1 | kubectl apply -f - >/dev/null
  at "spec.template changed: v2 with CRASH_ON_START=1, whose process exits as it starts (for real)"
  permafrost status web -n "$NS" --watch --timeout 120 | sed 's/^/    /' || true
  [ "$(web_status phase)" = RolledBack ] || fail "the crashing v2 was not rolled back ($(web_status phase))"
  ok "the crashing v2 was rolled back ($(kubectl -n "$NS" get grel web -o jsonpath='{.status.conditions[?(@.type=="RolledBack")].reason}')): web v1 kept serving"
  web_release "$WEB2" | kubectl apply -f - >/dev/null
  at "spec.template changed: a good v2"
  permafrost status web -n "$NS" --watch --timeout 120 | sed 's/^/    /' || true
  [ "$(web_status phase)" = Stable ] && [ "$(web_status stableRevision)" != "$WEB_FIRST" ] \
    || fail "the good v2 was not promoted ($(web_status phase))"
  # Until v1's pods are gone: what their shutdown does to requests is counted too.
  for _ in $(seq 1 60); do
    [ -z "$(kubectl -n "$NS" get pods -l "permafrost.dev/revision=$WEB_FIRST" -o name)" ] && break
    sleep 0.5
  done
  sleep 1
  touch "$STOP"
  wait "$WATCHER" 2>/dev/null || true
  WATCHER=
  [ -s "$ANSWERS" ] || fail "no request was recorded (see $STATE/traffic.log)"
  WEB_SECOND=$(web_status stableRevision)
  PROMOTED=$(kubectl -n "$NS" get grel web -o jsonpath="{.status.revisions[?(@.hash==\"$WEB_SECOND\")].promotedAt}")
  # NB: v2 is verified from its promotion on (promotedAt, whole seconds): an answer of v2 sent
  # before that would be an answer from a revision that was not verified.
  read -r TOTAL FAILED VERSIONS EARLY < <("$PY" - "$ANSWERS" "$PROMOTED" <<'PY'
import datetime, json, sys
samples = [json.loads(line) for line in open(sys.argv[1])]
promoted = datetime.datetime.fromisoformat(sys.argv[2].replace("Z", "+00:00")).timestamp()
failed = sum(not (s["status"] and 200 <= s["status"] < 300) for s in samples)
versions = sorted({s["version"] for s in samples if s["status"] == 200})
early = sum(s["version"] == "v2" and s["sent"] < promoted for s in samples)
print(len(samples), failed, ",".join(versions), early)
PY
)
  [ "$FAILED" = 0 ] || fail "$FAILED of $TOTAL requests failed during the rollouts (see $ANSWERS)"
  [ "$VERSIONS" = "v1,v2" ] || fail "requests were answered by: $VERSIONS (see $ANSWERS)"
  [ "$EARLY" = 0 ] || fail "$EARLY requests were answered by v2 before it was verified (see $ANSWERS)"
  ok "$TOTAL requests during both rollouts: 0 failed; answered by v1, then by v2 once it was verified"
else
  chapter 5 "Real containers: not on this machine"
  at "no real node here ($("$ROOT/hack/cluster.sh" real-node)): every pod above was simulated by kwok; no container ran and no request was served"
fi

chapter 6 "What happened: permafrost status and permafrost history"
run permafrost status -n "$NS"
run permafrost history checkout -n "$NS"
ok "the story is over: v2 ($SECOND) serves, v3 ($THIRD) is kept scaled to 0 for inspection"

if [ "${DEMO_NONINTERACTIVE:-0}" = 1 ]; then
  at "DEMO_NONINTERACTIVE=1: stopping the demo's operator"
  exit 0
fi
# NB: with the real node, the cluster lives in its network namespace: so must the commands.
shell_hint=""
if [ -n "$(ip netns identify $$ 2>/dev/null)" ]; then
  shell_hint="  make shell                                      # first: a shell where the cluster is (its network namespace)
"
fi
cat <<EOF

${bold}The cluster and the operator keep running.${plain} Try:
${shell_hint}  eval "\$(hack/cluster.sh env)"                  # KUBECONFIG, and the built kubectl first on PATH
  .venv/bin/permafrost status -A                  # every release, and why one is not Stable
  .venv/bin/permafrost history checkout -n $NS    # revisions, who changed what, the timeline
  .venv/bin/permafrost rollback checkout -n $NS --to $FIRST --watch   # back to v1, verified first
  kubectl -n $NS set image deploy/checkout-$SECOND web=x@sha256:$(printf '0%.0s' {1..64})   # denied
  # fix forward: drop the never-ready annotation (a new revision), then change the config:
  kubectl -n $NS patch grel checkout --type json -p '[{"op":"remove","path":"/spec/template/metadata/annotations"}]'
  .venv/bin/permafrost status checkout -n $NS --watch
  kubectl -n $NS patch configmap checkout-config -p '{"data":{"PAYMENT_MODE":"live"}}'   # a new revision too
  tail -f $LOG   # the operator's log
make demo-down stops the operator, removes its webhook configuration and stops the cluster.
EOF
