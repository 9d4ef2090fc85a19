"""Steady HTTP load against a Service, with a record of every request.

:class:`Load` sends GETs at a fixed rate (open loop: request *i* is due at ``i / rate`` seconds
after the start, whatever the answers before it did) from a pool of threads, each request on a
new TCP connection, as a fresh client would: every request goes through kube-proxy's rules as
they are at that instant, so a rule pointing at a pod that is gone shows up as a failure. It is
bounded in count (``limit``) and in time (``seconds``), and it stops when its ``with`` block
ends.

Per request it records (:class:`Sample`): when it was due and when it was sent (wall clock),
the HTTP status or the error, the latency, and what the demo app (``examples/app``) says in its
answer: the version and the pod (``hostname``) that answered. :func:`summarize` turns the
samples into the figures the tests assert and the benchmark reports.

It must run where the ClusterIP is reachable: in the real node's network namespace
(``hack/cluster.sh exec``; the tests and ``make bench`` run there). As a command it prints one
line per second (sent, failed, answers by version) and writes every sample as JSON lines::

    python -m bench.traffic http://10.96.0.10/ --rate 200 --seconds 30 --out samples.jsonl
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import http.client
import json
import pathlib
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Self, TextIO

from bench.common import percentile

DEFAULT_RATE = 200.0
DEFAULT_TIMEOUT = 2.0


@dataclasses.dataclass(frozen=True)
class Sample:
    """One request: ``due`` and ``sent`` are wall-clock seconds (``time.time()``)."""

    due: float
    sent: float
    latency: float  # seconds from sending to the whole answer (or the error)
    status: int | None  # the HTTP status; None: no answer (``error`` says why)
    error: str | None
    version: str | None  # what the app says answered (its body's "version")
    pod: str | None  # the pod that answered (its body's "hostname")
    # When its connection was established (wall clock): when kube-proxy's rules chose the pod,
    # which may be a second after ``sent`` when the first SYN was lost. None: never connected.
    connected: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


Answer = tuple[int | None, str | None, str | None, str | None, float | None]


def get(url: str, *, timeout: float) -> Answer:
    """One GET on a new connection: (status, error, version, pod, when it connected)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    connected = None
    try:
        conn.connect()
        connected = time.time()
        conn.request("GET", parts.path or "/", headers={"Connection": "close"})
        answer = conn.getresponse()
        body = answer.read()
    except (OSError, http.client.HTTPException) as exc:
        return None, type(exc).__name__ + (f": {exc}" if str(exc) else ""), None, None, connected
    finally:
        conn.close()
    version, pod = answer.getheader("X-App-Version"), None
    try:
        parsed = json.loads(body)
        version, pod = parsed.get("version", version), parsed.get("hostname")
    except (ValueError, AttributeError):
        pass
    return answer.status, None, version, pod, connected


class Load:
    """``rate`` GETs per second to ``url`` for the duration of a ``with`` block.

    At most ``limit`` requests and at most ``seconds`` seconds (whichever comes first), from
    ``workers`` threads. ``samples`` holds every finished request (appended as they finish;
    :meth:`snapshot` copies them safely while the load runs).
    """

    def __init__(
        self,
        url: str,
        *,
        rate: float = DEFAULT_RATE,
        seconds: float = 600,
        limit: int | None = None,
        workers: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if rate <= 0 or seconds <= 0:
            raise ValueError("rate and seconds must be > 0")
        self.url, self.rate, self.seconds, self.timeout = url, rate, seconds, timeout
        self.limit = limit if limit is not None else int(rate * seconds)
        # NB: enough threads that a request timing out does not hold the others back.
        self.workers = workers or max(4, min(64, int(rate * timeout / 4) + 1))
        self.samples: list[Sample] = []
        self.started: float | None = None
        self.stopped: float | None = None
        self._lock = threading.Lock()
        self._next = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Self:
        self.started = time.time()
        self._origin = time.monotonic()
        self._threads = [
            threading.Thread(target=self._work, daemon=True, name=f"load-{i}")
            for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)
        self.stopped = time.time()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def done(self) -> bool:
        """Whether the load has done all it may: every request answered (count), or its time is
        up (the requests in flight then finish in :meth:`stop`), or it was stopped."""
        # NB: not the requests claimed: a worker claims its next request before it is due.
        with self._lock:
            answered = len(self.samples)
        return self._stop.is_set() or answered >= self.limit or self._elapsed() >= self.seconds

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def _elapsed(self) -> float:
        return time.monotonic() - self._origin

    def _claim(self) -> int | None:
        with self._lock:
            if self._next >= self.limit:
                return None
            index = self._next
            self._next += 1
            return index

    def _work(self) -> None:
        assert self.started is not None
        while not self._stop.is_set():
            index = self._claim()
            if index is None:
                return
            offset = index / self.rate
            if offset >= self.seconds:
                return
            pause = offset - self._elapsed()
            if pause > 0 and self._stop.wait(pause):
                return
            sent = time.time()
            began = time.perf_counter()
            status, error, version, pod, connected = get(self.url, timeout=self.timeout)
            sample = Sample(
                due=self.started + offset,
                sent=sent,
                latency=time.perf_counter() - began,
                status=status,
                error=error,
                version=version,
                pod=pod,
                connected=connected,
            )
            with self._lock:
                self.samples.append(sample)


# --- what the samples say -------------------------------------------------------------------


def revision_of(pod: str | None, release: str) -> str | None:
    """The revision hash in the name of a release's pod (``<release>-<revision>-<rs>-<id>``)."""
    prefix = f"{release}-"
    if not pod or not pod.startswith(prefix):
        return None
    return pod[len(prefix) :].split("-", 1)[0] or None


Verified = Callable[[Sample], bool]


def verified_since(
    promoted: Mapping[str, float], *, release: str, before: Iterable[str] = ()
) -> Verified:
    """Whether an answer came from a verified revision: ``promoted`` maps a revision hash to
    when (wall clock) it was verified and promoted; ``before`` names revisions verified before
    the load started (the stable one). A revision missing from both was never verified; an
    answer on a connection made (routed) before its revision's promotion was not verified
    either."""
    earlier = set(before)

    def check(sample: Sample) -> bool:
        revision = revision_of(sample.pod, release)
        if revision is None:
            return False
        if revision in earlier:
            return True
        at = promoted.get(revision)
        # NB: kube-proxy picks the pod when the connection is made: a lost SYN is sent again a
        # second later, under the rules of that moment.
        routed = sample.connected if sample.connected is not None else sample.sent
        return at is not None and routed >= at

    return check


def summarize(
    samples: Sequence[Sample],
    *,
    verified: Verified | None = None,
    switch: float | None = None,
    new: Callable[[Sample], bool] | None = None,
) -> dict[str, Any]:
    """The figures of one load window.

    ``failed``: no answer, or not 2xx. ``unverified``: answered (any status) by a revision that
    ``verified`` says was not verified then. With ``switch`` (wall clock) and ``new`` (whether an
    answer came from the new revision): ``switch_to_all_new_s``, from the switch to the last
    answer from any other revision (0 if none came after the switch).
    """
    failed = [s for s in samples if not s.ok]
    answered = [s for s in samples if s.status is not None]
    unverified = [s for s in answered if verified is not None and not verified(s)]
    latencies = [s.latency * 1000 for s in samples if s.ok]
    errors = collections.Counter(s.error or f"HTTP {s.status}" for s in failed)
    versions = collections.Counter(s.version or "?" for s in answered)
    duration = (max(s.sent for s in samples) - min(s.sent for s in samples)) if samples else 0.0
    result: dict[str, Any] = {
        "sent": len(samples),
        "failed": len(failed),
        "unverified": len(unverified),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies, default=float("nan")),
        "rate": len(samples) / duration if duration > 0 else 0.0,
        "errors": dict(errors.most_common()),
        "versions": dict(versions.most_common()),
        "first_failures": [s.to_json() for s in failed[:5]],
        "first_unverified": [s.to_json() for s in unverified[:5]],
    }
    if switch is not None and new is not None:
        last_old = max((s.sent for s in answered if not new(s)), default=switch)
        result["switch_to_all_new_s"] = max(0.0, last_old - switch)
    return result


def per_second(
    samples: Sequence[Sample], *, origin: float, label: Callable[[Sample], str]
) -> dict[str, list[int]]:
    """Answers per second since ``origin`` by ``label`` (e.g. the version), failures under
    ``"failed"``: the series of a requests-per-second picture."""
    if not samples:
        return {}
    width = int(max(s.sent for s in samples) - origin) + 1
    series: dict[str, list[int]] = {}
    for s in samples:
        key = label(s) if s.ok else "failed"
        bucket = int(s.sent - origin)
        if 0 <= bucket < width:
            series.setdefault(key, [0] * width)[bucket] += 1
    return series


class SelectorLog:
    """When (wall clock) a Service's selector named which revision: ``kubectl get -w`` prints
    the selector on every change of the Service, each line stamped as it arrives.

    ``kubectl`` must be on the PATH of ``env`` (or this process) with a kubeconfig.
    """

    def __init__(
        self, namespace: str, service: str, *, env: Mapping[str, str] | None = None
    ) -> None:
        self.namespace, self.service, self.env = namespace, service, env
        self.changes: list[tuple[float, str]] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self._proc = subprocess.Popen(
            [
                *("kubectl", "get", "service", self.service, "-n", self.namespace, "--watch"),
                "-o",
                'jsonpath={.spec.selector.permafrost\\.dev/revision}{"\\n"}',
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=dict(self.env) if self.env is not None else None,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            revision = line.strip()
            if not self.changes or self.changes[-1][1] != revision:
                self.changes.append((time.time(), revision))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def switched_to(self, revision: str) -> float | None:
        """When the selector first named ``revision`` after naming another one."""
        for i, (at, selected) in enumerate(self.changes):
            if selected == revision and i > 0:
                return at
        return None


# --- the command ----------------------------------------------------------------------------


def _progress(load: Load, out: TextIO) -> None:
    """One line a second: sent, failed, answers by version."""
    while not load.done():
        time.sleep(1)
        samples = load.snapshot()
        failed = sum(not s.ok for s in samples)
        versions = collections.Counter(s.version or "?" for s in samples if s.ok)
        by_version = " ".join(f"{v}={n}" for v, n in sorted(versions.items()))
        print(f"sent {len(samples)} failed {failed} {by_version}", file=out, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.traffic", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="requests per second")
    parser.add_argument("--seconds", type=float, default=30, help="at most this long")
    parser.add_argument("--limit", type=int, default=None, help="at most this many requests")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="samples as JSON lines")
    parser.add_argument(
        "--until", type=pathlib.Path, default=None, help="stop once this file exists"
    )
    args = parser.parse_args(argv)
    load = Load(
        args.url, rate=args.rate, seconds=args.seconds, limit=args.limit, timeout=args.timeout
    )
    with load:
        printer = threading.Thread(target=_progress, args=(load, sys.stdout), daemon=True)
        printer.start()
        while not load.done() and not (args.until and args.until.exists()):
            time.sleep(0.1)
    samples = sorted(load.samples, key=lambda s: s.due)
    if args.out is not None:
        with args.out.open("w") as out:
            for sample in samples:
                out.write(json.dumps(sample.to_json()) + "\n")
    summary = summarize(samples)
    print(
        f"total sent {summary['sent']} failed {summary['failed']} "
        f"p50 {summary['p50_ms']:.1f} ms p99 {summary['p99_ms']:.1f} ms "
        f"versions {summary['versions']} errors {summary['errors']}",
        flush=True,
    )
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
