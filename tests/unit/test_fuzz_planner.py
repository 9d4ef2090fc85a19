"""The planner under generated observations (property-based, ``hypothesis``).

Whatever the status says and whatever the cluster shows — records in any outcome, Deployments
with any pods in any state, a Service selecting anything, rollback and retry annotations, config
gone missing — :func:`planner.plan` either refuses the situation with :class:`PlanError` (a
corrupted status) or returns a plan that never moves traffic to a revision that is not verified:
a Service is only ever routed to the stable revision it already had, or to a revision whose
Deployment is current and whose every live pod has been Ready, without a restart, for at least
``minReadySeconds``.

``PERMAFROST_CHAOS=long`` runs many more examples (``make chaos``).
"""

from __future__ import annotations

import datetime
import os

import hypothesis
from hypothesis import strategies as st
from planner_fixtures import (
    NOW,
    RELEASE,
    SERVICE,
    V1,
    V2,
    V3,
    V4,
    VERSIONS,
    ago,
    at,
    desired,
    image,
    make_spec,
    name_of,
    revision_of,
)

from permafrost import models
from permafrost.models import Outcome, RevisionRecord
from permafrost.releases import conditions, manifests, planner

LONG = os.environ.get("PERMAFROST_CHAOS") == "long"
EXAMPLES = 5_000 if LONG else 600
REVISIONS = (V1, V2, V3, V4)
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not LONG,  # NB: the bounded run is reproducible; the long one explores
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)

seconds = st.integers(min_value=0, max_value=900)


@st.composite
def pods(draw: st.DrawFn, healthy: bool) -> planner.PodView:
    # NB: mostly healthy pods, so that verification (and its edge: minReadySeconds) is reached.
    ready = True if healthy else draw(st.sampled_from([True, False, None]))
    return planner.PodView(
        name=f"pod-{draw(st.integers(0, 9))}",
        ready=ready,
        ready_since=ago(draw(seconds)) if ready is True and draw(st.integers(0, 5)) else None,
        restarts=0 if healthy else draw(st.sampled_from([0, 0, 1, 5])),
        waiting_reason=None
        if healthy
        else draw(st.sampled_from([None, "CrashLoopBackOff", "ContainerCreating"])),
        terminating=not healthy and draw(st.booleans()),
    )


@st.composite
def views(draw: st.DrawFn, revision: str, replicas: int) -> planner.RevisionView:
    generation = draw(st.integers(1, 3))
    healthy = draw(st.booleans())
    count = replicas if healthy else draw(st.integers(0, 4))
    pod_list = tuple(draw(pods(healthy)) for _ in range(count))
    return planner.RevisionView(
        name=name_of(revision),
        revision=revision,
        replicas=draw(st.integers(0, 3)),
        created_at=ago(draw(seconds)),
        generation=generation,
        observed_generation=generation
        if healthy
        else draw(st.integers(generation - 1, generation)),
        ready_replicas=sum(1 for p in pod_list if p.ready is True),
        images=(image(VERSIONS[REVISIONS.index(revision)]),),
        pods=pod_list,
        fingerprint=f"fp-{revision}",
        recorded_fingerprint=draw(st.sampled_from([f"fp-{revision}", f"fp-{revision}", None])),
    )


@st.composite
def records(draw: st.DrawFn, revision: str) -> RevisionRecord:
    outcome = draw(st.sampled_from(list(Outcome)))
    created = draw(seconds)
    optional = st.one_of(st.none(), seconds)
    return RevisionRecord(
        name=name_of(revision),
        hash=revision,
        images=[image(VERSIONS[REVISIONS.index(revision)])],
        outcome=outcome,
        reason=draw(st.sampled_from([None, "Verified", "Replaced", "CrashLoop"])),
        created_at=at(created) or "",
        attempt_started_at=at(draw(optional)),
        attempt=draw(st.sampled_from([None, "1:", "2:", "1:again", f"rollback:{revision}"])),
        ready_since=at(draw(optional)),
        promoted_at=at(draw(optional)),
        retired_at=at(draw(optional)),
        failed_at=at(draw(optional)),
    )


@st.composite
def situations(draw: st.DrawFn) -> planner.Situation:
    version = draw(st.sampled_from(VERSIONS[:4]))
    spec = make_spec(
        version,
        replicas=draw(st.integers(1, 3)),
        service=True,
        deadline=draw(st.integers(1, 300)),
        min_ready=draw(st.integers(0, 60)),
        scale_down_delay=draw(st.integers(0, 60)),
        automatic=draw(st.booleans()),
        history=draw(st.integers(0, 4)),
    )
    observed = draw(st.lists(st.sampled_from(REVISIONS), unique=True, max_size=4))
    recorded = draw(st.lists(st.sampled_from(REVISIONS), unique=True, max_size=4))
    revision_records = [draw(records(r)) for r in recorded]
    stable_revision = draw(st.sampled_from([None, *recorded]))
    # NB: the status the planner writes names a stable revision only with a Stable record.
    revision_records = [
        r.model_copy(update={"outcome": Outcome.STABLE}) if r.hash == stable_revision else r
        for r in revision_records
    ]
    selected = draw(st.sampled_from([None, *REVISIONS]))
    service = (
        None
        if selected is None
        else planner.ServiceView(
            name=SERVICE,
            selector=draw(
                st.sampled_from(
                    [
                        manifests.selector(RELEASE.name, selected),
                        {models.LABEL_REVISION: selected},
                    ]
                )
            ),
        )
    )
    annotations: dict[str, str] = {}
    if draw(st.booleans()):
        annotations[models.ANNOTATION_RETRY] = draw(st.sampled_from(["1", "2", "again"]))
    if draw(st.booleans()):
        annotations[models.ANNOTATION_ROLLBACK_TO] = draw(st.sampled_from(REVISIONS))
        annotations[models.ANNOTATION_ROLLBACK_FROM] = draw(
            st.sampled_from([revision_of(version), V1])
        )
    desired_: planner.Desired | planner.ConfigMissing = (
        planner.ConfigMissing(missing=("ConfigMap/settings",))
        if draw(st.integers(0, 9)) == 0
        else desired(spec)
    )
    generation = draw(st.integers(1, 4))
    return planner.Situation(
        release=RELEASE,
        generation=generation,
        spec=spec,
        status=models.GuardedReleaseStatus(
            observed_generation=draw(st.sampled_from([None, generation - 1, generation])),
            desired_revision=draw(st.sampled_from([None, *REVISIONS])),
            stable_revision=stable_revision,
            revisions=revision_records,
        ),
        annotations=annotations,
        desired=desired_,
        revisions={r: draw(views(r, spec.replicas)) for r in observed},
        service=service,
        now=NOW + datetime.timedelta(seconds=draw(st.integers(0, 600))),
    )


def verified(s: planner.Situation, revision: str) -> bool:
    """Whether the observation itself shows ``revision`` healthy (independent of the planner)."""
    view = s.revisions.get(revision)
    if view is None or view.observed_generation < view.generation:
        return False
    live = [p for p in view.pods if not p.terminating]
    threshold = s.now - datetime.timedelta(seconds=s.spec.rollout.min_ready_seconds)
    return (
        len(live) == s.spec.replicas
        and all(p.ready is True and p.restarts == 0 for p in live)
        # NB: a Ready pod with no transition time counts as Ready since now (the planner's rule)
        and all((p.ready_since or s.now) <= threshold for p in live)
        and all(p.waiting_reason not in planner.CRASH_REASONS for p in live)
    )


@SETTINGS
@hypothesis.given(situations())
def test_the_planner_never_routes_traffic_to_an_unverified_revision(
    s: planner.Situation,
) -> None:
    # NB: the generated status never contradicts itself (its stable revision has a record), so
    # the planner has no reason to refuse it: any exception fails the test.
    result = planner.plan(s)
    before = s.status.stable_revision
    stable_records = {r.hash for r in s.status.revisions if r.outcome == Outcome.STABLE}
    selected = s.service.selector.get(models.LABEL_REVISION) if s.service else None
    for action in result.actions:
        if isinstance(action, planner.RouteService):
            target = action.selector[models.LABEL_REVISION]
            if target == models.REVISION_NONE:
                # Selecting no pod serves nothing unverified; only while nothing is stable.
                assert result.status.stable_revision is None
                continue
            # NB: re-writing a selector that already picks ``target`` (e.g. adding the release
            # label after the status was lost) moves no traffic.
            kept = target == selected
            assert (target == before and target in stable_records) or kept or verified(s, target), (
                f"routed to {target}, which is neither the stable revision {before}, nor the "
                f"one the Service selected ({selected}), nor verified by what was observed"
            )
            assert result.status.stable_revision == target
    # The new status is internally consistent: the stable revision it names has a Stable record.
    if result.status.stable_revision is not None:
        (record,) = [r for r in result.status.revisions if r.hash == result.status.stable_revision]
        assert record.outcome == Outcome.STABLE
    assert result.requeue_after is None or result.requeue_after >= planner.MIN_REQUEUE_SECONDS


@SETTINGS
@hypothesis.given(situations())
def test_a_newly_promoted_revision_was_verified_by_what_was_observed(
    s: planner.Situation,
) -> None:
    result = planner.plan(s)
    after = result.status.stable_revision
    if after is not None and after != s.status.stable_revision:
        selected = s.service.selector.get(models.LABEL_REVISION) if s.service else None
        adopted = s.status.stable_revision is None and after == selected
        promoted = "Promoted" in [e.reason for e in result.events]
        assert adopted or (promoted and verified(s, after)), (
            f"{after} became stable without being verified"
        )
        if promoted:
            assert conditions.find(result.status.conditions, conditions.READY) is not None
