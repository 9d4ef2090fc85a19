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
