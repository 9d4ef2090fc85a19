"""Zero downtime, with real traffic: every request answered, and only by verified revisions.

One GuardedRelease of the demo app on the real node goes through every kind of change while
steady requests (``bench.traffic.Load``: each on a new connection, through the Service's
ClusterIP and kube-proxy) run throughout: a promotion, a crashing revision, a revision that stops
being Ready after it was Ready, a ConfigMap change, the operator SIGKILLed mid-promotion, and a
manual rollback. Each window lasts until the revision that stopped serving has no pod left, so
what its pods' termination does to requests is counted too.

"Verified" is judged from the release's status, independently of the Service: an answer is from
a verified revision if that revision (the pod that answered says which) was the stable one when
the window began, or was promoted (``status.revisions[].promotedAt``, whole seconds) before the
answer was sent. No timing is asserted here; docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from bench import traffic

from conftest import Operator, release, status
from k8s_harness import ROOT, Cluster, RealNode, condition, wait_for

pytestmark = pytest.mark.real_node

RATE = 200.0
NAME = "web"
CONFIG = "web-config"
# NB: one failed probe makes a pod unready at once, so the revision that stops being Ready does
# so well within its verification (minReadySeconds).
PROBE = {
    "httpGet": {"path": "/healthz", "port": 8080},
    "periodSeconds": 1,
    "failureThreshold": 1,
}


def manifest(real_node: RealNode, image: str, **env: str) -> dict[str, Any]:
    body = release(
        NAME,
        service=NAME,
        deadline=40,
        min_ready=4,
        scale_down_delay=2,
        history=6,
        config=[{"kind": "ConfigMap", "name": CONFIG}],
    )
    app: dict[str, Any] = {
        "name": "app",
        "image": image,
        "readinessProbe": PROBE,
        "envFrom": [{"configMapRef": {"name": CONFIG}}],
    }
    if env:
        app["env"] = [{"name": k, "value": v} for k, v in env.items()]
    body["spec"]["template"]["spec"] = real_node.schedule({"containers": [app]})
    return body


def promoted(cluster: Cluster, namespace: str) -> dict[str, float]:
    """When each revision was last promoted (wall clock, whole seconds)."""
    from permafrost.releases.conditions import parse_timestamp

    return {
        r["hash"]: parse_timestamp(r["promotedAt"]).timestamp()
        for r in status(cluster, namespace, NAME).get("revisions", [])
        if r.get("promotedAt")
    }


def pods_of(cluster: Cluster, namespace: str, revision: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get(
        "pods", namespace=namespace, selector=f"permafrost.dev/revision={revision}"
    )["items"]
    return items


def settled(cluster: Cluster, namespace: str, *gone: str) -> dict[str, Any]:
    """Wait until the release is not Progressing and the ``gone`` revisions have no pod left."""

    def probe() -> dict[str, Any] | None:
        st = status(cluster, namespace, NAME)
        if st.get("phase") in (None, "Progressing"):
            return None
        if any(pods_of(cluster, namespace, r) for r in gone):
            return None
        return st

    return wait_for(probe, timeout=120, interval=0.5, what="the release to settle")


class Window:
    """Load for the duration of a ``with`` block, plus the Service's selector changes; then
    the figures (:func:`bench.traffic.summarize`) against what the status says was verified."""

    def __init__(self, cluster: Cluster, namespace: str, url: str, what: str) -> None:
        self.cluster, self.namespace, self.url, self.what = cluster, namespace, url, what
        self.before = status(cluster, namespace, NAME).get("stableRevision")
        self.load = traffic.Load(url, rate=RATE, seconds=240)
        self.selector = traffic.SelectorLog(namespace, NAME, env=cluster.env)
        self.result: dict[str, Any] = {}

    @contextlib.contextmanager
    def run(self) -> Iterator[Window]:
        with self.selector, self.load:
            time.sleep(1)  # traffic before the change
            yield self
            time.sleep(1)  # and after it settled
        after = status(self.cluster, self.namespace, NAME).get("stableRevision")
        samples = self.load.samples
        verified = traffic.verified_since(
            promoted(self.cluster, self.namespace), release=NAME, before=[self.before or ""]
        )
        switch = self.selector.switched_to(after) if after != self.before else None
        self.result = traffic.summarize(
            samples,
            verified=verified,
            switch=switch,
            new=lambda s: traffic.revision_of(s.pod, NAME) == after,
        )
        print(f"\n[{self.what}] {self.result}", file=sys.stderr)

    def assert_clean(self) -> None:
        r = self.result
        assert r["sent"] >= RATE, r  # at least a second of traffic
        assert r["failed"] == 0, f"{self.what}: {r['errors']} {r['first_failures']}"
        assert r["unverified"] == 0, f"{self.what}: {r['first_unverified']}"


def test_every_request_is_answered_by_a_verified_revision_through_every_change(
    crds: Cluster,
    namespace: str,
    operator: Operator,
    real_node: RealNode,
    demo_images: dict[str, str],
) -> None:
    v1, v2 = demo_images["v1"], demo_images["v2"]
    crds.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG}, "data": {"N": "1"}},
        namespace=namespace,
    )
    crds.apply(manifest(real_node, v1), namespace=namespace)
    first = settled(crds, namespace)["stableRevision"]
    url = f"http://{crds.get('service', NAME, namespace=namespace)['spec']['clusterIP']}/"

    # 1. v1 -> v2: promoted; v1 scaled down after the delay.
    w = Window(crds, namespace, url, "v1 -> v2")
    with w.run():
        crds.apply(manifest(real_node, v2), namespace=namespace)
        second = wait_for(
            lambda: (
                (s := status(crds, namespace, NAME)).get("stableRevision") != first
                and s["stableRevision"]
            ),
            timeout=90,
            interval=0.5,
            what="v2 promoted",
        )
        settled(crds, namespace, first)
    w.assert_clean()
    assert w.result["versions"].keys() == {"v1", "v2"}, w.result
    assert w.result["switch_to_all_new_s"] is not None
    # v1's scale-down delay counted from when the Service's EndpointSlices let it go.
    records = {r["hash"]: r for r in status(crds, namespace, NAME)["revisions"]}
    assert records[first]["drainedAt"] >= records[second]["promotedAt"], records

    # 2. v3, whose process exits as it starts: rolled back, never answers.
    w = Window(crds, namespace, url, "v3 crashes")
    with w.run():
        crds.apply(
            manifest(real_node, v2, APP_VERSION="v3", CRASH_ON_START="1"), namespace=namespace
        )
        st = wait_for(
            lambda: (s := status(crds, namespace, NAME)).get("phase") == "RolledBack" and s,
            timeout=90,
            interval=0.5,
            what="v3 rolled back",
        )
        settled(crds, namespace, st["desiredRevision"])
    w.assert_clean()
    assert (condition({"status": st}, "RolledBack") or {}).get("reason") == "CrashLoop", st
    assert w.result["versions"].keys() == {"v2"}, w.result

    # 3. v4, Ready at first, then its readiness probe fails: rolled back, never answers.
    crashed = st["desiredRevision"]
    w = Window(crds, namespace, url, "v4 becomes unready")
    with w.run():
        crds.apply(
            manifest(real_node, v2, APP_VERSION="v4", NOT_READY_AFTER_SECONDS="2.5"),
            namespace=namespace,
        )
        st = wait_for(
            lambda: (
                (s := status(crds, namespace, NAME)).get("phase") == "RolledBack"
                and s.get("desiredRevision") != crashed
                and s
            ),
            timeout=90,
            interval=0.5,
            what="v4 rolled back",
        )
        settled(crds, namespace, st["desiredRevision"])
    w.assert_clean()
    assert (condition({"status": st}, "RolledBack") or {}).get("reason") in (
        "BecameUnready",
        "ProgressDeadlineExceeded",
    ), st
    assert w.result["versions"].keys() == {"v2"}, w.result

    # 4. A change of the referenced ConfigMap: a new revision of v2, promoted.
    w = Window(crds, namespace, url, "ConfigMap change")
    with w.run():
        crds.apply(manifest(real_node, v2), namespace=namespace)  # the spec of v2 again
        crds.kubectl("patch", "configmap", CONFIG, "-p", '{"data":{"N":"2"}}', namespace=namespace)
        third = wait_for(
            lambda: (
                (s := status(crds, namespace, NAME)).get("stableRevision") not in (first, second)
                and s.get("phase") == "Stable"
                and s["stableRevision"]
            ),
            timeout=90,
            interval=0.5,
            what="the ConfigMap's revision promoted",
        )
        settled(crds, namespace, second)
    w.assert_clean()
    assert w.result["versions"].keys() == {"v2"}, w.result
    answered = {traffic.revision_of(s.pod, NAME) for s in w.load.samples}
    assert answered == {second, third}, answered

    # 5. The operator SIGKILLed while a revision is verified, started again: promoted.
    w = Window(crds, namespace, url, "operator killed mid-promotion")
    with w.run():
        crds.apply(manifest(real_node, v2, APP_VERSION="v6"), namespace=namespace)
        # NB: killed as soon as the new revision is being verified (its pods are starting):
        # the operator started again must verify it and promote it from what it finds.
        wait_for(
            lambda: (
                (s := status(crds, namespace, NAME)).get("desiredRevision") not in (None, third)
                and s.get("phase") == "Progressing"
                and pods_of(crds, namespace, s["desiredRevision"])
            ),
            timeout=90,
            interval=0.2,
            what="the new revision in verification",
        )
        operator.kill()
        time.sleep(2)
        operator.start()
        fourth = wait_for(
            lambda: (
                (s := status(crds, namespace, NAME)).get("stableRevision") != third
                and s.get("phase") == "Stable"
                and s["stableRevision"]
            ),
            timeout=90,
            interval=0.5,
            what="v6 promoted after the restart",
        )
        settled(crds, namespace, third)
    w.assert_clean()
    assert w.result["versions"].keys() == {"v2", "v6"}, w.result

    # 6. A manual rollback to the ConfigMap's revision: verified again, then promoted.
    w = Window(crds, namespace, url, "manual rollback")
    with w.run():
        subprocess.run(
            [sys.executable, "-m", "permafrost", "rollback", NAME, "-n", namespace, "--to", third],
            env=crds.env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(
            lambda: status(crds, namespace, NAME).get("stableRevision") == third,
            timeout=90,
            interval=0.5,
            what="the rollback promoted",
        )
        settled(crds, namespace, fourth)
    w.assert_clean()
    assert w.result["versions"].keys() == {"v2", "v6"}, w.result
