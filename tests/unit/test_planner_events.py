"""Every planner Event names the revision its decision is about (logged as ``revision``)."""

from __future__ import annotations

import pytest
from planner_fixtures import (
    V1,
    V2,
    V3,
    make_spec,
    progressing,
    routed_to,
    situation,
    stable,
    unready_pods,
    view,
)

from permafrost.releases import planner

CASES = {
    "created": (
        situation(
            records=[stable(V1)], stable_revision=V1, views=[view(V1)], service=routed_to(V1)
        ),
        {"RevisionCreated": V2},
    ),
    "promoted": (
        situation(
            records=[stable(V1), progressing(V2, started=90)],
            stable_revision=V1,
            views=[view(V1), view(V2, created=90)],
            service=routed_to(V1),
        ),
        {"Promoted": V2},
    ),
    "rolled back": (
        situation(
            records=[stable(V1), progressing(V2, started=130)],
            stable_revision=V1,
            views=[view(V1), view(V2, created=130, pods=unready_pods(2))],
            service=routed_to(V1),
        ),
        {"RolledBack": V2},
    ),
    "superseded": (
        situation(
            spec=make_spec("v3"),
            records=[stable(V1), progressing(V2, started=20)],
            stable_revision=V1,
            views=[view(V1), view(V2, created=20, pods=unready_pods(2))],
            service=routed_to(V1),
        ),
        {"Superseded": V2, "RevisionCreated": V3},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_event_carries_the_revision_it_is_about(case: str) -> None:
    s, expected = CASES[case]
    events = planner.plan(s).events
    assert {e.reason: e.revision for e in events} == expected
    for event in events:
        assert event.revision is not None
        assert event.revision in event.message
