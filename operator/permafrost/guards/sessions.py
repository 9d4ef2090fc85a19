"""Break-glass sessions: exec, attach and port-forward into frozen pods, and what follows. Pure.

A shell in a production pod is the classic in-place hot fix: what runs then differs from what
was deployed, and nothing records how. So ``kubectl exec``, ``attach``, ``cp`` (an exec of
``tar``) and ``port-forward`` into a frozen pod (one Permafrost manages, or any pod of a
namespace labelled ``permafrost.dev/enforce=true``) are denied, unless the caller holds an open
*break-glass session* on that very pod:

- a member of a break-glass group opens one for themselves, for a bounded time, with a reason
  (``permafrost break-glass POD --for 15m --reason "..."``), by writing the annotations
  :data:`ANNOTATION_USER`, :data:`ANNOTATION_SINCE`, :data:`ANNOTATION_UNTIL` and
  :data:`ANNOTATION_REASON` on the pod. Admission (:func:`review_session`, and the fail-safe
  policy for what it can check) refuses a session written by anyone else, for anyone else, or
  for longer than :data:`MAX_SESSION`;
- while it is open, its user's exec and attach are let through (:func:`review_connect`), and
  the pod is marked: the label :data:`LABEL_TAINTED` and a Warning Event. Port-forward changes
  nothing in the pod and does not mark it (and may be allowed to everyone by a setting);
- once the session is over, the operator replaces every marked pod of a release by a fresh pod
  of the same revision (:func:`replacements`), unless the release opts out
  (``spec.rollout.replaceTaintedPods: false``): no runtime drift outlives the session.

Nothing here does I/O; ``now`` is always given.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from permafrost import models
from permafrost.guards import admission
from permafrost.releases import conditions

SESSION_ANNOTATIONS = admission.SESSION_ANNOTATIONS
ANNOTATION_USER, ANNOTATION_SINCE, ANNOTATION_UNTIL, ANNOTATION_REASON = SESSION_ANNOTATIONS
# On a pod a session let an exec or attach into: "exec" or "attach" (the last one seen).
LABEL_TAINTED = "permafrost.dev/tainted"

MAX_SESSION = datetime.timedelta(hours=4)
# NB: a session starts when it is written; ``since`` comes from the writer's clock.
CLOCK_SKEW = datetime.timedelta(minutes=2)

# The CONNECT subresources of pods that reach into a running container.
CONNECT_SUBRESOURCES = ("exec", "attach", "portforward")
VERBS = {"exec": "exec", "attach": "attach", "portforward": "port-forward"}

# Reasons (admission responses, Events, metrics).
EXEC_DENIED = "ExecDenied"
ATTACH_DENIED = "AttachDenied"
PORT_FORWARD_DENIED = "PortForwardDenied"
PORT_FORWARD_ALLOWED = "PortForwardAllowed"
BREAK_GLASS_EXEC = "BreakGlassExec"
SESSION_OPENED = "BreakGlassSessionOpened"
SESSION_REFUSED = "BreakGlassSessionRefused"
TAINTED_POD_REPLACED = "TaintedPodReplaced"
DENIED = {"exec": EXEC_DENIED, "attach": ATTACH_DENIED, "portforward": PORT_FORWARD_DENIED}


@dataclasses.dataclass(frozen=True)
class Session:
    """A break-glass session, as its annotations on a pod hold it."""

    user: str
    since: datetime.datetime
    until: datetime.datetime
    reason: str

    def annotations(self) -> dict[str, str]:
        return {
            ANNOTATION_USER: self.user,
            ANNOTATION_SINCE: conditions.timestamp(self.since),
            ANNOTATION_UNTIL: conditions.timestamp(self.until),
            ANNOTATION_REASON: self.reason,
        }

    def open_at(self, now: datetime.datetime) -> bool:
        """Whether the session lets its user in at ``now``: begun (give or take the clock
        skew), not over, and no longer than :data:`MAX_SESSION`."""
        return (
            self.since - CLOCK_SKEW <= now < self.until and self.until - self.since <= MAX_SESSION
        )


def _annotations(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    found = meta.get("annotations") if isinstance(meta, Mapping) else None
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, Mapping) else {}


def _labels(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    found = meta.get("labels") if isinstance(meta, Mapping) else None
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, Mapping) else {}


def _time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        moment = conditions.parse_timestamp(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def session_of(obj: Mapping[str, Any] | None) -> Session | None:
    """The session an object's annotations hold; ``None`` if there is none or it is unusable
    (a key missing, a time that is not RFC 3339 with a zone, a blank user or reason)."""
    annotations = _annotations(obj)
    user = annotations.get(ANNOTATION_USER, "").strip()
    reason = annotations.get(ANNOTATION_REASON, "").strip()
    since, until = (
        _time(annotations.get(ANNOTATION_SINCE)),
        _time(annotations.get(ANNOTATION_UNTIL)),
    )
    if not user or not reason or since is None or until is None:
        return None
    return Session(user=user, since=since, until=until, reason=reason)


def open_session(
    *, user: str, reason: str, duration: datetime.timedelta, now: datetime.datetime
) -> Session:
    """The session ``permafrost break-glass`` writes. Raises ValueError for a blank reason or
    a duration that is not positive or longer than :data:`MAX_SESSION`."""
    if not reason.strip():
        raise ValueError("a break-glass session needs a reason (--reason)")
    if duration <= datetime.timedelta(0) or duration > MAX_SESSION:
        raise ValueError(
            f"a break-glass session lasts more than 0s and at most {_span(MAX_SESSION)}"
        )
    now = now.replace(microsecond=0)
    return Session(user=user, since=now, until=now + duration, reason=reason.strip())


def _span(delta: datetime.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def _member(groups: Collection[str], settings: admission.Settings) -> bool:
    return bool(set(groups) & settings.break_glass_groups)


def _groups(settings: admission.Settings) -> str:
    return ", ".join(sorted(settings.break_glass_groups)) or "(none configured)"


# --- opening a session (an UPDATE of the pod) ---------------------------------------------------


def review_session(
    request: admission.Request, settings: admission.Settings, *, now: datetime.datetime
) -> admission.Decision | None:
    """Decide an UPDATE of a frozen pod that opens or changes a break-glass session.

    ``None``: the request does not touch a session, or only ends one (anyone who may update the
    pod may end a session: that only takes access away, and the marked pod is replaced
    sooner). Otherwise a session must be written by a member of a break-glass group, for
    themselves, starting now and lasting at most :data:`MAX_SESSION`.
    """
    if request.kind != "Pod" or request.operation != "UPDATE" or request.subresource is not None:
        return None
    old, new = _annotations(request.old), _annotations(request.new)
    before = {k: old.get(k) for k in SESSION_ANNOTATIONS}
    after = {k: new.get(k) for k in SESSION_ANNOTATIONS}
    if before == after or not any(after.values()):
        return None
    if request.username in settings.exempt_users:
        return admission.Decision(True, admission.EXEMPT)
    what = f"Pod {request.namespace}/{request.name}"

    def refused(why: str) -> admission.Decision:
        return admission.Decision(
            False,
            SESSION_REFUSED,
            f"break-glass session on {what} refused: {why}",
            event_type="Warning",
        )

    if not _member(request.groups, settings):
        return refused(f"{request.username} is not in a break-glass group ({_groups(settings)})")
    session = session_of(request.new)
    if session is None:
        return refused(
            f"it needs all of {', '.join(SESSION_ANNOTATIONS)} (times in RFC 3339, UTC); "
            "use: permafrost break-glass POD --for 15m --reason '...'"
        )
    if session.user != request.username:
        return refused(
            f"{request.username} may open a session only for themselves, not for {session.user}"
        )
    if abs(session.since - now) > CLOCK_SKEW:
        return refused(
            f"it must start now ({ANNOTATION_SINCE} is {conditions.timestamp(session.since)}, "
            f"the time is {conditions.timestamp(now)})"
        )
    if not session.since < session.until <= session.since + MAX_SESSION:
        return refused(f"it must end after it starts and last at most {_span(MAX_SESSION)}")
    return admission.Decision(
        True,
        SESSION_OPENED,
        f"{session.user} opened a break-glass session on {what} until "
        f"{conditions.timestamp(session.until)} ({_span(session.until - session.since)}): "
        f"{session.reason}",
        warnings=(
            f"break-glass session: exec and attach into {what} are recorded; the pod is "
            "replaced by a fresh one after the session",
        ),
        event_type="Warning",
    )


# --- exec, attach, port-forward (a CONNECT) -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Connect:
    """A CONNECT request on a pod's subresource, and the pod and namespace it is about."""

    subresource: str  # exec, attach or portforward
    namespace: str
    name: str
    username: str
    groups: tuple[str, ...]
    pod: Mapping[str, Any] | None  # as the cluster holds it now; None: there is none
    namespace_labels: Mapping[str, str]
    options: Mapping[str, Any] | None = None  # PodExecOptions, PodAttachOptions, ...


def frozen_pod(pod: Mapping[str, Any], namespace_labels: Mapping[str, str]) -> bool:
    """Whether admission freezes this pod: Permafrost manages it, or its namespace opted in."""
    return (
        models.LABEL_RELEASE in _labels(pod) or namespace_labels.get(models.LABEL_ENFORCE) == "true"
    )


def taint_of(subresource: str) -> str | None:
    """The mark an admitted CONNECT leaves on the pod (``None``: port-forward leaves none)."""
    return subresource if subresource in ("exec", "attach") else None


def _command(options: Mapping[str, Any] | None) -> str:
    command = options.get("command") if isinstance(options, Mapping) else None
    if isinstance(command, list) and command:
        return " " + repr([str(c) for c in command][:16])
    return ""


def review_connect(
    request: Connect, settings: admission.Settings, *, now: datetime.datetime
) -> admission.Decision:
    """Decide an exec, attach or port-forward into a pod."""
    verb = VERBS.get(request.subresource, request.subresource)
    if request.username in settings.exempt_users:
        return admission.Decision(True, admission.EXEMPT)
    if request.pod is None or not frozen_pod(request.pod, request.namespace_labels):
        return admission.Decision(True, admission.NOT_FROZEN)
    if request.subresource == "portforward" and settings.allow_port_forward:
        return admission.Decision(True, PORT_FORWARD_ALLOWED)
    what = f"Pod {request.namespace}/{request.name}"
    session = session_of(request.pod)
    member = _member(request.groups, settings)
    if session is not None and session.user == request.username and member and session.open_at(now):
        marked = (
            "; the pod is marked tainted and replaced by a fresh one after the session"
            if taint_of(request.subresource)
            else ""
        )
        return admission.Decision(
            True,
            BREAK_GLASS_EXEC,
            f"{request.username} ran {verb}{_command(request.options)} in {what} under a "
            f"break-glass session until {conditions.timestamp(session.until)}: "
            f"{session.reason}",
            warnings=(f"break-glass: {verb} into {what} is recorded{marked}",),
            event_type="Warning",
        )
    if session is None or session.user != request.username:
        state = "no break-glass session of yours is open on it"
    elif not member:
        state = f"you are not in a break-glass group ({_groups(settings)})"
    elif now >= session.until:
        state = f"your break-glass session ended at {conditions.timestamp(session.until)}"
    else:
        state = "your break-glass session is not open yet, or too long"
    return admission.Decision(
        False,
        DENIED.get(request.subresource, EXEC_DENIED),
        f"{verb} into {what} is denied: the pod is frozen by Permafrost, and a shell in it "
        f"changes what runs outside any revision ({state}). Debug a copy instead (kubectl "
        f"debug {request.name} --copy-to=NAME), or, in an emergency, a member of "
        f"{_groups(settings)} opens a session: permafrost break-glass {request.name} -n "
        f"{request.namespace} --for 15m --reason '...'",
        event_type="Warning",
    )


# --- after the session: replacing marked pods ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Replacement:
    """A marked pod whose session is over: deleted, its ReplicaSet makes a fresh one."""

    name: str
    message: str


def replacements(
    pods: Sequence[Mapping[str, Any]], *, now: datetime.datetime, enabled: bool
) -> tuple[list[Replacement], datetime.datetime | None]:
    """The marked pods of a release to replace now, and when to look again (the end of the
    earliest session still open on a marked pod; ``None``: no need).

    A marked pod is replaced once no session is open on it: the session ended, or was removed.
    With ``enabled`` false (``spec.rollout.replaceTaintedPods: false``) none is.
    """
    if not enabled:
        return [], None
    due: list[Replacement] = []
    wake: datetime.datetime | None = None
    for pod in pods:
        meta = pod.get("metadata") or {}
        taint = _labels(pod).get(LABEL_TAINTED)
        if not taint or meta.get("deletionTimestamp"):
            continue
        session = session_of(pod)
        if session is not None and now < session.until:
            wake = session.until if wake is None else min(wake, session.until)
            continue
        name = str(meta.get("name") or "")
        revision = _labels(pod).get(models.LABEL_REVISION, "?")
        ended = (
            f"the break-glass session of {session.user} ended at "
            f"{conditions.timestamp(session.until)}"
            if session is not None
            else "no break-glass session is open on it"
        )
        due.append(
            Replacement(
                name,
                f"pod {name} of revision {revision} was changed at run time ({taint}) and "
                f"{ended}: it is replaced by a fresh pod of the same revision",
            )
        )
    return due, wake
