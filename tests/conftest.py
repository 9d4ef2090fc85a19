"""Shared fixtures: tier markers by folder, the real local cluster, a namespace per test."""

from __future__ import annotations

import os
import pathlib
import uuid
from collections.abc import Iterator

import pytest

import shards
from k8s_harness import Cluster, real_node_reason, start_cluster, stop_cluster, wait_for

HERE = pathlib.Path(__file__).parent
LOG_TAIL_LINES = 40
OPERATOR_TAIL_LINES = 150


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by folder: tests/unit -> unit, tests/integration -> integration; with
    ``PERMAFROST_SHARD=K/N`` (hack/test.sh), keep only shard K's modules, and with
    ``PERMAFROST_SHARD=alone`` only those that must run alone (tests/shards.py)."""
    for item in items:
        parts = pathlib.Path(str(item.fspath)).relative_to(HERE).parts
        if parts and parts[0] in ("unit", "integration"):
            item.add_marker(getattr(pytest.mark, parts[0]))
    if not (value := os.environ.get("PERMAFROST_SHARD")):
        return
    module = {item: pathlib.Path(str(item.fspath)).relative_to(HERE).as_posix() for item in items}
    if value == "alone":
        wanted = {m: 0 for m in module.values() if m in shards.ALONE}
        k = 0
    else:
        try:
            k, n = shards.parse(value)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        wanted = shards.assign(module.values(), shards=n)
    kept = [item for item in items if wanted.get(module[item]) == k]
    dropped = [item for item in items if wanted.get(module[item]) != k]
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``real_node`` skip, saying why, where the cluster has no real node."""
    if item.get_closest_marker("real_node") is not None:
        reason = real_node_reason()
        if reason is not None:
            pytest.skip(f"needs the real node, and the local cluster has none: {reason}")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The real local control plane, started for the session or reused if already healthy.

    A cluster started here is stopped at the end unless PERMAFROST_KEEP_CLUSTER=1.
    """
    started_cluster, started_here = start_cluster()
    yield started_cluster
    if started_here and os.environ.get("PERMAFROST_KEEP_CLUSTER") != "1":
        stop_cluster()


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting)."""
    base = request.node.name.lower().replace("_", "-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    # NB: pods cannot be created until the ServiceAccount controller made "default".
    wait_for(
        lambda: cluster.get("serviceaccount", "default", namespace=name),
        timeout=30,
        what=f"the default ServiceAccount in {name}",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """On an integration failure, attach the tails of the control-plane component logs."""
    report = yield
    if not (report.failed and call.when == "call"):
        return report
    operator_log = getattr(item, "operator_log", None)
    if operator_log is not None and pathlib.Path(operator_log).exists():
        lines = pathlib.Path(operator_log).read_text(errors="replace").splitlines()
        report.sections.append(("operator log", "\n".join(lines[-OPERATOR_TAIL_LINES:])))
    argocd = getattr(item, "argocd", None)  # tests/argocd_harness.py's ArgoCD
    if argocd is not None:
        for name, tail in argocd.log_tails():
            report.sections.append((f"Argo CD {name} log", tail))
    cluster = getattr(item, "funcargs", {}).get("cluster") or getattr(item, "funcargs", {}).get(
        "crds"
    )
    if cluster is not None:
        for log in sorted(pathlib.Path(cluster.logs_dir).glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            report.sections.append((f"component log: {log.name}", "\n".join(lines)))
    return report
