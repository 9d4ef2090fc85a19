"""The rollout state machine: ``plan(situation) -> Plan``, pure and synchronous.

The shell observes the cluster into a :class:`Situation` (the release, its desired revision, the
revision Deployments with their pods, the Service, and ``now``), calls :func:`plan`, applies the
returned actions in order, posts the events, and writes the returned status with one patch.
All state lives in the cluster, so an operator killed at any instant resumes from what it sees.

Per desired revision, the states are::

    (no record) --create--> Progressing --verified--> Stable --replaced--> Retired
                                 |   \\--newer spec--> Superseded
                                 \\--deadline / crash loop / became unready--> Failed

A Failed revision never took traffic: the stable revision keeps (or regains) all of it and the
failed one is scaled to 0 and kept for inspection. A new spec, the ``permafrost.dev/retry``
annotation (a new value), or a manual rollback starts a new attempt (Failed, Superseded or
Retired --> Progressing). :data:`TRANSITIONS` is this drawing as a table: every change of a
revision's outcome is checked against it and any other raises :class:`IllegalTransition`.

Health is never assumed: a pod without a Ready condition, a Deployment whose status lags its
generation, or fewer pods than replicas all count as "not verified yet".
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from permafrost import models
from permafrost.artifacts import images
from permafrost.gates import verdicts
from permafrost.models import ConditionStatus, GateVerdict, Outcome, RevisionRecord
from permafrost.policies import policy
from permafrost.releases import conditions, hashing, manifests
from permafrost.releases.conditions import parse_timestamp, timestamp

CRASH_REASONS = frozenset(
    {"CrashLoopBackOff", "Error", "RunContainerError", "CreateContainerError"}
)
MIN_REQUEUE_SECONDS = 0.5
# NB: EndpointSlices are read, not watched: while a retired revision is still an endpoint of the
# Service, the release is looked at again this often.
ENDPOINTS_RECHECK_SECONDS = 1.0
# How often the Job of a job gate is looked at while it runs.
JOB_POLL_SECONDS = 3.0
POLICY_RECHECK_SECONDS = 30.0


class PlanError(Exception):
    """The situation admits no valid plan (a bug or a corrupted status, never user input)."""


class IllegalTransition(PlanError):
    """A revision's outcome was to change in a way :data:`TRANSITIONS` does not allow: a bug in
    the planner, or a status edited by hand. Reported like any :class:`PlanError`."""


# Per revision, which outcome may follow which (``None``: no record yet), as the module's
# docstring draws it. Every change of an outcome goes through :func:`transition`; anything not
# in this table raises, instead of writing a history that cannot have happened.
TRANSITIONS: Mapping[Outcome | None, frozenset[Outcome]] = {
    # created (Progressing), or adopted after a crash (Stable, Progressing or Retired)
    None: frozenset({Outcome.PROGRESSING, Outcome.STABLE, Outcome.RETIRED}),
    Outcome.PROGRESSING: frozenset(
        {Outcome.PROGRESSING, Outcome.STABLE, Outcome.FAILED, Outcome.SUPERSEDED}
    ),
    # replaced, or its Deployment deleted; or started again (a Stable record the status no
    # longer names stable: a status restored or edited)
    # or failed by its analysis after promotion (traffic switched back)
    Outcome.STABLE: frozenset({Outcome.RETIRED, Outcome.PROGRESSING, Outcome.FAILED}),
    # a new attempt: a retry, a rollback to it, the spec back at it; or traffic switched back
    # to it when the revision that replaced it failed its analysis after promotion
    Outcome.RETIRED: frozenset({Outcome.PROGRESSING, Outcome.STABLE}),
    Outcome.FAILED: frozenset({Outcome.PROGRESSING}),
    Outcome.SUPERSEDED: frozenset({Outcome.PROGRESSING}),
}


def transition(revision: str, *, old: Outcome | None, new: Outcome) -> Outcome:
    """``new``, if a revision whose outcome is ``old`` may become ``new``; else raises
    :class:`IllegalTransition`."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"revision {revision} cannot go from {old or 'no record'} to {new}")
    return new


class Pass(enum.Enum):
    """Where one planning pass left the target revision (what the conditions then report)."""

    STABLE = "Stable"  # the target serves traffic (or nothing is left to do)
    PROGRESSING = "Progressing"  # the target is being created or verified
    HELD = "Held"  # a policy holds its creation or promotion
    FAILED = "Failed"  # the target failed under the current attempt
    BLOCKED = "Blocked"  # there is no target (its config is missing)


# --- what the shell observes -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PodView:
    name: str
    ready: bool | None  # None: the pod reports no Ready condition (unknown, never healthy)
    ready_since: datetime.datetime | None
    restarts: int
    waiting_reason: str | None
    terminating: bool


@dataclasses.dataclass(frozen=True)
class RevisionView:
    """A revision Deployment as observed, with its pods."""

    name: str
    revision: str
    replicas: int
    created_at: datetime.datetime
    generation: int
    observed_generation: int
    ready_replicas: int
    images: tuple[str, ...]
    pods: tuple[PodView, ...]
    # Drift: the live template's fingerprint, and what the Deployment's annotations recorded.
    fingerprint: str = ""
    recorded_fingerprint: str | None = None
    break_glass: str | None = None
    break_glass_accepted: str | None = None
    drift_reported: bool = False
    version: str | None = None  # the template's app.kubernetes.io/version label
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)  # its pods' labels
    uid: str = ""  # the Deployment's (the owner of its job gates' Jobs)


def stable_summary(view: RevisionView | None) -> dict[str, Any] | None:
    """The serving revision as promote-stage policies see it (``stable``)."""
    if view is None:
        return None
    return {
        "hash": view.revision,
        "name": view.name,
        "images": list(view.images),
        "version": view.version,
    }


@dataclasses.dataclass(frozen=True)
class ServiceView:
    name: str
    selector: Mapping[str, str]
    owned: bool = False  # created by Permafrost for this release (its owner is the release)
    # The Service's owner accepts that it reaches every revision's pods (e.g. for metrics):
    # the annotation permafrost.dev/selects-unverified-pods is "true".
    acknowledged: bool = False
    # The revisions whose pods are endpoints in the Service's EndpointSlices, with how many of
    # them are ready (None: not observed). What kube-proxy routes to follows these, not the
    # selector: a retired revision keeps getting requests until its pods leave them.
    endpoints: Mapping[str, int] | None = None
    cluster_ip: str | None = None  # None: headless, or not allocated yet
    ports: tuple[models.ServicePort, ...] = ()


@dataclasses.dataclass(frozen=True)
class Desired:
    """The revision the spec asks for, resolved (config read, hash computed, manifests built)."""

    revision: str
    deployment: Mapping[str, Any]
    snapshots: tuple[Mapping[str, Any], ...]
    images: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ConfigMissing:
    """The spec references ConfigMaps/Secrets that do not exist (``"Kind/name"`` each)."""

    missing: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Situation:
    release: manifests.ReleaseRef
    generation: int
    spec: models.GuardedReleaseSpec
    status: models.GuardedReleaseStatus
    annotations: Mapping[str, str]
    desired: Desired | ConfigMissing
    revisions: Mapping[str, RevisionView]  # by revision hash
    service: ServiceView | None  # None: spec.service is unset, or the Service does not exist
    now: datetime.datetime
    # The GuardrailPolicies at the create and promote stages, evaluated by the shell with the
    # same engine as admission and `permafrost check` (None: no policy engine in use).
    create_verdict: policy.Verdict | None = None
    promote_verdict: policy.Verdict | None = None
    # Every other Service of the namespace (not spec.service): one whose selector matches the
    # release's pods sends traffic to revisions that are not verified.
    other_services: tuple[ServiceView, ...] = ()
    # What the registries said about the images of the spec's revision while it is not created
    # yet (None: no registry check); an unreachable registry holds unless it fails open.
    image_checks: tuple[images.Check, ...] | None = None
    images_fail_open: bool = False
    # The preview Service (spec.service.preview), with its EndpointSlices; None: absent.
    preview: ServiceView | None = None
    # The create-stage policies on each job gate's pod template, by gate name (the release as
    # subject, with the gate's template in place of its own): a Job runs under the same rules.
    gate_verdicts: Mapping[str, policy.Verdict] = dataclasses.field(default_factory=dict)


# --- what the shell does -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CreateRevision:
    """Create the revision Deployment, then its config snapshots owned by it.

    ``resume``: the Deployment exists already; create what of it may be missing (its snapshots,
    each left alone if it exists).
    """

    deployment: Mapping[str, Any]
    snapshots: tuple[Mapping[str, Any], ...]
    resume: bool = False

    def __str__(self) -> str:
        names = ", ".join(s["metadata"]["name"] for s in self.snapshots)
        if self.resume:
            return f"ensure the snapshots {names} of revision {self.deployment['metadata']['name']}"
        return f"create revision {self.deployment['metadata']['name']}" + (
            f" with snapshots {names}" if names else ""
        )


@dataclasses.dataclass(frozen=True)
class Scale:
    name: str
    replicas: int

    def __str__(self) -> str:
        return f"scale {self.name} to {self.replicas}"


@dataclasses.dataclass(frozen=True)
class RouteService:
    """Point the Service's selector at a revision; create the Service if ``create`` is given."""

    name: str
    selector: Mapping[str, str]
    create: Mapping[str, Any] | None

    def __str__(self) -> str:
        verb = "create Service" if self.create is not None else "route Service"
        return f"{verb} {self.name} to {self.selector.get(models.LABEL_REVISION)}"


@dataclasses.dataclass(frozen=True)
class Annotate:
    """Record metadata on a revision Deployment (never what runs)."""

    name: str
    annotations: Mapping[str, str]

    def __str__(self) -> str:
        return f"annotate {self.name} with {dict(self.annotations)}"


@dataclasses.dataclass(frozen=True)
class DeleteRevision:
    """Delete a revision Deployment; its ReplicaSets, pods and snapshots go with it."""

    name: str

    def __str__(self) -> str:
        return f"delete revision {self.name}"


@dataclasses.dataclass(frozen=True)
class Measure:
    """Take one measurement of a promotion gate of a revision; the shell records it in the
    revision's gate record (:func:`permafrost.gates.verdicts.record`) before it writes the status.

    ``url``: for an http gate, the URL of the gate's path through the preview Service.
    ``query``: for a prometheus gate, its query with the placeholders replaced
    (:func:`permafrost.gates.verdicts.resolve_query`).
    ``job``: for a job gate, the Job of this measurement: the shell creates it if it does not
    exist, and records a measurement once it has ended (none while it runs).
    """

    revision: str
    gate: models.Gate
    url: str | None = None
    query: str | None = None
    job: Mapping[str, Any] | None = None
    # "gates": before promotion; "analysis": after it (the record's analysis gates)
    stage: Literal["gates", "analysis"] = "gates"

    def __str__(self) -> str:
        target = f" at {self.url}" if self.url else ""
        if self.job is not None:
            target = f" by Job {self.job['metadata']['name']}"
        if self.stage == "analysis":
            target += " (analysis after promotion)"
        return (
            f"measure gate {self.gate.name} ({self.gate.kind}) of revision {self.revision}{target}"
        )


Action = CreateRevision | Scale | RouteService | Annotate | DeleteRevision | Measure


@dataclasses.dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    revision: str | None = None  # the revision the decision is about (for logs), if any


@dataclasses.dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    status: models.GuardedReleaseStatus
    events: tuple[Event, ...]
    requeue_after: float | None  # seconds until the plan may change with time alone


# --- verification ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Healthy:
    pass


@dataclasses.dataclass(frozen=True)
class Unhealthy:
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Pending:
    ready_since: str | None
    wake_at: datetime.datetime
    ready: int


Verdict = Healthy | Unhealthy | Pending


def assess(
    *,
    view: RevisionView,
    replicas: int,
    rollout: models.RolloutSpec,
    record: RevisionRecord,
    now: datetime.datetime,
) -> Verdict:
    """Verify one attempt of a revision: healthy, failed (and why), or not decided yet.

    Healthy: the Deployment's status is current, exactly ``replicas`` live pods, every one Ready
    (a known, true Ready condition) since at least ``minReadySeconds``, none restarted.
    Failed: any container restarted or is crash-looping; or every pod had been Ready in this
    attempt and one is not any more; or not every pod was Ready within
    ``progressDeadlineSeconds`` of the attempt's start.
    """
    started = parse_timestamp(record.attempt_started_at or record.created_at)
    pods = [p for p in view.pods if not p.terminating]
    for pod in pods:
        if pod.restarts > 0 or pod.waiting_reason in CRASH_REASONS:
            detail = pod.waiting_reason or "restarted"
            return Unhealthy(
                conditions.CRASH_LOOP,
                f"pod {pod.name} is crash-looping ({detail}, {pod.restarts} restarts)",
            )
    current = view.observed_generation >= view.generation
    ready = [p for p in pods if p.ready is True]
    all_ready = current and len(pods) == replicas and len(ready) == replicas
    if record.ready_since is not None and current and not all_ready:
        return Unhealthy(
            conditions.BECAME_UNREADY,
            f"{len(ready)}/{replicas} pods Ready after all had been Ready during verification",
        )
    if all_ready:
        first_seen = record.ready_since or timestamp(now)
        known = [p.ready_since for p in ready]
        # NB: a pod without a transition time is not known to have been Ready for any time.
        if None in known:
            since = now
        else:
            since = max((t for t in known if t is not None), default=parse_timestamp(first_seen))
        healthy_at = since + datetime.timedelta(seconds=rollout.min_ready_seconds)
        if now >= healthy_at:
            return Healthy()
        return Pending(ready_since=first_seen, wake_at=healthy_at, ready=len(ready))
    deadline = started + datetime.timedelta(seconds=rollout.progress_deadline_seconds)
    if now >= deadline:
        return Unhealthy(
            conditions.PROGRESS_DEADLINE_EXCEEDED,
            f"{len(ready)}/{replicas} pods Ready after the progress deadline of "
            f"{rollout.progress_deadline_seconds}s",
        )
    return Pending(ready_since=None, wake_at=deadline, ready=len(ready))


# --- the state machine -------------------------------------------------------------------------


@dataclasses.dataclass
class _Work:
    """The mutable scratchpad of one planning pass (never escapes :func:`plan`)."""

    s: Situation
    records: dict[str, RevisionRecord]
    stable: str | None
    actions: list[Action] = dataclasses.field(default_factory=list)
    events: list[Event] = dataclasses.field(default_factory=list)
    wake: list[datetime.datetime] = dataclasses.field(default_factory=list)
    state: Pass = Pass.STABLE
    note: str = ""
    failure: RevisionRecord | None = None
    hold: tuple[str, str] | None = None  # (reason, message): a policy holds the rollout
    # (reason, message): a promotion gate holds the revision (inconclusive, misconfigured)
    gate_hold: tuple[str, str] | None = None
    # the previous revision, kept up while the stable one is analysed after its promotion
    keep_up: str | None = None

    def record(self, revision: str, **changes: Any) -> RevisionRecord:
        """Change a revision's record; a change of its outcome is checked (:func:`transition`)."""
        current = self.records[revision]
        if "outcome" in changes:
            transition(revision, old=current.outcome, new=changes["outcome"])
        updated = current.model_copy(update=changes)
        self.records[revision] = updated
        return updated

    def event(
        self,
        type_: Literal["Normal", "Warning"],
        reason: str,
        message: str,
        *,
        revision: str | None,
    ) -> None:
        self.events.append(Event(type_, reason, message, revision))

    def scale(self, revision: str, replicas: int) -> None:
        """Plan a scale of a revision, replacing an earlier one of the same Deployment."""
        view = self.s.revisions.get(revision)
        if view is None:
            return
        self.actions = [
            a for a in self.actions if not (isinstance(a, Scale) and a.name == view.name)
        ]
        if view.replicas != replicas:
            self.actions.append(Scale(view.name, replicas))


def spec_generation(s: Situation) -> tuple[int, str]:
    """(generation, digest): the generation of the spec's last change other than a scale, and
    the digest of the spec without ``spec.replicas`` that tells the two apart.

    A change of ``spec.replicas`` alone (``kubectl scale``, an autoscaler) makes a new
    generation but keeps the digest the status recorded: the recorded generation stands. Any
    other change (or no digest recorded yet) makes the current generation the spec's.

    NB: a spec changed and changed back between two passes looks unchanged; it is the spec the
    last attempt answered, so nothing is missed that the operator ever acted on.
    """
    digest = hashing.unscaled_spec_digest(s.spec.to_json())
    if s.status.spec_digest == digest and s.status.spec_generation is not None:
        return s.status.spec_generation, digest
    return s.generation, digest


def _target(s: Situation) -> tuple[str | None, str | None, str | None]:
    """(target revision, attempt token, problem): what should run, and under which attempt.

    A manual rollback (``rollback-to`` with ``rollback-from`` equal to the spec's revision)
    overrides the spec until the spec changes; otherwise the spec's revision is the target.
    """
    spec_revision = s.desired.revision if isinstance(s.desired, Desired) else None
    # NB: a failed revision is tried again when the spec changes (a new generation, even if the
    # revision hash is the same, e.g. a longer deadline) or the retry annotation changes; not
    # when only spec.replicas changes (an autoscaler would retry it at every scale).
    retry_value = s.annotations.get(models.ANNOTATION_RETRY, "")
    retry = f"{spec_generation(s)[0]}:{retry_value}"
    to = s.annotations.get(models.ANNOTATION_ROLLBACK_TO)
    origin = s.annotations.get(models.ANNOTATION_ROLLBACK_FROM)
    if to and spec_revision is not None and origin == spec_revision:
        for revision, view in s.revisions.items():
            if to in (revision, view.name):
                token = f"rollback:{to}" + (f":{retry_value}" if retry_value else "")
                return revision, token, None
        return spec_revision, retry, f"rollback target {to!r} is not a retained revision"
    if spec_revision is None:
        # NB: config went missing mid-rollout. The revision in verification is self-contained
        # (its snapshots exist), so it is still verified, promoted or failed — never left hanging.
        for record in s.status.revisions:
            if record.outcome == Outcome.PROGRESSING and record.hash in s.revisions:
                return record.hash, record.attempt, None
    return spec_revision, retry, None


def _adopt(w: _Work, target: str | None, attempt: str | None) -> None:
    """Give every observed revision a record (after a crash, status may lag the cluster).

    The target becomes Progressing, its deadline counting from the Deployment's creation. If
    the status names no stable revision, the one the Service selects is the stable one. Any
    other revision is Retired as of now, so it is scaled down after the usual delay.
    """
    s = w.s
    selected = s.service.selector.get(models.LABEL_REVISION) if s.service else None
    for revision, view in s.revisions.items():
        if revision in w.records:
            continue
        created = timestamp(view.created_at)
        record = RevisionRecord(
            name=view.name,
            hash=revision,
            images=list(view.images),
            outcome=Outcome.RETIRED,
            reason="Adopted",
            created_at=created,
        )
        if w.stable is None and revision == selected:
            record = record.model_copy(update={"outcome": Outcome.STABLE, "promoted_at": created})
            w.stable = revision
        elif revision == target:
            record = record.model_copy(
                update={
                    "outcome": Outcome.PROGRESSING,
                    "attempt_started_at": created,
                    "attempt": attempt,
                }
            )
        else:
            record = record.model_copy(update={"retired_at": timestamp(s.now)})
        w.records[revision] = record
    if w.stable is not None and w.stable not in w.records:
        raise PlanError(f"status names stable revision {w.stable} but has no record of it")
    if w.stable is not None and w.stable not in w.s.revisions and w.stable != target:
        w.record(
            w.stable,
            outcome=Outcome.RETIRED,
            reason="DeploymentDeleted",
            retired_at=timestamp(w.s.now),
        )
        w.event(
            "Warning",
            "StableRevisionDeleted",
            f"the Deployment of stable revision {w.stable} was deleted",
            revision=w.stable,
        )
        w.stable = None


def _supersede_others(w: _Work, target: str) -> None:
    for revision, record in list(w.records.items()):
        if record.outcome == Outcome.PROGRESSING and revision not in (target, w.stable):
            w.record(
                revision,
                outcome=Outcome.SUPERSEDED,
                reason="Superseded",
                message=f"replaced by revision {target} before it was verified",
                retired_at=timestamp(w.s.now),
            )
            w.event(
                "Normal",
                "Superseded",
                f"revision {revision} was superseded by {target} before it took traffic",
                revision=revision,
            )


def _hold_reason(violations: Sequence[policy.RuleResult]) -> str:
    """The reason a create-stage hold is reported with: the violations' own when they all
    share one (a verifyImages entry's, e.g. ImageNotSigned), else PolicyViolation."""
    reasons = {r.reason for r in violations}
    reason = reasons.pop() if len(reasons) == 1 else None
    return reason or conditions.POLICY_VIOLATION


def _start_attempt(w: _Work, target: str, attempt: str | None) -> None:
    s, now = w.s, timestamp(w.s.now)
    record, view = w.records.get(target), s.revisions.get(target)
    if view is None:
        if not isinstance(s.desired, Desired) or s.desired.revision != target:
            raise PlanError(f"revision {target} has no Deployment and is not the spec's revision")
        if s.create_verdict is not None and s.create_verdict.violations:
            # NB: policies are checked again right before creation: they may have changed since
            # the release was admitted. Nothing is created while they are violated.
            w.hold = (_hold_reason(s.create_verdict.violations), s.create_verdict.summary())
            w.state = Pass.HELD
            return
        if s.image_checks is not None:
            # NB: checked by the shell right before creation, never at admission: a registry
            # call on the admission path would make every apply wait on (or fail with) it.
            hold = images.hold_of(s.image_checks, fail_open=s.images_fail_open)
            if hold is not None:
                w.hold = hold
                w.state = Pass.HELD
                return
            for outcome in sorted(images.FAIL_OPEN):
                let_through = [c for c in s.image_checks if c.outcome == outcome]
                if let_through:
                    w.event(
                        "Warning",
                        outcome,
                        "; ".join(c.message for c in let_through)
                        + f"; revision {target} is created unchecked (the registry check fails "
                        "open)",
                        revision=target,
                    )
        w.actions.append(CreateRevision(s.desired.deployment, s.desired.snapshots))
        w.event(
            "Normal",
            "RevisionCreated",
            f"created revision {target} ({manifests.revision_name(s.release.name, target)})",
            revision=target,
        )
    else:
        w.scale(target, s.spec.replicas)
        if attempt is not None and attempt.startswith("rollback:"):
            w.event(
                "Normal",
                "RollbackStarted",
                f"manual rollback to revision {target}: "
                "scaling it up to verify it again before it takes traffic",
                revision=target,
            )
        else:
            w.event(
                "Normal", "AttemptStarted", f"verifying revision {target} again", revision=target
            )
    name = view.name if view else manifests.revision_name(s.release.name, target)
    record_images = (
        list(view.images)
        if view
        else list(s.desired.images if isinstance(s.desired, Desired) else ())
    )
    w.records[target] = RevisionRecord(
        name=name,
        hash=target,
        images=record_images,
        outcome=transition(target, old=record.outcome if record else None, new=Outcome.PROGRESSING),
        created_at=record.created_at if record else now,
        attempt_started_at=now,
        attempt=attempt,
    )
    w.wake.append(s.now + datetime.timedelta(seconds=s.spec.rollout.progress_deadline_seconds))
    w.state = Pass.PROGRESSING


def _fail(w: _Work, target: str, reason: str, message: str) -> None:
    s = w.s
    record = w.record(
        target, outcome=Outcome.FAILED, reason=reason, message=message, failed_at=timestamp(s.now)
    )
    if s.spec.rollback.automatic:
        w.scale(target, 0)
        serving = f"traffic stays on revision {w.stable}" if w.stable else "no revision serves"
        w.event(
            "Warning",
            "RolledBack",
            f"revision {target} failed ({reason}: {message}); "
            f"{serving}; {record.name} scaled to 0 and kept for inspection",
            revision=target,
        )
    else:
        w.event(
            "Warning",
            "RevisionFailed",
            f"revision {target} failed ({reason}: {message}); "
            "automatic rollback is off, so it is left running for inspection",
            revision=target,
        )


def _promote(w: _Work, target: str) -> None:
    now = timestamp(w.s.now)
    previous = w.stable
    if previous is not None and previous in w.records:
        w.record(
            previous,
            outcome=Outcome.RETIRED,
            reason="Replaced",
            message=f"replaced by revision {target}",
            retired_at=now,
        )
    w.record(
        target,
        outcome=Outcome.STABLE,
        reason="Verified",
        message=None,
        promoted_at=now,
        drained_at=None,
        previous=previous,
        analysis=[],
        analyzed_at=None,
    )
    w.stable = target
    w.event(
        "Normal",
        "Promoted",
        f"revision {target} is verified and now serves traffic"
        + (f" (was {previous})" if previous else ""),
        revision=target,
    )
    w.state = Pass.STABLE


def _progress(w: _Work, target: str, attempt: str | None) -> None:
    s = w.s
    record = w.records.get(target)
    if record is not None and record.outcome == Outcome.FAILED and attempt == record.attempt:
        if s.spec.rollback.automatic:
            _scale_down_failed(w, target)
        w.state, w.failure = Pass.FAILED, record
        return
    _supersede_others(w, target)
    if record is None or record.outcome != Outcome.PROGRESSING:
        _start_attempt(w, target, attempt)
        return
    view = s.revisions.get(target)
    if view is None:
        # The revision's Deployment was deleted under us: create it again, start over.
        _start_attempt(w, target, attempt)
        return
    # NB: the record answers the current attempt token, so a failure is remembered against the
    # spec it failed under (a spec edit mid-verification must not make it retry by itself).
    record = w.record(target, attempt=attempt)
    if view.replicas != s.spec.replicas:
        # Scaling during verification: the new pods are verified afresh, nobody became unready.
        w.scale(target, s.spec.replicas)
        record = w.record(target, ready_since=None)
    verdict = assess(
        view=view, replicas=s.spec.replicas, rollout=s.spec.rollout, record=record, now=s.now
    )
    if isinstance(verdict, Healthy) and not _gates(w, target, record):
        return
    if (
        isinstance(verdict, Healthy)
        and s.promote_verdict is not None
        and (s.promote_verdict.violations)
    ):
        # Verified, but a promote-stage policy forbids moving traffic now (a change freeze, a
        # missing approval…): hold, and look again later, as time alone may lift it.
        w.hold = (conditions.PROMOTION_HELD, s.promote_verdict.summary())
        w.state = Pass.HELD
        w.note = f"revision {target} is verified; promotion is held by policy"
        w.wake.append(s.now + datetime.timedelta(seconds=POLICY_RECHECK_SECONDS))
    elif isinstance(verdict, Healthy):
        _promote(w, target)
    elif isinstance(verdict, Unhealthy):
        _fail(w, target, verdict.reason, verdict.message)
        w.state, w.failure = Pass.FAILED, w.records[target]
    else:
        w.record(target, ready_since=verdict.ready_since)
        w.wake.append(verdict.wake_at)
        w.state = Pass.PROGRESSING
        w.note = f"verifying revision {target}: {verdict.ready}/{s.spec.replicas} pods Ready"


# --- promotion gates ---------------------------------------------------------------------------

_GATE_EVENTS: Mapping[GateVerdict, tuple[Literal["Normal", "Warning"], str]] = {
    GateVerdict.PASSED: ("Normal", conditions.GATE_PASSED),
    GateVerdict.FAILED: ("Warning", conditions.GATE_FAILED),
    GateVerdict.INCONCLUSIVE: ("Warning", conditions.GATE_INCONCLUSIVE),
    GateVerdict.MISCONFIGURED: ("Warning", conditions.GATE_MISCONFIGURED),
}


def service_ports(s: Situation) -> tuple[models.ServicePort, ...]:
    """The ports of the release's Service (and so of its preview): the spec's, else the live
    Service's, else the default Permafrost creates it with."""
    if s.spec.service is not None and s.spec.service.ports:
        return tuple(s.spec.service.ports)
    if s.service is not None and s.service.ports:
        return s.service.ports
    return (models.ServicePort(name="http", port=80, target_port=8080),)


def _gate_port(s: Situation, gate: models.Gate) -> models.ServicePort | None:
    assert gate.http is not None
    wanted = gate.http.port
    for port in service_ports(s):
        if (isinstance(wanted, int) and port.port == wanted) or (
            isinstance(wanted, str) and (port.name == wanted or str(port.port) == wanted)
        ):
            return port
    return None


def gate_problem(s: Situation, gate: models.Gate) -> str | None:
    """Why ``gate`` cannot measure anything, as the spec and the preview Service stand (None:
    it can). Such a gate is Misconfigured: it holds the revision, never promotes it."""
    if gate.prometheus is not None:
        try:
            verdicts.compile_condition(gate.prometheus.success_condition)
        except verdicts.ConditionError as exc:
            return str(exc)
        return None
    if gate.job is not None:
        found = s.gate_verdicts.get(gate.name)
        if found is not None and found.violations:
            return f"the Job's pod template is refused by policy: {found.summary()}"
        return job_problem(gate.job)
    assert gate.http is not None
    if s.spec.service is None or not s.spec.service.preview:
        return (
            "an http gate measures the revision through its preview Service: set "
            "spec.service.name and spec.service.preview: true"
        )
    if s.preview is not None and not s.preview.owned:
        return (
            f"Service {s.preview.name} exists and is not Permafrost's: rename or delete it, "
            "Permafrost creates the preview Service itself"
        )
    if gate.http.body_regex is not None:
        try:
            re.compile(gate.http.body_regex)
        except re.error as exc:
            return f"bodyRegex {gate.http.body_regex!r} does not compile: {exc}"
    if _gate_port(s, gate) is None:
        known = ", ".join(f"{p.name or '-'}/{p.port}" for p in service_ports(s))
        return f"port {gate.http.port!r} is not a port of Service {s.spec.service.name} ({known})"
    return None


def job_problem(job: models.JobGate) -> str | None:
    """Why a job gate's template cannot make a Job Permafrost may run (None: it can)."""
    spec = job.template.get("spec")
    if not isinstance(spec, Mapping) or not spec.get("containers"):
        return "job.template needs spec.containers (a core/v1 PodTemplateSpec)"
    labels = (job.template.get("metadata") or {}).get("labels") or {}
    for key in (models.LABEL_RELEASE, models.LABEL_REVISION):
        if key in labels:
            return (
                f"job.template may not carry the label {key}: the release's Service would "
                "send its traffic to the Job's pod"
            )
    for image in manifests.images(job.template):
        try:
            pinned = images.parse(image).pinned
        except images.InvalidReference as exc:
            return f"job.template: {exc}"
        if not pinned:
            return (
                f"job.template image {image!r} is not pinned by digest (name@sha256:<64 hex>): "
                "a gate's Job runs under the same image rules as the revision"
            )
    return None


def _base_url(service: ServiceView, port: models.ServicePort) -> str:
    assert service.cluster_ip is not None
    host = f"[{service.cluster_ip}]" if ":" in service.cluster_ip else service.cluster_ip
    return f"http://{host}:{port.port}"


def _job_target(
    w: _Work, target: str, stage: Literal["gates", "analysis"]
) -> tuple[bool, str | None]:
    """(ready, url) for a job gate: the base URL of the Service that reaches ``target`` (the
    preview before the promotion, the release's Service after it) and whether the Job may start.

    With such a Service in the spec the Job waits until it routes to the revision (a check run
    earlier would test another revision, or nothing); without one it starts at once, no URL.
    """
    s = w.s
    if s.spec.service is None or (stage == "gates" and not s.spec.service.preview):
        return True, None
    view = s.preview if stage == "gates" else s.service
    if view is None or not view.cluster_ip or view.endpoints is None:
        return False, None
    if stage == "gates" and view.selector.get(models.LABEL_REVISION) != target:
        return False, None
    if view.endpoints.get(target, 0) < s.spec.replicas:
        return False, None
    if stage == "analysis" and any(r != target for r in view.endpoints):
        return False, None
    return True, _base_url(view, service_ports(s)[0])


def _job(
    w: _Work,
    target: str,
    gate: models.Gate,
    rec: models.GateRecord,
    *,
    stage: Literal["gates", "analysis"],
    url: str | None,
) -> dict[str, Any]:
    """The Job of the next measurement of a job gate (named for the attempt, the stage and the
    measurement's number, so that each look finds the run it started)."""
    s = w.s
    key = f"{stage}/{rec.started_at}/{rec.spec_digest}/{verdicts.taken(rec) + 1}"
    view = s.revisions.get(target)
    owner = (
        manifests.owner_reference(
            api_version="apps/v1", kind="Deployment", name=view.name, uid=view.uid
        )
        | {"controller": False}
        if view is not None and view.uid
        else None
    )
    return manifests.gate_job(
        release=s.release,
        revision=target,
        owner=owner,
        gate=gate,
        name=manifests.gate_job_name(
            release=s.release.name, revision=target, gate=gate.name, key=key
        ),
        stage=stage,
        target_url=url,
    )


def _preview_url(w: _Work, target: str, gate: models.Gate) -> str | None:
    """The URL an http gate measures the candidate at, once the preview Service routes to every
    one of its Ready pods (None: not yet; a request now would say nothing about the revision)."""
    s = w.s
    preview = s.preview
    port = _gate_port(s, gate)
    if preview is None or port is None or gate.http is None or not preview.cluster_ip:
        return None
    if preview.selector.get(models.LABEL_REVISION) != target:
        return None
    if preview.endpoints is None or preview.endpoints.get(target, 0) < s.spec.replicas:
        return None
    host = f"[{preview.cluster_ip}]" if ":" in preview.cluster_ip else preview.cluster_ip
    return f"http://{host}:{port.port}{gate.http.path}"


def _run_gates(
    w: _Work,
    target: str,
    previous: Sequence[models.GateRecord],
    *,
    stage: Literal["gates", "analysis"],
    url: Callable[[models.Gate], str | None],
) -> tuple[list[models.GateRecord], list[verdicts.Evaluation], bool]:
    """Bring every gate's record up to date, post an Event for each new verdict, and plan the
    measurements that are due. Returns the records, their evaluations, and whether an http gate
    waits for its Service to route to the revision's pods (``url`` gives None)."""
    s = w.s
    old = {g.name: g for g in previous}
    records: list[models.GateRecord] = []
    evaluations: list[verdicts.Evaluation] = []
    waiting = False
    what = "" if stage == "gates" else " (analysis after promotion)"
    for gate in s.spec.rollout.gates:
        rec = old.get(gate.name) or verdicts.start(gate, now=s.now)
        before = rec.verdict if rec.spec_digest == verdicts.spec_digest(gate) else None
        rec, found = verdicts.evaluate(gate, rec, now=s.now, problem=gate_problem(s, gate))
        if found.verdict != before and found.verdict in _GATE_EVENTS:
            type_, reason = _GATE_EVENTS[found.verdict]
            w.event(type_, reason, f"revision {target}{what}: {found.message}", revision=target)
        if found.due is not None:
            if found.measure_now(s.now):
                address = url(gate) if gate.http is not None else None
                ready, base = _job_target(w, target, stage) if gate.job else (True, None)
                if (gate.http is not None and address is None) or not ready:
                    waiting = True
                    w.wake.append(s.now + datetime.timedelta(seconds=ENDPOINTS_RECHECK_SECONDS))
                elif gate.job is not None:
                    job = _job(w, target, gate, rec, stage=stage, url=base)
                    w.actions.append(Measure(revision=target, gate=gate, job=job, stage=stage))
                    w.wake.append(s.now + datetime.timedelta(seconds=JOB_POLL_SECONDS))
                else:
                    resolved = (
                        verdicts.resolve_query(
                            gate.prometheus.query,
                            release=s.release.name,
                            namespace=s.release.namespace,
                            revision=target,
                        )
                        if gate.prometheus is not None
                        else None
                    )
                    w.actions.append(
                        Measure(
                            revision=target, gate=gate, url=address, query=resolved, stage=stage
                        )
                    )
                    w.wake.append(s.now + datetime.timedelta(seconds=gate.interval_seconds))
            else:
                w.wake.append(found.due)
        records.append(rec)
        evaluations.append(found)
    return records, evaluations, waiting


def _service_url(w: _Work, target: str, gate: models.Gate) -> str | None:
    """The URL an http gate measures the stable revision at after its promotion: the release's
    Service, once its EndpointSlices hold every Ready pod of it and none of another revision."""
    s = w.s
    service = s.service
    port = _gate_port(s, gate)
    if service is None or port is None or gate.http is None or not service.cluster_ip:
        return None
    if service.endpoints is None or service.endpoints.get(target, 0) < s.spec.replicas:
        return None
    if any(r != target for r in service.endpoints):
        return None  # NB: the previous revision still answers some requests: not judged yet
    host = f"[{service.cluster_ip}]" if ":" in service.cluster_ip else service.cluster_ip
    return f"http://{host}:{port.port}{gate.http.path}"


def _analyse(w: _Work, target: str) -> None:
    """Analysis after promotion: the stable ``target``'s gates run again for up to
    ``postPromotionSeconds`` after its promotion, the revision it replaced kept up; a Failed
    gate, or gates not all Passed by the end of the window (unknown is never healthy), switch
    traffic back to that revision at once and fail ``target``."""
    s = w.s
    window = s.spec.rollout.post_promotion_seconds
    record = w.records[target]
    if (
        not window
        or not s.spec.rollout.gates
        or record.analyzed_at is not None
        or record.promoted_at is None
        or record.previous is None
    ):
        return
    previous = w.records.get(record.previous)
    if (
        previous is None
        or previous.outcome != Outcome.RETIRED
        or record.previous not in s.revisions
        or s.revisions[record.previous].replicas == 0
    ):
        return  # nothing left to switch back to
    end = parse_timestamp(record.promoted_at) + datetime.timedelta(seconds=window)
    records, evaluations, waiting = _run_gates(
        w, target, record.analysis, stage="analysis", url=lambda g: _service_url(w, target, g)
    )
    w.record(target, analysis=records)
    failed = [e for e in evaluations if e.verdict == GateVerdict.FAILED]
    if failed:
        _switch_back(
            w,
            target,
            record.previous,
            conditions.ANALYSIS_FAILED,
            "; ".join(e.message for e in failed),
        )
        return
    if all(e.verdict == GateVerdict.PASSED for e in evaluations):
        w.record(target, analyzed_at=timestamp(s.now))
        w.event(
            "Normal",
            conditions.ANALYSIS_PASSED,
            f"revision {target} passed its analysis after promotion; revision "
            f"{record.previous} is scaled down after the usual delay",
            revision=target,
        )
        return
    if s.now >= end:
        _switch_back(
            w,
            target,
            record.previous,
            conditions.ANALYSIS_NOT_PASSED,
            f"the gates had not passed {window}s after the promotion: "
            + "; ".join(e.message for e in evaluations if e.verdict != GateVerdict.PASSED),
        )
        return
    w.keep_up = record.previous
    w.state = Pass.PROGRESSING
    w.wake.append(end)
    w.note = (
        f"revision {target} serves; analysing it until {timestamp(end)}"
        + (" (waiting for the Service to route only to it)" if waiting else "")
        + f", revision {record.previous} kept up"
    )


def _switch_back(w: _Work, failed: str, previous: str, reason: str, message: str) -> None:
    """The stable revision failed its analysis: traffic back to ``previous`` at once."""
    s, now = w.s, timestamp(w.s.now)
    w.record(failed, outcome=Outcome.FAILED, reason=reason, message=message, failed_at=now)
    w.record(
        previous,
        outcome=Outcome.STABLE,
        reason="SwitchedBack",
        message=f"traffic switched back from revision {failed}",
        promoted_at=now,
        retired_at=None,
        drained_at=None,
    )
    w.stable = previous
    w.scale(previous, s.spec.replicas)
    # NB: the failed revision is scaled to 0 by the next pass, once the Service's selector has
    # moved: scaled in this one, its pods would stop as kube-proxy still sends them requests.
    w.keep_up = failed
    w.event(
        "Warning",
        "RolledBack",
        f"revision {failed} failed its analysis after promotion ({reason}: {message}); "
        f"traffic switched back to revision {previous}",
        revision=failed,
    )
    w.state, w.failure = Pass.FAILED, w.records[failed]


def _gates(w: _Work, target: str, record: RevisionRecord) -> bool:
    """Run the promotion gates of a revision whose pods are verified; True once all passed.

    Otherwise plans the measurements that are due, and: a Failed gate fails the revision (the
    automatic rollback follows); an Inconclusive or Misconfigured one holds it (phase Held),
    never promotes it; a gate not final by the progress deadline fails it. Gates that are
    Running keep it Progressing.
    """
    s = w.s
    gates = s.spec.rollout.gates
    if not gates:
        return True
    if record.ready_since is None:
        # NB: from now on, a pod that becomes unready fails the revision (BecameUnready).
        record = w.record(target, ready_since=timestamp(s.now))
    records, evaluations, waiting = _run_gates(
        w, target, record.gates, stage="gates", url=lambda g: _preview_url(w, target, g)
    )
    w.record(target, gates=records)
    failed = [e for e in evaluations if e.verdict == GateVerdict.FAILED]
    if failed:
        _fail(w, target, conditions.GATE_FAILED, "; ".join(e.message for e in failed))
        w.state, w.failure = Pass.FAILED, w.records[target]
        return False
    if all(e.verdict == GateVerdict.PASSED for e in evaluations):
        return True
    started = parse_timestamp(record.attempt_started_at or record.created_at)
    deadline = started + datetime.timedelta(seconds=s.spec.rollout.progress_deadline_seconds)
    open_ = [e for e in evaluations if e.verdict != GateVerdict.PASSED]
    if s.now >= deadline:
        _fail(
            w,
            target,
            conditions.GATES_NOT_PASSED,
            "the promotion gates had not passed by the progress deadline of "
            f"{s.spec.rollout.progress_deadline_seconds}s: " + "; ".join(e.message for e in open_),
        )
        w.state, w.failure = Pass.FAILED, w.records[target]
        return False
    w.wake.append(deadline)
    held = [
        e for e in evaluations if e.verdict in (GateVerdict.INCONCLUSIVE, GateVerdict.MISCONFIGURED)
    ]
    if held:
        reason = (
            conditions.GATE_MISCONFIGURED
            if any(e.verdict == GateVerdict.MISCONFIGURED for e in held)
            else conditions.GATE_INCONCLUSIVE
        )
        w.gate_hold = (
            reason,
            f"revision {target} is held, never promoted: "
            + "; ".join(e.message for e in held)
            + f"; it fails at the progress deadline ({timestamp(deadline)}) unless the spec "
            f"changes or the annotation {models.ANNOTATION_RETRY} is set to try again",
        )
        w.state = Pass.HELD
        return False
    w.state = Pass.PROGRESSING
    running = ", ".join(
        f"{r.name} {verdicts.taken(r)}/{g.count}" for g, r in zip(gates, records, strict=True)
    )
    w.note = (
        f"verifying revision {target}: pods verified; "
        + ("waiting for the preview Service to route to its pods; " if waiting else "")
        + f"gates: {running}"
    )
    return False


def _route(w: _Work) -> None:
    """Point the Service at the stable revision; before there is one, at no pod at all.

    Until a revision is verified, the Service selects :data:`models.REVISION_NONE` from the
    moment the first revision exists or is about to be created: a selector the user wrote
    (``app: web``) would match that revision's pods as soon as they are Ready, unverified. The
    route then goes first in the plan, before the revision's Deployment is created.
    """
    s = w.s
    if s.spec.service is None:
        return
    revision = w.stable
    if revision is None:
        creating = any(isinstance(a, CreateRevision) for a in w.actions)
        if not (creating or s.revisions):
            return  # nothing of the release runs yet: whatever the Service serves is not ours
        revision = models.REVISION_NONE
    wanted = manifests.selector(s.release.name, revision)
    if s.service is not None:
        wanted = {**kept_selector_keys(s, revision), **wanted}
    if s.service is None:
        body = manifests.service(release=s.release, spec=s.spec.service, revision=revision)
        action = RouteService(s.spec.service.name, wanted, body)
        w.event(
            "Normal",
            conditions.SERVICE_CREATED,
            _created_message(s.spec.service.name),
            revision=w.stable,
        )
    elif dict(s.service.selector) != wanted:
        action = RouteService(s.spec.service.name, wanted, None)
    else:
        return
    if w.stable is None:
        w.actions.insert(0, action)
    else:
        w.actions.append(action)


def candidate(w: _Work) -> str | None:
    """The revision being verified (Progressing, not stable), if any: what the preview selects."""
    for revision, record in w.records.items():
        if (
            record.outcome == Outcome.PROGRESSING
            and revision != w.stable
            and revision in w.s.revisions
            and w.state in (Pass.PROGRESSING, Pass.HELD)
        ):
            return revision
    return None


def _route_preview(w: _Work) -> None:
    """Point the preview Service at the revision being verified; at no pod otherwise.

    Created (owned by the release, the ports of the release's Service) when missing; a Service
    of that name that Permafrost did not create is never touched (its gates are Misconfigured).
    """
    s = w.s
    if s.spec.service is None or not s.spec.service.preview:
        return
    if s.preview is not None and not s.preview.owned:
        return
    revision = candidate(w) or models.REVISION_NONE
    if s.preview is None and revision == models.REVISION_NONE and not s.revisions:
        return
    wanted = manifests.selector(s.release.name, revision)
    name = manifests.preview_name(s.spec.service.name)
    if s.preview is None:
        spec = models.ServiceSpec(name=name, ports=list(service_ports(s)))
        body = manifests.service(release=s.release, spec=spec, revision=revision)
        w.actions.append(RouteService(name, wanted, body))
    elif dict(s.preview.selector) != wanted:
        w.actions.append(RouteService(name, wanted, None))


def kept_selector_keys(s: Situation, revision: str) -> dict[str, str]:
    """The keys of the Service's live selector that Permafrost keeps when it routes ``revision``.

    Permafrost owns two keys of the selector, ``permafrost.dev/release`` and
    ``permafrost.dev/revision``; every other key is kept when the routed revision's pods carry
    it (with :data:`models.REVISION_NONE` no pod is selected, so every other key is kept), and
    dropped otherwise (it would make the Service select no pod at all). With the two keys
    beside them, the kept keys never widen what the Service selects.

    NB: a Service kept in Git (``app: checkout``) must not lose its own keys: Argo CD compares
    them, saw them gone, re-applied the Service, and the operator replaced the selector again —
    a sync fight that never ended.
    """
    assert s.service is not None
    view = s.revisions.get(revision)
    labels = view.labels if view is not None else {}
    ours = (models.LABEL_RELEASE, models.LABEL_REVISION)
    return {
        k: v
        for k, v in s.service.selector.items()
        if k not in ours and (revision == models.REVISION_NONE or labels.get(k) == v)
    }


def _drained(w: _Work, revision: str) -> bool | None:
    """Whether the Service no longer sends requests to a retired revision that still runs.

    True once its EndpointSlices hold none of the revision's pods and hold the stable
    revision's ready pods (if it has any Ready); None when there is nothing to wait for (no
    Service, its EndpointSlices not observed, or no pod of the revision left).
    """
    s = w.s
    view = s.revisions.get(revision)
    if s.service is None or s.service.endpoints is None or view is None or view.replicas == 0:
        return None
    endpoints = s.service.endpoints
    stable = s.revisions.get(w.stable) if w.stable else None
    stable_routed = stable is None or stable.ready_replicas == 0 or endpoints.get(stable.revision)
    return revision not in endpoints and bool(stable_routed)


def _scale_down_failed(w: _Work, revision: str) -> bool:
    """Scale a failed revision to 0, once nothing sends it requests; False: not yet.

    NB: a revision that failed its analysis after promotion took traffic: traffic went back at
    once (the selector), but kube-proxy sends it requests until the EndpointSlices drop its
    pods; scaled down before, its pods' shutdown would fail those requests.
    """
    record = w.records[revision]
    if record.promoted_at is not None and record.drained_at is None:
        drained = _drained(w, revision)
        if drained is False:
            w.wake.append(w.s.now + datetime.timedelta(seconds=ENDPOINTS_RECHECK_SECONDS))
            return False
        w.record(revision, drained_at=timestamp(w.s.now))
    w.scale(revision, 0)
    return True


def _housekeeping(w: _Work, target: str | None) -> None:
    """Scale down what no longer serves (after the delay), and prune old revisions.

    A retired revision's ``scaleDownDelaySeconds`` counts from the moment the Service's
    EndpointSlices no longer hold its pods (``drained_at``), not from the switch of the
    selector: until then kube-proxy still sends it requests, which its pods' shutdown would fail.
    """
    s = w.s
    live = {w.stable, target if w.state == Pass.PROGRESSING else None, w.keep_up}
    delay = datetime.timedelta(seconds=s.spec.rollout.scale_down_delay_seconds)
    retained: list[RevisionRecord] = []
    for revision, record in w.records.items():
        if revision in live:
            continue
        if record.outcome == Outcome.RETIRED and record.retired_at is not None:
            drained = _drained(w, revision) if record.drained_at is None else None
            if drained is False:
                w.wake.append(s.now + datetime.timedelta(seconds=ENDPOINTS_RECHECK_SECONDS))
                continue
            start = record.drained_at or record.retired_at
            if drained:
                start = timestamp(s.now)
                record = w.record(revision, drained_at=start)
            due = parse_timestamp(start) + delay
            if s.now >= due:
                w.scale(revision, 0)
            else:
                w.wake.append(due)
                continue
        elif record.outcome == Outcome.FAILED and s.spec.rollback.automatic:
            if not _scale_down_failed(w, revision):
                continue
        elif record.outcome == Outcome.SUPERSEDED:
            w.scale(revision, 0)
        if record.outcome != Outcome.PROGRESSING:
            retained.append(record)
    retained.sort(key=lambda r: r.retired_at or r.failed_at or r.created_at, reverse=True)
    for record in retained[s.spec.revision_history_limit :]:
        if record.hash == target:
            continue
        view = s.revisions.get(record.hash)
        if view is not None:
            w.actions.append(DeleteRevision(view.name))
        del w.records[record.hash]


def _conditions(
    w: _Work, target: str | None, problem: str | None, manual: bool
) -> list[models.Condition]:
    s = w.s
    stable_view = s.revisions.get(w.stable) if w.stable else None
    replicas = s.spec.replicas

    def make(type_: str, status: ConditionStatus, reason: str, message: str) -> models.Condition:
        return conditions.make(
            type_=type_,
            status=status,
            reason=reason,
            message=message,
            generation=s.generation,
            previous=s.status.conditions,
            now=s.now,
        )

    T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
    if w.stable is None or stable_view is None:
        ready = make(
            conditions.READY, F, conditions.NO_STABLE_REVISION, "no revision has been verified yet"
        )
    elif stable_view.ready_replicas >= replicas:
        ready = make(
            conditions.READY,
            T,
            conditions.ALL_REPLICAS_READY,
            f"revision {w.stable} serves with {stable_view.ready_replicas}/{replicas} "
            "replicas Ready",
        )
    else:
        ready = make(
            conditions.READY,
            F,
            conditions.REPLICAS_NOT_READY,
            f"revision {w.stable} has {stable_view.ready_replicas}/{replicas} replicas Ready",
        )

    if isinstance(s.desired, ConfigMissing) and w.state != Pass.PROGRESSING:
        progressing = make(
            conditions.PROGRESSING,
            F,
            conditions.CONFIG_NOT_FOUND,
            f"waiting for {', '.join(s.desired.missing)}: the rollout starts by "
            "itself when it exists",
        )
    elif w.gate_hold is not None:
        progressing = make(conditions.PROGRESSING, F, *w.gate_hold)
    elif problem is not None:
        progressing = make(
            conditions.PROGRESSING,
            F,
            conditions.ROLLBACK_TARGET_NOT_FOUND,
            f"{problem}; the spec's revision is rolled out instead",
        )
    elif w.state == Pass.PROGRESSING:
        progressing = make(
            conditions.PROGRESSING,
            T,
            conditions.ROLLOUT_IN_PROGRESS,
            w.note or f"verifying revision {target}",
        )
    elif w.state == Pass.FAILED and w.failure is not None:
        progressing = make(
            conditions.PROGRESSING,
            F,
            conditions.REVISION_FAILED,
            f"revision {w.failure.hash} failed: {w.failure.message}; change the "
            f"spec or set the annotation {models.ANNOTATION_RETRY} to try again",
        )
    else:
        progressing = make(
            conditions.PROGRESSING,
            F,
            conditions.ROLLOUT_COMPLETE,
            f"revision {w.stable} is stable" if w.stable else "nothing to roll out",
        )

    if w.state == Pass.FAILED and w.failure is not None:
        degraded = make(
            conditions.DEGRADED,
            T,
            w.failure.reason or conditions.REVISION_FAILED,
            f"revision {w.failure.hash} failed: {w.failure.message}",
        )
        if not s.spec.rollback.automatic:
            rolled_back = make(
                conditions.ROLLED_BACK,
                F,
                conditions.AUTOMATIC_ROLLBACK_DISABLED,
                f"revision {w.failure.hash} failed and is left running; automatic rollback is off",
            )
        elif w.stable is None:
            rolled_back = make(
                conditions.ROLLED_BACK,
                F,
                conditions.NO_STABLE_REVISION,
                f"revision {w.failure.hash} failed and there is no stable revision to keep serving",
            )
        else:
            rolled_back = make(
                conditions.ROLLED_BACK,
                T,
                w.failure.reason or conditions.REVISION_FAILED,
                f"revision {w.failure.hash} failed ({w.failure.message}); "
                f"traffic stays on revision {w.stable}",
            )
    else:
        degraded = make(conditions.DEGRADED, F, conditions.AS_EXPECTED, "")
        if manual and w.state == Pass.STABLE:
            rolled_back = make(
                conditions.ROLLED_BACK,
                T,
                conditions.MANUAL_ROLLBACK,
                f"manually rolled back to revision {w.stable}; the spec's "
                "revision runs again when the spec changes",
            )
        else:
            rolled_back = make(conditions.ROLLED_BACK, F, conditions.NO_ROLLBACK, "")
    return [
        ready,
        progressing,
        degraded,
        rolled_back,
        _policy_condition(w, make, target),
        _traffic_condition(w, make),
    ]


def scale_selector(release: str, stable: str | None) -> str:
    """The scale subresource's label selector: the pods of the serving revision, as a string.

    An autoscaler reads its metrics from these pods; before any revision is verified it selects
    none (:data:`models.REVISION_NONE`), as the release's Service does.
    """
    labels = manifests.selector(release, stable or models.REVISION_NONE)
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _created_message(name: str) -> str:
    return (
        f"Service {name} did not exist: Permafrost created it (owned by the release); "
        f"if spec.service.name was meant to name an existing Service, correct it"
    )


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a Service selector matches pods with ``labels`` (an empty one selects nothing)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def unguarded_services(s: Situation, *, stable: str | None) -> list[ServiceView]:
    """The other Services that select, or will select, the pods of a revision not verified.

    The pods of every revision carry the template's labels: a Service selecting them (a second
    Service, a headless one, one left from before Permafrost) reaches every revision, verified
    or not, whatever ``spec.service`` selects; the next one too. Reported: a Service whose
    selector matches the pods of a revision that is not the stable one, or would match any
    revision's pods whatever its ``permafrost.dev/revision``. Not reported: one pinned to the
    stable revision (created by Permafrost under an earlier ``spec.service.name``), and one
    acknowledged by its annotation.
    """
    labels = {r: dict(v.labels) for r, v in s.revisions.items()}
    if isinstance(s.desired, Desired):
        template = s.desired.deployment["spec"]["template"]
        labels.setdefault(
            s.desired.revision, dict((template.get("metadata") or {}).get("labels") or {})
        )
    unverified = [pods for r, pods in labels.items() if r != stable]
    any_revision = [
        {k: v for k, v in pods.items() if k != models.LABEL_REVISION} for pods in labels.values()
    ]
    preview = manifests.preview_name(s.spec.service.name) if s.spec.service else None
    return [
        svc
        for svc in s.other_services
        if not svc.acknowledged
        and (s.spec.service is None or svc.name != s.spec.service.name)
        # NB: the preview Service is Permafrost's own, made to reach the unverified revision
        # (owned: the preview observed with the release's uid, as other_services are not).
        and not (s.preview is not None and s.preview.owned and svc.name == preview)
        and any(_selects(svc.selector, pods) for pods in (*unverified, *any_revision))
    ]


def _traffic_condition(
    w: _Work, make: Callable[[str, ConditionStatus, str, str], models.Condition]
) -> models.Condition:
    """``TrafficGuarded``: whether only a verified revision can be reached through Services."""
    s = w.s
    unguarded = unguarded_services(s, stable=w.stable)
    if unguarded:
        names = ", ".join(
            f"{svc.name} ({','.join(f'{k}={v}' for k, v in sorted(svc.selector.items()))})"
            for svc in sorted(unguarded, key=lambda v: v.name)
        )
        return make(
            conditions.TRAFFIC_GUARDED,
            ConditionStatus.FALSE,
            conditions.UNGUARDED_SERVICE,
            f"Service {names} selects the release's pods, unverified revisions included: point "
            "it at "
            f"spec.service ({s.spec.service.name if s.spec.service else 'unset'}) or delete it, "
            f"or annotate it {models.ANNOTATION_SELECTS_UNVERIFIED}=true if that is meant",
        )
    if s.spec.service is None:
        return make(
            conditions.TRAFFIC_GUARDED,
            ConditionStatus.TRUE,
            conditions.NO_SERVICE,
            "spec.service is unset: Permafrost routes no traffic and no Service selects the pods",
        )
    name = s.spec.service.name
    creating = any(isinstance(a, RouteService) and a.create is not None for a in w.actions)
    if s.service is None and not creating:
        return make(
            conditions.TRAFFIC_GUARDED,
            ConditionStatus.TRUE,
            conditions.SERVICE_NOT_FOUND,
            f"Service {name} does not exist: Permafrost creates it with the first revision; "
            "if spec.service.name was meant to name an existing Service, correct it",
        )
    if s.service is None or s.service.owned:
        return make(
            conditions.TRAFFIC_GUARDED,
            ConditionStatus.TRUE,
            conditions.SERVICE_CREATED,
            _created_message(name),
        )
    return make(
        conditions.TRAFFIC_GUARDED,
        ConditionStatus.TRUE,
        conditions.SERVICE_ROUTED,
        f"Service {name} selects "
        + (f"revision {w.stable}" if w.stable else "no pod until a revision is verified"),
    )


def _traffic_events(w: _Work, conds: Sequence[models.Condition]) -> None:
    """A Warning Event when other Services that select the release's pods appear or change."""
    new = conditions.find(conds, conditions.TRAFFIC_GUARDED)
    old = conditions.find(w.s.status.conditions, conditions.TRAFFIC_GUARDED)
    if new is None or new.status != ConditionStatus.FALSE:
        return
    if old is not None and (old.status, old.message) == (new.status, new.message):
        return
    w.event("Warning", new.reason, new.message, revision=None)


def _policy_condition(
    w: _Work,
    make: Callable[[str, ConditionStatus, str, str], models.Condition],
    target: str | None,
) -> models.Condition:
    """Whether the release complies with every policy that applies to it now.

    The create stage judges the spec, always: an Enforce violation of a release already running
    (the policy was tightened after its revision was created) is ``False``
    (``EnforcedPolicyViolated``), the revision keeps running and the phase does not change. The
    promote stage judges a move of traffic, so it applies only while a revision awaits
    promotion; a release with nothing to promote is not judged by it (a change-freeze window
    does not make every stable release non-compliant).
    """
    s = w.s
    if w.hold is not None:
        reason, message = w.hold
        return make(conditions.POLICY_COMPLIANT, ConditionStatus.FALSE, reason, message)
    promoting = target is not None and target != w.stable and w.state == Pass.PROGRESSING
    verdicts = [
        v for v in (s.create_verdict, s.promote_verdict if promoting else None) if v is not None
    ]
    if not verdicts and s.create_verdict is None and s.promote_verdict is None:
        return make(
            conditions.POLICY_COMPLIANT,
            ConditionStatus.UNKNOWN,
            conditions.NO_POLICY_ENGINE,
            "no policies are evaluated for this release",
        )
    violations = [r for v in verdicts for r in v.violations]
    if violations:
        found = "; ".join(f"{r.enforcement} {r.policy}/{r.rule}: {r.message}" for r in violations)
        after = [f"revision {w.stable} keeps serving"] if w.stable is not None else []
        if promoting and s.promote_verdict is not None and s.promote_verdict.violations:
            after.append(f"revision {target} will not be promoted while this holds")
        return make(
            conditions.POLICY_COMPLIANT,
            ConditionStatus.FALSE,
            conditions.ENFORCED_POLICY_VIOLATED,
            found + "".join(f" ({a})" for a in after),
        )
    reported = [r for v in verdicts for r in (*v.warnings, *v.audits)]
    if reported:
        return make(
            conditions.POLICY_COMPLIANT,
            ConditionStatus.TRUE,
            conditions.POLICY_WARNINGS,
            "; ".join(f"{r.enforcement} {r.policy}/{r.rule}: {r.message}" for r in reported),
        )
    if any(v.results for v in verdicts):
        return make(
            conditions.POLICY_COMPLIANT,
            ConditionStatus.TRUE,
            conditions.ALL_POLICIES_PASS,
            "every applicable policy passes",
        )
    return make(
        conditions.POLICY_COMPLIANT,
        ConditionStatus.TRUE,
        conditions.NO_POLICY_APPLIES,
        "no policy applies to this release",
    )


def _policy_events(w: _Work, conds: Sequence[models.Condition], target: str | None) -> None:
    """An Event when the policy verdict changes (not on every pass: no Event storms)."""
    new = conditions.find(conds, conditions.POLICY_COMPLIANT)
    old = conditions.find(w.s.status.conditions, conditions.POLICY_COMPLIANT)
    if new is None or (old is not None and (old.status, old.message) == (new.status, new.message)):
        return
    if new.status == ConditionStatus.FALSE:
        w.event("Warning", new.reason, new.message, revision=target)
    elif new.reason == conditions.POLICY_WARNINGS:
        w.event("Warning", "PolicyWarning", new.message, revision=target)


def _phase(conds: Sequence[models.Condition]) -> str:
    """The one-word summary, derived last from the conditions (never an input)."""
    rolled_back = conditions.find(conds, conditions.ROLLED_BACK)
    if (
        rolled_back is not None
        and rolled_back.status == ConditionStatus.TRUE
        and (rolled_back.reason != conditions.MANUAL_ROLLBACK)
    ):
        return "RolledBack"
    if conditions.is_true(conds, conditions.DEGRADED):
        return "Degraded"
    compliant = conditions.find(conds, conditions.POLICY_COMPLIANT)
    if compliant is not None and compliant.reason in conditions.HOLDING_REASONS:
        return "Held"
    progressing = conditions.find(conds, conditions.PROGRESSING)
    if progressing is not None and progressing.reason in conditions.GATE_HOLDING_REASONS:
        return "Held"
    if conditions.is_true(conds, conditions.PROGRESSING):
        return "Progressing"
    progressing = conditions.find(conds, conditions.PROGRESSING)
    if progressing is not None and progressing.reason == conditions.CONFIG_NOT_FOUND:
        return "Pending"
    if conditions.is_true(conds, conditions.READY):
        return "Stable"
    return "Unavailable"


def _drift(w: _Work) -> bool:
    """Record fingerprints of new revisions and deal with drifted ones; True if any is deleted.

    A revision Deployment whose live template no longer matches the fingerprint recorded when
    it was first seen was changed in place (the guards were bypassed). A change made under
    break-glass is accepted. Otherwise the drifted Deployment is deleted when Permafrost can
    build it again (it is the spec's revision) or when it serves no traffic; the stable revision
    of an older spec is only reported, since deleting it would leave nothing serving.
    """
    s = w.s
    spec_revision = s.desired.revision if isinstance(s.desired, Desired) else None
    deleted = False
    for revision, view in s.revisions.items():
        if view.recorded_fingerprint is None:
            if revision == spec_revision and isinstance(s.desired, Desired) and s.desired.snapshots:
                # NB: the snapshots are created after the Deployment (to be owned by it): an
                # operator stopped between the two leaves a revision without them, which no
                # later pass would create. A revision is first seen without its fingerprint;
                # they are ensured before it is recorded (the actions stop at a failure).
                w.actions.append(
                    CreateRevision(s.desired.deployment, s.desired.snapshots, resume=True)
                )
            w.actions.append(Annotate(view.name, {models.ANNOTATION_FINGERPRINT: view.fingerprint}))
            continue
        if view.recorded_fingerprint == view.fingerprint:
            continue
        what = f"the Deployment {view.name} of revision {revision} was changed in place"
        if view.break_glass and view.break_glass != view.break_glass_accepted:
            w.actions.append(
                Annotate(
                    view.name,
                    {
                        models.ANNOTATION_FINGERPRINT: view.fingerprint,
                        models.ANNOTATION_BREAK_GLASS_ACCEPTED: view.break_glass,
                    },
                )
            )
            w.event(
                "Warning",
                "BreakGlassAccepted",
                f"{what} under break-glass ({view.break_glass}); the change is accepted",
                revision=revision,
            )
        elif revision == spec_revision or revision != w.stable:
            w.actions.append(DeleteRevision(view.name))
            w.event(
                "Warning",
                "DriftRepaired",
                f"{what}: deleted, "
                + (
                    "to be re-created from the spec"
                    if revision == spec_revision
                    else "as it no longer matches its revision"
                ),
                revision=revision,
            )
            deleted = True
        elif not view.drift_reported:
            w.actions.append(Annotate(view.name, {models.ANNOTATION_DRIFT: timestamp(s.now)}))
            w.event(
                "Warning",
                "DriftDetected",
                f"{what}; it keeps serving until the spec's revision replaces it",
                revision=revision,
            )
    return deleted


def plan(s: Situation) -> Plan:
    """Decide the next actions and the complete new status for one GuardedRelease."""
    w = _Work(s=s, records={r.hash: r for r in s.status.revisions}, stable=s.status.stable_revision)
    if _drift(w):
        # NB: a deleted revision is re-created on the next pass, once its Deployment is gone;
        # creating it in this pass would race the deletion of the old one of the same name.
        return Plan(
            actions=tuple(w.actions), status=s.status, events=tuple(w.events), requeue_after=1.0
        )
    target, attempt, problem = _target(s)
    manual = attempt is not None and attempt.startswith("rollback:") and problem is None
    _adopt(w, target, attempt)
    if target is None:
        w.state = Pass.BLOCKED
    elif target == w.stable:
        _supersede_others(w, target)
        w.scale(target, s.spec.replicas)
        _analyse(w, target)
        if s.revisions.get(target) is None and isinstance(s.desired, Desired):
            # The stable Deployment was deleted (deletion is allowed): create it again.
            w.actions.append(CreateRevision(s.desired.deployment, s.desired.snapshots))
            w.event(
                "Normal",
                "RevisionRecreated",
                f"re-created stable revision {target}",
                revision=target,
            )
    else:
        _progress(w, target, attempt)
    if w.stable is not None and w.stable != target:
        # NB: the stable revision serves while another is verified, failed or rolled back to:
        # a scale of the release (an autoscaler reacting to load) is for it, at once.
        w.scale(w.stable, s.spec.replicas)
    _route(w)
    _route_preview(w)
    _housekeeping(w, target)

    conds = _conditions(w, target, problem, manual)
    _policy_events(w, conds, target)
    _traffic_events(w, conds)
    stable_view = s.revisions.get(w.stable) if w.stable else None
    headline = next((c.message for c in conds if c.type == conditions.PROGRESSING), "")
    generation, digest = spec_generation(s)
    serving = stable_view.ready_replicas if stable_view else 0
    status = models.GuardedReleaseStatus(
        observed_generation=s.generation,
        desired_revision=target or s.status.desired_revision,
        stable_revision=w.stable,
        phase=_phase(conds),
        ready_replicas=f"{serving}/{s.spec.replicas}",
        replicas=serving,
        selector=scale_selector(s.release.name, w.stable),
        spec_generation=generation,
        spec_digest=digest,
        message=headline,
        conditions=conds,
        revisions=sorted(w.records.values(), key=lambda r: r.created_at, reverse=True),
    )
    pending = [max((t - s.now).total_seconds(), MIN_REQUEUE_SECONDS) for t in w.wake]
    return Plan(
        actions=tuple(w.actions),
        status=status,
        events=tuple(w.events),
        requeue_after=min(pending) if pending else None,
    )
