"""A replaced revision is scaled down only once the Service's EndpointSlices have let it go.

kube-proxy routes by the EndpointSlices, not by the selector: between the switch of the selector
and the moment the slices (and then kube-proxy's rules) follow it, requests still reach the old
revision's pods. Its ``scaleDownDelaySeconds`` counts from when the slices hold only the stable
revision's pods (``drained_at``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from planner_fixtures import (
    V1,
    V2,
    at,
    make_spec,
    progressing,
    ready_pods,
    retired,
    revision_record,
    routed_to,
    situation,
    stable,
    summary,
    view,
)

from permafrost.models import Outcome
from permafrost.releases import observations, planner


def routed(revision: str, endpoints: Mapping[str, int]) -> planner.ServiceView:
    return dataclasses.replace(routed_to(revision), endpoints=dict(endpoints))


def after_switch(
    endpoints: Mapping[str, int], *, delay: int = 2, drained: float | None = None
) -> planner.Situation:
    """v2 promoted 5 s ago (the selector names it), v1 retired then and still running."""
    old = retired(V1, retired_=5)
    if drained is not None:
        old = old.model_copy(update={"drained_at": at(drained)})
    return situation(
        spec=make_spec(scale_down_delay=delay),
        records=[stable(V2, promoted=5), old],
        stable_revision=V2,
        views=[view(V2), view(V1)],
        service=routed(V2, endpoints),
    )


def test_at_promotion_the_old_revision_runs_on_while_it_is_an_endpoint_even_without_delay() -> None:
    s = situation(
        spec=make_spec(scale_down_delay=0),
        records=[stable(V1), progressing(V2, started=30)],
        stable_revision=V1,
        views=[view(V1), view(V2, pods=ready_pods(2, since=20))],
        service=routed(V1, {V1: 2}),
    )
    result = planner.plan(s)
    assert ("route", V2, "patch") in summary(result)
    assert all(a[0] != "scale" for a in summary(result)), summary(result)
    old = revision_record(result, V1)
    assert (old.outcome, old.drained_at) == (Outcome.RETIRED, None)
    assert result.requeue_after == planner.ENDPOINTS_RECHECK_SECONDS


def test_the_old_revision_is_kept_while_the_slices_still_hold_its_pods() -> None:
    result = planner.plan(after_switch({V1: 2, V2: 2}, delay=0))
    assert summary(result) == []
    assert revision_record(result, V1).drained_at is None
    assert result.requeue_after == planner.ENDPOINTS_RECHECK_SECONDS


def test_the_old_revision_is_kept_while_the_slices_hold_no_ready_pod_of_the_stable_one() -> None:
    for endpoints in ({}, {V2: 0}):
        result = planner.plan(after_switch(endpoints, delay=0))
        assert summary(result) == [], endpoints
        assert revision_record(result, V1).drained_at is None


def test_the_delay_counts_from_when_the_slices_hold_only_the_stable_revision() -> None:
    result = planner.plan(after_switch({V2: 2}, delay=2))
    assert summary(result) == []  # not 2 s since the switch: 2 s from now
    assert revision_record(result, V1).drained_at == at(0)
    assert result.requeue_after == 2


def test_without_delay_the_old_revision_goes_as_soon_as_the_slices_let_it_go() -> None:
    result = planner.plan(after_switch({V2: 2}, delay=0))
    assert summary(result) == [("scale", V1, 0)]


def test_once_drained_the_old_revision_is_scaled_down_after_the_delay() -> None:
    assert summary(planner.plan(after_switch({V2: 2}, delay=2, drained=1))) == []
    assert summary(planner.plan(after_switch({V2: 2}, delay=2, drained=3))) == [("scale", V1, 0)]


def test_a_promotion_clears_when_a_revision_was_last_drained() -> None:
    """A revision retired, drained, then promoted again (a rollback) starts afresh."""
    old = retired(V1, retired_=600).model_copy(update={"drained_at": at(590)})
    s = situation(
        spec=make_spec(scale_down_delay=0),
        records=[stable(V2), old],
        stable_revision=V2,
        views=[view(V2), view(V1, replicas=0, pods=())],
        service=routed(V2, {V2: 2}),
        annotations={"permafrost.dev/rollback-to": V1, "permafrost.dev/rollback-from": V2},
    )
    first = planner.plan(s)
    assert revision_record(first, V1).outcome == Outcome.PROGRESSING
    verified = situation(
        spec=make_spec(scale_down_delay=0),
        records=first.status.revisions,
        stable_revision=V2,
        views=[view(V2), view(V1)],
        service=routed(V2, {V2: 2}),
        annotations={"permafrost.dev/rollback-to": V1, "permafrost.dev/rollback-from": V2},
    )
    promoted = planner.plan(
        dataclasses.replace(
            verified,
            now=verified.now.replace(minute=verified.now.minute + 1),
        )
    )
    assert revision_record(promoted, V1).outcome == Outcome.STABLE
    assert revision_record(promoted, V1).drained_at is None
    assert revision_record(promoted, V2).outcome == Outcome.RETIRED
    assert revision_record(promoted, V2).drained_at is None  # still an endpoint
    assert all(a[0] != "scale" for a in summary(promoted)), summary(promoted)


def test_without_observed_endpoints_the_delay_counts_from_the_switch() -> None:
    s = dataclasses.replace(after_switch({}, delay=2), service=routed_to(V2))
    assert summary(planner.plan(s)) == [("scale", V1, 0)]  # retired 5 s ago


def slice_of(*endpoints: tuple[str, bool | None]) -> dict[str, Any]:
    return {
        "endpoints": [
            {
                "addresses": ["10.244.0.9"],
                "targetRef": {"kind": "Pod", "name": name},
                **({} if ready is None else {"conditions": {"ready": ready}}),
            }
            for name, ready in endpoints
        ]
    }


def pod_of(name: str, revision: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"permafrost.dev/revision": revision}}}


def test_endpoints_are_counted_by_revision_ready_ones_apart() -> None:
    pods = [pod_of("a", V1), pod_of("b", V1), pod_of("c", V2)]
    slices = [
        slice_of(("a", True), ("b", False)),
        slice_of(("c", None), ("stranger", True)),
        {"endpoints": None},
    ]
    assert observations.endpoints(slices, pods=pods) == {V1: 1, V2: 1}
    assert observations.endpoints([], pods=pods) == {}
