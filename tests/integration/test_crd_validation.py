"""The GuardedRelease CRD in the real apiserver: installed, and refusing what it must refuse.

The CRD is applied once per module and left installed: it is cluster-wide, and deleting it would
delete every GuardedRelease in the cluster.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml

from k8s_harness import ROOT, Cluster, to_yaml, wait_for
from permafrost import models

CRD_FILE = ROOT / "crds" / "guardedrelease.yaml"
CRD_NAME = f"{models.PLURAL}.{models.GROUP}"
HEX64 = "0123456789abcdef" * 4
PINNED = f"registry.example/web@sha256:{HEX64}"


def release(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


def template(*containers: dict[str, Any], **pod_spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": list(containers), **pod_spec},
    }


def container(image: str, name: str = "web") -> dict[str, Any]:
    return {"name": name, "image": image}


def patch_status(
    cluster: Cluster, namespace: str, name: str, status: dict[str, Any], *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """A merge patch of the status subresource, as the operator writes it."""
    patch = json.dumps({"status": status})
    return cluster.kubectl(
        "patch", "guardedrelease", name, "--subresource=status", "--type=merge", "-p", patch,
        namespace=namespace, check=check,
    )  # fmt: skip


@pytest.fixture(scope="module")
def served_crd(cluster: Cluster) -> Cluster:
    """The cluster with the committed CRD installed and its current rules in force."""
    # NB: --force-conflicts: another field manager may have applied an older version.
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.kubectl(
        "wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s", timeout=90
    )

    # NB: an updated CRD is Established at once, but the apiserver swaps in the new schema
    # asynchronously; wait until a release with an unpinned image is refused.
    def unpinned_refused() -> str | None:
        probe = release("probe", {"template": template(container("nginx:1.27"))})
        proc = cluster.kubectl(
            "create", "--dry-run=server", "-f", "-",
            namespace="default", stdin=to_yaml(probe), check=False,
        )  # fmt: skip
        return proc.stderr if "is not pinned by digest" in proc.stderr else None

    wait_for(unpinned_refused, timeout=30, interval=0.5, what="the CRD's rules to be served")
    return cluster


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        pytest.param(
            {"template": template(container("nginx:1.27"))},
            "spec.template.spec.containers[0].image",
            'spec.template.spec.containers[web].image "nginx:1.27" is not pinned by digest: '
            "use name@sha256:<64 hex>",
            id="image-pinned-by-tag-only",
        ),
        pytest.param(
            {"template": template(container("nginx@sha256:abc123"))},
            "spec.template.spec.containers[0].image",
            'spec.template.spec.containers[web].image "nginx@sha256:abc123" is not pinned',
            id="image-with-a-short-digest",
        ),
        pytest.param(
            {
                "template": template(
                    container(PINNED), initContainers=[container("busybox", "init")]
                )
            },
            "spec.template.spec.initContainers[0].image",
            'spec.template.spec.initContainers[init].image "busybox" is not pinned by digest',
            id="init-container-not-pinned",
        ),
        pytest.param(
            {"template": template()},
            "spec.template.spec.containers",
            "should have at least 1 items",
            id="no-containers",
        ),
        pytest.param(
            {"replicas": -1, "template": template(container(PINNED))},
            "spec.replicas",
            "should be greater than or equal to 0",
            id="negative-replicas",
        ),
    ],
)
def test_the_apiserver_rejects_an_invalid_release_naming_the_field(
    served_crd: Cluster, namespace: str, spec: dict[str, Any], field: str, message: str
) -> None:
    proc = served_crd.apply(release("bad", spec), namespace=namespace, check=False)

    assert proc.returncode != 0
    assert f"{field}: Invalid value" in proc.stderr
    assert message in proc.stderr
    assert served_crd.get("guardedrelease", "bad", namespace=namespace) is None


def test_strict_apply_rejects_an_unknown_spec_field(served_crd: Cluster, namespace: str) -> None:
    manifest = release("typo", {"replica": 3, "template": template(container(PINNED))})

    proc = served_crd.kubectl(
        "apply", "--validate=strict", "-f", "-",
        namespace=namespace, stdin=to_yaml(manifest), check=False,
    )  # fmt: skip

    assert proc.returncode != 0
    assert 'unknown field "spec.replica"' in proc.stderr
    assert served_crd.get("guardedrelease", "typo", namespace=namespace) is None


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(f"registry.example/web@sha512:{HEX64 * 2}", id="sha512-digest"),
        pytest.param(f"reg.example/a:1.2@sha256:{HEX64}", id="tag-before-the-digest"),
    ],
)
def test_the_apiserver_accepts_an_image_pinned_by_digest(
    served_crd: Cluster, namespace: str, image: str
) -> None:
    served_crd.apply(release("web", {"template": template(container(image))}), namespace=namespace)

    obj = served_crd.get("guardedrelease", "web", namespace=namespace)
    assert obj["spec"]["template"]["spec"]["containers"][0]["image"] == image


def test_the_apiserver_defaults_a_release_the_way_the_model_does(
    served_crd: Cluster, namespace: str
) -> None:
    spec = {
        "template": template(container(PINNED)),
        "service": {"name": "web", "ports": [{"port": 80, "targetPort": "http"}]},
    }
    served_crd.apply(release("web", spec), namespace=namespace)

    stored = served_crd.get("guardedrelease", "web", namespace=namespace)["spec"]
    expected = models.GuardedReleaseSpec.model_validate(spec).to_json()
    expected.pop("configRefs")  # NB: empty list: not defaulted by the CRD, the same to the model
    assert stored == expected


def test_a_valid_release_is_listed_with_the_printer_columns(
    served_crd: Cluster, namespace: str
) -> None:
    spec = {"replicas": 3, "template": template(container(PINNED))}
    served_crd.apply(release("web", spec), namespace=namespace)
    status = {
        "observedGeneration": 1,
        "desiredRevision": "web-7f9c",
        "stableRevision": "web-1a2b",
        "phase": "Progressing",
        "readyReplicas": "2/3",
    }
    patch_status(served_crd, namespace, "web", status)

    lines = served_crd.kubectl("get", "grel", namespace=namespace).stdout.splitlines()

    assert lines[0].split() == ["NAME", "DESIRED", "STABLE", "PHASE", "READY", "AGE"]
    assert lines[1].split()[:5] == ["web", "web-7f9c", "web-1a2b", "Progressing", "2/3"]
    assert len(lines) == 2


def test_the_status_is_validated_and_keeps_kopfs_bookkeeping(
    served_crd: Cluster, namespace: str
) -> None:
    served_crd.apply(release("web", {"template": template(container(PINNED))}), namespace=namespace)
    revision = {
        "name": "web-1",
        "hash": "1",
        "outcome": "Vanished",
        "createdAt": "2025-01-01T00:00:00Z",
    }

    bad = patch_status(served_crd, namespace, "web", {"revisions": [revision]}, check=False)
    patch_status(served_crd, namespace, "web", {"phase": "Stable", "kopf": {"progress": {}}})

    assert bad.returncode != 0
    assert "status.revisions[0].outcome: Unsupported value" in bad.stderr
    status = served_crd.get("guardedrelease", "web", namespace=namespace)["status"]
    assert status == {"phase": "Stable", "kopf": {"progress": {}}}


def test_the_committed_crd_is_what_the_cluster_serves(served_crd: Cluster) -> None:
    served = served_crd.get("crd", CRD_NAME)
    committed = yaml.safe_load(CRD_FILE.read_text())
    served_version = served["spec"]["versions"][0]
    committed_version = committed["spec"]["versions"][0]
    assert served_version["schema"] == committed_version["schema"]
    assert served["spec"]["names"] == committed["spec"]["names"]
