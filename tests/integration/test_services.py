"""Services against the real control plane: a misspelt spec.service.name, and other Services
that select a release's pods (they would send traffic to revisions that are not verified)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import yaml

from conftest import Operator, release, status, wait_phase
from k8s_harness import Cluster, condition, wait_for
from permafrost.guards import admission


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


def test_the_services_guard_puts_permafrosts_selector_keys_back_for_anyone_but_the_operator(
    crds: Cluster, namespace: str
) -> None:
    """The MutatingAdmissionPolicy of deploy/ (admission.service_guard_manifests), bound to this
    namespace only: whatever another writer sends — a server-side apply of the Git selector with
    force (Argo CD), its dry-run (Argo CD's server-side diff), a JSON patch removing the
    selector, a merge patch pointing it at another revision — the stored selector keeps
    Permafrost's two keys; the operator's identity switches them."""
    operator_user = f"system:serviceaccount:{namespace}:operator"
    policy, binding = admission.service_guard_manifests(
        name=f"{admission.SERVICE_GUARD}-{namespace}"[:63],
        settings=admission.Settings(exempt_users=frozenset({operator_user})),
    )
    binding["spec"]["policyName"] = policy["metadata"]["name"]
    binding["spec"]["matchResources"] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    }
    crds.kubectl("create", "rolebinding", "operator", "--clusterrole=edit",
                 f"--serviceaccount={namespace}:operator", namespace=namespace)  # fmt: skip
    ours = {"permafrost.dev/release": "shop", "permafrost.dev/revision": "aaaa"}
    crds.apply(service("shop", {"app": "shop"}), namespace=namespace)
    crds.kubectl("patch", "service", "shop", "--type", "merge", "-p",
                 json.dumps({"spec": {"selector": ours}}), namespace=namespace)  # fmt: skip
    crds.apply([policy, binding])
    try:
        git = yaml.safe_dump(service("shop", {"app": "shop"}))

        def selector() -> dict[str, str]:
            got: dict[str, str] = crds.get("service", "shop", namespace=namespace)["spec"][
                "selector"
            ]
            return got

        # NB: the apiserver loads a new policy asynchronously: until it applies, retry.
        def restored_on_apply() -> dict[str, str] | None:
            dry = crds.kubectl(
                "apply", "--server-side", "--force-conflicts", "--field-manager=argocd-controller",
                "--dry-run=server", "-o", "json", "-f", "-", stdin=git, namespace=namespace,
            )  # fmt: skip
            got: dict[str, str] = json.loads(dry.stdout)["spec"]["selector"]
            return got if got == {"app": "shop", **ours} else None

        wait_for(restored_on_apply, timeout=30, interval=1, what="the guard to apply")
        crds.kubectl(
            "apply", "--server-side", "--force-conflicts", "--field-manager=argocd-controller",
            "-f", "-", stdin=git, namespace=namespace,
        )  # fmt: skip
        assert selector() == {"app": "shop", **ours}
        remove = '[{"op": "remove", "path": "/spec/selector"}]'
        crds.kubectl("patch", "service", "shop", "--type", "json", "-p", remove,
                     namespace=namespace)  # fmt: skip
        assert selector() == ours
        crds.kubectl("patch", "service", "shop", "--type", "merge", "-p",
                     '{"spec": {"selector": {"permafrost.dev/revision": "bbbb", "app": "x"}}}',
                     namespace=namespace)  # fmt: skip
        assert selector() == {"app": "x", **ours}
        # The operator (its identity) switches the revision; the user's key stays theirs.
        crds.kubectl("patch", "service", "shop", "--type", "merge", f"--as={operator_user}", "-p",
                     '{"spec": {"selector": {"permafrost.dev/revision": "cccc"}}}',
                     namespace=namespace)  # fmt: skip
        assert selector() == {"app": "x", **ours, "permafrost.dev/revision": "cccc"}
    finally:
        crds.kubectl("delete", "mutatingadmissionpolicybinding", binding["metadata"]["name"],
                     check=False)  # fmt: skip
        crds.kubectl("delete", "mutatingadmissionpolicy", policy["metadata"]["name"], check=False)


def test_a_service_created_under_a_releases_name_selects_only_its_verified_revision(
    crds: Cluster, namespace: str
) -> None:
    """The MutatingAdmissionPolicy of deploy/ (admission.service_route_manifests), bound to this
    namespace only, with no operator running: a Service created (or dry-run created, as Argo
    CD's server-side diff does) under a release's spec.service.name gets Permafrost's two
    selector keys from its first write — the release's stable revision, or "none" while it has
    none — and keeps its own keys; any other Service, a Service of another namespace's release
    and the operator's own writes are left as sent."""
    operator_user = f"system:serviceaccount:{namespace}:operator"
    policy, binding = admission.service_route_manifests(
        name=f"{admission.SERVICE_ROUTES}-{namespace}"[:63],
        settings=admission.Settings(exempt_users=frozenset({operator_user})),
    )
    binding["spec"]["policyName"] = policy["metadata"]["name"]
    binding["spec"]["matchResources"] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    }
    crds.kubectl("create", "rolebinding", "operator", "--clusterrole=edit",
                 f"--serviceaccount={namespace}:operator", namespace=namespace)  # fmt: skip
    crds.apply(release("shop", service="shop"), namespace=namespace)
    crds.apply([policy, binding])
    ours = {"permafrost.dev/release": "shop"}
    try:

        def dry_run(body: dict[str, Any]) -> dict[str, str]:
            out = crds.kubectl(
                "create", "--dry-run=server", "-o", "json", "-f", "-",
                stdin=yaml.safe_dump(body), namespace=namespace,
            )  # fmt: skip
            selector: dict[str, str] = json.loads(out.stdout)["spec"].get("selector") or {}
            return selector

        def routed_to(revision: str) -> dict[str, str] | None:
            got = dry_run(service("shop", {"app": "shop"}))
            wanted = {"app": "shop", **ours, "permafrost.dev/revision": revision}
            return got if got == wanted else None

        # NB: the apiserver loads a new policy, and sees its parameters change, asynchronously.
        wait_for(lambda: routed_to("none"), timeout=30, interval=1, what="the policy to apply")
        stable = '{"status": {"stableRevision": "aaaa"}}'
        crds.kubectl("patch", "guardedrelease", "shop", "--subresource=status", "--type=merge",
                     "-p", stable, namespace=namespace)  # fmt: skip
        wait_for(lambda: routed_to("aaaa"), timeout=30, interval=1, what="the stable revision")

        # Created for real, as Git has it: the stored selector narrows to the stable revision.
        crds.apply(service("shop", {"app": "shop"}), namespace=namespace)
        stored = crds.get("service", "shop", namespace=namespace)["spec"]["selector"]
        assert stored == {"app": "shop", **ours, "permafrost.dev/revision": "aaaa"}
        # No selector at all: Permafrost's two keys are the selector.
        crds.kubectl("delete", "service", "shop", namespace=namespace)
        bare = service("shop", {})
        del bare["spec"]["selector"]
        crds.apply(bare, namespace=namespace)
        stored = crds.get("service", "shop", namespace=namespace)["spec"]["selector"]
        assert stored == {**ours, "permafrost.dev/revision": "aaaa"}
        # Another name: the user's own Service (the release's TrafficGuarded condition reports
        # it when it selects the release's pods; see above).
        assert dry_run(service("shop-peers", {"app": "shop"})) == {"app": "shop"}
        # The operator routes the Service itself, sometimes ahead of its status.
        crds.kubectl("delete", "service", "shop", namespace=namespace)
        mine = {"app": "shop", **ours, "permafrost.dev/revision": "bbbb"}
        crds.kubectl("create", f"--as={operator_user}", "-f", "-",
                     stdin=yaml.safe_dump(service("shop", mine)), namespace=namespace)  # fmt: skip
        assert crds.get("service", "shop", namespace=namespace)["spec"]["selector"] == mine
    finally:
        crds.kubectl("delete", "mutatingadmissionpolicybinding", binding["metadata"]["name"],
                     check=False)  # fmt: skip
        crds.kubectl("delete", "mutatingadmissionpolicy", policy["metadata"]["name"], check=False)


def test_a_releases_service_cannot_become_or_be_created_as_a_dns_alias(
    crds: Cluster, namespace: str
) -> None:
    """The ValidatingAdmissionPolicy of deploy/ (admission.service_type_manifests), bound to
    this namespace only, no operator running: a routed Service (Permafrost's two keys in its
    selector) is not turned into ``type: ExternalName``, a Service named by a release is not
    created as one; another Service may be, and the operator's identity is exempt."""
    operator_user = f"system:serviceaccount:{namespace}:operator"
    policy, binding = admission.service_type_manifests(
        name=f"{admission.SERVICE_TYPE}-{namespace}"[:63],
        settings=admission.Settings(exempt_users=frozenset({operator_user})),
    )
    binding["spec"]["policyName"] = policy["metadata"]["name"]
    binding["spec"]["matchResources"] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    }
    crds.kubectl("create", "rolebinding", "operator", "--clusterrole=edit",
                 f"--serviceaccount={namespace}:operator", namespace=namespace)  # fmt: skip
    crds.apply(release("shop", service="shop"), namespace=namespace)
    ours = {"app": "shop", "permafrost.dev/release": "shop", "permafrost.dev/revision": "aaaa"}
    crds.apply(service("shop", ours), namespace=namespace)
    crds.apply([policy, binding])
    alias = {"spec": {"type": "ExternalName", "externalName": "elsewhere.example"}}
    try:

        def refused(*who: str) -> str | None:
            proc = crds.kubectl(
                "patch", "service", "shop", "--type=merge", "-p", json.dumps(alias),
                "--dry-run=server", *who, namespace=namespace, check=False,
            )  # fmt: skip
            return proc.stderr if proc.returncode != 0 else None

        # NB: the apiserver loads a new policy asynchronously: until it applies, retry.
        message = wait_for(refused, timeout=30, interval=1, what="the policy to apply")
        assert "carries a GuardedRelease's traffic: it cannot be of type ExternalName" in message
        assert crds.get("service", "shop", namespace=namespace)["spec"]["type"] == "ClusterIP"
        # Deleted and created again as an alias under the release's name: refused too.
        crds.kubectl("delete", "service", "shop", namespace=namespace)
        external = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "shop"},
            "spec": {"type": "ExternalName", "externalName": "elsewhere.example"},
        }
        created = crds.kubectl("create", "-f", "-", stdin=yaml.safe_dump(external),
                               namespace=namespace, check=False)  # fmt: skip
        assert created.returncode != 0
        assert "cannot be of type ExternalName" in created.stderr
        # Another name is the user's; the operator's identity is exempt.
        other = {**external, "metadata": {"name": "partner-api"}}
        crds.kubectl("create", "-f", "-", stdin=yaml.safe_dump(other), namespace=namespace)
        crds.kubectl("create", "-f", "-", f"--as={operator_user}",
                     stdin=yaml.safe_dump(external), namespace=namespace)  # fmt: skip
    finally:
        crds.kubectl("delete", "validatingadmissionpolicybinding",
                     binding["metadata"]["name"], check=False)  # fmt: skip
        crds.kubectl("delete", "validatingadmissionpolicy", policy["metadata"]["name"],
                     check=False)  # fmt: skip
