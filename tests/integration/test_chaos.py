"""Chaos: concurrent rollouts while the operator is SIGKILLed at random instants, again and again.

A third of the rollouts fail, in different ways (never Ready, crash-looping, Ready too late);
some releases are changed again while the operator is down. An independent observer lists the
namespace continuously and checks, at every sample:

- a Service never selects a revision that is not Ready (every live pod of it Ready);
- never two live revision Deployments for the same release and hash;
- every revision Deployment is owned by an existing GuardedRelease;

and at the end, once the operator is left running:

- every release is in the right end state: Stable on its last spec, or RolledBack with the
  stable revision still serving (and the failed one scaled to 0);
- no update was lost: every release observed its last generation and runs its last spec;
- no orphans: every config snapshot is owned by an existing revision Deployment and every
  revision Deployment has its snapshots.

``PERMAFROST_CHAOS=long`` runs the long version (``make chaos``); the figures are printed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import time
from typing import Any

import pytest

from conftest import Background, Operator, release
from k8s_harness import Cluster, wait_for

LONG = os.environ.get("PERMAFROST_CHAOS") == "long"
pytestmark = pytest.mark.timeout(1800 if LONG else 300)


@dataclasses.dataclass(frozen=True)
class Size:
    releases: int
    rounds: int
    kills_per_round: int


SIZE = Size(releases=30, rounds=3, kills_per_round=12) if LONG else Size(12, 1, 5)
FAILURES = (
    {"sim.permafrost.dev/behavior": "never-ready"},
    {"sim.permafrost.dev/behavior": "crash-loop"},
    {"sim.permafrost.dev/behavior": "slow-ready", "sim.permafrost.dev/ready-after": "60s"},
)
DEADLINE = 12  # progressDeadlineSeconds of every rollout


def digest(*parts: object) -> str:
    return "@sha256:" + hashlib.sha256(repr(parts).encode()).hexdigest()


def name_of(i: int) -> str:
    return f"app-{i:02d}"


def with_config(i: int) -> bool:
    return i % 4 == 1


def spec_of(i: int, round_: int, *, again: bool = False) -> dict[str, Any]:
    """The spec of release ``i`` in ``round_`` (round 0: the first, healthy, release)."""
    failing = round_ > 0 and i % 3 == 0
    annotations = FAILURES[(i // 3 + round_) % len(FAILURES)] if failing else {}
    body = release(
        name_of(i),
        service=name_of(i),
        digest=digest(i, round_, again),
        annotations=dict(annotations),
        config=[{"kind": "ConfigMap", "name": f"{name_of(i)}-config"}] if with_config(i) else None,
        deadline=DEADLINE,
        min_ready=1,
        scale_down_delay=2,
        history=2,
    )
    if with_config(i):
        # The pods use the config both ways, so the revision must point at its own snapshot.
        pod = body["spec"]["template"]["spec"]
        pod["volumes"] = [{"name": "config", "configMap": {"name": f"{name_of(i)}-config"}}]
        pod["containers"][0]["envFrom"] = [{"configMapRef": {"name": f"{name_of(i)}-config"}}]
    return body


class Observer(Background):
    """Lists Services, Deployments, pods and GuardedReleases of the namespace continuously and
    records every invariant violation it sees (it knows nothing of the operator)."""

    join_timeout = 60

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        super().__init__()
        self.cluster, self.namespace = cluster, namespace
        self.samples = 0
        self.violations: list[str] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            proc = self.cluster.kubectl(
                "get",
                "guardedreleases,services,deployments,pods",
                "-o",
                "json",
                namespace=self.namespace,
                check=False,
            )
            if proc.returncode == 0:
                self.check(json.loads(proc.stdout)["items"])
                self.samples += 1

    def check(self, items: list[dict[str, Any]]) -> None:
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            by_kind.setdefault(item["kind"], []).append(item)
        releases = {r["metadata"]["uid"] for r in by_kind.get("GuardedRelease", [])}
        ready: dict[tuple[str, str], list[bool]] = {}
        for pod in by_kind.get("Pod", []):
            labels = pod["metadata"].get("labels") or {}
            if pod["metadata"].get("deletionTimestamp") or "permafrost.dev/revision" not in labels:
                continue
            key = (labels.get("permafrost.dev/release", ""), labels["permafrost.dev/revision"])
            conds = pod.get("status", {}).get("conditions") or []
            ready.setdefault(key, []).append(
                any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
            )
        for svc in by_kind.get("Service", []):
            selector = svc["spec"].get("selector") or {}
            # NB: "none" (no revision verified yet) selects no pod: nothing unverified served.
            if selector.get("permafrost.dev/revision", "none") != "none":
                key = (
                    selector.get("permafrost.dev/release", ""),
                    selector["permafrost.dev/revision"],
                )
                pods = ready.get(key, [])
                if not pods or not all(pods):
                    self.violations.append(
                        f"Service {svc['metadata']['name']} selects revision {key[1]} with "
                        f"{sum(pods)}/{len(pods)} live pods Ready"
                    )
        seen: dict[tuple[str, str], str] = {}
        for deployment in by_kind.get("Deployment", []):
            meta = deployment["metadata"]
            labels = meta.get("labels") or {}
            if "permafrost.dev/revision" not in labels or meta.get("deletionTimestamp"):
                continue
            key = (labels.get("permafrost.dev/release", ""), labels["permafrost.dev/revision"])
            if key in seen:
                self.violations.append(
                    f"two live Deployments of revision {key}: {seen[key]} and {meta['name']}"
                )
            seen[key] = meta["name"]
            owners = {o["uid"] for o in meta.get("ownerReferences") or []}
            if not owners & releases and releases:
                self.violations.append(f"Deployment {meta['name']} has no GuardedRelease owner")


def test_rollouts_survive_an_operator_killed_at_random_instants_again_and_again(
    crds: Cluster, namespace: str, tmp_path: Any, request: Any
) -> None:
    rng = random.Random(int(os.environ.get("PERMAFROST_CHAOS_SEED", "20261125")))
    op = Operator(crds, namespace, tmp_path / "operator.log")
    request.node.operator_log = op.log
    for i in range(SIZE.releases):
        if with_config(i):
            crds.kubectl(
                "create",
                "configmap",
                f"{name_of(i)}-config",
                f"--from-literal=i={i}",
                namespace=namespace,
            )
    op.start()
    kills = updates_while_down = 0
    started = time.monotonic()
    try:
        crds.apply([spec_of(i, 0) for i in range(SIZE.releases)], namespace=namespace)
        stable = wait_converged(crds, namespace, {i: (0, False) for i in range(SIZE.releases)})
        with Observer(crds, namespace) as observer:
            for round_ in range(1, SIZE.rounds + 1):
                last = {i: (round_, False) for i in range(SIZE.releases)}
                crds.apply([spec_of(i, round_) for i in range(SIZE.releases)], namespace=namespace)
                for kill in range(SIZE.kills_per_round):
                    time.sleep(rng.uniform(1.0, 5.0))  # NB: a random instant, not a wait
                    op.kill()
                    kills += 1
                    if kill % 2 == 0:
                        # Changed again while the operator is down: nothing may be lost.
                        i = rng.randrange(1, SIZE.releases, 3)
                        crds.apply(spec_of(i, round_, again=True), namespace=namespace)
                        last[i] = (round_, True)
                        updates_while_down += 1
                    op.start()
                stable = wait_converged(crds, namespace, last, stable=stable)
                # Let the scale-down delays pass under observation too.
                wait_for(
                    lambda: all_retired_scaled_down(crds, namespace),
                    timeout=90,
                    what="every revision that does not serve to be scaled to 0",
                )
        assert_no_orphans(crds, namespace)
    finally:
        op.stop()
    elapsed = time.monotonic() - started
    print(
        f"chaos: {SIZE.releases} releases, {SIZE.rounds} rounds, {kills} SIGKILLs survived, "
        f"{updates_while_down} updates while down, {observer.samples} observer samples, "
        f"{len(observer.violations)} violations, {elapsed:.0f}s"
    )
    assert observer.samples > 0
    assert observer.violations == []


def expected_failure(i: int, round_: int) -> bool:
    return round_ > 0 and i % 3 == 0


def wait_converged(
    cluster: Cluster,
    namespace: str,
    last: dict[int, tuple[int, bool]],
    *,
    stable: dict[int, str] | None = None,
) -> dict[int, str]:
    """Wait until every release is in its end state; return the stable revision of each."""
    timeout = 240 if LONG else 150

    def converged() -> dict[int, str] | None:
        items = cluster.get("guardedreleases", namespace=namespace)["items"]
        by_name = {r["metadata"]["name"]: r for r in items}
        result: dict[int, str] = {}
        for i, (round_, again) in last.items():
            obj = by_name.get(name_of(i))
            if obj is None:
                return None
            st = obj.get("status") or {}
            if st.get("observedGeneration") != obj["metadata"]["generation"]:
                return None
            want = "RolledBack" if expected_failure(i, round_) and not again else "Stable"
            if st.get("phase") != want:
                return None
            if want == "RolledBack" and stable is not None:
                if st.get("stableRevision") != stable[i]:
                    return None
            elif st.get("stableRevision") != st.get("desiredRevision"):
                return None
            result[i] = st["stableRevision"]
        return result

    result = wait_for(converged, timeout=timeout, interval=1, what="every release to converge")
    deployments = cluster.get("deployments", namespace=namespace)["items"]
    images = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"]
        for d in deployments
    }
    for i, revision in result.items():
        round_, again = last[i]
        svc = cluster.get("service", name_of(i), namespace=namespace)
        assert svc["spec"]["selector"]["permafrost.dev/revision"] == revision
        image = images[f"{name_of(i)}-{revision}"]
        if expected_failure(i, round_) and not again:
            assert stable is not None
            assert revision == stable[i], f"{name_of(i)} does not serve its stable revision"
        else:
            # No update lost: the serving revision runs the last spec applied.
            assert image.endswith(digest(i, round_, again)), f"{name_of(i)} runs {image}"
    return result


def all_retired_scaled_down(cluster: Cluster, namespace: str) -> bool:
    """Only the stable revision of each release has replicas."""
    items = cluster.get("guardedreleases", namespace=namespace)["items"]
    stable = {r["metadata"]["name"]: r["status"].get("stableRevision") for r in items}
    for d in cluster.get("deployments", namespace=namespace)["items"]:
        labels = d["metadata"].get("labels") or {}
        owner = labels.get("permafrost.dev/release")
        serving = owner not in stable or labels.get("permafrost.dev/revision") == stable[owner]
        if not serving and d["spec"]["replicas"] != 0:
            return False
    return True


def assert_no_orphans(cluster: Cluster, namespace: str) -> None:
    deployments = {
        d["metadata"]["uid"]: d for d in cluster.get("deployments", namespace=namespace)["items"]
    }
    snapshots = cluster.get(
        "configmaps", namespace=namespace, selector="permafrost.dev/snapshot-of"
    )["items"]
    names = {s["metadata"]["name"] for s in snapshots}
    for snapshot in snapshots:
        owners = {o["uid"] for o in snapshot["metadata"].get("ownerReferences") or []}
        assert owners & set(deployments), f"orphaned snapshot {snapshot['metadata']['name']}"
    for deployment in deployments.values():
        volumes = deployment["spec"]["template"]["spec"].get("volumes") or []
        refs = [v["configMap"]["name"] for v in volumes if "configMap" in v]
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            refs += [
                e["configMapRef"]["name"]
                for e in container.get("envFrom") or []
                if "configMapRef" in e
            ]
        missing = [r for r in refs if r not in names]
        assert missing == [], f"{deployment['metadata']['name']} lacks its snapshots {missing}"
