"""What the apiserver counts of one client's requests, and a kubeconfig that makes one client.

A FlowSchema (API Priority and Fairness) in the exempt priority level matches the requests of
one ServiceAccount that fit its rule, and ``apiserver_flowcontrol_dispatched_requests_total``
counts them: the apiserver's own record of what a process asked, whatever client library sent
it (the Kubernetes client in kube.py or Kopf's own).
"""

from __future__ import annotations

import json
import pathlib

import yaml

from k8s_harness import Cluster


def flow_schema(
    name: str, *, account: str, namespace: str, rule: dict[str, object]
) -> dict[str, object]:
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": name},
        "spec": {
            # NB: before every built-in schema but the exempt one of system:masters.
            "matchingPrecedence": 20,
            "priorityLevelConfiguration": {"name": "exempt"},
            "rules": [
                {
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "serviceAccount": {"name": account, "namespace": namespace},
                        }
                    ],
                    "resourceRules": [rule],
                }
            ],
        },
    }


def dispatched(cluster: Cluster, schema: str) -> int:
    """Requests the apiserver dispatched under ``schema`` so far."""
    total = 0
    for line in cluster.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        if line.startswith("apiserver_flowcontrol_dispatched_requests_total{") and (
            f'flow_schema="{schema}"' in line
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def kubeconfig_with_token(cluster: Cluster, token: str, path: pathlib.Path) -> pathlib.Path:
    admin = json.loads(
        cluster.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout
    )
    server = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {
                    "server": server["server"],
                    "certificate-authority-data": server["certificate-authority-data"],
                },
            }
        ],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": "operator"}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def admin_identity(cluster: Cluster, namespace: str, account: str, path: pathlib.Path) -> None:
    """A ServiceAccount bound to cluster-admin (ClusterRoleBinding of the same name), and a
    kubeconfig at ``path`` holding only its token. Remove it with :func:`drop_identity`."""
    cluster.kubectl("create", "serviceaccount", account, namespace=namespace)
    cluster.kubectl(
        "create",
        "clusterrolebinding",
        account,
        "--clusterrole=cluster-admin",
        f"--serviceaccount={namespace}:{account}",
    )
    token = cluster.kubectl(
        "create", "token", account, "--duration=1h", namespace=namespace
    ).stdout.strip()
    kubeconfig_with_token(cluster, token, path)


def drop_identity(cluster: Cluster, account: str, *schemas: str) -> None:
    """Remove what :func:`admin_identity` bound cluster-wide, and the FlowSchemas named."""
    for schema in schemas:
        cluster.kubectl("delete", "flowschema", schema, "--ignore-not-found", check=False)
    cluster.kubectl("delete", "clusterrolebinding", account, "--ignore-not-found", check=False)
