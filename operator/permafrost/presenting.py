"""What ``permafrost status`` and ``permafrost history`` show, computed from raw JSON. Pure.

The command line reads GuardedReleases and Events through the kube adapter and hands them here
as the apiserver sent them; this module turns them into tables and timelines for people and
into documents for machines (``-o json|yaml``; their shape is documented in ``docs/cli.md`` and
kept stable: fields are only ever added). Time is always injected (``now``), never read.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from permafrost import models
from permafrost.releases import conditions

# Phases after which nothing moves until someone changes something.
SETTLED_PHASES = frozenset({"Stable", "RolledBack", "Degraded", "Held", "Pending", "Unavailable"})
# Which condition explains a phase that is not Stable.
EXPLAINED_BY = {
    "RolledBack": conditions.ROLLED_BACK,
    "Degraded": conditions.DEGRADED,
    "Held": conditions.POLICY_COMPLIANT,
    "Progressing": conditions.PROGRESSING,
    "Pending": conditions.PROGRESSING,
    "Unavailable": conditions.READY,
}
NOT_RECONCILED = "not reconciled yet: is the operator running? (permafrost run)"
_DIGEST = re.compile(r"@(sha256|sha512):([0-9a-f]{12})[0-9a-f]+$")
_SUBJECT = re.compile(r"\brevision (\S+?)[\s(),;:]")


# --- time --------------------------------------------------------------------------------------


def parse_time(value: str | None) -> datetime.datetime | None:
    """An RFC 3339 time from the API (``Z`` or an offset; fractions allowed), or ``None``."""
    if not value:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def human_duration(seconds: float) -> str:
    """A duration as kubectl prints ages: ``45s``, ``5m30s``, ``75m``, ``4h10m``, ``3d2h``."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if days < 365 * 8:
        return f"{years}y{days % 365}d" if days % 365 else f"{years}y"
    return f"{years}y"


def age(value: str | None, *, now: datetime.datetime) -> str:
    """How long ago ``value`` was, kubectl-style; ``<unknown>`` if there is no usable time."""
    moment = parse_time(value)
    if moment is None:
        return "<unknown>"
    return human_duration((now - moment).total_seconds())


def clock(value: str | None) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS`` in UTC (the timeline's column), or ``-``."""
    moment = parse_time(value)
    return "-" if moment is None else moment.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


# --- tables ------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A kubectl-style table: upper-case headers, columns three spaces apart, no trailing pad."""
    body = [[_one_line(cell) for cell in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *body]:
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def short_image(image: str) -> str:
    """An image with its digest cut to 12 hex digits (tables only; documents keep it whole)."""
    return _DIGEST.sub(lambda m: f"@{m.group(1)}:{m.group(2)}", image)


# --- one release -------------------------------------------------------------------------------


def _status(release: Mapping[str, Any]) -> models.GuardedReleaseStatus:
    return models.GuardedReleaseStatus.model_validate(release.get("status") or {})


def explanation(release: Mapping[str, Any]) -> str:
    """Why a release is not Stable, in one line (``Reason: message``); empty when Stable."""
    status = _status(release)
    generation = (release.get("metadata") or {}).get("generation")
    if status.observed_generation is None or not status.phase:
        return NOT_RECONCILED
    if status.phase == "Stable":
        if generation is not None and status.observed_generation < generation:
            return (
                f"generation {generation} not observed yet (observed {status.observed_generation})"
            )
        # NB: a Stable release may still break an Enforce policy or be reachable through another
        # Service; neither changes the phase, so the explanation says it.
        for type_ in (conditions.POLICY_COMPLIANT, conditions.TRAFFIC_GUARDED):
            cond = conditions.find(status.conditions, type_)
            if cond is not None and cond.status == models.ConditionStatus.FALSE:
                return f"{cond.reason}: {cond.message}"
        return ""
    cond = conditions.find(status.conditions, EXPLAINED_BY.get(status.phase, conditions.READY))
    if cond is None:
        return status.message or ""
    return f"{cond.reason}: {cond.message}" if cond.message else cond.reason


def summary(release: Mapping[str, Any], *, now: datetime.datetime) -> dict[str, Any]:
    """The release as one row of ``permafrost status`` (also its JSON document's fields)."""
    meta = release.get("metadata") or {}
    status = _status(release)
    return {
        "namespace": meta.get("namespace", ""),
        "name": meta.get("name", ""),
        "desiredRevision": status.desired_revision,
        "stableRevision": status.stable_revision,
        "phase": status.phase,
        "ready": status.ready_replicas,
        "age": age(meta.get("creationTimestamp"), now=now),
        "message": explanation(release),
    }


def status_table(
    releases: Sequence[Mapping[str, Any]], *, now: datetime.datetime, all_namespaces: bool
) -> str:
    """``permafrost status``: one row per release; MESSAGE says why one is not Stable."""
    headers = ["NAME", "DESIRED", "STABLE", "PHASE", "READY", "AGE", "MESSAGE"]
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
    rows = []
    for release in releases:
        s = summary(release, now=now)
        row = [
            s["name"],
            s["desiredRevision"] or "<none>",
            s["stableRevision"] or "<none>",
            s["phase"] or "<none>",
            s["ready"] or "<none>",
            s["age"],
            s["message"],
        ]
        rows.append([s["namespace"], *row] if all_namespaces else row)
    return table(headers, rows)


def revision_rows(status: models.GuardedReleaseStatus) -> list[list[str]]:
    rows = []
    for r in status.revisions:
        ended = r.retired_at or r.failed_at
        why = r.reason or ""
        if r.message:
            why = f"{why}: {r.message}" if why else r.message
        rows.append(
            [
                r.hash,
                r.outcome.value,
                ", ".join(short_image(i) for i in r.images) or "-",
                clock(r.created_at),
                clock(r.promoted_at),
                clock(ended),
                why or "-",
            ]
        )
    return rows


REVISION_HEADERS = ["REVISION", "OUTCOME", "IMAGES", "CREATED", "PROMOTED", "ENDED", "REASON"]
GATE_HEADERS = ["REVISION", "GATE", "KIND", "VERDICT", "MEASURED", "LAST MEASUREMENTS"]


def gate_rows(status: models.GuardedReleaseStatus) -> list[list[str]]:
    """The promotion gates of every retained revision's last attempt: verdict, tallies (S
    successful, F failed, I inconclusive, E errors) and the newest measurements kept."""
    rows = []
    for r in status.revisions:
        for g, after in [*((g, False) for g in r.gates), *((g, True) for g in r.analysis)]:
            tallies = f"{g.successful}S {g.failed}F {g.inconclusive}I {g.errors}E"
            last = " ".join(
                f"{clock(m.at)}={m.value or m.phase.value}"
                + ("" if m.phase == models.MeasurementPhase.SUCCESSFUL else f"({m.phase.value})")
                for m in g.measurements[-5:]
            )
            name = f"{g.name} (after promotion)" if after else g.name
            rows.append([r.hash, name, g.kind, g.verdict.value, tallies, last or "-"])
    return rows


def _gate_lines(status: models.GuardedReleaseStatus) -> list[str]:
    rows = gate_rows(status)
    if not rows:
        return []
    lines = ["", "Promotion gates (last attempt of each revision):"]
    lines.append(_indent(table(GATE_HEADERS, rows)))
    for r in status.revisions:
        for g in [*r.gates, *r.analysis]:
            if g.verdict != models.GateVerdict.RUNNING and g.message:
                lines.append(f"  {r.hash}/{g.name}: {_one_line(g.message)}")
    return lines


def status_detail(release: Mapping[str, Any], *, now: datetime.datetime) -> str:
    """``permafrost status NAME``: the summary, the conditions and the retained revisions."""
    meta = release.get("metadata") or {}
    spec = release.get("spec") or {}
    status = _status(release)
    s = summary(release, now=now)
    service = (spec.get("service") or {}).get("name")
    lines = [
        f"Name:        {meta.get('namespace')}/{meta.get('name')}",
        f"Phase:       {s['phase'] or '<none>'}",
        f"Desired:     {s['desiredRevision'] or '<none>'}" + _rolled_back_from(release),
        f"Stable:      {s['stableRevision'] or '<none>'}"
        + (f" (Service {service} selects it)" if service and s["stableRevision"] else ""),
        f"Ready:       {s['ready'] or '<none>'}",
        f"Generation:  {meta.get('generation')} (observed: "
        + ("not yet" if status.observed_generation is None else str(status.observed_generation))
        + ")",
        f"Age:         {s['age']}",
    ]
    if s["message"]:
        lines.append(f"Message:     {s['message']}")
    lines += ["", "Conditions:"]
    if status.conditions:
        rows = [
            [c.type, c.status.value, c.reason, age(c.last_transition_time, now=now), c.message]
            for c in status.conditions
        ]
        lines.append(_indent(table(["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"], rows)))
    else:
        lines.append("  <none>")
    lines += ["", "Revisions (newest first, times in UTC):"]
    if status.revisions:
        lines.append(_indent(table(REVISION_HEADERS, revision_rows(status))))
    else:
        lines.append("  <none>")
    lines += _gate_lines(status)
    return "\n".join(lines)


def _rolled_back_from(release: Mapping[str, Any]) -> str:
    """`` (manual rollback; the spec's revision is X)`` while a manual rollback is in effect."""
    annotations = (release.get("metadata") or {}).get("annotations") or {}
    to = annotations.get(models.ANNOTATION_ROLLBACK_TO)
    origin = annotations.get(models.ANNOTATION_ROLLBACK_FROM)
    desired = _status(release).desired_revision
    if to and origin and desired is not None and desired != origin and to == desired:
        return f" (manual rollback; the spec's revision is {origin})"
    return ""


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def status_document(release: Mapping[str, Any], *, now: datetime.datetime) -> dict[str, Any]:
    """``permafrost status NAME -o json|yaml``: the summary plus conditions and revisions."""
    status = _status(release)
    return {
        **summary(release, now=now),
        "generation": (release.get("metadata") or {}).get("generation"),
        "observedGeneration": status.observed_generation,
        "conditions": [c.to_json() for c in status.conditions],
        "revisions": [r.to_json() for r in status.revisions],
    }


# --- watching ----------------------------------------------------------------------------------


def settled(release: Mapping[str, Any]) -> bool:
    """Whether the operator has acted on everything asked of the release and nothing moves.

    Asked: the current generation, a manual rollback (``rollback-to``) and a retry (``retry``),
    none of which is acted on yet while the status still shows the state from before.
    """
    meta = release.get("metadata") or {}
    status = _status(release)
    if status.observed_generation is None or status.observed_generation < meta.get("generation", 0):
        return False
    if status.phase not in SETTLED_PHASES:
        return False
    # NB: a held rollout (PromotionHeld: verified, waiting for an approval or the end of a
    # freeze) keeps its revision Progressing, but nothing moves until a person or time acts.
    if status.phase != "Held" and any(
        r.outcome == models.Outcome.PROGRESSING for r in status.revisions
    ):
        return False
    annotations = meta.get("annotations") or {}
    to = annotations.get(models.ANNOTATION_ROLLBACK_TO)
    origin = annotations.get(models.ANNOTATION_ROLLBACK_FROM)
    if to and origin == status.desired_revision and to != status.desired_revision:
        return False  # a rollback was asked for the spec's revision; not started yet
    token = annotations.get(models.ANNOTATION_RETRY)
    desired = next((r for r in status.revisions if r.hash == status.desired_revision), None)
    return not (
        token
        and desired is not None
        and desired.outcome == models.Outcome.FAILED
        and not (desired.attempt or "").endswith(f":{token}")
    )


def progress_line(release: Mapping[str, Any]) -> str:
    """The state of a release in one line, as ``permafrost status --watch`` prints it."""
    status = _status(release)
    meta = release.get("metadata") or {}
    parts = [
        f"{meta.get('name')}",
        status.phase or "<none>",
        f"ready {status.ready_replicas or '-'}",
        f"desired {status.desired_revision or '-'}",
        f"stable {status.stable_revision or '-'}",
    ]
    moving = [r.hash for r in status.revisions if r.outcome == models.Outcome.PROGRESSING]
    if moving:
        parts.append("verifying " + ", ".join(moving))
    why = explanation(release) or status.message
    if why:
        parts.append(f"({why})")
    return "  ".join(parts)


def worth_watching(event: Mapping[str, Any], *, release: str) -> bool:
    """Whether ``permafrost status --watch`` prints an Event: every Event of the release, and
    the warnings about its revisions (denials, drift); not the Deployments' routine scaling."""
    involved = event.get("involvedObject") or {}
    return (involved.get("kind"), involved.get("name")) == (models.KIND, release) or (
        event.get("type") == "Warning"
    )


def stamped(moment: datetime.datetime, text: str) -> str:
    """A watch line: the local wall-clock time (``HH:MM:SS``) and the text."""
    return f"{moment.strftime('%H:%M:%S')}  {text}"


# --- history -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    """One step of a release's timeline."""

    time: str  # RFC 3339, as the API wrote it
    type: str  # Normal | Warning
    object: str  # e.g. guardedrelease/checkout, deployment/checkout-7f3c9a1e0b
    reason: str
    message: str
    source: str  # "event" or "status"
    count: int = 1

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def spec_changes(release: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Who wrote the spec, newest first: the field managers that own fields under ``spec``."""
    owners = []
    for entry in (release.get("metadata") or {}).get("managedFields") or []:
        fields = entry.get("fieldsV1") or {}
        if "f:spec" in fields and not entry.get("subresource"):
            owners.append(
                {
                    "manager": entry.get("manager") or "<unknown>",
                    "operation": entry.get("operation") or "",
                    "time": entry.get("time"),
                }
            )
    return sorted(owners, key=lambda o: parse_time(o["time"]) or _EPOCH, reverse=True)


def requests(release: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Requests made through annotations (rollback-to, retry) and who made them."""
    meta = release.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    found = []
    for key in (models.ANNOTATION_ROLLBACK_TO, models.ANNOTATION_RETRY):
        if key not in annotations:
            continue
        writer: Mapping[str, Any] = next(
            (
                e
                for e in meta.get("managedFields") or []
                if f"f:{key}"
                in (((e.get("fieldsV1") or {}).get("f:metadata") or {}).get("f:annotations") or {})
            ),
            {},
        )
        found.append(
            {
                "annotation": key,
                "value": annotations[key],
                "manager": writer.get("manager") or "<unknown>",
                "time": writer.get("time"),
            }
        )
    return found


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
# Event reasons that report a status milestone of the revision named first in their message.
_MILESTONE_OF_EVENT = {
    "RevisionCreated": "created",
    "Promoted": "promoted",
    "RolledBack": "failed",
    "RevisionFailed": "failed",
    "Superseded": "superseded",
}


def event_entry(event: Mapping[str, Any]) -> Entry:
    involved = event.get("involvedObject") or {}
    when = (
        event.get("lastTimestamp")
        or event.get("eventTime")
        or event.get("firstTimestamp")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )
    return Entry(
        time=when,
        type=event.get("type") or "Normal",
        object=f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
        reason=event.get("reason") or "",
        message=event.get("message") or "",
        source="event",
        count=int(event.get("count") or 1),
    )


def _status_entries(release: Mapping[str, Any]) -> list[tuple[str, str, Entry]]:
    """(revision, milestone, entry) for every milestone the status records."""
    status = _status(release)
    name = (release.get("metadata") or {}).get("name", "")
    grel = f"guardedrelease/{name}"
    found: list[tuple[str, str, Entry]] = []
    for r in status.revisions:
        images = ", ".join(r.images) or "no images"
        milestones = [
            ("created", r.created_at, "Normal", "RevisionCreated", f"revision {r.hash} ({images})"),
            ("promoted", r.promoted_at, "Normal", "Promoted", f"revision {r.hash} took traffic"),
            (
                "failed",
                r.failed_at,
                "Warning",
                r.reason or "RevisionFailed",
                f"revision {r.hash} failed: {r.message or r.reason}",
            ),
        ]
        if r.outcome == models.Outcome.SUPERSEDED:
            milestones.append(("superseded", r.retired_at, "Normal", "Superseded", r.message or ""))
        elif r.retired_at:
            retired = f"revision {r.hash} retired" + (f": {r.message}" if r.message else "")
            milestones.append(("retired", r.retired_at, "Normal", "Retired", retired))
        found += [
            (r.hash, milestone, Entry(when, type_, grel, reason, message, "status"))
            for milestone, when, type_, reason, message in milestones
            if when
        ]
    for c in status.conditions:
        if c.type == conditions.POLICY_COMPLIANT and (
            c.status == models.ConditionStatus.FALSE or c.reason == conditions.POLICY_WARNINGS
        ):
            type_ = "Warning" if c.status == models.ConditionStatus.FALSE else "Normal"
            found.append(
                (
                    "",
                    "policy",
                    Entry(c.last_transition_time, type_, grel, c.reason, c.message, "status"),
                )
            )
    return found


def timeline(release: Mapping[str, Any], events: Iterable[Mapping[str, Any]]) -> list[Entry]:
    """Every step of the release, oldest first: its Events and its status's records merged.

    Events say most (denials, policy verdicts, rollbacks, drift) but expire (one hour by
    default); the status keeps each retained revision's milestones. A status milestone that an
    Event reports too is shown once, as the Event.
    """
    from_events = [event_entry(e) for e in events]
    covered = set()
    for entry in from_events:
        milestone = _MILESTONE_OF_EVENT.get(entry.reason)
        subject = _SUBJECT.search(entry.message + " ")
        if milestone and subject:
            covered.add((subject.group(1), milestone))
        if entry.reason in (
            conditions.POLICY_VIOLATION,
            "PolicyWarning",
            conditions.PROMOTION_HELD,
        ):
            covered.add(("", "policy"))
    entries = from_events + [e for rev, m, e in _status_entries(release) if (rev, m) not in covered]
    return sorted(entries, key=lambda e: parse_time(e.time) or _EPOCH)


def history_document(
    release: Mapping[str, Any], events: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """``permafrost history NAME -o json|yaml``."""
    meta = release.get("metadata") or {}
    status = _status(release)
    return {
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "generation": meta.get("generation"),
        "stableRevision": status.stable_revision,
        "desiredRevision": status.desired_revision,
        "phase": status.phase,
        "specChanges": spec_changes(release),
        "requests": requests(release),
        "revisions": [r.to_json() for r in status.revisions],
        "timeline": [e.to_json() for e in timeline(release, events)],
    }


def history_text(
    release: Mapping[str, Any], events: Iterable[Mapping[str, Any]], *, now: datetime.datetime
) -> str:
    """``permafrost history NAME``: revisions, who changed what, and the timeline."""
    meta = release.get("metadata") or {}
    status = _status(release)
    lines = [
        f"GuardedRelease {meta.get('namespace')}/{meta.get('name')}: "
        f"{status.phase or '<none>'}, stable revision {status.stable_revision or '<none>'}, "
        f"spec generation {meta.get('generation')}",
    ]
    changes = spec_changes(release)
    if changes:
        last = changes[0]
        lines.append(
            f"Spec last changed by {last['manager']} ({last['operation']}) "
            f"at {clock(last['time'])} ({age(last['time'], now=now)} ago)"
        )
        others = sorted({c["manager"] for c in changes[1:]} - {last["manager"]})
        if others:
            lines.append(f"Spec fields also owned by: {', '.join(others)}")
    for req in requests(release):
        lines.append(
            f"Requested: {req['annotation']}={req['value']} (annotation written by "
            f"{req['manager']}, whose last write was at {clock(req['time'])})"
        )
    why = explanation(release)
    if why:
        lines.append(f"Operator says: {why}")
    lines += ["", "Revisions (newest first, times in UTC):"]
    if status.revisions:
        lines.append(_indent(table(REVISION_HEADERS, revision_rows(status))))
    else:
        lines.append("  <none>")
    lines += _gate_lines(status)
    lines += ["", "Timeline (UTC):"]
    entries = timeline(release, events)
    if entries:
        rows = [
            [
                clock(e.time),
                e.type,
                e.object,
                e.reason,
                e.message + (f" (x{e.count})" if e.count > 1 else ""),
            ]
            for e in entries
        ]
        lines.append(_indent(table(["TIME", "TYPE", "OBJECT", "REASON", "MESSAGE"], rows)))
    else:
        lines.append("  <none>")
    return "\n".join(lines)


# --- documents ---------------------------------------------------------------------------------


def render(document: Any, *, output: str) -> str:
    """A document as ``json`` (indented, stable key order) or ``yaml``."""
    if output == "json":
        return json.dumps(document, indent=2)
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False).rstrip("\n")
