"""Builders of planner situations: one release ("checkout"), revisions by version, time fixed.

Every builder takes times as "seconds before ``NOW``", so a table row reads like a timeline:
``progressing(V2, started=30)`` is a revision whose verification began 30 seconds ago.
Revision hashes are real (computed by ``hashing.revision_hash`` from the versioned templates), so
the situations are ones the shell could actually observe.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from permafrost import models
from permafrost.models import Outcome, RevisionRecord
from permafrost.releases import conditions, hashing, manifests, planner

NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)
RELEASE = manifests.ReleaseRef(name="checkout", namespace="shop", uid="5d1f3c2e-uid")
SERVICE = "checkout"
VERSIONS = ("v1", "v2", "v3", "v4", "v5")
PHASES = frozenset(
    {"Stable", "Progressing", "RolledBack", "Degraded", "Pending", "Held", "Unavailable"}
)


def image(version: str) -> str:
    """A digest-pinned image, one per version."""
    return f"reg.example/shop/checkout@sha256:{hashlib.sha256(version.encode()).hexdigest()}"


def template(version: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "checkout"}},
        "spec": {
            "containers": [
                {"name": "web", "image": image(version), "ports": [{"containerPort": 8080}]}
            ]
        },
    }


def revision_of(version: str) -> str:
    return hashing.revision_hash(template=template(version), config={})


V1, V2, V3, V4, V5 = (revision_of(v) for v in VERSIONS)
VERSION_OF = {revision_of(v): v for v in VERSIONS}


def ago(seconds: float) -> datetime.datetime:
    return NOW - datetime.timedelta(seconds=seconds)


def at(seconds_ago: float | None) -> str | None:
    """The status timestamp of ``seconds_ago`` seconds before ``NOW`` (``None`` stays ``None``)."""
    return None if seconds_ago is None else conditions.timestamp(ago(seconds_ago))


def name_of(revision: str) -> str:
    return manifests.revision_name(RELEASE.name, revision)


# --- spec and desired --------------------------------------------------------------------------


def make_spec(
    version: str = "v2",
    *,
    replicas: int = 2,
    service: bool = True,
    deadline: int = 120,
    min_ready: int = 10,
    scale_down_delay: int = 30,
    automatic: bool = True,
    history: int = 3,
    config_refs: Iterable[models.ConfigRef] = (),
) -> models.GuardedReleaseSpec:
    return models.GuardedReleaseSpec(
        replicas=replicas,
        template=template(version),
        config_refs=list(config_refs),
        service=models.ServiceSpec(name=SERVICE) if service else None,
        rollout=models.RolloutSpec(
            progress_deadline_seconds=deadline,
            min_ready_seconds=min_ready,
            scale_down_delay_seconds=scale_down_delay,
        ),
        rollback=models.RollbackSpec(automatic=automatic),
        revision_history_limit=history,
    )


def desired(spec: models.GuardedReleaseSpec) -> planner.Desired:
    """What the shell resolves for a spec without config refs."""
    revision = hashing.revision_hash(template=spec.template, config={})
    return planner.Desired(
        revision=revision,
        deployment=manifests.revision_deployment(
            release=RELEASE, spec=spec, revision=revision, replicas=spec.replicas
        ),
        snapshots=(),
        images=tuple(manifests.images(spec.template)),
    )


# --- observed Deployments and pods -------------------------------------------------------------


def pod(
    name: str,
    *,
    ready: bool | None = True,
    since: float | None = 60,
    restarts: int = 0,
    waiting: str | None = None,
    terminating: bool = False,
) -> planner.PodView:
    """A pod; ``since`` is how long it has been Ready (ignored unless ``ready`` is True)."""
    return planner.PodView(
        name=name,
        ready=ready,
        ready_since=ago(since) if ready is True and since is not None else None,
        restarts=restarts,
        waiting_reason=waiting,
        terminating=terminating,
    )


def ready_pods(count: int, *, since: float | None = 60) -> tuple[planner.PodView, ...]:
    return tuple(pod(f"pod-{i}", since=since) for i in range(count))


def unready_pods(count: int) -> tuple[planner.PodView, ...]:
    return tuple(pod(f"pod-{i}", ready=False) for i in range(count))


def view(
    revision: str,
    *,
    replicas: int = 2,
    pods: tuple[planner.PodView, ...] | None = None,
    created: float = 600,
    generation: int = 1,
    observed_generation: int | None = None,
    ready_replicas: int | None = None,
) -> planner.RevisionView:
    """A revision Deployment; by default every pod has been Ready for a minute."""
    pods = ready_pods(replicas) if pods is None else pods
    ready = sum(1 for p in pods if p.ready is True and not p.terminating)
    return planner.RevisionView(
        name=name_of(revision),
        revision=revision,
        replicas=replicas,
        created_at=ago(created),
        generation=generation,
        observed_generation=generation if observed_generation is None else observed_generation,
        ready_replicas=ready if ready_replicas is None else ready_replicas,
        images=(image(VERSION_OF[revision]),),
        pods=pods,
        # NB: by default the fingerprint was recorded and matches (no drift); drift tests vary it.
        fingerprint=f"fp-{revision}",
        recorded_fingerprint=f"fp-{revision}",
    )


def routed_to(revision: str) -> planner.ServiceView:
    return planner.ServiceView(name=SERVICE, selector=manifests.selector(RELEASE.name, revision))


# --- status records ----------------------------------------------------------------------------


def record(
    revision: str,
    outcome: Outcome,
    *,
    created: float = 600,
    started: float | None = None,
    attempt: str | None = "1:",
    ready_since: float | None = None,
    promoted: float | None = None,
    retired: float | None = None,
    failed: float | None = None,
    reason: str | None = None,
    message: str | None = None,
) -> RevisionRecord:
    return RevisionRecord(
        name=name_of(revision),
        hash=revision,
        images=[image(VERSION_OF[revision])],
        outcome=outcome,
        reason=reason,
        message=message,
        created_at=at(created) or "",
        attempt_started_at=at(created if started is None else started),
        attempt=attempt,
        ready_since=at(ready_since),
        promoted_at=at(promoted),
        retired_at=at(retired),
        failed_at=at(failed),
    )


def stable(revision: str, *, created: float = 3600, promoted: float = 3000) -> RevisionRecord:
    return record(revision, Outcome.STABLE, created=created, promoted=promoted, reason="Verified")


def progressing(
    revision: str,
    *,
    started: float = 30,
    created: float | None = None,
    attempt: str | None = "1:",
    ready_since: float | None = None,
) -> RevisionRecord:
    return record(
        revision,
        Outcome.PROGRESSING,
        created=started if created is None else created,
        started=started,
        attempt=attempt,
        ready_since=ready_since,
    )


def failed(
    revision: str,
    *,
    reason: str = conditions.PROGRESS_DEADLINE_EXCEEDED,
    at_: float = 60,
    started: float = 180,
    attempt: str | None = "1:",
) -> RevisionRecord:
    return record(
        revision,
        Outcome.FAILED,
        created=started,
        started=started,
        attempt=attempt,
        failed=at_,
        reason=reason,
        message="0/2 pods Ready after the progress deadline of 120s",
    )


def retired(revision: str, *, retired_: float, created: float = 7200) -> RevisionRecord:
    return record(
        revision,
        Outcome.RETIRED,
        created=created,
        promoted=created - 60,
        retired=retired_,
        reason="Replaced",
    )


def superseded(revision: str, *, at_: float, created: float = 900) -> RevisionRecord:
    return record(revision, Outcome.SUPERSEDED, created=created, retired=at_, reason="Superseded")


# --- situations --------------------------------------------------------------------------------


def situation(
    *,
    spec: models.GuardedReleaseSpec | None = None,
    records: Iterable[RevisionRecord] = (),
    stable_revision: str | None = None,
    views: Iterable[planner.RevisionView] = (),
    service: planner.ServiceView | None = None,
    generation: int = 1,
    annotations: Mapping[str, str] | None = None,
    previous: Iterable[models.Condition] = (),
    desired_: planner.Desired | planner.ConfigMissing | None = None,
    desired_revision: str | None = None,
    now: datetime.datetime = NOW,
) -> planner.Situation:
    spec = make_spec() if spec is None else spec
    return planner.Situation(
        release=RELEASE,
        generation=generation,
        spec=spec,
        status=models.GuardedReleaseStatus(
            observed_generation=generation - 1 or None,
            desired_revision=desired_revision,
            stable_revision=stable_revision,
            conditions=list(previous),
            revisions=list(records),
        ),
        annotations=dict(annotations or {}),
        desired=desired(spec) if desired_ is None else desired_,
        revisions={v.revision: v for v in views},
        service=service,
        now=now,
    )


# --- reading plans -----------------------------------------------------------------------------


def revision_of_name(name: str) -> str:
    return name.rsplit("-", 1)[-1]


def summary(plan: planner.Plan) -> list[tuple[Any, ...]]:
    """The plan's actions as short tuples, in order, with Deployments named by revision hash."""
    result: list[tuple[Any, ...]] = []
    for action in plan.actions:
        if isinstance(action, planner.CreateRevision):
            revision = action.deployment["metadata"]["annotations"][models.ANNOTATION_TEMPLATE_HASH]
            result.append(("create", revision))
        elif isinstance(action, planner.Scale):
            result.append(("scale", revision_of_name(action.name), action.replicas))
        elif isinstance(action, planner.RouteService):
            target = action.selector[models.LABEL_REVISION]
            result.append(("route", target, "create" if action.create else "patch"))
        elif isinstance(action, planner.Annotate):
            result.append(("annotate", revision_of_name(action.name)))
        elif isinstance(action, planner.Measure):
            result.append(("measure", action.revision, action.gate.name))
        else:
            result.append(("delete", revision_of_name(action.name)))
    return result


def outcome(plan: planner.Plan, revision: str) -> Outcome | None:
    found = next((r for r in plan.status.revisions if r.hash == revision), None)
    return None if found is None else found.outcome


def revision_record(plan: planner.Plan, revision: str) -> RevisionRecord:
    return next(r for r in plan.status.revisions if r.hash == revision)


def condition(plan: planner.Plan, type_: str) -> models.Condition:
    found = conditions.find(plan.status.conditions, type_)
    assert found is not None, f"no {type_} condition in {plan.status.conditions}"
    return found


def event_reasons(plan: planner.Plan) -> list[str]:
    return [e.reason for e in plan.events]


# --- a tiny shell: apply a plan to a situation, as the operator would ----------------------------


def applied(s: planner.Situation, plan: planner.Plan) -> planner.Situation:
    """The situation right after the shell applied ``plan`` (no time passes, no pod changes)."""
    views = dict(s.revisions)
    service, preview = s.service, s.preview
    for action in plan.actions:
        if isinstance(action, planner.CreateRevision):
            revision = action.deployment["metadata"]["annotations"][models.ANNOTATION_TEMPLATE_HASH]
            views[revision] = view(revision, replicas=s.spec.replicas, pods=(), created=0)
        elif isinstance(action, planner.Scale):
            revision = revision_of_name(action.name)
            views[revision] = dataclasses.replace(views[revision], replicas=action.replicas)
        elif isinstance(action, planner.RouteService):
            if action.name == manifests.preview_name(SERVICE):
                preview = planner.ServiceView(
                    name=action.name, selector=dict(action.selector), owned=True
                )
            else:
                service = planner.ServiceView(name=action.name, selector=dict(action.selector))
        elif isinstance(action, planner.Measure):
            pass  # measured by the shell; nothing of the cluster changes
        elif isinstance(action, planner.Annotate):
            revision = revision_of_name(action.name)
            notes = action.annotations
            views[revision] = dataclasses.replace(
                views[revision],
                recorded_fingerprint=notes.get(
                    models.ANNOTATION_FINGERPRINT, views[revision].recorded_fingerprint
                ),
                break_glass_accepted=notes.get(
                    models.ANNOTATION_BREAK_GLASS_ACCEPTED, views[revision].break_glass_accepted
                ),
                drift_reported=views[revision].drift_reported or models.ANNOTATION_DRIFT in notes,
            )
        else:
            views.pop(revision_of_name(action.name), None)
    return dataclasses.replace(
        s, status=plan.status, revisions=views, service=service, preview=preview
    )
