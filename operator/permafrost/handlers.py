"""Kopf handlers: thin signals into the work queue. No decisions are made here.

The event handlers are coroutines, so Kopf runs them on the event loop, one at a time, never in
its thread pool: the work queues, the set of known releases and the policy store are touched
from that one thread only, like everything else the operator keeps in memory.

Every watched change — a GuardedRelease, one of its revision Deployments or their pods, its
Service — only enqueues the release it concerns; the queue runs
:func:`permafrost.releases.reconciler.reconcile` once per burst. Only ``on.event`` handlers and
indexes are used: they add no finalizers, so deleting a release never waits for the operator,
and the garbage collector cascades through the ownerReferences.
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

from permafrost import kube, metrics, models
from permafrost.artifacts import registry
from permafrost.guards import webhooks
from permafrost.policies import compiler, store
from permafrost.releases import manifests, reconciler, workqueue

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
    # With peering: how recently this replica's right to act was confirmed (None: standalone).
    lease: Lease | None = None
    # With --registry-check: the images of a revision are looked up before it is created.
    images: registry.Checker | None = None
    # With --admission: GuardrailPolicies compiled into ValidatingAdmissionPolicies, one sync per
    # policy name at a time, from the policy as last seen (None: deleted).
    policies: workqueue.WorkQueue[str] | None = None
    policy_bodies: dict[str, dict[str, Any] | None] = dataclasses.field(default_factory=dict)
    synced_policies: dict[str, str] = dataclasses.field(default_factory=dict)
    # The images of a release that GuardrailPolicies' verifyImages cover are verified with it.
    signed: registry.SignatureChecker | None = None

    def may_write(self) -> bool:
        """Whether this replica may write now: standalone, or its lease is fresh (see Lease)."""
        if self.lease is None:
            return True
        return self.lease.valid(now=asyncio.get_running_loop().time())


@dataclasses.dataclass
class Lease:
    """A replica's right to act, as fresh as its last confirmation (pure; time injected).

    Each poll of the peering object says whether this replica may act (:func:`may_act`). A
    confirmation counts for ``ttl`` seconds; after a gap — a replica paused (SIGSTOP, a frozen
    VM), or an apiserver it could not read — the right holds again only once confirmed
    continuously for ``grace`` seconds, long enough for a peer that took over meanwhile to see
    this one back and stand down. Writes are fenced by :meth:`valid`, checked just before each
    one: a replica resumed after its peers took over never writes from what it planned before.
    """

    ttl: float
    grace: float
    confirmed_at: float | None = None
    since: float | None = None  # when the current unbroken run of confirmations began

    def observe(self, *, allowed: bool, now: float) -> None:
        if not allowed:
            self.confirmed_at = self.since = None
            return
        if self.confirmed_at is None or now - self.confirmed_at > self.ttl:
            self.since = now
        self.confirmed_at = now

    def valid(self, *, now: float) -> bool:
        return (
            self.confirmed_at is not None
            and self.since is not None
            and now - self.confirmed_at <= self.ttl
            and now - self.since >= self.grace
        )


@dataclasses.dataclass(frozen=True)
class Peering:
    """How this replica coordinates with others (``permafrost run --peering``)."""

    name: str
    identity: str
    priority: int
    namespaces: tuple[str, ...]  # () when watching the whole cluster (ClusterKopfPeering)


PEERING_POLL_SECONDS = 1.0
# After a gap in its confirmations, a replica waits this many polls before it acts again: a
# peer polls once a second, and stands down at its next poll once it sees this one back.
TAKEOVER_GRACE_POLLS = 3
STANDBY_REFRESH_SECONDS = 5.0


def may_act(
    peers: Mapping[str, Any], *, identity: str, priority: int, now: datetime.datetime
) -> bool:
    """Whether a replica may act, given the ``status`` of the peering object (Kopf's format:
    identity → ``{priority, lifetime, lastseen}``): it has announced itself there, and no other
    live peer has the same or a higher priority. A peer is live until ``lastseen + lifetime``.

    NB: Kopf resumes a replica that sees no peers, even before its own first announcement; two
    replicas starting together may then both act for a moment. Waiting for its own entry makes
    every replica visible to the others before it acts. Its own entry must be live too: once
    it has expired (its announcements failed, or it was paused), the others may act already.
    """
    own = peers.get(identity)
    if not isinstance(own, Mapping):
        return False
    if not _live(own, now=now):
        return False  # NB: the others count this replica as gone, and one of them acts
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


def _live(info: Mapping[str, Any], *, now: datetime.datetime) -> bool:
    try:
        lastseen = datetime.datetime.fromisoformat(str(info.get("lastseen")))
        lifetime = datetime.timedelta(seconds=int(info.get("lifetime", 60)))
    except (TypeError, ValueError):
        return False
    if lastseen.tzinfo is None:
        lastseen = lastseen.replace(tzinfo=datetime.UTC)
    return lastseen + lifetime > now


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
                body = await kube.read_peering(namespace=namespace, name=peering.name)
                peers = (body or {}).get("status") or {}
                verdict = may_act(
                    peers, identity=peering.identity, priority=peering.priority, now=now
                )
                verdicts.append(body is not None and verdict)
            lease = runtime.lease
            assert lease is not None
            lease.observe(allowed=all(verdicts), now=loop.time())
            writable = lease.valid(now=loop.time())
            if writable and not runtime.active.is_set():
                logger.info("peering %s: this replica is active", peering.name)
                runtime.active.set()
            elif not writable and (runtime.active.is_set() or not refreshed):
                if all(verdicts):
                    logger.info(
                        "peering %s: this replica may act; waiting %.0fs for any peer that acted "
                        "meanwhile to stand down",
                        peering.name,
                        lease.grace,
                    )
                else:
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
            if runtime.lease is not None:
                runtime.lease.observe(allowed=False, now=loop.time())
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
        store.STORE.enforced_in_apiserver(
            body["metadata"]["name"], compiler.enforced_in_apiserver(body)
        )
    store.STORE.namespaces = await kube.list_namespace_labels()


# NB: every request has its own timeout (kube.OPERATOR_REQUEST_TIMEOUT); this bounds a whole
# reconcile, so that no key ever stays "running" and its release is looked at again.
RECONCILE_TIMEOUT_SECONDS = 300.0
# How often every known release is looked at again, whatever the watches said: a lost event
# (a watch that broke at the wrong moment) delays a reconcile by this much at most.
RESYNC_SECONDS = 300.0
RESYNC_JITTER = 0.1


async def _reconcile(runtime: Runtime, key: Key) -> float | None:
    namespace, name = key
    await runtime.active.wait()
    try:
        async with asyncio.timeout(RECONCILE_TIMEOUT_SECONDS):
            return await reconciler.reconcile(
                namespace=namespace,
                name=name,
                policies=store.STORE,
                fence=runtime.may_write,
                images=runtime.images,
                signed=runtime.signed,
            )
    except reconciler.Fenced as exc:
        logger.warning("release %s/%s: %s", namespace, name, exc)
        return PEERING_POLL_SECONDS  # NB: then waits until this replica is active again


async def _reconcile_workload(runtime: Runtime, key: WorkloadKey) -> float | None:
    namespace, kind, name = key
    await runtime.active.wait()
    try:
        async with asyncio.timeout(RECONCILE_TIMEOUT_SECONDS):
            if kind == "*":
                for workload_kind, workload in await reconciler.scan_namespace(namespace):
                    runtime.workloads.add((namespace, workload_kind, workload))
                return None
            return await reconciler.reconcile_workload(
                namespace=namespace,
                kind=kind,
                name=name,
                namespaces=store.STORE,
                fence=runtime.may_write,
            )
    except reconciler.Fenced as exc:
        logger.warning("%s %s/%s: %s", kind, namespace, name, exc)
        return PEERING_POLL_SECONDS


async def _resync(runtime: Runtime, *, every: float = RESYNC_SECONDS) -> None:
    """Re-queue every release, listed afresh, every ``every`` seconds (jittered, so replicas
    and restarts spread out). Releases whose ADDED event was lost are found here too."""
    while True:
        await asyncio.sleep(every * (1 + RESYNC_JITTER * (2 * random.random() - 1)))
        if not runtime.active.is_set():
            continue
        try:
            bodies = await kube.list_releases(None)
        except Exception as exc:
            logger.warning("resync: could not list the releases (%s); trying again later", exc)
            continue
        for body in bodies:
            key = (body["metadata"]["namespace"], body["metadata"]["name"])
            runtime.known_releases.add(key)
            runtime.queue.add(key)


def _runtime(memo: kopf.Memo) -> Runtime:
    runtime: Runtime = memo["permafrost"]
    return runtime


@kopf.on.startup()
async def start(memo: kopf.Memo, settings: kopf.OperatorSettings, **_: Any) -> None:
    """Start the work queues; with admission enabled, TLS, the webhook server and policies."""
    settings.posting.level = 30  # WARNING: Kopf's own per-object events only for problems
    settings.watching.server_timeout = 300
    # NB: the first listing of a watched kind comes in pages, not as one body holding every
    # ConfigMap, pod and Service of the cluster at once.
    settings.watching.chunk_size = 500
    # NB: only revision pods are streamed: the apiserver filters them (Kopf's ``labels=`` on a
    # handler filters in the operator, after every pod of the cluster was sent and parsed).
    # ConfigMaps and Secrets are not streamed at all: a release's are read by name (see
    # reconciler.CONFIG_POLL_SECONDS), so unrelated ones, however many and large, cost nothing.
    settings.watching.label_selectors["", "v1", "pods"] = REVISION_POD_SELECTOR
    # NB: Kopf's own requests (patches, peering, events) are bounded like Permafrost's; a watch
    # stream that falls silent is dropped after settings.watching.inactivity_timeout (70 s:
    # the apiserver sends a bookmark every minute) and opened again.
    request_timeout: float = memo.get("request_timeout") or 30.0
    settings.networking.request_timeout = request_timeout * 2
    settings.networking.connect_timeout = min(kube.CONNECT_TIMEOUT, request_timeout)
    settings.watching.connect_timeout = min(kube.CONNECT_TIMEOUT, request_timeout)
    # NB: with --peering, Kopf pauses every replica when two live ones share a priority, so
    # identical replicas (one Deployment) would all stand still. A random priority per start
    # makes one of them active (the highest); the others take over when it is gone.
    if settings.peering.priority == 0:
        settings.peering.priority = random.randrange(1, 2**31)
    # NB: policies and namespace labels are known before the first reconcile or admission
    # review, so nothing is ever evaluated against an empty library at start-up.
    for body in await kube.list_policies():
        _put_policy(body["metadata"]["name"], body.get("spec") or {})
        store.STORE.enforced_in_apiserver(
            body["metadata"]["name"], compiler.enforced_in_apiserver(body)
        )
    store.STORE.namespaces.update(await kube.list_namespace_labels())
    options: webhooks.Options | None = memo.get("admission")
    if options is not None:
        memo["webhooks"] = await webhooks.setup(options, settings)
    runtime = Runtime(
        queue=workqueue.WorkQueue(worker=lambda key: _reconcile(runtime, key)),
        workloads=workqueue.WorkQueue(
            worker=lambda key: _reconcile_workload(runtime, key), concurrency=2
        ),
        tasks=[],
        images=memo.get("images"),
        signed=memo.get("signed"),
    )
    tasks = runtime.tasks
    tasks += [
        asyncio.create_task(runtime.queue.run()),
        asyncio.create_task(runtime.workloads.run()),
        asyncio.create_task(_resync(runtime)),
    ]
    served: webhooks.Runtime | None = memo.get("webhooks")
    if served is not None:
        webhook_runtime: webhooks.Runtime = served
        runtime.policies = workqueue.WorkQueue(
            worker=lambda name: _sync_policy(runtime, webhook_runtime, name), concurrency=2
        )
        tasks.append(asyncio.create_task(runtime.policies.run()))
    peering: Peering | None = memo.get("peering")
    if peering is None:
        runtime.active.set()
    else:
        peering = dataclasses.replace(peering, priority=settings.peering.priority)
        settings.peering.lifetime = memo.get("peering_lifetime") or settings.peering.lifetime
        runtime.lease = Lease(
            ttl=settings.peering.lifetime / 2, grace=TAKEOVER_GRACE_POLLS * PEERING_POLL_SECONDS
        )
        tasks.append(asyncio.create_task(_follow_peering(runtime, peering)))
    memo["permafrost"] = runtime


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    runtime = _runtime(memo)
    for task in runtime.tasks:
        task.cancel()
    await asyncio.gather(*runtime.tasks, return_exceptions=True)
    await webhooks.teardown(memo.get("webhooks"))


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
    """(namespace, "Service", name) of the release's Service → release name.

    NB: referenced ConfigMaps and Secrets are not indexed: they are not watched (see start).
    """
    keys = {}
    if service := (spec.get("service") or {}).get("name"):
        keys[(namespace, "Service", str(service))] = name
    return keys


@kopf.on.event(models.GROUP, models.VERSION, models.PLURAL)
async def release_changed(
    type: str, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> None:
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
async def revision_changed(
    namespace: str | None, meta: kopf.Meta, memo: kopf.Memo, **_: Any
) -> None:
    for owner in meta.get("ownerReferences") or []:
        if owner.get("kind") == models.KIND and namespace:
            _runtime(memo).queue.add((namespace, owner["name"]))


REVISION_POD_SELECTOR = f"{models.LABEL_RELEASE},{models.LABEL_REVISION}"
LabelIndex = kopf.Index[tuple[str | None, str], str]
DependencyIndex = kopf.Index[tuple[str | None, str, str], str]


@kopf.on.event(
    "",
    "v1",
    "pods",
    labels={models.LABEL_RELEASE: kopf.PRESENT, models.LABEL_REVISION: kopf.PRESENT},
)
async def pod_changed(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any
) -> None:
    index: LabelIndex = kwargs["releases_by_label"]
    if namespace:
        for name in index.get((namespace, labels[models.LABEL_RELEASE]), ()):
            _runtime(memo).queue.add((namespace, name))


def _dependency_changed(
    *, kind: str, namespace: str | None, name: str, memo: kopf.Memo, kwargs: dict[str, Any]
) -> None:
    index: DependencyIndex = kwargs["releases_by_dependency"]
    if namespace:
        for release in index.get((namespace, kind, name), ()):
            _runtime(memo).queue.add((namespace, release))


@kopf.on.event("", "v1", "services")
async def service_changed(namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    """Any Service may be a release's own or select a release's pods: look at its namespace's."""
    _dependency_changed(kind="Service", namespace=namespace, name=name, memo=memo, kwargs=kwargs)
    runtime = _runtime(memo)
    for key in list(runtime.known_releases):
        if key[0] == namespace:
            runtime.queue.add(key)


# --- workloads in enforced namespaces (drift of what Permafrost does not manage) -------------


def _workload_changed(*, kind: str, namespace: str | None, name: str, memo: kopf.Memo) -> None:
    if namespace:
        _runtime(memo).workloads.add((namespace, kind, name))


@kopf.on.event("apps", "v1", "deployments", labels={models.LABEL_RELEASE: kopf.ABSENT})
async def deployment_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    _workload_changed(kind="Deployment", namespace=namespace, name=name, memo=memo)


@kopf.on.event("apps", "v1", "statefulsets")
async def statefulset_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    _workload_changed(kind="StatefulSet", namespace=namespace, name=name, memo=memo)


@kopf.on.event("apps", "v1", "daemonsets")
async def daemonset_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    _workload_changed(kind="DaemonSet", namespace=namespace, name=name, memo=memo)


# --- what the operator keeps in memory: policies and namespace labels --------------------------


def _put_policy(name: str, spec: Any) -> None:
    error = store.STORE.put_policy(name, spec)
    if error is not None:
        logger.error("GuardrailPolicy %s does not compile; its rules fail closed: %s", name, error)


async def _sync_policy(runtime: Runtime, served: webhooks.Runtime, name: str) -> float | None:
    """Compile one policy into the apiserver (see :func:`webhooks.sync_compiled_policy`), and
    keep the webhook's configuration following what stays on it (see
    :func:`webhooks.follow_policies`).

    NB: writing its status makes the policy change again: a sync of the same spec, generation
    and options whose status is current is skipped.
    """
    await runtime.active.wait()
    await webhooks.follow_policies(served)
    try:
        return await _compile_policy(runtime, served, name)
    finally:
        await webhooks.follow_policies(served)


async def _compile_policy(runtime: Runtime, served: webhooks.Runtime, name: str) -> float | None:
    options = served.options
    if name not in runtime.policy_bodies:
        return None
    body = runtime.policy_bodies[name]
    if body is None:
        await webhooks.sync_compiled_policy(served, name=name, body=None)
        if runtime.policy_bodies.get(name, {}) is None:
            del runtime.policy_bodies[name]
        runtime.synced_policies.pop(name, None)
        return None
    meta = body.get("metadata") or {}
    done = compiler.fingerprint(
        name,
        {"spec": body.get("spec"), "generation": meta.get("generation"),
         "compile": options.compile_policies},
        uid=str(meta.get("uid") or ""),
        exempt_users=options.settings.exempt_users,
        excluded_namespaces=options.settings.excluded_namespaces,
    )  # fmt: skip
    current = (body.get("status") or {}).get("observedGeneration") == meta.get("generation")
    if runtime.synced_policies.get(name) == done and current:
        return None
    await webhooks.sync_compiled_policy(served, name=name, body=body)
    runtime.synced_policies[name] = done
    return None


@kopf.on.event(models.GROUP, models.VERSION, models.POLICY_PLURAL)
async def policy_changed(
    type: str, name: str, spec: kopf.Spec, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """Keep the compiled library current, look at every release again (verdicts change), and
    compile the policy into the apiserver (with admission)."""
    if type == "DELETED":
        store.STORE.forget_policy(name)
    else:
        _put_policy(name, dict(spec))
        store.STORE.enforced_in_apiserver(name, compiler.enforced_in_apiserver(body))
    runtime: Runtime | None = memo.get("permafrost")
    if runtime is not None and runtime.policies is not None:
        runtime.policy_bodies[name] = None if type == "DELETED" else dict(body)
        runtime.policies.add(name)
    if runtime is not None and type is not None:
        for key in list(runtime.known_releases):
            runtime.queue.add(key)


@kopf.on.event("", "v1", "namespaces")
async def namespace_changed(
    type: str, name: str, labels: kopf.Labels, meta: kopf.Meta, memo: kopf.Memo, **_: Any
) -> None:
    if type == "DELETED":
        store.STORE.namespaces.pop(name, None)
        store.STORE.terminating.discard(name)
        return
    store.STORE.namespaces[name] = dict(labels)
    if meta.get("deletionTimestamp"):
        store.STORE.terminating.add(name)
    if labels.get(models.LABEL_ENFORCE) == "true":
        _runtime(memo).workloads.add((name, "*", ""))
