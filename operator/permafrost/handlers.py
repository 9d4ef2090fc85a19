"""Kopf handlers: thin signals into the work queue. No decisions are made here.

Every watched change — a GuardedRelease, one of its revision Deployments or their pods, a
referenced ConfigMap/Secret, its Service — only enqueues the release it concerns; the queue runs
:func:`permafrost.reconciler.reconcile` once per burst. Only ``on.event`` handlers and indexes
are used: they add no finalizers, so deleting a release never waits for the operator, and the
garbage collector cascades through the ownerReferences.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import kopf

from permafrost import manifests, models, reconciler, workqueue

Key = tuple[str, str]  # (namespace, release name)


@dataclasses.dataclass
class Runtime:
    queue: workqueue.WorkQueue[Key]
    task: asyncio.Task[None]


async def _reconcile(key: Key) -> float | None:
    namespace, name = key
    return await reconciler.reconcile(namespace, name)


def _runtime(memo: kopf.Memo) -> Runtime:
    runtime: Runtime = memo["permafrost"]
    return runtime


@kopf.on.startup()
async def start_queue(memo: kopf.Memo, settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = 30  # WARNING: Kopf's own per-object events only for problems
    settings.watching.server_timeout = 300
    queue: workqueue.WorkQueue[Key] = workqueue.WorkQueue(worker=_reconcile)
    memo["permafrost"] = Runtime(queue=queue, task=asyncio.create_task(queue.run()))


@kopf.on.cleanup()
async def stop_queue(memo: kopf.Memo, **_: Any) -> None:
    runtime = _runtime(memo)
    runtime.task.cancel()
    await asyncio.gather(runtime.task, return_exceptions=True)


@kopf.index(models.GROUP, models.VERSION, models.PLURAL)
def releases_by_label(
    namespace: str | None, name: str, **_: Any
) -> dict[tuple[str | None, str], str]:
    """(namespace, release label value) → release name: finds the release of a pod."""
    return {(namespace, manifests.release_label(name)): name}


@kopf.index(models.GROUP, models.VERSION, models.PLURAL)
def releases_by_dependency(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[tuple[str | None, str, str], str]:
    """(namespace, kind, name) of referenced ConfigMaps, Secrets, Service → release name."""
    keys = {
        (namespace, str(ref.get("kind")), str(ref.get("name"))): name
        for ref in spec.get("configRefs") or []
    }
    if service := (spec.get("service") or {}).get("name"):
        keys[(namespace, "Service", str(service))] = name
    return keys


@kopf.on.event(models.GROUP, models.VERSION, models.PLURAL)
def release_changed(type: str, namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    if type != "DELETED" and namespace:
        _runtime(memo).queue.add((namespace, name))


@kopf.on.event("apps", "v1", "deployments", labels={models.LABEL_RELEASE: kopf.PRESENT})
def revision_changed(namespace: str | None, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    for owner in meta.get("ownerReferences") or []:
        if owner.get("kind") == models.KIND and namespace:
            _runtime(memo).queue.add((namespace, owner["name"]))


REVISION_PODS = {models.LABEL_RELEASE: kopf.PRESENT, models.LABEL_REVISION: kopf.PRESENT}
LabelIndex = kopf.Index[tuple[str | None, str], str]
DependencyIndex = kopf.Index[tuple[str | None, str, str], str]


@kopf.on.event(
    "",
    "v1",
    "pods",
    labels={models.LABEL_RELEASE: kopf.PRESENT, models.LABEL_REVISION: kopf.PRESENT},
)
def pod_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    index: LabelIndex = kwargs["releases_by_label"]
    if namespace:
        for name in index.get((namespace, labels[models.LABEL_RELEASE]), ()):
            _runtime(memo).queue.add((namespace, name))


def _dependency_changed(
    kind: str, namespace: str | None, name: str, memo: kopf.Memo, kwargs: dict[str, Any]
) -> None:
    index: DependencyIndex = kwargs["releases_by_dependency"]
    if namespace:
        for release in index.get((namespace, kind, name), ()):
            _runtime(memo).queue.add((namespace, release))


@kopf.on.event("", "v1", "configmaps", labels={models.LABEL_MANAGED_BY: kopf.ABSENT})
def configmap_changed(namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    _dependency_changed("ConfigMap", namespace, name, memo, kwargs)


@kopf.on.event("", "v1", "secrets", labels={models.LABEL_MANAGED_BY: kopf.ABSENT})
def secret_changed(namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    _dependency_changed("Secret", namespace, name, memo, kwargs)


@kopf.on.event("", "v1", "services")
def service_changed(namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    _dependency_changed("Service", namespace, name, memo, kwargs)
