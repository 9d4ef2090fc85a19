"""Which replica may act under Kopf peering (``handlers.may_act``): Kopf's own rule, read from
the peering object's status, so Permafrost's work queues pause exactly when Kopf's watches do."""

from __future__ import annotations

import datetime

import pytest

from permafrost import handlers

NOW = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)


def peer(priority: int, *, seen: float = 1, lifetime: int = 10) -> dict[str, object]:
    lastseen = NOW - datetime.timedelta(seconds=seen)
    return {"priority": priority, "lifetime": lifetime, "lastseen": lastseen.isoformat()}


@pytest.mark.parametrize(
    ("peers", "allowed"),
    [
        pytest.param({}, False, id="not-announced-yet"),
        pytest.param({"other": peer(50)}, False, id="not-announced-beside-a-lower-peer"),
        pytest.param({"me": peer(100)}, True, id="only-itself"),
        pytest.param({"me": peer(100), "other": peer(50)}, True, id="outranks-a-live-peer"),
        pytest.param({"me": peer(100), "other": peer(200)}, False, id="outranked"),
        pytest.param({"me": peer(100), "other": peer(100)}, False, id="a-tie-pauses-both"),
        pytest.param(
            {"me": peer(100), "other": peer(200, seen=11)}, True, id="the-outranking-peer-expired"
        ),
        pytest.param(
            {"me": peer(100), "other": peer(200, seen=9)}, False, id="the-outranking-peer-not-yet"
        ),
        pytest.param(
            {"me": peer(100), "other": {"priority": "x", "lastseen": "?"}},
            False,
            id="unreadable-peer",
        ),
    ],
)
def test_a_replica_acts_only_while_no_live_peer_has_its_priority_or_more(
    peers: dict[str, object], allowed: bool
) -> None:
    assert handlers.may_act(peers, identity="me", priority=100, now=NOW) is allowed


def test_a_peer_seen_without_a_timezone_is_taken_as_utc() -> None:
    naive = {"priority": 200, "lifetime": 10, "lastseen": "2026-03-01T11:59:55"}
    peers = {"me": peer(100), "other": naive}
    assert handlers.may_act(peers, identity="me", priority=100, now=NOW) is False


def test_a_replica_whose_own_announcement_expired_may_not_act() -> None:
    """Its peers count it as gone and one of them acts: it must not act beside them."""
    peers = {"me": peer(100, seen=11), "other": peer(50)}
    assert handlers.may_act(peers, identity="me", priority=100, now=NOW) is False


def lease() -> handlers.Lease:
    return handlers.Lease(ttl=5, grace=3)


def test_a_lease_holds_only_after_the_grace_of_continuous_confirmations() -> None:
    held = lease()
    for now in (0.0, 1.0, 2.0):
        held.observe(allowed=True, now=now)
        assert not held.valid(now=now)
    held.observe(allowed=True, now=3.0)
    assert held.valid(now=3.0)


def test_a_lease_lapses_without_a_fresh_confirmation() -> None:
    """A replica paused (SIGSTOP) while holding it: on resuming, its plans are not written."""
    held = lease()
    for now in range(5):
        held.observe(allowed=True, now=float(now))
    assert held.valid(now=4.0)
    assert held.valid(now=9.0)
    assert not held.valid(now=9.5)  # 5.5 s since the last confirmation: fenced


def test_after_a_gap_a_lease_waits_the_grace_again() -> None:
    held = lease()
    for now in range(5):
        held.observe(allowed=True, now=float(now))
    held.observe(allowed=True, now=30.0)  # the first poll after a long pause
    assert not held.valid(now=30.0)
    held.observe(allowed=True, now=31.0)
    held.observe(allowed=True, now=33.0)
    assert held.valid(now=33.0)


def test_a_refusal_ends_a_lease_at_once() -> None:
    held = lease()
    for now in range(5):
        held.observe(allowed=True, now=float(now))
    held.observe(allowed=False, now=5.0)
    assert not held.valid(now=5.0)
    held.observe(allowed=True, now=6.0)
    assert not held.valid(now=6.0)
