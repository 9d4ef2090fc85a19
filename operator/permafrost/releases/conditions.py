"""Status conditions of a GuardedRelease: types, reasons, and how they are updated.

Follows the Kubernetes API conventions: every condition is set on every visit (``Unknown`` if need
be), ``reason`` is one CamelCase word from the constants below, and ``lastTransitionTime`` only
moves when ``status`` flips (a new reason or message alone does not move it).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence

from permafrost.models import Condition, ConditionStatus

# Condition types.
READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
ROLLED_BACK = "RolledBack"
POLICY_COMPLIANT = "PolicyCompliant"
TRAFFIC_GUARDED = "TrafficGuarded"
TYPES = (READY, PROGRESSING, DEGRADED, ROLLED_BACK, POLICY_COMPLIANT, TRAFFIC_GUARDED)

# Reasons.
ALL_REPLICAS_READY = "AllReplicasReady"
REPLICAS_NOT_READY = "ReplicasNotReady"
NO_STABLE_REVISION = "NoStableRevision"
ROLLOUT_IN_PROGRESS = "RolloutInProgress"
ROLLOUT_COMPLETE = "RolloutComplete"
CONFIG_NOT_FOUND = "ConfigNotFound"
ROLLBACK_TARGET_NOT_FOUND = "RollbackTargetNotFound"
REVISION_FAILED = "RevisionFailed"
AS_EXPECTED = "AsExpected"
NO_ROLLBACK = "NoRollback"
MANUAL_ROLLBACK = "ManualRollback"
AUTOMATIC_ROLLBACK_DISABLED = "AutomaticRollbackDisabled"
# Policies.
POLICY_VIOLATION = "PolicyViolation"
PROMOTION_HELD = "PromotionHeld"
# NB: an Enforce violation by a release whose revision already runs (a policy tightened after
# it was created): reported, never a reason to stop what runs; the phase is not Held.
ENFORCED_POLICY_VIOLATED = "EnforcedPolicyViolated"
# The registry check before a revision is created (permafrost run --registry-check): the same
# values as permafrost.artifacts.images' outcomes.
IMAGE_NOT_FOUND = "ImageNotFound"
REGISTRY_UNREACHABLE = "RegistryUnreachable"
INVALID_IMAGE = "InvalidImage"
IMAGE_PLATFORM_MISSING = "ImagePlatformMissing"
REGISTRY_UNAUTHORIZED = "RegistryUnauthorized"
PULL_SECRET_MISSING = "PullSecretMissing"
PULL_SECRET_INVALID = "PullSecretInvalid"
PULL_SECRET_FORBIDDEN = "PullSecretForbidden"
REGISTRY_CHECK_FORBIDDEN = "RegistryCheckForbidden"
# A GuardrailPolicy's verifyImages (docs/policies.md, "Signatures"): the same values as
# permafrost.artifacts.signatures' outcomes.
IMAGE_NOT_SIGNED = "ImageNotSigned"
SIGNATURE_UNTRUSTED = "SignatureUntrusted"
SIGNATURE_INVALID = "SignatureInvalid"
IMAGE_NOT_PINNED = "ImageNotPinned"
# A verifyImages entry's attestations (docs/policies.md, "Attestations"): the same values as
# permafrost.artifacts.attestations' outcomes.
ATTESTATION_MISSING = "AttestationMissing"
ATTESTATION_UNTRUSTED = "AttestationUntrusted"
ATTESTATION_INVALID = "AttestationInvalid"
POLICY_NOT_PASSED = "PolicyNotPassed"
# The reasons of PolicyCompliant=False that hold a rollout (phase Held).
HOLDING_REASONS = frozenset(
    {
        POLICY_VIOLATION,
        PROMOTION_HELD,
        IMAGE_NOT_FOUND,
        REGISTRY_UNREACHABLE,
        INVALID_IMAGE,
        IMAGE_PLATFORM_MISSING,
        REGISTRY_UNAUTHORIZED,
        PULL_SECRET_MISSING,
        PULL_SECRET_INVALID,
        PULL_SECRET_FORBIDDEN,
        REGISTRY_CHECK_FORBIDDEN,
        IMAGE_NOT_SIGNED,
        SIGNATURE_UNTRUSTED,
        SIGNATURE_INVALID,
        IMAGE_NOT_PINNED,
        ATTESTATION_MISSING,
        ATTESTATION_UNTRUSTED,
        ATTESTATION_INVALID,
        POLICY_NOT_PASSED,
    }
)
POLICY_WARNINGS = "PolicyWarnings"
ALL_POLICIES_PASS = "AllPoliciesPass"
NO_POLICY_APPLIES = "NoPolicyApplies"
NO_POLICY_ENGINE = "NoPolicyEngine"
# Services (TrafficGuarded).
SERVICE_ROUTED = "ServiceRouted"
SERVICE_CREATED = "ServiceCreated"
SERVICE_NOT_FOUND = "ServiceNotFound"
NO_SERVICE = "NoService"
UNGUARDED_SERVICE = "UnguardedService"
# Why a revision failed verification (also used as reasons of Degraded/RolledBack and Events).
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
CRASH_LOOP = "CrashLoop"
BECAME_UNREADY = "BecameUnready"
# Promotion gates (spec.rollout.gates): Events for each gate's verdict; GateFailed and
# GatesNotPassed (by the progress deadline) fail the revision, as reasons of Degraded and
# RolledBack; GateInconclusive and GateMisconfigured hold it (Progressing=False, phase Held).
GATE_PASSED = "GatePassed"
GATE_FAILED = "GateFailed"
GATE_INCONCLUSIVE = "GateInconclusive"
GATE_MISCONFIGURED = "GateMisconfigured"
GATES_NOT_PASSED = "GatesNotPassed"
GATE_HOLDING_REASONS = frozenset({GATE_INCONCLUSIVE, GATE_MISCONFIGURED})
# Analysis after promotion (spec.rollout.postPromotionSeconds): passed (an Event), or failed —
# a gate failed, or not all passed within the window — and traffic switched back.
ANALYSIS_PASSED = "AnalysisPassed"
ANALYSIS_FAILED = "AnalysisFailed"
ANALYSIS_NOT_PASSED = "AnalysisNotPassed"


def timestamp(moment: datetime.datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes ``metav1.Time``."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def make(
    *,
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    previous: Sequence[Condition],
    now: datetime.datetime,
) -> Condition:
    """A condition; keeps the previous ``lastTransitionTime`` unless ``status`` flipped."""
    before = next((c for c in previous if c.type == type_), None)
    moved = before is None or before.status != status
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=timestamp(now)
        if moved or before is None
        else before.last_transition_time,
    )


def find(conditions: Iterable[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: Iterable[Condition], type_: str) -> bool:
    cond = find(conditions, type_)
    return cond is not None and cond.status == ConditionStatus.TRUE
