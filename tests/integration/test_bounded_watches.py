"""The operator reads only what its releases need: a ConfigMap or Secret in a namespace that holds
no release is never listed, watched or read, however many there are.

The apiserver itself counts: two FlowSchemas (API Priority and Fairness, exempt priority level,
so nothing is queued) match only the operator's own ServiceAccount, and
``apiserver_flowcontrol_dispatched_requests_total`` counts what each matched.

- ``unrelated``: get, list or watch of ConfigMaps or Secrets in the unrelated namespace, or
  across all namespaces at once (a cluster-wide watch streams them all). It must stay at 0.
- ``referenced``: get of ConfigMaps in the release's namespace, the positive control: the
  referenced ConfigMap is read, so the counter demonstrably works.

The operator runs as a ServiceAccount bound to cluster-admin for this test: what it reads is
its own choice, not a want of permission.
"""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Iterator

import pytest
from flow_counts import dispatched, flow_schema, kubeconfig_with_token

from conftest import Operator, release, wait_phase
from k8s_harness import Cluster, wait_for


@pytest.fixture
def unrelated(crds: Cluster) -> Iterator[str]:
    """A namespace with no release in it, holding a ConfigMap and a Secret."""
    name = f"unrelated-{uuid.uuid4().hex[:6]}"
    crds.kubectl("create", "namespace", name)
    crds.kubectl("create", "configmap", "helm-values", "--from-literal=a=b", namespace=name)
    crds.kubectl("create", "secret", "generic", "sh.helm.v1", "--from-literal=r=x", namespace=name)
    yield name
    crds.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_configmaps_and_secrets_of_unrelated_namespaces_are_never_read(
    crds: Cluster, namespace: str, unrelated: str, tmp_path: pathlib.Path
) -> None:
    run = uuid.uuid4().hex[:6]
    account = f"permafrost-reads-{run}"
    unrelated_schema, referenced_schema = f"pf-unrelated-{run}", f"pf-referenced-{run}"
    binding = f"permafrost-reads-{run}"
    crds.kubectl("create", "serviceaccount", account, namespace=namespace)
    crds.kubectl(
        "create",
        "clusterrolebinding",
        binding,
        "--clusterrole=cluster-admin",
        f"--serviceaccount={namespace}:{account}",
    )
    schemas = [
        flow_schema(
            unrelated_schema,
            account=account,
            namespace=namespace,
            rule={
                "verbs": ["get", "list", "watch"],
                "apiGroups": [""],
                "resources": ["configmaps", "secrets"],
                "namespaces": [unrelated],
                "clusterScope": True,  # NB: a list or watch across all namespaces
            },
        ),
        flow_schema(
            referenced_schema,
            account=account,
            namespace=namespace,
            rule={
                "verbs": ["get"],
                "apiGroups": [""],
                "resources": ["configmaps"],
                "namespaces": [namespace],
            },
        ),
    ]
    op: Operator | None = None
    try:
        crds.apply(schemas)
        token = crds.kubectl(
            "create", "token", account, "--duration=1h", namespace=namespace
        ).stdout.strip()
        op = Operator(
            crds,
            None,
            tmp_path / "operator.log",
            kubeconfig=kubeconfig_with_token(crds, token, tmp_path / "kubeconfig"),
        )
        op.start()
        crds.kubectl(
            "create", "configmap", "shop-config", "--from-literal=a=b", namespace=namespace
        )
        crds.apply(
            release("shop", config=[{"kind": "ConfigMap", "name": "shop-config"}]),
            namespace=namespace,
        )
        wait_phase(crds, namespace, "shop", "Stable", timeout=180)  # NB: a busy machine
        # The unrelated objects change while the operator runs: still nothing of them is read.
        crds.kubectl(
            "patch", "configmap", "helm-values", "-p", '{"data":{"a":"c"}}', namespace=unrelated
        )
        crds.kubectl("delete", "secret", "sh.helm.v1", namespace=unrelated)
        # Until the referenced ConfigMap is read again (a later look, after those changes), or
        # anything unrelated was read.
        before = dispatched(crds, referenced_schema)
        assert before > 0
        wait_for(
            lambda: (
                dispatched(crds, referenced_schema) > before
                or dispatched(crds, unrelated_schema) > 0
            ),
            timeout=60,
            interval=1,
            what="the referenced ConfigMap read again",
        )
        assert dispatched(crds, unrelated_schema) == 0
    finally:
        if op is not None:
            op.stop()
        for schema in (unrelated_schema, referenced_schema):
            crds.kubectl("delete", "flowschema", schema, "--ignore-not-found", check=False)
        crds.kubectl("delete", "clusterrolebinding", binding, "--ignore-not-found", check=False)
