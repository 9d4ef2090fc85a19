"""Real containers on the real worker node: images pulled by digest from the local registry,
traffic through kube-proxy, ``kubectl logs`` and ``exec``, and a GuardedRelease whose real pods
pass real readiness probes, or really crash and are rolled back.

The tests run in the node's network namespace (``make test`` puts them there), so they reach
ClusterIPs as any process on a node would. They skip, saying why, where the node cannot run.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from conftest import Background, Operator, release, status, wait_phase
from k8s_harness import Cluster, RealNode, condition, wait_for

pytestmark = pytest.mark.real_node

PROBE = {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}


def http_get(url: str, *, timeout: float = 3) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One GET: (status, headers, JSON body); a connection error raises."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"{}")


def container(image: str, **env: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "app", "image": image, "readinessProbe": PROBE}
    if env:
        spec["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return spec


def cluster_ip(cluster: Cluster, namespace: str, service: str) -> str:
    ip: str = cluster.get("service", service, namespace=namespace)["spec"]["clusterIP"]
    return ip


class Traffic(Background):
    """Steady GETs to a URL in the background (every ``interval`` s, at most ``limit`` requests):
    per request, the version that answered, or the error."""

    def __init__(self, url: str, *, interval: float = 0.1, limit: int = 3000) -> None:
        super().__init__()
        self.url, self.interval, self.limit = url, interval, limit
        self.answers: list[str] = []
        self.failures: list[str] = []

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.answers) + len(self.failures) < self.limit:
            try:
                code, _, body = http_get(self.url, timeout=2)
                if code == 200:
                    self.answers.append(body["version"])
                else:
                    self.failures.append(f"HTTP {code}")
            except (OSError, ValueError) as error:
                self.failures.append(repr(error))
            self._stop.wait(self.interval)


def test_the_demo_image_pulled_by_digest_serves_through_a_cluster_ip_service(
    cluster: Cluster, namespace: str, real_node: RealNode, demo_images: dict[str, str]
) -> None:
    image = demo_images["v1"]
    pod_spec = real_node.schedule({"containers": [container(image)]})
    cluster.apply(
        [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
            },
        ],
        namespace=namespace,
    )
    cluster.kubectl(
        "rollout", "status", "deployment/web", "--timeout=90s", namespace=namespace, timeout=120
    )

    pods = cluster.get("pods", namespace=namespace, selector="app=web")["items"]
    names = {pod["metadata"]["name"] for pod in pods}
    assert len(pods) == 2
    digest = image.split("@", 1)[1]
    for pod in pods:
        assert pod["spec"]["nodeName"] == real_node.name
        (state,) = pod["status"]["containerStatuses"]
        assert state["ready"] is True
        assert "running" in state["state"]
        # What containerd pulled and runs: the pinned image, from the node's registry.
        assert state["imageID"].endswith(digest), state["imageID"]

    # Through kube-proxy: the ClusterIP answers, from both pods (its rules spread the requests).
    # NB: Ready is not yet routed: kube-proxy follows the EndpointSlices a moment later.
    url = f"http://{cluster_ip(cluster, namespace, 'web')}/"
    answers = [http_get(url) for _ in range(30)]
    deadline = time.monotonic() + 30
    while {body["hostname"] for _, _, body in answers} != names and time.monotonic() < deadline:
        answers.append(http_get(url))
        time.sleep(0.1)
    assert {code for code, _, _ in answers} == {200}
    assert {body["version"] for _, _, body in answers} == {"v1"}
    assert {headers["X-App-Version"] for _, headers, _ in answers} == {"v1"}
    assert {body["hostname"] for _, _, body in answers} == names

    some_pod = sorted(names)[0]
    logs = cluster.kubectl("logs", some_pod, namespace=namespace).stdout
    assert "msg=listening" in logs
    assert "version=v1" in logs

    # exec runs in the container; from inside the pod network, the Service answers too.
    inside = cluster.kubectl("exec", some_pod, "--", "/app", "get", url, namespace=namespace)
    assert json.loads(inside.stdout)["version"] == "v1"
    # Pods reach nothing beyond the node's network namespace.
    outside = cluster.kubectl(
        "exec", some_pod, "--", "/app", "get", "http://192.0.2.1/", namespace=namespace, check=False
    )
    assert outside.returncode != 0
    assert "unreachable" in outside.stderr


def test_a_guarded_release_rolls_out_on_the_real_node_and_a_crashing_one_rolls_back(
    crds: Cluster,
    namespace: str,
    operator: Operator,
    real_node: RealNode,
    demo_images: dict[str, str],
) -> None:
    def web(image: str, **env: str) -> dict[str, Any]:
        manifest = release("web", service="web", deadline=30, min_ready=2, scale_down_delay=2)
        template = manifest["spec"]["template"]
        template["spec"] = real_node.schedule({"containers": [container(image, **env)]})
        return manifest

    crds.apply(web(demo_images["v1"]), namespace=namespace)
    stable = wait_phase(crds, namespace, "web", "Stable", timeout=90)["stableRevision"]
    url = f"http://{cluster_ip(crds, namespace, 'web')}/"
    assert http_get(url)[2]["version"] == "v1"

    # v2 whose process really exits at start: restarts, CrashLoopBackOff, an automatic rollback.
    with Traffic(url) as traffic:
        crds.apply(web(demo_images["v2"], CRASH_ON_START="1"), namespace=namespace)
        st = wait_phase(crds, namespace, "web", "RolledBack", timeout=90)
        failed = st["desiredRevision"]
        time.sleep(1)  # a few more requests after the rollback
    assert failed != stable
    assert st["stableRevision"] == stable
    rolled_back = condition({"status": st}, "RolledBack")
    assert rolled_back is not None
    assert rolled_back["reason"] == "CrashLoop", rolled_back
    crashed = crds.get("pods", namespace=namespace, selector=f"permafrost.dev/revision={failed}")[
        "items"
    ]
    restarts = [p["status"]["containerStatuses"][0]["restartCount"] for p in crashed]
    assert crashed == [] or max(restarts) >= 1  # scaled down already, or seen crashing

    # Every request was answered, and only by the verified revision.
    assert traffic.failures == []
    assert len(traffic.answers) >= 20
    assert set(traffic.answers) == {"v1"}

    # And the release recovers: a good v2 is verified, then promoted.
    crds.apply(web(demo_images["v2"]), namespace=namespace)
    wait_for(
        lambda: (
            (s := status(crds, namespace, "web")).get("phase") == "Stable"
            and s.get("stableRevision") not in (stable, failed)
        ),
        timeout=90,
        interval=0.5,
        what="a good v2 promoted",
    )
    # NB: the status says so the moment the Service's selector is switched; kube-proxy follows
    # its EndpointSlices a moment later (docs/benchmarks.md: the old revision's last answers
    # come up to 0.2 s after the switch, and v1 keeps running until no route leads to it).
    wait_for(
        lambda: http_get(url)[2]["version"] == "v2",
        timeout=15,
        interval=0.2,
        what="v2 to answer through the ClusterIP",
    )


def test_the_first_release_serves_nothing_until_its_revision_is_verified(
    crds: Cluster,
    namespace: str,
    operator: Operator,
    real_node: RealNode,
    demo_images: dict[str, str],
) -> None:
    """A Service the user made (selector ``app: web``, which matches every revision's pods) is
    taken over before the first revision's pods exist: its endpoints stay empty while the
    revision's pods are Ready but not yet verified, then hold only the verified pods."""
    crds.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        namespace=namespace,
    )
    manifest = release("web", service="web", deadline=60, min_ready=4)
    manifest["spec"]["template"]["spec"] = real_node.schedule(
        {"containers": [container(demo_images["v1"])]}
    )
    crds.apply(manifest, namespace=namespace)

    # Each sample, from one read: (the revision the Service selects, IPs of Ready pods, IPs the
    # Service's endpoints hold, the stable revision in the status).
    # NB: judged by the Service's selector, not the status: the operator routes the Service
    # before it writes the status that names the new stable revision.
    samples: list[tuple[str | None, set[str], set[str], str | None]] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        items = json.loads(
            crds.kubectl(
                "get", "guardedrelease,service,pods,endpointslices", "-o", "json",
                namespace=namespace,
            ).stdout
        )["items"]  # fmt: skip
        grel = next(i for i in items if i["kind"] == "GuardedRelease")
        svc = next(i for i in items if i["kind"] == "Service")
        selected = (svc["spec"].get("selector") or {}).get("permafrost.dev/revision")
        # NB: one command, but a list per kind, in order: the Service read before the
        # EndpointSlices. Read it again after them: a switch between the two reads makes the
        # sample one of the routed revision, not of "none".
        again = crds.get("service", "web", namespace=namespace)["spec"].get("selector") or {}
        if again.get("permafrost.dev/revision") != selected:
            selected = again.get("permafrost.dev/revision")
        stable = (grel.get("status") or {}).get("stableRevision")
        ready = {
            p["status"]["podIP"]
            for p in items
            if p["kind"] == "Pod"
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions", [])
            )
        }
        endpoints = {
            address
            for s in items
            if s["kind"] == "EndpointSlice"
            and s["metadata"]["labels"].get("kubernetes.io/service-name") == "web"
            for e in s.get("endpoints") or []
            if (e.get("conditions") or {}).get("ready")
            for address in e["addresses"]
        }
        samples.append((selected, ready, endpoints, stable))
        if stable and endpoints:
            break
        time.sleep(0.1)

    stable = samples[-1][3]
    assert stable is not None
    # The user's selector (no revision in it) lasted only until the release took the Service
    # over, before any of its pods existed; then the Service selected no pod, then the revision
    # that was verified.
    before = [(ready, endpoints) for selected, ready, endpoints, _ in samples if selected is None]
    assert all(not ready and not endpoints for ready, endpoints in before), before
    assert {selected for selected, *_ in samples} <= {None, "none", stable}, samples
    unverified = [
        (ready, endpoints) for selected, ready, endpoints, _ in samples if selected == "none"
    ]
    # The window was seen: pods Ready, not yet verified...
    assert any(ready for ready, _ in unverified), samples
    # ...and no endpoint while nothing was verified.
    assert all(not endpoints for _, endpoints in unverified), unverified
    _, ready, endpoints, _ = samples[-1]
    assert endpoints
    assert endpoints <= ready
    # The user's own key stays beside Permafrost's: the routed pods carry it (docs/gitops.md).
    selector = crds.get("service", "web", namespace=namespace)["spec"]["selector"]
    assert selector == {
        "app": "web",
        "permafrost.dev/release": "web",
        "permafrost.dev/revision": stable,
    }
    assert http_get(f"http://{cluster_ip(crds, namespace, 'web')}/")[2]["version"] == "v1"
