"""The Prometheus adapter (``permafrost.gates.prometheus.query``) against a real Prometheus.

The demo app runs on the real node and answers real requests, 20% of them with 500s; the
session's Prometheus (tests/prometheus_harness.py) scrapes its ``/metrics``; the adapter then
reads back the request rate and the error ratio the app really served. The failures a gate
must tell apart from a good number happen for real too: a Prometheus stopped or frozen, a query
that does not parse, no data, several series, NaN.

The tests that scrape pods need the real node; the others only the Prometheus binary. Each
skips, saying why, where what it needs is missing.
"""

from __future__ import annotations

import asyncio
import pathlib
import sys
import time
from collections.abc import Iterator

import pytest
from bench import traffic

import prometheus_harness
from k8s_harness import Cluster, RealNode, wait_for
from permafrost.gates.prometheus import (
    AMBIGUOUS_RESULT,
    NO_DATA,
    NOT_A_NUMBER,
    PROMETHEUS_UNREACHABLE,
    QUERY_INVALID,
    QueryError,
    query,
)

PROBE = {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}
RATE = 50.0  # requests per second sent to the demo app
TIMEOUT = 5.0


def measure(address: str, promql: str, *, timeout: float = TIMEOUT) -> float:
    return asyncio.run(query(address=address, query=promql, timeout=timeout))


def failure(address: str, promql: str, *, timeout: float = TIMEOUT) -> QueryError:
    """The error the query raises (the test fails if it gives a number)."""
    with pytest.raises(QueryError) as info:
        measure(address, promql, timeout=timeout)
    return info.value


def reason(address: str, promql: str) -> str | float:
    """The value, or the reason there is none: for waiting until one or the other."""
    try:
        return measure(address, promql)
    except QueryError as error:
        return error.reason


@pytest.fixture
def own_prometheus(tmp_path: pathlib.Path) -> Iterator[prometheus_harness.Prometheus]:
    """A Prometheus of the test's own (scraping nothing), to stop or freeze."""
    binary = prometheus_harness.binary()
    if isinstance(binary, str):
        pytest.skip(f"needs Prometheus: {binary}")
    instance = prometheus_harness.Prometheus(binary, tmp_path / "prometheus", kubeconfig=None)
    instance.start()
    yield instance
    instance.stop()


def demo_app(cluster: Cluster, namespace: str, real_node: RealNode, image: str) -> str:
    """One pod of the demo app answering 20% of requests with 500s, Ready, scraped; its IP."""
    env = [{"name": "ERROR_RATE", "value": "0.2"}]
    pod_spec = real_node.schedule(
        {"containers": [{"name": "app", "image": image, "env": env, "readinessProbe": PROBE}]}
    )
    template = {
        "metadata": {
            "labels": {"app": "web"},
            "annotations": prometheus_harness.SCRAPE_ANNOTATIONS,
        },
        "spec": pod_spec,
    }
    cluster.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": template,
            },
        },
        namespace=namespace,
    )
    cluster.kubectl(
        "rollout", "status", "deployment/web", "--timeout=90s", namespace=namespace, timeout=120
    )
    (pod,) = cluster.get("pods", namespace=namespace, selector="app=web")["items"]
    ip: str = pod["status"]["podIP"]
    return ip


@pytest.mark.real_node
def test_the_query_reads_the_request_rate_and_error_ratio_the_demo_app_really_served(
    cluster: Cluster,
    namespace: str,
    real_node: RealNode,
    demo_images: dict[str, str],
    prometheus: str,
) -> None:
    ip = demo_app(cluster, namespace, real_node, demo_images["v1"])
    ns = f'namespace="{namespace}"'
    total = f"sum(demo_http_requests_total{{{ns}}})"
    errors = f'sum(demo_http_requests_total{{{ns}, code="500"}})'

    # Scraped (the target is up) before any request: the counters exist, at 0.
    wait_for(
        lambda: [t for t in prometheus_harness.targets(prometheus, namespace=namespace)
                 if t["health"] == "up"],
        timeout=30, interval=0.5, what="Prometheus to scrape the demo app",
    )  # fmt: skip
    wait_for(lambda: reason(prometheus, total) == 0.0, timeout=20, what=f"{total} == 0")
    assert measure(prometheus, f"up{{{ns}}}") == 1.0

    # Two scrapes and no request yet: the error ratio of the rates is 0/0, not a number, and
    # says so; the rate itself is a real 0.
    window = "[10s]"
    rate_total = f"sum(rate(demo_http_requests_total{{{ns}}}{window}))"
    rate_errors = f'sum(rate(demo_http_requests_total{{{ns}, code="500"}}{window}))'
    ratio = f"{rate_errors} / {rate_total}"
    wait_for(lambda: reason(prometheus, rate_total) == 0.0, timeout=20, what="a rate of 0")
    error = failure(prometheus, ratio)
    assert error.reason == NOT_A_NUMBER, error.message
    assert "NaN" in error.message

    # Real load: RATE requests a second through the pod's IP (inside the node's network
    # namespace), each on a new connection, for 12 s.
    seconds = 12.0
    with traffic.Load(f"http://{ip}:8080/", rate=RATE, seconds=seconds) as load:
        time.sleep(seconds - 1)
        during = measure(prometheus, rate_total), measure(prometheus, ratio)
        sent_at = time.time()
        recent = [s for s in load.snapshot() if s.status is not None and s.sent >= sent_at - 10]
    samples = load.samples
    served = [s for s in samples if s.status is not None]
    outcome = traffic.summarize(samples)
    assert len(served) == len(samples) >= RATE * (seconds - 2), outcome
    served_500 = sum(1 for s in served if s.status == 500)
    assert {s.status for s in served} == {200, 500}
    # The app fails exactly the 5th, 10th, ... request (ERROR_RATE's contract).
    assert served_500 == len(served) // 5

    # While it ran: the rate Prometheus measured is the rate the app served (what the load saw
    # answered in the last 10 s), and the error ratio of the rates is about 0.2.
    request_rate, error_ratio = during
    print(
        f"\n[prometheus] served {len(served)} ({served_500} 500s); while loaded: "
        f"{request_rate:.1f} requests/s measured, {len(recent) / 10:.1f} seen answered; "
        f"error ratio {error_ratio:.4f}",
        file=sys.stderr,
    )
    assert request_rate == pytest.approx(len(recent) / 10, rel=0.25), (during, len(recent))
    assert error_ratio == pytest.approx(0.2, abs=0.03), during

    # Once the last answers are scraped: the counters are exactly what was served.
    wait_for(
        lambda: reason(prometheus, total) == len(served),
        timeout=20,
        what=f"{total} == {len(served)}",
    )
    assert measure(prometheus, errors) == served_500
    assert measure(prometheus, f"{errors} / {total}") == served_500 / len(served)
    assert served_500 / len(served) == pytest.approx(0.2, abs=0.01)

    # The same metric without aggregation: one series per code (and the version served).
    error = failure(prometheus, f"demo_http_requests_total{{{ns}}}")
    assert error.reason == AMBIGUOUS_RESULT, error.message
    assert 'code="200"' in error.message
    assert 'code="500"' in error.message
    assert measure(prometheus, f'count(demo_http_requests_total{{{ns}, version="v1"}})') == 2

    # Another namespace's demo app: none.
    error = failure(prometheus, 'sum(demo_http_requests_total{namespace="nowhere"})')
    assert error.reason == NO_DATA, error.message


def test_scalars_and_one_sample_vectors_are_numbers(prometheus: str) -> None:
    assert measure(prometheus, "vector(0.25)") == 0.25
    assert measure(prometheus, "scalar(vector(17))") == 17.0
    assert measure(prometheus, "1 - 0.75") == 0.25
    assert measure(prometheus, "sum(vector(1) * 3)") == 3.0


def test_a_query_that_does_not_parse_is_invalid_with_prometheus_own_words(
    prometheus: str,
) -> None:
    error = failure(prometheus, "sum(rate(demo_http_requests_total[1m]")
    assert error.reason == QUERY_INVALID
    assert "parse error" in error.message, error.message
    assert failure(prometheus, "").reason == QUERY_INVALID
    assert failure(prometheus, "rate(up)").reason == QUERY_INVALID  # a type error: no range
    assert failure(prometheus, "no_such_function(up)").reason == QUERY_INVALID
    # Queries that parse but give no number: a range vector, a string.
    assert failure(prometheus, "up[1m]").reason == QUERY_INVALID
    assert failure(prometheus, '"a string"').reason == QUERY_INVALID


def test_no_data_several_series_and_nan_are_each_their_own_reason(prometheus: str) -> None:
    assert failure(prometheus, "vector(1) > 2").reason == NO_DATA
    assert failure(prometheus, 'demo_http_requests_total{namespace="nowhere"}').reason == NO_DATA
    two = 'label_replace(vector(1), "x", "a", "", "") or label_replace(vector(2), "x", "b", "", "")'
    error = failure(prometheus, two)
    assert error.reason == AMBIGUOUS_RESULT, error.message
    assert "2 series" in error.message
    assert failure(prometheus, "0 / 0").reason == NOT_A_NUMBER
    assert failure(prometheus, "vector(1) / 0").reason == NOT_A_NUMBER
    assert failure(prometheus, "-1 / 0").reason == NOT_A_NUMBER


def test_a_stopped_prometheus_is_unreachable(own_prometheus: prometheus_harness.Prometheus) -> None:
    address = own_prometheus.url
    assert measure(address, "vector(1)") == 1.0
    own_prometheus.stop()
    started = time.monotonic()
    error = failure(address, "vector(1)")
    assert error.reason == PROMETHEUS_UNREACHABLE
    assert address in error.message
    assert time.monotonic() - started < TIMEOUT  # refused at once, not timed out


def test_a_prometheus_that_does_not_answer_is_unreachable_after_the_timeout(
    own_prometheus: prometheus_harness.Prometheus,
) -> None:
    address = own_prometheus.url
    assert measure(address, "vector(1)") == 1.0
    own_prometheus.pause()
    try:
        started = time.monotonic()
        error = failure(address, "vector(1)", timeout=1.5)
        elapsed = time.monotonic() - started
    finally:
        own_prometheus.resume()
    assert error.reason == PROMETHEUS_UNREACHABLE
    assert "within 1.5s" in error.message
    assert 1.4 <= elapsed < 4, elapsed
    # Back again: the same address answers.
    assert measure(address, "vector(1)") == 1.0


def test_an_address_that_is_not_prometheus_is_unreachable(
    own_prometheus: prometheus_harness.Prometheus,
) -> None:
    # Its own UI path: an HTTP answer, but not the query API's.
    error = failure(own_prometheus.url + "/-/healthy", "vector(1)")
    assert error.reason == PROMETHEUS_UNREACHABLE, error.message
    assert "HTTP 404" in error.message or "not Prometheus" in error.message
