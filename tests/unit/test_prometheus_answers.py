"""The Prometheus adapter's pure part: Prometheus's answers to one number, or the reason not.

The answers are written as Prometheus v3 sends them (``/api/v1/query``); the same cases run
against a real Prometheus in tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from permafrost.gates import prometheus
from permafrost.gates.prometheus import QueryError, parse_answer

Q = "sum(rate(demo_http_requests_total[30s]))"


def success(result_type: str, result: Any, **extra: Any) -> bytes:
    return json.dumps(
        {"status": "success", "data": {"resultType": result_type, "result": result}, **extra}
    ).encode()


def failure(error_type: str, error: str) -> bytes:
    return json.dumps({"status": "error", "errorType": error_type, "error": error}).encode()


def sample(value: str, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1764755000.123, value]}


def reason_of(status: int, body: bytes, query: str = Q) -> tuple[str, str]:
    with pytest.raises(QueryError) as info:
        parse_answer(status=status, body=body, query=query)
    assert info.value.reason in prometheus.REASONS
    assert str(info.value) == info.value.message
    return info.value.reason, info.value.message


def test_a_scalar_and_a_vector_of_one_sample_are_their_value() -> None:
    assert parse_answer(status=200, body=success("scalar", [1764755000.1, "0.2"]), query=Q) == 0.2
    assert parse_answer(status=200, body=success("vector", [sample("17.5")]), query=Q) == 17.5
    labelled = success("vector", [sample("3", __name__="up", pod="web-1")], warnings=["w"])
    assert parse_answer(status=200, body=labelled, query="up") == 3.0
    assert parse_answer(status=200, body=success("scalar", [1.0, "-1e-3"]), query=Q) == -0.001
    assert parse_answer(status=200, body=success("vector", [sample("0")]), query=Q) == 0.0


def test_an_empty_vector_is_no_data() -> None:
    reason, message = reason_of(200, success("vector", []))
    assert reason == prometheus.NO_DATA
    assert Q in message
    assert "empty vector" in message


def test_more_than_one_series_is_ambiguous_and_names_two_of_them() -> None:
    body = success(
        "vector",
        [
            sample("1", __name__="demo_http_requests_total", code="200"),
            sample("2", __name__="demo_http_requests_total", code="500"),
            sample("3", __name__="demo_http_requests_total", code="404"),
        ],
    )
    reason, message = reason_of(200, body, "demo_http_requests_total")
    assert reason == prometheus.AMBIGUOUS_RESULT
    assert "3 series" in message
    assert 'demo_http_requests_total{code="200"}' in message
    assert 'demo_http_requests_total{code="500"}' in message


@pytest.mark.parametrize("value", ["NaN", "+Inf", "-Inf"])
@pytest.mark.parametrize("result_type", ["scalar", "vector"])
def test_nan_and_infinities_are_not_a_number(value: str, result_type: str) -> None:
    result = [1.0, value] if result_type == "scalar" else [sample(value, code="500")]
    reason, message = reason_of(200, success(result_type, result))
    assert reason == prometheus.NOT_A_NUMBER
    assert value in message


def test_a_native_histogram_is_not_a_number() -> None:
    histogram = {"metric": {}, "histogram": [1.0, {"count": "3", "sum": "1.5", "buckets": []}]}
    assert reason_of(200, success("vector", [histogram]))[0] == prometheus.NOT_A_NUMBER


def test_a_query_that_does_not_parse_is_invalid_with_prometheus_own_words() -> None:
    body = failure(
        "bad_data", 'invalid parameter "query": 1:10: parse error: unclosed left parenthesis'
    )
    reason, message = reason_of(400, body, "sum(rate(")
    assert reason == prometheus.QUERY_INVALID
    assert "unclosed left parenthesis" in message
    assert "'sum(rate('" in message


def test_a_query_that_cannot_be_evaluated_is_invalid() -> None:
    body = failure("execution", "found duplicate series for the match group")
    reason, message = reason_of(422, body)
    assert reason == prometheus.QUERY_INVALID
    assert "cannot be evaluated" in message
    assert "duplicate series" in message


@pytest.mark.parametrize("result_type", ["matrix", "string"])
def test_a_range_vector_or_a_string_is_an_invalid_gate_query(result_type: str) -> None:
    result: Any = (
        [{"metric": {}, "values": [[1.0, "1"]]}] if result_type == "matrix" else [1.0, "x"]
    )
    assert reason_of(200, success(result_type, result))[0] == prometheus.QUERY_INVALID


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (503, failure("timeout", "query timed out in expression evaluation")),
        (503, failure("unavailable", "TSDB not ready")),
        (500, failure("internal", "boom")),
        (502, b"<html>Bad Gateway</html>"),
        (404, b"404 page not found\n"),
        (401, b""),
        (200, b"<html>a login page</html>"),
        (200, b"[]"),
        (200, json.dumps({"status": "success"}).encode()),
        (200, json.dumps({"status": "error", "errorType": "x", "error": "y"}).encode()),
        (200, success("vector", "not a list")),
        (200, success("vector", [{"metric": {}, "value": [1.0, 0.5]}])),  # a number, not a string
        (200, success("vector", [{"metric": {}, "value": [1.0, "fast"]}])),
        (200, success("scalar", None)),
        (200, success("exemplars", [])),
        (400, b"a proxy's 400"),
    ],
)
def test_anything_but_prometheus_api_is_unreachable(status: int, body: bytes) -> None:
    reason, message = reason_of(status, body)
    assert reason == prometheus.PROMETHEUS_UNREACHABLE
    assert message


def test_a_5xx_carries_prometheus_error() -> None:
    message = reason_of(503, failure("timeout", "query timed out"))[1]
    assert "HTTP 503" in message
    assert "query timed out" in message


def test_an_oversized_answer_is_ambiguous_if_successful_else_unreachable() -> None:
    big = success("vector", [sample("1", pod=f"p{i}") for i in range(30000)])
    assert len(big) > prometheus.MAX_ANSWER_BYTES
    # NB: the adapter reads at most one byte past the limit; the answer is cut there.
    cut = big[: prometheus.MAX_ANSWER_BYTES + 1]
    assert reason_of(200, cut)[0] == prometheus.AMBIGUOUS_RESULT
    assert reason_of(502, cut)[0] == prometheus.PROMETHEUS_UNREACHABLE


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("http://127.0.0.1:9090", "http://127.0.0.1:9090/api/v1/query"),
        ("http://127.0.0.1:9090/", "http://127.0.0.1:9090/api/v1/query"),
        ("https://prom.example/prometheus/", "https://prom.example/prometheus/api/v1/query"),
        (" http://[::1]:9090 ", "http://[::1]:9090/api/v1/query"),
    ],
)
def test_the_endpoint_is_under_the_address(address: str, url: str) -> None:
    assert prometheus.endpoint(address) == url


@pytest.mark.parametrize(
    "address", ["127.0.0.1:9090", "ftp://x", "http://", "", "http://h:9090/?query=up"]
)
def test_an_address_that_is_no_url_is_unreachable(address: str) -> None:
    with pytest.raises(QueryError) as info:
        prometheus.endpoint(address)
    assert info.value.reason == prometheus.PROMETHEUS_UNREACHABLE


async def test_a_timeout_that_is_not_positive_is_a_programming_error() -> None:
    for timeout in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            await prometheus.query(address="http://127.0.0.1:9", query="1", timeout=timeout)
