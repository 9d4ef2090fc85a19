"""Admission guardrails: which mutations of frozen workloads are denied, and why. Pure.

A workload is *frozen* when Permafrost manages it (it carries ``permafrost.dev/release``: a
revision Deployment, its ReplicaSets and Pods) or when its namespace opted in with the label
``permafrost.dev/enforce=true`` (every Deployment, StatefulSet, DaemonSet, ReplicationController,
Job and CronJob, their ReplicaSets and Pods). What runs in a frozen workload never changes in
place:

- workloads and ReplicaSets: ``spec.template`` (a CronJob's ``spec.jobTemplate``) and
  ``spec.selector`` are frozen (this covers ``kubectl set image/env/resources``, ``edit``,
  ``patch``, ``apply``, ``replace`` and ``rollout restart``);
- Pods: container and init-container images are frozen, and no ephemeral container may be
  added (``kubectl debug``).
- Pods: nobody execs, attaches or port-forwards into them without a break-glass session
  (decided in :mod:`permafrost.guards.sessions`; the webhook and fail-safe configuration are here).

Everything else is allowed: scaling, metadata that does not change what runs, deletion.

Wherever Permafrost guards (every namespace but the excluded ones), the labels a managed Service
selects a verified revision's pods by are reserved (:func:`reserved`): only kube-controller-manager
creates pods that carry them, and nobody adds them to a pod or a pod template; in enforced
namespaces only the EndpointSlice controllers write a Service's EndpointSlices.
Exempt users (the operator's own service account) are always allowed. A *break-glass*
annotation, set in the same request by a member of a break-glass group, lets one mutation
through; it is reported as an Event. The same rules, minus the Events, are enforced by a
ValidatingAdmissionPolicy inside the apiserver (see :func:`policy_manifests`), so they hold
even when the operator is down.

Nothing here does I/O: the webhook shell parses the AdmissionReview into a :class:`Request`,
calls :func:`review`, and answers with the :class:`Decision`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal

from permafrost import models
from permafrost.releases import hashing

ANNOTATION_BREAK_GLASS = models.ANNOTATION_BREAK_GLASS
LABEL_ENFORCE = models.LABEL_ENFORCE

WORKLOAD_KINDS = frozenset(
    {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job"}
)
TOP_LEVEL_KINDS = frozenset(
    {"Deployment", "StatefulSet", "DaemonSet", "ReplicationController", "Job", "CronJob"}
)
# Kinds whose pods come from a template: its labels are the pods' labels.
TEMPLATE_KINDS = WORKLOAD_KINDS | {"CronJob"}
# The labels a managed Service selects a revision's pods by.
REVISION_LABELS = (models.LABEL_RELEASE, models.LABEL_REVISION)
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
# Who kube-controller-manager's controllers act as: each controller as its own ServiceAccount
# (--use-service-account-credentials, as kubeadm, kind and managed clusters run it), else the
# controller manager's own user.
CONTROLLER_USERS = frozenset(
    {
        "system:kube-controller-manager",
        "system:serviceaccount:kube-system:replicaset-controller",
        "system:serviceaccount:kube-system:deployment-controller",
        "system:serviceaccount:kube-system:endpointslice-controller",
        "system:serviceaccount:kube-system:endpointslicemirroring-controller",
    }
)
DIGEST = re.compile(r"@sha256:[a-f0-9]{64}$|@sha512:[a-f0-9]{128}$")

# Reasons (Events, admission responses, metrics).
TEMPLATE_FROZEN = "TemplateFrozen"
SELECTOR_FROZEN = "SelectorFrozen"
LABELS_FROZEN = "LabelsFrozen"
IMAGE_FROZEN = "ImageFrozen"
EPHEMERAL_CONTAINERS_DENIED = "EphemeralContainersDenied"
BREAK_GLASS_USED = "BreakGlassUsed"
BREAK_GLASS_REFUSED = "BreakGlassRefused"
UNPINNED_IMAGE = "UnpinnedImage"
REVISION_LABELS_RESERVED = "RevisionLabelsReserved"
ENDPOINTS_RESERVED = "EndpointsReserved"
POD_IP_FROZEN = "PodIPFrozen"
NOT_FROZEN = "NotFrozen"
NO_CHANGE = "NoChange"
EXEMPT = "Exempt"
DRIFT_DETECTED = "DriftDetected"
DRIFT_REPAIRED = "DriftRepaired"
BREAK_GLASS_ACCEPTED = "BreakGlassAccepted"

# NB: "unenforced": an object Permafrost does not manage in a namespace that did not opt in;
# nothing there is frozen, only the revision labels are reserved.
Scope = Literal["managed", "enforced", "unenforced"]


@dataclasses.dataclass(frozen=True)
class Settings:
    """Who may do what; the same values go into the ValidatingAdmissionPolicy."""

    exempt_users: frozenset[str] = frozenset()
    break_glass_groups: frozenset[str] = frozenset({"permafrost:break-glass"})
    excluded_namespaces: frozenset[str] = frozenset({"kube-system"})
    # Port-forward into frozen pods for everyone (read-only debugging; exec and attach never).
    allow_port_forward: bool = False
    # kube-controller-manager's identities: the only creators of a revision's ReplicaSets and
    # pods (besides exempt users) and the only writers of a Service's EndpointSlices.
    controller_users: frozenset[str] = CONTROLLER_USERS


@dataclasses.dataclass(frozen=True)
class Request:
    """An admission request, parsed from an AdmissionReview by the webhook shell."""

    scope: Scope
    kind: str
    operation: str
    subresource: str | None
    namespace: str
    name: str
    username: str
    groups: tuple[str, ...]
    old: Mapping[str, Any] | None
    new: Mapping[str, Any] | None
    dry_run: bool = False


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    message: str = ""
    warnings: tuple[str, ...] = ()
    # An Event to record on the object (None: nothing worth reporting).
    event_type: Literal["Normal", "Warning"] | None = None


def _field(obj: Any, key: str) -> Mapping[str, Any]:
    """``obj[key]`` if both are mappings, else empty.

    NB: the apiserver only sends objects that passed their schema, but the webhook must not
    fail on any body it is sent (a handler failure would deny with a 500)."""
    value = obj.get(key) if isinstance(obj, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def _annotations(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    return {k: str(v) for k, v in _field(_field(obj, "metadata"), "annotations").items()}


def _labels(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    return {k: str(v) for k, v in _field(_field(obj, "metadata"), "labels").items()}


def _spec(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return _field(obj, "spec")


def _images(pod_spec: Mapping[str, Any], key: str) -> list[str]:
    containers = pod_spec.get(key)
    if not isinstance(containers, list):
        return [] if not containers else [repr(containers)]  # NB: never equal to a real list
    return [str(c.get("image", "")) if isinstance(c, Mapping) else repr(c) for c in containers]


def frozen_changes(request: Request) -> list[tuple[str, str]]:
    """What in the request would change what runs: ``[(reason, description)]``, empty if none."""
    old, new = _spec(request.old), _spec(request.new)
    changes: list[tuple[str, str]] = []
    # NB: a pod's labels change through pods/status too (the apiserver keeps them from it).
    if request.subresource in (None, "status"):
        old_labels, new_labels = _labels(request.old), _labels(request.new)
        for label in (models.LABEL_RELEASE, models.LABEL_REVISION):
            if label in old_labels and new_labels.get(label) != old_labels[label]:
                changes.append((LABELS_FROZEN, f"changes its {label} label"))
    if request.kind == "Pod":
        if request.subresource == "ephemeralcontainers":
            if (old.get("ephemeralContainers") or []) != (new.get("ephemeralContainers") or []):
                changes.append((EPHEMERAL_CONTAINERS_DENIED, "adds an ephemeral container"))
        elif request.subresource is None:
            for key in ("containers", "initContainers"):
                if _images(old, key) != _images(new, key):
                    changes.append((IMAGE_FROZEN, f"changes the images of spec.{key}"))
    elif request.kind == "CronJob" and request.subresource is None:
        if old.get("jobTemplate") != new.get("jobTemplate"):
            changes.append((TEMPLATE_FROZEN, "changes spec.jobTemplate"))
    elif request.kind in WORKLOAD_KINDS and request.subresource is None:
        if old.get("template") != new.get("template"):
            changes.append((TEMPLATE_FROZEN, "changes spec.template"))
        if old.get("selector") != new.get("selector"):
            changes.append((SELECTOR_FROZEN, "changes spec.selector"))
    return changes


def _instead(request: Request) -> str:
    # NB: the old object says which release this is (a request may be changing the label).
    release = _labels(request.old or request.new).get(models.LABEL_RELEASE)
    if request.scope == "managed" and release:
        return (
            f"update the GuardedRelease {release!r} (its spec.template or config) instead: "
            "Permafrost rolls out a new revision and verifies it before it takes traffic"
        )
    if request.kind == "Pod" and request.subresource == "ephemeralcontainers":
        return (
            "debug a copy instead (kubectl debug --copy-to=NAME), or use break-glass: "
            f"annotate the pod {ANNOTATION_BREAK_GLASS}=<reason> (break-glass groups only)"
        )
    return (
        "deploy the change as a new workload (or manage it with a GuardedRelease, which "
        "does this for you); in an emergency, a member of a break-glass group may set the "
        f"annotation {ANNOTATION_BREAK_GLASS}=<reason> in the same request"
    )


def _break_glass(request: Request) -> str | None:
    """The break-glass reason, if the request carries one that may apply to it.

    It must be set (or changed) in this very request, so that it lets one mutation through;
    for ephemeral containers (whose subresource cannot carry annotations) the pod's annotation
    counts as is.
    """
    reason = _annotations(request.new).get(ANNOTATION_BREAK_GLASS, "").strip()
    if not reason:
        return None
    if request.subresource == "ephemeralcontainers":
        return reason
    before = _annotations(request.old).get(ANNOTATION_BREAK_GLASS, "").strip()
    return reason if reason != before else None


def unpinned_images(obj: Mapping[str, Any] | None) -> list[str]:
    """Images of a workload's pod template (a CronJob's job template, or a pod) not pinned by
    digest."""
    spec = _spec(obj)
    if "jobTemplate" in spec:
        spec = _spec(_field(spec, "jobTemplate"))
    pod_spec = _field(_field(spec, "template"), "spec") if "template" in spec else spec
    return [
        image
        for key in ("initContainers", "containers", "ephemeralContainers")
        for image in _images(pod_spec, key)
        if not DIGEST.search(image)
    ]


def _template_labels(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    """The labels of the pods a workload makes (a CronJob: through its job template)."""
    spec = _spec(obj)
    if "jobTemplate" in spec:
        spec = _spec(_field(spec, "jobTemplate"))
    return _labels(_field(spec, "template"))


def reserved(request: Request, settings: Settings) -> Decision | None:
    """A denial if the request would let a managed Service's traffic reach what Permafrost did
    not verify, else ``None``. No break-glass: there is no emergency a forged pod answers.

    - a Pod created with ``permafrost.dev/release`` or ``permafrost.dev/revision`` by anyone
      but kube-controller-manager (a revision's ReplicaSet); ownerReferences prove nothing,
      the creator writes them;
    - one of these labels added to a Pod (changing or removing one is :data:`LABELS_FROZEN`);
    - a workload whose pod template carries one, created by anyone but kube-controller-manager
      (a revision Deployment's ReplicaSet) or changed to carry a new value: its controller
      would create the pods;
    - an EndpointSlice of a Service (``kubernetes.io/service-name``) written by anyone but
      kube-controller-manager, where Permafrost guards it (kube-proxy routes a Service's
      traffic to every slice with that label, whoever wrote it).
    """
    if request.subresource not in (None, "status") or request.operation not in (
        "CREATE",
        "UPDATE",
    ):
        return None
    what = f"{request.kind} {request.namespace}/{request.name}"
    controller = request.username in settings.controller_users
    if request.kind == "EndpointSlice":
        service = _labels(request.new).get(LABEL_SERVICE_NAME)
        if controller or not service or request.scope == "unenforced":
            return None
        return Decision(
            False,
            ENDPOINTS_RESERVED,
            f"{what} is refused: only the EndpointSlice controller writes the endpoints of "
            f"Service {service!r} here (kube-proxy sends the Service's traffic to every "
            "EndpointSlice that names it); a Service's endpoints are the verified pods it "
            "selects",
            event_type="Warning",
        )
    if request.kind == "Pod" and request.subresource == "status":
        # NB: the EndpointSlice controller publishes a pod's status.podIPs: a revision pod's
        # assigned IP, changed, would send the Service's traffic anywhere.
        revision_pod = any(label in _labels(request.old) for label in REVISION_LABELS)
        old_status, new_status = _field(request.old, "status"), _field(request.new, "status")
        assigned = old_status.get("podIP")
        if (
            revision_pod
            and assigned
            and any(new_status.get(key) != old_status.get(key) for key in ("podIP", "podIPs"))
        ):
            return Decision(
                False,
                POD_IP_FROZEN,
                f"{what} is refused: {POD_IP_MESSAGE}",
                event_type="Warning",
            )
    if request.kind == "Pod":
        new, old = _labels(request.new), _labels(request.old)
    elif request.kind in TEMPLATE_KINDS:
        new, old = _template_labels(request.new), _template_labels(request.old)
    else:
        return None
    carried = [label for label in REVISION_LABELS if label in new]
    if not carried:
        return None
    if request.operation == "CREATE":
        if controller:
            return None
        how = "carries" if request.kind == "Pod" else "makes pods with"
    else:
        carried = [label for label in carried if label not in old or old[label] != new[label]]
        if request.kind == "Pod":
            # NB: changing or removing one the pod has is LABELS_FROZEN (break-glass applies).
            carried = [label for label in carried if label not in old]
        if not carried:
            return None
        how = "adds" if request.kind == "Pod" else "changes its pod template to carry"
    labels = " and ".join(carried)
    return Decision(
        False,
        REVISION_LABELS_RESERVED,
        f"{what} is refused: it {how} {labels}, which only the pods of a GuardedRelease's "
        "revisions carry: a managed Service selects its pods by them, and Permafrost verifies "
        "a revision before it takes traffic. To run something else, update the GuardedRelease "
        "(Permafrost creates the revision's pods), or use labels of your own",
        event_type="Warning",
    )


def review(request: Request, settings: Settings) -> Decision:
    """Decide one admission request against a frozen workload (or, in scope ``unenforced``,
    only against the reserved labels: :func:`reserved`)."""
    if request.username in settings.exempt_users:
        return Decision(True, EXEMPT)
    refused = reserved(request, settings)
    if refused is not None:
        return refused
    if request.scope == "unenforced" or request.kind == "EndpointSlice":
        return Decision(True, NOT_FROZEN)
    what = f"{request.kind} {request.namespace}/{request.name}"
    if request.operation == "CREATE":
        if request.scope == "enforced" and request.kind in TOP_LEVEL_KINDS:
            unpinned = unpinned_images(request.new)
            if unpinned:
                return Decision(
                    False,
                    UNPINNED_IMAGE,
                    f"{what}: image {unpinned[0]!r} is not pinned by digest; namespace "
                    f"{request.namespace!r} enforces immutable workloads "
                    f"({LABEL_ENFORCE}=true): use name@sha256:<64 hex>",
                    event_type="Warning",
                )
        return Decision(True, NOT_FROZEN)
    if request.operation != "UPDATE":
        return Decision(True, NOT_FROZEN)
    managed = models.LABEL_RELEASE in _labels(request.old)
    if request.scope == "managed" and not managed:
        return Decision(True, NOT_FROZEN)
    changes = frozen_changes(request)
    if not changes:
        return Decision(True, NO_CHANGE)
    reason, _ = changes[0]
    described = " and ".join(d for _, d in changes)
    why = _break_glass(request)
    if why is not None:
        if set(request.groups) & settings.break_glass_groups:
            return Decision(
                True,
                BREAK_GLASS_USED,
                f"{request.username} {described} of frozen {what} under break-glass: {why}",
                warnings=(f"break-glass: {what} {described}; this is recorded ({why})",),
                event_type="Warning",
            )
        groups = ", ".join(sorted(settings.break_glass_groups)) or "(none configured)"
        return Decision(
            False,
            BREAK_GLASS_REFUSED,
            f"{what} is frozen and break-glass is refused: {request.username} is not in a "
            f"break-glass group ({groups})",
            event_type="Warning",
        )
    return Decision(
        False,
        reason,
        f"{what} is frozen by Permafrost: this request {described}, and what runs is never "
        f"changed in place. To change it, {_instead(request)}.",
        event_type="Warning",
    )


# --- what really landed ------------------------------------------------------------------------


def landed(reviewed: Mapping[str, Any] | None, live: Mapping[str, Any] | None) -> bool:
    """Whether the object under review, as the webhook admitted it, is what the cluster now holds.

    A review is only a claim: anyone who reaches the webhook can post one, with any user in it.
    Side effects of an admission (the break-glass record) wait until the change is seen in the
    cluster: the same object (uid), with the labels and running what the review said. A forged
    review, or a request the apiserver then refused (a later webhook, a conflict), changes
    nothing there and is never recorded.

    NB: the break-glass annotation itself is not compared: a Deployment's controller copies
    the Deployment's annotations onto its ReplicaSets, overwriting the one a ReplicaSet's own
    break-glass change set.
    """
    if reviewed is None or live is None:
        return False
    meta, live_meta = reviewed.get("metadata") or {}, live.get("metadata") or {}
    if not meta.get("uid") or meta.get("uid") != live_meta.get("uid"):
        return False
    if _labels(reviewed) != _labels(live):
        return False
    return _what_runs(reviewed) == _what_runs(live)


def _what_runs(obj: Mapping[str, Any]) -> str:
    spec = _spec(obj)
    if "template" in spec or "selector" in spec:
        return fingerprint(obj)
    pod = {k: spec.get(k) for k in ("initContainers", "containers", "ephemeralContainers")}
    return hashing.short_digest(json.dumps(pod, sort_keys=True, separators=(",", ":")), length=16)


# --- drift -------------------------------------------------------------------------------------


def fingerprint(obj: Mapping[str, Any]) -> str:
    """A digest of what runs in a live workload: its ``spec.template`` and ``spec.selector``.

    Recorded in the annotation ``permafrost.dev/template-fingerprint`` when Permafrost first
    sees a frozen workload; a later mismatch means it was changed in place (drift).
    """
    spec = _spec(obj)
    canonical = json.dumps(
        {"template": spec.get("template"), "selector": spec.get("selector")},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashing.short_digest(canonical, length=16)


@dataclasses.dataclass(frozen=True)
class DriftVerdict:
    """What to do about one frozen workload Permafrost does not manage (enforced namespace)."""

    # Metadata to record on the workload (empty: nothing; a None value removes the key).
    annotations: Mapping[str, str | None]
    labels: Mapping[str, str | None]
    event: tuple[Literal["Normal", "Warning"], str, str] | None  # (type, reason, message)


def workload_drift(obj: Mapping[str, Any], *, now: str) -> DriftVerdict:
    """Record a fresh workload's fingerprint, accept a break-glass change, or report drift.

    Drift of an unmanaged workload is reported, not repaired (Permafrost cannot know what it
    should run): a Warning Event ``DriftDetected`` and the label ``permafrost.dev/drift=detected``
    so ``kubectl get deploy,sts,ds -A -l permafrost.dev/drift`` lists every drifted workload.
    """
    annotations = _annotations(obj)
    live = fingerprint(obj)
    recorded = annotations.get(models.ANNOTATION_FINGERPRINT)
    kind = str(obj.get("kind") or "Workload")
    meta = obj.get("metadata") or {}
    what = f"{kind} {meta.get('namespace')}/{meta.get('name')}"
    reported = _labels(obj).get(models.LABEL_DRIFT) == "detected"
    # NB: once resolved (undone, or accepted below), the drift mark goes, so a later drift is
    # reported again and the workload is no longer listed as drifted.
    resolved_annotations = {models.ANNOTATION_DRIFT: None} if reported else {}
    resolved_labels = {models.LABEL_DRIFT: None} if reported else {}
    if recorded is None:
        return DriftVerdict({models.ANNOTATION_FINGERPRINT: live}, {}, None)
    if recorded == live:
        return DriftVerdict(resolved_annotations, resolved_labels, None)
    glass = annotations.get(models.ANNOTATION_BREAK_GLASS, "").strip()
    if glass and glass != annotations.get(models.ANNOTATION_BREAK_GLASS_ACCEPTED):
        return DriftVerdict(
            {
                models.ANNOTATION_FINGERPRINT: live,
                models.ANNOTATION_BREAK_GLASS_ACCEPTED: glass,
                **resolved_annotations,
            },
            resolved_labels,
            (
                "Warning",
                BREAK_GLASS_ACCEPTED,
                f"{what} was changed under break-glass ({glass}); its new template is accepted",
            ),
        )
    if reported:
        return DriftVerdict({}, {}, None)
    return DriftVerdict(
        {models.ANNOTATION_DRIFT: now},
        {models.LABEL_DRIFT: "detected"},
        (
            "Warning",
            DRIFT_DETECTED,
            f"{what} was changed in place (its template no longer matches the fingerprint recorded "
            "when it was admitted): the guards were bypassed. Redeploy it, or accept the change "
            f"with the annotation {models.ANNOTATION_BREAK_GLASS}=<reason>",
        ),
    )


# --- configuration objects for the apiserver ----------------------------------------------------

FROZEN_RULES: tuple[dict[str, Any], ...] = (
    {
        "apiGroups": ["apps"],
        "apiVersions": ["v1"],
        "operations": ["UPDATE"],
        "resources": ["deployments", "statefulsets", "daemonsets", "replicasets"],
    },
    {
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "operations": ["UPDATE"],
        "resources": ["pods", "pods/ephemeralcontainers", "replicationcontrollers"],
    },
    {
        "apiGroups": ["batch"],
        "apiVersions": ["v1"],
        "operations": ["UPDATE"],
        "resources": ["jobs", "cronjobs"],
    },
)
CREATE_RULES: tuple[dict[str, Any], ...] = (
    {
        "apiGroups": ["apps"],
        "apiVersions": ["v1"],
        "operations": ["CREATE"],
        "resources": ["deployments", "statefulsets", "daemonsets"],
    },
    {
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "operations": ["CREATE"],
        "resources": ["replicationcontrollers"],
    },
    {
        "apiGroups": ["batch"],
        "apiVersions": ["v1"],
        "operations": ["CREATE"],
        "resources": ["jobs", "cronjobs"],
    },
)
# Whatever makes pods: the revision labels are reserved (see :func:`reserved`).
RESERVED_RULES: tuple[dict[str, Any], ...] = (
    {
        "apiGroups": ["apps"],
        "apiVersions": ["v1"],
        "operations": ["CREATE", "UPDATE"],
        "resources": ["deployments", "statefulsets", "daemonsets", "replicasets"],
    },
    {
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "operations": ["CREATE", "UPDATE"],
        "resources": ["pods", "replicationcontrollers"],
    },
    {
        "apiGroups": ["batch"],
        "apiVersions": ["v1"],
        "operations": ["CREATE", "UPDATE"],
        "resources": ["jobs", "cronjobs"],
    },
)
# NB: pods/status can change a pod's labels. The policy alone sees it: the kubelet writes it
# on every change of a pod's state, which must not wait on the operator's webhook.
STATUS_RULES: tuple[dict[str, Any], ...] = (
    {
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "operations": ["UPDATE"],
        "resources": ["pods/status"],
    },
)
ENDPOINT_RULES: tuple[dict[str, Any], ...] = (
    {
        "apiGroups": ["discovery.k8s.io"],
        "apiVersions": ["v1"],
        "operations": ["CREATE", "UPDATE"],
        "resources": ["endpointslices"],
    },
)
RELEASE_RULES: tuple[dict[str, Any], ...] = (
    {
        "apiGroups": [models.GROUP],
        "apiVersions": [models.VERSION],
        "operations": ["CREATE", "UPDATE"],
        "resources": [models.PLURAL],
    },
)
POLICY_RULES: tuple[dict[str, Any], ...] = (
    {
        "apiGroups": [models.GROUP],
        "apiVersions": [models.VERSION],
        "operations": ["CREATE", "UPDATE"],
        "resources": [models.POLICY_PLURAL],
        "scope": "Cluster",
    },
)


def connect_rules(settings: Settings) -> tuple[dict[str, Any], ...]:
    """The CONNECT subresources of pods that reach into a running container (exec, attach and,
    unless allowed by the settings, port-forward)."""
    resources = ["pods/exec", "pods/attach"]
    if not settings.allow_port_forward:
        resources.append("pods/portforward")
    return (
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CONNECT"],
            "resources": resources,
        },
    )


MANAGED_OBJECTS = {"matchExpressions": [{"key": models.LABEL_RELEASE, "operator": "Exists"}]}
UNMANAGED = {"matchExpressions": [{"key": models.LABEL_RELEASE, "operator": "DoesNotExist"}]}


def _namespaces(settings: Settings, *, enforced: bool) -> dict[str, Any]:
    selector: dict[str, Any] = {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": sorted(settings.excluded_namespaces),
            }
        ]
    }
    if enforced:
        selector["matchLabels"] = {LABEL_ENFORCE: "true"}
    return selector


def _unenforced_namespaces(settings: Settings) -> dict[str, Any]:
    """The namespaces that did not opt in (the complement of the enforced ones)."""
    selector = _namespaces(settings, enforced=False)
    selector["matchExpressions"].append(
        {"key": LABEL_ENFORCE, "operator": "NotIn", "values": ["true"]}
    )
    return selector


def _cel_get(path: str, default: str) -> str:
    """CEL: the field at the dotted ``path`` (its first part: an object), else ``default``.

    NB: has() on each step, not CEL's optional fields (``.?``): the expressions stay within
    what every CEL implementation parses."""
    parts = path.split(".")
    checks = " && ".join(f"has({'.'.join(parts[: i + 1])})" for i in range(1, len(parts)))
    return f"({checks} ? {path} : {default})"


def _cel_pod_labels(o: str) -> str:
    """CEL: the labels of the pods ``o`` makes: a Pod's own, a workload's pod template's (a
    CronJob's through its job template); ``{}`` if none."""
    return (
        f"(request.kind.kind == 'Pod' ? {_cel_get(f'{o}.metadata.labels', '{}')} : "
        f"request.kind.kind == 'CronJob' ? "
        f"{_cel_get(f'{o}.spec.jobTemplate.spec.template.metadata.labels', '{}')} : "
        f"{_cel_get(f'{o}.spec.template.metadata.labels', '{}')})"
    )


def _cel_entry_changed(field: str, key: str) -> str:
    """CEL: whether the entry ``key`` of ``metadata.<field>`` (labels, annotations) is added,
    removed or changed between ``oldObject`` and ``object`` (an empty value is not a missing
    one)."""
    new = _cel_get(f"object.metadata.{field}", "{}")
    old = _cel_get(f"oldObject.metadata.{field}", "{}")
    k = json.dumps(key)
    return f"(({k} in {new}) != ({k} in {old}) || ({k} in {new} && {new}[{k}] != {old}[{k}]))"


def update_matters() -> dict[str, str]:
    """The match condition that sends the frozen-object webhooks only the UPDATEs :func:`review`
    (and the break-glass sessions' review) could refuse or record: one of the main resource
    whose ``spec`` changes, whose revision labels or break-glass session annotations change, or
    any of a subresource (ephemeral containers). Every other request passes through.

    NB: the rest of an UPDATE (an annotation of Argo CD's, a label of the user's, a status
    field) never changes what runs, and the webhook would answer "allowed, nothing to record"
    (:data:`NO_CHANGE`): sending it only adds the operator's round trip to the apiserver's hot
    path. A superset, on purpose: ``spec`` as a whole, not each frozen field of each kind.
    """
    return {
        "name": "could-change-what-runs",
        "expression": " || ".join(
            [
                "request.operation != 'UPDATE'",
                "has(request.subResource)",
                "!has(object.spec) || !has(oldObject.spec) || object.spec != oldObject.spec",
                *(_cel_entry_changed("labels", label) for label in REVISION_LABELS),
                *(_cel_entry_changed("annotations", key) for key in SESSION_ANNOTATIONS),
            ]
        ),
    }


def create_matters(settings: Settings) -> dict[str, str]:
    """The match condition that sends the frozen-object webhooks a CREATE of a Pod or a
    ReplicaSet only when :func:`reserved` could refuse it: it carries (makes pods with) a
    revision label and its creator is not one of kube-controller-manager's controllers. Other
    creations (the workloads users create, EndpointSlices) are all sent.

    NB: a Pod or a ReplicaSet is otherwise never judged at creation (what made it was, when it
    was created), and their creations are the hot path of every scale-up and rollout: each
    would wait on the operator's answer for nothing.
    """
    labels = " || ".join(
        f"{json.dumps(label)} in {_cel_pod_labels('object')}" for label in REVISION_LABELS
    )
    return {
        "name": "could-forge-a-revision",
        "expression": (
            "request.operation != 'CREATE' || !(request.kind.kind in ['Pod', 'ReplicaSet']) || "
            f"(!(request.userInfo.username in {_cel_list(settings.controller_users)}) && "
            f"({labels}))"
        ),
    }


def creation_matters(policy_kinds: Collection[str]) -> dict[str, str]:
    """The match condition that sends the enforced webhook the CREATE of a workload only when
    it could refuse it: a GuardrailPolicy it judges (one not compiled into the apiserver)
    matches its kind (``policy_kinds``), or :func:`review` could refuse it (a revision label
    in its pod template, an image not pinned by digest). Other requests are all sent.

    NB: the fail-safe policy refuses those two before any webhook is called (the apiserver runs
    its policies first); they are still sent, so that the webhook judges them if the policy is
    gone. A clean workload whose policies the apiserver judges is then never sent: the
    operator's round trip leaves the hot path of every creation.
    """
    kinds = _cel_list(frozenset(policy_kinds))
    labels = " || ".join(
        f"{json.dumps(label)} in {_cel_pod_labels('object')}" for label in REVISION_LABELS
    )
    any_unpinned = f".exists(c, !has(c.image) || !c.image.matches({json.dumps(DIGEST.pattern)}))"
    unpinned = " || ".join(
        _cel_get(f"{spec}.{key}", "[]") + any_unpinned
        for spec in ("object.spec.template.spec", "object.spec.jobTemplate.spec.template.spec")
        for key in ("initContainers", "containers", "ephemeralContainers")
    )
    return {
        "name": "could-be-refused-at-creation",
        "expression": (
            f"request.operation != 'CREATE' || "
            f"!(request.kind.kind in {_cel_list(TOP_LEVEL_KINDS)}) || "
            f"request.kind.kind in {kinds} || {labels} || {unpinned}"
        ),
    }


def webhook_configuration(
    *,
    name: str,
    client_config: Mapping[str, Any],
    settings: Settings,
    timeout_seconds: int = 2,
    policy_kinds: Collection[str] | None = None,
) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration of the operator's admission webhooks.

    ``client_config`` is ``{"url": "https://host:port"}`` or ``{"service": {...}}`` plus
    ``caBundle``; each webhook appends its own path (a route of the webhook server).

    ``policy_kinds``: the workload kinds some GuardrailPolicy judged by the webhook matches at
    creation (``None``: any may be); the enforced webhook is sent no other clean creation
    (:func:`creation_matters`).

    NB: ``failurePolicy: Ignore``: an unreachable operator must never stall the cluster
    (kyverno/kyverno#4686). The core rule does not depend on it: the ValidatingAdmissionPolicy
    enforces it inside the apiserver.
    """

    def client(path: str) -> dict[str, Any]:
        config = dict(client_config)
        if "url" in config:
            config["url"] = f"{str(config['url']).rstrip('/')}/{path}"
        else:
            config["service"] = {**config["service"], "path": f"/{path}"}
        return config

    def webhook(
        hook: str, path: str, rules: Sequence[Mapping[str, Any]], *, enforced: bool
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": f"{hook}.permafrost.dev",
            "clientConfig": client(path),
            "rules": [copy.deepcopy(dict(r)) for r in rules],
            "namespaceSelector": _namespaces(settings, enforced=enforced),
            "failurePolicy": "Ignore",
            "matchPolicy": "Equivalent",
            "sideEffects": "NoneOnDryRun",
            "timeoutSeconds": timeout_seconds,
            "admissionReviewVersions": ["v1"],
        }
        # NB: a managed object in an enforced namespace goes to the managed webhook only, so
        # every decision (and its Event) is made once.
        body["objectSelector"] = copy.deepcopy(MANAGED_OBJECTS if not enforced else UNMANAGED)
        return body

    # NB: the exempt users (the operator), the UPDATEs that change nothing that runs and the
    # creations of pods and ReplicaSets that forge no revision are allowed with nothing to
    # record by the frozen-object webhooks: the apiserver does not call them for those. (Not
    # the releases' webhook: a policy may read a release's metadata.)
    frozen_conditions = [_not_exempt(settings), update_matters(), create_matters(settings)]

    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {models.LABEL_MANAGED_BY: models.MANAGER}},
        "webhooks": [
            {
                **webhook(
                    "managed.frozen",
                    "frozen-managed",
                    (*FROZEN_RULES, *RESERVED_RULES, *ENDPOINT_RULES),
                    enforced=False,
                ),
                "matchConditions": frozen_conditions,
            },
            {
                **webhook(
                    "enforced.frozen",
                    "frozen-enforced",
                    (*FROZEN_RULES, *CREATE_RULES, *RESERVED_RULES, *ENDPOINT_RULES),
                    enforced=True,
                ),
                "matchConditions": [
                    *frozen_conditions,
                    *([] if policy_kinds is None else [creation_matters(policy_kinds)]),
                ],
            },
            # NB: where nothing is frozen, only what carries the revision labels is sent (so not
            # every pod and workload of the cluster); a managed object goes to the managed
            # webhook only.
            {
                **webhook("unenforced.labels", "frozen-unenforced", RESERVED_RULES, enforced=True),
                "namespaceSelector": _unenforced_namespaces(settings),
                "matchConditions": [
                    *frozen_conditions,
                    {
                        "name": "revision-labels",
                        "expression": " || ".join(
                            f"{json.dumps(label)} in {_cel_pod_labels('object')}"
                            for label in REVISION_LABELS
                        ),
                    },
                ],
            },
            {
                **webhook("releases", "releases", RELEASE_RULES, enforced=False),
                "objectSelector": {},
            },
            # NB: a CONNECT's object is its options (PodExecOptions): no labels, so any object
            # selector but the empty one never matches it (seen on kube 1.36). The webhook reads
            # the pod to know whether it is frozen.
            {
                **webhook("connect", "pods-connect", connect_rules(settings), enforced=False),
                "objectSelector": {},
            },
            # NB: a broken policy must never be admitted (and then silently ignored), so this
            # one fails closed; it only ever concerns GuardrailPolicy objects.
            {
                **webhook("policies", "policies", POLICY_RULES, enforced=False),
                "objectSelector": {},
                "namespaceSelector": {},
                "failurePolicy": "Fail",
                "sideEffects": "None",
            },
        ],
    }


def _cel_list(values: frozenset[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in sorted(values)) + "]"


def _not_exempt(settings: Settings) -> dict[str, str]:
    """The match condition that leaves the exempt users (the operator) alone."""
    return {
        "name": "not-exempt",
        "expression": f"!(request.userInfo.username in {_cel_list(settings.exempt_users)})",
    }


RESERVED_MESSAGE = (
    " is refused: the labels permafrost.dev/release and permafrost.dev/revision are reserved "
    "for the pods of a GuardedRelease's revisions (a managed Service selects its pods by them, "
    "and Permafrost verifies a revision before it takes traffic); update the GuardedRelease "
    "instead, or use labels of your own"
)
POD_IP_MESSAGE = (
    "the IP of a revision's pod never changes once assigned (the EndpointSlice controller "
    "publishes it: the Service's traffic would go there)"
)
ENDPOINTS_MESSAGE = (
    " is refused: only the EndpointSlice controller writes a Service's endpoints here "
    "(kube-proxy sends the Service's traffic to every EndpointSlice that names it)"
)


def policy_manifests(*, name: str, settings: Settings) -> list[dict[str, Any]]:
    """The fail-safe: a ValidatingAdmissionPolicy and its two bindings (managed, enforced).

    The apiserver evaluates it itself, so frozen templates, selectors, pod images and
    ephemeral containers stay frozen when the operator is down. It honours the same exempt
    users and break-glass groups as the webhook.
    """
    bg = json.dumps(ANNOTATION_BREAK_GLASS)
    # NB: like the webhook, a reason is trimmed: a blank one is none, and re-setting the same
    # reason with blanks around it is not a new one.
    new_bg = (
        f"has(object.metadata.annotations) && {bg} in object.metadata.annotations && "
        f"object.metadata.annotations[{bg}].trim() != ''"
    )
    old_bg = (
        f"oldObject != null && has(oldObject.metadata.annotations) && "
        f"{bg} in oldObject.metadata.annotations && "
        f"oldObject.metadata.annotations[{bg}].trim() == object.metadata.annotations[{bg}].trim()"
    )
    break_glass = (
        f"({new_bg}) && (variables.subresource == 'ephemeralcontainers' || !({old_bg})) && "
        f"request.userInfo.groups.exists(g, g in {_cel_list(settings.break_glass_groups)})"
    )
    images = "(has({o}.spec.{k}) ? {o}.spec.{k}.map(c, c.image) : [])"
    pod_images_same = " && ".join(
        f"{images.format(o='object', k=k)} == {images.format(o='oldObject', k=k)}"
        for k in ("containers", "initContainers")
    )
    ephemeral = "(has({o}.spec.ephemeralContainers) ? size({o}.spec.ephemeralContainers) : 0)"
    release = json.dumps(models.LABEL_RELEASE)
    controllers = _cel_list(settings.controller_users)
    revision_labels = _cel_list(frozenset(REVISION_LABELS))
    enforce = json.dumps(LABEL_ENFORCE)
    enforced = (
        f"has(namespaceObject.metadata.labels) && {enforce} in namespaceObject.metadata.labels "
        f"&& namespaceObject.metadata.labels[{enforce}] == 'true'"
    )
    meta_labels = "(has({o}.metadata.labels) ? {o}.metadata.labels : {{}})"
    # NB: frozen as the bindings chose before the unenforced one: managed (the object, before
    # or after, carries the release label) or in an enforced namespace. Every frozen rule is
    # gated by it (CEL's || is true if any side is, whatever errors the others raise): the
    # unenforced binding sees every pod and workload where nothing is frozen. (A policy's
    # matchConditions cannot read namespaceObject.)
    frozen = (
        f"request.kind.kind != 'EndpointSlice' && ({enforced} || "
        f"{release} in {meta_labels.format(o='object')} || (oldObject != null && "
        f"{release} in {meta_labels.format(o='oldObject')}))"
    )
    groups = ", ".join(sorted(settings.break_glass_groups)) or "none configured"
    what = "request.kind.kind + ' ' + request.namespace + '/' + request.name"
    instead = (
        f"(oldObject != null && has(oldObject.metadata.labels) && "
        f"{release} in oldObject.metadata.labels ? "
        f"'update the GuardedRelease ' + oldObject.metadata.labels[{release}] + ' instead: "
        "Permafrost rolls out a new revision and verifies it before it takes traffic' : "
        "'deploy the change as a new workload instead (or manage it with a GuardedRelease)')"
    )
    # NB: user-provided text (group names) enters CEL only as JSON-escaped string literals.
    tail = json.dumps(
        f". Break-glass: set the annotation {ANNOTATION_BREAK_GLASS}=<reason> in the same "
        f"request (members of {groups} only)."
    )

    def rule(expression: str, frozen: str, *, operation: str = "UPDATE") -> dict[str, Any]:
        return {
            "expression": f"request.operation != '{operation}' || !variables.frozen || "
            f"variables.breakGlass || {expression}",
            "messageExpression": f"{what} + {json.dumps(' is frozen by Permafrost: ' + frozen)}"
            f" + '; ' + {instead} + {tail}",
            "reason": "Forbidden",
        }

    validations = [
        rule(
            "!has(object.spec.template) || object.spec.template == oldObject.spec.template",
            "spec.template cannot change in place",
        ),
        rule(
            "!has(object.spec.jobTemplate) || "
            "object.spec.jobTemplate == oldObject.spec.jobTemplate",
            "spec.jobTemplate cannot change in place",
        ),
        rule(
            "!has(object.spec.selector) || object.spec.selector == oldObject.spec.selector",
            "spec.selector cannot change in place",
        ),
        rule(
            f"request.kind.kind != 'Pod' || variables.subresource != '' || ({pod_images_same})",
            "its container images cannot change in place",
        ),
        rule(
            "variables.subresource != 'ephemeralcontainers' || "
            f"{ephemeral.format(o='object')} == {ephemeral.format(o='oldObject')}",
            "ephemeral containers cannot be added (kubectl debug --copy-to makes a copy)",
        ),
        rule(
            " && ".join(
                f"(!has(oldObject.metadata.labels) || !({label} in oldObject.metadata.labels) || "
                f"(has(object.metadata.labels) && {label} in object.metadata.labels && "
                f"object.metadata.labels[{label}] == oldObject.metadata.labels[{label}]))"
                for label in (release, json.dumps(models.LABEL_REVISION))
            ),
            "its permafrost.dev/release and permafrost.dev/revision labels cannot change",
        ),
        {
            # NB: a CronJob's pods come from spec.jobTemplate.spec.template.
            "expression": "request.operation != 'CREATE' || !variables.enforced || "
            f"!(request.kind.kind in {_cel_list(TOP_LEVEL_KINDS)}) || "
            + " && ".join(
                f"(has(variables.podSpec.{k}) ? variables.podSpec.{k} : []).all(c, "
                f"c.image.matches({json.dumps(DIGEST.pattern)}))"
                for k in ("containers", "initContainers")
            ),
            "messageExpression": f"{what} + ' is refused: every image must be pinned by "
            "digest (name@sha256:<64 hex>) in a namespace that enforces immutable workloads'",
            "reason": "Forbidden",
        },
        # The revision labels are reserved (see :func:`reserved`); no break-glass.
        {
            "expression": "request.kind.kind == 'EndpointSlice' || "
            "(variables.subresource != '' && variables.subresource != 'status') "
            f"|| (request.operation == 'CREATE' ? (request.userInfo.username in {controllers} "
            f"|| !{revision_labels}.exists(l, l in variables.podLabels)) : "
            f"{revision_labels}.all(l, !(l in variables.podLabels) || "
            "(l in variables.oldPodLabels && (request.kind.kind == 'Pod' || "
            "variables.oldPodLabels[l] == variables.podLabels[l]))))",
            "messageExpression": f"{what} + {json.dumps(RESERVED_MESSAGE)}",
            "reason": "Forbidden",
        },
        {
            "expression": "variables.subresource != 'status' || request.kind.kind != 'Pod' || "
            f"!{revision_labels}.exists(l, l in variables.oldPodLabels) || "
            "!has(oldObject.status) || !has(oldObject.status.podIP) || "
            "oldObject.status.podIP == '' || (has(object.status) && has(object.status.podIP) && "
            "object.status.podIP == oldObject.status.podIP && "
            "(has(object.status.podIPs) ? object.status.podIPs : []) == "
            "(has(oldObject.status.podIPs) ? oldObject.status.podIPs : []))",
            "messageExpression": f"{what} + {json.dumps(' is refused: ' + POD_IP_MESSAGE)}",
            "reason": "Forbidden",
        },
        {
            "expression": "request.kind.kind != 'EndpointSlice' || "
            f"!({json.dumps(LABEL_SERVICE_NAME)} in {meta_labels.format(o='object')}) || "
            f"request.userInfo.username in {controllers} || !(variables.enforced || "
            f"{release} in {meta_labels.format(o='object')})",
            "messageExpression": f"{what} + {json.dumps(ENDPOINTS_MESSAGE)}",
            "reason": "Forbidden",
        },
    ]
    policy: dict[str, Any] = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": {models.LABEL_MANAGED_BY: models.MANAGER}},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    copy.deepcopy(r)
                    for r in (
                        *FROZEN_RULES,
                        *CREATE_RULES,
                        *RESERVED_RULES,
                        *ENDPOINT_RULES,
                        *STATUS_RULES,
                    )
                ]
            },
            # NB: request.subResource is absent (not "") for the main resource.
            "variables": [
                {
                    "name": "subresource",
                    "expression": "has(request.subResource) ? request.subResource : ''",
                },
                {"name": "breakGlass", "expression": break_glass},
                {"name": "enforced", "expression": enforced},
                {"name": "frozen", "expression": frozen},
                {"name": "podLabels", "expression": _cel_pod_labels("object")},
                {
                    "name": "oldPodLabels",
                    "expression": f"oldObject != null ? {_cel_pod_labels('oldObject')} : {{}}",
                },
                {
                    "name": "podSpec",
                    "expression": "request.kind.kind == 'CronJob' ? "
                    f"{_cel_get('object.spec.jobTemplate.spec.template.spec', '{}')} : "
                    f"{_cel_get('object.spec.template.spec', '{}')}",
                },
            ],
            "validations": validations,
        },
    }
    if settings.exempt_users:
        policy["spec"]["matchConditions"] = [_not_exempt(settings)]

    def binding(suffix: str, resources: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {
                "name": f"{name}-{suffix}",
                "labels": {models.LABEL_MANAGED_BY: models.MANAGER},
            },
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": dict(resources),
            },
        }

    return [
        policy,
        binding(
            "managed",
            {
                "namespaceSelector": _namespaces(settings, enforced=False),
                "objectSelector": copy.deepcopy(MANAGED_OBJECTS),
            },
        ),
        binding(
            "enforced",
            {
                "namespaceSelector": _namespaces(settings, enforced=True),
                "objectSelector": copy.deepcopy(UNMANAGED),
            },
        ),
        binding(
            "unenforced",
            {
                "namespaceSelector": _unenforced_namespaces(settings),
                "objectSelector": copy.deepcopy(UNMANAGED),
            },
        ),
    ]


EXEC_POLICY = "permafrost-frozen-exec"


SESSION_ANNOTATIONS = (
    "permafrost.dev/session-user",
    "permafrost.dev/session-since",
    "permafrost.dev/session-until",
    "permafrost.dev/session-reason",
)
MAX_SESSION_CEL = "duration('4h')"  # sessions.MAX_SESSION; a unit test keeps them equal
SESSION_RULES: tuple[dict[str, Any], ...] = (
    {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["pods"]},
)


def exec_policy_manifests(*, name: str, settings: Settings) -> list[dict[str, Any]]:
    """The fail-safe for exec, attach and port-forward, and for break-glass sessions: a
    ValidatingAdmissionPolicy and its two bindings (enforced namespaces; managed pods).

    The apiserver evaluates CONNECT requests in policies, but sees only the request (user, pod
    name, namespace) and its options, never the pod: it cannot tell a pod Permafrost manages,
    nor read a break-glass session on it. So in the namespaces that enforce immutable workloads
    (``permafrost.dev/enforce=true``) it denies every exec, attach (and, unless allowed,
    port-forward) except to exempt users and members of a break-glass group; the webhook, which
    reads the pod, decides the rest: sessions, and pods of releases elsewhere.

    On an UPDATE of a frozen pod that writes a session (the annotations
    ``permafrost.dev/session-*``), it checks what it can without a clock: the writer is in a
    break-glass group, writes it for themselves, and it lasts at most 4h.

    NB: the enforced binding has no object selector: a CONNECT's object (PodExecOptions) has no
    labels, and any object selector but the empty one never matches it (seen on kube 1.36).
    The managed binding's selector thus matches the UPDATEs of managed pods only.
    """
    groups = ", ".join(sorted(settings.break_glass_groups)) or "none configured"
    member = f"request.userInfo.groups.exists(g, g in {_cel_list(settings.break_glass_groups)})"
    message = json.dumps(
        f" is denied: namespace is labelled {LABEL_ENFORCE}=true, and a shell in a pod changes "
        "what runs outside any revision. Debug a copy (kubectl debug POD --copy-to=NAME); in an "
        f"emergency, members of {groups} open a session: permafrost break-glass POD --for 15m "
        "--reason '...'"
    )
    verb = (
        "(request.subResource == 'portforward' ? 'port-forward' : request.subResource) + ' into "
        "Pod ' + request.namespace + '/' + request.name"
    )

    def annotation(obj: str, key: str) -> str:
        k = json.dumps(key)
        return (
            f"(has({obj}.metadata.annotations) && {k} in {obj}.metadata.annotations ? "
            f"{obj}.metadata.annotations[{k}] : '')"
        )

    user, since, until = (annotation("object", k) for k in SESSION_ANNOTATIONS[:3])
    rfc3339 = json.dumps(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z$")
    changed = " || ".join(
        f"{annotation('object', k)} != {annotation('oldObject', k)}" for k in SESSION_ANNOTATIONS
    )
    written = " || ".join(f"{annotation('object', k)} != ''" for k in SESSION_ANNOTATIONS)
    valid = (
        f"{member} && {user} == request.userInfo.username && "
        # NB: a malformed time is refused with the message, not with a conversion error.
        f"{since}.matches({rfc3339}) && {until}.matches({rfc3339}) && "
        f"timestamp({until}) > timestamp({since}) && "
        f"timestamp({until}) - timestamp({since}) <= {MAX_SESSION_CEL}"
    )
    policy: dict[str, Any] = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": {models.LABEL_MANAGED_BY: models.MANAGER}},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    copy.deepcopy(r) for r in (*connect_rules(settings), *SESSION_RULES)
                ]
            },
            "validations": [
                {
                    "expression": f"request.operation != 'CONNECT' || {member}",
                    "messageExpression": f"{verb} + {message}",
                    "reason": "Forbidden",
                },
                {
                    # NB: || absorbs errors: a CONNECT's object has no metadata to look at.
                    "expression": f"request.operation != 'UPDATE' || !({changed}) || "
                    f"!({written}) || ({valid})",
                    "messageExpression": "'break-glass session on Pod ' + request.namespace + "
                    "'/' + request.name + "
                    + json.dumps(
                        f" refused: only members of {groups} open one, for themselves, for "
                        "at most 4h (permafrost break-glass POD --for 15m --reason '...')"
                    ),
                    "reason": "Forbidden",
                },
            ],
        },
    }
    if settings.exempt_users:
        policy["spec"]["matchConditions"] = [_not_exempt(settings)]

    def binding(suffix: str, resources: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {
                "name": f"{name}-{suffix}",
                "labels": {models.LABEL_MANAGED_BY: models.MANAGER},
            },
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": dict(resources),
            },
        }

    return [
        policy,
        binding("enforced", {"namespaceSelector": _namespaces(settings, enforced=True)}),
        binding(
            "managed",
            {
                "namespaceSelector": _namespaces(settings, enforced=False),
                "objectSelector": copy.deepcopy(MANAGED_OBJECTS),
            },
        ),
    ]


SERVICE_GUARD = "permafrost-service-selectors"


def service_guard_manifests(*, name: str, settings: Settings) -> list[dict[str, Any]]:
    """A MutatingAdmissionPolicy and its binding: Permafrost's selector keys stay on a Service.

    On an UPDATE of a Service whose selector carries ``permafrost.dev/release`` and
    ``permafrost.dev/revision``, both keys are put back to their old values when the request
    drops or changes them — unless it comes from an exempt user (the operator, which switches
    them) or is a break-glass (as for the frozen workloads). Every other key of the selector is
    the user's. The apiserver applies it itself, before the object is stored: no write, however
    brief, lets the Service select the pods of a revision that was not verified.

    NB: restoring, not denying. Argo CD applies a Service kept in Git with the Git selector
    (``app: checkout``); with server-side apply the selector (an atomic map) would be replaced
    whole. A denial would fail every sync and every server-side diff (a dry-run apply); the
    restored keys make the dry-run's result equal to the live Service, so Argo CD sees no
    difference, and a real apply keeps the Service on the verified revision.
    """
    bg = json.dumps(ANNOTATION_BREAK_GLASS)
    break_glass = (
        f"has(object.metadata.annotations) && {bg} in object.metadata.annotations && "
        f"object.metadata.annotations[{bg}].trim() != '' && !(has(oldObject.metadata.annotations)"
        f" && {bg} in oldObject.metadata.annotations && oldObject.metadata.annotations[{bg}]"
        f".trim() == object.metadata.annotations[{bg}].trim()) && "
        f"request.userInfo.groups.exists(g, g in {_cel_list(settings.break_glass_groups)})"
    )
    keys = (json.dumps(models.LABEL_RELEASE), json.dumps(models.LABEL_REVISION))
    old = "oldObject.spec.selector"
    kept = " && ".join(
        f"has(object.spec.selector) && {k} in object.spec.selector && "
        f"object.spec.selector[{k}] == {old}[{k}]"
        for k in keys
    )
    add_keys = ", ".join(
        f'JSONPatch{{op: "add", path: "/spec/selector/" + jsonpatch.escapeKey({k}), '
        f"value: {old}[{k}]}}"
        for k in keys
    )
    whole = ", ".join(f"{k}: {old}[{k}]" for k in keys)
    conditions = [
        {
            "name": "guarded",
            "expression": f"has({old}) && " + " && ".join(f"{k} in {old}" for k in keys),
        },
        {"name": "changed", "expression": f"!({kept})"},
        {"name": "not-break-glass", "expression": f"!({break_glass})"},
    ]
    if settings.exempt_users:
        conditions.insert(0, _not_exempt(settings))
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": name, "labels": {models.LABEL_MANAGED_BY: models.MANAGER}},
        "spec": {
            "failurePolicy": "Fail",
            "reinvocationPolicy": "IfNeeded",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["UPDATE"],
                        "resources": ["services"],
                    }
                ]
            },
            "matchConditions": conditions,
            "mutations": [
                {
                    "patchType": "JSONPatch",
                    "jsonPatch": {
                        "expression": f"has(object.spec.selector) ? [{add_keys}] : "
                        f'[JSONPatch{{op: "add", path: "/spec/selector", value: {{{whole}}}}}]'
                    },
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": {models.LABEL_MANAGED_BY: models.MANAGER}},
        "spec": {
            "policyName": name,
            "matchResources": {"namespaceSelector": _namespaces(settings, enforced=False)},
        },
    }
    return [policy, binding]


SERVICE_ROUTES = "permafrost-service-routes"


def service_route_manifests(*, name: str, settings: Settings) -> list[dict[str, Any]]:
    """A MutatingAdmissionPolicy and its binding: a Service created under a release's
    ``spec.service.name`` selects the release's verified revision from its first write.

    Its parameters are the GuardedReleases of the Service's namespace (``paramRef`` with an
    empty selector; none: nothing to do). On the CREATE of a Service named by a release's
    ``spec.service.name``, Permafrost's two selector keys are added: the release, and its
    ``status.stableRevision`` — or :data:`models.REVISION_NONE` (no pod) while it has none.
    Every other key of the selector stays as sent; with the two keys beside them they can only
    narrow what the Service selects. The operator's own writes (exempt users) are left alone:
    it routes the Service itself, sometimes ahead of the status.

    NB: :func:`service_guard_manifests` holds a routed Service's keys on UPDATE; this closes
    the other gap. A Service deleted and re-created from Git (``app: checkout``) would
    otherwise select every revision's pods, unverified ones included, until the operator's
    next reconcile routes it (tens of milliseconds to seconds). The apiserver adds the keys
    before the object is stored, so no request ever sees the wider selector. A server-side
    dry-run (Argo CD's server-side diff) gets the same keys, and a client-side diff ignores
    selector keys that Git never set: neither sees a difference.
    """
    release, revision = json.dumps(models.LABEL_RELEASE), json.dumps(models.LABEL_REVISION)
    stable = (
        "has(params.status) && has(params.status.stableRevision) && "
        "params.status.stableRevision != '' ? params.status.stableRevision : "
        f"{json.dumps(models.REVISION_NONE)}"
    )
    add_keys = ", ".join(
        f'JSONPatch{{op: "add", path: "/spec/selector/" + jsonpatch.escapeKey({k}), value: {v}}}'
        for k, v in ((release, "params.metadata.name"), (revision, f"({stable})"))
    )
    whole = f"{release}: params.metadata.name, {revision}: ({stable})"
    named = (
        "has(params.spec.service) && has(params.spec.service.name) && "
        "params.spec.service.name == object.metadata.name && "
        "(!has(object.spec.type) || object.spec.type != 'ExternalName')"
    )
    conditions: list[dict[str, str]] = []
    if settings.exempt_users:
        conditions.append(_not_exempt(settings))
    spec: dict[str, Any] = {
        "paramKind": {"apiVersion": f"{models.GROUP}/{models.VERSION}", "kind": models.KIND},
        "failurePolicy": "Fail",
        "reinvocationPolicy": "IfNeeded",
        "matchConstraints": {
            "resourceRules": [
                {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE"],
                    "resources": ["services"],
                }
            ]
        },
        "mutations": [
            {
                "patchType": "JSONPatch",
                "jsonPatch": {
                    "expression": f"!({named}) ? [] : has(object.spec.selector) ? [{add_keys}] : "
                    f'[JSONPatch{{op: "add", path: "/spec/selector", value: {{{whole}}}}}]'
                },
            }
        ],
    }
    if conditions:
        spec["matchConditions"] = conditions
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": name, "labels": {models.LABEL_MANAGED_BY: models.MANAGER}},
        "spec": spec,
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": {models.LABEL_MANAGED_BY: models.MANAGER}},
        "spec": {
            "policyName": name,
            # NB: no namespace: each Service is judged against the releases of its own one.
            "paramRef": {"selector": {}, "parameterNotFoundAction": "Allow"},
            "matchResources": {"namespaceSelector": _namespaces(settings, enforced=False)},
        },
    }
    return [policy, binding]


SERVICE_TYPE = "permafrost-service-type"


def service_type_manifests(*, name: str, settings: Settings) -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy and its binding: a release's Service never becomes (or is
    created as) ``type: ExternalName``.

    An ExternalName Service is a DNS alias: its name resolves to whatever host it names, and
    its selector — Permafrost's keys included — no longer decides anything. So, for anyone but
    the exempt users, the apiserver denies an update to ``ExternalName`` of a Service whose
    selector carries both of Permafrost's keys, and the creation of an ``ExternalName`` Service
    named by a GuardedRelease of its namespace (``spec.service.name``; the releases are the
    policy's parameters, as for :func:`service_route_manifests`).

    NB: a denial, not a repair as for the selector keys: no write of a GitOps tool turns a
    Service into a DNS alias by accident, and there is nothing to restore it to that the
    apiserver could fill in (a cluster IP is allocated on creation only).
    """
    release, revision = json.dumps(models.LABEL_RELEASE), json.dumps(models.LABEL_REVISION)
    routed = (
        "request.operation == 'UPDATE' && has(oldObject.spec.selector) && "
        f"{release} in oldObject.spec.selector && {revision} in oldObject.spec.selector"
    )
    named = (
        "params != null && has(params.spec.service) && has(params.spec.service.name) && "
        "params.spec.service.name == object.metadata.name"
    )
    what = "'Service ' + request.namespace + '/' + request.name"
    spec: dict[str, Any] = {
        "paramKind": {"apiVersion": f"{models.GROUP}/{models.VERSION}", "kind": models.KIND},
        "failurePolicy": "Fail",
        "matchConstraints": {
            "resourceRules": [
                {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["services"],
                }
            ]
        },
        "validations": [
            {
                "expression": "!has(object.spec.type) || object.spec.type != 'ExternalName' || "
                f"!(({routed}) || ({named}))",
                "messageExpression": f"{what} + "
                + json.dumps(
                    " carries a GuardedRelease's traffic: it cannot be of type ExternalName (its "
                    "name would resolve to a host where no revision was verified); route "
                    "elsewhere with a Service of another name"
                ),
                "reason": "Forbidden",
            }
        ],
    }
    if settings.exempt_users:
        spec["matchConditions"] = [_not_exempt(settings)]
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": {models.LABEL_MANAGED_BY: models.MANAGER}},
        "spec": spec,
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": {models.LABEL_MANAGED_BY: models.MANAGER}},
        "spec": {
            "policyName": name,
            "paramRef": {"selector": {}, "parameterNotFoundAction": "Allow"},
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": _namespaces(settings, enforced=False)},
        },
    }
    return [policy, binding]
