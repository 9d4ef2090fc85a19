"""Scaling a GuardedRelease: `kubectl scale grel`, its scale subresource, an autoscaler (HPA).

The release's scale subresource maps ``spec.replicas`` (what is asked for) and ``status.replicas``
and ``status.selector`` (the serving revision's Ready pods, a selector of its pods). A scale
changes no revision: the serving Deployment is scaled in place, a revision in verification is
verified at the new count, a failed revision is not tried again.

Runs on kwok's fake nodes (no real node needed). The cluster has no metrics server: an HPA can
read and write the scale but measures nothing, so what is tested of it is what needs no metrics
(it enforces minReplicas and maxReplicas through the scale subresource, and reports that it can
scale but has no metrics).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from conftest import Operator, release, status, wait_phase
from k8s_harness import Cluster, condition, wait_for

NEW_DIGEST = "@sha256:" + "2" * 64
FAIL = {"sim.permafrost.dev/behavior": "never-ready"}


def deployments(cluster: Cluster, namespace: str, name: str = "web") -> dict[str, dict[str, Any]]:
    """The release's revision Deployments, by revision."""
    items = cluster.get(
        "deployments", namespace=namespace, selector=f"permafrost.dev/release={name}"
    )["items"]
    return {d["metadata"]["labels"]["permafrost.dev/revision"]: d for d in items}


def wait_serving(
    cluster: Cluster, namespace: str, replicas: int, *, revision: str | None = None
) -> dict[str, Any]:
    """Wait until a revision (``revision``, if given) is stable with ``replicas`` Ready pods:
    its Deployment asks for them and has them Ready, and the status says so."""

    def probe() -> dict[str, Any] | None:
        st = status(cluster, namespace, "web")
        stable = st.get("stableRevision")
        if st.get("phase") != "Stable" or (revision is not None and stable != revision):
            return None
        d = deployments(cluster, namespace).get(stable or "")
        if d is None or d["spec"]["replicas"] != replicas:
            return None
        if (d.get("status") or {}).get("readyReplicas", 0) != replicas:
            return None
        if (st.get("replicas"), st.get("readyReplicas")) != (replicas, f"{replicas}/{replicas}"):
            return None
        return st

    return wait_for(probe, timeout=60, interval=0.5, what=f"web stable with {replicas} Ready")


def scale_of(cluster: Cluster, namespace: str) -> dict[str, Any]:
    """The release's scale subresource, as an autoscaler reads it (autoscaling/v1 Scale)."""
    raw = cluster.kubectl(
        "get",
        "--raw",
        f"/apis/permafrost.dev/v1alpha1/namespaces/{namespace}/guardedreleases/web/scale",
    ).stdout
    scale: dict[str, Any] = json.loads(raw)
    return scale


def events(cluster: Cluster, namespace: str, reason: str) -> list[str]:
    """The messages of the release's Events with ``reason``."""
    proc = cluster.kubectl(
        "get",
        "events",
        "--field-selector",
        f"involvedObject.kind=GuardedRelease,reason={reason}",
        "-o",
        "json",
        namespace=namespace,
    )
    return [e["message"] for e in json.loads(proc.stdout)["items"]]


def set_image(cluster: Cluster, namespace: str, digest: str) -> None:
    """Change only the image (a JSON patch): ``spec.replicas`` stays whatever it was scaled to.

    NB: re-applying a manifest that sets ``spec.replicas`` would set it back, as for a
    Deployment; with an autoscaler, leave ``replicas`` out of what is applied.
    """
    patch = [
        {
            "op": "replace",
            "path": "/spec/template/spec/containers/0/image",
            "value": f"registry.example/shop/app{digest}",
        }
    ]
    cluster.kubectl(
        "patch", "grel", "web", "--type=json", "-p", json.dumps(patch), namespace=namespace
    )


def test_kubectl_scale_scales_the_serving_revision_in_place(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    crds.apply(release("web", service="web"), namespace=namespace)
    revision = wait_serving(crds, namespace, 2)["stableRevision"]

    out = crds.kubectl("scale", "grel", "web", "--replicas=4", namespace=namespace).stdout
    assert "scaled" in out
    st = wait_serving(crds, namespace, 4, revision=revision)
    # no new revision: the same Deployment, scaled through its own scale subresource
    assert set(deployments(crds, namespace)) == {revision}
    assert [r["hash"] for r in st["revisions"]] == [revision]
    assert len(events(crds, namespace, "RevisionCreated")) == 1
    assert events(crds, namespace, "AttemptStarted") == []

    scale = scale_of(crds, namespace)
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 4
    assert scale["status"]["replicas"] == 4
    assert scale["status"]["selector"] == (
        f"permafrost.dev/release=web,permafrost.dev/revision={revision}"
    )
    # the selector selects exactly the serving pods
    pods = crds.get("pods", namespace=namespace, selector=scale["status"]["selector"])["items"]
    assert len([p for p in pods if not p["metadata"].get("deletionTimestamp")]) == 4

    printed = crds.kubectl("get", "grel", "web", namespace=namespace).stdout.splitlines()
    assert printed[0].split() == ["NAME", "DESIRED", "STABLE", "PHASE", "READY", "AGE"]
    assert printed[1].split()[:5] == ["web", revision, revision, "Stable", "4/4"]

    crds.kubectl("scale", "grel", "web", "--replicas=1", namespace=namespace)
    wait_serving(crds, namespace, 1, revision=revision)
    assert set(deployments(crds, namespace)) == {revision}


def test_a_new_revision_rolls_out_at_the_scaled_count(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    crds.apply(release("web", service="web"), namespace=namespace)
    old = wait_serving(crds, namespace, 2)["stableRevision"]
    crds.kubectl("scale", "grel", "web", "--replicas=3", namespace=namespace)
    wait_serving(crds, namespace, 3, revision=old)

    set_image(crds, namespace, NEW_DIGEST)

    def new_revision() -> str | None:
        revs = set(deployments(crds, namespace)) - {old}
        return next(iter(revs), None)

    new = wait_for(new_revision, timeout=30, interval=0.5, what="a new revision")
    assert deployments(crds, namespace)[new]["spec"]["replicas"] == 3
    st = wait_serving(crds, namespace, 3, revision=new)
    assert st["stableRevision"] == new != old
    promoted = events(crds, namespace, "Promoted")
    assert any(new in m for m in promoted)


def test_a_scale_during_verification_is_verified_without_starting_over(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    # A long minReadySeconds keeps the new revision in verification while it is scaled.
    crds.apply(release("web", service="web", deadline=90, min_ready=1), namespace=namespace)
    old = wait_serving(crds, namespace, 2)["stableRevision"]
    manifest = release("web", service="web", deadline=90, min_ready=15, digest=NEW_DIGEST)
    crds.apply(manifest, namespace=namespace)

    def verifying() -> dict[str, Any] | None:
        st = status(crds, namespace, "web")
        new = st.get("desiredRevision")
        if st.get("phase") != "Progressing" or new in (None, old):
            return None
        rec = next((r for r in st.get("revisions", []) if r["hash"] == new), None)
        return rec if rec is not None and rec["outcome"] == "Progressing" else None

    before = wait_for(verifying, timeout=30, interval=0.5, what="the new revision in verification")
    new = before["hash"]
    crds.kubectl("scale", "grel", "web", "--replicas=3", namespace=namespace)

    def both_scaled() -> bool:
        ds = deployments(crds, namespace)
        return ds[new]["spec"]["replicas"] == 3 and ds[old]["spec"]["replicas"] == 3

    wait_for(both_scaled, timeout=30, interval=0.5, what="both revisions scaled to 3")
    st = status(crds, namespace, "web")
    assert st["stableRevision"] == old  # still verifying, the old one still serves
    during = next(r for r in st["revisions"] if r["hash"] == new)
    assert during["outcome"] == "Progressing"
    assert during["attemptStartedAt"] == before["attemptStartedAt"]
    assert during["attempt"] == before["attempt"]

    st = wait_serving(crds, namespace, 3, revision=new)
    assert set(deployments(crds, namespace)) == {old, new}
    assert events(crds, namespace, "AttemptStarted") == []
    assert len(events(crds, namespace, "RevisionCreated")) == 2
    # verified at 3: the Ready condition counts the current replicas
    ready = condition({"status": st}, "Ready")
    assert ready is not None
    assert "3/3" in ready["message"]


def test_a_scale_does_not_retry_a_failed_revision(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    crds.apply(release("web", service="web", deadline=5), namespace=namespace)
    stable = wait_serving(crds, namespace, 2)["stableRevision"]
    crds.apply(release("web", service="web", deadline=5, annotations=FAIL), namespace=namespace)
    st = wait_phase(crds, namespace, "web", "RolledBack", timeout=60)
    failed = st["desiredRevision"]
    wait_for(
        lambda: deployments(crds, namespace)[failed]["spec"]["replicas"] == 0,
        timeout=30,
        what="the failed revision scaled to 0",
    )
    record = next(r for r in st["revisions"] if r["hash"] == failed)

    crds.kubectl("scale", "grel", "web", "--replicas=3", namespace=namespace)
    generation = crds.get("grel", "web", namespace=namespace)["metadata"]["generation"]
    st = wait_phase(crds, namespace, "web", "RolledBack", timeout=30, stableRevision=stable)
    wait_for(
        lambda: status(crds, namespace, "web").get("observedGeneration") == generation,
        timeout=30,
        what="the scale observed",
    )
    wait_for(
        lambda: deployments(crds, namespace)[stable]["spec"]["replicas"] == 3,
        timeout=30,
        what="the stable revision scaled to 3",
    )
    time.sleep(3)  # a few more passes: none may start the failed revision again
    st = status(crds, namespace, "web")
    assert st["phase"] == "RolledBack"
    again = next(r for r in st["revisions"] if r["hash"] == failed)
    assert (again["outcome"], again["attempt"], again["failedAt"]) == (
        "Failed",
        record["attempt"],
        record["failedAt"],
    )
    assert deployments(crds, namespace)[failed]["spec"]["replicas"] == 0
    assert events(crds, namespace, "AttemptStarted") == []
    assert st["specGeneration"] < st["observedGeneration"] == generation


def test_a_horizontal_pod_autoscaler_drives_the_release_through_its_scale(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    crds.apply(release("web", service="web"), namespace=namespace)
    revision = wait_serving(crds, namespace, 2)["stableRevision"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web"},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "permafrost.dev/v1alpha1",
                "kind": "GuardedRelease",
                "name": "web",
            },
            "minReplicas": 3,
            "maxReplicas": 5,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 50},
                    },
                }
            ],
        },
    }
    crds.apply(hpa, namespace=namespace)

    # Below minReplicas: the HPA scales the release up without needing any metric.
    wait_serving(crds, namespace, 3, revision=revision)
    assert set(deployments(crds, namespace)) == {revision}

    def hpa_conditions() -> dict[str, dict[str, Any]] | None:
        obj = crds.get("hpa", "web", namespace=namespace)
        found = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
        active = found.get("ScalingActive")
        return found if active is not None and active["status"] == "False" else None

    # The HPA controller resolved the scale target (it read the scale subresource and its
    # selector) but has no metrics: there is no metrics server in this cluster.
    found = wait_for(hpa_conditions, timeout=60, interval=1, what="the HPA's conditions")
    assert found["AbleToScale"]["status"] == "True", found
    assert found["ScalingActive"]["reason"] == "FailedGetResourceMetric", found
    # (InvalidSelector would say that status.selector could not be used)
    obj = crds.get("hpa", "web", namespace=namespace)
    assert obj["status"]["currentReplicas"] == 3
    printed = crds.kubectl("get", "hpa", "web", namespace=namespace).stdout
    assert "GuardedRelease/web" in printed

    # Above maxReplicas: the HPA scales it back down, again through the scale subresource.
    crds.kubectl("scale", "grel", "web", "--replicas=7", namespace=namespace)
    wait_serving(crds, namespace, 5, revision=revision)
    assert set(deployments(crds, namespace)) == {revision}


def test_a_scale_is_admitted_even_while_an_enforced_policy_refuses_edits(
    crds: Cluster, namespace: str, guarded_operator: Operator
) -> None:
    label = f"scale-{uuid.uuid4().hex[:6]}"
    manifest = release("web", service="web")
    manifest["metadata"]["labels"] = {"team": label}
    crds.apply(manifest, namespace=namespace)
    revision = wait_serving(crds, namespace, 2)["stableRevision"]

    # The scale subresource is not sent to the releases webhook: admitted as it is.
    crds.kubectl("scale", "grel", "web", "--replicas=3", namespace=namespace)
    wait_serving(crds, namespace, 3, revision=revision)
    # An update of spec.replicas through the release itself passes the webhook as well.
    crds.kubectl(
        "patch", "grel", "web", "--type=merge", "-p", '{"spec":{"replicas":4}}', namespace=namespace
    )
    wait_serving(crds, namespace, 4, revision=revision)

    policy = {
        "apiVersion": "permafrost.dev/v1alpha1",
        "kind": "GuardrailPolicy",
        "metadata": {"name": label},
        "spec": {
            "stages": ["create"],
            "enforcement": "Enforce",
            "match": {"objectSelector": {"matchLabels": {"team": label}}},
            "rules": [{"name": "frozen", "expression": "false", "message": "frozen"}],
        },
    }
    crds.apply(policy)
    try:

        def edits_refused() -> str | None:
            proc = crds.kubectl(
                "annotate", "grel", "web", "example.com/touched=yes", "--overwrite",
                namespace=namespace, check=False,
            )  # fmt: skip
            return proc.stderr if proc.returncode != 0 else None

        refused = wait_for(edits_refused, timeout=30, interval=0.5, what="the policy in force")
        assert f"{label}/frozen" in refused
        # what runs violates a policy now, yet a scale (an autoscaler's) is still admitted
        crds.kubectl("scale", "grel", "web", "--replicas=2", namespace=namespace)
        wait_for(
            lambda: deployments(crds, namespace)[revision]["spec"]["replicas"] == 2,
            timeout=30,
            what="the stable revision scaled to 2",
        )
        st = status(crds, namespace, "web")
        assert st["stableRevision"] == revision
        compliant = condition({"status": st}, "PolicyCompliant")
        assert compliant is not None
        assert (compliant["status"], compliant["reason"]) == ("False", "EnforcedPolicyViolated")
    finally:
        crds.kubectl("delete", "guardrailpolicy", label, "--ignore-not-found", check=False)
