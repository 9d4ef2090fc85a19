"""Prometheus's HTTP API, as a promotion gate asks it: one instant query, one number.

``await query(address=..., query=..., timeout=...)`` returns the value of a scalar, or of a
vector with exactly one sample; anything else raises :class:`QueryError` whose ``reason`` says
why (one of the constants below). A query Prometheus refuses as invalid is the gate's fault
(``QueryInvalid``); every other reason says nothing about the revision (the gate's measurement
is Inconclusive, never Successful).
"""

from __future__ import annotations

import math
from typing import Any

import aiohttp

PROMETHEUS_UNREACHABLE = "PrometheusUnreachable"
QUERY_INVALID = "QueryInvalid"
NO_DATA = "NoData"
AMBIGUOUS_RESULT = "AmbiguousResult"
NOT_A_NUMBER = "NotANumber"
REASONS = frozenset(
    {PROMETHEUS_UNREACHABLE, QUERY_INVALID, NO_DATA, AMBIGUOUS_RESULT, NOT_A_NUMBER}
)


class QueryError(Exception):
    """A query that gave no single number; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# NB: the timeout is a parameter (not the caller's asyncio.timeout) by the interface the gates
# share: it bounds the HTTP request itself, and the caller bounds the whole call too.
async def query(*, address: str, query: str, timeout: float) -> float:  # noqa: ASYNC109
    """The value of ``query`` at this instant, from the Prometheus at ``address``, within
    ``timeout`` seconds."""
    url = address.rstrip("/") + "/api/v1/query"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.post(url, data={"query": query}) as answer,
        ):
            status = answer.status
            try:
                body: Any = await answer.json(content_type=None)
            except ValueError:
                body = None
    except TimeoutError:
        raise QueryError(PROMETHEUS_UNREACHABLE, f"{url}: no answer within {timeout}s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise QueryError(PROMETHEUS_UNREACHABLE, f"{url}: {type(exc).__name__}: {exc}") from None
    if not isinstance(body, dict):
        raise QueryError(PROMETHEUS_UNREACHABLE, f"{url}: {status}, not a Prometheus answer")
    if body.get("status") != "success":
        error = f"{body.get('errorType')}: {body.get('error')}"
        if status == 400 or body.get("errorType") == "bad_data":
            raise QueryError(QUERY_INVALID, f"query {query!r} is invalid: {error}")
        raise QueryError(PROMETHEUS_UNREACHABLE, f"{url}: {status}, {error}")
    return _value(body.get("data") or {}, query)


def _value(data: dict[str, Any], query: str) -> float:
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        raw = result[1]
    elif kind == "vector" and isinstance(result, list):
        if not result:
            raise QueryError(NO_DATA, f"query {query!r} returned no sample")
        if len(result) > 1:
            raise QueryError(AMBIGUOUS_RESULT, f"query {query!r} returned {len(result)} samples")
        raw = (result[0].get("value") or [None, None])[1]
    else:
        raise QueryError(AMBIGUOUS_RESULT, f"query {query!r} returned a {kind}, not one number")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise QueryError(NOT_A_NUMBER, f"query {query!r} returned {raw!r}") from None
    if math.isnan(value):
        raise QueryError(NOT_A_NUMBER, f"query {query!r} returned NaN")
    return value
