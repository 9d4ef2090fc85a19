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
import datetime
import logging
import random
from collections.abc import Mapping
from typing import Any

import kopf

from permafrost import kube, manifests, metrics, models, reconciler, store, webhooks, workqueue

logger = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace, release name)
WorkloadKey = tuple[str, str, str]  # (namespace, kind, name); kind "*" scans the namespace


@dataclasses.dataclass
class Runtime:
    queue: workqueue.WorkQueue[Key]
    workloads: workqueue.WorkQueue[WorkloadKey]
    tasks: list[asyncio.Task[None]]
    # Set while this replica may act: always when standalone; with peering, only while no live
    # peer has the same or a higher priority (Kopf's own rule for pausing its handlers).
    active: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    # Releases seen and not deleted: re-queued when a policy changes (their verdicts may).
    known_releases: set[Key] = dataclasses.field(default_factory=set)


@dataclasses.dataclass(frozen=True)
class Peering:
    """How this replica coordinates with others (``permafrost run --peering``)."""

    name: str
    identity: str
    priority: int
    namespaces: tuple[str, ...]  # () when watching the whole cluster (ClusterKopfPeering)


PEERING_POLL_SECONDS = 1.0
STANDBY_REFRESH_SECONDS = 5.0


def may_act(
    peers: Mapping[str, Any], *, identity: str, priority: int, now: datetime.datetime
) -> bool:
    """Whether a replica may act, given the ``status`` of the peering object (Kopf's format:
    identity → ``{priority, lifetime, lastseen}``): it has announced itself there, and no other
    live peer has the same or a higher priority. A peer is live until ``lastseen + lifetime``.

    NB: Kopf resumes a replica that sees no peers, even before its own first announcement; two
    replicas starting together may then both act for a moment. Waiting for its own entry makes
    every replica visible to the others before it acts.
    """
    if identity not in peers:
        return False
    for peer, info in peers.items():
        if peer == identity or not isinstance(info, Mapping):
            continue
        try:
            lastseen = datetime.datetime.fromisoformat(str(info.get("lastseen")))
            lifetime = datetime.timedelta(seconds=int(info.get("lifetime", 60)))
            other = int(info.get("priority", 0))
        except (TypeError, ValueError):
            return False  # NB: an unreadable peer might be live: do not act beside it
        if lastseen.tzinfo is None:
            lastseen = lastseen.replace(tzinfo=datetime.UTC)
        if lastseen + lifetime > now and other >= priority:
            return False
    return True


async def _follow_peering(runtime: Runtime, peering: Peering) -> None:
    """Open and close ``runtime.active`` as the peering object says.

    NB: Kopf pauses its own watches when a peer outranks this replica, but the work queues are
    Permafrost's: their timers (deadlines, delays, retries) would keep reconciling in a paused
    replica, which would then act beside the active one. A standby also keeps its policies and
    namespace labels current, as its admission webhook keeps answering.
    """
    refreshed = 0.0
    failing = False
    loop = asyncio.get_running_loop()
    while True:
        try:
            now = datetime.datetime.now(datetime.UTC)
            verdicts = []
            for namespace in peering.namespaces or (None,):
                body = await kube.read_peering(namespace, peering.name)
                peers = (body or {}).get("status") or {}
                verdict = may_act(
                    peers, identity=peering.identity, priority=peering.priority, now=now
                )
                verdicts.append(body is not None and verdict)
            if all(verdicts) and not runtime.active.is_set():
                logger.info("peering %s: this replica is active", peering.name)
                runtime.active.set()
            elif not all(verdicts) and (runtime.active.is_set() or not refreshed):
                logger.info("peering %s: another replica is active; standing by", peering.name)
                runtime.active.clear()
            if not runtime.active.is_set() and loop.time() - refreshed > STANDBY_REFRESH_SECONDS:
                await _refresh_store()
                refreshed = loop.time()
            if failing:
                logger.info("peering %s: the peering object is readable again", peering.name)
                failing = False
        except Exception as exc:
            # NB: logged once per outage, not every poll: an apiserver restart would otherwise
            # write a traceback a second on every replica.
            if not failing:
                logger.warning(
                    "peering %s: could not read the peering object (%s); standing by until it "
                    "is readable",
                    peering.name,
                    exc,
                )
                failing = True
            runtime.active.clear()
        await asyncio.sleep(PEERING_POLL_SECONDS)


async def _refresh_store() -> None:
    """Re-read every policy and namespace label (what the paused watches would have told)."""
    bodies = await kube.list_policies()
    names = {body["metadata"]["name"] for body in bodies}
    for gone in {p.name for p in store.STORE.policies()} - names:
        store.STORE.forget_policy(gone)
    for body in bodies:
        _put_policy(body["metadata"]["name"], body.get("spec") or {})
    labels = await kube.list_namespace_labels()
    store.STORE.namespaces.clear()
    store.STORE.namespaces.update(labels)


async def _reconcile(key: Key) -> float | None:
    namespace, name = key
    runtime = _RUNTIME
    assert runtime is not None
    await runtime.active.wait()
    return await reconciler.reconcile(namespace, name, policies=store.STORE)


async def _reconcile_workload(key: WorkloadKey) -> float | None:
    namespace, kind, name = key
    runtime = _RUNTIME
    assert runtime is not None
    await runtime.active.wait()
    if kind == "*":
        for workload_kind, workload in await reconciler.scan_namespace(namespace):
            runtime.workloads.add((namespace, workload_kind, workload))
        return None
    return await reconciler.reconcile_workload(namespace, kind, name, namespaces=store.STORE)


_RUNTIME: Runtime | None = None


def _runtime(memo: kopf.Memo) -> Runtime:
    runtime: Runtime = memo["permafrost"]
    return runtime


@kopf.on.startup()
async def start(memo: kopf.Memo, settings: kopf.OperatorSettings, **_: Any) -> None:
    """Start the work queues; with admission enabled, TLS, the webhook server and policies."""
    global _RUNTIME
    settings.posting.level = 30  # WARNING: Kopf's own per-object events only for problems
    settings.watching.server_timeout = 300
    # NB: with --peering, Kopf pauses every replica when two live ones share a priority, so
    # identical replicas (one Deployment) would all stand still. A random priority per start
    # makes one of them active (the highest); the others take over when it is gone.
    if settings.peering.priority == 0:
        settings.peering.priority = random.randrange(1, 2**31)
    # NB: policies and namespace labels are known before the first reconcile or admission
    # review, so nothing is ever evaluated against an empty library at start-up.
    for body in await kube.list_policies():
        _put_policy(body["metadata"]["name"], body.get("spec") or {})
    store.STORE.namespaces.update(await kube.list_namespace_labels())
    options: webhooks.Options | None = memo.get("admission")
    if options is not None:
        await webhooks.setup(options, settings)
    queue: workqueue.WorkQueue[Key] = workqueue.WorkQueue(worker=_reconcile)
    workloads: workqueue.WorkQueue[WorkloadKey] = workqueue.WorkQueue(
        worker=_reconcile_workload, concurrency=2
    )
    tasks = [asyncio.create_task(queue.run()), asyncio.create_task(workloads.run())]
    runtime = Runtime(queue=queue, workloads=workloads, tasks=tasks)
    peering: Peering | None = memo.get("peering")
    if peering is None:
        runtime.active.set()
    else:
        peering = dataclasses.replace(peering, priority=settings.peering.priority)
        settings.peering.lifetime = memo.get("peering_lifetime") or settings.peering.lifetime
        tasks.append(asyncio.create_task(_follow_peering(runtime, peering)))
    _RUNTIME = memo["permafrost"] = runtime


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    runtime = _runtime(memo)
    for task in runtime.tasks:
        task.cancel()
    await asyncio.gather(*runtime.tasks, return_exceptions=True)
    await webhooks.teardown()


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
    if not namespace:
        return
    runtime = _runtime(memo)
    if type == "DELETED":
        runtime.known_releases.discard((namespace, name))
        metrics.PHASES.forget(namespace, name)
    else:
        runtime.known_releases.add((namespace, name))
        runtime.queue.add((namespace, name))


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
    """Any Service may be a release's own or select a release's pods: look at its namespace's."""
    _dependency_changed("Service", namespace, name, memo, kwargs)
    runtime = _runtime(memo)
    for key in list(runtime.known_releases):
        if key[0] == namespace:
            runtime.queue.add(key)


# --- workloads in enforced namespaces (drift of what Permafrost does not manage) -------------


def _workload_changed(kind: str, namespace: str | None, name: str, memo: kopf.Memo) -> None:
    if namespace:
        _runtime(memo).workloads.add((namespace, kind, name))


@kopf.on.event("apps", "v1", "deployments", labels={models.LABEL_RELEASE: kopf.ABSENT})
def deployment_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    _workload_changed("Deployment", namespace, name, memo)


@kopf.on.event("apps", "v1", "statefulsets")
def statefulset_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    _workload_changed("StatefulSet", namespace, name, memo)


@kopf.on.event("apps", "v1", "daemonsets")
def daemonset_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    _workload_changed("DaemonSet", namespace, name, memo)


# --- what the operator keeps in memory: policies and namespace labels --------------------------


def _put_policy(name: str, spec: Any) -> None:
    error = store.STORE.put_policy(name, spec)
    if error is not None:
        logger.error("GuardrailPolicy %s does not compile; its rules fail closed: %s", name, error)


@kopf.on.event(models.GROUP, models.VERSION, models.POLICY_PLURAL)
def policy_changed(type: str, name: str, spec: kopf.Spec, memo: kopf.Memo, **_: Any) -> None:
    """Keep the compiled library current, and look at every release again (verdicts change)."""
    if type == "DELETED":
        store.STORE.forget_policy(name)
    else:
        _put_policy(name, dict(spec))
    runtime = _RUNTIME
    if runtime is not None and type is not None:
        for key in runtime.known_releases:
            runtime.queue.add(key)


@kopf.on.event("", "v1", "namespaces")
def namespace_changed(type: str, name: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        store.STORE.namespaces.pop(name, None)
        return
    store.STORE.namespaces[name] = dict(labels)
    if labels.get(models.LABEL_ENFORCE) == "true":
        _runtime(memo).workloads.add((name, "*", ""))
