"""Scaling a release (``kubectl scale grel``, a HorizontalPodAutoscaler): ``spec.replicas`` alone.

A scale changes no revision (the hash is of what runs, not of how many): the serving revision
is scaled in place; a revision in verification is brought to the new count and verified at it,
without starting over; a failed revision is not tried again; and the status carries what the
scale subresource reads (``status.replicas``, ``status.selector``).
"""

from __future__ import annotations

import dataclasses
import datetime

from planner_fixtures import (
    RELEASE,
    V1,
    V2,
    V3,
    applied,
    desired,
    event_reasons,
    failed,
    make_spec,
    outcome,
    progressing,
    ready_pods,
    retired,
    revision_record,
    routed_to,
    situation,
    stable,
    summary,
    unready_pods,
    view,
)

from permafrost import models
from permafrost.models import Outcome
from permafrost.releases import hashing, observations, planner

NONE_SELECTOR = "permafrost.dev/release=checkout,permafrost.dev/revision=none"


def selector_of(revision: str) -> str:
    return f"permafrost.dev/release=checkout,permafrost.dev/revision={revision}"


def rescaled(
    s: planner.Situation, replicas: int, *, spec: models.GuardedReleaseSpec | None = None
) -> planner.Situation:
    """``s`` after one pass was applied and the release was then edited (a new generation):
    ``spec.replicas`` set to ``replicas`` (and the rest of the spec to ``spec``, if given)."""
    base = s.spec if spec is None else spec
    new = base.model_copy(update={"replicas": replicas})
    after = applied(s, planner.plan(s))
    return dataclasses.replace(after, spec=new, desired=desired(new), generation=s.generation + 1)


def later(s: planner.Situation, seconds: float) -> planner.Situation:
    return dataclasses.replace(s, now=s.now + datetime.timedelta(seconds=seconds))


def with_pods(
    s: planner.Situation, revision: str, pods: tuple[planner.PodView, ...]
) -> planner.Situation:
    v = s.revisions[revision]
    ready = sum(1 for p in pods if p.ready is True)
    views = {**s.revisions, revision: dataclasses.replace(v, pods=pods, ready_replicas=ready)}
    return dataclasses.replace(s, revisions=views)


def serving_v2(replicas: int = 2) -> planner.Situation:
    return situation(
        spec=make_spec("v2", replicas=replicas),
        records=[stable(V2)],
        stable_revision=V2,
        views=[view(V2, replicas=replicas)],
        service=routed_to(V2),
    )


def verifying_v2() -> planner.Situation:
    """v1 serves; v2 is being verified, its two pods Ready for 5 s (min-ready 10 s)."""
    return situation(
        records=[stable(V1), progressing(V2, started=30, ready_since=5)],
        stable_revision=V1,
        views=[view(V1), view(V2, pods=ready_pods(2, since=5))],
        service=routed_to(V1),
    )


# --- the revision and the Deployments -------------------------------------------------------------


def test_the_revision_hash_and_the_template_do_not_depend_on_replicas() -> None:
    two, seven = make_spec("v2", replicas=2), make_spec("v2", replicas=7)
    a = observations.desired(release=RELEASE, spec=two, sources={})
    b = observations.desired(release=RELEASE, spec=seven, sources={})
    assert isinstance(a, planner.Desired)
    assert isinstance(b, planner.Desired)
    assert a.revision == b.revision == V2
    assert a.deployment["spec"]["replicas"] == 2
    assert b.deployment["spec"]["replicas"] == 7
    assert {**a.deployment["spec"], "replicas": 0} == {**b.deployment["spec"], "replicas": 0}


def test_the_unscaled_digest_ignores_replicas_only() -> None:
    digest = hashing.unscaled_spec_digest
    assert digest(make_spec(replicas=2).to_json()) == digest(make_spec(replicas=9).to_json())
    assert digest(make_spec(deadline=120).to_json()) != digest(make_spec(deadline=121).to_json())
    assert digest(make_spec("v2").to_json()) != digest(make_spec("v3").to_json())


def test_a_scale_of_a_stable_release_scales_its_deployment_in_place() -> None:
    s = rescaled(serving_v2(), 5)
    result = planner.plan(s)
    assert summary(result) == [("scale", V2, 5)]
    assert result.status.stable_revision == result.status.desired_revision == V2
    assert outcome(result, V2) == Outcome.STABLE
    assert result.events == ()
    # the serving pods are counted as they are: two Ready until the new ones are
    assert (result.status.replicas, result.status.ready_replicas) == (2, "2/5")
    assert result.status.selector == selector_of(V2)


def test_a_scale_down_of_a_stable_release_scales_its_deployment_down() -> None:
    s = rescaled(serving_v2(4), 1)
    result = planner.plan(s)
    assert summary(result) == [("scale", V2, 1)]
    assert result.status.ready_replicas == "4/1"
    assert result.status.phase == "Stable"


def test_a_new_revision_starts_at_the_current_scale() -> None:
    s = rescaled(serving_v2(), 6, spec=make_spec("v3"))
    result = planner.plan(s)
    (create,) = [a for a in result.actions if isinstance(a, planner.CreateRevision)]
    assert create.deployment["spec"]["replicas"] == 6
    assert ("create", V3) in summary(result)
    # the stable revision serves until v3 is verified: it gets the new count too
    assert ("scale", V2, 6) in summary(result)


# --- during verification ------------------------------------------------------------------------


def test_a_scale_during_verification_neither_restarts_it_nor_makes_a_revision() -> None:
    s = verifying_v2()
    before = revision_record(planner.plan(s), V2)
    result = planner.plan(rescaled(s, 3))
    assert summary(result) == [("scale", V2, 3), ("scale", V1, 3)]
    after = revision_record(result, V2)
    assert after.outcome == Outcome.PROGRESSING
    assert after.attempt_started_at == before.attempt_started_at
    assert after.attempt == before.attempt
    assert after.created_at == before.created_at
    assert "AttemptStarted" not in event_reasons(result)
    assert "RevisionCreated" not in event_reasons(result)
    assert result.status.desired_revision == V2


def test_verification_counts_the_current_replicas_not_the_ones_it_started_with() -> None:
    s = applied(rescaled(verifying_v2(), 3), planner.plan(rescaled(verifying_v2(), 3)))
    # long past min-ready, but only two of the three pods exist and are Ready
    two = later(s, 30)
    result = planner.plan(two)
    assert outcome(result, V2) == Outcome.PROGRESSING
    assert "2/3 pods Ready" in result.status.message  # type: ignore[operator]
    # the third pod comes up: verified once it has been Ready for min-ready
    three = with_pods(later(s, 31), V2, ready_pods(3, since=11))
    result = planner.plan(three)
    assert outcome(result, V2) == Outcome.STABLE
    assert result.status.stable_revision == V2
    assert result.status.selector == selector_of(V2)


def test_a_scale_down_during_verification_verifies_the_pods_that_are_left() -> None:
    s = rescaled(verifying_v2(), 1)
    first = planner.plan(s)
    assert summary(first) == [("scale", V2, 1), ("scale", V1, 1)]
    assert outcome(first, V2) == Outcome.PROGRESSING
    s = applied(s, first)
    pods = (*ready_pods(1, since=30), dataclasses.replace(ready_pods(2)[1], terminating=True))
    result = planner.plan(with_pods(later(s, 1), V2, pods))
    assert outcome(result, V2) == Outcome.STABLE


def test_the_stable_revision_follows_the_scale_while_another_is_verified() -> None:
    s = rescaled(verifying_v2(), 4)
    result = planner.plan(s)
    assert ("scale", V1, 4) in summary(result)
    assert result.status.stable_revision == V1
    assert result.status.selector == selector_of(V1)  # the autoscaler measures what serves


# --- after a failure ----------------------------------------------------------------------------


def failed_v2() -> planner.Situation:
    return situation(
        records=[stable(V1), failed(V2)],
        stable_revision=V1,
        views=[view(V1), view(V2, replicas=0, pods=())],
        service=routed_to(V1),
    )


def test_a_scale_does_not_retry_a_failed_revision() -> None:
    s = rescaled(failed_v2(), 4)
    result = planner.plan(s)
    assert summary(result) == [("scale", V1, 4)]
    assert outcome(result, V2) == Outcome.FAILED
    assert result.status.phase == "RolledBack"
    assert result.status.spec_generation == 1  # the spec's last change that was not a scale
    assert result.status.observed_generation == 2
    # and the next scale neither
    again = planner.plan(rescaled(s, 5))
    assert summary(again) == [("scale", V1, 5)]
    assert outcome(again, V2) == Outcome.FAILED


def test_any_other_spec_change_after_a_failure_still_retries_it() -> None:
    s = rescaled(failed_v2(), 2, spec=make_spec("v2", deadline=300))
    result = planner.plan(s)
    assert outcome(result, V2) == Outcome.PROGRESSING
    assert ("scale", V2, 2) in summary(result)
    assert result.status.spec_generation == 2


def test_a_scale_together_with_another_change_retries_it_at_the_new_count() -> None:
    s = rescaled(failed_v2(), 3, spec=make_spec("v2", deadline=300))
    result = planner.plan(s)
    assert outcome(result, V2) == Outcome.PROGRESSING
    assert {("scale", V2, 3), ("scale", V1, 3)} <= set(summary(result))


def test_a_spec_changed_away_and_back_still_retries_the_failed_revision() -> None:
    away = rescaled(failed_v2(), 2, spec=make_spec("v3"))
    back = rescaled(away, 2, spec=make_spec("v2"))
    result = planner.plan(back)
    assert outcome(result, V2) == Outcome.PROGRESSING


def test_without_automatic_rollback_the_failed_revision_is_left_as_it_is() -> None:
    s = situation(
        spec=make_spec(automatic=False),
        records=[stable(V1), failed(V2)],
        stable_revision=V1,
        views=[view(V1), view(V2, pods=unready_pods(2))],
        service=routed_to(V1),
    )
    result = planner.plan(rescaled(s, 3))
    assert summary(result) == [("scale", V1, 3)]
    assert outcome(result, V2) == Outcome.FAILED


# --- during a manual rollback -------------------------------------------------------------------


def rolling_back_to_v1() -> planner.Situation:
    """v2 (the spec's) serves; the user asked to roll back to v1, which is being verified."""
    return situation(
        records=[stable(V2), retired(V1, retired_=600)],
        stable_revision=V2,
        views=[view(V1, replicas=0, pods=()), view(V2)],
        service=routed_to(V2),
        annotations={models.ANNOTATION_ROLLBACK_TO: V1, models.ANNOTATION_ROLLBACK_FROM: V2},
    )


def test_a_scale_during_a_manual_rollback_scales_both_and_keeps_the_attempt() -> None:
    s = rolling_back_to_v1()
    first = planner.plan(s)
    assert outcome(first, V1) == Outcome.PROGRESSING
    started = revision_record(first, V1)
    result = planner.plan(rescaled(s, 5))
    assert summary(result) == [("scale", V1, 5), ("scale", V2, 5)]
    now = revision_record(result, V1)
    assert (now.outcome, now.attempt, now.attempt_started_at) == (
        Outcome.PROGRESSING,
        started.attempt,
        started.attempt_started_at,
    )
    assert "RollbackStarted" not in event_reasons(result)


def test_after_a_manual_rollback_a_scale_scales_the_revision_rolled_back_to() -> None:
    s = situation(
        spec=make_spec("v2", replicas=3),
        records=[stable(V1), retired(V2, retired_=60)],
        stable_revision=V1,
        views=[view(V1), view(V2)],
        service=routed_to(V1),
        annotations={models.ANNOTATION_ROLLBACK_TO: V1, models.ANNOTATION_ROLLBACK_FROM: V2},
        generation=2,
    )
    result = planner.plan(s)
    assert ("scale", V1, 3) in summary(result)
    assert result.status.stable_revision == V1
    assert result.status.selector == selector_of(V1)


# --- the scale subresource's status -------------------------------------------------------------


def test_before_any_revision_is_verified_the_selector_selects_no_pod() -> None:
    result = planner.plan(situation())
    assert result.status.selector == NONE_SELECTOR
    assert result.status.replicas == 0


def test_status_replicas_counts_the_ready_pods_of_the_serving_revision_only() -> None:
    s = situation(
        records=[stable(V1), progressing(V2, started=30)],
        stable_revision=V1,
        views=[view(V1, replicas=3, pods=(*ready_pods(2), *unready_pods(1)[:1])), view(V2)],
        service=routed_to(V1),
    )
    result = planner.plan(s)
    assert result.status.replicas == 2


def test_a_scale_while_config_is_missing_still_scales_the_stable_revision() -> None:
    spec = make_spec("v3", replicas=4, config_refs=[models.ConfigRef(kind="ConfigMap", name="c")])
    s = situation(
        spec=spec,
        records=[stable(V2)],
        stable_revision=V2,
        views=[view(V2)],
        service=routed_to(V2),
        desired_=planner.ConfigMissing(("ConfigMap/c",)),
        generation=2,
    )
    result = planner.plan(s)
    assert summary(result) == [("scale", V2, 4)]
    assert result.status.phase == "Pending"


def test_the_scale_fields_survive_a_round_trip_through_the_status_json() -> None:
    result = planner.plan(serving_v2())
    body = result.status.to_json()
    assert body["replicas"] == 2
    assert body["selector"] == selector_of(V2)
    assert models.GuardedReleaseStatus.model_validate(body) == result.status
