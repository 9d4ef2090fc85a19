"""Promotion gates on the real node: an HTTP gate judges a revision by its answers.

The demo app (examples/app) runs as real containers. A revision that passes its readiness probe
but answers 20% of requests with 500s (``ERROR_RATE=0.2``) is failed by its HTTP gate and rolled
back: it never takes traffic. A healthy revision passes its gates and is promoted. The gates
reach the candidate through the preview Service, which selects it only while it is verified;
the release's Service never selects a revision that has not passed its gates.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

import pytest

import prometheus_harness
from conftest import Background, Operator, release, status, wait_phase
from k8s_harness import Cluster, KubectlError, RealNode, condition, wait_for

NAME = "gated"
PREVIEW = f"{NAME}-preview"
PROBE = {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}
# NB: one replica, so the gate's requests all reach one process, whose ERROR_RATE is exact:
# with 0.2 the 5th request is the first 500.
GATE = {
    "name": "smoke",
    "http": {"port": "http", "path": "/", "expectedStatus": 200, "bodyRegex": '"version"'},
    "count": 6,
    "intervalSeconds": 1,
    "failureLimit": 0,
    # NB: the first request may come a moment before kube-proxy routes the preview's new
    # endpoints: that answer is unknown (an Error), never a success, and one is tolerated.
    "inconclusiveLimit": 2,
}


def manifest(real_node: RealNode, image: str, **env: str) -> dict[str, Any]:
    body = release(NAME, replicas=1, service=NAME, deadline=60, min_ready=1, scale_down_delay=2)
    body["spec"]["service"]["preview"] = True
    body["spec"]["rollout"]["gates"] = [GATE]
    app: dict[str, Any] = {"name": "app", "image": image, "readinessProbe": PROBE}
    if env:
        app["env"] = [{"name": k, "value": v} for k, v in env.items()]
    body["spec"]["template"]["spec"] = real_node.schedule({"containers": [app]})
    return body


class SelectorLog(Background):
    """Every revision a Service's selector named while the block ran (sampled)."""

    def __init__(self, cluster: Cluster, namespace: str, service: str) -> None:
        super().__init__()
        self.cluster, self.namespace, self.service = cluster, namespace, service
        self.seen: list[str] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            svc = self.cluster.get("service", self.service, namespace=self.namespace)
            revision = ((svc or {}).get("spec", {}).get("selector") or {}).get(
                "permafrost.dev/revision"
            )
            if revision and (not self.seen or self.seen[-1] != revision):
                self.seen.append(revision)
            self._stop.wait(0.2)


def wait_scaled_down(crds: Cluster, namespace: str, revision: str) -> None:
    """Until no pod of ``revision`` is left."""

    def scaled_down() -> bool:
        pods = crds.get("pods", namespace=namespace, selector=f"permafrost.dev/revision={revision}")
        return not pods["items"]

    wait_for(scaled_down, timeout=60, interval=0.5, what=f"revision {revision} scaled to 0")


def gates_of(st: Mapping[str, Any], revision: str) -> dict[str, Any]:
    record = next(r for r in st.get("revisions", []) if r["hash"] == revision)
    return {g["name"]: g for g in record.get("gates", [])}


def permafrost(*args: str, env: Mapping[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "permafrost", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout


@pytest.mark.real_node
def test_an_http_gate_fails_a_ready_revision_that_answers_500s_and_passes_a_healthy_one(
    crds: Cluster,
    namespace: str,
    operator: Operator,
    real_node: RealNode,
    demo_images: dict[str, str],
) -> None:
    v1, v2 = demo_images["v1"], demo_images["v2"]

    # 1. v1, healthy: its gate passes through the preview, then it is promoted.
    with SelectorLog(crds, namespace, PREVIEW) as preview_log:
        crds.apply(manifest(real_node, v1), namespace=namespace)
        st = wait_for(
            lambda: (s := status(crds, namespace, NAME)).get("phase") == "Stable" and s,
            timeout=120,
            interval=0.5,
            what="v1 promoted after its gate",
        )
    first = st["stableRevision"]
    smoke = gates_of(st, first)["smoke"]
    assert smoke["verdict"] == "Passed", smoke
    assert smoke["successful"] >= 1, smoke
    assert smoke["failed"] == 0, smoke
    assert smoke["successful"] + smoke["inconclusive"] + smoke["errors"] >= GATE["count"], smoke
    assert any(m["phase"] == "Successful" and m["value"] == "200" for m in smoke["measurements"])
    # the preview selected the candidate while it was verified, and no pod after
    assert first in preview_log.seen, preview_log.seen
    selector = crds.get("service", PREVIEW, namespace=namespace)["spec"]["selector"]
    assert selector["permafrost.dev/revision"] == "none", selector

    # 2. v2 answering 20% 500s while Ready: failed by its gate, rolled back, never promoted.
    with (
        SelectorLog(crds, namespace, NAME) as service_log,
        SelectorLog(crds, namespace, PREVIEW) as preview_log,
    ):
        crds.apply(
            manifest(real_node, v2, APP_VERSION="v2-errors", ERROR_RATE="0.2"),
            namespace=namespace,
        )
        st = wait_for(
            lambda: (s := status(crds, namespace, NAME)).get("phase") == "RolledBack" and s,
            timeout=120,
            interval=0.5,
            what="v2 rolled back by its gate",
        )
    bad = st["desiredRevision"]
    assert bad != first
    assert st["stableRevision"] == first, st
    rolled_back = condition({"status": st}, "RolledBack") or {}
    assert rolled_back.get("reason") == "GateFailed", rolled_back
    record = next(r for r in st["revisions"] if r["hash"] == bad)
    assert record["outcome"] == "Failed", record
    assert not record.get("promotedAt"), record
    smoke = gates_of(st, bad)["smoke"]
    assert smoke["verdict"] == "Failed", smoke
    assert any(m["phase"] == "Failed" and m["value"] == "500" for m in smoke["measurements"])
    assert service_log.seen == [first], service_log.seen  # the Service never left v1
    assert bad in preview_log.seen, preview_log.seen

    wait_scaled_down(crds, namespace, bad)

    # 3. What people see: the gate's measurements in status and history.
    shown = permafrost("status", NAME, "-n", namespace, env=crds.env)
    assert "Promotion gates" in shown, shown
    assert "smoke" in shown, shown
    assert "Failed" in shown, shown
    history = permafrost("history", NAME, "-n", namespace, env=crds.env)
    assert "GateFailed" in history, history
    assert "GatePassed" in history, history
    # the preview reaches unverified pods by design: it is never reported as unguarded
    assert "UnguardedService" not in history, history
    document = json.loads(permafrost("history", NAME, "-n", namespace, "-o", "json", env=crds.env))
    gates = {r["hash"]: r.get("gates") for r in document["revisions"]}
    assert gates[bad], gates
    assert gates[bad][0]["verdict"] == "Failed", gates


# Nothing listens there: a Prometheus that is down.
DOWN = "http://127.0.0.1:9"


def prometheus_gate(**fields: Any) -> dict[str, Any]:
    return {
        "name": "errors",
        "prometheus": {
            "address": DOWN,
            "query": 'sum(rate(demo_http_requests_total{code="500"}[1m]))',
            "successCondition": "result < 0.05",
            "timeoutSeconds": 1,
        },
        "count": 3,
        "intervalSeconds": 1,
        **fields,
    }


def test_a_prometheus_that_is_down_holds_the_revision_and_the_deadline_fails_it(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    """Pods on the fake nodes: no real node needed. Unknown is never healthy: every
    measurement of a Prometheus that is down is Inconclusive, the revision is held (never
    promoted, the Service stays on the stable revision), then failed at its progress deadline."""
    name = "metrics"
    crds.apply(release(name, service=name, deadline=25), namespace=namespace)
    first = wait_phase(crds, namespace, name, "Stable")["stableRevision"]

    body = release(name, service=name, deadline=25, digest="@sha256:" + "4" * 64)
    body["spec"]["rollout"]["gates"] = [prometheus_gate()]
    crds.apply(body, namespace=namespace)
    st = wait_phase(crds, namespace, name, "Held", timeout=60)
    held = st["desiredRevision"]
    progressing = condition({"status": st}, "Progressing") or {}
    assert progressing.get("reason") == "GateInconclusive", progressing
    assert "unknown is never healthy" in progressing.get("message", ""), progressing
    errors = gates_of(st, held)["errors"]
    assert errors["verdict"] == "Inconclusive", errors
    assert errors["successful"] == 0, errors
    assert errors["measurements"][0]["reason"] == "PrometheusUnreachable", errors
    assert st["stableRevision"] == first, st
    selector = crds.get("service", name, namespace=namespace)["spec"]["selector"]
    assert selector["permafrost.dev/revision"] == first, selector

    st = wait_phase(crds, namespace, name, "RolledBack", timeout=60)
    degraded = condition({"status": st}, "Degraded") or {}
    assert degraded.get("reason") == "GatesNotPassed", degraded
    assert st["stableRevision"] == first, st


def test_a_success_condition_that_does_not_compile_holds_as_misconfigured(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    name = "badcel"
    body = release(name, deadline=60)
    body["spec"]["rollout"]["gates"] = [
        prometheus_gate(
            prometheus={**prometheus_gate()["prometheus"], "successCondition": "result <"}
        )
    ]
    crds.apply(body, namespace=namespace)
    st = wait_phase(crds, namespace, name, "Held", timeout=60)
    progressing = condition({"status": st}, "Progressing") or {}
    assert progressing.get("reason") == "GateMisconfigured", progressing
    assert "does not compile" in progressing.get("message", ""), progressing
    assert st.get("stableRevision") is None, st
    events = crds.get("events", namespace=namespace)["items"]
    assert any(e.get("reason") == "GateMisconfigured" for e in events), events


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        ({"name": "g", "http": {}, "count": 0}, "count"),
        ({"name": "g", "http": {}, "intervalSeconds": 0}, "intervalSeconds"),
        ({"name": "g", "http": {}, "failureLimit": -1}, "failureLimit"),
        ({"name": "g"}, "exactly one of http, prometheus and job"),
        ({**prometheus_gate(), "http": {}}, "exactly one of http, prometheus and job"),
        (
            {"name": "g", "job": {"template": {}, "activeDeadlineSeconds": 60}},
            "activeDeadlineSeconds, must be less than progressDeadlineSeconds",
        ),
        ({"name": "g", "http": {}, "count": 30, "intervalSeconds": 2}, "progressDeadlineSeconds"),
    ],
)
def test_the_crd_refuses_a_gate_that_cannot_work(
    crds: Cluster, namespace: str, gate: dict[str, Any], message: str
) -> None:
    body = release("refused", deadline=60)
    body["spec"]["rollout"]["gates"] = [gate]
    with pytest.raises(KubectlError) as refused:
        crds.apply(body, namespace=namespace)
    assert message in str(refused.value), refused.value


@pytest.mark.real_node
def test_analysis_after_promotion_switches_traffic_back_when_a_gate_fails(
    crds: Cluster,
    namespace: str,
    operator: Operator,
    real_node: RealNode,
    demo_images: dict[str, str],
) -> None:
    """v2 answers every 5th request with a 500: its three gate requests before promotion all
    succeed, so it is promoted; the same gate, run again after promotion through the release's
    Service (v1 kept up), gets the 5th request's 500 and switches traffic back to v1 at once."""
    v1, v2 = demo_images["v1"], demo_images["v2"]

    def analysed(image: str, **env: str) -> dict[str, Any]:
        body = manifest(real_node, image, **env)
        body["spec"]["rollout"]["gates"] = [{**GATE, "count": 3}]
        body["spec"]["rollout"]["postPromotionSeconds"] = 40
        return body

    crds.apply(analysed(v1), namespace=namespace)
    first = wait_for(
        lambda: (s := status(crds, namespace, NAME)).get("phase") == "Stable" and s,
        timeout=120,
        interval=0.5,
        what="v1 promoted",
    )["stableRevision"]

    with SelectorLog(crds, namespace, NAME) as service_log:
        crds.apply(analysed(v2, APP_VERSION="v2-errors", ERROR_RATE="0.2"), namespace=namespace)
        st = wait_for(
            lambda: (s := status(crds, namespace, NAME)).get("phase") == "RolledBack" and s,
            timeout=120,
            interval=0.5,
            what="v2 switched back by its analysis after promotion",
        )
    bad = st["desiredRevision"]
    assert st["stableRevision"] == first, st
    assert service_log.seen == [first, bad, first], service_log.seen
    rolled_back = condition({"status": st}, "RolledBack") or {}
    assert rolled_back.get("reason") == "AnalysisFailed", rolled_back
    record = next(r for r in st["revisions"] if r["hash"] == bad)
    assert record["outcome"] == "Failed", record
    assert record.get("promotedAt"), record  # it did take traffic, then lost it
    assert gates_of(st, bad)["smoke"]["verdict"] == "Passed", record
    analysis = {g["name"]: g for g in record["analysis"]}["smoke"]
    assert analysis["verdict"] == "Failed", analysis
    failing = next(m for m in analysis["measurements"] if m["phase"] == "Failed")
    assert failing["value"] == "500", analysis
    from permafrost.releases.conditions import parse_timestamp

    back = next(r for r in st["revisions"] if r["hash"] == first)
    switched = parse_timestamp(back["promotedAt"]) - parse_timestamp(failing["at"])
    print(
        f"\n[analysis] traffic back on {first} {switched.total_seconds():.1f}s after the failing "
        f"measurement",
        file=sys.stderr,
    )
    # promotedAt has whole seconds: the switch is within the same or the next second
    assert switched.total_seconds() <= 2, (failing, back)

    wait_scaled_down(crds, namespace, bad)


# The error ratio of the revision measured, from its own pods' counters ({{revision}} is the
# revision's hash); before two scrapes of it there is no rate: NoData, an Inconclusive
# measurement, never a success.
ERROR_RATIO = (
    'sum(rate(demo_http_requests_total{revision="{{revision}}",code="500"}[10s]))'
    ' / sum(rate(demo_http_requests_total{revision="{{revision}}"}[10s]))'
)


class Load(Background):
    """Requests to a Service's cluster IP, about 20 a second, for the duration of the block
    (the candidate's traffic, as a load tester sends it through the preview; or the users',
    through the release's Service). ``errors``: when each 500 came (monotonic seconds)."""

    def __init__(self, cluster: Cluster, namespace: str, service: str) -> None:
        super().__init__()
        self.cluster, self.namespace, self.service = cluster, namespace, service
        self.codes: dict[int, int] = {}
        self.errors: list[float] = []
        self.unanswered: list[float] = []  # refused, reset, timed out: when

    def _run(self) -> None:
        import urllib.error
        import urllib.request

        while not self._stop.is_set():
            svc = self.cluster.get("service", self.service, namespace=self.namespace) or {}
            ip = (svc.get("spec") or {}).get("clusterIP")
            if ip:
                try:
                    with urllib.request.urlopen(f"http://{ip}/", timeout=2) as answer:
                        code = answer.status
                except urllib.error.HTTPError as exc:
                    code = exc.code
                except OSError:
                    code = 0
                self.codes[code] = self.codes.get(code, 0) + 1
                if code == 500:
                    self.errors.append(time.monotonic())
                elif code == 0:
                    self.unanswered.append(time.monotonic())
            self._stop.wait(0.05)


@pytest.mark.real_node
def test_a_prometheus_gate_fails_a_revision_whose_own_error_ratio_is_too_high(
    crds: Cluster,
    namespace: str,
    operator: Operator,
    real_node: RealNode,
    demo_images: dict[str, str],
    prometheus: str,
) -> None:
    """A real Prometheus scrapes the real pods; load goes through the preview Service. v1's
    error ratio is 0: its gate passes and it is promoted. v2 answers 20% 500s while Ready: its
    own ratio (its pods' series only, named by ``{{revision}}``) is about 0.2, the gate fails,
    it is rolled back and never takes traffic."""
    v1, v2 = demo_images["v1"], demo_images["v2"]
    gate = {
        "name": "errors",
        "prometheus": {
            "address": prometheus,
            "query": ERROR_RATIO,
            "successCondition": "result < 0.05",
            "timeoutSeconds": 2,
        },
        "count": 6,
        "intervalSeconds": 3,
        "failureLimit": 0,
        # NB: the first measurements may come before Prometheus has two scrapes of the pod.
        "inconclusiveLimit": 4,
    }

    def measured(image: str, **env: str) -> dict[str, Any]:
        body = manifest(real_node, image, **env)
        body["spec"]["rollout"]["progressDeadlineSeconds"] = 90
        body["spec"]["rollout"]["gates"] = [gate]
        body["spec"]["template"]["metadata"]["annotations"] = dict(
            prometheus_harness.SCRAPE_ANNOTATIONS
        )
        return body

    with Load(crds, namespace, PREVIEW):
        crds.apply(measured(v1), namespace=namespace)
        st = wait_for(
            lambda: (s := status(crds, namespace, NAME)).get("phase") == "Stable" and s,
            timeout=150,
            interval=0.5,
            what="v1 promoted after its Prometheus gate",
        )
    first = st["stableRevision"]
    errors = gates_of(st, first)["errors"]
    assert errors["verdict"] == "Passed", errors
    assert errors["failed"] == 0, errors
    passed = [m for m in errors["measurements"] if m["phase"] == "Successful"]
    assert passed, errors
    assert all(float(m["value"]) < 0.05 for m in passed), errors

    with SelectorLog(crds, namespace, NAME) as service_log, Load(crds, namespace, PREVIEW) as load:
        crds.apply(measured(v2, APP_VERSION="v2-errors", ERROR_RATE="0.2"), namespace=namespace)
        st = wait_for(
            lambda: (s := status(crds, namespace, NAME)).get("phase") == "RolledBack" and s,
            timeout=150,
            interval=0.5,
            what="v2 rolled back by its Prometheus gate",
        )
    bad = st["desiredRevision"]
    assert bad != first
    assert st["stableRevision"] == first, st
    assert service_log.seen == [first], service_log.seen  # v2 never took traffic
    assert load.codes.get(500), load.codes  # the load did reach v2's 500s through the preview
    rolled_back = condition({"status": st}, "RolledBack") or {}
    assert rolled_back.get("reason") == "GateFailed", rolled_back
    errors = gates_of(st, bad)["errors"]
    assert errors["verdict"] == "Failed", errors
    failing = next(m for m in errors["measurements"] if m["phase"] == "Failed")
    assert 0.1 < float(failing["value"]) < 0.3, failing


# The 500s a revision's own pods served in the last 30 s: 0 while it takes no traffic (the series
# exist from the start, at 0: a real measurement, not NoData), 1 or more once users get errors.
SERVED_ERRORS = 'sum(increase(demo_http_requests_total{revision="{{revision}}",code="500"}[30s]))'


@pytest.mark.real_node
def test_analysis_after_promotion_with_prometheus_switches_back_under_real_load(
    crds: Cluster,
    namespace: str,
    operator: Operator,
    real_node: RealNode,
    demo_images: dict[str, str],
    prometheus: str,
) -> None:
    """Users' load goes through the release's Service all along. v2 serves no request before its
    promotion, so its own 500s are 0 and its gate passes; promoted, it answers 20% of the users'
    requests with 500s, which the real Prometheus scrapes from its pods: the same gate, run again
    after the promotion, fails and traffic goes back to v1. The users' side of it: the time from
    the first 500 they got to the last (printed; the bound is the gate's interval plus scrapes)."""
    v1, v2 = demo_images["v1"], demo_images["v2"]
    gate = {
        "name": "served-errors",
        "prometheus": {
            "address": prometheus,
            "query": SERVED_ERRORS,
            "successCondition": "result < 1",
            "timeoutSeconds": 2,
        },
        # NB: enough measurements that the analysis outlasts the first scrapes of v2's errors.
        "count": 8,
        "intervalSeconds": 3,
        "failureLimit": 0,
        # NB: before two scrapes of a new pod there is no increase(): NoData, unknown.
        "inconclusiveLimit": 4,
    }

    def analysed(image: str, **env: str) -> dict[str, Any]:
        body = manifest(real_node, image, **env)
        body["spec"]["rollout"]["progressDeadlineSeconds"] = 90
        body["spec"]["rollout"]["gates"] = [gate]
        body["spec"]["rollout"]["postPromotionSeconds"] = 60
        body["spec"]["template"]["metadata"]["annotations"] = dict(
            prometheus_harness.SCRAPE_ANNOTATIONS
        )
        return body

    with Load(crds, namespace, NAME) as load:
        crds.apply(analysed(v1), namespace=namespace)
        first = wait_for(
            lambda: (s := status(crds, namespace, NAME)).get("phase") == "Stable" and s,
            timeout=150,
            interval=0.5,
            what="v1 promoted",
        )["stableRevision"]
        assert not load.errors, load.codes
        # NB: Stable is the Service's selector; kube-proxy routes a moment later: v1 serves once
        # the users got its first answer (before, a request may find no endpoint to answer).
        wait_for(lambda: load.codes.get(200), timeout=30, interval=0.1, what="v1's first answer")
        serving = time.monotonic()
        with SelectorLog(crds, namespace, NAME) as service_log:
            crds.apply(analysed(v2, APP_VERSION="v2-errors", ERROR_RATE="0.2"), namespace=namespace)
            st = wait_for(
                lambda: (s := status(crds, namespace, NAME)).get("phase") == "RolledBack" and s,
                timeout=180,
                interval=0.5,
                what="v2 switched back by its analysis after promotion",
            )
            # the users' requests after the switch: v1's answers only (kube-proxy may send a
            # few more to v2 for the moment it takes to follow the selector)
            observed = time.monotonic()
            time.sleep(6)
    bad = st["desiredRevision"]
    assert st["stableRevision"] == first, st
    assert service_log.seen == [first, bad, first], service_log.seen
    rolled_back = condition({"status": st}, "RolledBack") or {}
    assert rolled_back.get("reason") == "AnalysisFailed", rolled_back
    record = next(r for r in st["revisions"] if r["hash"] == bad)
    assert gates_of(st, bad)["served-errors"]["verdict"] == "Passed", record  # before promotion
    analysis = {g["name"]: g for g in record["analysis"]}["served-errors"]
    assert analysis["verdict"] == "Failed", analysis
    failing = next(m for m in analysis["measurements"] if m["phase"] == "Failed")
    assert float(failing["value"]) >= 1, failing
    assert load.errors, load.codes  # the users did get v2's 500s, then no more
    # v2 is scaled down only once the EndpointSlices dropped its pods: no request was dropped
    dropped = [round(t - serving, 1) for t in load.unanswered if t > serving]
    assert not dropped, f"requests unanswered after v1 served: {dropped} ({load.codes})"
    late = [round(t - observed, 1) for t in load.errors if t > observed + 3]
    assert not late, f"500s after the switch back: {late}"

    wait_scaled_down(crds, namespace, bad)
    exposed = load.errors[-1] - load.errors[0]
    print(
        f"\n[analysis] users got 500s for {exposed:.1f}s ({len(load.errors)} of "
        f"{sum(load.codes.values())} requests) before traffic was back on {first}",
        file=sys.stderr,
    )


# --- job gates -----------------------------------------------------------------------------------


def job_gate(image: str, *, args: list[str] | None, deadline: int = 30, **fields: Any) -> dict:
    container: dict[str, Any] = {"name": "smoke", "image": image}
    if args is not None:
        container["args"] = args
    return {
        "name": "smoke-job",
        "job": {
            "template": {"spec": {"containers": [container]}},
            "activeDeadlineSeconds": deadline,
        },
        "count": 1,
        "intervalSeconds": 1,
        **fields,
    }


@pytest.mark.real_node
def test_a_job_gate_runs_a_smoke_test_against_the_preview_and_fails_a_revision_it_rejects(
    crds: Cluster,
    namespace: str,
    operator: Operator,
    real_node: RealNode,
    demo_images: dict[str, str],
) -> None:
    """The gate's Job is the demo app's own client (``/app get URL``) run against
    ``$(PERMAFROST_TARGET_URL)``, the preview Service: v1 answers 200, the Job completes, v1 is
    promoted; v2 answers every request with a 500, the Job fails, v2 is rolled back without
    ever taking traffic; a Job that never ends (the app's server) is stopped at its deadline
    and holds its revision: unknown is never healthy."""
    v1, v2 = demo_images["v1"], demo_images["v2"]
    smoke = ["get", "$(PERMAFROST_TARGET_URL)/"]

    def gated(image: str, gate: dict[str, Any], **env: str) -> dict[str, Any]:
        body = manifest(real_node, image, **env)
        gate["job"]["template"]["spec"] = real_node.schedule(gate["job"]["template"]["spec"])
        body["spec"]["rollout"]["gates"] = [gate]
        return body

    # 1. v1: the Job completes through the preview, v1 is promoted.
    crds.apply(gated(v1, job_gate(v1, args=smoke)), namespace=namespace)
    st = wait_for(
        lambda: (s := status(crds, namespace, NAME)).get("phase") == "Stable" and s,
        timeout=120,
        interval=0.5,
        what="v1 promoted after its Job passed",
    )
    first = st["stableRevision"]
    record = gates_of(st, first)["smoke-job"]
    assert record["verdict"] == "Passed", record
    assert record["kind"] == "job", record
    (measured,) = record["measurements"]
    assert (measured["phase"], measured["reason"]) == ("Successful", "JobComplete"), measured
    jobs = crds.get("jobs", namespace=namespace, selector=f"permafrost.dev/gate-revision={first}")[
        "items"
    ]
    assert len(jobs) == 1, jobs
    (owner,) = jobs[0]["metadata"]["ownerReferences"]
    assert owner["kind"] == "Deployment", owner
    assert owner["name"].endswith(first), owner
    pods = crds.get("pods", namespace=namespace, selector=f"job-name={jobs[0]['metadata']['name']}")
    for pod in pods["items"]:  # the Job's pods are never behind the release's Service
        assert "permafrost.dev/revision" not in pod["metadata"]["labels"], pod["metadata"]

    # 2. v2 answers 500s: the Job fails, v2 is rolled back, the Service never leaves v1.
    with SelectorLog(crds, namespace, NAME) as service_log:
        crds.apply(
            gated(v2, job_gate(v2, args=smoke), APP_VERSION="v2-errors", ERROR_RATE="1"),
            namespace=namespace,
        )
        st = wait_for(
            lambda: (s := status(crds, namespace, NAME)).get("phase") == "RolledBack" and s,
            timeout=120,
            interval=0.5,
            what="v2 rolled back by its Job",
        )
    bad = st["desiredRevision"]
    assert st["stableRevision"] == first, st
    rolled_back = condition({"status": st}, "RolledBack") or {}
    assert rolled_back.get("reason") == "GateFailed", rolled_back
    record = gates_of(st, bad)["smoke-job"]
    assert record["verdict"] == "Failed", record
    assert record["measurements"][-1]["reason"] == "JobFailed", record
    assert service_log.seen == [first], service_log.seen

    # 3. A Job that never ends: stopped at its deadline, the revision held, never promoted.
    crds.apply(
        gated(v2, job_gate(v2, args=None, deadline=5), APP_VERSION="v2-hangs"),
        namespace=namespace,
    )
    st = wait_phase(crds, namespace, NAME, "Held", timeout=90)
    held = st["desiredRevision"]
    progressing = condition({"status": st}, "Progressing") or {}
    assert progressing.get("reason") == "GateInconclusive", progressing
    record = gates_of(st, held)["smoke-job"]
    assert record["measurements"][-1]["reason"] == "JobDeadlineExceeded", record
    assert record["successful"] == 0, record
    assert st["stableRevision"] == first, st


def test_a_job_the_apiserver_refuses_holds_the_revision_as_misconfigured(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    """Pods on the fake nodes: the Job is never created (a container name the apiserver
    refuses), its refusal is the gate's verdict, the revision is held, never promoted."""
    name = "badjob"
    body = release(name, deadline=60)
    gate = job_gate("127.0.0.1:5000/smoke@sha256:" + "5" * 64, args=["true"])
    gate["job"]["template"]["spec"]["containers"][0]["name"] = "Not_A_Name"
    body["spec"]["rollout"]["gates"] = [gate]
    crds.apply(body, namespace=namespace)
    st = wait_phase(crds, namespace, name, "Held", timeout=60)
    progressing = condition({"status": st}, "Progressing") or {}
    assert progressing.get("reason") == "GateMisconfigured", progressing
    assert "refused Job" in progressing.get("message", ""), progressing
    assert "Not_A_Name" in progressing.get("message", ""), progressing
    assert st.get("stableRevision") is None, st
    events = crds.get("events", namespace=namespace)["items"]
    assert any(e.get("reason") == "GateMisconfigured" for e in events), events
