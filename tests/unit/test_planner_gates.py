"""Promotion gates in the planner: measured once the pods are verified, before promotion.

A Failed gate fails the revision (the automatic rollback follows); an Inconclusive or
Misconfigured one holds it (phase Held), never promotes it; the progress deadline still applies;
the preview Service selects the candidate while it is verified, and no pod otherwise.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence

from planner_fixtures import (
    NOW,
    RELEASE,
    SERVICE,
    V1,
    V2,
    ago,
    condition,
    event_reasons,
    make_spec,
    outcome,
    progressing,
    routed_to,
    situation,
    stable,
    summary,
    view,
)

from permafrost import models
from permafrost.gates import verdicts
from permafrost.models import GateVerdict, MeasurementPhase, Outcome
from permafrost.policies import policy
from permafrost.releases import conditions, manifests, planner

PREVIEW = manifests.preview_name(SERVICE)
S, F, E = MeasurementPhase.SUCCESSFUL, MeasurementPhase.FAILED, MeasurementPhase.ERROR


def http_gate(**fields: object) -> models.Gate:
    return models.Gate.model_validate(
        {
            "name": "smoke",
            "http": {"port": "http", "path": "/"},
            "count": 3,
            "intervalSeconds": 5,
            **fields,
        }
    )


def gated_spec(
    *gates: models.Gate, preview: bool = True, deadline: int = 120
) -> models.GuardedReleaseSpec:
    spec = make_spec(deadline=deadline)
    assert spec.service is not None
    return spec.model_copy(
        update={
            "service": spec.service.model_copy(update={"preview": preview}),
            "rollout": spec.rollout.model_copy(update={"gates": list(gates)}),
        }
    )


def preview_to(revision: str, *, ready: int = 2) -> planner.ServiceView:
    return planner.ServiceView(
        name=PREVIEW,
        selector=manifests.selector(RELEASE.name, revision),
        owned=True,
        endpoints={revision: ready} if revision != models.REVISION_NONE else {},
        cluster_ip="10.96.0.20",
        ports=(models.ServicePort(name="http", port=80, target_port=8080),),
    )


def gate_record(
    g: models.Gate,
    phases: Sequence[MeasurementPhase],
    *,
    started: float = 20,
    judged: bool = True,
) -> models.GateRecord:
    """A gate's record with these measurements; ``judged``: its verdict already written (else
    still Running, as the shell leaves it after recording a measurement)."""
    rec = verdicts.start(g, now=ago(started))
    for i, phase in enumerate(phases):
        when = ago(started) + datetime.timedelta(seconds=i * g.interval_seconds)
        rec = verdicts.record(rec, models.Measurement(at=verdicts.stamp(when), phase=phase))
    if judged:
        rec, _ = verdicts.evaluate(g, rec, now=ago(0.5))
    return rec


def pod_labels(revision: str) -> dict[str, str]:
    """The labels of a revision's pods: the template's and Permafrost's."""
    return {"app": "checkout", **manifests.selector(RELEASE.name, revision)}


def verifying(
    spec: models.GuardedReleaseSpec,
    *,
    gates: Sequence[models.GateRecord] = (),
    preview: planner.ServiceView | None = None,
    started: float = 30,
) -> planner.Situation:
    """V1 stable; V2 (the spec's) with every pod Ready for a minute (verified, gates aside)."""
    record = progressing(V2, started=started, ready_since=25).model_copy(
        update={"gates": list(gates)}
    )
    s = situation(
        spec=spec,
        records=[stable(V1), record],
        stable_revision=V1,
        views=[
            dataclasses.replace(view(V1), labels=pod_labels(V1)),
            dataclasses.replace(view(V2), labels=pod_labels(V2)),
        ],
        service=routed_to(V1),
    )
    return dataclasses.replace(s, preview=preview)


def gates_of(plan: planner.Plan, revision: str = V2) -> dict[str, models.GateRecord]:
    found = next(r for r in plan.status.revisions if r.hash == revision)
    return {g.name: g for g in found.gates}


def test_without_gates_a_verified_revision_is_promoted_as_before() -> None:
    plan = planner.plan(verifying(make_spec()))
    assert outcome(plan, V2) == Outcome.STABLE


def test_verified_pods_start_the_gates_and_the_preview_is_routed_to_the_candidate() -> None:
    g = http_gate()
    plan = planner.plan(verifying(gated_spec(g), preview=preview_to(models.REVISION_NONE)))
    assert outcome(plan, V2) == Outcome.PROGRESSING
    assert ("route", V2, "patch") in summary(plan)
    # the preview did not route to V2's pods when observed: nothing is measured yet
    assert not [a for a in plan.actions if isinstance(a, planner.Measure)]
    assert gates_of(plan)["smoke"].verdict == GateVerdict.RUNNING
    assert plan.status.phase == "Progressing"
    assert plan.requeue_after is not None
    assert plan.requeue_after <= 1.0


def test_the_preview_is_created_owned_by_the_release_with_the_services_ports() -> None:
    plan = planner.plan(verifying(gated_spec(http_gate())))
    routes = [a for a in plan.actions if isinstance(a, planner.RouteService) and a.name == PREVIEW]
    assert len(routes) == 1
    assert routes[0].create is not None
    body = routes[0].create
    assert body["metadata"]["ownerReferences"][0]["uid"] == RELEASE.uid
    assert body["spec"]["selector"][models.LABEL_REVISION] == V2
    assert body["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}
    ]


def test_a_due_measurement_is_planned_through_the_preview() -> None:
    plan = planner.plan(verifying(gated_spec(http_gate()), preview=preview_to(V2)))
    measures = [a for a in plan.actions if isinstance(a, planner.Measure)]
    assert [(m.revision, m.gate.name, m.url) for m in measures] == [
        (V2, "smoke", "http://10.96.0.20:80/")
    ]
    assert outcome(plan, V2) == Outcome.PROGRESSING


def test_no_measurement_before_it_is_due() -> None:
    g = http_gate(intervalSeconds=30)
    rec = gate_record(g, [S], started=10)
    plan = planner.plan(verifying(gated_spec(g), gates=[rec], preview=preview_to(V2)))
    assert not [a for a in plan.actions if isinstance(a, planner.Measure)]
    assert plan.requeue_after is not None
    assert 19 <= plan.requeue_after <= 20


def test_passed_gates_promote_with_an_event_and_the_preview_selects_nothing_after() -> None:
    g = http_gate()
    plan = planner.plan(
        verifying(gated_spec(g), gates=[gate_record(g, [S, S, S])], preview=preview_to(V2))
    )
    assert outcome(plan, V2) == Outcome.STABLE
    assert ("route", models.REVISION_NONE, "patch") in summary(plan)
    assert "Promoted" in event_reasons(plan)


def test_a_gate_passing_in_this_pass_says_so() -> None:
    g = http_gate()
    rec = gate_record(g, [S, S], started=20)
    rec = verdicts.record(rec, models.Measurement(at=verdicts.stamp(ago(1)), phase=S))
    plan = planner.plan(verifying(gated_spec(g), gates=[rec], preview=preview_to(V2)))
    assert conditions.GATE_PASSED in event_reasons(plan)
    assert outcome(plan, V2) == Outcome.STABLE


def test_a_failed_gate_fails_the_revision_and_rolls_back() -> None:
    g = http_gate()
    rec = gate_record(g, [S], started=20)
    rec = verdicts.record(
        rec, models.Measurement(at=verdicts.stamp(ago(1)), phase=F, message="GET /: 500")
    )
    plan = planner.plan(verifying(gated_spec(g), gates=[rec], preview=preview_to(V2)))
    assert outcome(plan, V2) == Outcome.FAILED
    assert ("scale", V2, 0) in summary(plan)
    assert {conditions.GATE_FAILED, "RolledBack"} <= set(event_reasons(plan))
    assert plan.status.phase == "RolledBack"
    assert condition(plan, conditions.ROLLED_BACK).reason == conditions.GATE_FAILED
    assert plan.status.stable_revision == V1
    assert ("route", models.REVISION_NONE, "patch") in summary(plan)  # preview let go


def test_an_inconclusive_gate_holds_never_promotes_and_keeps_the_candidate_up() -> None:
    g = http_gate()
    plan = planner.plan(
        verifying(
            gated_spec(g), gates=[gate_record(g, [S, E], judged=False)], preview=preview_to(V2)
        )
    )
    assert outcome(plan, V2) == Outcome.PROGRESSING
    assert plan.status.phase == "Held"
    progressing_ = condition(plan, conditions.PROGRESSING)
    assert progressing_.status == models.ConditionStatus.FALSE
    assert progressing_.reason == conditions.GATE_INCONCLUSIVE
    assert "unknown is never healthy" in progressing_.message
    assert conditions.GATE_INCONCLUSIVE in event_reasons(plan)
    assert not [a for a in summary(plan) if a[0] in ("scale", "measure") and a[1] == V2]
    assert plan.status.stable_revision == V1


def test_a_held_revision_fails_at_the_progress_deadline() -> None:
    g = http_gate()
    plan = planner.plan(
        verifying(
            gated_spec(g), gates=[gate_record(g, [S, E])], preview=preview_to(V2), started=121
        )
    )
    assert outcome(plan, V2) == Outcome.FAILED
    assert condition(plan, conditions.DEGRADED).reason == conditions.GATES_NOT_PASSED


def test_a_running_gate_fails_at_the_progress_deadline() -> None:
    g = http_gate()
    plan = planner.plan(
        verifying(gated_spec(g), gates=[gate_record(g, [S])], preview=preview_to(V2), started=125)
    )
    assert outcome(plan, V2) == Outcome.FAILED
    assert "had not passed by the progress deadline" in (
        condition(plan, conditions.DEGRADED).message
    )


def test_a_success_condition_that_does_not_compile_holds_as_misconfigured() -> None:
    g = models.Gate.model_validate(
        {
            "name": "errors",
            "prometheus": {
                "address": "http://prom:9090",
                "query": "up",
                "successCondition": "result <",
            },
        }
    )
    plan = planner.plan(verifying(gated_spec(g)))
    assert plan.status.phase == "Held"
    assert condition(plan, conditions.PROGRESSING).reason == conditions.GATE_MISCONFIGURED
    assert conditions.GATE_MISCONFIGURED in event_reasons(plan)
    assert not [a for a in plan.actions if isinstance(a, planner.Measure)]
    assert outcome(plan, V2) == Outcome.PROGRESSING


def test_a_prometheus_gate_is_measured_without_a_preview() -> None:
    g = models.Gate.model_validate(
        {
            "name": "errors",
            "prometheus": {
                "address": "http://prom:9090",
                "query": "up",
                "successCondition": "result < 0.05",
            },
        }
    )
    plan = planner.plan(verifying(gated_spec(g, preview=False)))
    assert [a.gate.name for a in plan.actions if isinstance(a, planner.Measure)] == ["errors"]


def test_a_prometheus_query_names_the_revision_it_measures() -> None:
    """``{{revision}}``, ``{{release}}`` and ``{{namespace}}`` are replaced before the query
    runs, so one spec's query selects each candidate's own series; the spec keeps the text."""
    query = 'sum(rate(x{revision="{{revision}}",app="{{release}}",ns="{{namespace}}"}[1m]))'
    g = models.Gate.model_validate(
        {
            "name": "errors",
            "prometheus": {
                "address": "http://prom:9090",
                "query": query,
                "successCondition": "result < 0.05",
            },
        }
    )
    s = verifying(gated_spec(g, preview=False))
    plan = planner.plan(s)
    (measure,) = [a for a in plan.actions if isinstance(a, planner.Measure)]
    assert measure.query == (
        f'sum(rate(x{{revision="{V2}",app="{s.release.name}",ns="{s.release.namespace}"}}[1m]))'
    )
    assert measure.gate.prometheus is not None
    assert measure.gate.prometheus.query == query


def test_an_http_gate_without_a_preview_is_misconfigured() -> None:
    plan = planner.plan(verifying(gated_spec(http_gate(), preview=False)))
    cond = condition(plan, conditions.PROGRESSING)
    assert cond.reason == conditions.GATE_MISCONFIGURED
    assert "preview" in cond.message


def test_an_http_gate_on_an_unknown_port_is_misconfigured() -> None:
    plan = planner.plan(verifying(gated_spec(http_gate(http={"port": "grpc"}))))
    cond = condition(plan, conditions.PROGRESSING)
    assert cond.reason == conditions.GATE_MISCONFIGURED
    assert "grpc" in cond.message


def test_a_foreign_service_of_the_preview_name_is_never_touched() -> None:
    foreign = dataclasses.replace(preview_to(models.REVISION_NONE), owned=False)
    plan = planner.plan(verifying(gated_spec(http_gate()), preview=foreign))
    assert not [
        a for a in plan.actions if isinstance(a, planner.RouteService) and a.name == PREVIEW
    ]
    assert condition(plan, conditions.PROGRESSING).reason == conditions.GATE_MISCONFIGURED


def test_the_preview_is_not_an_unguarded_service() -> None:
    s = verifying(gated_spec(http_gate()), preview=preview_to(V2))
    # as the shell observes the other Services: without the release's uid, so never "owned"
    observed = dataclasses.replace(preview_to(V2), owned=False)
    plan = planner.plan(dataclasses.replace(s, other_services=(observed,)))
    assert condition(plan, conditions.TRAFFIC_GUARDED).status == models.ConditionStatus.TRUE
    assert "UnguardedService" not in event_reasons(plan)
    # a Service of that name the release does not own is reported like any other
    foreign = dataclasses.replace(s, preview=observed, other_services=(observed,))
    plan = planner.plan(foreign)
    assert condition(plan, conditions.TRAFFIC_GUARDED).status == models.ConditionStatus.FALSE


def test_pods_that_become_unready_during_the_gates_fail_the_revision() -> None:
    g = http_gate()
    s = verifying(gated_spec(g), gates=[gate_record(g, [S])], preview=preview_to(V2))
    from planner_fixtures import unready_pods

    s = dataclasses.replace(s, revisions={**s.revisions, V2: view(V2, pods=unready_pods(2))})
    plan = planner.plan(s)
    assert outcome(plan, V2) == Outcome.FAILED
    assert condition(plan, conditions.DEGRADED).reason == conditions.BECAME_UNREADY


def test_a_measurement_is_recorded_in_its_gate() -> None:
    g = http_gate()
    plan = planner.plan(verifying(gated_spec(g), preview=preview_to(V2)))
    m = models.Measurement(at=verdicts.stamp(NOW), phase=F, value="500")
    status = verdicts.with_measurement(plan.status, revision=V2, gate="smoke", measurement=m)
    rec = gates_of(planner.Plan((), status, (), None))["smoke"]
    assert rec.failed == 1
    assert rec.measurements == [m]


# --- analysis after promotion --------------------------------------------------------------------


def analysed(
    *,
    analysis: Sequence[models.GateRecord] = (),
    promoted: float = 10,
    window: int = 60,
    endpoints: dict[str, int] | None = None,
    v1_replicas: int = 2,
) -> planner.Situation:
    """V2 promoted ``promoted`` seconds ago, replacing V1 (still up); the Service routes to V2."""
    g = http_gate()
    spec = gated_spec(g)
    spec = spec.model_copy(
        update={"rollout": spec.rollout.model_copy(update={"post_promotion_seconds": window})}
    )
    from planner_fixtures import at, record

    v2 = record(V2, Outcome.STABLE, created=120, started=120, promoted=promoted).model_copy(
        update={"previous": V1, "analysis": list(analysis), "reason": "Verified"}
    )
    v1 = record(V1, Outcome.RETIRED, created=3600, promoted=3000, retired=promoted)
    service = dataclasses.replace(
        routed_to(V2),
        cluster_ip="10.96.0.10",
        endpoints={V2: 2} if endpoints is None else endpoints,
        ports=(models.ServicePort(name="http", port=80, target_port=8080),),
    )
    s = situation(
        spec=spec,
        records=[v2, v1],
        stable_revision=V2,
        views=[view(V1, replicas=v1_replicas), view(V2)],
        service=service,
    )
    del at
    return dataclasses.replace(s, preview=preview_to(models.REVISION_NONE))


def test_after_promotion_the_gates_run_again_through_the_service_with_the_previous_kept_up() -> (
    None
):
    plan = planner.plan(analysed())
    measures = [a for a in plan.actions if isinstance(a, planner.Measure)]
    assert [(m.stage, m.url) for m in measures] == [("analysis", "http://10.96.0.10:80/")]
    assert ("scale", V1, 0) not in summary(plan)  # kept up during the window
    assert plan.status.phase == "Progressing"
    assert outcome(plan, V2) == Outcome.STABLE


def test_no_analysis_measurement_while_the_previous_revision_still_has_endpoints() -> None:
    plan = planner.plan(analysed(endpoints={V1: 2, V2: 2}))
    assert not [a for a in plan.actions if isinstance(a, planner.Measure)]


def test_a_gate_failing_after_promotion_switches_traffic_back_at_once() -> None:
    g = http_gate()
    plan = planner.plan(analysed(analysis=[gate_record(g, [S, F], judged=False)]))
    assert outcome(plan, V2) == Outcome.FAILED
    assert outcome(plan, V1) == Outcome.STABLE
    assert plan.status.stable_revision == V1
    assert ("route", V1, "patch") in summary(plan)
    assert ("scale", V2, 0) not in summary(plan)  # not before the Service let it go
    assert plan.status.phase == "RolledBack"
    assert condition(plan, conditions.ROLLED_BACK).reason == conditions.ANALYSIS_FAILED
    assert {conditions.GATE_FAILED, "RolledBack"} <= set(event_reasons(plan))


def test_the_failed_revision_is_scaled_down_once_drained_and_it_stays_failed() -> None:
    g = http_gate()
    s = analysed(analysis=[gate_record(g, [S, F], judged=False)])
    first = planner.plan(s)
    from planner_fixtures import applied

    after = applied(s, first)
    assert after.service is not None

    def with_endpoints(endpoints: dict[str, int]) -> planner.Situation:
        assert after.service is not None
        return dataclasses.replace(
            after, service=dataclasses.replace(after.service, endpoints=endpoints)
        )

    # the Service's EndpointSlices still hold V2's pods: kube-proxy still sends them requests
    waiting = planner.plan(with_endpoints({V1: 2, V2: 2}))
    assert ("scale", V2, 0) not in summary(waiting)
    assert waiting.status.stable_revision == V1
    assert outcome(waiting, V2) == Outcome.FAILED
    assert waiting.requeue_after is not None
    assert waiting.requeue_after <= planner.ENDPOINTS_RECHECK_SECONDS
    # once they hold only V1's, V2 is scaled down at once (no scaleDownDelaySeconds: it failed)
    plan = planner.plan(with_endpoints({V1: 2}))
    assert ("scale", V2, 0) in summary(plan)
    assert plan.status.stable_revision == V1
    assert outcome(plan, V2) == Outcome.FAILED


def test_gates_not_passed_by_the_end_of_the_window_switch_back() -> None:
    g = http_gate()
    plan = planner.plan(analysed(analysis=[gate_record(g, [S])], promoted=61))
    assert plan.status.stable_revision == V1
    assert condition(plan, conditions.DEGRADED).reason == conditions.ANALYSIS_NOT_PASSED


def test_a_passed_analysis_ends_the_window_and_the_previous_is_scaled_down_as_usual() -> None:
    g = http_gate()
    plan = planner.plan(analysed(analysis=[gate_record(g, [S, S, S], judged=False)]))
    assert conditions.ANALYSIS_PASSED in event_reasons(plan)
    v2 = next(r for r in plan.status.revisions if r.hash == V2)
    assert v2.analyzed_at is not None
    assert plan.status.stable_revision == V2
    assert plan.status.phase == "Stable"


def test_no_analysis_when_nothing_is_left_to_switch_back_to() -> None:
    plan = planner.plan(analysed(v1_replicas=0))
    assert not [a for a in plan.actions if isinstance(a, planner.Measure)]
    assert plan.status.phase == "Stable"


# --- job gates ---------------------------------------------------------------------------------

PINNED = "registry.example/smoke@sha256:" + "b" * 64


def job_gate(image: str = PINNED, **fields: object) -> models.Gate:
    return models.Gate.model_validate(
        {
            "name": "smoke-job",
            "job": {
                "template": {
                    "metadata": {"labels": {"app": "smoke"}},
                    "spec": {
                        "containers": [
                            {
                                "name": "smoke",
                                "image": image,
                                "args": ["get", "$(PERMAFROST_TARGET_URL)/"],
                                "env": [{"name": "PERMAFROST_STAGE", "value": "overridden"}],
                            }
                        ]
                    },
                },
                "activeDeadlineSeconds": 30,
            },
            "count": 2,
            "intervalSeconds": 5,
            **fields,
        }
    )


def jobs_of(plan: planner.Plan) -> list[planner.Measure]:
    return [a for a in plan.actions if isinstance(a, planner.Measure) and a.job is not None]


def with_uid(s: planner.Situation) -> planner.Situation:
    views = {r: dataclasses.replace(v, uid=f"uid-{r}") for r, v in s.revisions.items()}
    return dataclasses.replace(s, revisions=views)


def test_a_job_gate_runs_a_job_against_the_preview_owned_by_the_revision() -> None:
    plan = planner.plan(with_uid(verifying(gated_spec(job_gate()), preview=preview_to(V2))))
    (measure,) = jobs_of(plan)
    job = measure.job
    assert job is not None
    assert job["kind"] == "Job"
    assert job["apiVersion"] == "batch/v1"
    assert len(job["metadata"]["name"]) <= 63
    (owner,) = job["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "Deployment",
        manifests.revision_name(RELEASE.name, V2),
        f"uid-{V2}",
        False,
    )
    pod = job["spec"]["template"]
    # the Job's pods are never behind the release's Service (nor its preview)
    assert models.LABEL_RELEASE not in pod["metadata"]["labels"]
    assert models.LABEL_REVISION not in pod["metadata"]["labels"]
    assert pod["metadata"]["labels"][models.LABEL_GATE_REVISION] == V2
    assert pod["spec"]["restartPolicy"] == "Never"
    assert (job["spec"]["backoffLimit"], job["spec"]["activeDeadlineSeconds"]) == (0, 30)
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env == {
        "PERMAFROST_RELEASE": RELEASE.name,
        "PERMAFROST_NAMESPACE": RELEASE.namespace,
        "PERMAFROST_REVISION": V2,
        "PERMAFROST_STAGE": "gates",  # Permafrost's own, not the template's
        "PERMAFROST_TARGET_URL": "http://10.96.0.20:80",
    }
    # a Job runs for a while: looked at again soon, not a whole interval later
    assert plan.requeue_after is not None
    assert plan.requeue_after <= planner.JOB_POLL_SECONDS


def test_each_measurement_has_its_own_job_found_again_on_every_look() -> None:
    g = job_gate()
    first = jobs_of(planner.plan(verifying(gated_spec(g), preview=preview_to(V2))))
    again = jobs_of(planner.plan(verifying(gated_spec(g), preview=preview_to(V2))))
    assert [m.job["metadata"]["name"] for m in first if m.job] == [
        m.job["metadata"]["name"] for m in again if m.job
    ]
    rec = gate_record(g, [S], started=10)
    second = jobs_of(planner.plan(verifying(gated_spec(g), gates=[rec], preview=preview_to(V2))))
    assert [m.job["metadata"]["name"] for m in second if m.job] != [
        m.job["metadata"]["name"] for m in first if m.job
    ]


def test_a_job_gate_waits_for_the_preview_and_runs_at_once_without_one() -> None:
    waiting = planner.plan(
        verifying(gated_spec(job_gate()), preview=preview_to(models.REVISION_NONE))
    )
    assert not jobs_of(waiting)
    assert outcome(waiting, V2) == Outcome.PROGRESSING
    (measure,) = jobs_of(planner.plan(verifying(gated_spec(job_gate(), preview=False))))
    assert measure.job is not None
    env = {e["name"] for e in measure.job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "PERMAFROST_TARGET_URL" not in env


def test_a_job_gate_with_an_unpinned_image_holds_as_misconfigured() -> None:
    plan = planner.plan(
        verifying(gated_spec(job_gate("registry.example/smoke:1")), preview=preview_to(V2))
    )
    assert not jobs_of(plan)
    assert plan.status.phase == "Held"
    cond = condition(plan, conditions.PROGRESSING)
    assert cond.reason == conditions.GATE_MISCONFIGURED
    assert "not pinned by digest" in cond.message


def test_a_job_gate_whose_pods_would_take_the_services_traffic_is_misconfigured() -> None:
    g = job_gate()
    assert g.job is not None
    template = {**g.job.template, "metadata": {"labels": {models.LABEL_REVISION: V2}}}
    bad = g.model_copy(update={"job": g.job.model_copy(update={"template": template})})
    plan = planner.plan(verifying(gated_spec(bad), preview=preview_to(V2)))
    assert not jobs_of(plan)
    assert models.LABEL_REVISION in condition(plan, conditions.PROGRESSING).message


def test_a_job_gate_refused_by_a_create_stage_policy_is_misconfigured() -> None:
    refused = policy.Verdict(
        stage="create",
        results=(policy.RuleResult("no-root", "non-root", "Enforce", "Fail", "runs as root"),),
    )
    s = verifying(gated_spec(job_gate()), preview=preview_to(V2))
    plan = planner.plan(dataclasses.replace(s, gate_verdicts={"smoke-job": refused}))
    assert not jobs_of(plan)
    cond = condition(plan, conditions.PROGRESSING)
    assert cond.reason == conditions.GATE_MISCONFIGURED
    assert "no-root/non-root: runs as root" in cond.message


def test_after_promotion_a_job_gate_targets_the_service() -> None:
    s = analysed()
    spec = s.spec.model_copy(
        update={"rollout": s.spec.rollout.model_copy(update={"gates": [job_gate()]})}
    )
    (measure,) = jobs_of(planner.plan(dataclasses.replace(s, spec=spec)))
    assert measure.stage == "analysis"
    assert measure.job is not None
    env = {
        e["name"]: e["value"]
        for e in measure.job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert (env["PERMAFROST_STAGE"], env["PERMAFROST_TARGET_URL"]) == (
        "analysis",
        "http://10.96.0.10:80",
    )
