"""Pure builders of what Permafrost creates: names, revision Deployments, snapshots, Services.

Nothing here does I/O. Every derived name is a valid DNS-1123 label (63 characters at most) and
every label value fits Kubernetes' 63-character limit, however long the release name is.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from permafrost import models
from permafrost.releases import hashing

MAX_LABEL = 63


@dataclasses.dataclass(frozen=True)
class ReleaseRef:
    """Identity of a GuardedRelease: enough to name and own its children."""

    name: str
    namespace: str
    uid: str


def bounded(name: str, *, limit: int = MAX_LABEL) -> str:
    """``name`` if it fits in ``limit``, else a truncated prefix plus a digest of the whole."""
    if len(name) <= limit:
        return name
    digest = hashing.short_digest(name)
    return f"{name[: limit - len(digest) - 1].rstrip('-.')}-{digest}"


def release_label(release: str) -> str:
    """The value of the ``permafrost.dev/release`` label for a release name."""
    return bounded(release)


def revision_name(release: str, revision: str) -> str:
    """The Deployment name of a revision: ``<release>-<hash>``, a DNS-1123 label.

    NB: a release name may be a DNS subdomain (``shop.checkout``); dots are not allowed in a
    label, so they become dashes, and a digest of the name keeps ``shop.checkout`` and
    ``shop-checkout`` (both valid in one namespace) from sharing revision names.
    """
    suffix = f"-{revision}"
    base = (
        release
        if "." not in release
        else f"{release.replace('.', '-')}-{hashing.short_digest(release)}"
    )
    return f"{bounded(base, limit=MAX_LABEL - len(suffix))}{suffix}"


def preview_name(service: str) -> str:
    """The name of a release's preview Service: ``<service>-preview``, a DNS-1123 label."""
    return bounded(f"{service}-preview")


def snapshot_name(source: str, revision: str) -> str:
    """The name of a config snapshot: ``<source>-<hash>``, never reused across revisions."""
    suffix = f"-{revision}"
    return f"{bounded(source, limit=253 - len(suffix))}{suffix}"


def selector(release: str, revision: str) -> dict[str, str]:
    """The labels that select exactly the pods of one revision."""
    return {models.LABEL_RELEASE: release_label(release), models.LABEL_REVISION: revision}


def owner_reference(*, api_version: str, kind: str, name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def release_owner(release: ReleaseRef) -> dict[str, Any]:
    return owner_reference(
        api_version=models.API_VERSION, kind=models.KIND, name=release.name, uid=release.uid
    )


def images(template: Mapping[str, Any]) -> list[str]:
    """Every image of the template's init and regular containers, in order."""
    spec = template.get("spec") or {}
    return [
        str(c.get("image", ""))
        for key in ("initContainers", "containers")
        for c in spec.get(key) or []
    ]


def _rewrite_config_names(
    template: dict[str, Any], *, configmaps: Mapping[str, str], secrets: Mapping[str, str]
) -> None:
    """Point every reference to a snapshotted ConfigMap/Secret at its snapshot, in place."""
    spec = template.get("spec") or {}
    for volume in spec.get("volumes") or []:
        if (cm := volume.get("configMap")) and cm.get("name") in configmaps:
            cm["name"] = configmaps[cm["name"]]
        if (secret := volume.get("secret")) and secret.get("secretName") in secrets:
            secret["secretName"] = secrets[secret["secretName"]]
        for source in (volume.get("projected") or {}).get("sources") or []:
            if (cm := source.get("configMap")) and cm.get("name") in configmaps:
                cm["name"] = configmaps[cm["name"]]
            if (secret := source.get("secret")) and secret.get("name") in secrets:
                secret["name"] = secrets[secret["name"]]
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            for env_from in container.get("envFrom") or []:
                if (ref := env_from.get("configMapRef")) and ref.get("name") in configmaps:
                    ref["name"] = configmaps[ref["name"]]
                if (ref := env_from.get("secretRef")) and ref.get("name") in secrets:
                    ref["name"] = secrets[ref["name"]]
            for env in container.get("env") or []:
                source = env.get("valueFrom") or {}
                if (ref := source.get("configMapKeyRef")) and ref.get("name") in configmaps:
                    ref["name"] = configmaps[ref["name"]]
                if (ref := source.get("secretKeyRef")) and ref.get("name") in secrets:
                    ref["name"] = secrets[ref["name"]]


def revision_deployment(
    *,
    release: ReleaseRef,
    spec: models.GuardedReleaseSpec,
    revision: str,
    replicas: int,
) -> dict[str, Any]:
    """The Deployment of one revision. It is never changed afterwards, except its replicas."""
    labels = {**selector(release.name, revision), models.LABEL_MANAGED_BY: models.MANAGER}
    template = copy.deepcopy(spec.template)
    configmaps = {
        r.name: snapshot_name(r.name, revision) for r in spec.config_refs if r.kind == "ConfigMap"
    }
    secrets = {
        r.name: snapshot_name(r.name, revision) for r in spec.config_refs if r.kind == "Secret"
    }
    _rewrite_config_names(template, configmaps=configmaps, secrets=secrets)
    metadata = template.setdefault("metadata", {})
    metadata["labels"] = {**(metadata.get("labels") or {}), **selector(release.name, revision)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": revision_name(release.name, revision),
            "namespace": release.namespace,
            "labels": labels,
            "annotations": {models.ANNOTATION_TEMPLATE_HASH: revision},
            "ownerReferences": [release_owner(release)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector(release.name, revision)},
            "template": template,
            # NB: the template never changes, so the Deployment only ever has one ReplicaSet.
            "revisionHistoryLimit": 0,
            "progressDeadlineSeconds": spec.rollout.progress_deadline_seconds,
        },
    }


def snapshot(
    *,
    release: ReleaseRef,
    revision: str,
    ref: models.ConfigRef,
    source: Mapping[str, Any],
) -> dict[str, Any]:
    """An immutable copy of a ConfigMap/Secret for one revision (owner set when created)."""
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": ref.kind,
        "metadata": {
            "name": snapshot_name(ref.name, revision),
            "namespace": release.namespace,
            "labels": {
                **selector(release.name, revision),
                models.LABEL_MANAGED_BY: models.MANAGER,
                models.LABEL_SNAPSHOT_OF: bounded(ref.name),
            },
        },
        "immutable": True,
    }
    for key in ("data", "binaryData", "type"):
        if source.get(key):
            body[key] = source[key]
    return body


def service(*, release: ReleaseRef, spec: models.ServiceSpec, revision: str) -> dict[str, Any]:
    """A Service for the release, created when the spec names one that does not exist."""
    ports: Sequence[models.ServicePort] = spec.ports or [
        models.ServicePort(name="http", port=80, target_port=8080)
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": spec.name,
            "namespace": release.namespace,
            "labels": {
                models.LABEL_RELEASE: release_label(release.name),
                models.LABEL_MANAGED_BY: models.MANAGER,
            },
            "ownerReferences": [release_owner(release)],
        },
        "spec": {
            "selector": selector(release.name, revision),
            "ports": [p.to_json() for p in ports],
        },
    }


def gate_job_name(*, release: str, revision: str, gate: str, key: str) -> str:
    """The name of one run of a job gate: ``<revision name>-<gate>-<key>``, a DNS-1123 label
    (a Job's name is a label value of its pods: 63 characters at most).

    ``key`` tells the runs of a gate apart (the attempt, the stage, the measurement's number):
    a run is created once, found again by its name on every later look until it ends.
    """
    suffix = f"-{hashing.short_digest(key, length=10)}"
    return bounded(f"{revision_name(release, revision)}-{gate}", limit=MAX_LABEL - len(suffix)) + (
        suffix
    )


def gate_job(
    *,
    release: ReleaseRef,
    revision: str,
    owner: Mapping[str, Any] | None,
    gate: models.Gate,
    name: str,
    stage: str,
    target_url: str | None,
) -> dict[str, Any]:
    """The Job of one measurement of a job gate of ``revision``.

    ``owner``: the revision Deployment's ownerReference (the Jobs go when the revision goes),
    else the release's. The pods never carry ``permafrost.dev/release``/``revision``: they
    would be selected by the release's Service and take its traffic.
    """
    assert gate.job is not None
    template = copy.deepcopy(gate.job.template)
    labels = {
        models.LABEL_GATE_OF: release_label(release.name),
        models.LABEL_GATE_REVISION: revision,
        models.LABEL_GATE: gate.name,
        models.LABEL_MANAGED_BY: models.MANAGER,
    }
    metadata = template.setdefault("metadata", {})
    metadata["labels"] = {**(metadata.get("labels") or {}), **labels}
    pod = template.setdefault("spec", {})
    pod["restartPolicy"] = "Never"
    env = [
        {"name": "PERMAFROST_RELEASE", "value": release.name},
        {"name": "PERMAFROST_NAMESPACE", "value": release.namespace},
        {"name": "PERMAFROST_REVISION", "value": revision},
        {"name": "PERMAFROST_STAGE", "value": stage},
    ]
    if target_url is not None:
        env.append({"name": "PERMAFROST_TARGET_URL", "value": target_url})
    ours = {e["name"] for e in env}
    for key in ("initContainers", "containers"):
        for container in pod.get(key) or []:
            # NB: first, so that the container's own variables may refer to them: $(VAR).
            kept = [e for e in container.get("env") or [] if e.get("name") not in ours]
            container["env"] = [*env, *kept]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": release.namespace,
            "labels": labels,
            "ownerReferences": [dict(owner) if owner is not None else release_owner(release)],
        },
        "spec": {
            "template": template,
            "backoffLimit": gate.job.backoff_limit,
            "activeDeadlineSeconds": gate.job.active_deadline_seconds,
        },
    }
