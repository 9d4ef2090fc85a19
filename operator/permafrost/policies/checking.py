"""``permafrost check``: policies evaluated offline over manifests, for CI pipelines. Pure.

The caller reads the files; this module parses them, evaluates the policies with the same
engine and the same subjects as the cluster does, and renders the report as a table for
people or as JSON for machines (the JSON shape is documented in ``docs/policies.md`` and kept
stable: fields are only ever added).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from permafrost import models
from permafrost.artifacts import attestations, signatures
from permafrost.policies import documents, policy

CHECKABLE_KINDS = (
    "GuardedRelease",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "Pod",
    models.ARTIFACT_KIND,
)
# Kinds that run nothing: skipped (and listed as such), so a whole manifest directory can be
# checked. Any other kind is unusable input: a typo must not pass silently.
SKIPPED_KINDS = frozenset(
    {
        "ConfigMap",
        "Secret",
        "Service",
        "ServiceAccount",
        "Namespace",
        "Ingress",
        "IngressClass",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PersistentVolumeClaim",
        "StorageClass",
        "PriorityClass",
        "LimitRange",
        "ResourceQuota",
        "Endpoints",
        "EndpointSlice",
        "GuardrailPolicy",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    }
)
# Kinds that run pods but that Permafrost does not guard (admission judges GuardedReleases,
# Deployments, StatefulSets, DaemonSets and Pods): skipped too, saying so, so that `check` gives
# the cluster's verdict and a manifest directory holding a Job can still be checked.
UNGUARDED_KINDS = frozenset({"Job", "CronJob", "ReplicaSet", "ReplicationController"})
EXIT_OK, EXIT_VIOLATION, EXIT_UNUSABLE = 0, 1, 2


def skip_reason(kind: str) -> str:
    """Why a document of ``kind`` is skipped (in the table and the JSON ``reason``)."""
    return "not guarded by Permafrost" if kind in UNGUARDED_KINDS else "runs nothing"


@dataclasses.dataclass(frozen=True)
class Checked:
    document: documents.Document
    verdict: policy.Verdict


@dataclasses.dataclass(frozen=True)
class Report:
    stage: str
    checked: tuple[Checked, ...]
    policies: tuple[str, ...]
    skipped: tuple[documents.Document, ...] = ()

    @property
    def exit_code(self) -> int:
        return EXIT_VIOLATION if any(c.verdict.violations for c in self.checked) else EXIT_OK


def load_policies(sources: Sequence[tuple[str, str]]) -> list[policy.Policy]:
    """Compile the GuardrailPolicies in ``(source, text)`` files; :class:`InputError` if bad."""
    compiled: dict[str, policy.Policy] = {}
    for source, text in sources:
        docs = documents.load_all(text, source=source)
        try:
            for name, spec in policy.parse_policies([d.body for d in docs]):
                if name in compiled:
                    raise documents.InputError(f"{source}: policy {name!r} is defined twice")
                compiled[name] = policy.compile_policy(name, spec)
        except policy.PolicyError as exc:
            raise documents.InputError(f"{source}: {exc}") from None
    return list(compiled.values())


def subject_of(
    body: Mapping[str, Any],
    *,
    namespace: Mapping[str, Any] | None = None,
    stable: Mapping[str, Any] | None = None,
    old: Mapping[str, Any] | None = None,
) -> policy.Subject:
    """The subject a rule sees for a manifest, the same offline and in the cluster."""
    artifact = body if body.get("kind") == models.ARTIFACT_KIND else None
    return policy.Subject(
        object=body, old_object=old, stable=stable, namespace=namespace, artifact=artifact
    )


def _subjects(
    *,
    inputs: Sequence[tuple[str, str]],
    namespace: Mapping[str, Any] | None,
    stable: Mapping[str, Any] | None,
) -> Iterator[tuple[documents.Document, policy.Subject | None]]:
    """Every document of the inputs with the subject rules see (None: skipped).

    Raises :class:`documents.InputError` for unusable input (bad YAML, an unsupported kind).
    """
    for source, text in inputs:
        for doc in documents.load_all(text, source=source):
            if doc.kind in SKIPPED_KINDS or doc.kind in UNGUARDED_KINDS:
                yield doc, None
                continue
            if doc.kind not in CHECKABLE_KINDS:
                raise documents.InputError(
                    f"{doc.where}: kind {doc.kind or '(none)'!r} cannot be checked; expected "
                    f"one of {', '.join(CHECKABLE_KINDS)}"
                )
            ns = namespace
            if ns is None:
                name = str((doc.body.get("metadata") or {}).get("namespace") or "")
                ns = {"name": name, "labels": {}}
            yield doc, subject_of(doc.body, namespace=ns, stable=stable)


def image_requirements(
    *,
    inputs: Sequence[tuple[str, str]],
    policies: Sequence[policy.Policy],
    stage: models.Stage,
    namespace: Mapping[str, Any] | None = None,
    stable: Mapping[str, Any] | None = None,
) -> tuple[policy.ImageRequirement, ...]:
    """What the policies' ``verifyImages`` entries require of the inputs' images: the caller
    verifies them (the registry adapter) and gives the verdicts to :func:`check`."""
    found: list[policy.ImageRequirement] = []
    for _, subject in _subjects(inputs=inputs, namespace=namespace, stable=stable):
        if subject is not None:
            found += policy.image_requirements(policies, stage=stage, subject=subject)
    return tuple(found)


def check(
    *,
    inputs: Sequence[tuple[str, str]],
    policies: Sequence[policy.Policy],
    stage: models.Stage,
    now: datetime.datetime,
    namespace: Mapping[str, Any] | None = None,
    stable: Mapping[str, Any] | None = None,
    verifications: Mapping[attestations.VerificationKey, signatures.Verification] | None = None,
) -> Report:
    """Evaluate ``policies`` at ``stage`` on every document of every ``(source, text)`` input.

    The ``verifyImages`` entries are judged from ``verifications`` (see
    :func:`image_requirements`); an image without one is an error, never a pass.

    Raises :class:`documents.InputError` for unusable input (bad YAML, an unsupported kind).
    """
    checked, skipped = [], []
    for doc, subject in _subjects(inputs=inputs, namespace=namespace, stable=stable):
        if subject is None:
            skipped.append(doc)
            continue
        verdict = policy.evaluate(policies, stage=stage, now=now, subject=subject)
        required = policy.image_requirements(policies, stage=stage, subject=subject)
        if required:
            verdict = policy.with_results(
                verdict, policy.signature_results(required, verifications or {})
            )
        checked.append(Checked(doc, verdict))
    return Report(
        stage=stage,
        checked=tuple(checked),
        policies=tuple(sorted(p.name for p in policies)),
        skipped=tuple(skipped),
    )


def to_json(report: Report) -> dict[str, Any]:
    return {
        "stage": report.stage,
        "policies": list(report.policies),
        "inputs": [
            {
                "source": c.document.source,
                "document": c.document.index,
                "kind": c.document.kind,
                "name": c.document.name,
                "allowed": c.verdict.allowed,
                "results": [r.to_json() for r in c.verdict.results],
            }
            for c in report.checked
        ],
        "skipped": [
            {
                "source": d.source,
                "document": d.index,
                "kind": d.kind,
                "name": d.name,
                "reason": skip_reason(d.kind),
            }
            for d in report.skipped
        ],
        "violations": sum(len(c.verdict.violations) for c in report.checked),
        "warnings": sum(len(c.verdict.warnings) for c in report.checked),
        "audits": sum(len(c.verdict.audits) for c in report.checked),
    }


def render_json(report: Report) -> str:
    return json.dumps(to_json(report), indent=2, sort_keys=False)


def render_table(report: Report) -> str:
    """A human report: one block per input, failing rules first, then a summary line."""
    lines: list[str] = []
    for c in report.checked:
        title = f"{c.document.where}  {c.document.kind}/{c.document.name or '(unnamed)'}"
        status = "DENIED" if c.verdict.violations else "ok"
        lines.append(f"{title}  [{status}]")
        failing = [r for r in c.verdict.results if r.outcome != "Pass"]
        if not c.verdict.results:
            lines.append("  (no policy applies at this stage)")
        for r in failing:
            lines.append(
                f"  {r.outcome.upper():5} {r.enforcement:7} {r.policy}/{r.rule}: {r.message}"
            )
        passed = len(c.verdict.results) - len(failing)
        if passed:
            lines.append(f"  {passed} rule(s) passed")
    for d in report.skipped:
        lines.append(
            f"{d.where}  {d.kind}/{d.name or '(unnamed)'}  [skipped: {skip_reason(d.kind)}]"
        )
    data = to_json(report)
    lines.append(
        f"{len(report.checked)} input(s), stage {report.stage}: {data['violations']} "
        f"violation(s), {data['warnings']} warning(s), {data['audits']} audit(s)"
    )
    return "\n".join(lines)


# --- guardrail attestations (permafrost check --stage build --attest) -------------------------


def approved_images(
    report: Report, *, policies: Sequence[policy.Policy]
) -> dict[str, tuple[attestations.PolicyRecord, ...]]:
    """What a build-stage report approves, to be attested: ``{image: the policies that judged
    it}``, for every image of every checked input (an image in several inputs: each policy
    once, passed only if it passed for all of them). Empty unless the report allows
    everything (nothing is attested from a verdict that denies); an image that no policy
    judged is left out (an attestation of nothing says nothing)."""
    if report.exit_code != EXIT_OK:
        return {}
    digests = {p.name: p.digest for p in policies}
    found: dict[str, dict[str, attestations.PolicyRecord]] = {}
    for c in report.checked:
        judged: dict[str, attestations.PolicyRecord] = {}
        for r in c.verdict.results:
            before = judged.get(r.policy)
            passed = r.outcome == "Pass" and (before is None or before.passed)
            judged[r.policy] = attestations.PolicyRecord(
                name=r.policy,
                enforcement=r.enforcement,
                digest=digests.get(r.policy, ""),
                passed=passed,
            )
        if not judged:
            continue
        for image in policy.images_of(policy.Subject(object=c.document.body)):
            mine = found.setdefault(image, {})
            for name, record in judged.items():
                earlier = mine.get(name)
                mine[name] = (
                    record
                    if earlier is None
                    else dataclasses.replace(record, passed=record.passed and earlier.passed)
                )
    return {image: tuple(records.values()) for image, records in found.items()}
