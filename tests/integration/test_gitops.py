"""The GitOps contract, as Argo CD would see it: after Permafrost rolled out, rolled back or
returned to a revision, the live objects Git tracks still match Git (``kubectl diff`` of the
example app is empty), and what Permafrost made is owned by the release (Argo CD's tree)."""

from __future__ import annotations

import json
import pathlib
import shutil

import yaml

from argocd_health import health
from conftest import Operator, wait_phase
from k8s_harness import ROOT, Cluster, wait_for

APP = ROOT / "examples" / "argocd" / "shop"
KEY = "resource.customizations.health.permafrost.dev_GuardedRelease"


def diff(cluster: Cluster, namespace: str, path: pathlib.Path) -> str:
    """What ``kubectl diff -k`` finds between Git (``path``) and the cluster ('' if nothing)."""
    proc = cluster.kubectl("diff", "-k", str(path), namespace=namespace, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout


def owners(obj: dict[str, object]) -> list[tuple[str, str]]:
    refs = obj["metadata"].get("ownerReferences") or []  # type: ignore[attr-defined]
    return [(r["kind"], r["name"]) for r in refs]


def test_the_example_app_stays_in_sync_through_a_rollout_a_rollback_and_a_revert(
    crds: Cluster, namespace: str, operator: Operator, tmp_path: pathlib.Path
) -> None:
    crds.kubectl("apply", "-k", str(APP), namespace=namespace)
    first = wait_phase(crds, namespace, "checkout", "Stable", timeout=120)
    stable = first["stableRevision"]
    assert diff(crds, namespace, APP) == ""

    service = crds.get("service", "checkout", namespace=namespace)
    assert owners(service) == [("GuardedRelease", "checkout")]
    assert service["spec"]["selector"]["permafrost.dev/revision"] == stable
    (deployment,) = crds.get(
        "deployments", namespace=namespace, selector="permafrost.dev/release=checkout"
    )["items"]
    assert owners(deployment) == [("GuardedRelease", "checkout")]

    # A commit that breaks the release: it is rolled back, and Git still matches the cluster.
    broken = tmp_path / "shop"
    shutil.copytree(APP, broken)
    manifest = yaml.safe_load((broken / "checkout.yaml").read_text())
    manifest["spec"]["template"]["metadata"]["annotations"] = {
        "sim.permafrost.dev/behavior": "never-ready"
    }
    manifest["spec"]["rollout"]["progressDeadlineSeconds"] = 8
    (broken / "checkout.yaml").write_text(yaml.safe_dump(manifest))
    crds.kubectl("apply", "-k", str(broken), namespace=namespace)
    rolled_back = wait_phase(crds, namespace, "checkout", "RolledBack", timeout=90)
    assert rolled_back["stableRevision"] == stable
    assert health(crds.get("guardedrelease", "checkout", namespace=namespace))[0] == "Degraded"
    assert diff(crds, namespace, broken) == ""

    # Reverting the commit returns to the stable revision at once: same content, same hash.
    crds.kubectl("apply", "-k", str(APP), namespace=namespace)

    def healthy() -> bool:
        obj = crds.get("guardedrelease", "checkout", namespace=namespace)
        st = obj.get("status") or {}
        return st.get("desiredRevision") == stable and health(obj)[0] == "Healthy"

    wait_for(healthy, timeout=60, interval=0.5, what="checkout Healthy on its stable revision")
    assert diff(crds, namespace, APP) == ""
    assert "never-ready" in diff(crds, namespace, broken)  # the diff does see a real difference
    names = {
        d["metadata"]["name"]
        for d in crds.get(
            "deployments", namespace=namespace, selector="permafrost.dev/release=checkout"
        )["items"]
    }
    assert len(names) == 2  # the stable revision, and the failed one kept for inspection


def test_the_argocd_cm_patch_adds_the_health_check_and_keeps_the_other_settings(
    crds: Cluster, namespace: str
) -> None:
    crds.kubectl(
        "create",
        "configmap",
        "argocd-cm",
        "--from-literal=url=https://argocd.example",
        namespace=namespace,
    )
    patch = yaml.safe_load((ROOT / "deploy" / "argocd" / "argocd-cm-health.yaml").read_text())
    assert patch["metadata"]["namespace"] == "argocd"
    patch["metadata"]["namespace"] = namespace  # NB: the test's own namespace stands in
    crds.kubectl(
        "patch",
        "configmap",
        "argocd-cm",
        "--type",
        "merge",
        "-p",
        json.dumps(patch),
        namespace=namespace,
    )
    data = crds.get("configmap", "argocd-cm", namespace=namespace)["data"]
    assert data["url"] == "https://argocd.example"
    assert data[KEY] == (ROOT / "deploy" / "argocd" / "guardedrelease-health.lua").read_text()
