"""The Argo CD health check on live GuardedReleases: the real operator drives each release into
a state, and the Lua (in a real Lua 5.1 runtime, with the libraries Argo CD opens) must give the
health Argo CD should show — as configured by the shipped argocd-cm patch, and in Argo CD's
default sandbox (no ``useOpenLibs``), where it must never fail.

With ``PERMAFROST_CAPTURE_ARGOCD=DIR`` (``hack/capture-argocd-fixtures.sh``) every object
checked here is also saved to DIR, for the fast unit test of the same mapping.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from argocd_health import health
from conftest import Operator, release, status, wait_phase
from k8s_harness import ROOT, Cluster, wait_for

NEW_DIGEST = "@sha256:" + "2" * 64
APPROVAL_POLICY = ROOT / "deploy" / "policies" / "permafrost-production-approval.yaml"
HOLD_POLICY = "argocd-health-hold"


def hold_policy(namespace: str) -> dict[str, Any]:
    """A promote-stage policy that holds every release labelled ``hold=true`` in ``namespace``."""
    return {
        "apiVersion": "permafrost.dev/v1alpha1",
        "kind": "GuardrailPolicy",
        "metadata": {"name": HOLD_POLICY},
        "spec": {
            "stages": ["promote"],
            "match": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "objectSelector": {"matchLabels": {"hold": "true"}},
            },
            "rules": [
                {
                    "name": "change-window",
                    "expression": "false",
                    "message": "no promotions outside the change window",
                }
            ],
        },
    }


@pytest.fixture
def global_policies(crds: Cluster) -> Iterator[None]:
    yield
    for name in (HOLD_POLICY, "permafrost-production-approval"):
        crds.kubectl("delete", "guardrailpolicy", name, "--ignore-not-found", check=False)


class Checker:
    """Reads a live release, runs the health check on it, and saves it when capturing."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        target = os.environ.get("PERMAFROST_CAPTURE_ARGOCD")
        self.capture = pathlib.Path(target) if target else None

    def obj(self, name: str) -> dict[str, Any]:
        body: dict[str, Any] = self.cluster.get("guardedrelease", name, namespace=self.namespace)
        return body

    def check(self, fixture: str, name: str, expected: str, fragment: str) -> dict[str, Any]:
        body = self.obj(name)
        got, message = health(body)
        assert (got, fragment in message) == (expected, True), (got, message, body.get("status"))
        # NB: without the string library a wait for approval cannot be told from a hold.
        plain = health(body, open_libs=False)
        wanted = ("Degraded", plain[1]) if expected == "Suspended" else (got, message)
        assert plain == wanted, (plain, body.get("status"))
        if self.capture is not None:
            self.save(fixture, body)
        return body

    def save(self, fixture: str, body: dict[str, Any]) -> None:
        assert self.capture is not None
        meta = body["metadata"]
        for field in ("managedFields", "resourceVersion", "uid", "creationTimestamp"):
            meta.pop(field, None)
        (meta.get("annotations") or {}).pop(
            "kubectl.kubernetes.io/last-applied-configuration", None
        )
        if meta.get("annotations") == {}:
            del meta["annotations"]
        # NB: test namespaces have random names; fixtures use one fixed name.
        text = json.dumps(body).replace(self.namespace, "shop")
        self.capture.mkdir(parents=True, exist_ok=True)
        (self.capture / f"{fixture}.yaml").write_text(
            yaml.safe_dump(json.loads(text), sort_keys=False)
        )


def wait_until(cluster: Cluster, namespace: str, name: str, what: str, probe: Any) -> None:
    wait_for(lambda: probe(status(cluster, namespace, name)), timeout=90, interval=0.5, what=what)


def test_the_argocd_health_check_maps_every_live_state(
    crds: Cluster, namespace: str, operator: Operator, global_policies: None
) -> None:
    check = Checker(crds, namespace)
    crds.apply(hold_policy(namespace))

    # The operator is down: new releases have no status yet.
    operator.stop()
    held = release("held", deadline=20)
    held["metadata"]["labels"] = {"hold": "true"}
    crds.apply(
        [
            release("web", service="web", deadline=20),
            release("slow", deadline=120),
            release("never", deadline=6),
            release("crash", deadline=20),
            held,
        ],
        namespace=namespace,
    )
    check.check("progressing_no_status", "web", "Progressing", "observe the release")
    operator.start()

    for name in ("web", "slow", "never", "crash"):
        wait_phase(crds, namespace, name, "Stable", timeout=90)
    check.check("healthy_stable", "web", "Healthy", "Ready")

    # Verified but held by a promote-stage policy: Degraded, with the rule's message.
    wait_phase(crds, namespace, "held", "Held", timeout=90)
    check.check("degraded_policy_hold", "held", "Degraded", "no promotions outside the change")

    # A spec change the operator has not seen yet (it is down again).
    operator.stop()

    def upgrade(name: str, behavior: str | None = None, **kwargs: Any) -> None:
        annotations = {"sim.permafrost.dev/behavior": behavior} if behavior else {}
        if behavior == "slow-ready":
            annotations["sim.permafrost.dev/ready-after"] = "300"
        crds.apply(
            release(name, digest=NEW_DIGEST, annotations=annotations, **kwargs),
            namespace=namespace,
        )

    upgrade("web", service="web", deadline=20)
    upgrade("slow", "slow-ready", deadline=120)
    upgrade("never", "never-ready", deadline=6)
    upgrade("crash", "crash-loop", deadline=20)
    check.check("progressing_new_generation", "web", "Progressing", "latest spec")
    operator.start()

    wait_until(
        crds,
        namespace,
        "slow",
        "slow to verify its new revision",
        lambda st: (
            st.get("phase") == "Progressing"
            and st.get("desiredRevision") != st.get("stableRevision")
        ),
    )
    check.check("progressing_verifying", "slow", "Progressing", "verifying revision")

    wait_phase(crds, namespace, "never", "RolledBack", timeout=90)
    check.check("degraded_rolled_back_deadline", "never", "Degraded", "ProgressDeadlineExceeded")
    wait_phase(crds, namespace, "crash", "RolledBack", timeout=90)
    check.check("degraded_rolled_back_crash_loop", "crash", "Degraded", "CrashLoop")
    wait_until(
        crds,
        namespace,
        "web",
        "web to promote its new revision",
        lambda st: (
            st.get("phase") == "Stable"
            and st.get("stableRevision") == st.get("desiredRevision")
            and len(st.get("revisions") or []) > 1
        ),
    )
    check.check("healthy_upgraded", "web", "Healthy", "Ready")

    # Production needs an approval (the built-in policy): Suspended until someone approves.
    crds.kubectl("label", "namespace", namespace, "environment=production")
    crds.kubectl("apply", "-f", str(APPROVAL_POLICY))
    crds.apply(release("approval", deadline=20), namespace=namespace)
    wait_phase(crds, namespace, "approval", "Held", timeout=90)
    check.check("suspended_approval", "approval", "Suspended", "permafrost.dev/approved-by")
    crds.kubectl(
        "annotate", "grel", "approval", "permafrost.dev/approved-by=alice", namespace=namespace
    )
    wait_phase(crds, namespace, "approval", "Stable", timeout=90)
    check.check("healthy_approved", "approval", "Healthy", "Ready")

    # Rolled back, the spec is untouched: what Git holds is what the cluster holds.
    never = check.obj("never")
    images = [c["image"] for c in never["spec"]["template"]["spec"]["containers"]]
    assert images == [f"registry.example/shop/app{NEW_DIGEST}"]
    assert never["spec"]["template"]["metadata"]["annotations"] == {
        "sim.permafrost.dev/behavior": "never-ready"
    }
