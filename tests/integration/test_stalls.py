"""A stalled apiserver, or a connection that died without a reset, never hangs the operator.

Killing the apiserver (test_outages.py) resets every connection, and every client notices.
These tests make connections go silent instead — the way a NAT or load-balancer drop, a frozen
process or a partition does — so that only request timeouts can save a reconcile waiting on
one: either the apiserver itself is stopped (SIGSTOP) and later continued, or the operator
reaches it through a loopback proxy that black-holes every connection it holds.
"""

from __future__ import annotations

import os
import pathlib
import signal
import time
import urllib.parse
from collections.abc import Iterator

import pytest
import yaml
from test_outages import start_what_exited

from conftest import Operator, release, status, wait_phase
from k8s_harness import Cluster, wait_for
from tcp_proxy import Proxy

REQUEST_TIMEOUT = 5  # the operator's --request-timeout in these tests
STALL_SECONDS = 3 * REQUEST_TIMEOUT


def _apiserver_pid(cluster: Cluster) -> int:
    pidfile = pathlib.Path(cluster.logs_dir).parent / "pids" / "kube-apiserver.pid"
    return int(pidfile.read_text().strip())


@pytest.fixture
def proxied(cluster: Cluster, tmp_path: pathlib.Path) -> Iterator[tuple[Proxy, pathlib.Path]]:
    """A loopback proxy to the apiserver, and a kubeconfig that goes through it."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    (entry,) = config["clusters"]
    server = urllib.parse.urlsplit(entry["cluster"]["server"])
    assert server.hostname is not None
    assert server.port is not None
    with Proxy(server.hostname, server.port) as proxy:
        # NB: the apiserver's certificate names 127.0.0.1, where the proxy listens.
        entry["cluster"]["server"] = f"https://{proxy.address}"
        kubeconfig = tmp_path / "through-the-proxy.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(config))
        yield proxy, kubeconfig


def _stable_revision(cluster: Cluster, namespace: str, name: str) -> str | None:
    current = status(cluster, namespace, name)
    return current.get("stableRevision") if current.get("phase") == "Stable" else None


def _rolling_out(cluster: Cluster, namespace: str, name: str, *, past: str) -> str:
    """Wait until the operator has made a new revision (it now waits for it to be verified)."""

    def probe() -> str | None:
        desired = status(cluster, namespace, name).get("desiredRevision")
        return desired if desired not in (None, past) else None

    revision: str = wait_for(probe, timeout=60, what=f"{name}'s new revision")
    return revision


def _v2(name: str) -> dict[str, object]:
    # NB: verification takes a while (minReadySeconds), so the operator is busy with requests
    # and timers when its connections go silent; the deadline outlasts the stall (else the
    # right outcome would be a rollback).
    return release(name, replicas=1, image="registry.example/shop/v2", min_ready=4, deadline=120)


def _operator(
    cluster: Cluster,
    namespace: str,
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
    *,
    kubeconfig: pathlib.Path | None = None,
) -> Operator:
    op = Operator(
        cluster,
        namespace,
        tmp_path / "operator.log",
        extra=["--request-timeout", str(REQUEST_TIMEOUT)],
        kubeconfig=kubeconfig,
    )
    request.node.operator_log = op.log
    op.start()
    return op


def test_releases_converge_after_every_connection_of_the_operator_went_silent(
    crds: Cluster,
    namespace: str,
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
    proxied: tuple[Proxy, pathlib.Path],
) -> None:
    proxy, kubeconfig = proxied
    op = _operator(crds, namespace, tmp_path, request, kubeconfig=kubeconfig)
    try:
        crds.apply(release("web", replicas=1), namespace=namespace)
        first = wait_phase(crds, namespace, "web", "Stable", timeout=60)["stableRevision"]
        crds.apply(_v2("web"), namespace=namespace)
        second = _rolling_out(crds, namespace, "web", past=first)

        # Mid-rollout, every connection the operator holds goes silent, and new ones too:
        # whatever it was waiting on never answers.
        proxy.blackhole()
        time.sleep(STALL_SECONDS)
        proxy.heal()  # new connections work again; the silent ones stay silent for good

        wait_phase(crds, namespace, "web", "Stable", timeout=120, stableRevision=second)
    finally:
        op.stop()
    # The stall really caught requests in flight, and their timeouts ended them.
    assert "timed out" in op.log.read_text(errors="replace")


@pytest.mark.skipif(os.geteuid() != 0, reason="stopping the apiserver's process needs root")
def test_releases_converge_after_the_apiserver_was_stopped_longer_than_the_timeouts(
    crds: Cluster,
    namespace: str,
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
) -> None:
    op = _operator(crds, namespace, tmp_path, request)
    pid = _apiserver_pid(crds)
    try:
        for name in ("web", "api"):
            crds.apply(release(name, replicas=1), namespace=namespace)
        first = {
            name: wait_phase(crds, namespace, name, "Stable", timeout=60)["stableRevision"]
            for name in ("web", "api")
        }
        crds.apply(_v2("web"), namespace=namespace)
        second = _rolling_out(crds, namespace, "web", past=first["web"])
        os.kill(pid, signal.SIGSTOP)  # the apiserver freezes mid-rollout
        try:
            time.sleep(STALL_SECONDS)
        finally:
            os.kill(pid, signal.SIGCONT)
        # NB: the controller-manager and the scheduler lost their leases meanwhile and exit
        # (within their 10 s renew deadline): the cluster's own components are brought back.
        start_what_exited(crds, settle=12)
        crds.apply(_v2("api"), namespace=namespace)
        wait_phase(crds, namespace, "web", "Stable", timeout=120, stableRevision=second)
        wait_for(
            lambda: _stable_revision(crds, namespace, "api") not in (None, first["api"]),
            timeout=120,
            what="api v2 promoted after the apiserver continued",
        )
    finally:
        os.kill(pid, signal.SIGCONT)
        op.stop()
