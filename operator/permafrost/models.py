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
# On the Jobs of job gates and their pods: the release and revision they judge, the gate. NB:
# never permafrost.dev/release or /revision: those would put a gate's pod behind the Service.
LABEL_GATE_OF = "permafrost.dev/gate-of"
LABEL_GATE_REVISION = "permafrost.dev/gate-revision"
LABEL_GATE = "permafrost.dev/gate"
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
    With ``preview``, Permafrost also keeps a Service ``<name>-preview`` (owned by the release,
    the same ports) that selects the pods of the revision being verified, and none otherwise:
    the HTTP gates, and people, reach the candidate through it before it takes traffic.
    """

    name: str = pydantic.Field(min_length=1, max_length=63)
    ports: list[ServicePort] | None = None
    preview: bool = False


# --- promotion gates ---------------------------------------------------------------------------

# How many measurements of a gate the status keeps (the newest); the counts cover them all.
GATE_MEASUREMENTS_KEPT = 10
MAX_GATES = 16
GATE_KINDS = ("http", "prometheus", "job")


class HttpGate(Model):
    """GET a path of the revision being verified, through the preview Service.

    A measurement is Successful when the answer has ``expectedStatus`` (and, with ``bodyRegex``,
    a body in which the regular expression is found), Failed on any other answer, and Error when
    no answer came (refused, reset, timed out).
    """

    # The name or number of a port of the release's Service (and so of the preview Service).
    port: int | str = "http"
    path: str = pydantic.Field(default="/", min_length=1, max_length=1024, pattern=r"^/")
    expected_status: int = pydantic.Field(default=200, ge=100, le=599)
    body_regex: str | None = pydantic.Field(default=None, max_length=1024)
    timeout_seconds: int = pydantic.Field(default=5, ge=1, le=60)


class PrometheusGate(Model):
    """Run a PromQL query; its single scalar or one-sample vector is ``result`` (a double) in
    the CEL expression ``successCondition``, e.g. ``result < 0.05``."""

    address: str = pydantic.Field(min_length=1, max_length=1024, pattern=r"^https?://")
    query: str = pydantic.Field(min_length=1, max_length=4096)
    success_condition: str = pydantic.Field(min_length=1, max_length=1024)
    timeout_seconds: int = pydantic.Field(default=10, ge=1, le=60)


class JobGate(Model):
    """Run a Job to completion: Successful if it completes, Failed if its pods fail past
    ``backoffLimit``, Error (unknown) if it is still running at ``activeDeadlineSeconds``.

    ``template`` is a core/v1 PodTemplateSpec, as in ``spec.template``: its images must be
    pinned by digest, and the Job is judged at admission like any workload of the namespace.
    Its containers get ``PERMAFROST_RELEASE``, ``PERMAFROST_NAMESPACE``, ``PERMAFROST_REVISION``,
    ``PERMAFROST_STAGE`` (``gates`` or ``analysis``) and, once it routes to the revision,
    ``PERMAFROST_TARGET_URL`` (``http://<address>:<port>`` of the preview Service before the
    promotion, of the release's Service after it; the Service's first port).
    """

    template: dict[str, Any]
    active_deadline_seconds: int = pydantic.Field(default=60, ge=1, le=3600)
    backoff_limit: int = pydantic.Field(default=0, ge=0, le=6)


class Gate(Model):
    """A check a revision must pass before it takes traffic: ``count`` measurements, one every
    ``intervalSeconds``, exactly one kind (``http``, ``prometheus`` or ``job``).

    Verdict: Failed once more than ``failureLimit`` measurements failed; Inconclusive once more
    than ``inconclusiveLimit`` were unknown (inconclusive or errored: unknown is never healthy);
    Passed once ``count`` were taken without either, at least one of them Successful.
    """

    name: str = pydantic.Field(
        min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    )
    http: HttpGate | None = None
    prometheus: PrometheusGate | None = None
    job: JobGate | None = None
    count: int = pydantic.Field(default=3, ge=1, le=1000)
    interval_seconds: int = pydantic.Field(default=5, ge=1, le=3600)
    failure_limit: int = pydantic.Field(default=0, ge=0, le=1000)
    inconclusive_limit: int = pydantic.Field(default=0, ge=0, le=1000)

    @pydantic.model_validator(mode="after")
    def _one_kind(self) -> Gate:
        kinds = [k for k in GATE_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"gate {self.name}: exactly one of http, prometheus and job must be set"
                + (f" (not {' and '.join(kinds)})" if kinds else "")
            )
        return self

    @property
    def kind(self) -> Literal["http", "prometheus", "job"]:
        if self.http is not None:
            return "http"
        return "prometheus" if self.prometheus is not None else "job"


class RolloutSpec(Model):
    progress_deadline_seconds: int = pydantic.Field(default=120, ge=1)
    min_ready_seconds: int = pydantic.Field(default=10, ge=0)
    scale_down_delay_seconds: int = pydantic.Field(default=30, ge=0)
    # Checks the revision must pass, once its pods are Ready for minReadySeconds, before it is
    # promoted; they run within progressDeadlineSeconds.
    gates: list[Gate] = pydantic.Field(default_factory=list, max_length=MAX_GATES)
    # Analysis after promotion: for up to this long after a revision is promoted, its gates run
    # again (http ones through the release's Service) while the previous revision stays up; a
    # gate that fails, or not all passed by the end, switches traffic back to it at once.
    # 0: no analysis after promotion.
    post_promotion_seconds: int = pydantic.Field(default=0, ge=0, le=86400)

    @pydantic.model_validator(mode="after")
    def _gates_fit(self) -> RolloutSpec:
        # NB: the CRD says the same (a list-map keyed by name, and a CEL rule): this is for
        # `permafrost check` and for a spec read before the CRD was updated.
        names = [g.name for g in self.gates]
        if len(set(names)) != len(names):
            raise ValueError(f"gate names must be unique: {names}")
        for g in self.gates:
            if g.count * g.interval_seconds >= self.progress_deadline_seconds:
                raise ValueError(
                    f"gate {g.name}: count x intervalSeconds ({g.count * g.interval_seconds}s) "
                    f"must be less than progressDeadlineSeconds "
                    f"({self.progress_deadline_seconds}s): the gates run within it"
                )
            if (
                g.job is not None
                and g.job.active_deadline_seconds >= self.progress_deadline_seconds
            ):
                raise ValueError(
                    f"gate {g.name}: job.activeDeadlineSeconds ({g.job.active_deadline_seconds}s) "
                    f"must be less than progressDeadlineSeconds "
                    f"({self.progress_deadline_seconds}s): the gates run within it"
                )
        return self

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


class MeasurementPhase(enum.StrEnum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"  # no answer at all: counts as unknown, never as healthy


class GateVerdict(enum.StrEnum):
    RUNNING = "Running"
    PASSED = "Passed"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    MISCONFIGURED = "Misconfigured"  # the gate cannot measure anything (bad CEL, bad query…)


class Measurement(Model):
    """One measurement of a gate: when, what it concluded, the value or why."""

    at: str
    phase: MeasurementPhase
    value: str | None = None
    reason: str | None = None  # CamelCase, e.g. HTTPStatus, PrometheusUnreachable, QueryInvalid
    message: str | None = None


class GateRecord(Model):
    """A gate of one verification attempt of a revision, in ``status.revisions[].gates``."""

    name: str
    kind: str
    verdict: GateVerdict = GateVerdict.RUNNING
    message: str | None = None
    # A digest of the gate's spec: a gate changed mid-verification starts afresh.
    spec_digest: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    successful: int = 0
    failed: int = 0
    inconclusive: int = 0
    errors: int = 0
    measurements: list[Measurement] = pydantic.Field(default_factory=list)


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
    # The promotion gates of the current attempt (spec.rollout.gates), in the spec's order.
    gates: list[GateRecord] = pydantic.Field(default_factory=list)
    # The revision this one replaced when it was promoted (traffic goes back to it if the
    # analysis after promotion fails), the gates of that analysis, and when it passed.
    previous: str | None = None
    analysis: list[GateRecord] = pydantic.Field(default_factory=list)
    analyzed_at: str | None = None


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


class AttestationRequirement(Model):
    """The images must also carry a guardrails attestation (``permafrost check --stage build
    --attest``) signed by one of ``keys`` (default: the entry's keys) whose predicate says the
    build-stage GuardrailPolicy ``policy`` passed, with the spec digest ``policyDigest`` when
    given (docs/policies.md, "Attestations")."""

    policy: str = pydantic.Field(
        min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    policy_digest: str | None = pydantic.Field(default=None, pattern=r"^sha256:[a-f0-9]{64}$")
    keys: list[str] | None = pydantic.Field(default=None, min_length=1, max_length=16)


class ImageVerification(Model):
    """Images whose repository matches one of ``images`` (globs: ``*`` within a path segment,
    ``**`` across) must carry a cosign signature by one of ``keys`` (PEM public keys: ECDSA
    P-256 or Ed25519) and, for each of ``attestations``, a guardrails attestation. Judged like
    a rule named ``name``."""

    name: str = pydantic.Field(
        min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    )
    # NB: what each pattern and key may be is checked when the policy is compiled (and the
    # policy refused at admission with the reason), not by the schema.
    images: list[str] = pydantic.Field(min_length=1, max_length=32)
    keys: list[str] = pydantic.Field(min_length=1, max_length=16)
    attestations: list[AttestationRequirement] = pydantic.Field(default_factory=list, max_length=8)


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
