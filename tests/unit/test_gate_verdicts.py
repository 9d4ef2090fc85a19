"""The promotion gates' verdicts (permafrost.gates.verdicts): pure, from tallies and ``now``.

Unknown is never healthy: a gate whose measurements all errored is never Passed
(argoproj/argo-rollouts#4479).
"""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from permafrost import models
from permafrost.gates import verdicts
from permafrost.models import GateVerdict, Measurement, MeasurementPhase

NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)
PHASES = list(MeasurementPhase)


def gate(**fields: object) -> models.Gate:
    base: dict[str, object] = {"name": "smoke", "http": {"port": "http", "path": "/"}}
    return models.Gate.model_validate({**base, **fields})


def at(seconds: float) -> datetime.datetime:
    return NOW + datetime.timedelta(seconds=seconds)


def measured(g: models.Gate, phases: list[MeasurementPhase]) -> models.GateRecord:
    rec = verdicts.start(g, now=NOW)
    for i, phase in enumerate(phases):
        rec = verdicts.record(
            rec, Measurement(at=verdicts.stamp(at(i * g.interval_seconds)), phase=phase)
        )
    return rec


S, F, INC, E = (
    MeasurementPhase.SUCCESSFUL,
    MeasurementPhase.FAILED,
    MeasurementPhase.INCONCLUSIVE,
    MeasurementPhase.ERROR,
)


@pytest.mark.parametrize(
    ("limits", "phases", "expected"),
    [
        ({}, [S, S, S], GateVerdict.PASSED),
        ({}, [S, S], GateVerdict.RUNNING),
        ({}, [S, F], GateVerdict.FAILED),  # early: no need to wait for the count
        ({"failureLimit": 1}, [S, F, S], GateVerdict.PASSED),
        ({"failureLimit": 1}, [F, S, F], GateVerdict.FAILED),
        ({}, [E], GateVerdict.INCONCLUSIVE),
        ({"inconclusiveLimit": 1}, [E, S, S], GateVerdict.PASSED),
        ({"inconclusiveLimit": 1}, [INC, E], GateVerdict.INCONCLUSIVE),
        # every measurement unknown, all within the limit: never a pass
        ({"inconclusiveLimit": 3}, [E, E, E], GateVerdict.INCONCLUSIVE),
        ({"failureLimit": 3, "inconclusiveLimit": 3}, [F, E, INC], GateVerdict.INCONCLUSIVE),
    ],
)
def test_verdicts_follow_the_limits(
    limits: dict[str, int], phases: list[MeasurementPhase], expected: GateVerdict
) -> None:
    g = gate(count=3, **limits)
    found, message = verdicts.verdict(g, measured(g, phases))
    assert found == expected, message
    assert g.name in message


@given(st.lists(st.sampled_from(PHASES), max_size=30), st.integers(1, 10), st.integers(0, 5))
def test_a_gate_passes_only_with_a_success_and_enough_measurements(
    phases: list[MeasurementPhase], count: int, limit: int
) -> None:
    g = gate(count=count, failureLimit=limit, inconclusiveLimit=limit)
    rec = measured(g, phases)
    found, _ = verdicts.verdict(g, rec)
    if found == GateVerdict.PASSED:
        assert phases.count(S) >= 1
        assert len(phases) >= count
        assert phases.count(F) <= limit
        assert phases.count(E) + phases.count(INC) <= limit
    if phases and all(p in (E, INC) for p in phases):
        assert found != GateVerdict.PASSED  # argo-rollouts#4479
    if phases.count(F) > limit:
        assert found == GateVerdict.FAILED


@given(st.lists(st.sampled_from(PHASES), max_size=40))
def test_the_tallies_cover_every_measurement_while_the_status_keeps_the_newest(
    phases: list[MeasurementPhase],
) -> None:
    rec = measured(gate(count=50), phases)
    assert verdicts.taken(rec) == len(phases)
    assert len(rec.measurements) == min(len(phases), models.GATE_MEASUREMENTS_KEPT)
    assert [m.phase for m in rec.measurements] == phases[-models.GATE_MEASUREMENTS_KEPT :] or (
        not phases
    )


def test_the_first_measurement_is_due_at_once_then_every_interval() -> None:
    g = gate(count=3, intervalSeconds=5)
    rec, ev = verdicts.evaluate(g, verdicts.start(g, now=NOW), now=NOW)
    assert ev.verdict == GateVerdict.RUNNING
    assert ev.due == NOW
    assert ev.measure_now(NOW)
    rec = verdicts.record(rec, Measurement(at=verdicts.stamp(NOW), phase=S))
    rec, ev = verdicts.evaluate(g, rec, now=at(2))
    assert ev.due == at(5)
    assert not ev.measure_now(at(2))


def test_a_final_verdict_stays_and_nothing_more_is_measured() -> None:
    g = gate(count=1)
    rec, ev = verdicts.evaluate(g, measured(g, [F]), now=at(1))
    assert ev.verdict == GateVerdict.FAILED
    assert ev.due is None
    # a success recorded later (a late measurement) does not turn it around
    rec = verdicts.record(rec, Measurement(at=verdicts.stamp(at(2)), phase=S))
    _, ev = verdicts.evaluate(g, rec, now=at(3))
    assert ev.verdict == GateVerdict.FAILED


def test_a_changed_gate_starts_afresh() -> None:
    g = gate(count=1)
    rec, _ = verdicts.evaluate(g, measured(g, [F]), now=at(1))
    changed = gate(count=2)
    rec, ev = verdicts.evaluate(changed, rec, now=at(2))
    assert ev.verdict == GateVerdict.RUNNING
    assert verdicts.taken(rec) == 0


def test_a_problem_makes_the_gate_misconfigured_until_it_is_gone() -> None:
    g = gate()
    rec, ev = verdicts.evaluate(g, verdicts.start(g, now=NOW), now=NOW, problem="no preview")
    assert ev.verdict == GateVerdict.MISCONFIGURED
    assert ev.due is None
    assert "no preview" in ev.message
    _, ev = verdicts.evaluate(g, rec, now=at(1))
    assert ev.verdict == GateVerdict.RUNNING
    assert ev.measure_now(at(1))


def test_an_invalid_query_makes_the_gate_misconfigured() -> None:
    g = gate(
        http=None,
        prometheus={
            "address": "http://prom:9090",
            "query": "up(",
            "successCondition": "result < 1.0",
        },
    )
    rec = verdicts.record(
        verdicts.start(g, now=NOW),
        Measurement(
            at=verdicts.stamp(NOW),
            phase=E,
            reason=verdicts.QUERY_INVALID,
            message="parse error",
        ),
    )
    _, ev = verdicts.evaluate(g, rec, now=at(1))
    assert ev.verdict == GateVerdict.MISCONFIGURED
    assert "parse error" in ev.message


@pytest.mark.parametrize(
    ("expression", "value", "phase"),
    [
        ("result < 0.05", 0.01, S),
        ("result < 0.05", 0.2, F),
        ("result == 0.0", float("nan"), INC),
    ],
)
def test_a_success_condition_judges_the_value(
    expression: str, value: float, phase: MeasurementPhase
) -> None:
    assert verdicts.judge_value(expression, value, at=NOW).phase == phase


@pytest.mark.parametrize(
    "expression", ["result <", "results < 0.05", "result + 1.0", "'a' < result"]
)
def test_a_success_condition_that_cannot_judge_is_refused(expression: str) -> None:
    with pytest.raises(verdicts.ConditionError):
        verdicts.compile_condition(expression)


def test_one_kind_per_gate() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        gate(prometheus={"address": "http://p:9090", "query": "up", "successCondition": "true"})
    with pytest.raises(ValueError, match="exactly one"):
        gate(http=None)


@pytest.mark.parametrize(
    "fields",
    [{"count": 0}, {"intervalSeconds": 0}, {"failureLimit": -1}, {"inconclusiveLimit": -1}],
)
def test_bounds(fields: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="greater than or equal"):
        gate(**fields)


def test_gates_run_within_the_progress_deadline() -> None:
    with pytest.raises(ValueError, match="progressDeadlineSeconds"):
        models.RolloutSpec.model_validate(
            {
                "progressDeadlineSeconds": 30,
                "gates": [{"name": "g", "http": {}, "count": 10, "intervalSeconds": 5}],
            }
        )


def test_the_interval_counts_from_the_measurements_own_time_to_the_millisecond() -> None:
    g = gate(count=3, intervalSeconds=1)
    taken_at = NOW + datetime.timedelta(seconds=16.9)
    rec = verdicts.record(
        verdicts.start(g, now=NOW), Measurement(at=verdicts.stamp(taken_at), phase=S)
    )
    _, ev = verdicts.evaluate(g, rec, now=NOW + datetime.timedelta(seconds=17.3))
    assert not ev.measure_now(NOW + datetime.timedelta(seconds=17.3))
    assert ev.due == taken_at + datetime.timedelta(seconds=1)


def test_placeholders_are_replaced_and_nothing_else() -> None:
    assert (
        verdicts.resolve_query(
            'x{a="{{revision}}"} / y{b="{{release}}",c="{{namespace}}",d="{{other}}"}',
            release="web",
            namespace="shop",
            revision="abc123",
        )
        == 'x{a="abc123"} / y{b="web",c="shop",d="{{other}}"}'
    )


# --- job gates ---------------------------------------------------------------------------------

PINNED = "registry.example/smoke@sha256:" + "a" * 64
JOB = {"template": {"spec": {"containers": [{"name": "smoke", "image": PINNED}]}}}


def job(conditions: list[dict[str, str]]) -> dict[str, object]:
    return {"metadata": {"name": "checkout-abc-smoke-1"}, "status": {"conditions": conditions}}


def test_a_job_gate_is_one_kind_and_fits_the_progress_deadline() -> None:
    assert gate(http=None, job=JOB).kind == "job"
    with pytest.raises(ValueError, match="exactly one of http, prometheus and job"):
        gate(job=JOB)  # and http
    with pytest.raises(ValueError, match="activeDeadlineSeconds"):
        models.RolloutSpec.model_validate(
            {
                "progressDeadlineSeconds": 60,
                "gates": [{"name": "g", "job": {**JOB, "activeDeadlineSeconds": 60}, "count": 1}],
            }
        )
    # the defaults fit the default progress deadline
    models.RolloutSpec.model_validate({"gates": [{"name": "g", "job": JOB}]})


def test_a_completed_job_is_a_success_and_a_failed_one_a_failure() -> None:
    done = verdicts.judge_job(job([{"type": "Complete", "status": "True"}]), at=NOW)
    assert done is not None
    assert done.phase == MeasurementPhase.SUCCESSFUL
    failed = verdicts.judge_job(
        job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]), at=NOW
    )
    assert failed is not None
    assert failed.phase == MeasurementPhase.FAILED
    assert failed.reason == verdicts.JOB_FAILED
    assert "BackoffLimitExceeded" in (failed.message or "")


def test_a_job_past_its_deadline_is_unknown_never_a_success() -> None:
    late = verdicts.judge_job(
        job([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]), at=NOW
    )
    assert late is not None
    assert late.phase == MeasurementPhase.ERROR
    assert late.reason == verdicts.JOB_DEADLINE_EXCEEDED


@pytest.mark.parametrize(
    "conditions",
    [
        [],
        [{"type": "SuccessCriteriaMet", "status": "True"}],  # interim: the pods still stop
        [{"type": "FailureTarget", "status": "True"}],
        [{"type": "Complete", "status": "False"}],
        [{"type": "Suspended", "status": "True"}],
    ],
)
def test_a_job_that_has_not_ended_is_not_measured_yet(conditions: list[dict[str, str]]) -> None:
    assert verdicts.judge_job(job(conditions), at=NOW) is None


def test_a_refused_job_makes_the_gate_misconfigured() -> None:
    g = gate(http=None, job=JOB, count=3)
    rec = verdicts.record(
        verdicts.start(g, now=NOW), verdicts.refused_job("j", "422 spec.template: Invalid", at=NOW)
    )
    found, message = verdicts.verdict(g, rec)
    assert found == GateVerdict.MISCONFIGURED
    assert "refused Job j: 422 spec.template: Invalid" in message
