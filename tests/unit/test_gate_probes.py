"""The gates' adapters against real local servers: an HTTP gate's measurement of each kind of
answer (and of none), and Prometheus answers that are not one number (never a success)."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from permafrost import models
from permafrost.gates import probes, prometheus
from permafrost.models import MeasurementPhase

NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)


async def _ok(_: web.Request) -> web.Response:
    return web.json_response({"version": "v1"})


async def _error(_: web.Request) -> web.Response:
    return web.json_response({"error": "boom"}, status=500)


async def _slow(_: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.Response(text="late")


async def _prom(request: web.Request) -> web.Response:
    query = (await request.post()).get("query")
    answers = {
        "scalar": {"status": "success", "data": {"resultType": "scalar", "result": [1, "0.01"]}},
        "one": {
            "status": "success",
            "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "0.2"]}]},
        },
        "none": {"status": "success", "data": {"resultType": "vector", "result": []}},
        "two": {
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [
                    {"metric": {"a": "1"}, "value": [1, "1"]},
                    {"metric": {"a": "2"}, "value": [1, "2"]},
                ],
            },
        },
        "nan": {"status": "success", "data": {"resultType": "scalar", "result": [1, "NaN"]}},
    }
    if query in answers:
        return web.json_response(answers[query])
    return web.json_response(
        {"status": "error", "errorType": "bad_data", "error": "parse error"}, status=400
    )


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/ok", _ok)
    app.router.add_get("/error", _error)
    app.router.add_get("/slow", _slow)
    app.router.add_post("/api/v1/query", _prom)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def http(**fields: object) -> models.HttpGate:
    return models.HttpGate.model_validate({"timeoutSeconds": 1, **fields})


async def test_an_expected_answer_is_successful(server: str) -> None:
    m = await probes.http(http(bodyRegex='"version"'), url=f"{server}/ok", now=NOW)
    assert m.phase == MeasurementPhase.SUCCESSFUL
    assert m.value == "200"


async def test_a_500_is_a_failure_with_its_status(server: str) -> None:
    m = await probes.http(http(), url=f"{server}/error", now=NOW)
    assert m.phase == MeasurementPhase.FAILED
    assert m.value == "500"
    assert m.reason == probes.HTTP_STATUS
    assert "boom" in (m.message or "")


async def test_a_body_that_does_not_match_is_a_failure(server: str) -> None:
    m = await probes.http(http(bodyRegex="^nothing$"), url=f"{server}/ok", now=NOW)
    assert m.phase == MeasurementPhase.FAILED
    assert m.reason == probes.BODY_MISMATCH


async def test_no_answer_in_time_is_an_error_never_a_success(server: str) -> None:
    m = await probes.http(http(), url=f"{server}/slow", now=NOW)
    assert m.phase == MeasurementPhase.ERROR
    assert m.reason == probes.TIMED_OUT


async def test_a_refused_connection_is_an_error() -> None:
    m = await probes.http(http(), url="http://127.0.0.1:1/", now=NOW)
    assert m.phase == MeasurementPhase.ERROR
    assert m.reason == probes.NO_ANSWER


def gate(address: str, query: str, condition: str = "result < 0.05") -> models.PrometheusGate:
    return models.PrometheusGate(address=address, query=query, success_condition=condition)


@pytest.mark.parametrize(
    ("query", "phase", "reason"),
    [
        ("scalar", MeasurementPhase.SUCCESSFUL, None),
        ("one", MeasurementPhase.FAILED, "ConditionFalse"),
        ("none", MeasurementPhase.INCONCLUSIVE, prometheus.NO_DATA),
        ("two", MeasurementPhase.INCONCLUSIVE, prometheus.AMBIGUOUS_RESULT),
        ("nan", MeasurementPhase.INCONCLUSIVE, prometheus.NOT_A_NUMBER),
        ("rate(", MeasurementPhase.ERROR, prometheus.QUERY_INVALID),
    ],
)
async def test_prometheus_answers(
    server: str, query: str, phase: MeasurementPhase, reason: str | None
) -> None:
    m = await probes.query(gate(server, query), now=NOW)
    assert (m.phase, m.reason) == (phase, reason), m


async def test_a_prometheus_that_is_down_is_inconclusive_never_successful() -> None:
    m = await probes.query(gate("http://127.0.0.1:1", "up", "result >= 0.0"), now=NOW)
    assert m.phase == MeasurementPhase.INCONCLUSIVE
    assert m.reason == prometheus.PROMETHEUS_UNREACHABLE
