"""Prometheus metrics: what Permafrost decided and how long it took, served by ``permafrost run
--metrics-port``.

Counting is the only thing done here; the decisions are made elsewhere. Label values are
bounded (reason constants, outcomes, phases, webhook, policy and rule names), never object
names, so cardinality stays small on large clusters. Durations are computed by pure functions
from status timestamps and a ``now`` passed in, so they are testable without a clock.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Sequence

import prometheus_client

from permafrost import models
from permafrost.models import Outcome
from permafrost.policies import policy
from permafrost.releases import conditions

REGISTRY = prometheus_client.CollectorRegistry()

# --- admission ----------------------------------------------------------------------------------

ADMISSION_DECISIONS = prometheus_client.Counter(
    "permafrost_admission_decisions_total",
    "Admission decisions of the operator's webhooks (dry runs excluded), by webhook, reason "
    "and result; policy and rule name the first violated rule of a PolicyViolation.",
    ["webhook", "reason", "result", "policy", "rule"],
    registry=REGISTRY,
)
ADMISSION_DURATION = prometheus_client.Histogram(
    "permafrost_admission_duration_seconds",
    "Time spent in a webhook handler per admission review (dry runs included).",
    ["webhook"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
BREAK_GLASS = prometheus_client.Counter(
    "permafrost_break_glass_total",
    "Mutations let through under break-glass and seen in the cluster (used), or refused; "
    "break-glass sessions opened on pods (session) and what they let in (exec, attach, "
    "portforward).",
    ["result"],
    registry=REGISTRY,
)
ADMISSION_SIDE_EFFECTS_DROPPED = prometheus_client.Counter(
    "permafrost_admission_side_effects_dropped_total",
    "Side effects of admission reviews (Events) dropped because too many were pending.",
    registry=REGISTRY,
)

# --- policies -----------------------------------------------------------------------------------

POLICY_RESULTS = prometheus_client.Counter(
    "permafrost_policy_results_total",
    "GuardrailPolicy rule results that did not pass, by stage, enforcement and outcome.",
    ["stage", "policy", "rule", "enforcement", "outcome"],
    registry=REGISTRY,
)
POLICY_ERRORS = prometheus_client.Counter(
    "permafrost_policy_evaluation_errors_total",
    "GuardrailPolicy rules that could not be evaluated (a runtime error, the cost budget, a "
    "policy that does not compile); an error never passes.",
    ["stage", "policy", "rule"],
    registry=REGISTRY,
)

# --- rollouts -----------------------------------------------------------------------------------

ROLLOUT_EVENTS = prometheus_client.Counter(
    "permafrost_rollout_events_total",
    "Rollout decisions of the planner (Promoted, RolledBack, Superseded, DriftRepaired, ...).",
    ["reason"],
    registry=REGISTRY,
)
GATE_MEASUREMENTS = prometheus_client.Counter(
    "permafrost_gate_measurements_total",
    "Measurements of promotion gates, by gate kind (http, prometheus, job) and phase (Successful, "
    "Failed, Inconclusive, Error).",
    ["kind", "phase"],
    registry=REGISTRY,
)
ROLLOUTS = prometheus_client.Counter(
    "permafrost_rollouts_total",
    "Verification attempts of a revision that ended, by outcome: Promoted, RolledBack (failed, "
    "traffic on the stable revision), Failed (failed with nothing to roll back to, or automatic "
    "rollback off), Superseded (a newer spec came first).",
    ["outcome"],
    registry=REGISTRY,
)
ROLLOUT_DURATION = prometheus_client.Histogram(
    "permafrost_rollout_duration_seconds",
    "From the start of a verification attempt (the revision's creation on a spec change, or a "
    "retry or manual rollback) to traffic on the new revision.",
    buckets=(5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600),
    registry=REGISTRY,
)
TIME_TO_ROLLBACK = prometheus_client.Histogram(
    "permafrost_time_to_rollback_seconds",
    "From the moment a revision's failure was detectable (its progress deadline, or when a "
    "crash loop or lost readiness was observed) to the failed revision scaled to 0 with "
    "traffic on the stable revision.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
RELEASES = prometheus_client.Gauge(
    "permafrost_releases",
    "GuardedReleases by the phase the operator last wrote (Stable, Progressing, Held, ...).",
    ["phase"],
    registry=REGISTRY,
)

# --- drift --------------------------------------------------------------------------------------

DRIFT_DETECTED = prometheus_client.Counter(
    "permafrost_drift_detected_total",
    "Frozen workloads found changed in place (the guards were bypassed), by scope: revision "
    "(a revision Deployment) or workload (an unmanaged workload in an enforced namespace).",
    ["scope"],
    registry=REGISTRY,
)
DRIFT_REPAIRED = prometheus_client.Counter(
    "permafrost_drift_repaired_total",
    "Drifted revision Deployments replaced by the operator, by scope.",
    ["scope"],
    registry=REGISTRY,
)


def count_admission(
    *,
    webhook: str,
    reason: str,
    allowed: bool,
    violations: Sequence[policy.RuleResult] = (),
) -> None:
    first = violations[0] if violations else None
    ADMISSION_DECISIONS.labels(
        webhook=webhook,
        reason=reason,
        result="allowed" if allowed else "denied",
        policy=first.policy if first else "",
        rule=first.rule if first else "",
    ).inc()


def time_admission(webhook: str) -> prometheus_client.context_managers.Timer:
    """A context manager that observes the time spent in one webhook handler."""
    return ADMISSION_DURATION.labels(webhook=webhook).time()


def count_policy_results(*, stage: str, results: Iterable[policy.RuleResult]) -> None:
    """Count what did not pass; errors also in ``permafrost_policy_evaluation_errors_total``."""
    for result in results:
        if result.outcome == "Pass":
            continue
        POLICY_RESULTS.labels(
            stage=stage,
            policy=result.policy,
            rule=result.rule,
            enforcement=result.enforcement,
            outcome=result.outcome,
        ).inc()
        if result.outcome == "Error":
            count_policy_errors(stage=stage, results=(result,))


def count_policy_errors(*, stage: str, results: Iterable[policy.RuleResult]) -> None:
    for result in results:
        if result.outcome == "Error":
            POLICY_ERRORS.labels(stage=stage, policy=result.policy, rule=result.rule).inc()


def count_drift(*, scope: str, reason: str) -> None:
    """Count a drift Event: ``DriftDetected`` (reported) or ``DriftRepaired`` (replaced)."""
    if reason in ("DriftDetected", "DriftRepaired"):
        DRIFT_DETECTED.labels(scope=scope).inc()
    if reason == "DriftRepaired":
        DRIFT_REPAIRED.labels(scope=scope).inc()


# --- rollouts: what ended in one reconcile pass, and how long it took ---------------------------


@dataclasses.dataclass(frozen=True)
class RolloutEnd:
    """A verification attempt that ended in one pass; durations in seconds where they apply."""

    revision: str
    outcome: str  # Promoted | RolledBack | Failed | Superseded
    reason: str
    duration: float | None = None  # Promoted: attempt start → traffic on the revision
    time_to_rollback: float | None = None  # RolledBack: detectable → scaled down


def rollout_ends(
    *,
    before: models.GuardedReleaseStatus,
    after: models.GuardedReleaseStatus,
    spec: models.GuardedReleaseSpec,
    planned_at: datetime.datetime,
    applied_at: datetime.datetime,
) -> list[RolloutEnd]:
    """The attempts that were Progressing in ``before`` and ended in ``after``.

    ``planned_at`` is the ``now`` the plan was made with (when a crash loop or lost readiness
    was observed); ``applied_at`` is when its actions (traffic switch, scale-down) were done.
    A failure at the progress deadline was detectable at the deadline itself.
    """
    old = {r.hash: r for r in before.revisions}
    ends: list[RolloutEnd] = []
    for record in after.revisions:
        previous = old.get(record.hash)
        if previous is None or previous.outcome != Outcome.PROGRESSING:
            continue
        started = conditions.parse_timestamp(record.attempt_started_at or record.created_at)
        if record.outcome == Outcome.STABLE:
            ends.append(
                RolloutEnd(
                    revision=record.hash,
                    outcome="Promoted",
                    reason=record.reason or "Verified",
                    duration=max((applied_at - started).total_seconds(), 0.0),
                )
            )
        elif record.outcome == Outcome.FAILED:
            reason = record.reason or conditions.REVISION_FAILED
            if not spec.rollback.automatic or after.stable_revision is None:
                ends.append(RolloutEnd(revision=record.hash, outcome="Failed", reason=reason))
                continue
            detectable = planned_at
            if reason == conditions.PROGRESS_DEADLINE_EXCEEDED:
                deadline = datetime.timedelta(seconds=spec.rollout.progress_deadline_seconds)
                detectable = min(started + deadline, planned_at)
            ends.append(
                RolloutEnd(
                    revision=record.hash,
                    outcome="RolledBack",
                    reason=reason,
                    time_to_rollback=max((applied_at - detectable).total_seconds(), 0.0),
                )
            )
        elif record.outcome == Outcome.SUPERSEDED:
            ends.append(
                RolloutEnd(
                    revision=record.hash, outcome="Superseded", reason=record.reason or "Superseded"
                )
            )
    return ends


def observe_rollout_ends(ends: Iterable[RolloutEnd]) -> None:
    for end in ends:
        ROLLOUTS.labels(outcome=end.outcome).inc()
        if end.duration is not None:
            ROLLOUT_DURATION.observe(end.duration)
        if end.time_to_rollback is not None:
            TIME_TO_ROLLBACK.observe(end.time_to_rollback)


# --- releases by phase --------------------------------------------------------------------------


class Phases:
    """The last phase written per release, kept as counts in a gauge (a release leaves its
    phase's count when it moves on or is deleted)."""

    def __init__(self, gauge: prometheus_client.Gauge) -> None:
        self._gauge = gauge
        self._phases: dict[tuple[str, str], str] = {}
        self._counts: dict[str, int] = {}

    def set(self, namespace: str, name: str, phase: str | None) -> None:
        key = (namespace, name)
        old = self._phases.get(key)
        if old == phase:
            return
        if old is not None:
            self._move(old, -1)
            del self._phases[key]
        if phase is not None:
            self._phases[key] = phase
            self._move(phase, +1)

    def forget(self, namespace: str, name: str) -> None:
        self.set(namespace, name, None)

    def count(self, phase: str) -> int:
        return self._counts.get(phase, 0)

    def _move(self, phase: str, delta: int) -> None:
        self._counts[phase] = self._counts.get(phase, 0) + delta
        self._gauge.labels(phase=phase).set(self._counts[phase])


PHASES = Phases(RELEASES)


def serve(*, port: int, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` from a background thread (the standard Prometheus client server)."""
    prometheus_client.start_http_server(port, addr=addr, registry=REGISTRY)
