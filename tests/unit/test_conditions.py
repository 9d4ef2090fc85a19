"""Status conditions: Kubernetes API conventions for transitions, generations and timestamps."""

from __future__ import annotations

import datetime

import pytest

from permafrost.models import Condition, ConditionStatus
from permafrost.releases import conditions

T, F, U = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN
EARLIER = datetime.datetime(2026, 3, 1, 11, 0, 0, tzinfo=datetime.UTC)
NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)


def before(type_: str, status: ConditionStatus, reason: str = "Before") -> Condition:
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message="earlier",
        observed_generation=1,
        last_transition_time=conditions.timestamp(EARLIER),
    )


def make(
    status: ConditionStatus,
    previous: list[Condition],
    *,
    type_: str = conditions.READY,
    reason: str = "After",
    generation: int | None = 2,
) -> Condition:
    return conditions.make(
        type_=type_,
        status=status,
        reason=reason,
        message="now",
        generation=generation,
        previous=previous,
        now=NOW,
    )


@pytest.mark.parametrize(
    ("previous", "status", "moved"),
    [
        pytest.param([], T, True, id="a-first-condition-starts-now"),
        pytest.param([before("Ready", T)], T, False, id="an-unchanged-status-keeps-its-time"),
        pytest.param([before("Ready", F)], T, True, id="false-to-true-moves-the-time"),
        pytest.param([before("Ready", T)], F, True, id="true-to-false-moves-the-time"),
        pytest.param([before("Ready", U)], F, True, id="unknown-to-false-moves-the-time"),
        pytest.param([before("Ready", U)], U, False, id="unknown-staying-unknown-keeps-its-time"),
        pytest.param(
            [before("Progressing", T)], T, True, id="a-condition-of-another-type-is-not-history"
        ),
    ],
)
def test_the_transition_time_moves_only_when_the_status_flips(
    previous: list[Condition], status: ConditionStatus, moved: bool
) -> None:
    made = make(status, previous)
    expected = NOW if moved else EARLIER
    assert made.last_transition_time == conditions.timestamp(expected)


def test_a_new_reason_or_message_alone_keeps_the_transition_time() -> None:
    made = make(T, [before("Ready", T, reason="AllReplicasReady")], reason="SomethingElse")
    assert made.reason == "SomethingElse"
    assert made.message == "now"
    assert made.last_transition_time == conditions.timestamp(EARLIER)


@pytest.mark.parametrize(
    "previous",
    [
        pytest.param([], id="on-a-first-visit"),
        pytest.param([before("Ready", T)], id="on-a-revisit"),
    ],
)
def test_a_condition_carries_the_generation_it_was_computed_for(
    previous: list[Condition],
) -> None:
    assert make(T, previous, generation=7).observed_generation == 7


def test_a_condition_has_its_type_status_reason_and_message() -> None:
    made = make(F, [], type_=conditions.DEGRADED, reason=conditions.CRASH_LOOP)
    assert (made.type, made.status, made.reason, made.message) == (
        "Degraded",
        F,
        "CrashLoop",
        "now",
    )


def test_the_condition_types_are_the_six_permafrost_sets() -> None:
    assert conditions.TYPES == (
        "Ready",
        "Progressing",
        "Degraded",
        "RolledBack",
        "PolicyCompliant",
        "TrafficGuarded",
    )


@pytest.mark.parametrize(
    "reason",
    [
        getattr(conditions, name)
        for name in dir(conditions)
        if name.isupper() and isinstance(getattr(conditions, name), str)
    ],
)
def test_every_reason_is_one_camel_case_word(reason: str) -> None:
    assert reason[0].isupper()
    assert reason.isalnum()


@pytest.mark.parametrize(
    ("conds", "type_", "found", "true"),
    [
        pytest.param([before("Ready", T)], "Ready", True, True, id="a-true-condition"),
        pytest.param([before("Ready", F)], "Ready", True, False, id="a-false-condition"),
        pytest.param([before("Ready", U)], "Ready", True, False, id="an-unknown-condition"),
        pytest.param([before("Degraded", T)], "Ready", False, False, id="an-absent-condition"),
        pytest.param([], "Ready", False, False, id="no-conditions-at-all"),
    ],
)
def test_find_and_is_true_look_up_a_condition_by_type(
    conds: list[Condition], type_: str, found: bool, true: bool
) -> None:
    assert (conditions.find(conds, type_) is not None) is found
    assert conditions.is_true(conds, type_) is true


@pytest.mark.parametrize(
    ("moment", "written"),
    [
        pytest.param(NOW, "2026-03-01T12:00:00Z", id="a-utc-time"),
        pytest.param(
            NOW.replace(microsecond=987654), "2026-03-01T12:00:00Z", id="sub-seconds-dropped"
        ),
        pytest.param(
            NOW.astimezone(datetime.timezone(datetime.timedelta(hours=2))),
            "2026-03-01T12:00:00Z",
            id="another-zone-converted-to-utc",
        ),
    ],
)
def test_timestamps_are_rfc3339_utc_with_second_precision(
    moment: datetime.datetime, written: str
) -> None:
    assert conditions.timestamp(moment) == written


def test_a_timestamp_parses_back_to_the_same_instant() -> None:
    parsed = conditions.parse_timestamp(conditions.timestamp(NOW))
    assert parsed == NOW
    assert parsed.utcoffset() == datetime.timedelta(0)
