"""What the load generator's samples say (bench/traffic.py): failures, answers from revisions
that were not verified, the switch, the per-second series; and the load itself, against a
local server, bounded in count."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
from collections.abc import Iterator

import pytest
from bench import traffic

RELEASE = "web"


def sample(
    sent: float, *, status: int | None = 200, pod: str | None = "web-aaaa-rs-1", version: str = "v1"
) -> traffic.Sample:
    return traffic.Sample(
        due=sent,
        sent=sent,
        latency=0.01,
        status=status,
        error=None if status else "ConnectionRefusedError",
        version=version if status else None,
        pod=pod if status else None,
    )


def test_the_revision_is_read_from_the_answering_pods_name() -> None:
    assert traffic.revision_of("web-1a2b3c4d5e-6f7d9c8b-xk2lp", RELEASE) == "1a2b3c4d5e"
    assert traffic.revision_of("other-1a2b-6f7d9-xk2lp", RELEASE) is None
    assert traffic.revision_of(None, RELEASE) is None


def test_an_answer_is_verified_if_its_revision_was_stable_before_or_promoted_before_it() -> None:
    verified = traffic.verified_since({"bbbb": 100.0}, release=RELEASE, before=["aaaa"])
    assert verified(sample(50, pod="web-aaaa-rs-1"))
    assert not verified(sample(99.5, pod="web-bbbb-rs-1"))  # before its promotion
    assert verified(sample(100, pod="web-bbbb-rs-1"))
    assert not verified(sample(200, pod="web-cccc-rs-1"))  # never promoted
    assert not verified(sample(200, pod="somebody-else"))


def test_the_summary_counts_failures_unverified_answers_and_the_switch() -> None:
    samples = [
        sample(1, pod="web-aaaa-rs-1"),
        sample(2, status=None),
        sample(3, status=500, pod="web-aaaa-rs-1"),
        sample(4, pod="web-cccc-rs-1", version="v3"),
        sample(5, pod="web-aaaa-rs-2"),
        sample(6, pod="web-bbbb-rs-1", version="v2"),
    ]
    verified = traffic.verified_since({"bbbb": 5.5}, release=RELEASE, before=["aaaa"])
    result = traffic.summarize(
        samples,
        verified=verified,
        switch=4.5,
        new=lambda s: traffic.revision_of(s.pod, RELEASE) == "bbbb",
    )
    assert (result["sent"], result["failed"], result["unverified"]) == (6, 2, 1)
    assert result["errors"] == {"ConnectionRefusedError": 1, "HTTP 500": 1}
    assert result["versions"] == {"v1": 3, "v3": 1, "v2": 1}
    assert result["first_unverified"][0]["pod"] == "web-cccc-rs-1"
    assert result["switch_to_all_new_s"] == pytest.approx(0.5)  # the last old answer, at 5


def test_the_series_counts_answers_per_second_by_label_and_failures_apart() -> None:
    samples = [sample(10.2), sample(10.7), sample(11.1, status=None), sample(12.9, version="v2")]
    series = traffic.per_second(samples, origin=10.0, label=lambda s: s.version or "?")
    assert series == {"v1": [2, 0, 0], "failed": [0, 1, 0], "v2": [0, 0, 1]}


@pytest.fixture
def server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"version": "v9", "hostname": "web-abc-rs-1"}).encode()
            self.send_response(200)
            self.send_header("X-App-Version", "v9")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        # NB: the default backlog (5) drops SYNs of a burst of 200/s on a loaded machine: the
        # client then waits a second for its retransmission and may time out.
        request_queue_size = 256

    httpd = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def test_the_load_sends_at_most_its_limit_and_records_every_answer(server: str) -> None:
    with traffic.Load(server, rate=200, seconds=10, limit=40, timeout=10) as load:
        while not load.done():
            threading.Event().wait(0.05)
    assert len(load.samples) == 40
    answers = {(s.status, s.version, s.pod, s.error) for s in load.samples}
    assert answers == {(200, "v9", "web-abc-rs-1", None)}
    dues = sorted(s.due for s in load.samples)
    assert dues[-1] - dues[0] == pytest.approx(39 / 200, abs=1e-6)  # open loop: due at i/rate


def test_a_refused_connection_is_a_failure_with_its_reason() -> None:
    with traffic.Load("http://127.0.0.1:9/", rate=50, seconds=1, limit=3) as load:
        while not load.done():
            threading.Event().wait(0.05)
    assert len(load.samples) == 3
    assert all(s.status is None and "ConnectionRefused" in (s.error or "") for s in load.samples)


def test_an_answer_is_judged_by_when_its_connection_was_routed() -> None:
    """A request sent just before a promotion whose first SYN was lost connects a second later,
    under the rules of that moment: judged by when it connected, not when it was sent."""
    verified = traffic.verified_since({"bbbb": 100.0}, release=RELEASE)
    late = dataclasses.replace(sample(99.2, pod="web-bbbb-rs-1"), connected=100.2)
    early = dataclasses.replace(sample(99.2, pod="web-bbbb-rs-1"), connected=99.3)
    assert verified(late)
    assert not verified(early)
    assert not verified(sample(99.2, pod="web-bbbb-rs-1"))  # never connected: by when sent
