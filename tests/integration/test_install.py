"""``kubectl apply -k deploy/`` is accepted by the real apiserver, object by object."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from conftest import OPERATOR_NAMESPACE
from k8s_harness import ROOT, Cluster


@pytest.fixture
def operator_namespace_exists(crds: Cluster) -> Iterator[Cluster]:
    """The operator's namespace, for real (a server-side dry run of its objects needs it)."""
    existed = crds.get("namespace", OPERATOR_NAMESPACE) is not None
    if not existed:
        crds.kubectl("apply", "-f", str(ROOT / "deploy" / "namespace.yaml"))
    yield crds
    if not existed:
        crds.kubectl("delete", "namespace", OPERATOR_NAMESPACE, "--wait=false", check=False)


def test_the_whole_install_passes_a_server_side_dry_run(
    operator_namespace_exists: Cluster,
) -> None:
    cluster = operator_namespace_exists
    rendered = [
        d
        for d in yaml.safe_load_all(cluster.kubectl("kustomize", str(ROOT / "deploy")).stdout)
        if d
    ]
    proc = cluster.kubectl("apply", "-k", str(ROOT / "deploy"), "--dry-run=server", check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(lines) == len(rendered)
    for obj in rendered:
        kind = obj["kind"].lower()
        assert any(
            line.startswith(f"{kind}.") or line.startswith(f"{kind}/")
            for line in lines
            if f"/{obj['metadata']['name']} " in line
        ), f"{obj['kind']} {obj['metadata']['name']} was not applied"
    # Nothing was written: the operator and its policy are still not there.
    assert cluster.get("deployment", "permafrost", namespace=OPERATOR_NAMESPACE) is None
