"""Permafrost itself installed by a real Argo CD (tests/argocd_harness.py) from ``deploy/``, on the
real node, with the operator image built from the Dockerfile (``make image``) and pinned by
digest in an overlay, as examples/argocd/permafrost.yaml installs it: automated sync with prune
and self-heal, server-side apply. The sync waves must put the CRDs first and the built-in
GuardrailPolicies after the operator serves its webhooks; the Application must end Synced and
Healthy, and stay Synced.
"""

from __future__ import annotations

import datetime
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from test_in_cluster import operator_image, overlay  # noqa: F401 (a fixture)

from argocd_harness import AppState, ArgoCD, GitRepo, manifests
from conftest import CRDS, OPERATOR_NAMESPACE, WEBHOOK_CONFIGURATION, wait_established
from k8s_harness import ROOT, Cluster, RealNode, wait_for

pytestmark = pytest.mark.real_node

APP = "permafrost"
POLICIES = sorted(
    yaml.safe_load(p.read_text())["metadata"]["name"]
    for p in (ROOT / "deploy" / "policies").glob("*.yaml")
    if p.name != "kustomization.yaml"
)


def _time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture
def permafrost_app(crds: Cluster, argocd: ArgoCD) -> Iterator[str]:
    """The Application's name; afterwards Permafrost is uninstalled as docs/install.md says and
    the session's CRDs are put back (deploy/ holds them)."""
    existed = crds.get("namespace", OPERATOR_NAMESPACE) is not None
    if existed:
        # NB: a stale TLS Secret of local operators would be reused as is.
        crds.kubectl("delete", "secret", "permafrost-webhook-tls", "--ignore-not-found",
                     namespace=OPERATOR_NAMESPACE, check=False)  # fmt: skip
    yield APP
    argocd.delete_app(APP)
    rendered = crds.kubectl("kustomize", str(ROOT / "deploy")).stdout
    crds.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=true", stdin=rendered,
                 timeout=180, check=False)  # fmt: skip
    crds.kubectl("delete", "validatingwebhookconfiguration", WEBHOOK_CONFIGURATION,
                 "--ignore-not-found", check=False)  # fmt: skip
    wait_for(
        lambda: crds.get("namespace", OPERATOR_NAMESPACE) is None,
        timeout=120,
        what=f"namespace {OPERATOR_NAMESPACE} gone",
    )
    if existed:
        crds.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    for crd in CRDS:
        crds.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    wait_established(
        crds,
        "crd/guardedreleases.permafrost.dev",
        "crd/guardrailpolicies.permafrost.dev",
        "crd/clusterkopfpeerings.kopf.dev",
        "crd/kopfpeerings.kopf.dev",
    )


@pytest.mark.timeout(900)
def test_argocd_installs_permafrost_from_deploy_in_waves_synced_and_healthy(
    crds: Cluster,
    argocd: ArgoCD,
    real_node: RealNode,
    operator_image: str,  # noqa: F811 (the fixture imported above)
    git_repo: GitRepo,
    permafrost_app: str,
    tmp_path: pathlib.Path,
) -> None:
    # The repository a platform team deploys from: deploy/, crds/ and its overlay beside them.
    made = overlay(tmp_path / "overlay", operator_image, real_node)
    kustomization = yaml.safe_load((made / "kustomization.yaml").read_text())
    kustomization["resources"] = ["../deploy"]
    files = {
        **{f"deploy/{k}": v for k, v in manifests(ROOT / "deploy").items()},
        **{f"crds/{k}": v for k, v in manifests(ROOT / "crds").items()},
        **{f"overlay/{k}": v for k, v in manifests(made).items()},
        "overlay/kustomization.yaml": yaml.safe_dump(kustomization, sort_keys=False),
    }
    sha = git_repo.commit("permafrost", files)
    started = time.monotonic()
    argocd.create_app(
        permafrost_app,
        repo=git_repo.url,
        path="overlay",
        namespace=OPERATOR_NAMESPACE,
        sync_options=("ServerSideApply=true",),
    )

    def done() -> AppState | None:
        argocd.alive()
        state = AppState.of(argocd.app(permafrost_app))
        ok = (state.sync, state.health, state.operation, state.revision) == (
            "Synced", "Healthy", "Succeeded", sha,
        )  # fmt: skip
        return state if ok else None

    try:
        state = wait_for(done, timeout=600, interval=2, what="Permafrost Synced and Healthy")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; {AppState.of(argocd.app(permafrost_app)).summary()}; "
            f"{(argocd.app(permafrost_app).get('status') or {}).get('operationState')}"
        ) from None
    took = time.monotonic() - started
    assert state.syncs == 1, state.summary()
    unhealthy = {
        f"{k}/{n}": r.get("health")
        for (k, n), r in state.resources.items()
        if (r.get("health") or {}).get("status") not in (None, "Healthy")
    }
    assert not unhealthy, unhealthy
    assert {s for s in (r.get("status") for r in state.resources.values())} == {"Synced"}

    # The waves, as the objects' creation shows them: the namespace before the operator, the
    # built-in policies only once the operator was available (its webhook refuses a policy that
    # does not compile). (The CRDs exist before the test; wave -2 is checked by
    # tests/unit/test_deploy.py.)
    deployment = crds.get("deployment", "permafrost", namespace=OPERATOR_NAMESPACE)
    available = next(
        c for c in deployment["status"]["conditions"]
        if c["type"] == "Available" and c["status"] == "True"
    )  # fmt: skip
    namespace = crds.get("namespace", OPERATOR_NAMESPACE)
    created = {
        "namespace": _time(namespace["metadata"]["creationTimestamp"]),
        "deployment": _time(deployment["metadata"]["creationTimestamp"]),
    }
    policies: list[Any] = [crds.get("guardrailpolicy", p) for p in POLICIES]
    assert all(policies), POLICIES
    first_policy = min(_time(p["metadata"]["creationTimestamp"]) for p in policies)
    assert created["namespace"] <= created["deployment"]
    assert first_policy >= _time(available["lastTransitionTime"]), (first_policy, available)
    assert crds.get("validatingwebhookconfiguration", WEBHOOK_CONFIGURATION) is not None
    # Pinned by digest: the image Argo CD deployed is the one built here.
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == operator_image

    # It stays Synced: the operator's own writes (webhook registration, certificate Secret,
    # peering, policies' status) are no difference.
    time.sleep(15)
    argocd.refresh(permafrost_app)
    time.sleep(10)
    after = AppState.of(argocd.app(permafrost_app))
    assert (after.sync, after.health, after.syncs) == ("Synced", "Healthy", 1), after.summary()
    print(f"installed by Argo CD in {took:.0f}s: {after.summary()}")
