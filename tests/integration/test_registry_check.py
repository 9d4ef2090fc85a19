"""The operator's registry check (``permafrost run --registry-check``) against a real OCI
registry on loopback (tests/oci_registry.py), with the fake nodes: a revision whose image is not
in its registry is never created; it is created once the image is there; an unreachable
registry holds (closed) or is reported and let through (open)."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import pytest

from conftest import Operator, release, status, wait_phase
from k8s_harness import Cluster, condition, wait_for
from oci_registry import build, push, push_tarball

ABSENT = "@sha256:" + "0" * 64
DOWN = "127.0.0.1:9/shop/app"  # nothing listens on the discard port


@pytest.fixture
def operator_args(request: pytest.FixtureRequest) -> Sequence[str]:
    return ("--registry-check", getattr(request, "param", "closed"))


def events(cluster: Cluster, namespace: str, reason: str) -> str:
    return cluster.kubectl(
        "get", "events", "--field-selector",
        f"reason={reason},involvedObject.kind=GuardedRelease",
        "-o", "jsonpath={.items[*].message}", namespace=namespace,
    ).stdout  # fmt: skip


def held(cluster: Cluster, namespace: str, name: str, reason: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        st = status(cluster, namespace, name)
        compliant = condition({"status": st}, "PolicyCompliant")
        ok = st.get("phase") == "Held" and compliant and compliant["reason"] == reason
        return dict(compliant) if ok and compliant else None

    return wait_for(found, timeout=60, interval=0.5, what=f"{name} held ({reason})")


def revisions(cluster: Cluster, namespace: str, name: str) -> list[str]:
    found = cluster.get(
        "deployments", namespace=namespace, selector=f"permafrost.dev/release={name}"
    )
    return [d["metadata"]["name"] for d in found["items"]]


def test_only_images_the_registry_holds_are_rolled_out(
    crds: Cluster, namespace: str, registry_host: str, operator: Operator, tmp_path: pathlib.Path
) -> None:
    repo = f"{registry_host}/shop/app"
    digest = push(f"{repo}:v1", b"app v1")
    # v2 is built and its digest known, but it is pushed only later.
    v2 = tmp_path / "v2.tar"
    v2_digest = build(f"{repo}:v2", b"app v2", into=v2)
    crds.apply(release("shop", image=repo, digest=f"@{digest}"), namespace=namespace)
    crds.apply(release("ghost", image=repo, digest=ABSENT), namespace=namespace)
    crds.apply(release("later", image=repo, digest=f"@{v2_digest}"), namespace=namespace)
    crds.apply(release("down", image=DOWN, digest=ABSENT), namespace=namespace)

    wait_phase(crds, namespace, "shop", "Stable", timeout=90)
    ghost = held(crds, namespace, "ghost", "ImageNotFound")
    assert f"{repo}{ABSENT}: the registry has no such image" in ghost["message"]
    assert "the registry has no such image" in events(crds, namespace, "ImageNotFound")
    down = held(crds, namespace, "down", "RegistryUnreachable")
    assert "127.0.0.1:9 is unreachable" in down["message"]
    held(crds, namespace, "later", "ImageNotFound")
    # Nothing was created for a held release: no revision Deployment, no pod.
    for name in ("ghost", "later", "down"):
        assert revisions(crds, namespace, name) == [], name

    # v2 is pushed: the release is looked at again (the registry is not watched) and rolls
    # out; the spec of the other is corrected: it rolls out too.
    assert push_tarball(v2, f"{repo}:v2") == v2_digest
    wait_phase(crds, namespace, "later", "Stable", timeout=90)
    crds.apply(release("ghost", image=repo, digest=f"@{digest}"), namespace=namespace)
    wait_phase(crds, namespace, "ghost", "Stable", timeout=90)
    compliant = condition({"status": status(crds, namespace, "ghost")}, "PolicyCompliant")
    assert compliant is not None
    assert compliant["reason"] != "ImageNotFound"


@pytest.mark.parametrize("operator_args", ["open"], indirect=True)
def test_an_unreachable_registry_is_reported_and_let_through_when_the_check_fails_open(
    crds: Cluster, namespace: str, registry_host: str, operator: Operator
) -> None:
    repo = f"{registry_host}/shop/app"
    crds.apply(release("down", image=DOWN, digest=ABSENT), namespace=namespace)
    crds.apply(release("ghost", image=repo, digest=ABSENT), namespace=namespace)
    wait_phase(crds, namespace, "down", "Stable", timeout=90)
    assert "127.0.0.1:9 is unreachable" in events(crds, namespace, "RegistryUnreachable")
    # Open is about reachability only: a registry that answers "no such image" still holds.
    held(crds, namespace, "ghost", "ImageNotFound")
