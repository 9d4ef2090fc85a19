"""Take one measurement of a promotion gate: the adapter that does the gates' I/O.

An http gate GETs its path through the preview Service (the URL the planner computed from the
Service's ClusterIP, reached as any client in the cluster's network reaches it: through
kube-proxy); a prometheus gate runs its query (:mod:`permafrost.gates.prometheus`) and judges
the value with its successCondition. Everything is asynchronous and bounded by the gate's
timeout: nothing here blocks the event loop, and nothing raises — every outcome, an error
included, is a :class:`~permafrost.models.Measurement` (an error is never a success).
"""

from __future__ import annotations

import asyncio
import datetime
import re

import aiohttp

from permafrost import models
from permafrost.gates import prometheus, verdicts
from permafrost.models import Measurement, MeasurementPhase
from permafrost.releases import planner

# How much of an answer's body is read to match bodyRegex (and quoted in a message).
MAX_BODY = 64 * 1024
QUOTED = 120
# Reasons of measurements (CamelCase, in status.revisions[].gates[].measurements[].reason).
HTTP_STATUS = "HTTPStatus"
BODY_MISMATCH = "BodyMismatch"
NO_ANSWER = "NoAnswer"
TIMED_OUT = "TimedOut"


async def measure(action: planner.Measure, *, now: datetime.datetime) -> Measurement:
    """One measurement of ``action.gate``, stamped ``now`` (when it is taken)."""
    gate = action.gate
    if gate.http is not None:
        if action.url is None:  # NB: the planner never asks this; said, not assumed healthy
            return Measurement(
                at=verdicts.stamp(now),
                phase=MeasurementPhase.ERROR,
                reason=NO_ANSWER,
                message="no URL to measure",
            )
        return await http(gate.http, url=action.url, now=now)
    if gate.prometheus is None:  # NB: a job gate's Job is run by the reconciler, through kube
        raise ValueError(f"not a probe: gate {gate.name} ({gate.kind})")
    return await query(gate.prometheus, now=now, resolved=action.query)


async def http(spec: models.HttpGate, *, url: str, now: datetime.datetime) -> Measurement:
    """GET ``url``: Successful on ``expectedStatus`` (and a body matching ``bodyRegex``),
    Failed on any other answer, Error when there is none within ``timeoutSeconds``."""
    at = verdicts.stamp(now)
    timeout = aiohttp.ClientTimeout(total=spec.timeout_seconds)
    try:
        # NB: a new connection per measurement (no keep-alive): each one goes through
        # kube-proxy afresh, so the revision's pods are sampled, not one pod over and over.
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
            session.get(url, allow_redirects=False) as answer,
        ):
            body = (await answer.content.read(MAX_BODY)).decode("utf-8", "replace")
            code = answer.status
    except TimeoutError:
        return Measurement(
            at=at,
            phase=MeasurementPhase.ERROR,
            reason=TIMED_OUT,
            message=f"GET {url}: no answer within {spec.timeout_seconds}s",
        )
    except (aiohttp.ClientError, OSError) as exc:
        return Measurement(
            at=at,
            phase=MeasurementPhase.ERROR,
            reason=NO_ANSWER,
            message=f"GET {url}: {type(exc).__name__}: {exc}"[:512],
        )
    if code != spec.expected_status:
        return Measurement(
            at=at,
            phase=MeasurementPhase.FAILED,
            value=str(code),
            reason=HTTP_STATUS,
            message=f"GET {url}: {code}, expected {spec.expected_status}: {_quote(body)}",
        )
    if spec.body_regex is not None:
        try:
            found = re.search(spec.body_regex, body) is not None
        except re.error as exc:
            return Measurement(
                at=at,
                phase=MeasurementPhase.ERROR,
                value=str(code),
                reason=verdicts.QUERY_INVALID,
                message=f"bodyRegex {spec.body_regex!r} does not compile: {exc}",
            )
        if not found:
            return Measurement(
                at=at,
                phase=MeasurementPhase.FAILED,
                value=str(code),
                reason=BODY_MISMATCH,
                message=f"GET {url}: {code}, body does not match {spec.body_regex!r}: "
                f"{_quote(body)}",
            )
    return Measurement(at=at, phase=MeasurementPhase.SUCCESSFUL, value=str(code))


async def query(
    spec: models.PrometheusGate, *, now: datetime.datetime, resolved: str | None = None
) -> Measurement:
    """Run the gate's query (``resolved``: with its placeholders replaced; default: as written):
    its value judged by ``successCondition``; a query Prometheus refuses makes the gate
    Misconfigured, every other error an Inconclusive measurement."""
    at = verdicts.stamp(now)
    try:
        value = await asyncio.wait_for(
            prometheus.query(
                address=spec.address,
                query=resolved if resolved is not None else spec.query,
                timeout=float(spec.timeout_seconds),
            ),
            timeout=spec.timeout_seconds + 1,
        )
    except prometheus.QueryError as exc:
        phase = (
            MeasurementPhase.ERROR
            if exc.reason == prometheus.QUERY_INVALID
            else MeasurementPhase.INCONCLUSIVE
        )
        return Measurement(at=at, phase=phase, reason=exc.reason, message=str(exc)[:512])
    except TimeoutError:
        return Measurement(
            at=at,
            phase=MeasurementPhase.INCONCLUSIVE,
            reason=prometheus.PROMETHEUS_UNREACHABLE,
            message=f"no answer from {spec.address} within {spec.timeout_seconds}s",
        )
    return verdicts.judge_value(spec.success_condition, value, at=now)


def _quote(body: str) -> str:
    text = " ".join(body.split())
    return text if len(text) <= QUOTED else text[: QUOTED - 1] + "…"
