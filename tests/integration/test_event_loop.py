"""The operator's event loop (which the admission webhook shares) never waits on the network.

The apiserver is reached through a loopback proxy that makes it slow: the headers of an answer
come at once and its body trickles for seconds. A heartbeat on the loop measures the longest
time the loop could not run while the operator's adapter reads such an answer.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Iterator

import kubernetes
import pytest

from k8s_harness import Cluster
from permafrost import kube, models
from tcp_proxy import Proxy

# NB: ~600 KiB through 32 KiB every 0.25 s: about 5 s for the body, against a loop that must
# keep beating every 20 ms; a loop blocked by the read would miss whole seconds.
BODY_BYTES = 600 * 1024
BURST, EVERY = 32 * 1024, 0.25
HEARTBEAT = 0.02


@pytest.fixture
def slow_apiserver(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Proxy]:
    """The adapter's clients, talking to the apiserver through a throttling proxy."""
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(cluster.kubeconfig), client_configuration=configuration
    )
    target = urllib.parse.urlsplit(configuration.host)
    assert target.hostname is not None
    assert target.port is not None
    with Proxy(target.hostname, target.port) as proxy:
        configuration.host = f"https://{proxy.address}"
        configuration.tls_server_name = target.hostname
        clients = kube.Clients(kubernetes.client.ApiClient(configuration))
        monkeypatch.setattr(kube, "clients", lambda: clients)
        yield proxy


async def _longest_stall(work: asyncio.Task[object]) -> float:
    """The longest gap between heartbeats of the loop while ``work`` runs."""
    longest, last = 0.0, time.monotonic()
    while not work.done():
        await asyncio.sleep(HEARTBEAT)
        now = time.monotonic()
        longest, last = max(longest, now - last - HEARTBEAT), now
    return longest


async def test_a_slow_answer_from_the_apiserver_does_not_stall_the_event_loop(
    cluster: Cluster, namespace: str, slow_apiserver: Proxy
) -> None:
    # NB: created, not applied: apply would copy the ~600 KiB into an annotation (too long).
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "big", "namespace": namespace},
            "data": {"blob": "x" * BODY_BYTES},
        }
    )
    slow_apiserver.throttle(burst=BURST, every=EVERY)
    started = time.monotonic()
    read = asyncio.create_task(
        kube.read_config(namespace=namespace, ref=models.ConfigRef(kind="ConfigMap", name="big"))
    )
    stall = await _longest_stall(read)
    took = time.monotonic() - started
    body = await read
    assert body is not None
    assert len(body["data"]["blob"]) == BODY_BYTES
    assert took > 2, (
        f"the proxy did not slow the answer down ({took:.1f}s): the test proves nothing"
    )
    assert stall < took / 4, f"the loop stalled {stall:.2f}s during a {took:.1f}s read"
