"""GuardedRelease rollouts end to end: the real operator, the real control plane, kubectl."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from conftest import (
    DIGEST,
    Operator,
    SelectorSampler,
    release,
    status,
    wait_phase,
)
from k8s_harness import Cluster, condition, wait_for

NEW_DIGEST = "@sha256:" + "2" * 64
THIRD_DIGEST = "@sha256:" + "3" * 64


def revision_deployments(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get(
        "deployments", namespace=namespace, selector=f"permafrost.dev/release={name}"
    )["items"]
    return items


def selector_revision(cluster: Cluster, namespace: str, service: str) -> str | None:
    svc = cluster.get("service", service, namespace=namespace)
    return ((svc or {}).get("spec", {}).get("selector") or {}).get("permafrost.dev/revision")


def wait_scaled_to_zero(cluster: Cluster, namespace: str, revision: str, *, timeout: float) -> None:
    """Wait until the Deployment of ``revision`` is scaled to 0 (kept, not deleted)."""
    wait_for(
        lambda: all(
            d["spec"]["replicas"] == 0
            for d in revision_deployments(cluster, namespace, "shop")
            if d["metadata"]["name"] == f"shop-{revision}"
        ),
        timeout=timeout,
        what=f"revision {revision} scaled to 0",
    )


def wait_new_stable(cluster: Cluster, namespace: str, old: str) -> dict[str, Any]:
    """Wait until a revision other than ``old`` is stable (the status may still show ``old``
    as Stable for a moment after a spec change)."""

    def probe() -> dict[str, Any] | None:
        st = status(cluster, namespace, "shop")
        return st if st.get("phase") == "Stable" and st.get("stableRevision") != old else None

    return wait_for(probe, timeout=60, interval=0.5, what=f"a stable revision other than {old}")


def record(st: dict[str, Any], revision: str) -> dict[str, Any]:
    return next(r for r in st["revisions"] if r["hash"] == revision)


def first_release(cluster: Cluster, namespace: str, **kwargs: Any) -> dict[str, Any]:
    cluster.apply(release("shop", service="shop", **kwargs), namespace=namespace)
    return wait_phase(cluster, namespace, "shop", "Stable")


def test_first_release_creates_a_revision_and_a_service_that_selects_it(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    st = first_release(crds, namespace)
    revision = st["stableRevision"]
    assert st["desiredRevision"] == revision
    assert st["readyReplicas"] == "2/2"
    assert condition({"status": st}, "Ready")["status"] == "True"  # type: ignore[index]

    (deployment,) = revision_deployments(crds, namespace, "shop")
    meta = deployment["metadata"]
    assert meta["name"] == f"shop-{revision}"
    assert meta["labels"]["permafrost.dev/revision"] == revision
    assert meta["annotations"]["permafrost.dev/template-hash"] == revision
    owner = meta["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("GuardedRelease", "shop", True)
    assert selector_revision(crds, namespace, "shop") == revision

    rec = record(st, revision)
    assert rec["outcome"] == "Stable"
    assert rec["images"] == [f"registry.example/shop/app{DIGEST}"]
    assert rec["promotedAt"] >= rec["createdAt"]

    printed = crds.kubectl("get", "grel", "shop", namespace=namespace).stdout
    assert printed.split("\n")[0].split() == ["NAME", "DESIRED", "STABLE", "PHASE", "READY", "AGE"]
    assert printed.split("\n")[1].split()[:5] == ["shop", revision, revision, "Stable", "2/2"]
    events = crds.kubectl(
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=GuardedRelease",
        "-o",
        "jsonpath={.items[*].reason}",
        namespace=namespace,
    ).stdout.split()
    assert "RevisionCreated" in events
    assert "Promoted" in events


def test_upgrade_moves_traffic_to_the_new_revision_and_retires_the_old_one(
    crds: Cluster, namespace: str, operator: Operator, sampler_factory: Any
) -> None:
    old = first_release(crds, namespace)["stableRevision"]
    sampler: SelectorSampler
    with sampler_factory("shop") as sampler:
        crds.apply(release("shop", service="shop", digest=NEW_DIGEST), namespace=namespace)
        st = wait_new_stable(crds, namespace, old)
        new = st["stableRevision"]
        assert new != old
        # The old revision is scaled to 0 only after scaleDownDelaySeconds.
        wait_scaled_to_zero(crds, namespace, old, timeout=30)
    assert sampler.violations == []
    assert sampler.revisions <= {old, new}
    st = status(crds, namespace, "shop")
    assert record(st, old)["outcome"] == "Retired"
    assert record(st, new)["outcome"] == "Stable"
    assert selector_revision(crds, namespace, "shop") == new


def _failing_upgrade(
    crds: Cluster, namespace: str, sampler_factory: Any, behavior: str, reason: str
) -> None:
    stable = first_release(crds, namespace, deadline=8)["stableRevision"]
    with sampler_factory("shop") as sampler:
        crds.apply(
            release(
                "shop",
                service="shop",
                deadline=8,
                annotations={"sim.permafrost.dev/behavior": behavior},
            ),
            namespace=namespace,
        )
        st = wait_phase(crds, namespace, "shop", "RolledBack", timeout=60)
        failed = st["desiredRevision"]
        wait_scaled_to_zero(crds, namespace, failed, timeout=20)
        time.sleep(1)  # a few more samples after the rollback
    assert failed != stable
    assert st["stableRevision"] == stable
    rolled_back = condition({"status": st}, "RolledBack")
    assert rolled_back is not None
    assert rolled_back["status"] == "True"
    assert rolled_back["reason"] == reason
    assert failed in rolled_back["message"]
    assert stable in rolled_back["message"]
    assert condition({"status": st}, "Degraded")["status"] == "True"  # type: ignore[index]
    assert record(st, failed)["outcome"] == "Failed"
    assert record(st, failed)["reason"] == reason
    # Traffic never left the stable revision, and it never pointed at an unready one.
    assert sampler.revisions == {stable}
    assert sampler.violations == []
    # The failed revision is kept for inspection; the spec is untouched.
    names = {d["metadata"]["name"] for d in revision_deployments(crds, namespace, "shop")}
    assert f"shop-{failed}" in names
    spec = crds.get("guardedrelease", "shop", namespace=namespace)["spec"]
    assert spec["template"]["metadata"]["annotations"] == {"sim.permafrost.dev/behavior": behavior}
    events = crds.kubectl(
        "get",
        "events",
        "--field-selector",
        "reason=RolledBack",
        "-o",
        "jsonpath={.items[*].message}",
        namespace=namespace,
    ).stdout
    assert failed in events
    assert reason in events


def test_never_ready_upgrade_rolls_back_at_its_deadline(
    crds: Cluster, namespace: str, operator: Operator, sampler_factory: Any
) -> None:
    _failing_upgrade(crds, namespace, sampler_factory, "never-ready", "ProgressDeadlineExceeded")


def test_crash_looping_upgrade_rolls_back(
    crds: Cluster, namespace: str, operator: Operator, sampler_factory: Any
) -> None:
    _failing_upgrade(crds, namespace, sampler_factory, "crash-loop", "CrashLoop")


def test_a_retry_annotation_starts_a_new_attempt_of_a_failed_revision(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    first_release(crds, namespace, deadline=5)
    crds.apply(
        release(
            "shop",
            service="shop",
            deadline=5,
            annotations={"sim.permafrost.dev/behavior": "never-ready"},
        ),
        namespace=namespace,
    )
    failed = wait_phase(crds, namespace, "shop", "RolledBack")["desiredRevision"]
    attempt = record(status(crds, namespace, "shop"), failed)["attemptStartedAt"]
    crds.kubectl("annotate", "grel", "shop", "permafrost.dev/retry=1", namespace=namespace)
    st = wait_for(
        lambda: (
            (s := status(crds, namespace, "shop"))
            and record(s, failed)["attemptStartedAt"] != attempt
            and s
        ),
        timeout=30,
        what="a new attempt",
    )
    assert record(st, failed)["outcome"] in ("Progressing", "Failed")
    wait_phase(crds, namespace, "shop", "RolledBack", timeout=30)


def test_a_newer_spec_supersedes_a_rollout_in_verification(
    crds: Cluster, namespace: str, operator: Operator, sampler_factory: Any
) -> None:
    stable = first_release(crds, namespace)["stableRevision"]
    with sampler_factory("shop") as sampler:
        crds.apply(
            release(
                "shop",
                service="shop",
                deadline=60,
                annotations={
                    "sim.permafrost.dev/behavior": "slow-ready",
                    "sim.permafrost.dev/ready-after": "60s",
                },
            ),
            namespace=namespace,
        )
        slow = wait_phase(crds, namespace, "shop", "Progressing")["desiredRevision"]
        crds.apply(release("shop", service="shop", digest=NEW_DIGEST), namespace=namespace)
        st = wait_phase(crds, namespace, "shop", "Stable", timeout=60)
    newest = st["stableRevision"]
    assert newest not in (stable, slow)
    assert record(st, slow)["outcome"] == "Superseded"
    assert sampler.revisions <= {stable, newest}
    assert sampler.violations == []
    wait_scaled_to_zero(crds, namespace, slow, timeout=20)


def test_a_config_change_makes_a_new_revision_with_its_own_immutable_snapshot(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    crds.kubectl(
        "create", "configmap", "shop-config", "--from-literal=mode=blue", namespace=namespace
    )
    config = [{"kind": "ConfigMap", "name": "shop-config"}]
    first = first_release(crds, namespace, config=config)["stableRevision"]
    snapshot = crds.get("configmap", f"shop-config-{first}", namespace=namespace)
    assert snapshot["immutable"] is True
    assert snapshot["data"] == {"mode": "blue"}
    assert snapshot["metadata"]["ownerReferences"][0]["name"] == f"shop-{first}"
    (deployment,) = revision_deployments(crds, namespace, "shop")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(DIGEST)

    crds.kubectl(
        "patch", "configmap", "shop-config", "-p", '{"data":{"mode":"green"}}', namespace=namespace
    )
    st = wait_for(
        lambda: (
            (s := status(crds, namespace, "shop")).get("phase") == "Stable"
            and s.get("stableRevision") != first
            and s
        ),
        timeout=60,
        what="a new stable revision after the config change",
    )
    second = st["stableRevision"]
    assert crds.get("configmap", f"shop-config-{second}", namespace=namespace)["data"] == {
        "mode": "green"
    }
    # The old snapshot is untouched: never reused, never mutated.
    assert crds.get("configmap", f"shop-config-{first}", namespace=namespace)["data"] == {
        "mode": "blue"
    }


def test_a_missing_config_blocks_the_rollout_until_it_appears(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    crds.apply(
        release("shop", service="shop", config=[{"kind": "ConfigMap", "name": "late-config"}]),
        namespace=namespace,
    )
    st = wait_phase(crds, namespace, "shop", "Pending")
    progressing = condition({"status": st}, "Progressing")
    assert progressing is not None
    assert progressing["reason"] == "ConfigNotFound"
    assert "ConfigMap/late-config" in progressing["message"]
    assert revision_deployments(crds, namespace, "shop") == []

    crds.kubectl("create", "configmap", "late-config", "--from-literal=k=v", namespace=namespace)
    wait_phase(crds, namespace, "shop", "Stable", timeout=60)


def test_a_no_op_change_makes_no_new_revision(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    revision = first_release(crds, namespace)["stableRevision"]
    manifest = release("shop", service="shop")
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    # Defaults written out explicitly, fields reordered: the same pod runs.
    manifest["spec"]["template"]["spec"] = {
        "restartPolicy": "Always",
        "dnsPolicy": "ClusterFirst",
        "containers": [{"imagePullPolicy": "IfNotPresent", **dict(reversed(container.items()))}],
    }
    crds.apply(manifest, namespace=namespace)
    generation = crds.get("guardedrelease", "shop", namespace=namespace)["metadata"]["generation"]
    st = wait_for(
        lambda: (
            (s := status(crds, namespace, "shop")).get("observedGeneration") == generation and s
        ),
        timeout=30,
        what="the new generation observed",
    )
    assert st["desiredRevision"] == revision == st["stableRevision"]
    assert len(revision_deployments(crds, namespace, "shop")) == 1


def test_scaling_the_release_scales_the_stable_revision_without_a_new_one(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    revision = first_release(crds, namespace)["stableRevision"]
    crds.apply(release("shop", service="shop", replicas=4), namespace=namespace)
    wait_phase(crds, namespace, "shop", "Stable", readyReplicas="4/4")
    (deployment,) = revision_deployments(crds, namespace, "shop")
    assert deployment["metadata"]["name"] == f"shop-{revision}"
    assert deployment["spec"]["replicas"] == 4


def test_deleting_the_release_cascades_through_the_garbage_collector(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    crds.kubectl("create", "configmap", "shop-config", "--from-literal=a=b", namespace=namespace)
    first_release(crds, namespace, config=[{"kind": "ConfigMap", "name": "shop-config"}])
    operator.stop()  # no finalizers: deletion must not need the operator
    crds.kubectl("delete", "grel", "shop", "--wait=true", "--timeout=30s", namespace=namespace)

    def gone() -> bool:
        left = crds.kubectl(
            "get",
            "deployments,replicasets,pods,services,configmaps",
            "-o",
            "name",
            "-l",
            "permafrost.dev/release=shop",
            namespace=namespace,
        ).stdout.split()
        svc = crds.get("service", "shop", namespace=namespace)
        return not left and svc is None

    wait_for(gone, timeout=60, what="the revision, its pods, snapshots and Service to be gone")
    assert crds.get("configmap", "shop-config", namespace=namespace) is not None


def test_an_operator_killed_mid_rollout_converges_after_restart(
    crds: Cluster, namespace: str, operator: Operator, sampler_factory: Any
) -> None:
    stable = first_release(crds, namespace, min_ready=4)["stableRevision"]
    with sampler_factory("shop") as sampler:
        crds.apply(
            release("shop", service="shop", digest=NEW_DIGEST, min_ready=4), namespace=namespace
        )
        new = wait_phase(crds, namespace, "shop", "Progressing")["desiredRevision"]
        operator.kill()
        time.sleep(2)
        operator.start()
        st = wait_phase(crds, namespace, "shop", "Stable", timeout=60, stableRevision=new)
    assert sampler.violations == []
    assert sampler.revisions <= {stable, new}
    names = [d["metadata"]["name"] for d in revision_deployments(crds, namespace, "shop")]
    assert sorted(names) == sorted({f"shop-{stable}", f"shop-{new}"})
    assert record(st, stable)["outcome"] == "Retired"


def test_a_revision_left_without_its_snapshot_by_a_stopped_operator_gets_it(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    """The snapshots are created after the Deployment (to be owned by it). An operator stopped
    between the two leaves what this test makes by hand: the Deployment without its snapshot
    and without the fingerprint of a revision already looked at. The next look creates it."""
    crds.kubectl(
        "create", "configmap", "shop-config", "--from-literal=mode=blue", namespace=namespace
    )
    config = [{"kind": "ConfigMap", "name": "shop-config"}]
    first = first_release(crds, namespace, config=config)["stableRevision"]
    fingerprint = "permafrost.dev/template-fingerprint"

    def fingerprint_recorded() -> bool:
        revision = crds.get("deployment", f"shop-{first}", namespace=namespace) or {}
        return fingerprint in revision.get("metadata", {}).get("annotations", {})

    wait_for(fingerprint_recorded, timeout=30, what="the revision's fingerprint to be recorded")
    operator.stop()
    crds.kubectl("delete", "configmap", f"shop-config-{first}", namespace=namespace)
    crds.kubectl("annotate", "deployment", f"shop-{first}", f"{fingerprint}-", namespace=namespace)
    operator.start()
    snapshot = wait_for(
        lambda: crds.get("configmap", f"shop-config-{first}", namespace=namespace),
        timeout=60,
        what="the revision's snapshot to be created again",
    )
    assert snapshot["data"] == {"mode": "blue"}
    assert snapshot["immutable"] is True
    assert snapshot["metadata"]["ownerReferences"][0]["name"] == f"shop-{first}"
    wait_for(
        fingerprint_recorded, timeout=30, what="the fingerprint to be recorded after the snapshot"
    )
    assert status(crds, namespace, "shop")["stableRevision"] == first


def test_manual_rollback_verifies_and_promotes_a_retained_revision(
    crds: Cluster, namespace: str, operator: Operator, sampler_factory: Any
) -> None:
    first = first_release(crds, namespace)["stableRevision"]
    crds.apply(release("shop", service="shop", digest=NEW_DIGEST), namespace=namespace)
    second = wait_new_stable(crds, namespace, first)["stableRevision"]
    assert second != first
    with sampler_factory("shop") as sampler:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "permafrost",
                "rollback",
                "shop",
                "--to",
                first,
                "-n",
                namespace,
            ],
            env=crds.env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert f"rolling back to revision {first}" in out.stdout
        st = wait_for(
            lambda: (
                (s := status(crds, namespace, "shop")).get("stableRevision") == first
                and s.get("phase") == "Stable"
                and s
            ),
            timeout=60,
            what="the rollback target to be stable",
        )
    assert sampler.violations == []
    rolled_back = condition({"status": st}, "RolledBack")
    assert rolled_back is not None
    assert rolled_back["reason"] == "ManualRollback"
    assert record(st, second)["outcome"] == "Retired"
    assert selector_revision(crds, namespace, "shop") == first
    events = crds.kubectl(
        "get",
        "events",
        "--field-selector",
        "reason=RollbackStarted",
        "-o",
        "jsonpath={.items[*].message}",
        namespace=namespace,
    ).stdout
    assert f"manual rollback to revision {first}" in events

    # A new spec ends the manual rollback and rolls out as usual.
    crds.apply(release("shop", service="shop", digest=THIRD_DIGEST), namespace=namespace)
    st = wait_for(
        lambda: (
            (s := status(crds, namespace, "shop")).get("stableRevision")
            not in (first, second, None)
            and s.get("phase") == "Stable"
            and s
        ),
        timeout=60,
        what="the new spec to roll out",
    )
    assert condition({"status": st}, "RolledBack")["reason"] == "NoRollback"  # type: ignore[index]


def test_rollback_to_an_unknown_revision_is_refused_with_the_retained_ones_listed(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    stable = first_release(crds, namespace)["stableRevision"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "permafrost",
            "rollback",
            "shop",
            "--to",
            "0000000000",
            "-n",
            namespace,
        ],
        env=crds.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "not retained" in proc.stderr
    assert stable in proc.stderr


def test_a_status_that_contradicts_the_cluster_is_reported_not_retried_in_silence(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    """A status naming a stable revision it has no record of cannot be planned from: the
    operator says so in one line and a Warning Event, and looks again later."""
    crds.apply(release("web", replicas=1), namespace=namespace)
    wait_phase(crds, namespace, "web", "Stable", timeout=60)
    crds.kubectl(
        "patch", "guardedrelease", "web", "--subresource=status", "--type=merge",
        "-p", '{"status": {"stableRevision": "0123456789", "revisions": []}}',
        namespace=namespace,
    )  # fmt: skip

    def reported() -> list[str]:
        items = crds.get("events", namespace=namespace)["items"]
        return [e["message"] for e in items if e["reason"] == "PlanFailed"]

    (message, *_) = wait_for(reported, timeout=30, what="the PlanFailed Event")
    assert "0123456789" in message
    log = operator.log.read_text(errors="replace")
    assert "cannot plan this release" in log
    assert "PlanError" not in log  # no traceback of it


def test_failed_and_superseded_revisions_count_toward_the_history_limit_and_go_with_snapshots(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    """``revisionHistoryLimit: 1``: one revision besides the serving one is kept, whatever its
    outcome; older ones, failed and superseded included, are deleted with their snapshots."""
    crds.kubectl("create", "configmap", "shop-config", "--from-literal=k=v", namespace=namespace)
    config = [{"kind": "ConfigMap", "name": "shop-config"}]

    def apply(**kwargs: Any) -> None:
        crds.apply(
            release("shop", service="shop", config=config, history=1, **kwargs),
            namespace=namespace,
        )

    apply()
    first = wait_phase(crds, namespace, "shop", "Stable")["stableRevision"]
    # A failed revision (rolled back): the one kept besides the stable `first`.
    apply(digest=NEW_DIGEST, annotations={"sim.permafrost.dev/behavior": "crash-loop"})
    failed = wait_phase(crds, namespace, "shop", "RolledBack", timeout=90)["desiredRevision"]
    # A slow revision superseded by a good one: first retired, failed, slow superseded.
    slow_template = {
        "sim.permafrost.dev/behavior": "slow-ready",
        "sim.permafrost.dev/ready-after": "60s",
    }
    apply(digest=THIRD_DIGEST, deadline=60, annotations=slow_template)
    slow = wait_for(
        lambda: (
            (d := status(crds, namespace, "shop").get("desiredRevision")) not in (first, failed)
            and d
        ),
        timeout=30,
        what="the slow revision",
    )
    wait_for(
        lambda: any(d["metadata"]["name"] == f"shop-{slow}"
                    for d in revision_deployments(crds, namespace, "shop")),
        timeout=30, what="the slow revision's Deployment",
    )  # fmt: skip
    apply(digest=NEW_DIGEST)
    st = wait_for(
        lambda: (
            (s := status(crds, namespace, "shop")).get("phase") == "Stable"
            and s.get("stableRevision") not in (first, failed, slow)
            and s
        ),
        timeout=90,
        what="the good revision stable",
    )
    newest = st["stableRevision"]

    def pruned() -> dict[str, Any] | None:
        s = status(crds, namespace, "shop")
        names = {d["metadata"]["name"] for d in revision_deployments(crds, namespace, "shop")}
        snaps = {
            c["metadata"]["name"]
            for c in crds.get("configmaps", namespace=namespace)["items"]
            if c["metadata"]["name"].startswith("shop-config-")
        }
        kept = {r["hash"] for r in s["revisions"]}
        want = {newest, first}  # `first` was retired last: the newest of the non-serving ones
        if (
            kept == want
            and names == {f"shop-{r}" for r in want}
            and snaps == {f"shop-config-{r}" for r in want}
        ):
            return s
        return None

    wait_for(pruned, timeout=60, what="the failed and superseded revisions pruned with snapshots")
    assert crds.get("configmap", f"shop-config-{failed}", namespace=namespace) is None
    assert crds.get("configmap", f"shop-config-{slow}", namespace=namespace) is None
