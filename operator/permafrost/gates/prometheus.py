"""The Prometheus adapter: one instant query over Prometheus's HTTP API, as one number.

A gate judges a revision by a number (an error ratio, a request rate, a latency quantile): the
query must give exactly one finite value, or the measurement says why it could not. Nothing
here decides whether a value is good; that is the gate's success condition.

:func:`query` does the I/O (aiohttp, bounded by a timeout, never blocking the event loop);
:func:`parse_answer` is the pure part, Prometheus's answer to a number or a
:class:`QueryError`, so it is tested without a server.
"""

from __future__ import annotations

import asyncio
import json
import math
import urllib.parse
from collections.abc import Mapping
from typing import Any

import aiohttp

# Reasons (``QueryError.reason``; the gate's measurements and conditions carry them).
PROMETHEUS_UNREACHABLE = "PrometheusUnreachable"  # refused, timed out, 5xx, not Prometheus's API
QUERY_INVALID = "QueryInvalid"  # does not parse (400), cannot be evaluated (422), not a number
NO_DATA = "NoData"  # an empty vector: nothing matched, or nothing scraped yet
AMBIGUOUS_RESULT = "AmbiguousResult"  # more than one series
NOT_A_NUMBER = "NotANumber"  # NaN or ±Inf (0/0 when nothing was counted)
REASONS = frozenset(
    {PROMETHEUS_UNREACHABLE, QUERY_INVALID, NO_DATA, AMBIGUOUS_RESULT, NOT_A_NUMBER}
)

API_PATH = "/api/v1/query"
# NB: an answer of one sample is a few hundred bytes; one this large holds many series (or is
# not Prometheus's), and reading it whole would let a bad query fill the operator's memory.
MAX_ANSWER_BYTES = 1024 * 1024


class QueryError(Exception):
    """A query gave no single finite number; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, *, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# NB: the timeout is the gate's setting, passed to Prometheus as well; it bounds the whole query
# inside (asyncio.timeout), which is what ASYNC109 asks callers to do instead.
async def query(*, address: str, query: str, timeout: float) -> float:  # noqa: ASYNC109
    """The value of the PromQL expression ``query`` now, from the Prometheus at ``address``.

    ``address`` is Prometheus's base URL (``http://host:9090``, with a path prefix if it is
    served under one); the query goes to ``<address>/api/v1/query`` as an instant query (a POST
    form, so long queries fit). ``timeout`` (seconds, > 0) bounds all of it: connecting, the
    evaluation (Prometheus is told the same timeout) and reading the answer.

    Returns the one value of a scalar result or of a vector of exactly one sample, finite.
    Raises :class:`QueryError` otherwise, with ``reason``:

    - ``PrometheusUnreachable``: connection refused or reset, no answer within ``timeout``, an
      HTTP 5xx, or an answer that is not Prometheus's API (another status, not its JSON);
    - ``QueryInvalid``: the query does not parse (HTTP 400 ``bad_data``), cannot be evaluated
      (HTTP 422 ``execution``), or gives a range vector or a string;
    - ``NoData``: an empty vector;
    - ``AmbiguousResult``: more than one series;
    - ``NotANumber``: NaN, +Inf or -Inf (or a native histogram sample).

    Never returns a value it did not read: every failure to measure is an error, so a caller
    cannot mistake "unknown" for a healthy number.
    """
    if not timeout > 0:  # NB: written so that NaN fails too
        raise ValueError(f"timeout must be > 0 seconds, not {timeout}")
    url = endpoint(address)
    form = {"query": query, "timeout": f"{timeout:g}"}
    try:
        async with asyncio.timeout(timeout):
            # NB: trust_env=False: a proxy from the environment would take the query elsewhere
            # than the address the gate names.
            async with (
                aiohttp.ClientSession(trust_env=False) as session,
                session.post(url, data=form, headers={"Accept": "application/json"}) as response,
            ):
                body = await _bounded(response)
                status = response.status
    except TimeoutError:
        raise QueryError(
            reason=PROMETHEUS_UNREACHABLE,
            message=f"Prometheus at {address} did not answer within {timeout:g}s",
        ) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise QueryError(
            reason=PROMETHEUS_UNREACHABLE,
            message=f"Prometheus at {address} is unreachable: {exc or type(exc).__name__}",
        ) from None
    return parse_answer(status=status, body=body, query=query)


def endpoint(address: str) -> str:
    """The query endpoint under ``address``; a :class:`QueryError` (``PrometheusUnreachable``)
    if ``address`` is not an http(s) URL with a host."""
    parts = urllib.parse.urlsplit(address.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise QueryError(
            reason=PROMETHEUS_UNREACHABLE,
            message=f"{address!r} is not a Prometheus address (http[s]://host[:port][/prefix])",
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}{API_PATH}"


async def _bounded(response: aiohttp.ClientResponse) -> bytes:
    """The body, or its first MAX_ANSWER_BYTES + 1 bytes (parse_answer tells it is too large)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            break
    return b"".join(chunks)[: MAX_ANSWER_BYTES + 1]


def parse_answer(*, status: int, body: bytes, query: str) -> float:
    """The one finite value of Prometheus's answer (HTTP ``status``, JSON ``body``) to the
    instant query ``query`` (named in the messages), or a :class:`QueryError` as
    :func:`query` documents. Pure."""
    if len(body) > MAX_ANSWER_BYTES:
        if status == 200:
            raise QueryError(
                reason=AMBIGUOUS_RESULT,
                message=f"{query!r} gave an answer over {MAX_ANSWER_BYTES // 1024} KiB, "
                "so many series: aggregate them (sum, max, ...) to one",
            )
        raise QueryError(
            reason=PROMETHEUS_UNREACHABLE,
            message=f"Prometheus answered HTTP {status} with over "
            f"{MAX_ANSWER_BYTES // 1024} KiB: not its API's answer",
        )
    document = _json(body)
    error = _error(document)
    if status >= 500:
        raise QueryError(
            reason=PROMETHEUS_UNREACHABLE,
            message=f"Prometheus answered HTTP {status}" + (f": {error}" if error else ""),
        )
    kind = document.get("errorType") if document is not None else None
    if status == 400 and kind == "bad_data":
        raise QueryError(reason=QUERY_INVALID, message=f"{query!r} is not a valid query: {error}")
    if status == 422 and kind == "execution":
        raise QueryError(reason=QUERY_INVALID, message=f"{query!r} cannot be evaluated: {error}")
    if status != 200 or document is None or document.get("status") != "success":
        detail = f": {error}" if error else ""
        raise QueryError(
            reason=PROMETHEUS_UNREACHABLE,
            message=f"the answer (HTTP {status}) is not Prometheus's query API's{detail}",
        )
    data = document.get("data")
    if not isinstance(data, Mapping):
        raise _malformed("no data")
    result_type, result = data.get("resultType"), data.get("result")
    if result_type == "scalar":
        return _finite(_sample_value(result), query=query, series=None)
    if result_type == "vector":
        if not isinstance(result, list):
            raise _malformed("a vector that is not a list")
        if not result:
            raise QueryError(
                reason=NO_DATA,
                message=f"{query!r} gave no data (an empty vector): nothing matched, "
                "or nothing was scraped yet",
            )
        if len(result) > 1:
            raise QueryError(
                reason=AMBIGUOUS_RESULT,
                message=f"{query!r} gave {len(result)} series, not one, "
                f"e.g. {_series(result[0])} and {_series(result[1])}: "
                "aggregate them (sum, max, ...) or select one",
            )
        sample = result[0]
        if not isinstance(sample, Mapping):
            raise _malformed("a vector sample that is not an object")
        if "value" not in sample and "histogram" in sample:
            raise QueryError(
                reason=NOT_A_NUMBER,
                message=f"{query!r} gave a native histogram, not a number: "
                "use histogram_quantile, histogram_count, ...",
            )
        return _finite(_sample_value(sample.get("value")), query=query, series=sample)
    if result_type in ("matrix", "string"):
        what = "a range vector" if result_type == "matrix" else "a string"
        raise QueryError(
            reason=QUERY_INVALID,
            message=f"{query!r} gives {what}, not a number: an instant query needs an instant "
            "vector or a scalar (e.g. rate(x[1m]), not x[1m])",
        )
    raise _malformed(f"a result of type {result_type!r}")


def _json(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None


def _error(document: Mapping[str, Any] | None) -> str:
    if document is None:
        return ""
    error = document.get("error")
    return str(error) if error else ""


def _malformed(what: str) -> QueryError:
    return QueryError(
        reason=PROMETHEUS_UNREACHABLE,
        message=f"the answer is not Prometheus's query API's: {what}",
    )


def _sample_value(pair: Any) -> float:
    """The value of a ``[timestamp, "value"]`` pair (Prometheus sends values as strings)."""
    if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], str)):
        raise _malformed(f"a sample that is not [time, value]: {pair!r:.100}")
    try:
        return float(pair[1])  # NB: "NaN", "+Inf" and "-Inf" parse: _finite judges them
    except ValueError:
        raise _malformed(f"a value that is not a number: {pair[1]!r:.100}") from None


def _finite(value: float, *, query: str, series: Mapping[str, Any] | None) -> float:
    if math.isfinite(value):
        return value
    where = f" for {_series(series)}" if series is not None else ""
    raise QueryError(
        reason=NOT_A_NUMBER,
        message=f"{query!r} gave {_text(value)}{where}, not a number "
        "(0/0 when nothing was counted in the window)",
    )


def _text(value: float) -> str:
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def _series(sample: Any) -> str:
    """A series as PromQL writes it: ``{code="500", pod="web-1"}``."""
    metric = sample.get("metric") if isinstance(sample, Mapping) else None
    if not isinstance(metric, Mapping):
        return "{}"
    name = str(metric.get("__name__", ""))
    labels = ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
    return f"{name}{{{labels}}}"
