"""Services and the release's pods: the one Permafrost routes, one it created, and the others.

Revision pods carry the template's labels, so any Service other than ``spec.service`` whose
selector matches them reaches revisions that are not verified; and a ``spec.service.name`` that
names no Service makes Permafrost create one, which must never go unnoticed (a misspelt name).
"""

from __future__ import annotations

import dataclasses

from planner_fixtures import (
    RELEASE,
    SERVICE,
    V1,
    V2,
    condition,
    event_reasons,
    make_spec,
    progressing,
    routed_to,
    situation,
    stable,
    unready_pods,
    view,
)

from permafrost import models
from permafrost.releases import manifests, observations, planner

APP = {"app": "checkout"}


def other(
    name: str, selector: dict[str, str], *, acknowledged: bool = False
) -> planner.ServiceView:
    return planner.ServiceView(name=name, selector=selector, acknowledged=acknowledged)


def pod_labels(revision: str) -> dict[str, str]:
    """The labels of a revision's pods: the template's and Permafrost's."""
    return {**APP, **manifests.selector(RELEASE.name, revision)}


def verifying(*services: planner.ServiceView) -> planner.Situation:
    """V1 stable and routed, V2 (the spec's) being verified, and ``services`` beside them."""
    s = situation(
        records=[stable(V1), progressing(V2, started=30)],
        stable_revision=V1,
        views=[
            dataclasses.replace(view(V1), labels=pod_labels(V1)),
            dataclasses.replace(view(V2, pods=unready_pods(2)), labels=pod_labels(V2)),
        ],
        service=routed_to(V1),
    )
    return dataclasses.replace(s, other_services=services)


def test_another_service_selecting_the_pods_is_reported_with_a_warning_naming_it() -> None:
    s = verifying(other("checkout-legacy", APP))
    plan = planner.plan(s)
    guarded = condition(plan, "TrafficGuarded")
    assert (guarded.status, guarded.reason) == ("False", "UnguardedService")
    assert "Service checkout-legacy (app=checkout)" in guarded.message
    assert "UnguardedService" in event_reasons(plan)
    (event,) = [e for e in plan.events if e.reason == "UnguardedService"]
    assert event.type == "Warning"
    assert "checkout-legacy" in event.message
    # What runs and where traffic goes are unchanged: detecting is not acting.
    assert not any(isinstance(a, planner.RouteService) for a in plan.actions)
    # The same finding on the next pass: no new Event.
    again = dataclasses.replace(
        s, status=plan.status.model_copy(update={"revisions": s.status.revisions})
    )
    assert "UnguardedService" not in event_reasons(planner.plan(again))


def test_a_headless_or_narrower_service_that_matches_the_pods_counts_too() -> None:
    both = {**APP, models.LABEL_RELEASE: "checkout"}
    plan = planner.plan(verifying(other("checkout-headless", both)))
    assert condition(plan, "TrafficGuarded").status == "False"


def test_services_that_select_other_pods_or_nothing_or_are_acknowledged_are_not_reported() -> None:
    plan = planner.plan(
        verifying(
            other("payments", {"app": "payments"}),
            other("manual-endpoints", {}),
            other("checkout-metrics", APP, acknowledged=True),
        )
    )
    guarded = condition(plan, "TrafficGuarded")
    assert (guarded.status, guarded.reason) == ("True", "ServiceRouted")
    assert guarded.message == f"Service {SERVICE} selects revision {V1}"
    assert "UnguardedService" not in event_reasons(plan)


def test_a_service_pinned_to_the_stable_revision_is_not_reported_one_pinned_to_another_is() -> None:
    # E.g. the Service Permafrost created under an earlier spec.service.name.
    pinned = {**manifests.selector(RELEASE.name, V1)}
    s = verifying(other("checkout-old-name", pinned))
    assert condition(planner.plan(s), "TrafficGuarded").status == "True"
    unverified = dataclasses.replace(
        s, other_services=(other("checkout-next", manifests.selector(RELEASE.name, V2)),)
    )
    assert condition(planner.plan(unverified), "TrafficGuarded").status == "False"


def test_before_its_first_revision_the_spec_template_labels_are_what_is_matched() -> None:
    # Nothing runs yet: the first revision's pods will carry app=checkout, so the Service that
    # selects it is reported before those pods exist.
    s = dataclasses.replace(
        situation(service=routed_to(models.REVISION_NONE)),
        other_services=(other("checkout-old", APP),),
    )
    plan = planner.plan(s)
    assert any(isinstance(a, planner.CreateRevision) for a in plan.actions)
    assert condition(plan, "TrafficGuarded").status == "False"


def test_a_missing_service_is_created_with_an_event_and_a_lasting_condition() -> None:
    plan = planner.plan(situation(service=None))
    (route,) = [a for a in plan.actions if isinstance(a, planner.RouteService)]
    assert route.create is not None
    assert "ServiceCreated" in event_reasons(plan)
    guarded = condition(plan, "TrafficGuarded")
    assert (guarded.status, guarded.reason) == ("True", "ServiceCreated")
    assert "correct it" in guarded.message
    # Later passes: the Service exists and is owned by the release; the condition still says so.
    owned = planner.ServiceView(name=SERVICE, selector=route.selector, owned=True)
    later = planner.plan(dataclasses.replace(situation(service=owned), status=plan.status))
    assert condition(later, "TrafficGuarded").reason == "ServiceCreated"
    assert "ServiceCreated" not in event_reasons(later)


def test_a_missing_service_is_reported_before_anything_creates_it() -> None:
    # The ConfigMap is missing: no revision, so no Service is created yet; it is said so.
    missing = planner.ConfigMissing(("ConfigMap/checkout-config",))
    plan = planner.plan(situation(service=None, desired_=missing))
    assert not any(isinstance(a, planner.RouteService) for a in plan.actions)
    guarded = condition(plan, "TrafficGuarded")
    assert (guarded.status, guarded.reason) == ("True", "ServiceNotFound")
    assert f"Service {SERVICE} does not exist" in guarded.message


def test_a_misspelt_service_name_shows_the_real_service_selecting_unverified_pods() -> None:
    # spec.service.name says "chekout"; the user's "checkout" selects app=checkout.
    spec = make_spec()
    spec = spec.model_copy(update={"service": models.ServiceSpec(name="chekout")})
    s = dataclasses.replace(
        situation(spec=spec, service=None), other_services=(other("checkout", APP),)
    )
    plan = planner.plan(s)
    assert "ServiceCreated" in event_reasons(plan)
    guarded = condition(plan, "TrafficGuarded")
    assert (guarded.status, guarded.reason) == ("False", "UnguardedService")
    assert "Service checkout (app=checkout)" in guarded.message
    assert "spec.service (chekout)" in guarded.message


def test_without_spec_service_other_services_are_still_checked() -> None:
    spec = make_spec(service=False)
    clean = planner.plan(situation(spec=spec))
    assert condition(clean, "TrafficGuarded").reason == "NoService"
    dirty = planner.plan(
        dataclasses.replace(situation(spec=spec), other_services=(other("checkout", APP),))
    )
    assert condition(dirty, "TrafficGuarded").status == "False"


def test_observed_services_say_who_owns_them_and_whether_they_are_acknowledged() -> None:
    mine = {
        "metadata": {"name": "checkout", "ownerReferences": [{"uid": "u-1"}]},
        "spec": {"selector": APP},
    }
    theirs = {
        "metadata": {
            "name": "checkout-metrics",
            "annotations": {models.ANNOTATION_SELECTS_UNVERIFIED: "true"},
        },
        "spec": {"selector": APP},
    }
    view_ = observations.service_view(mine, release_uid="u-1")
    assert view_ is not None
    assert (view_.owned, view_.acknowledged) == (True, False)
    foreign = observations.service_view(mine, release_uid="u-2")
    assert foreign is not None
    assert foreign.owned is False
    others = observations.other_services([mine, theirs], named="checkout")
    assert [(o.name, o.acknowledged, dict(o.selector)) for o in others] == [
        ("checkout-metrics", True, APP)
    ]


def test_a_service_selecting_the_template_labels_is_reported_even_when_only_the_stable_runs() -> (
    None
):
    # Nothing but the stable revision runs now; the next revision's pods will match too.
    s = situation(
        records=[stable(V2)],
        stable_revision=V2,
        views=[dataclasses.replace(view(V2), labels=pod_labels(V2))],
        service=routed_to(V2),
    )
    plan = planner.plan(dataclasses.replace(s, other_services=(other("legacy", APP),)))
    assert condition(plan, "TrafficGuarded").status == "False"
