"""One reconcile of one GuardedRelease: observe → plan → apply → status.

The imperative shell around :func:`permafrost.planner.plan`. It reads everything it needs from
the cluster on every pass (nothing is remembered between passes), applies the planned actions in
order, posts the planned Events, and writes the status with a single patch. If it is killed
between any two steps, the next pass sees the cluster as it is and plans from there.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable

import pydantic

from permafrost import (
    admission,
    checking,
    conditions,
    kube,
    manifests,
    metrics,
    models,
    observations,
    planner,
    policy,
    store,
)

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime.datetime]


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def reconcile(
    namespace: str,
    name: str,
    *,
    clock: Clock = utcnow,
    policies: store.Store | None = None,
) -> float | None:
    """Bring one release one step closer to its spec; return seconds until it needs a new look."""
    body = await kube.read_release(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    metadata = body["metadata"]
    release = manifests.ReleaseRef(name=name, namespace=namespace, uid=metadata["uid"])
    generation = int(metadata.get("generation") or 0)
    try:
        spec = models.GuardedReleaseSpec.model_validate(body.get("spec") or {})
        status = models.GuardedReleaseStatus.model_validate(body.get("status") or {})
    except pydantic.ValidationError as exc:
        # NB: the CRD schema rejects most of this at admission; this is the last line.
        logger.error("release %s/%s has an invalid spec or status: %s", namespace, name, exc)
        await kube.post_event(
            release=release, type_="Warning", reason="InvalidSpec", message=str(exc), now=clock()
        )
        return None

    sources_list, deployments, pods, service = await asyncio.gather(
        asyncio.gather(*(kube.read_config(namespace, ref) for ref in spec.config_refs)),
        kube.list_revision_deployments(namespace, name),
        kube.list_revision_pods(namespace, name),
        kube.read_service(namespace, spec.service.name) if spec.service else _none(),
    )
    now = clock()
    sources = {
        observations.config_key(r): s for r, s in zip(spec.config_refs, sources_list, strict=True)
    }
    revisions = observations.revision_views(deployments=deployments, pods=pods, now=now)
    create_verdict = promote_verdict = None
    if policies is not None:
        stable = planner.stable_summary(revisions.get(status.stable_revision or ""))
        subject = checking.subject_of(body, namespace=policies.namespace(namespace), stable=stable)
        known = policies.policies()
        create_verdict = policy.evaluate(known, stage="create", subject=subject, now=now)
        promote_verdict = policy.evaluate(known, stage="promote", subject=subject, now=now)
    situation = planner.Situation(
        release=release,
        generation=generation,
        spec=spec,
        status=status,
        annotations=metadata.get("annotations") or {},
        desired=observations.desired(release=release, spec=spec, sources=sources),
        revisions=revisions,
        service=observations.service_view(service),
        now=now,
        create_verdict=create_verdict,
        promote_verdict=promote_verdict,
    )
    result = planner.plan(situation)

    for action in result.actions:
        logger.info("release %s/%s: %s", namespace, name, action)
        await kube.apply(namespace, action)
    for event in result.events:
        metrics.ROLLOUT_EVENTS.labels(reason=event.reason).inc()
        logger.info("release %s/%s: %s %s", namespace, name, event.reason, event.message)
        await kube.post_event(
            release=release, type_=event.type, reason=event.reason, message=event.message, now=now
        )
    if result.status != status:
        await kube.patch_status(namespace, name, result.status)
    # NB: actions change the cluster; their effects arrive as watch events, which re-queue the
    # release. The requeue below is only for changes that time alone brings (deadlines, delays).
    return result.requeue_after


async def _none() -> None:
    return None


async def reconcile_workload(
    namespace: str,
    kind: str,
    name: str,
    *,
    namespaces: store.Store,
    clock: Clock = utcnow,
) -> float | None:
    """Fingerprint, accept or report drift of one workload in an enforced namespace.

    NB: the namespace's labels come from the watch-fed store, not from a read per workload: a
    namespace labelled enforced later is scanned whole when its event arrives.
    """
    labels = namespaces.namespaces.get(namespace)
    if labels is None or labels.get(models.LABEL_ENFORCE) != "true":
        return None
    obj = await kube.read_workload(namespace, kind, name)
    if obj is None or models.LABEL_RELEASE in ((obj.get("metadata") or {}).get("labels") or {}):
        return None
    obj = {**obj, "kind": kind}
    verdict = admission.workload_drift(obj, now=conditions.timestamp(clock()))
    if verdict.annotations or verdict.labels:
        await kube.patch_workload_metadata(
            namespace, kind, name, annotations=verdict.annotations, labels=verdict.labels
        )
    if verdict.event is not None:
        type_, reason, message = verdict.event
        logger.warning("%s %s/%s: %s %s", kind, namespace, name, reason, message)
        await kube.post_object_event(
            involved={"apiVersion": "apps/v1", **obj},
            type_=type_,
            reason=reason,
            message=message,
            now=clock(),
        )
    return None


async def scan_namespace(namespace: str) -> list[tuple[str, str]]:
    """(kind, name) of every workload in a namespace, to be checked one by one."""
    return [
        (str(w["kind"]), str(w["metadata"]["name"])) for w in await kube.list_workloads(namespace)
    ]
