"""One reconcile of one GuardedRelease: observe → plan → apply → status.

The imperative shell around :func:`permafrost.releases.planner.plan`. It reads everything it
needs from the cluster on every pass (nothing is remembered between passes), applies the planned
actions in order, posts the planned Events, and writes the status with a single patch. If it is
killed between any two steps, the next pass sees the cluster as it is and plans from there.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from typing import Any

import pydantic

from permafrost import kube, metrics, models
from permafrost.artifacts import attestations, pulls, registry, signatures
from permafrost.artifacts import images as image_checks
from permafrost.gates import probes, verdicts
from permafrost.guards import admission, sessions
from permafrost.policies import checking, policy, store
from permafrost.releases import conditions, manifests, observations, planner

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime.datetime]
# NB: referenced ConfigMaps and Secrets are read by name, never listed or watched: streaming
# every ConfigMap of the cluster costs memory in proportion to the cluster, not to the releases,
# and the operator may not list Secrets at all (least privilege: it reads only those that
# releases name, in namespaces that grant it). A release that references any is looked at again
# this often, so a change of one rolls out within this time.
CONFIG_POLL_SECONDS = 30.0
CONFIG_FORBIDDEN = "ConfigForbidden"
PLAN_FAILED = "PlanFailed"
# A planned write the apiserver refused (RBAC, an admission webhook or policy, invalid).
ACTION_REFUSED = "ActionRefused"
PLAN_RETRY_SECONDS = 30.0
# Whether this replica may write now (peering); checked right before every write.
Fence = Callable[[], bool]


class Fenced(Exception):
    """This replica lost (or has not yet confirmed) its right to act: nothing more is written."""


def _check(fence: Fence | None) -> None:
    if fence is not None and not fence():
        raise Fenced(
            "not written: this replica's right to act is not confirmed (it was paused, or "
            "another replica is active); the plan is dropped and made again once it is"
        )


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def reconcile(
    *,
    namespace: str,
    name: str,
    clock: Clock = utcnow,
    policies: store.Store | None = None,
    fence: Fence | None = None,
    images: registry.Checker | None = None,
    signed: registry.SignatureChecker | None = None,
) -> float | None:
    """Bring one release one step closer to its spec; return seconds until it needs a new look.

    Every decision is logged with the fields ``release``, ``namespace``, ``revision`` and
    ``reason`` (top-level keys in ``permafrost run --log-format json``).

    With ``fence``, every write is preceded by it: :class:`Fenced` is raised when it says no.
    The status is written with the release's resourceVersion as read, so a status planned from
    a release that changed meanwhile is refused (409) and planned again.
    """
    terminating = policies is not None and namespace in policies.terminating
    body = None if terminating else await kube.read_release(namespace=namespace, name=name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        metrics.PHASES.forget(namespace, name)
        return None
    metadata = body["metadata"]
    release = manifests.ReleaseRef(name=name, namespace=namespace, uid=metadata["uid"])
    generation = int(metadata.get("generation") or 0)
    try:
        spec = models.GuardedReleaseSpec.model_validate(body.get("spec") or {})
        status = models.GuardedReleaseStatus.model_validate(body.get("status") or {})
    except pydantic.ValidationError as exc:
        # NB: the CRD schema rejects most of this at admission; this is the last line.
        logger.error(
            "release %s/%s has an invalid spec or status: %s",
            namespace,
            name,
            exc,
            extra=_fields(namespace, name, revision=None, reason="InvalidSpec"),
        )
        _check(fence)
        await kube.post_event(
            release=release, type_="Warning", reason="InvalidSpec", message=str(exc), now=clock()
        )
        return None

    named = spec.service.name if spec.service else None
    preview_name = (
        manifests.preview_name(spec.service.name) if spec.service and spec.service.preview else None
    )
    try:
        (
            sources_list,
            deployments,
            pods,
            services,
            slices,
            preview_slices,
        ) = await asyncio.gather(
            asyncio.gather(
                *(kube.read_config(namespace=namespace, ref=ref) for ref in spec.config_refs)
            ),
            kube.list_revision_deployments(namespace=namespace, release=name),
            kube.list_revision_pods(namespace=namespace, release=name),
            kube.list_services(namespace),
            kube.list_endpoint_slices(namespace=namespace, service=named) if named else _nothing(),
            kube.list_endpoint_slices(namespace=namespace, service=preview_name)
            if preview_name
            else _nothing(),
        )
    except kube.ConfigForbidden as exc:
        # NB: a Secret in a namespace that did not grant the operator its Secrets: nothing is
        # planned from a partial view; said once per look, in one line, not as a traceback.
        await _cannot_plan(
            release,
            reason=CONFIG_FORBIDDEN,
            message=(
                f"the operator may not read {exc.kind} {namespace}/{exc.name} ({exc.detail}); "
                f"bind the ClusterRole permafrost-secrets in {namespace} (docs/install.md)"
            ),
            now=clock(),
            fence=fence,
        )
        return CONFIG_POLL_SECONDS
    service = next((s for s in services if s["metadata"]["name"] == named), None)
    preview = next((s for s in services if s["metadata"]["name"] == preview_name), None)
    now = clock()
    sources = {
        observations.config_key(r): s for r, s in zip(spec.config_refs, sources_list, strict=True)
    }
    revisions = observations.revision_views(deployments=deployments, pods=pods, now=now)
    create_verdict = promote_verdict = None
    gate_verdicts: dict[str, policy.Verdict] = {}
    if policies is not None:
        stable = planner.stable_summary(revisions.get(status.stable_revision or ""))
        subject = checking.subject_of(body, namespace=policies.namespace(namespace), stable=stable)
        known = policies.policies()
        create_verdict = policy.evaluate(known, stage="create", subject=subject, now=now)
        promote_verdict = policy.evaluate(known, stage="promote", subject=subject, now=now)
        metrics.count_policy_errors(stage="create", results=create_verdict.results)
        metrics.count_policy_errors(stage="promote", results=promote_verdict.results)
        for gate in spec.rollout.gates:
            if gate.job is not None:
                as_release = {
                    **body,
                    "spec": {**(body.get("spec") or {}), "template": gate.job.template},
                }
                gate_subject = checking.subject_of(
                    as_release, namespace=policies.namespace(namespace), stable=stable
                )
                gate_verdicts[gate.name] = policy.evaluate(
                    known, stage="create", subject=gate_subject, now=now
                )
    desired = observations.desired(release=release, spec=spec, sources=sources)
    # NB: the credentials the pods pull with are read at most once per look, and only when a
    # registry is to be asked (the registry check, or a verifyImages entry): both ask with them.
    pull_secrets = (
        _PullSecrets(namespace=namespace, desired=desired)
        if isinstance(desired, planner.Desired)
        else None
    )
    unsigned = False
    if (
        policies is not None
        and signed is not None
        and create_verdict is not None
        and promote_verdict is not None
        and isinstance(desired, planner.Desired)
        and pull_secrets is not None
    ):
        create_verdict, promote_verdict, unsigned = await _verify_signatures(
            signed,
            pull_secrets=pull_secrets,
            policies=known,
            subject=subject,
            create=create_verdict,
            promote=promote_verdict,
            creating=desired.revision not in revisions,
        )
    checks = None
    # NB: only a revision about to be created is looked up (cached by reference): one that
    # exists was checked before it was created, or predates the check.
    if (
        images is not None
        and isinstance(desired, planner.Desired)
        and pull_secrets is not None
        and desired.revision not in revisions
    ):
        checks = await _check_images(images, desired=desired, pull_secrets=pull_secrets)
    situation = planner.Situation(
        release=release,
        generation=generation,
        spec=spec,
        status=status,
        annotations=metadata.get("annotations") or {},
        desired=desired,
        revisions=revisions,
        service=observations.service_view(
            service,
            release_uid=release.uid,
            endpoints=observations.endpoints(slices, pods=pods),
        ),
        now=now,
        create_verdict=create_verdict,
        promote_verdict=promote_verdict,
        other_services=observations.other_services(services, named=named),
        image_checks=checks,
        images_fail_open=images.fail_open if images is not None else False,
        preview=observations.service_view(
            preview,
            release_uid=release.uid,
            endpoints=observations.endpoints(preview_slices, pods=pods),
        ),
        gate_verdicts=gate_verdicts,
    )
    try:
        result = planner.plan(situation)
    except planner.PlanError as exc:
        # NB: the status contradicts the cluster (e.g. a stable revision with no record): said
        # in one line and an Event, then looked at again later, not a traceback a minute.
        await _cannot_plan(
            release,
            reason=PLAN_FAILED,
            message=f"cannot plan this release: {exc}",
            now=now,
            fence=fence,
        )
        return PLAN_RETRY_SECONDS

    by_name = {view.name: revision for revision, view in revisions.items()}
    measures = [a for a in result.actions if isinstance(a, planner.Measure)]
    for action in result.actions:
        if isinstance(action, planner.Measure):
            continue
        logger.info(
            "release %s/%s: %s",
            namespace,
            name,
            action,
            extra=_fields(
                namespace,
                name,
                revision=_revision_of(action, by_name),
                reason=type(action).__name__,
                action=type(action).__name__,
            ),
        )
        _check(fence)
        try:
            await kube.apply(namespace=namespace, action=action)
        except Exception as exc:
            terminating = kube.namespace_terminating(exc)
            refused = None if terminating else kube.refusal(exc)
            if refused is not None:
                # NB: a refusal is not retried at once (it would be refused again): said in
                # one line and an Event (who refused and why), looked at again later.
                await _cannot_plan(
                    release,
                    reason=ACTION_REFUSED,
                    message=f"the apiserver refused to {action}: {refused}"
                    + _refusal_hint(refused),
                    now=clock(),
                    fence=fence,
                )
                return PLAN_RETRY_SECONDS
            if not terminating:
                raise
            # NB: the namespace is being deleted, the release with it: nothing is left to do,
            # and no retry can succeed.
            logger.info(
                "release %s/%s: namespace %s is being deleted; nothing more to do",
                namespace,
                name,
                namespace,
                extra=_fields(namespace, name, revision=None, reason="NamespaceTerminating"),
            )
            return None
    tainted_wake = await _replace_tainted(release, spec, pods, now=now, fence=fence)
    new_status = result.status
    if measures:
        # NB: every due measurement at once (each bounded by its gate's timeout), never one
        # after the other; the results go into the one status write below.
        taken = await asyncio.gather(
            *(
                _run_job(namespace, m, clock=clock, fence=fence)
                if m.job is not None
                else probes.measure(m, now=clock())
                for m in measures
            )
        )
        for action, measurement in zip(measures, taken, strict=True):
            if measurement is None:
                continue  # NB: a gate's Job still runs: measured on a later look
            logger.info(
                "release %s/%s: gate %s of revision %s: %s%s",
                namespace,
                name,
                action.gate.name,
                action.revision,
                measurement.phase,
                f" ({measurement.message})" if measurement.message else "",
                extra=_fields(
                    namespace, name, revision=action.revision, reason=str(measurement.phase)
                ),
            )
            metrics.GATE_MEASUREMENTS.labels(
                kind=action.gate.kind, phase=str(measurement.phase)
            ).inc()
            new_status = verdicts.with_measurement(
                new_status,
                revision=action.revision,
                gate=action.gate.name,
                measurement=measurement,
                stage=action.stage,
            )
    applied_at = clock()
    for event in result.events:
        metrics.ROLLOUT_EVENTS.labels(reason=event.reason).inc()
        metrics.count_drift(scope="revision", reason=event.reason)
        logger.log(
            logging.WARNING if event.type == "Warning" else logging.INFO,
            "release %s/%s: %s %s",
            namespace,
            name,
            event.reason,
            event.message,
            extra=_fields(namespace, name, revision=event.revision, reason=event.reason),
        )
        # NB: an Event is a write too: a replica resumed after its peers took over must not
        # announce (again) what it planned before the pause.
        _check(fence)
        await kube.post_event(
            release=release, type_=event.type, reason=event.reason, message=event.message, now=now
        )
    if new_status != status:
        _check(fence)
        try:
            await kube.patch_status(
                namespace, name, new_status, resource_version=metadata.get("resourceVersion")
            )
        except kube.Conflict:
            logger.info(
                "release %s/%s changed while it was reconciled; planning again",
                namespace,
                name,
                extra=_fields(namespace, name, revision=None, reason="Conflict"),
            )
            return 0
    ends = metrics.rollout_ends(
        before=status, after=result.status, spec=spec, planned_at=now, applied_at=applied_at
    )
    metrics.observe_rollout_ends(ends)
    for end in ends:
        _log_rollout_end(namespace, name, end)
    if result.status.phase != status.phase:
        logger.info(
            "release %s/%s: phase %s -> %s",
            namespace,
            name,
            status.phase,
            result.status.phase,
            extra=_fields(
                namespace,
                name,
                revision=result.status.desired_revision,
                reason=_headline_reason(result.status),
                phase=result.status.phase,
            ),
        )
    metrics.PHASES.set(namespace, name, result.status.phase)
    # NB: actions change the cluster; their effects arrive as watch events, which re-queue the
    # release. The requeue below is only for changes that time alone brings (deadlines, delays),
    # and for referenced ConfigMaps and Secrets, which are read, never watched (see
    # CONFIG_POLL_SECONDS).
    requeue = _sooner(result.requeue_after, tainted_wake)
    polls = []
    if spec.config_refs:
        polls.append(CONFIG_POLL_SECONDS)
    if unsigned or (checks is not None and any(c.outcome != image_checks.OK for c in checks)):
        # NB: a registry is not watched: an image pushed, or a registry back, is seen this soon.
        polls.append(registry.MISSING_SECONDS)
    if polls:
        return min(polls) if requeue is None else min(requeue, *polls)
    return requeue


# The credentials of a release's usable pull secrets, in order, and the problems met reading
# them (each a verdict of the registry check's kind: PullSecretMissing...; none: all usable).
_PullRead = tuple[tuple[pulls.Credentials, ...], tuple[image_checks.Check, ...]]


class _PullSecrets:
    """The credentials a revision's pods will pull with: their pull secrets' (the template's
    ``imagePullSecrets`` or, when it names none, its ServiceAccount's), read once, on first
    use, through the kube adapter; or why they cannot be had (a pull secret, or the
    ServiceAccount, that cannot be used: each a verdict of its own, which holds the revision).

    Both the registry check and the verification of signatures and attestations ask with
    them, merged over the operator-wide config (:func:`permafrost.artifacts.pulls.merged`), so
    what they say is what the kubelet will meet.

    NB: every read here is a ``get`` by name: no Secret is listed or watched. The
    ServiceAccount is read only when the template names no imagePullSecrets, as the
    ServiceAccount admission plugin copies its secrets only into such pods.
    """

    def __init__(self, *, namespace: str, desired: planner.Desired) -> None:
        self.namespace = namespace
        self.pod_spec: dict[str, Any] = dict(
            desired.deployment["spec"]["template"].get("spec") or {}
        )
        self._read: _PullRead | None = None

    async def read(self) -> _PullRead:
        """The pull secrets' credentials, in the template's (or ServiceAccount's) order, and
        the problems met reading them (none: every one is usable)."""
        if self._read is None:
            self._read = await _read_pull_secrets(namespace=self.namespace, pod_spec=self.pod_spec)
        return self._read


async def _read_pull_secrets(*, namespace: str, pod_spec: dict[str, Any]) -> _PullRead:
    problems: list[image_checks.Check] = []
    names = pulls.pull_secret_names(pod_spec)
    if not names:
        account = pulls.service_account_of(pod_spec)
        try:
            sa = await kube.read_service_account(namespace=namespace, name=account)
        except kube.ConfigForbidden as exc:
            problems.append(_forbidden(f"ServiceAccount {namespace}/{account}", exc))
            sa = None
        # NB: a ServiceAccount that does not exist stops the pods' creation itself (the
        # ReplicaSet says so); it has no secrets to add here.
        names = pulls.pull_secret_names(sa or {})

    async def secret(name: str) -> pulls.Credentials | image_checks.Check:
        what = f"Secret {namespace}/{name}"
        try:
            body = await kube.read_pull_secret(namespace=namespace, name=name)
        except kube.ConfigForbidden as exc:
            return _forbidden(what, exc)
        if body is None:
            return image_checks.Check(
                what,
                image_checks.PULL_SECRET_MISSING,
                f"the image pull secret {namespace}/{name} does not exist",
            )
        try:
            return pulls.secret_credentials(body)
        except ValueError as exc:
            return image_checks.Check(what, image_checks.PULL_SECRET_INVALID, str(exc))

    read = await asyncio.gather(*(secret(n) for n in names))
    problems += [r for r in read if isinstance(r, image_checks.Check)]
    usable = tuple(r for r in read if not isinstance(r, image_checks.Check))
    return usable, tuple(problems)


async def _check_images(
    checker: registry.Checker, *, desired: planner.Desired, pull_secrets: _PullSecrets
) -> tuple[image_checks.Check, ...]:
    """What the registries say about the images of a revision about to be created, asked with
    the credentials its pods will pull with, judged against the platforms of the nodes they may
    run on. A pull secret (or ServiceAccount, or node list) that cannot be used is a verdict of
    its own, which holds the revision (the images are not looked up then: without the right
    credentials their verdict would say nothing).

    NB: the node list is the one read not by name (cached: :meth:`registry.Checker.nodes`).
    """
    secrets, found = await pull_secrets.read()
    problems = list(found)
    platforms: tuple[str, ...] = ()
    try:
        nodes = await checker.nodes(kube.list_nodes)
        platforms = pulls.node_platforms(
            nodes, node_selector=pull_secrets.pod_spec.get("nodeSelector")
        )
    except kube.ConfigForbidden as exc:
        problems.append(_forbidden("the nodes", exc))
    if problems:
        return tuple(problems)
    credentials = pulls.merged(checker.client.credentials, secrets)
    return await checker.check(desired.images, credentials=credentials, platforms=platforms)


def _forbidden(what: str, exc: kube.ConfigForbidden) -> image_checks.Check:
    """The verdict for something the registry check (or the verification of signatures)
    needs and may not read."""
    if what.startswith("Secret "):
        return image_checks.Check(
            what,
            image_checks.PULL_SECRET_FORBIDDEN,
            f"the operator may not read the image pull secret {what.removeprefix('Secret ')} "
            f"({exc.detail}); bind the ClusterRole permafrost-secrets in its namespace "
            "(docs/install.md)",
        )
    return image_checks.Check(
        what,
        image_checks.REGISTRY_CHECK_FORBIDDEN,
        f"the operator may not read {what} ({exc.detail}); bind the ClusterRole "
        "permafrost-registry-check to it (docs/install.md)",
    )


async def _verify_signatures(
    checker: registry.SignatureChecker,
    *,
    pull_secrets: _PullSecrets,
    policies: list[policy.Policy],
    subject: policy.Subject,
    create: policy.Verdict,
    promote: policy.Verdict,
    creating: bool,
) -> tuple[policy.Verdict, policy.Verdict, bool]:
    """The verdicts with the results of the policies' ``verifyImages`` entries added (the
    spec's images, verified in their registries with the credentials the pods pull with,
    cached); and whether one of them fails while the revision is still to be created (it is
    then looked at again soon: a registry is not watched). Pull secrets that cannot be used
    are each image's verdict (PullSecretMissing...): nothing is fetched without them.

    NB: for a revision that exists, a registry that could not be asked (unreachable, refusing
    the credentials, or pull secrets that cannot be used) says nothing new (it was verified
    before it was created, or predates the policy): such verdicts are left out rather than
    reported as a violation by what already runs.
    """
    required = {
        stage: policy.image_requirements(policies, stage=stage, subject=subject)
        for stage in ("create", "promote")
    }
    wanted = [(r.image, r.keys, r.attestations) for found in required.values() for r in found]
    if not wanted:
        return create, promote, False
    secrets, problems = await pull_secrets.read()
    # NB: a ServiceAccount the operator may not read (permafrost-registry-check is not bound
    # unless the registry check is on) leaves the operator-wide credentials, as before pull
    # secrets were read: a signature verifies the same whoever fetched it, and holding every
    # release of a default install for a grant it never needed would be a regression. A
    # registry that refuses those credentials says so (RegistryUnauthorized).
    problems = tuple(p for p in problems if p.outcome != image_checks.REGISTRY_CHECK_FORBIDDEN)
    if problems:
        verified = {
            attestations.verification_key(*w): signatures.not_fetched(w[0], problems)
            for w in wanted
        }
    else:
        credentials = pulls.merged(checker.client.credentials, secrets)
        verified = await checker.verify(wanted, credentials=credentials)
    if not creating:
        verified = {k: v for k, v in verified.items() if v.outcome not in signatures.NOT_ASKED}
        required = {s: tuple(r for r in rs if r.key in verified) for s, rs in required.items()}
    extra = {s: policy.signature_results(rs, verified) for s, rs in required.items()}
    failing = creating and any(r.outcome != "Pass" for rs in extra.values() for r in rs)
    return (
        policy.with_results(create, extra["create"]),
        policy.with_results(promote, extra["promote"]),
        failing,
    )


def _sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


async def _replace_tainted(
    release: manifests.ReleaseRef,
    spec: models.GuardedReleaseSpec,
    pods: list[dict[str, Any]],
    *,
    now: datetime.datetime,
    fence: Fence | None,
) -> float | None:
    """Delete the release's pods a break-glass session marked, once it is over (their
    ReplicaSets make fresh pods of the same revision); return seconds until the next session
    ends (``None``: none is open on a marked pod)."""
    due, wake = sessions.replacements(pods, now=now, enabled=spec.rollout.replace_tainted_pods)
    by_name = {str(p["metadata"].get("name")): p for p in pods}
    for replacement in due:
        pod = by_name[replacement.name]
        revision = (pod["metadata"].get("labels") or {}).get(models.LABEL_REVISION)
        logger.info(
            "release %s/%s: %s",
            release.namespace,
            release.name,
            replacement.message,
            extra=_fields(
                release.namespace,
                release.name,
                revision=revision,
                reason=sessions.TAINTED_POD_REPLACED,
            ),
        )
        _check(fence)
        await kube.delete_pod(
            namespace=release.namespace,
            name=replacement.name,
            uid=pod["metadata"].get("uid"),
        )
        metrics.ROLLOUT_EVENTS.labels(reason=sessions.TAINTED_POD_REPLACED).inc()
        await kube.post_event(
            release=release,
            type_="Normal",
            reason=sessions.TAINTED_POD_REPLACED,
            message=replacement.message,
            now=now,
        )
    if wake is None:
        return None
    # NB: a second late rather than early: the pod is looked at again once the session is over.
    return max(0.0, (wake - now).total_seconds()) + 1.0


async def _nothing() -> list[dict[str, Any]]:
    return []


def _refusal_hint(refused: str) -> str:
    """What to look at, for the refusals seen in practice."""
    if "permafrost-frozen-workloads" in refused:
        # NB: the fail-safe policy exempts one operator identity: another operator's (a second
        # install, or an older one left behind) refuses this one's revisions.
        return (
            " (the fail-safe ValidatingAdmissionPolicy permafrost-frozen-workloads exempts "
            "another identity than this operator's: is another Permafrost operator installed, "
            "or was its policy left behind? docs/install.md)"
        )
    return ""


async def _cannot_plan(
    release: manifests.ReleaseRef,
    *,
    reason: str,
    message: str,
    now: datetime.datetime,
    fence: Fence | None,
) -> None:
    """Say why a release is not planned this time: one log line and a Warning Event (posted
    only while ``fence`` allows writes)."""
    logger.warning(
        "release %s/%s: %s",
        release.namespace,
        release.name,
        message,
        extra=_fields(release.namespace, release.name, revision=None, reason=reason),
    )
    _check(fence)
    await kube.post_event(release=release, type_="Warning", reason=reason, message=message, now=now)


def _fields(
    namespace: str, name: str, *, revision: str | None, reason: str, **more: object
) -> dict[str, object]:
    """The machine-readable fields of a decision's log record (``extra``)."""
    return {"release": name, "namespace": namespace, "revision": revision, "reason": reason, **more}


def _log_rollout_end(namespace: str, name: str, end: metrics.RolloutEnd) -> None:
    timing = {"duration_seconds": end.duration, "time_to_rollback_seconds": end.time_to_rollback}
    known = {k: v for k, v in timing.items() if v is not None}
    took = "".join(f" in {v:.1f}s" for v in known.values())
    logger.info(
        "release %s/%s: rollout of revision %s ended: %s (%s)%s",
        namespace,
        name,
        end.revision,
        end.outcome,
        end.reason,
        took,
        extra=_fields(
            namespace, name, revision=end.revision, reason=end.reason, outcome=end.outcome, **known
        ),
    )


async def _run_job(
    namespace: str, action: planner.Measure, *, clock: Clock, fence: Fence | None
) -> models.Measurement | None:
    """The measurement of a job gate: its Job is created if it does not exist yet; None while
    it runs. A refused Job is a measurement too (the gate is misconfigured: it holds)."""
    assert action.job is not None
    name = action.job["metadata"]["name"]
    _check(fence)
    try:
        job = await kube.run_gate_job(namespace=namespace, body=action.job)
    except kube.JobRefused as exc:
        return verdicts.refused_job(name, str(exc), at=clock())
    return verdicts.judge_job(job, at=clock())


def _revision_of(action: planner.Action, by_name: dict[str, str]) -> str | None:
    """The revision hash an action is about."""
    if isinstance(action, planner.CreateRevision):
        revision = (action.deployment["metadata"].get("labels") or {}).get(models.LABEL_REVISION)
        return str(revision) if revision else None
    if isinstance(action, planner.RouteService):
        return action.selector.get(models.LABEL_REVISION)
    if isinstance(action, planner.Measure):
        return action.revision
    return by_name.get(action.name)


def _headline_reason(status: models.GuardedReleaseStatus) -> str:
    """The reason behind a phase: of the condition that decided it."""
    deciding = {
        "RolledBack": conditions.ROLLED_BACK,
        "Degraded": conditions.DEGRADED,
        "Held": conditions.POLICY_COMPLIANT,
        "Stable": conditions.READY,
        "Unavailable": conditions.READY,
    }
    type_ = deciding.get(status.phase or "", conditions.PROGRESSING)
    cond = conditions.find(status.conditions, type_)
    return cond.reason if cond is not None else str(status.phase)


async def reconcile_workload(
    *,
    namespace: str,
    kind: str,
    name: str,
    namespaces: store.Store,
    clock: Clock = utcnow,
    fence: Fence | None = None,
) -> float | None:
    """Fingerprint, accept or report drift of one workload in an enforced namespace.

    NB: the namespace's labels come from the watch-fed store, not from a read per workload: a
    namespace labelled enforced later is scanned whole when its event arrives.
    """
    labels = namespaces.namespaces.get(namespace)
    if labels is None or labels.get(models.LABEL_ENFORCE) != "true":
        return None
    obj = await kube.read_workload(namespace=namespace, kind=kind, name=name)
    if obj is None or models.LABEL_RELEASE in ((obj.get("metadata") or {}).get("labels") or {}):
        return None
    obj = {**obj, "kind": kind}
    verdict = admission.workload_drift(obj, now=conditions.timestamp(clock()))
    if verdict.annotations or verdict.labels:
        _check(fence)
        await kube.patch_workload_metadata(
            namespace=namespace,
            kind=kind,
            name=name,
            annotations=verdict.annotations,
            labels=verdict.labels,
        )
    if verdict.event is not None:
        type_, reason, message = verdict.event
        metrics.count_drift(scope="workload", reason=reason)
        logger.warning(
            "%s %s/%s: %s %s",
            kind,
            namespace,
            name,
            reason,
            message,
            extra={"namespace": namespace, "kind": kind, "workload": name, "reason": reason},
        )
        _check(fence)
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
