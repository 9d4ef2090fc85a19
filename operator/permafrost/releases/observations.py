"""Parsing raw Kubernetes JSON into the planner's views. Pure: no I/O, time injected.

Everything here treats absent or malformed data as *unknown*, never as healthy: a pod without a
Ready condition has ``ready=None``, a Deployment without status has ``observed_generation=0``.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from permafrost import models
from permafrost.guards import admission
from permafrost.releases import conditions, hashing, manifests, planner

VERSION_LABEL = "app.kubernetes.io/version"
# What of a ConfigMap/Secret makes up a revision (metadata does not).
CONFIG_FIELDS = ("data", "binaryData", "type")


def _time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return conditions.parse_timestamp(value)
    except ValueError:
        return None


def pod_view(pod: Mapping[str, Any]) -> planner.PodView:
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    ready: bool | None = None
    ready_since: datetime.datetime | None = None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            ready = {"True": True, "False": False}.get(cond.get("status"))
            ready_since = _time(cond.get("lastTransitionTime"))
    restarts = 0
    waiting: str | None = None
    for cs in [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]:
        restarts += int(cs.get("restartCount") or 0)
        reason = ((cs.get("state") or {}).get("waiting") or {}).get("reason")
        if reason and waiting is None:
            waiting = str(reason)
    return planner.PodView(
        name=str(metadata.get("name", "")),
        ready=ready,
        ready_since=ready_since,
        restarts=restarts,
        waiting_reason=waiting,
        terminating=bool(metadata.get("deletionTimestamp")),
    )


def revision_views(
    *,
    deployments: Iterable[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    now: datetime.datetime,
) -> dict[str, planner.RevisionView]:
    """Revision views by revision hash, each with the pods labelled with its revision."""
    pods_by_revision: dict[str, list[planner.PodView]] = {}
    for pod in pods:
        revision = ((pod.get("metadata") or {}).get("labels") or {}).get(models.LABEL_REVISION)
        if revision:
            pods_by_revision.setdefault(revision, []).append(pod_view(pod))
    views: dict[str, planner.RevisionView] = {}
    for deployment in deployments:
        metadata = deployment.get("metadata") or {}
        revision = (metadata.get("labels") or {}).get(models.LABEL_REVISION)
        if not revision or metadata.get("deletionTimestamp"):
            continue
        spec = deployment.get("spec") or {}
        status = deployment.get("status") or {}
        annotations = metadata.get("annotations") or {}
        template_labels = {
            str(k): str(v)
            for k, v in (
                ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
            ).items()
        }
        views[revision] = planner.RevisionView(
            name=str(metadata.get("name", "")),
            revision=revision,
            replicas=int(spec.get("replicas", 1)),
            created_at=_time(metadata.get("creationTimestamp")) or now,
            generation=int(metadata.get("generation") or 0),
            observed_generation=int(status.get("observedGeneration") or 0),
            ready_replicas=int(status.get("readyReplicas") or 0),
            images=tuple(manifests.images(spec.get("template") or {})),
            pods=tuple(pods_by_revision.get(revision, ())),
            fingerprint=admission.fingerprint(deployment),
            recorded_fingerprint=annotations.get(models.ANNOTATION_FINGERPRINT),
            break_glass=annotations.get(models.ANNOTATION_BREAK_GLASS) or None,
            break_glass_accepted=annotations.get(models.ANNOTATION_BREAK_GLASS_ACCEPTED),
            drift_reported=models.ANNOTATION_DRIFT in annotations,
            version=template_labels.get(VERSION_LABEL),
            labels=template_labels,
            uid=str(metadata.get("uid") or ""),
        )
    return views


def endpoints(
    slices: Iterable[Mapping[str, Any]], *, pods: Iterable[Mapping[str, Any]]
) -> dict[str, int]:
    """The revisions whose pods are endpoints in ``slices`` (a Service's EndpointSlices), each
    with how many of those endpoints are ready. Endpoints of other pods are left out."""
    revision_of = {
        str((p.get("metadata") or {}).get("name")): str(
            ((p.get("metadata") or {}).get("labels") or {}).get(models.LABEL_REVISION)
        )
        for p in pods
        if ((p.get("metadata") or {}).get("labels") or {}).get(models.LABEL_REVISION)
    }
    found: dict[str, int] = {}
    for endpoint_slice in slices:
        for endpoint in endpoint_slice.get("endpoints") or []:
            ref = endpoint.get("targetRef") or {}
            revision = revision_of.get(str(ref.get("name"))) if ref.get("kind") == "Pod" else None
            if revision is None:
                continue
            # NB: an endpoint without conditions.ready is ready (the EndpointSlice API says so).
            ready = (endpoint.get("conditions") or {}).get("ready") is not False
            found[revision] = found.get(revision, 0) + int(ready)
    return found


def service_view(
    service: Mapping[str, Any] | None,
    *,
    release_uid: str = "",
    endpoints: Mapping[str, int] | None = None,
) -> planner.ServiceView | None:
    """The Service as the planner sees it; ``owned`` if the release with ``release_uid`` owns it;
    ``endpoints`` as :func:`endpoints` found them in its EndpointSlices (None: not read)."""
    if service is None:
        return None
    metadata = service.get("metadata") or {}
    owners = metadata.get("ownerReferences") or []
    annotations = metadata.get("annotations") or {}
    return planner.ServiceView(
        name=str(metadata.get("name", "")),
        selector={
            str(k): str(v) for k, v in ((service.get("spec") or {}).get("selector") or {}).items()
        },
        owned=bool(release_uid) and any(o.get("uid") == release_uid for o in owners),
        acknowledged=annotations.get(models.ANNOTATION_SELECTS_UNVERIFIED) == "true",
        endpoints=endpoints,
        cluster_ip=_cluster_ip(service),
        ports=_ports(service),
    )


def _cluster_ip(service: Mapping[str, Any]) -> str | None:
    ip = (service.get("spec") or {}).get("clusterIP")
    return str(ip) if isinstance(ip, str) and ip and ip != "None" else None


def _ports(service: Mapping[str, Any]) -> tuple[models.ServicePort, ...]:
    """The Service's ports; one that does not parse is left out (unknown, never guessed)."""
    found = []
    for raw in (service.get("spec") or {}).get("ports") or []:
        if not isinstance(raw, Mapping):
            continue
        try:
            found.append(
                models.ServicePort(
                    name=raw.get("name") or None,
                    port=raw.get("port"),
                    target_port=raw.get("targetPort"),
                    protocol=raw.get("protocol") or "TCP",
                )
            )
        except ValueError:
            continue
    return tuple(found)


def other_services(
    services: Iterable[Mapping[str, Any]], *, named: str | None
) -> tuple[planner.ServiceView, ...]:
    """Every Service of the namespace but the release's own (``named``)."""
    views = (service_view(s) for s in services)
    return tuple(v for v in views if v is not None and v.name != named)


def config_key(ref: models.ConfigRef) -> str:
    return f"{ref.kind}/{ref.name}"


def desired(
    *,
    release: manifests.ReleaseRef,
    spec: models.GuardedReleaseSpec,
    sources: Mapping[str, Mapping[str, Any] | None],
) -> planner.Desired | planner.ConfigMissing:
    """The spec's revision, given the referenced ConfigMaps/Secrets (``None`` if absent)."""
    missing = tuple(config_key(r) for r in spec.config_refs if sources.get(config_key(r)) is None)
    if missing:
        return planner.ConfigMissing(missing)
    contents = {
        config_key(r): {
            k: (sources[config_key(r)] or {}).get(k) for k in ("data", "binaryData", "type")
        }
        for r in spec.config_refs
    }
    revision = hashing.revision_hash(template=spec.template, config=contents)
    return planner.Desired(
        revision=revision,
        deployment=manifests.revision_deployment(
            release=release, spec=spec, revision=revision, replicas=spec.replicas
        ),
        snapshots=tuple(
            manifests.snapshot(
                release=release, revision=revision, ref=r, source=sources[config_key(r)] or {}
            )
            for r in spec.config_refs
        ),
        images=tuple(manifests.images(spec.template)),
    )
