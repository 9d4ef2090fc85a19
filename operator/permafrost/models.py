"""Typed models at the edges: the GuardedRelease resource and the values the core exchanges.

The spec models mirror ``crds/guardedrelease.yaml`` (a test keeps the two in agreement). They are
parsed once, at the edge, with ``extra="forbid"`` so a typo is an error, not a silently ignored
field, and serialised back with the camelCase names Kubernetes users see.

The pod template is kept as raw JSON (``dict``): the apiserver validates it against the real
PodTemplateSpec schema in the CRD, and Permafrost only reads the few fields it needs.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

import pydantic
from pydantic.alias_generators import to_camel

GROUP = "permafrost.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "GuardedRelease"
PLURAL = "guardedreleases"

# Labels and annotations Permafrost puts on what it creates, or reads from the release.
LABEL_RELEASE = "permafrost.dev/release"
LABEL_REVISION = "permafrost.dev/revision"
# The revision a release's Service selects while no revision is verified: no pod has it (revision
# names are hashes), so the Service selects nothing and no unverified pod takes traffic.
REVISION_NONE = "none"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_SNAPSHOT_OF = "permafrost.dev/snapshot-of"
ANNOTATION_TEMPLATE_HASH = "permafrost.dev/template-hash"
ANNOTATION_RETRY = "permafrost.dev/retry"
ANNOTATION_ROLLBACK_TO = "permafrost.dev/rollback-to"
ANNOTATION_ROLLBACK_FROM = "permafrost.dev/rollback-from"
# Admission and drift.
ANNOTATION_BREAK_GLASS = "permafrost.dev/break-glass"
ANNOTATION_BREAK_GLASS_ACCEPTED = "permafrost.dev/break-glass-accepted"
ANNOTATION_FINGERPRINT = "permafrost.dev/template-fingerprint"
ANNOTATION_DRIFT = "permafrost.dev/drift-detected-at"
LABEL_ENFORCE = "permafrost.dev/enforce"
# On a Service other than the release's: it is meant to reach every revision's pods (metrics).
ANNOTATION_SELECTS_UNVERIFIED = "permafrost.dev/selects-unverified-pods"
LABEL_DRIFT = "permafrost.dev/drift"
MANAGER = "permafrost"


class Model(pydantic.BaseModel):
    """Base of the resource models: camelCase on the wire, unknown fields refused, immutable."""

    model_config = pydantic.ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
    )

    def to_json(self) -> dict[str, Any]:
        """The object as Kubernetes JSON: camelCase, no ``None`` fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- spec --------------------------------------------------------------------------------------


class ConfigRef(Model):
    """A ConfigMap or Secret in the release's namespace, snapshotted into every revision."""

    kind: Literal["ConfigMap", "Secret"]
    name: str = pydantic.Field(min_length=1, max_length=253)


class ServicePort(Model):
    name: str | None = None
    port: int = pydantic.Field(ge=1, le=65535)
    target_port: int | str | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class ServiceSpec(Model):
    """The Service whose selector Permafrost switches to the stable revision.

    If it does not exist, Permafrost creates it with ``ports`` (default: port 80 to 8080).
    """

    name: str = pydantic.Field(min_length=1, max_length=63)
    ports: list[ServicePort] | None = None


class RolloutSpec(Model):
    progress_deadline_seconds: int = pydantic.Field(default=120, ge=1)
    min_ready_seconds: int = pydantic.Field(default=10, ge=0)
    scale_down_delay_seconds: int = pydantic.Field(default=30, ge=0)
    # A pod a break-glass session let an exec or attach into is replaced by a fresh pod of the
    # same revision once the session is over (false: it is only marked permafrost.dev/tainted).
    replace_tainted_pods: bool = True


class RollbackSpec(Model):
    automatic: bool = True


class GuardedReleaseSpec(Model):
    replicas: int = pydantic.Field(default=1, ge=0)
    template: dict[str, Any]
    config_refs: list[ConfigRef] = pydantic.Field(default_factory=list)
    service: ServiceSpec | None = None
    rollout: RolloutSpec = pydantic.Field(default_factory=RolloutSpec)
    rollback: RollbackSpec = pydantic.Field(default_factory=RollbackSpec)
    revision_history_limit: int = pydantic.Field(default=3, ge=0)


# --- status ------------------------------------------------------------------------------------


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(Model):
    """A Kubernetes API condition (type, status, reason, message, generation, transition)."""

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str


class Outcome(enum.StrEnum):
    """What became of a revision. ``Progressing`` is the only non-final outcome."""

    PROGRESSING = "Progressing"  # created, being verified
    STABLE = "Stable"  # serving traffic
    RETIRED = "Retired"  # served traffic, replaced by a newer stable revision
    FAILED = "Failed"  # failed verification; never served traffic
    SUPERSEDED = "Superseded"  # replaced by a newer spec before it was verified


class RevisionRecord(Model):
    """The history of one revision, kept in ``status.revisions`` (newest first)."""

    name: str
    hash: str
    images: list[str] = pydantic.Field(default_factory=list)
    outcome: Outcome
    reason: str | None = None
    message: str | None = None
    created_at: str
    # The current verification attempt: when it began, and the retry token it answers.
    attempt_started_at: str | None = None
    attempt: str | None = None
    # When every pod was first seen Ready in this attempt (for "became unready" detection).
    ready_since: str | None = None
    promoted_at: str | None = None
    retired_at: str | None = None
    # When the Service's EndpointSlices were first seen holding none of this retired revision's
    # pods (and the stable revision's ready ones): its scaleDownDelaySeconds counts from then.
    drained_at: str | None = None
    failed_at: str | None = None


class GuardedReleaseStatus(Model):
    observed_generation: int | None = None
    desired_revision: str | None = None
    stable_revision: str | None = None
    phase: str | None = None
    ready_replicas: str | None = None
    # The scale subresource's status (kubectl scale, HorizontalPodAutoscaler): the Ready pods of
    # the serving revision, and a label selector (as a string) of exactly its pods, which is
    # what an autoscaler's metrics are read from (pods of a revision in verification take no
    # traffic, so they are left out).
    replicas: int | None = pydantic.Field(default=None, ge=0)
    selector: str | None = None
    # The generation of the spec's last change other than spec.replicas, and a digest of the spec
    # without spec.replicas that tells a scale from any other change: a scale is no new attempt
    # of a failed revision.
    spec_generation: int | None = None
    spec_digest: str | None = None
    message: str | None = None
    conditions: list[Condition] = pydantic.Field(default_factory=list)
    revisions: list[RevisionRecord] = pydantic.Field(default_factory=list)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _ignore_foreign_fields(cls, data: Any) -> Any:
        # NB: Kopf keeps its own bookkeeping in status (e.g. handler results); the status model
        # reads only Permafrost's fields and leaves the rest alone instead of refusing them.
        if isinstance(data, dict):
            known = {f.alias or n for n, f in cls.model_fields.items()} | set(cls.model_fields)
            return {k: v for k, v in data.items() if k in known}
        return data


# --- GuardrailPolicy ---------------------------------------------------------------------------

POLICY_KIND = "GuardrailPolicy"
POLICY_PLURAL = "guardrailpolicies"
CONDITION_POLICY_COMPLIANT = "PolicyCompliant"
ANNOTATION_APPROVED_BY = "permafrost.dev/approved-by"
ARTIFACT_KIND = "Artifact"

Stage = Literal["build", "promote", "create"]
Enforcement = Literal["Enforce", "Warn", "Audit"]


class LabelSelectorRequirement(Model):
    key: str = pydantic.Field(min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None


class LabelSelector(Model):
    """A Kubernetes label selector (``matchLabels`` and ``matchExpressions`` are ANDed)."""

    match_labels: dict[str, str] | None = None
    match_expressions: list[LabelSelectorRequirement] | None = None


class PolicyMatch(Model):
    """What a policy applies to; every field given must match (absent: matches everything)."""

    namespace_selector: LabelSelector | None = None
    object_selector: LabelSelector | None = None
    kinds: list[str] | None = None


class PolicyRule(Model):
    name: str = pydantic.Field(
        min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    )
    expression: str = pydantic.Field(min_length=1, max_length=4096)
    message: str | None = pydantic.Field(default=None, max_length=1024)
    message_expression: str | None = pydantic.Field(default=None, max_length=4096)


class ImageVerification(Model):
    """Images whose repository matches one of ``images`` (globs: ``*`` within a path segment,
    ``**`` across) must carry a cosign signature by one of ``keys`` (PEM public keys: ECDSA
    P-256 or Ed25519). Judged like a rule named ``name``."""

    name: str = pydantic.Field(
        min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    )
    # NB: what each pattern and key may be is checked when the policy is compiled (and the
    # policy refused at admission with the reason), not by the schema.
    images: list[str] = pydantic.Field(min_length=1, max_length=32)
    keys: list[str] = pydantic.Field(min_length=1, max_length=16)


class GuardrailPolicySpec(Model):
    stages: list[Stage] = pydantic.Field(min_length=1)
    enforcement: Enforcement = "Enforce"
    match: PolicyMatch = pydantic.Field(default_factory=PolicyMatch)
    rules: list[PolicyRule] = pydantic.Field(default_factory=list, max_length=64)
    # Signatures the images must carry (verified by the operator and `permafrost check`, never
    # at admission: docs/policies.md, "Signatures").
    verify_images: list[ImageVerification] = pydantic.Field(default_factory=list, max_length=16)

    @pydantic.model_validator(mode="after")
    def _judges_something(self) -> GuardrailPolicySpec:
        if not self.rules and not self.verify_images:
            raise ValueError("a policy needs rules, verifyImages or both")
        return self
