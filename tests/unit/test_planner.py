"""The rollout state machine, table-driven: situation in, plan out, no cluster and no mocks.

Times in the tables are "seconds before NOW" (see ``planner_fixtures``). The default spec asks for
version v2 with 2 replicas, a Service, a 120s progress deadline, minReadySeconds 10, a 30s
scale-down delay, automatic rollback, and a history of 3.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
from typing import Any

import pytest
from planner_fixtures import (
    NOW,
    PHASES,
    RELEASE,
    SERVICE,
    V1,
    V2,
    V3,
    V4,
    V5,
    ago,
    applied,
    at,
    condition,
    desired,
    event_reasons,
    failed,
    make_spec,
    name_of,
    outcome,
    pod,
    progressing,
    ready_pods,
    record,
    retired,
    revision_record,
    routed_to,
    situation,
    stable,
    summary,
    superseded,
    unready_pods,
    view,
)

from permafrost import models
from permafrost.models import ConditionStatus, Outcome
from permafrost.policies import policy
from permafrost.releases import conditions, manifests, planner

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
RETRY = models.ANNOTATION_RETRY
ROLLBACK_TO = models.ANNOTATION_ROLLBACK_TO
ROLLBACK_FROM = models.ANNOTATION_ROLLBACK_FROM
MISSING = planner.ConfigMissing(("ConfigMap/app-config",))
WITH_CONFIG = make_spec(config_refs=[models.ConfigRef(kind="ConfigMap", name="app-config")])


def upgrading(
    *v2_records: models.RevisionRecord,
    v2: planner.RevisionView | None = None,
    spec: models.GuardedReleaseSpec | None = None,
    generation: int = 1,
    annotations: dict[str, str] | None = None,
) -> planner.Situation:
    """v1 stable and serving, the spec asks for v2 (with ``v2_records`` and ``v2`` observed)."""
    return situation(
        spec=spec,
        records=[stable(V1), *v2_records],
        stable_revision=V1,
        views=[view(V1), *([v2] if v2 else [])],
        service=routed_to(V1),
        generation=generation,
        annotations=annotations,
    )


def serving(
    revision: str,
    *others: models.RevisionRecord,
    other_views: tuple[planner.RevisionView, ...] = (),
    spec: models.GuardedReleaseSpec | None = None,
    annotations: dict[str, str] | None = None,
    service: planner.ServiceView | None = None,
) -> planner.Situation:
    """``revision`` stable and serving with ``others`` in its history."""
    return situation(
        spec=spec,
        records=[stable(revision), *others],
        stable_revision=revision,
        views=[view(revision), *other_views],
        service=routed_to(revision) if service is None else service,
        annotations=annotations,
    )


MANUAL = {ROLLBACK_TO: V1, ROLLBACK_FROM: V2}
MANUAL_BY_NAME = {ROLLBACK_TO: name_of(V1), ROLLBACK_FROM: V2}


@dataclasses.dataclass(frozen=True)
class Step:
    situation: planner.Situation
    actions: set[tuple[Any, ...]]
    phase: str | None  # None: not pinned by this row
    outcomes: dict[str, Outcome | None]
    requeue: float | None


STEPS = [
    # --- a first release ---
    pytest.param(
        Step(
            situation(),
            {("route", models.REVISION_NONE, "create"), ("create", V2)},
            "Progressing",
            {V2: Outcome.PROGRESSING},
            120,
        ),
        id="the-first-release-creates-its-first-revision-and-waits-at-most-its-deadline",
    ),
    pytest.param(
        Step(
            situation(records=[progressing(V2, started=30)], views=[view(V2, pods=())]),
            {("route", models.REVISION_NONE, "create")},
            "Progressing",
            {V2: Outcome.PROGRESSING},
            90,
        ),
        id="a-first-revision-without-pods-yet-waits-for-them",
    ),
    pytest.param(
        Step(
            situation(
                records=[progressing(V2, started=30)],
                views=[view(V2, pods=())],
                service=routed_to(models.REVISION_NONE),
            ),
            set(),
            "Progressing",
            {V2: Outcome.PROGRESSING},
            90,
        ),
        id="a-first-revision-being-verified-leaves-its-service-selecting-nothing",
    ),
    pytest.param(
        Step(
            situation(
                records=[progressing(V2, started=30)],
                views=[view(V2, pods=())],
                service=planner.ServiceView(name=SERVICE, selector={"app": "checkout"}),
            ),
            {("route", models.REVISION_NONE, "patch")},
            "Progressing",
            {V2: Outcome.PROGRESSING},
            90,
        ),
        id="a-users-service-selecting-an-unverified-first-revision-is-taken-over",
    ),
    pytest.param(
        Step(
            situation(records=[progressing(V2, started=60)], views=[view(V2)]),
            {("route", V2, "create")},
            "Stable",
            {V2: Outcome.STABLE},
            None,
        ),
        id="a-verified-first-revision-is-promoted-and-its-service-created",
    ),
    pytest.param(
        Step(
            situation(
                spec=make_spec(service=False),
                records=[progressing(V2, started=60)],
                views=[view(V2)],
            ),
            set(),
            "Stable",
            {V2: Outcome.STABLE},
            None,
        ),
        id="a-release-without-a-service-is-promoted-without-routing",
    ),
    pytest.param(
        Step(
            situation(records=[progressing(V2, started=120)], views=[view(V2, pods=())]),
            {("route", models.REVISION_NONE, "create"), ("scale", V2, 0)},
            "Degraded",
            {V2: Outcome.FAILED},
            None,
        ),
        id="a-first-revision-that-fails-leaves-the-release-degraded-with-nothing-serving",
    ),
    # --- an upgrade, step by step ---
    pytest.param(
        Step(
            upgrading(),
            {("create", V2)},
            "Progressing",
            {V1: Outcome.STABLE, V2: Outcome.PROGRESSING},
            120,
        ),
        id="an-upgrade-creates-the-new-revision-while-the-stable-one-keeps-serving",
    ),
    pytest.param(
        Step(
            upgrading(progressing(V2, started=30), v2=view(V2, pods=unready_pods(2))),
            set(),
            "Progressing",
            {V2: Outcome.PROGRESSING},
            90,
        ),
        id="a-revision-whose-pods-are-not-ready-waits-until-its-deadline",
    ),
    pytest.param(
        Step(
            upgrading(progressing(V2, started=119), v2=view(V2, pods=unready_pods(2))),
            set(),
            "Progressing",
            {V2: Outcome.PROGRESSING},
            1,
        ),
        id="a-revision-one-second-before-its-deadline-still-waits",
    ),
    pytest.param(
        Step(
            upgrading(
                progressing(V2, started=30),
                v2=view(V2, pods=(*ready_pods(1, since=20), pod("late", since=4))),
            ),
            set(),
            "Progressing",
            {V2: Outcome.PROGRESSING},
            6,
        ),
        id="a-revision-ready-for-less-than-minReadySeconds-waits-until-the-last-pod-has-been",
    ),
    pytest.param(
        Step(
            upgrading(progressing(V2, started=30), v2=view(V2, pods=ready_pods(2, since=10))),
            {("route", V2, "patch")},
            "Stable",
            {V1: Outcome.RETIRED, V2: Outcome.STABLE},
            30,
        ),
        id="a-revision-ready-for-minReadySeconds-is-promoted-and-the-old-one-retired",
    ),
    pytest.param(
        Step(
            upgrading(
                progressing(V2, started=30),
                v2=view(V2, pods=ready_pods(2)),
                spec=make_spec(scale_down_delay=0),
            ),
            {("route", V2, "patch"), ("scale", V1, 0)},
            "Stable",
            {V1: Outcome.RETIRED, V2: Outcome.STABLE},
            None,
        ),
        id="without-a-scale-down-delay-the-old-revision-is-scaled-down-at-promotion",
    ),
    pytest.param(
        Step(
            serving(V2, retired(V1, retired_=10), other_views=(view(V1),)),
            set(),
            "Stable",
            {V1: Outcome.RETIRED},
            20,
        ),
        id="a-retired-revision-keeps-running-during-the-scale-down-delay",
    ),
    pytest.param(
        Step(
            serving(V2, retired(V1, retired_=30), other_views=(view(V1),)),
            {("scale", V1, 0)},
            "Stable",
            {V1: Outcome.RETIRED},
            None,
        ),
        id="a-retired-revision-is-scaled-to-zero-once-the-delay-is-over",
    ),
    pytest.param(
        Step(
            serving(V2, retired(V1, retired_=600), other_views=(view(V1, replicas=0, pods=()),)),
            set(),
            "Stable",
            {V1: Outcome.RETIRED},
            None,
        ),
        id="a-retired-revision-already-at-zero-is-left-alone",
    ),
    # --- failures ---
    pytest.param(
        Step(
            upgrading(progressing(V2, started=120), v2=view(V2, pods=unready_pods(2))),
            {("scale", V2, 0)},
            "RolledBack",
            {V1: Outcome.STABLE, V2: Outcome.FAILED},
            None,
        ),
        id="a-never-ready-revision-fails-at-its-progress-deadline",
    ),
    pytest.param(
        Step(
            upgrading(progressing(V2, started=30), v2=view(V2, pods=())),
            set(),
            "Progressing",
            {V2: Outcome.PROGRESSING},
            90,
        ),
        id="a-revision-with-no-pods-reported-is-never-taken-for-healthy",
    ),
    pytest.param(
        Step(
            upgrading(
                progressing(V2, started=5),
                v2=view(V2, pods=(pod("a", ready=False, restarts=1), *ready_pods(1))),
            ),
            {("scale", V2, 0)},
            "RolledBack",
            {V2: Outcome.FAILED},
            None,
        ),
        id="a-restarted-container-fails-the-revision-long-before-its-deadline",
    ),
    pytest.param(
        Step(
            upgrading(
                progressing(V2, started=5),
                v2=view(V2, pods=(pod("a", ready=False, waiting="CrashLoopBackOff"),)),
            ),
            {("scale", V2, 0)},
            "RolledBack",
            {V2: Outcome.FAILED},
            None,
        ),
        id="a-container-in-CrashLoopBackOff-fails-the-revision-before-its-deadline",
    ),
    pytest.param(
        Step(
            upgrading(
                progressing(V2, started=30, ready_since=8),
                v2=view(V2, pods=(*ready_pods(1), pod("b", ready=False))),
            ),
            {("scale", V2, 0)},
            "RolledBack",
            {V2: Outcome.FAILED},
            None,
        ),
        id="a-revision-that-became-unready-after-all-pods-were-ready-fails",
    ),
    pytest.param(
        Step(
            upgrading(
                progressing(V2, started=30),
                v2=view(V2, pods=(*ready_pods(2), pod("old", restarts=4, terminating=True))),
            ),
            {("route", V2, "patch")},
            "Stable",
            {V2: Outcome.STABLE},
            30,
        ),
        id="a-terminating-crashed-pod-neither-fails-nor-counts-toward-the-revision",
    ),
    pytest.param(
        Step(
            upgrading(
                progressing(V2, started=120),
                v2=view(V2, pods=unready_pods(2)),
                spec=make_spec(automatic=False),
            ),
            set(),
            "Degraded",
            {V2: Outcome.FAILED},
            None,
        ),
        id="with-automatic-rollback-off-a-failed-revision-is-left-running",
    ),
    # --- after a failure ---
    pytest.param(
        Step(
            upgrading(failed(V2), v2=view(V2, replicas=0, pods=())),
            set(),
            "RolledBack",
            {V2: Outcome.FAILED},
            None,
        ),
        id="a-failed-revision-stays-failed-and-at-zero-when-nothing-changed",
    ),
    pytest.param(
        Step(
            upgrading(failed(V2), v2=view(V2, pods=unready_pods(2))),
            {("scale", V2, 0)},
            "RolledBack",
            {V2: Outcome.FAILED},
            None,
        ),
        id="a-failed-revision-found-running-again-is-scaled-back-to-zero",
    ),
    pytest.param(
        Step(
            upgrading(failed(V2), v2=view(V2, replicas=0, pods=()), generation=2),
            {("scale", V2, 2)},
            "Progressing",
            {V2: Outcome.PROGRESSING},
            120,
        ),
        id="a-new-generation-starts-a-new-attempt-of-a-failed-revision",
    ),
    pytest.param(
        Step(
            upgrading(failed(V2), v2=view(V2, replicas=0, pods=()), annotations={RETRY: "please"}),
            {("scale", V2, 2)},
            "Progressing",
            {V2: Outcome.PROGRESSING},
            120,
        ),
        id="a-new-retry-annotation-starts-a-new-attempt-of-a-failed-revision",
    ),
    pytest.param(
        Step(
            upgrading(
                failed(V2, attempt="1:please"),
                v2=view(V2, replicas=0, pods=()),
                annotations={RETRY: "please"},
            ),
            set(),
            "RolledBack",
            {V2: Outcome.FAILED},
            None,
        ),
        id="a-retry-annotation-already-answered-does-not-retry-again",
    ),
    pytest.param(
        Step(
            upgrading(failed(V2), spec=make_spec("v3")),
            {("create", V3)},
            "Progressing",
            {V2: Outcome.FAILED, V3: Outcome.PROGRESSING},
            120,
        ),
        id="a-new-spec-after-a-failure-rolls-out-normally",
    ),
    pytest.param(
        Step(upgrading(failed(V2)), set(), "RolledBack", {V2: Outcome.FAILED}, None),
        id="a-failed-revision-whose-deployment-was-deleted-stays-failed",
    ),
    pytest.param(
        Step(
            upgrading(failed(V2), generation=2),
            {("create", V2)},
            "Progressing",
            {V2: Outcome.PROGRESSING},
            120,
        ),
        id="a-retried-failed-revision-whose-deployment-was-deleted-is-created-again",
    ),
    # --- superseding ---
    pytest.param(
        Step(
            upgrading(
                progressing(V2, started=30),
                v2=view(V2, pods=unready_pods(2)),
                spec=make_spec("v3"),
            ),
            {("scale", V2, 0), ("create", V3)},
            "Progressing",
            {V1: Outcome.STABLE, V2: Outcome.SUPERSEDED, V3: Outcome.PROGRESSING},
            120,
        ),
        id="a-newer-spec-supersedes-the-revision-being-verified",
    ),
    pytest.param(
        Step(
            upgrading(
                progressing(V2, started=30),
                v2=view(V2, pods=unready_pods(2)),
                spec=make_spec("v1"),
            ),
            {("scale", V2, 0)},
            "Stable",
            {V1: Outcome.STABLE, V2: Outcome.SUPERSEDED},
            None,
        ),
        id="reverting-the-spec-to-the-stable-revision-supersedes-the-one-in-flight",
    ),
    pytest.param(
        Step(
            serving(
                V3,
                superseded(V2, at_=5),
                other_views=(view(V2, pods=unready_pods(2)),),
                spec=make_spec("v3"),
            ),
            {("scale", V2, 0)},
            "Stable",
            {V2: Outcome.SUPERSEDED},
            None,
        ),
        id="a-superseded-revision-still-running-is-scaled-to-zero",
    ),
    # --- steady state ---
    pytest.param(
        Step(serving(V2), set(), "Stable", {V2: Outcome.STABLE}, None),
        id="a-spec-whose-revision-is-the-stable-one-changes-nothing",
    ),
    pytest.param(
        Step(
            serving(V2, service=routed_to(V1)),
            {("route", V2, "patch")},
            "Stable",
            {V2: Outcome.STABLE},
            None,
        ),
        id="a-service-pointing-elsewhere-is-routed-back-to-the-stable-revision",
    ),
    pytest.param(
        Step(
            dataclasses.replace(serving(V2), service=None),
            {("route", V2, "create")},
            "Stable",
            {V2: Outcome.STABLE},
            None,
        ),
        id="a-deleted-service-is-created-again-for-the-stable-revision",
    ),
    pytest.param(
        Step(
            serving(V2, spec=make_spec(replicas=4)),
            {("scale", V2, 4)},
            None,
            {V2: Outcome.STABLE},
            None,
        ),
        id="a-new-replica-count-scales-the-stable-revision-in-place",
    ),
    pytest.param(
        Step(
            dataclasses.replace(serving(V2), revisions={}),
            {("create", V2)},
            "Unavailable",
            {V2: Outcome.STABLE},
            None,
        ),
        id="a-deleted-stable-deployment-is-created-again",
    ),
    pytest.param(
        Step(
            situation(
                spec=make_spec("v3"),
                records=[stable(V1), progressing(V3, started=30)],
                stable_revision=V1,
                views=[view(V3, pods=())],
                service=routed_to(V1),
            ),
            # NB: V1's pods are gone with it; the Service selects nothing until V3 is verified.
            {("route", models.REVISION_NONE, "patch")},
            "Progressing",
            {V1: Outcome.RETIRED, V3: Outcome.PROGRESSING},
            30,  # the retired revision's scale-down delay comes first
        ),
        id="a-stable-deployment-deleted-during-an-upgrade-is-recorded-as-retired",
    ),
    # --- missing config ---
    pytest.param(
        Step(
            dataclasses.replace(serving(V1, spec=WITH_CONFIG), desired=MISSING),
            set(),
            "Pending",
            {V1: Outcome.STABLE},
            None,
        ),
        id="missing-config-holds-the-rollout-while-the-stable-revision-keeps-serving",
    ),
    pytest.param(
        Step(
            situation(spec=WITH_CONFIG, desired_=MISSING),
            set(),
            "Pending",
            {},
            None,
        ),
        id="missing-config-holds-a-first-release",
    ),
    # --- history ---
    pytest.param(
        Step(
            serving(
                V5,
                retired(V4, retired_=400),
                retired(V3, retired_=500),
                failed(V2, at_=600),
                retired(V1, retired_=700),
                other_views=tuple(view(v, replicas=0, pods=()) for v in (V4, V3, V2, V1)),
                spec=make_spec("v5", history=2),
            ),
            {("delete", V2), ("delete", V1)},
            "Stable",
            {V5: Outcome.STABLE, V4: Outcome.RETIRED, V3: Outcome.RETIRED, V2: None, V1: None},
            None,
        ),
        id="history-beyond-revisionHistoryLimit-is-pruned-oldest-first",
    ),
    pytest.param(
        Step(
            serving(
                V3,
                retired(V2, retired_=400),
                failed(V1, at_=600),
                other_views=tuple(view(v, replicas=0, pods=()) for v in (V2, V1)),
                spec=make_spec("v3", history=0),
            ),
            {("delete", V2), ("delete", V1)},
            "Stable",
            {V3: Outcome.STABLE, V2: None, V1: None},
            None,
        ),
        id="a-revisionHistoryLimit-of-zero-keeps-only-the-stable-revision",
    ),
    pytest.param(
        Step(
            serving(
                V3,
                retired(V2, retired_=400),
                retired(V1, retired_=500),
                other_views=(view(V2, replicas=0, pods=()),),
                spec=make_spec("v3", history=1),
            ),
            set(),
            "Stable",
            {V2: Outcome.RETIRED, V1: None},
            None,
        ),
        id="a-pruned-revision-whose-deployment-is-gone-only-leaves-the-status",
    ),
    # --- manual rollback ---
    pytest.param(
        Step(
            serving(
                V2,
                retired(V1, retired_=3600),
                other_views=(view(V1, replicas=0, pods=()),),
                annotations=MANUAL,
            ),
            {("scale", V1, 2)},
            "Progressing",
            {V1: Outcome.PROGRESSING, V2: Outcome.STABLE},
            120,
        ),
        id="a-manual-rollback-scales-the-retained-revision-up-to-verify-it",
    ),
    pytest.param(
        Step(
            serving(
                V2,
                retired(V1, retired_=3600),
                other_views=(view(V1, replicas=0, pods=()),),
                annotations=MANUAL_BY_NAME,
            ),
            {("scale", V1, 2)},
            "Progressing",
            {V1: Outcome.PROGRESSING},
            120,
        ),
        id="a-manual-rollback-may-name-the-revision-by-its-deployment-name",
    ),
    pytest.param(
        Step(
            serving(
                V2,
                progressing(V1, started=30, attempt=f"rollback:{V1}"),
                other_views=(view(V1),),
                annotations=MANUAL,
            ),
            {("route", V1, "patch")},
            "Stable",
            {V1: Outcome.STABLE, V2: Outcome.RETIRED},
            30,
        ),
        id="a-verified-manual-rollback-is-promoted",
    ),
    pytest.param(
        Step(
            serving(
                V2,
                progressing(V1, started=120, attempt=f"rollback:{V1}"),
                other_views=(view(V1, pods=unready_pods(2)),),
                annotations=MANUAL,
            ),
            {("scale", V1, 0)},
            "RolledBack",
            {V1: Outcome.FAILED, V2: Outcome.STABLE},
            None,
        ),
        id="a-manual-rollback-that-fails-verification-leaves-the-stable-revision-serving",
    ),
    pytest.param(
        Step(
            serving(V2, annotations={ROLLBACK_TO: "0123456789", ROLLBACK_FROM: V2}),
            set(),
            "Stable",
            {V2: Outcome.STABLE},
            None,
        ),
        id="a-rollback-to-a-revision-that-is-not-retained-keeps-the-spec-revision",
    ),
    pytest.param(
        Step(
            serving(
                V2,
                retired(V1, retired_=3600),
                other_views=(view(V1, replicas=0, pods=()),),
                annotations={ROLLBACK_TO: V1, ROLLBACK_FROM: V4},
                spec=make_spec("v3"),
            ),
            {("create", V3)},
            "Progressing",
            {V3: Outcome.PROGRESSING, V1: Outcome.RETIRED},
            120,
        ),
        id="a-rollback-annotation-for-an-older-spec-is-ignored",
    ),
    # --- adoption after a crash ---
    pytest.param(
        Step(
            upgrading(v2=view(V2, pods=(), created=50)),
            set(),
            "Progressing",
            {V2: Outcome.PROGRESSING},
            70,
        ),
        id="an-unrecorded-revision-deployment-is-adopted-instead-of-created-twice",
    ),
    pytest.param(
        Step(
            upgrading(v2=view(V2, pods=(), created=120)),
            {("scale", V2, 0)},
            "RolledBack",
            {V2: Outcome.FAILED},
            None,
        ),
        id="an-adopted-revision-fails-at-the-deadline-counted-from-its-creation",
    ),
    pytest.param(
        Step(
            upgrading(v2=view(V2, created=50)),
            {("route", V2, "patch")},
            "Stable",
            {V2: Outcome.STABLE},
            30,
        ),
        id="an-adopted-revision-that-is-already-healthy-is-promoted",
    ),
    # --- health is never assumed ---
    pytest.param(
        Step(
            upgrading(
                progressing(V2, started=30),
                v2=view(V2, generation=2, observed_generation=1),
            ),
            set(),
            "Progressing",
            {V2: Outcome.PROGRESSING},
            90,
        ),
        id="a-deployment-status-lagging-its-generation-is-not-healthy",
    ),
    pytest.param(
        Step(
            upgrading(
                progressing(V2, started=30),
                v2=view(V2, pods=(*ready_pods(1), pod("unknown", ready=None))),
            ),
            set(),
            "Progressing",
            {V2: Outcome.PROGRESSING},
            90,
        ),
        id="a-pod-without-a-ready-condition-is-not-healthy",
    ),
    pytest.param(
        Step(
            upgrading(
                progressing(V2, started=120),
                v2=view(V2, pods=(*ready_pods(1), pod("unknown", ready=None))),
            ),
            {("scale", V2, 0)},
            "RolledBack",
            {V2: Outcome.FAILED},
            None,
        ),
        id="a-pod-without-a-ready-condition-until-the-deadline-fails-the-revision",
    ),
    pytest.param(
        Step(
            upgrading(progressing(V2, started=30), v2=view(V2, pods=ready_pods(1))),
            set(),
            "Progressing",
            {V2: Outcome.PROGRESSING},
            90,
        ),
        id="fewer-pods-than-replicas-is-not-healthy",
    ),
    pytest.param(
        Step(
            upgrading(progressing(V2, started=30), v2=view(V2, replicas=0, pods=())),
            {("scale", V2, 2)},
            "Progressing",
            {V2: Outcome.PROGRESSING},
            90,
        ),
        id="a-revision-scaled-down-behind-the-operators-back-is-scaled-up-again",
    ),
    pytest.param(
        Step(
            upgrading(progressing(V2, started=30)),
            {("create", V2)},
            "Progressing",
            {V2: Outcome.PROGRESSING},
            120,
        ),
        id="a-revision-deployment-deleted-during-verification-is-created-again",
    ),
]


def steps(*ids: str) -> list[Any]:
    return [p for p in STEPS if p.id in ids]


def the_step(step_id: str) -> Step:
    (param,) = steps(step_id)
    step: Step = param.values[0]
    return step


def plan_of(step_id: str) -> tuple[planner.Situation, planner.Plan]:
    s = the_step(step_id).situation
    return s, planner.plan(s)


@pytest.mark.parametrize("step", STEPS)
def test_each_situation_takes_its_expected_step(step: Step) -> None:
    result = planner.plan(step.situation)
    assert set(summary(result)) == step.actions
    if step.phase is not None:
        assert result.status.phase == step.phase
    assert {rev: outcome(result, rev) for rev in step.outcomes} == step.outcomes
    if step.requeue is None:
        assert result.requeue_after is None
    else:
        assert result.requeue_after == pytest.approx(step.requeue)


# --- invariants over the whole table -----------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
def test_no_plan_routes_the_service_anywhere_but_the_new_stable_revision(step: Step) -> None:
    result = planner.plan(step.situation)
    stable_revision = result.status.stable_revision
    ours = (models.LABEL_RELEASE, models.LABEL_REVISION)
    for action in result.actions:
        if isinstance(action, planner.RouteService):
            permafrost_keys = {k: v for k, v in action.selector.items() if k in ours}
            others = {k: v for k, v in action.selector.items() if k not in ours}
            if stable_revision is None:
                # Nothing verified yet: the Service selects no pod at all.
                assert permafrost_keys == manifests.selector(RELEASE.name, models.REVISION_NONE)
                assert action.name == SERVICE
                continue
            assert permafrost_keys == manifests.selector(RELEASE.name, stable_revision)
            # A key of the user's kept beside them is one the stable revision's pods carry.
            labels = step.situation.revisions[stable_revision].labels
            assert all(labels.get(k) == v for k, v in others.items()), action.selector
            assert outcome(result, stable_revision) == Outcome.STABLE
            assert action.name == SERVICE


@pytest.mark.parametrize("step", STEPS)
def test_no_plan_routes_the_service_to_a_failed_or_unverified_revision(step: Step) -> None:
    result = planner.plan(step.situation)
    routed = {
        a.selector[models.LABEL_REVISION]
        for a in result.actions
        if isinstance(a, planner.RouteService)
    }
    for revision in routed:
        assert outcome(result, revision) not in (
            Outcome.FAILED,
            Outcome.PROGRESSING,
            Outcome.SUPERSEDED,
        )


@pytest.mark.parametrize("step", STEPS)
def test_every_plan_sets_every_condition_for_the_observed_generation(step: Step) -> None:
    result = planner.plan(step.situation)
    generation = step.situation.generation
    assert [c.type for c in result.status.conditions] == list(conditions.TYPES)
    assert all(c.observed_generation == generation for c in result.status.conditions)
    assert all(c.reason and c.reason.isalnum() for c in result.status.conditions)
    assert result.status.observed_generation == generation


@pytest.mark.parametrize("step", STEPS)
def test_every_phase_is_one_of_the_documented_phases(step: Step) -> None:
    assert planner.plan(step.situation).status.phase in PHASES


@pytest.mark.parametrize("step", STEPS)
def test_no_plan_creates_a_revision_whose_deployment_exists(step: Step) -> None:
    created = [a for a in summary(planner.plan(step.situation)) if a[0] == "create"]
    assert all(revision not in step.situation.revisions for _, revision in created)


@pytest.mark.parametrize("step", STEPS)
def test_every_scale_and_delete_names_an_observed_deployment(step: Step) -> None:
    observed = {v.name for v in step.situation.revisions.values()}
    for action in planner.plan(step.situation).actions:
        if isinstance(action, planner.Scale | planner.DeleteRevision):
            assert action.name in observed


@pytest.mark.parametrize("step", STEPS)
def test_no_plan_takes_away_pods_that_still_receive_traffic(step: Step) -> None:
    result = planner.plan(step.situation)
    service = step.situation.service
    routed = service.selector.get(models.LABEL_REVISION) if service else None
    for kind, revision, *rest in summary(result):
        if kind == "route":
            routed = revision
        if kind == "delete" or (kind == "scale" and rest == [0]):
            assert revision != result.status.stable_revision
            assert revision != routed


@pytest.mark.parametrize("step", STEPS)
def test_the_status_lists_revisions_newest_first_with_the_stable_one_marked_stable(
    step: Step,
) -> None:
    result = planner.plan(step.situation)
    created = [r.created_at for r in result.status.revisions]
    assert created == sorted(created, reverse=True)
    if result.status.stable_revision is not None:
        assert outcome(result, result.status.stable_revision) == Outcome.STABLE
    assert sum(r.outcome == Outcome.STABLE for r in result.status.revisions) <= 1


@pytest.mark.parametrize("step", STEPS)
def test_a_requeue_is_either_absent_or_at_least_the_minimum(step: Step) -> None:
    requeue = planner.plan(step.situation).requeue_after
    assert requeue is None or requeue >= planner.MIN_REQUEUE_SECONDS


@pytest.mark.parametrize("step", STEPS)
def test_planning_is_deterministic_and_leaves_the_situation_untouched(step: Step) -> None:
    before = copy.deepcopy(step.situation)
    assert planner.plan(step.situation) == planner.plan(step.situation)
    assert step.situation == before


@pytest.mark.parametrize("step", STEPS)
def test_replanning_right_after_applying_a_plan_repeats_nothing(step: Step) -> None:
    first = planner.plan(step.situation)
    second = planner.plan(applied(step.situation, first))
    assert summary(second) == []
    assert [e for e in second.events if e.reason != "StableRevisionDeleted"] == []
    assert second.status.phase == first.status.phase
    assert second.status.stable_revision == first.status.stable_revision
    assert [(r.hash, r.outcome) for r in second.status.revisions] == [
        (r.hash, r.outcome) for r in first.status.revisions
    ]


# --- a first release in detail -----------------------------------------------------------------


def test_the_first_release_creates_the_desired_deployment_and_snapshots() -> None:
    s, result = plan_of(
        "the-first-release-creates-its-first-revision-and-waits-at-most-its-deadline"
    )
    assert isinstance(s.desired, planner.Desired)
    route, create = result.actions
    assert create == planner.CreateRevision(s.desired.deployment, s.desired.snapshots)
    # The Service exists, selecting no pod, before the first revision's pods can: they are not
    # verified, and a selector the user wrote (app: checkout) would match them once Ready.
    assert isinstance(route, planner.RouteService)
    assert route.selector == manifests.selector(RELEASE.name, models.REVISION_NONE)
    assert route.create is not None
    assert route.create["spec"]["selector"] == route.selector


def test_a_users_service_is_taken_over_before_the_first_revision_is_created() -> None:
    s = dataclasses.replace(
        situation(), service=planner.ServiceView(name=SERVICE, selector={"app": "checkout"})
    )
    result = planner.plan(s)
    assert [type(a) for a in result.actions] == [planner.RouteService, planner.CreateRevision]
    route = result.actions[0]
    assert isinstance(route, planner.RouteService)
    assert route.create is None
    assert route.selector[models.LABEL_REVISION] == models.REVISION_NONE


def test_promotion_keeps_the_users_selector_keys_that_the_pods_carry() -> None:
    """A Service kept in Git selects ``app: checkout``: Permafrost adds its two keys beside it
    and never removes it (Argo CD would put it back: a sync fight), but drops a key the
    promoted revision's pods do not carry (the Service would select nothing)."""
    s, _ = plan_of("a-revision-ready-for-minReadySeconds-is-promoted-and-the-old-one-retired")
    git = {"app": "checkout", "tier": "web"}
    s = dataclasses.replace(
        s,
        service=planner.ServiceView(
            name=SERVICE, selector={**git, **manifests.selector(RELEASE.name, V1)}
        ),
        revisions={
            r: dataclasses.replace(v, labels={"app": "checkout", "tier": "api"})
            for r, v in s.revisions.items()
        },
    )
    (route,) = planner.plan(s).actions
    assert route == planner.RouteService(
        SERVICE, {"app": "checkout", **manifests.selector(RELEASE.name, V2)}, None
    )


def test_a_service_with_the_users_keys_and_permafrosts_is_left_alone() -> None:
    s = serving(V1)
    labels = {"app": "checkout"}
    s = dataclasses.replace(
        s,
        service=planner.ServiceView(
            name=SERVICE, selector={**labels, **manifests.selector(RELEASE.name, V1)}
        ),
        revisions={r: dataclasses.replace(v, labels=labels) for r, v in s.revisions.items()},
    )
    assert not any(isinstance(a, planner.RouteService) for a in planner.plan(s).actions)


def test_a_users_service_taken_over_keeps_its_keys_and_selects_no_pod() -> None:
    s = dataclasses.replace(
        situation(), service=planner.ServiceView(name=SERVICE, selector={"app": "checkout"})
    )
    route = planner.plan(s).actions[0]
    assert isinstance(route, planner.RouteService)
    assert route.selector == {
        "app": "checkout",
        **manifests.selector(RELEASE.name, models.REVISION_NONE),
    }


def test_a_release_blocked_before_its_first_revision_leaves_the_service_alone() -> None:
    """Nothing of the release runs: what the Service serves is not the release's to judge."""
    s = dataclasses.replace(
        situation(desired_=MISSING),
        service=planner.ServiceView(name=SERVICE, selector={"app": "checkout"}),
    )
    result = planner.plan(s)
    assert not any(isinstance(a, planner.RouteService) for a in result.actions)


def test_the_first_release_records_a_progressing_revision_with_its_attempt() -> None:
    _, result = plan_of(
        "the-first-release-creates-its-first-revision-and-waits-at-most-its-deadline"
    )
    created = revision_record(result, V2)
    assert created.name == name_of(V2)
    assert created.images == list(desired(make_spec()).images)
    assert created.created_at == created.attempt_started_at == at(0)
    assert created.attempt == "1:"
    assert created.ready_since is None
    assert result.status.desired_revision == V2
    assert result.status.stable_revision is None
    assert result.status.ready_replicas == "0/2"


def test_the_first_release_reports_progressing_and_not_ready() -> None:
    _, result = plan_of(
        "the-first-release-creates-its-first-revision-and-waits-at-most-its-deadline"
    )
    assert (condition(result, "Progressing").status, condition(result, "Progressing").reason) == (
        T,
        "RolloutInProgress",
    )
    assert (condition(result, "Ready").status, condition(result, "Ready").reason) == (
        F,
        "NoStableRevision",
    )
    assert condition(result, "Degraded").status == F
    assert condition(result, "RolledBack").status == F
    assert event_reasons(result) == ["RevisionCreated", "ServiceCreated"]  # no Service existed
    assert result.status.message == condition(result, "Progressing").message


# --- verification in detail --------------------------------------------------------------------


def test_waiting_for_minReadySeconds_remembers_when_all_pods_were_first_ready() -> None:
    _, result = plan_of(
        "a-revision-ready-for-less-than-minReadySeconds-waits-until-the-last-pod-has-been"
    )
    assert revision_record(result, V2).ready_since == at(0)
    assert "2/2 pods Ready" in condition(result, "Progressing").message


def test_a_later_pass_keeps_the_first_time_all_pods_were_seen_ready() -> None:
    s = upgrading(
        progressing(V2, started=30, ready_since=3), v2=view(V2, pods=ready_pods(2, since=4))
    )
    result = planner.plan(s)
    assert revision_record(result, V2).ready_since == at(3)
    assert result.requeue_after == pytest.approx(6)


def test_waiting_for_pods_reports_how_many_are_ready() -> None:
    s = upgrading(
        progressing(V2, started=30), v2=view(V2, pods=(*ready_pods(1), pod("b", ready=False)))
    )
    result = planner.plan(s)
    assert "1/2 pods Ready" in condition(result, "Progressing").message
    assert result.status.phase == "Progressing"
    assert result.events == ()


# --- promotion in detail -----------------------------------------------------------------------


def test_promotion_records_the_new_stable_and_retires_the_old_one() -> None:
    _, result = plan_of("a-revision-ready-for-minReadySeconds-is-promoted-and-the-old-one-retired")
    promoted, old = revision_record(result, V2), revision_record(result, V1)
    assert result.status.stable_revision == V2
    assert (promoted.outcome, promoted.reason, promoted.promoted_at) == (
        Outcome.STABLE,
        "Verified",
        at(0),
    )
    assert (old.outcome, old.reason, old.retired_at) == (Outcome.RETIRED, "Replaced", at(0))
    assert event_reasons(result) == ["Promoted"]
    assert V1 in result.events[0].message


def test_promotion_points_the_existing_service_at_the_new_revision() -> None:
    _, result = plan_of("a-revision-ready-for-minReadySeconds-is-promoted-and-the-old-one-retired")
    assert result.actions == (
        planner.RouteService(SERVICE, manifests.selector(RELEASE.name, V2), None),
    )


def test_promoting_a_first_revision_creates_the_service_it_routes() -> None:
    _, result = plan_of("a-verified-first-revision-is-promoted-and-its-service-created")
    (route,) = result.actions
    assert isinstance(route, planner.RouteService)
    assert route.create == manifests.service(
        release=RELEASE, spec=models.ServiceSpec(name=SERVICE), revision=V2
    )
    assert route.selector == manifests.selector(RELEASE.name, V2)


def test_the_old_revision_is_scaled_down_only_after_the_service_moved() -> None:
    _, result = plan_of("without-a-scale-down-delay-the-old-revision-is-scaled-down-at-promotion")
    assert summary(result) == [("route", V2, "patch"), ("scale", V1, 0)]


@pytest.mark.parametrize(
    ("ready_replicas", "status", "reason", "phase"),
    [
        pytest.param(2, T, "AllReplicasReady", "Stable", id="all-replicas-ready-means-ready"),
        pytest.param(
            1, F, "ReplicasNotReady", "Unavailable", id="a-lagging-ready-count-is-not-ready-yet"
        ),
    ],
)
def test_ready_follows_the_ready_replicas_of_the_stable_deployment(
    ready_replicas: int, status: ConditionStatus, reason: str, phase: str
) -> None:
    s = situation(
        records=[progressing(V2, started=60)], views=[view(V2, ready_replicas=ready_replicas)]
    )
    result = planner.plan(s)
    assert result.status.stable_revision == V2
    assert (condition(result, "Ready").status, condition(result, "Ready").reason) == (
        status,
        reason,
    )
    assert result.status.phase == phase
    assert result.status.ready_replicas == f"{ready_replicas}/2"


def test_after_promotion_the_rollout_is_complete() -> None:
    _, result = plan_of("a-revision-ready-for-minReadySeconds-is-promoted-and-the-old-one-retired")
    assert (condition(result, "Progressing").status, condition(result, "Progressing").reason) == (
        F,
        "RolloutComplete",
    )
    assert condition(result, "Degraded").reason == "AsExpected"
    assert condition(result, "RolledBack").reason == "NoRollback"


# --- failure in detail -------------------------------------------------------------------------

FAILURES = [
    pytest.param(
        "a-never-ready-revision-fails-at-its-progress-deadline",
        "ProgressDeadlineExceeded",
        id="the-progress-deadline",
    ),
    pytest.param(
        "a-restarted-container-fails-the-revision-long-before-its-deadline",
        "CrashLoop",
        id="a-restarted-container",
    ),
    pytest.param(
        "a-container-in-CrashLoopBackOff-fails-the-revision-before-its-deadline",
        "CrashLoop",
        id="a-crash-loop-back-off",
    ),
    pytest.param(
        "a-revision-that-became-unready-after-all-pods-were-ready-fails",
        "BecameUnready",
        id="a-pod-that-became-unready",
    ),
    pytest.param(
        "a-pod-without-a-ready-condition-until-the-deadline-fails-the-revision",
        "ProgressDeadlineExceeded",
        id="a-pod-that-never-reported-ready",
    ),
    pytest.param(
        "an-adopted-revision-fails-at-the-deadline-counted-from-its-creation",
        "ProgressDeadlineExceeded",
        id="the-deadline-of-an-adopted-revision",
    ),
]


@pytest.mark.parametrize(("step_id", "reason"), FAILURES)
def test_a_failed_revision_is_recorded_with_why_and_when(step_id: str, reason: str) -> None:
    _, result = plan_of(step_id)
    failure = revision_record(result, V2)
    assert (failure.outcome, failure.reason, failure.failed_at) == (Outcome.FAILED, reason, at(0))
    assert failure.message
    assert result.status.stable_revision == V1
    assert result.status.desired_revision == V2


@pytest.mark.parametrize(("step_id", "reason"), FAILURES)
def test_a_failure_rolls_back_to_the_stable_revision_and_says_why(
    step_id: str, reason: str
) -> None:
    _, result = plan_of(step_id)
    assert (condition(result, "RolledBack").status, condition(result, "RolledBack").reason) == (
        T,
        reason,
    )
    assert (condition(result, "Degraded").status, condition(result, "Degraded").reason) == (
        T,
        reason,
    )
    assert (condition(result, "Progressing").status, condition(result, "Progressing").reason) == (
        F,
        "RevisionFailed",
    )
    assert condition(result, "Ready").status == T
    assert result.status.phase == "RolledBack"
    assert ("scale", V2, 0) in summary(result)
    assert not any(isinstance(a, planner.RouteService) for a in result.actions)
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "RolledBack")]
    assert V1 in result.events[0].message


def test_a_failure_tells_how_to_try_again() -> None:
    _, result = plan_of("a-never-ready-revision-fails-at-its-progress-deadline")
    assert RETRY in condition(result, "Progressing").message


def test_a_failed_first_revision_has_nothing_to_roll_back_to() -> None:
    _, result = plan_of(
        "a-first-revision-that-fails-leaves-the-release-degraded-with-nothing-serving"
    )
    assert (condition(result, "RolledBack").status, condition(result, "RolledBack").reason) == (
        F,
        "NoStableRevision",
    )
    assert condition(result, "Degraded").status == T
    assert condition(result, "Ready").reason == "NoStableRevision"
    assert "no revision serves" in result.events[0].message


def test_with_automatic_rollback_off_a_failure_is_reported_but_not_rolled_back() -> None:
    _, result = plan_of("with-automatic-rollback-off-a-failed-revision-is-left-running")
    assert (condition(result, "RolledBack").status, condition(result, "RolledBack").reason) == (
        F,
        "AutomaticRollbackDisabled",
    )
    assert condition(result, "Degraded").status == T
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "RevisionFailed")]
    assert result.actions == ()


def test_with_automatic_rollback_off_a_failed_revision_keeps_running_on_later_passes() -> None:
    s = upgrading(failed(V2), v2=view(V2, pods=unready_pods(2)), spec=make_spec(automatic=False))
    result = planner.plan(s)
    assert result.actions == ()
    assert result.status.phase == "Degraded"


def test_a_persisting_failure_keeps_its_conditions_without_new_events() -> None:
    s = the_step("a-never-ready-revision-fails-at-its-progress-deadline").situation
    later = dataclasses.replace(
        applied(s, planner.plan(s)), now=NOW + datetime.timedelta(minutes=5)
    )
    result = planner.plan(later)
    assert result.actions == ()
    assert result.events == ()
    for type_ in conditions.TYPES:
        assert condition(result, type_).last_transition_time == at(0)
    assert condition(result, "RolledBack").status == T


# --- new attempts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step_id", "attempt"),
    [
        pytest.param(
            "a-new-generation-starts-a-new-attempt-of-a-failed-revision",
            "2:",
            id="after-a-new-generation",
        ),
        pytest.param(
            "a-new-retry-annotation-starts-a-new-attempt-of-a-failed-revision",
            "1:please",
            id="after-a-new-retry-annotation",
        ),
    ],
)
def test_a_new_attempt_starts_afresh_and_remembers_what_it_answers(
    step_id: str, attempt: str
) -> None:
    _, result = plan_of(step_id)
    fresh = revision_record(result, V2)
    assert fresh.attempt == attempt
    assert fresh.attempt_started_at == at(0)
    assert fresh.created_at == at(180)
    assert (fresh.failed_at, fresh.ready_since, fresh.reason) == (None, None, None)
    assert event_reasons(result) == ["AttemptStarted"]
    assert condition(result, "Degraded").status == F
    assert condition(result, "Progressing").status == T


# --- superseding -------------------------------------------------------------------------------


def test_a_superseded_revision_is_recorded_and_announced() -> None:
    _, result = plan_of("a-newer-spec-supersedes-the-revision-being-verified")
    old = revision_record(result, V2)
    assert (old.outcome, old.reason, old.retired_at) == (Outcome.SUPERSEDED, "Superseded", at(0))
    assert V3 in (old.message or "")
    assert event_reasons(result) == ["Superseded", "RevisionCreated"]
    assert result.status.desired_revision == V3


# --- missing config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "step_id",
    [
        "missing-config-holds-the-rollout-while-the-stable-revision-keeps-serving",
        "missing-config-holds-a-first-release",
    ],
)
def test_missing_config_creates_nothing_and_says_what_is_missing(step_id: str) -> None:
    _, result = plan_of(step_id)
    assert result.actions == ()
    assert (condition(result, "Progressing").status, condition(result, "Progressing").reason) == (
        F,
        "ConfigNotFound",
    )
    assert "ConfigMap/app-config" in condition(result, "Progressing").message
    assert result.status.phase == "Pending"


def test_missing_config_keeps_the_previous_desired_revision_and_the_stable_one_ready() -> None:
    s = dataclasses.replace(
        serving(V1, spec=WITH_CONFIG),
        desired=MISSING,
        status=serving(V1).status.model_copy(update={"desired_revision": V1}),
    )
    result = planner.plan(s)
    assert result.status.desired_revision == V1
    assert result.status.stable_revision == V1
    assert condition(result, "Ready").status == T


# --- history -----------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", range(6), ids=lambda n: f"a-limit-of-{n}")
def test_history_keeps_exactly_revisionHistoryLimit_old_revisions(limit: int) -> None:
    old = [
        retired(V4, retired_=400),
        failed(V3, at_=500),
        superseded(V2, at_=600),
        retired(V1, retired_=700),
    ]
    s = serving(
        V5,
        *old,
        other_views=tuple(view(r.hash, replicas=0, pods=()) for r in old),
        spec=make_spec("v5", history=limit),
    )
    result = planner.plan(s)
    kept = {r.hash for r in result.status.revisions if r.hash != V5}
    assert kept == set([V4, V3, V2, V1][:limit])  # newest retired/failed first
    assert {a[1] for a in summary(result) if a[0] == "delete"} == {V4, V3, V2, V1} - set(kept)
    assert outcome(result, V5) == Outcome.STABLE


def test_pruning_never_deletes_the_revision_being_retried() -> None:
    s = upgrading(
        failed(V2),
        retired(V3, retired_=3000),
        v2=view(V2, replicas=0, pods=()),
        spec=make_spec(history=0),
    )
    s = dataclasses.replace(s, revisions={**s.revisions, V3: view(V3, replicas=0, pods=())})
    result = planner.plan(s)
    assert ("delete", V2) not in summary(result)
    assert ("delete", V3) in summary(result)
    assert outcome(result, V2) == Outcome.FAILED


def test_a_revision_in_its_scale_down_delay_is_not_pruned() -> None:
    s = serving(V2, retired(V1, retired_=10), other_views=(view(V1),), spec=make_spec(history=0))
    result = planner.plan(s)
    assert summary(result) == []
    assert outcome(result, V1) == Outcome.RETIRED


# --- manual rollback ---------------------------------------------------------------------------


def test_a_manual_rollback_starts_an_attempt_tied_to_its_target() -> None:
    _, result = plan_of("a-manual-rollback-scales-the-retained-revision-up-to-verify-it")
    target = revision_record(result, V1)
    assert target.attempt == f"rollback:{V1}"
    assert target.attempt_started_at == at(0)
    assert result.status.desired_revision == V1
    assert result.status.stable_revision == V2
    assert condition(result, "RolledBack").status == F


def test_a_promoted_manual_rollback_says_so_and_is_not_a_failure() -> None:
    _, result = plan_of("a-verified-manual-rollback-is-promoted")
    assert result.status.stable_revision == V1
    assert (condition(result, "RolledBack").status, condition(result, "RolledBack").reason) == (
        T,
        "ManualRollback",
    )
    assert condition(result, "Degraded").status == F
    assert result.status.phase == "Stable"
    assert event_reasons(result) == ["Promoted"]


def test_a_manual_rollback_holds_while_the_annotations_and_spec_stay() -> None:
    s = serving(
        V1,
        retired(V2, retired_=600),
        other_views=(view(V2, replicas=0, pods=()),),
        annotations=MANUAL,
    )
    result = planner.plan(s)
    assert result.actions == ()
    assert condition(result, "RolledBack").reason == "ManualRollback"
    assert result.status.phase == "Stable"


def test_removing_the_rollback_annotations_rolls_the_spec_revision_out_again() -> None:
    s = serving(V1, retired(V2, retired_=600), other_views=(view(V2, replicas=0, pods=()),))
    result = planner.plan(s)
    assert summary(result) == [("scale", V2, 2)]
    assert outcome(result, V2) == Outcome.PROGRESSING


def test_a_rollback_target_that_is_not_retained_is_reported() -> None:
    _, result = plan_of("a-rollback-to-a-revision-that-is-not-retained-keeps-the-spec-revision")
    progressing_ = condition(result, "Progressing")
    assert (progressing_.status, progressing_.reason) == (F, "RollbackTargetNotFound")
    assert "0123456789" in progressing_.message
    assert result.status.desired_revision == V2


def test_a_rollback_target_that_is_not_retained_lets_a_new_spec_roll_out() -> None:
    s = upgrading(annotations={ROLLBACK_TO: "0123456789", ROLLBACK_FROM: V2})
    result = planner.plan(s)
    assert summary(result) == [("create", V2)]
    assert condition(result, "Progressing").reason == "RollbackTargetNotFound"


# --- adoption and deleted children -------------------------------------------------------------


def test_an_adopted_revision_counts_its_deadline_from_its_deployment_creation() -> None:
    _, result = plan_of("an-unrecorded-revision-deployment-is-adopted-instead-of-created-twice")
    adopted = revision_record(result, V2)
    assert adopted.created_at == adopted.attempt_started_at == at(50)
    assert adopted.name == name_of(V2)
    assert result.events == ()


def test_a_deleted_stable_deployment_is_created_again_from_the_spec() -> None:
    s, result = plan_of("a-deleted-stable-deployment-is-created-again")
    assert isinstance(s.desired, planner.Desired)
    assert result.actions == (planner.CreateRevision(s.desired.deployment, s.desired.snapshots),)
    assert event_reasons(result) == ["RevisionRecreated"]
    assert result.status.stable_revision == V2
    assert condition(result, "Ready").status == F


def test_a_stable_deployment_deleted_during_an_upgrade_is_reported() -> None:
    _, result = plan_of("a-stable-deployment-deleted-during-an-upgrade-is-recorded-as-retired")
    assert result.status.stable_revision is None
    assert revision_record(result, V1).reason == "DeploymentDeleted"
    assert event_reasons(result) == ["StableRevisionDeleted"]


# --- conditions over time ----------------------------------------------------------------------


def test_conditions_keep_their_transition_time_unless_their_status_flips() -> None:
    earlier = ago(600)

    def was(type_: str, status: ConditionStatus) -> models.Condition:
        return models.Condition(
            type=type_,
            status=status,
            reason="Before",
            observed_generation=1,
            last_transition_time=conditions.timestamp(earlier),
        )

    s = upgrading(progressing(V2, started=30), v2=view(V2, pods=ready_pods(2)))
    s = dataclasses.replace(
        s,
        status=s.status.model_copy(
            update={
                "conditions": [
                    was("Ready", T),
                    was("Progressing", T),
                    was("Degraded", F),
                    was("RolledBack", T),
                ]
            }
        ),
    )
    result = planner.plan(s)
    assert condition(result, "Ready").last_transition_time == at(600)
    assert condition(result, "Degraded").last_transition_time == at(600)
    assert condition(result, "Progressing").last_transition_time == at(0)
    assert condition(result, "RolledBack").last_transition_time == at(0)


# --- assess: verification of one attempt -------------------------------------------------------

ROLLOUT = models.RolloutSpec(
    progress_deadline_seconds=120, min_ready_seconds=10, scale_down_delay_seconds=30
)


@dataclasses.dataclass(frozen=True)
class Check:
    pods: tuple[planner.PodView, ...]
    verdict: type
    reason: str | None = None  # of Unhealthy
    wake_in: float | None = None  # of Pending, seconds from NOW
    replicas: int = 2
    started: float | None = 30
    created: float = 600
    ready_since: float | None = None
    generation: tuple[int, int] = (1, 1)


CHECKS = [
    pytest.param(Check((), planner.Pending, wake_in=90), id="no-pods-yet-waits-for-the-deadline"),
    pytest.param(Check(ready_pods(2), planner.Healthy), id="all-ready-long-enough-is-healthy"),
    pytest.param(
        Check(ready_pods(2, since=10), planner.Healthy),
        id="ready-exactly-minReadySeconds-is-healthy",
    ),
    pytest.param(
        Check((*ready_pods(1), pod("b", since=3)), planner.Pending, wake_in=7),
        id="the-last-pod-to-become-ready-sets-the-clock",
    ),
    pytest.param(
        Check((*ready_pods(1), pod("b", since=None)), planner.Pending, wake_in=10),
        id="a-ready-pod-with-no-transition-time-is-not-known-to-have-been-ready-for-any-time",
    ),
    pytest.param(
        Check((*ready_pods(1), pod("b", ready=None)), planner.Pending, wake_in=90),
        id="a-pod-with-no-ready-condition-is-not-ready",
    ),
    pytest.param(
        Check(
            (*ready_pods(1), pod("b", ready=None)),
            planner.Unhealthy,
            reason="ProgressDeadlineExceeded",
            started=120,
        ),
        id="a-pod-with-no-ready-condition-at-the-deadline-fails",
    ),
    pytest.param(
        Check(ready_pods(2), planner.Pending, wake_in=90, generation=(2, 1)),
        id="a-status-lagging-its-generation-is-not-healthy",
    ),
    pytest.param(
        Check(ready_pods(1), planner.Pending, wake_in=90), id="fewer-pods-than-replicas-waits"
    ),
    pytest.param(
        Check(ready_pods(3), planner.Pending, wake_in=90), id="more-pods-than-replicas-waits"
    ),
    pytest.param(
        Check((*ready_pods(1), pod("b", restarts=1)), planner.Unhealthy, reason="CrashLoop"),
        id="a-restarted-container-is-a-crash-loop-even-if-ready-again",
    ),
    *[
        pytest.param(
            Check((pod("b", ready=False, waiting=w),), planner.Unhealthy, reason="CrashLoop"),
            id=f"a-container-waiting-in-{w}-is-a-crash-loop",
        )
        for w in ("CrashLoopBackOff", "Error", "RunContainerError", "CreateContainerError")
    ],
    pytest.param(
        Check((pod("b", ready=False, waiting="ImagePullBackOff"),), planner.Pending, wake_in=90),
        id="an-image-pull-back-off-waits-for-the-deadline",
    ),
    pytest.param(
        Check(
            (*ready_pods(2), pod("old", ready=False, restarts=9, terminating=True)),
            planner.Healthy,
        ),
        id="terminating-pods-are-ignored",
    ),
    pytest.param(
        Check(
            (*ready_pods(1), pod("b", ready=False)),
            planner.Unhealthy,
            reason="BecameUnready",
            ready_since=5,
        ),
        id="a-pod-unready-after-all-were-ready-fails",
    ),
    pytest.param(
        Check(ready_pods(1), planner.Unhealthy, reason="BecameUnready", ready_since=5),
        id="a-pod-gone-after-all-were-ready-fails",
    ),
    pytest.param(
        Check((), planner.Unhealthy, reason="ProgressDeadlineExceeded", started=120),
        id="no-pods-at-the-deadline-fails",
    ),
    pytest.param(
        Check((), planner.Pending, wake_in=90, started=30, created=6000),
        id="the-deadline-counts-from-the-attempt-not-the-creation",
    ),
    pytest.param(
        Check((), planner.Unhealthy, reason="ProgressDeadlineExceeded", started=None, created=120),
        id="without-an-attempt-start-the-deadline-counts-from-the-creation",
    ),
    pytest.param(
        Check(ready_pods(2, since=3), planner.Pending, wake_in=7, started=125),
        id="pods-ready-by-the-deadline-may-finish-minReadySeconds-after-it",
    ),
    pytest.param(
        Check((), planner.Healthy, replicas=0, ready_since=10),
        id="zero-replicas-is-healthy-once-it-has-stayed-so-for-minReadySeconds",
    ),
]


@pytest.mark.parametrize("check", CHECKS)
def test_assess_decides_each_attempt(check: Check) -> None:
    generation, observed = check.generation
    observed_view = view(
        V2,
        replicas=check.replicas,
        pods=check.pods,
        generation=generation,
        observed_generation=observed,
    )
    attempt = record(
        V2,
        Outcome.PROGRESSING,
        created=check.created,
        ready_since=check.ready_since,
    ).model_copy(update={"attempt_started_at": at(check.started)})
    verdict = planner.assess(
        view=observed_view, replicas=check.replicas, rollout=ROLLOUT, record=attempt, now=NOW
    )
    assert type(verdict) is check.verdict
    if isinstance(verdict, planner.Unhealthy):
        assert verdict.reason == check.reason
        assert verdict.message
    if isinstance(verdict, planner.Pending):
        assert verdict.wake_at == NOW + datetime.timedelta(seconds=check.wake_in or 0)


def test_assess_names_the_crashing_pod_and_its_restarts() -> None:
    attempt = progressing(V2, started=5)
    verdict = planner.assess(
        view=view(V2, pods=(pod("web-7", ready=False, restarts=3, waiting="Error"),)),
        replicas=2,
        rollout=ROLLOUT,
        record=attempt,
        now=NOW,
    )
    assert isinstance(verdict, planner.Unhealthy)
    assert "web-7" in verdict.message
    assert "3 restarts" in verdict.message


# --- bugs found while writing these tests ------------------------------------------------------


def test_a_failed_adopted_revision_stays_failed_on_the_next_pass() -> None:
    s = the_step("an-adopted-revision-fails-at-the-deadline-counted-from-its-creation").situation
    first = planner.plan(s)
    second = planner.plan(applied(s, first))
    assert summary(second) == []
    assert outcome(second, V2) == Outcome.FAILED


def test_a_revision_failing_after_a_spec_edit_in_flight_stays_failed_on_the_next_pass() -> None:
    # e.g. the user raised progressDeadlineSeconds while v2 was verifying (same revision hash)
    s = upgrading(
        progressing(V2, started=130, attempt="1:"),
        v2=view(V2, pods=unready_pods(2)),
        generation=2,
    )
    first = planner.plan(s)
    assert outcome(first, V2) == Outcome.FAILED
    second = planner.plan(applied(s, first))
    assert summary(second) == []
    assert outcome(second, V2) == Outcome.FAILED


def test_raising_replicas_while_verifying_does_not_fail_the_revision_as_unready() -> None:
    s = upgrading(
        progressing(V2, started=30, ready_since=5),
        v2=view(V2, pods=ready_pods(2, since=5)),
        spec=make_spec(replicas=3),
        generation=2,
    )
    result = planner.plan(s)
    assert outcome(result, V2) == Outcome.PROGRESSING
    # the stable revision, which serves meanwhile, is scaled as well
    assert summary(result) == [("scale", V2, 3), ("scale", V1, 3)]


def test_an_unrecorded_revision_that_is_not_the_target_is_eventually_scaled_to_zero() -> None:
    # The operator created v2, crashed before writing status, and the spec moved on to v3.
    s = situation(
        spec=make_spec("v3"),
        records=[stable(V1), progressing(V3, started=5)],
        stable_revision=V1,
        views=[view(V1), view(V2, created=20), view(V3, pods=(), created=5)],
        service=routed_to(V1),
    )
    later = applied(s, planner.plan(s))
    later = dataclasses.replace(later, now=NOW + datetime.timedelta(seconds=31))
    final = applied(later, planner.plan(later))
    assert final.revisions[V2].replicas == 0


def test_a_new_retry_annotation_retries_a_failed_manual_rollback() -> None:
    s = serving(
        V2,
        failed(V1, attempt=f"rollback:{V1}"),
        other_views=(view(V1, replicas=0, pods=()),),
        annotations={**MANUAL, RETRY: "again"},
    )
    result = planner.plan(s)
    assert summary(result) == [("scale", V1, 2)]
    assert outcome(result, V1) == Outcome.PROGRESSING


@pytest.mark.parametrize(
    "step_id",
    [
        "a-never-ready-revision-fails-at-its-progress-deadline",
        "a-failed-revision-found-running-again-is-scaled-back-to-zero",
    ],
)
def test_a_plan_acts_on_each_deployment_at_most_once(step_id: str) -> None:
    _, result = plan_of(step_id)
    targets = [a.name for a in result.actions if isinstance(a, planner.Scale)]
    assert len(targets) == len(set(targets))


def test_a_revision_in_verification_is_still_verified_when_its_config_goes_missing() -> None:
    s = situation(
        records=[stable(V1), progressing(V2, started=30)],
        stable_revision=V1,
        views=[view(V1), view(V2, pods=ready_pods(2, since=60))],
        service=routed_to(V1),
        desired_=planner.ConfigMissing(("ConfigMap/checkout-config",)),
    )
    plan = planner.plan(s)
    assert plan.status.stable_revision == V2
    assert outcome(plan, V2) == Outcome.STABLE
    assert ("route", V2, "patch") in summary(plan)
    assert condition(plan, "Progressing").reason == "ConfigNotFound"
    assert not any(isinstance(a, planner.CreateRevision) for a in plan.actions)


def test_a_revision_in_verification_still_fails_at_its_deadline_when_config_is_missing() -> None:
    s = situation(
        records=[stable(V1), progressing(V2, started=500)],
        stable_revision=V1,
        views=[view(V1), view(V2, pods=unready_pods(2))],
        service=routed_to(V1),
        desired_=planner.ConfigMissing(("ConfigMap/checkout-config",)),
    )
    plan = planner.plan(s)
    assert outcome(plan, V2) == Outcome.FAILED
    assert plan.status.stable_revision == V1
    assert not any(isinstance(a, planner.RouteService) for a in plan.actions)


# --- drift of revision Deployments ----------------------------------------------------------


def _drifted(revision: str, **changes: Any) -> planner.RevisionView:
    return dataclasses.replace(view(revision), fingerprint="changed-in-place", **changes)


def test_a_new_revision_deployment_gets_its_fingerprint_recorded() -> None:
    fresh = dataclasses.replace(view(V1), recorded_fingerprint=None)
    s = situation(
        records=[stable(V1)],
        stable_revision=V1,
        views=[fresh],
        service=routed_to(V1),
        spec=make_spec("v1"),
    )
    plan = planner.plan(s)
    assert planner.Annotate(name_of(V1), {models.ANNOTATION_FINGERPRINT: f"fp-{V1}"}) in (
        plan.actions
    )
    assert planner.plan(applied(s, plan)).actions == ()


def test_a_new_revision_gets_its_snapshots_ensured_before_its_fingerprint() -> None:
    """The operator may stop between a revision's Deployment and its snapshots (created after
    it, to be owned by it): the first look at the revision creates what is missing, before the
    fingerprint that marks it as seen is recorded."""
    spec = make_spec("v1")
    snapshot = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config-x"}}
    wanted = dataclasses.replace(desired(spec), snapshots=(snapshot,))
    fresh = dataclasses.replace(view(V1), recorded_fingerprint=None)
    s = situation(
        records=[stable(V1)],
        stable_revision=V1,
        views=[fresh],
        service=routed_to(V1),
        spec=spec,
        desired_=wanted,
    )
    plan = planner.plan(s)
    ensure = planner.CreateRevision(wanted.deployment, (snapshot,), resume=True)
    annotate = planner.Annotate(name_of(V1), {models.ANNOTATION_FINGERPRINT: f"fp-{V1}"})
    assert ensure in plan.actions
    assert plan.actions.index(ensure) < plan.actions.index(annotate)
    assert str(ensure) == f"ensure the snapshots web-config-x of revision {name_of(V1)}"
    assert planner.plan(applied(s, plan)).actions == ()
    # Once seen (its fingerprint recorded), and for a revision without snapshots: nothing.
    assert not any(
        isinstance(a, planner.CreateRevision)
        for a in planner.plan(dataclasses.replace(s, desired=desired(spec))).actions
    )


def test_a_drifted_stable_revision_of_the_current_spec_is_deleted_to_be_recreated() -> None:
    s = situation(
        records=[stable(V1)],
        stable_revision=V1,
        views=[_drifted(V1)],
        service=routed_to(V1),
        spec=make_spec("v1"),
    )
    plan = planner.plan(s)
    assert summary(plan) == [("delete", V1)]
    assert event_reasons(plan) == ["DriftRepaired"]
    assert plan.status == s.status
    # Once the drifted Deployment is gone, the next pass re-creates it from the spec.
    again = planner.plan(dataclasses.replace(s, revisions={}))
    assert summary(again) == [("create", V1)]
    assert again.status.stable_revision == V1


def test_a_drifted_stable_revision_of_an_older_spec_is_reported_not_deleted() -> None:
    s = situation(
        records=[stable(V1), progressing(V2, started=10)],
        stable_revision=V1,
        views=[_drifted(V1), view(V2, pods=unready_pods(2))],
        service=routed_to(V1),
    )
    plan = planner.plan(s)
    assert ("delete", V1) not in summary(plan)
    assert "DriftDetected" in event_reasons(plan)
    again = planner.plan(applied(s, plan))
    assert "DriftDetected" not in event_reasons(again)


def test_a_drifted_retired_revision_is_deleted() -> None:
    s = situation(
        records=[stable(V2), retired(V1, retired_=600)],
        stable_revision=V2,
        views=[view(V2), _drifted(V1, replicas=0, pods=())],
        service=routed_to(V2),
    )
    plan = planner.plan(s)
    assert summary(plan) == [("delete", V1)]
    assert event_reasons(plan) == ["DriftRepaired"]


def test_a_change_under_break_glass_is_accepted_once() -> None:
    s = situation(
        records=[stable(V1)],
        stable_revision=V1,
        views=[_drifted(V1, break_glass="INC-42 hotfix")],
        service=routed_to(V1),
        spec=make_spec("v1"),
    )
    plan = planner.plan(s)
    assert (
        planner.Annotate(
            name_of(V1),
            {
                models.ANNOTATION_FINGERPRINT: "changed-in-place",
                models.ANNOTATION_BREAK_GLASS_ACCEPTED: "INC-42 hotfix",
            },
        )
        in plan.actions
    )
    assert event_reasons(plan) == ["BreakGlassAccepted"]
    assert ("delete", V1) not in summary(plan)


# --- policies at create and promote -----------------------------------------------------------


def _verdict(stage: str, outcome: str = "Fail", enforcement: str = "Enforce") -> policy.Verdict:
    return policy.Verdict(
        stage=stage,
        results=(
            policy.RuleResult("permafrost-test", "a-rule", enforcement, outcome, "not allowed"),
        ),
    )


def test_a_create_stage_violation_holds_the_rollout_before_anything_is_created() -> None:
    s = situation(
        records=[stable(V1)],
        stable_revision=V1,
        views=[view(V1)],
        service=routed_to(V1),
        desired_revision=V1,
    )
    s = dataclasses.replace(s, create_verdict=_verdict("create"))
    plan = planner.plan(s)
    assert not any(isinstance(a, planner.CreateRevision) for a in plan.actions)
    assert plan.status.phase == "Held"
    compliant = condition(plan, "PolicyCompliant")
    assert (compliant.status, compliant.reason) == ("False", "PolicyViolation")
    assert "permafrost-test/a-rule: not allowed" in compliant.message
    assert plan.status.stable_revision == V1
    assert "PolicyViolation" in event_reasons(plan)
    # The same verdict on the next pass: no new Event (no Event storms).
    assert "PolicyViolation" not in event_reasons(planner.plan(applied(s, plan)))


def test_a_warn_violation_at_create_only_reports() -> None:
    s = situation()
    s = dataclasses.replace(s, create_verdict=_verdict("create", enforcement="Warn"))
    plan = planner.plan(s)
    assert any(isinstance(a, planner.CreateRevision) for a in plan.actions)
    compliant = condition(plan, "PolicyCompliant")
    assert (compliant.status, compliant.reason) == ("True", "PolicyWarnings")
    assert "PolicyWarning" in event_reasons(plan)


def test_a_promote_stage_violation_holds_a_verified_revision_without_switching_traffic() -> None:
    s = situation(
        records=[stable(V1), progressing(V2, started=60, ready_since=50)],
        stable_revision=V1,
        views=[view(V1), view(V2)],
        service=routed_to(V1),
    )
    s = dataclasses.replace(s, promote_verdict=_verdict("promote"))
    plan = planner.plan(s)
    assert not any(isinstance(a, planner.RouteService) for a in plan.actions)
    assert plan.status.stable_revision == V1
    assert outcome(plan, V2) == Outcome.PROGRESSING
    assert plan.status.phase == "Held"
    assert condition(plan, "PolicyCompliant").reason == "PromotionHeld"
    assert plan.requeue_after == planner.POLICY_RECHECK_SECONDS
    # Once the policy passes (e.g. the freeze window ended), the revision is promoted.
    lifted = dataclasses.replace(applied(s, plan), promote_verdict=_verdict("promote", "Pass"))
    after = planner.plan(lifted)
    assert after.status.stable_revision == V2
    assert condition(after, "PolicyCompliant").status == "True"


@pytest.mark.parametrize(
    ("enforcement", "status", "reason"),
    [("Warn", "True", "PolicyWarnings"), ("Enforce", "False", "EnforcedPolicyViolated")],
)
def test_a_running_release_reports_a_create_stage_violation_under_either_enforcement(
    enforcement: str, status: str, reason: str
) -> None:
    # The spec's revision is stable, then a failing create-stage policy is switched to
    # Enforce: the release must not say every policy passes, and what runs keeps running.
    s = situation(records=[stable(V2)], stable_revision=V2, views=[view(V2)], service=routed_to(V2))
    s = dataclasses.replace(s, create_verdict=_verdict("create", enforcement=enforcement))
    plan = planner.plan(s)
    compliant = condition(plan, "PolicyCompliant")
    assert (compliant.status, compliant.reason) == (status, reason)
    assert f"{enforcement} permafrost-test/a-rule: not allowed" in compliant.message
    assert plan.status.phase == "Stable"
    assert plan.actions == ()
    assert plan.status.stable_revision == V2
    assert event_reasons(plan) == [reason if status == "False" else "PolicyWarning"]
    if status == "False":
        assert f"revision {V2} keeps serving" in compliant.message
    # The same verdict on the next pass: no new Event.
    assert event_reasons(planner.plan(applied(s, plan))) == []


def test_an_enforce_violation_during_verification_is_reported_and_verification_goes_on() -> None:
    s = situation(
        records=[stable(V1), progressing(V2, started=30)],
        stable_revision=V1,
        views=[view(V1), view(V2, pods=unready_pods(2))],
        service=routed_to(V1),
    )
    s = dataclasses.replace(
        s, create_verdict=_verdict("create"), promote_verdict=_verdict("promote")
    )
    plan = planner.plan(s)
    compliant = condition(plan, "PolicyCompliant")
    assert (compliant.status, compliant.reason) == ("False", "EnforcedPolicyViolated")
    assert f"revision {V2} will not be promoted while this holds" in compliant.message
    assert plan.status.phase == "Progressing"
    assert outcome(plan, V2) == Outcome.PROGRESSING


def test_a_promote_stage_violation_does_not_judge_a_release_with_nothing_to_promote() -> None:
    # A change freeze (promote stage) is in force: a stable release has no promotion to hold.
    s = situation(records=[stable(V2)], stable_revision=V2, views=[view(V2)], service=routed_to(V2))
    s = dataclasses.replace(
        s,
        create_verdict=_verdict("create", "Pass"),
        promote_verdict=_verdict("promote"),
    )
    plan = planner.plan(s)
    compliant = condition(plan, "PolicyCompliant")
    assert (compliant.status, compliant.reason) == ("True", "AllPoliciesPass")
    assert plan.status.phase == "Stable"


def test_without_a_policy_engine_compliance_is_unknown() -> None:
    plan = planner.plan(situation())
    assert condition(plan, "PolicyCompliant").status == "Unknown"


# --- revisionHistoryLimit ---------------------------------------------------------------------


@pytest.mark.parametrize(("limit", "pruned"), [(3, {V1}), (2, {V1, V3}), (1, {V1, V3, V4})])
def test_superseded_and_failed_revisions_count_toward_the_history_limit(
    limit: int, pruned: set[str]
) -> None:
    """The limit bounds every revision that does not serve: retired, failed and superseded
    alike, the oldest pruned first (its Deployment deleted; its snapshots go with it). The
    serving revision is not counted, as a Deployment does not count its current ReplicaSet."""
    s = situation(
        spec=make_spec(history=limit),
        records=[
            stable(V2),
            retired(V1, retired_=3000),
            failed(V3, at_=2000, started=2100),
            superseded(V4, at_=1000, created=1100),
            superseded(V5, at_=100, created=110),
        ],
        stable_revision=V2,
        views=[view(V2), *(view(r, replicas=0, pods=()) for r in (V1, V3, V4, V5))],
        service=routed_to(V2),
    )
    result = planner.plan(s)
    deleted = {a.name for a in result.actions if isinstance(a, planner.DeleteRevision)}
    assert deleted == {name_of(r) for r in pruned}
    kept = {r.hash for r in result.status.revisions}
    assert kept == {V1, V2, V3, V4, V5} - pruned
    assert len(kept - {V2}) == limit
