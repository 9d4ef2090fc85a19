"""Metric helpers: what ended in a planner pass and how long it took (time injected), releases
by phase, drift, policy errors and admission decisions — counted on a real registry."""

from __future__ import annotations

import datetime

import prometheus_client
import pytest
from planner_fixtures import (
    NOW,
    V1,
    V2,
    V3,
    failed,
    make_spec,
    pod,
    progressing,
    ready_pods,
    routed_to,
    situation,
    stable,
    unready_pods,
    view,
)

from permafrost import metrics
from permafrost.policies import policy
from permafrost.releases import conditions, planner

LATER = NOW + datetime.timedelta(seconds=0.75)  # the actions were applied 0.75 s after planning


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def ends(s: planner.Situation, applied_at: datetime.datetime = LATER) -> list[metrics.RolloutEnd]:
    plan = planner.plan(s)
    return metrics.rollout_ends(
        before=s.status, after=plan.status, spec=s.spec, planned_at=s.now, applied_at=applied_at
    )


def test_a_promotion_ends_a_rollout_timed_from_its_attempt_start_to_the_traffic_switch() -> None:
    s = situation(
        records=[stable(V1), progressing(V2, started=90)],
        stable_revision=V1,
        views=[view(V1), view(V2, created=90)],
        service=routed_to(V1),
    )
    assert ends(s) == [
        metrics.RolloutEnd(revision=V2, outcome="Promoted", reason="Verified", duration=90.75)
    ]


def test_a_deadline_failure_is_detectable_at_the_deadline_not_when_it_was_noticed() -> None:
    # The pass runs 3 s after the 120 s deadline (a late requeue): that lag is part of it.
    s = situation(
        records=[stable(V1), progressing(V2, started=123)],
        stable_revision=V1,
        views=[view(V1), view(V2, created=123, pods=unready_pods(2))],
        service=routed_to(V1),
    )
    assert ends(s) == [
        metrics.RolloutEnd(
            revision=V2,
            outcome="RolledBack",
            reason=conditions.PROGRESS_DEADLINE_EXCEEDED,
            time_to_rollback=3.75,
        )
    ]


def test_a_crash_loop_is_timed_from_the_pass_that_observed_it() -> None:
    crashing = (pod("a", ready=False, restarts=2, waiting="CrashLoopBackOff"), *ready_pods(1))
    s = situation(
        records=[stable(V1), progressing(V2, started=20)],
        stable_revision=V1,
        views=[view(V1), view(V2, created=20, pods=crashing)],
        service=routed_to(V1),
    )
    (end,) = ends(s)
    assert (end.outcome, end.reason, end.time_to_rollback) == ("RolledBack", "CrashLoop", 0.75)


@pytest.mark.parametrize(
    ("automatic", "stable_revision"), [(False, V1), (True, None)], ids=["rollback-off", "no-stable"]
)
def test_a_failure_with_nothing_rolled_back_is_failed_and_untimed(
    automatic: bool, stable_revision: str | None
) -> None:
    records = [progressing(V2, started=130)]
    views = [view(V2, created=130, pods=unready_pods(2))]
    if stable_revision is not None:
        records.insert(0, stable(V1))
        views.insert(0, view(V1))
    s = situation(
        spec=make_spec(automatic=automatic),
        records=records,
        stable_revision=stable_revision,
        views=views,
        service=routed_to(V1) if stable_revision else None,
    )
    assert ends(s) == [
        metrics.RolloutEnd(
            revision=V2, outcome="Failed", reason=conditions.PROGRESS_DEADLINE_EXCEEDED
        )
    ]


def test_a_newer_spec_supersedes_the_rollout_in_flight() -> None:
    s = situation(
        spec=make_spec("v3"),
        records=[stable(V1), progressing(V2, started=20)],
        stable_revision=V1,
        views=[view(V1), view(V2, created=20, pods=unready_pods(2))],
        service=routed_to(V1),
    )
    assert ends(s) == [metrics.RolloutEnd(revision=V2, outcome="Superseded", reason="Superseded")]
    assert V3 not in {e.revision for e in ends(s)}


def test_nothing_ends_while_verifying_or_when_a_revision_was_already_decided() -> None:
    verifying = situation(
        records=[stable(V1), progressing(V2, started=5)],
        stable_revision=V1,
        views=[view(V1), view(V2, created=5, pods=unready_pods(2))],
        service=routed_to(V1),
    )
    already_failed = situation(
        records=[stable(V1), failed(V2)],
        stable_revision=V1,
        views=[view(V1), view(V2, replicas=0, pods=())],
        service=routed_to(V1),
    )
    assert ends(verifying) == []
    assert ends(already_failed) == []


def test_rollout_ends_are_counted_and_their_durations_observed() -> None:
    promoted = sample("permafrost_rollouts_total", outcome="Promoted")
    rolled_back = sample("permafrost_rollouts_total", outcome="RolledBack")
    durations = sample("permafrost_rollout_duration_seconds_count")
    duration_sum = sample("permafrost_rollout_duration_seconds_sum")
    rollbacks = sample("permafrost_time_to_rollback_seconds_count")
    metrics.observe_rollout_ends(
        [
            metrics.RolloutEnd(V2, "Promoted", "Verified", duration=42.0),
            metrics.RolloutEnd(V3, "RolledBack", "CrashLoop", time_to_rollback=0.5),
        ]
    )
    assert sample("permafrost_rollouts_total", outcome="Promoted") == promoted + 1
    assert sample("permafrost_rollouts_total", outcome="RolledBack") == rolled_back + 1
    assert sample("permafrost_rollout_duration_seconds_count") == durations + 1
    assert sample("permafrost_rollout_duration_seconds_sum") == duration_sum + 42.0
    assert sample("permafrost_time_to_rollback_seconds_count") == rollbacks + 1


def test_releases_by_phase_follow_the_last_written_phase_and_forget_deleted_releases() -> None:
    gauge = prometheus_client.Gauge("test_releases", "t", ["phase"], registry=None)
    phases = metrics.Phases(gauge)

    def value(phase: str) -> float:
        return gauge.labels(phase=phase)._value.get()

    phases.set("shop", "a", "Progressing")
    phases.set("shop", "b", "Progressing")
    phases.set("shop", "a", "Stable")
    phases.set("shop", "a", "Stable")
    assert (value("Progressing"), value("Stable")) == (1, 1)
    phases.forget("shop", "a")
    phases.forget("shop", "gone")
    assert (value("Progressing"), value("Stable")) == (1, 0)
    assert phases.count("Progressing") == 1


def test_drift_events_count_detections_and_repairs() -> None:
    detected = sample("permafrost_drift_detected_total", scope="revision")
    repaired = sample("permafrost_drift_repaired_total", scope="revision")
    for reason in ("DriftDetected", "DriftRepaired", "Promoted"):
        metrics.count_drift(scope="revision", reason=reason)
    assert sample("permafrost_drift_detected_total", scope="revision") == detected + 2
    assert sample("permafrost_drift_repaired_total", scope="revision") == repaired + 1


def result(outcome: policy.Outcome, rule: str = "r") -> policy.RuleResult:
    return policy.RuleResult("p", rule, "Enforce", outcome, "m")


def test_policy_errors_are_counted_apart_from_failures() -> None:
    errors = sample(
        "permafrost_policy_evaluation_errors_total", stage="promote", policy="p", rule="e"
    )
    fails = sample(
        "permafrost_policy_results_total",
        stage="promote",
        policy="p",
        rule="f",
        enforcement="Enforce",
        outcome="Fail",
    )
    metrics.count_policy_results(
        stage="promote", results=[result("Pass", "e"), result("Error", "e"), result("Fail", "f")]
    )
    metrics.count_policy_errors(stage="promote", results=[result("Error", "e"), result("Fail")])
    assert (
        sample("permafrost_policy_evaluation_errors_total", stage="promote", policy="p", rule="e")
        == errors + 2
    )
    assert (
        sample(
            "permafrost_policy_results_total",
            stage="promote",
            policy="p",
            rule="f",
            enforcement="Enforce",
            outcome="Fail",
        )
        == fails + 1
    )


def test_a_policy_denial_is_counted_with_its_first_violated_rule() -> None:
    labels = {
        "webhook": "releases",
        "reason": "PolicyViolation",
        "result": "denied",
        "policy": "p",
        "rule": "first",
    }
    before = sample("permafrost_admission_decisions_total", **labels)
    metrics.count_admission(
        webhook="releases",
        reason="PolicyViolation",
        allowed=False,
        violations=[result("Fail", "first"), result("Fail", "second")],
    )
    assert sample("permafrost_admission_decisions_total", **labels) == before + 1


def test_time_in_a_webhook_handler_is_observed() -> None:
    before = sample("permafrost_admission_duration_seconds_count", webhook="policies")
    with metrics.time_admission("policies"):
        pass
    assert sample("permafrost_admission_duration_seconds_count", webhook="policies") == before + 1
