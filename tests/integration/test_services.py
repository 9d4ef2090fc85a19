"""Services against the real control plane: a misspelt spec.service.name, and other Services
that select a release's pods (they would send traffic to revisions that are not verified)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from conftest import Operator, release, status, wait_phase
from k8s_harness import Cluster, condition, wait_for


def service(name: str, selector: dict[str, str], **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"selector": selector, "ports": [{"port": 80, "targetPort": 8080}]},
    }


def traffic(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    return condition({"status": status(cluster, namespace, name)}, "TrafficGuarded")


def events(cluster: Cluster, namespace: str, reason: str) -> str:
    return cluster.kubectl(
        "get",
        "events",
        "--field-selector",
        f"reason={reason},involvedObject.kind=GuardedRelease",
        "-o",
        "jsonpath={.items[*].message}",
        namespace=namespace,
    ).stdout


def test_a_misspelt_service_name_is_visible_and_the_real_service_is_named(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    # The user's Service "shop" selects app=shop; the release names "shpo".
    crds.apply(service("shop", {"app": "shop"}), namespace=namespace)
    crds.apply(release("shop", service="shpo"), namespace=namespace)
    st = wait_phase(crds, namespace, "shop", "Stable", timeout=90)
    created = crds.get("service", "shpo", namespace=namespace)
    assert created is not None
    assert created["metadata"]["ownerReferences"][0]["name"] == "shop"
    assert "Service shpo did not exist: Permafrost created it" in events(
        crds, namespace, "ServiceCreated"
    )

    def unguarded() -> dict[str, Any] | None:
        found = traffic(crds, namespace, "shop")
        return found if found and found["status"] == "False" else None

    guarded = wait_for(unguarded, timeout=30, interval=0.5, what="TrafficGuarded=False")
    assert guarded["reason"] == "UnguardedService"
    assert "Service shop (app=shop)" in guarded["message"]
    assert "spec.service (shpo)" in guarded["message"]
    assert "Service shop (app=shop)" in events(crds, namespace, "UnguardedService")
    # Detecting is not acting: the user's Service is left as it was.
    assert crds.get("service", "shop", namespace=namespace)["spec"]["selector"] == {"app": "shop"}

    # permafrost status shows it.
    shown = subprocess.run(
        [sys.executable, "-m", "permafrost", "status", "shop", "-n", namespace],
        env=crds.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    assert "TrafficGuarded" in shown
    assert "UnguardedService" in shown
    assert st["stableRevision"]

    # Fixing the name: the real Service is taken over and nothing is reported any more (the
    # Service created for the misspelt name stays, owned by the release, selecting only the
    # stable revision).
    fixed = release("shop", service="shop")
    crds.apply(fixed, namespace=namespace)

    def routed() -> dict[str, Any] | None:
        found = traffic(crds, namespace, "shop")
        return found if found and found["reason"] == "ServiceRouted" else None

    guarded = wait_for(routed, timeout=60, interval=0.5, what="TrafficGuarded=ServiceRouted")
    assert guarded["status"] == "True"
    selector = crds.get("service", "shop", namespace=namespace)["spec"]["selector"]
    assert selector["permafrost.dev/revision"] == status(crds, namespace, "shop")["stableRevision"]


def test_a_second_service_selecting_the_pods_is_reported_until_acknowledged(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    crds.apply(release("shop", service="shop"), namespace=namespace)
    wait_phase(crds, namespace, "shop", "Stable", timeout=90)
    # No Service "shop" existed: Permafrost created it, and says so.
    assert traffic(crds, namespace, "shop")["reason"] == "ServiceCreated"  # type: ignore[index]

    # A headless Service added later, selecting the template's labels.
    headless = service("shop-peers", {"app": "shop"})
    headless["spec"]["clusterIP"] = "None"
    crds.apply(headless, namespace=namespace)

    def reported() -> dict[str, Any] | None:
        found = traffic(crds, namespace, "shop")
        return found if found and found["status"] == "False" else None

    guarded = wait_for(reported, timeout=30, interval=0.5, what="the new Service to be reported")
    assert "Service shop-peers (app=shop)" in guarded["message"]
    assert "shop-peers" in events(crds, namespace, "UnguardedService")

    crds.kubectl(
        "annotate",
        "service",
        "shop-peers",
        "permafrost.dev/selects-unverified-pods=true",
        namespace=namespace,
    )

    def cleared() -> dict[str, Any] | None:
        found = traffic(crds, namespace, "shop")
        return found if found and found["status"] == "True" else None

    assert wait_for(cleared, timeout=30, interval=0.5, what="acknowledged")["reason"] == (
        "ServiceCreated"
    )
