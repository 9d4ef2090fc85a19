"""The revision state machine's transition table: allowed changes pass, every other one raises."""

from __future__ import annotations

import itertools

import pytest
from planner_fixtures import V1, situation, stable

from permafrost.models import Outcome
from permafrost.releases import planner

pytestmark = pytest.mark.unit

ALLOWED = {
    (None, Outcome.PROGRESSING),
    (None, Outcome.STABLE),
    (None, Outcome.RETIRED),
    (Outcome.PROGRESSING, Outcome.PROGRESSING),
    (Outcome.PROGRESSING, Outcome.STABLE),
    (Outcome.PROGRESSING, Outcome.FAILED),
    (Outcome.PROGRESSING, Outcome.SUPERSEDED),
    (Outcome.STABLE, Outcome.RETIRED),
    (Outcome.STABLE, Outcome.PROGRESSING),
    (Outcome.STABLE, Outcome.FAILED),  # failed its analysis after promotion
    (Outcome.RETIRED, Outcome.PROGRESSING),
    (Outcome.RETIRED, Outcome.STABLE),  # traffic switched back to it
    (Outcome.FAILED, Outcome.PROGRESSING),
    (Outcome.SUPERSEDED, Outcome.PROGRESSING),
}
EVERY = list(itertools.product([None, *Outcome], Outcome))


@pytest.mark.parametrize(("old", "new"), sorted(ALLOWED, key=str))
def test_an_allowed_transition_returns_the_new_outcome(old: Outcome | None, new: Outcome) -> None:
    assert planner.transition("abc", old=old, new=new) is new


@pytest.mark.parametrize(("old", "new"), [p for p in EVERY if p not in ALLOWED], ids=str)
def test_any_other_transition_raises_a_plan_error(old: Outcome | None, new: Outcome) -> None:
    with pytest.raises(planner.IllegalTransition, match="revision abc cannot go from"):
        planner.transition("abc", old=old, new=new)
    assert issubclass(planner.IllegalTransition, planner.PlanError)


def test_the_table_covers_every_outcome_and_no_record() -> None:
    assert set(planner.TRANSITIONS) == {None, *Outcome}
    assert {(o, n) for o, ns in planner.TRANSITIONS.items() for n in ns} == ALLOWED


def test_a_history_that_cannot_have_happened_is_refused_not_written() -> None:
    # The status says V1 is stable but records it as Failed (a status edited by hand): its
    # Deployment is gone, and retiring a Failed revision is no transition of the table.
    record = stable(V1).model_copy(update={"outcome": Outcome.FAILED})
    s = situation(records=[record], stable_revision=V1)
    with pytest.raises(planner.IllegalTransition, match=f"revision {V1} cannot go from Failed"):
        planner.plan(s)


def test_the_pass_states_are_a_closed_set() -> None:
    assert {p.value for p in planner.Pass} == {
        "Stable",
        "Progressing",
        "Held",
        "Failed",
        "Blocked",
    }
