"""What a gate says, from its spec, its recorded measurements and ``now``. Pure.

A gate takes ``count`` measurements, one every ``intervalSeconds``, the first as soon as the
gate starts. Its verdict, from the tallies of every measurement of the attempt (the status keeps
only the newest :data:`~permafrost.models.GATE_MEASUREMENTS_KEPT`, the tallies cover them all):

* **Failed** once more than ``failureLimit`` measurements Failed;
* **Inconclusive** once more than ``inconclusiveLimit`` were unknown — Inconclusive *or Error*:
  a measurement that got no answer says nothing about health, so it is never counted as a
  success (argoproj/argo-rollouts#4479: an analysis whose every measurement errored was
  reported Successful);
* **Passed** once ``count`` were taken with neither, and at least one was Successful;
* **Misconfigured** when the gate cannot measure anything (a successCondition that does not
  compile, a query Prometheus refuses as invalid);
* **Running** otherwise: the next measurement is due at :func:`next_due`.

Failed, Inconclusive, Passed and Misconfigured are final for the attempt: nothing more is
measured until the gate's spec changes (its digest) or a new attempt starts.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import cel

from permafrost import models
from permafrost.models import GateRecord, GateVerdict, Measurement, MeasurementPhase

# Measurement reasons that say the gate itself is wrong (not the revision): it is Misconfigured.
QUERY_INVALID = "QueryInvalid"
CONDITION_FALSE = "ConditionFalse"
CONDITION_ERROR = "ConditionError"
NOT_A_NUMBER = "NotANumber"
# Job gates: the apiserver refused the Job (invalid, or denied by admission: the gate is wrong);
# its pods failed; it ran past activeDeadlineSeconds (unknown: a hung check or a pod that never
# started says nothing about the revision, and is never a success).
JOB_REFUSED = "JobRefused"
JOB_FAILED = "JobFailed"
JOB_DEADLINE_EXCEEDED = "JobDeadlineExceeded"
JOB_COMPLETE = "JobComplete"
MISCONFIGURING_REASONS = frozenset({QUERY_INVALID, JOB_REFUSED})
FINAL = frozenset(
    {GateVerdict.PASSED, GateVerdict.FAILED, GateVerdict.INCONCLUSIVE, GateVerdict.MISCONFIGURED}
)
# NB: Misconfigured is not kept from one pass to the next but found again every time (from the
# spec, or from the last measurement): fixed, the gate measures on.
STICKY = FINAL - {GateVerdict.MISCONFIGURED}
# A value successCondition is tried on when the gate is checked, so that a condition that
# compiles but cannot be evaluated (an unknown variable, a type error) is caught before any
# measurement, as a misconfiguration.
_PROBE_VALUE = 0.0


class ConditionError(ValueError):
    """A successCondition that does not compile, or does not evaluate to a boolean."""


def _timestamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp(moment: datetime.datetime) -> str:
    """A measurement's time: RFC 3339 in UTC with milliseconds (as metav1.MicroTime, shorter).

    NB: not whole seconds: the next measurement is due ``intervalSeconds`` after this one, and a
    stamp cut to the second would make that up to a second early (with ``intervalSeconds: 1``,
    a measurement taken at 17.98 s stamped 17 s makes the next due at 18 s, almost at once).
    """
    utc = moment.astimezone(datetime.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _parse(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def spec_digest(gate: models.Gate) -> str:
    """A digest of the gate's spec: a gate whose spec changed starts afresh."""
    text = json.dumps(gate.to_json(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# What a prometheus gate's query may name, replaced before it runs: ``{{revision}}`` is the hash
# of the revision measured (the ``permafrost.dev/revision`` label of its pods).
PLACEHOLDERS = ("release", "namespace", "revision")


def resolve_query(query: str, *, release: str, namespace: str, revision: str) -> str:
    """``query`` with ``{{release}}``, ``{{namespace}}`` and ``{{revision}}`` replaced.

    NB: ``{{`` never begins valid PromQL, so a placeholder cannot be mistaken for a label
    matcher; the values are label values Kubernetes validated (no quote can appear in them).
    """
    values = {"release": release, "namespace": namespace, "revision": revision}
    for key in PLACEHOLDERS:
        query = query.replace("{{" + key + "}}", values[key])
    return query


def compile_condition(expression: str) -> Any:
    """The compiled CEL program of a successCondition over ``result`` (a double).

    Raises :class:`ConditionError` if it does not compile, or if on a probe value it errors or
    returns anything but a boolean (a misspelled variable compiles, and fails only when run).
    """
    try:
        program = cel.compile(expression)
    except (ValueError, RuntimeError) as exc:
        raise ConditionError(f"successCondition {expression!r} does not compile: {exc}") from None
    try:
        value = program.execute({"result": _PROBE_VALUE})
    except Exception as exc:  # NB: any CEL runtime error: the expression cannot judge a value
        raise ConditionError(
            f"successCondition {expression!r} cannot be evaluated on a double result: {exc}"
        ) from None
    if not isinstance(value, bool):
        raise ConditionError(f"successCondition {expression!r} returns {value!r}, not a boolean")
    return program


def judge_value(expression: str, value: float, *, at: datetime.datetime) -> Measurement:
    """A measurement of a Prometheus gate from the query's value: Successful if
    ``successCondition`` holds for it, Failed if not, Error if it cannot say (never a pass)."""
    shown = repr(value)
    if math.isnan(value):
        return Measurement(
            at=stamp(at),
            phase=MeasurementPhase.INCONCLUSIVE,
            value=shown,
            reason=NOT_A_NUMBER,
            message="the query returned NaN",
        )
    try:
        program = compile_condition(expression)
        verdict = program.execute({"result": float(value)})
    except Exception as exc:  # NB: fails safe: an error is never a success
        return Measurement(
            at=stamp(at),
            phase=MeasurementPhase.ERROR,
            value=shown,
            reason=CONDITION_ERROR,
            message=str(exc),
        )
    if verdict is True:
        return Measurement(at=stamp(at), phase=MeasurementPhase.SUCCESSFUL, value=shown)
    if verdict is False:
        return Measurement(
            at=stamp(at),
            phase=MeasurementPhase.FAILED,
            value=shown,
            reason=CONDITION_FALSE,
            message=f"{expression} is false for result={shown}",
        )
    return Measurement(
        at=stamp(at),
        phase=MeasurementPhase.ERROR,
        value=shown,
        reason=CONDITION_ERROR,
        message=f"{expression} returned {verdict!r}, not a boolean",
    )


def judge_job(job: Mapping[str, Any], *, at: datetime.datetime) -> Measurement | None:
    """A measurement of a job gate from its Job as read: Successful once it is Complete,
    Failed once it failed (Error if it failed by running past its deadline), None while it
    runs. Only the final conditions count (``Complete``/``Failed`` with status True), not the
    interim ``SuccessCriteriaMet``/``FailureTarget`` the Job controller sets before them."""
    name = str((job.get("metadata") or {}).get("name", "?"))
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        detail = "; ".join(str(v) for v in (cond.get("reason"), cond.get("message")) if v)
        if cond.get("type") == "Complete":
            return Measurement(
                at=stamp(at),
                phase=MeasurementPhase.SUCCESSFUL,
                value="Complete",
                reason=JOB_COMPLETE,
                message=f"Job {name} completed",
            )
        if cond.get("type") == "Failed":
            if cond.get("reason") == "DeadlineExceeded":
                return Measurement(
                    at=stamp(at),
                    phase=MeasurementPhase.ERROR,
                    value="Failed",
                    reason=JOB_DEADLINE_EXCEEDED,
                    message=f"Job {name} did not finish in time ({detail})",
                )
            return Measurement(
                at=stamp(at),
                phase=MeasurementPhase.FAILED,
                value="Failed",
                reason=JOB_FAILED,
                message=f"Job {name} failed ({detail or 'no reason given'})",
            )
    return None


def refused_job(name: str, message: str, *, at: datetime.datetime) -> Measurement:
    """The measurement of a job gate whose Job the apiserver refused: the gate is wrong."""
    return Measurement(
        at=stamp(at),
        phase=MeasurementPhase.ERROR,
        reason=JOB_REFUSED,
        message=f"the apiserver refused Job {name}: {message}",
    )


def start(gate: models.Gate, *, now: datetime.datetime) -> GateRecord:
    """A new record of ``gate``: Running, nothing measured, the first measurement due now."""
    return GateRecord(
        name=gate.name,
        kind=gate.kind,
        spec_digest=spec_digest(gate),
        started_at=_timestamp(now),
    )


def record(
    rec: GateRecord, measurement: Measurement, *, keep: int = models.GATE_MEASUREMENTS_KEPT
) -> GateRecord:
    """``rec`` with one more measurement: tallied, and kept among the newest ``keep``."""
    tally = {
        MeasurementPhase.SUCCESSFUL: "successful",
        MeasurementPhase.FAILED: "failed",
        MeasurementPhase.INCONCLUSIVE: "inconclusive",
        MeasurementPhase.ERROR: "errors",
    }[measurement.phase]
    kept = [*rec.measurements, measurement][-keep:] if keep > 0 else []
    return rec.model_copy(update={tally: getattr(rec, tally) + 1, "measurements": kept})


def taken(rec: GateRecord) -> int:
    """How many measurements the attempt took, kept or not."""
    return rec.successful + rec.failed + rec.inconclusive + rec.errors


def unknown(rec: GateRecord) -> int:
    """Measurements that said nothing about health: Inconclusive and Error alike."""
    return rec.inconclusive + rec.errors


@dataclasses.dataclass(frozen=True)
class Evaluation:
    verdict: GateVerdict
    message: str
    due: datetime.datetime | None  # when the next measurement is due (None: final)

    def measure_now(self, now: datetime.datetime) -> bool:
        return self.due is not None and now >= self.due


def verdict(gate: models.Gate, rec: GateRecord) -> tuple[GateVerdict, str]:
    """The verdict of the measurements tallied in ``rec`` (see the module's docstring)."""
    n = taken(rec)
    tallies = (
        f"{rec.successful} successful, {rec.failed} failed, {rec.inconclusive} inconclusive, "
        f"{rec.errors} errors of {n}/{gate.count} measurements"
    )
    last = rec.measurements[-1] if rec.measurements else None
    if last is not None and last.reason in MISCONFIGURING_REASONS:
        return GateVerdict.MISCONFIGURED, f"gate {gate.name} is misconfigured: {last.message}"
    if rec.failed > gate.failure_limit:
        return GateVerdict.FAILED, (
            f"gate {gate.name} failed: {tallies} (failureLimit {gate.failure_limit})"
            + (f"; last failure: {_last(rec, MeasurementPhase.FAILED)}" if rec.measurements else "")
        )
    if unknown(rec) > gate.inconclusive_limit:
        return GateVerdict.INCONCLUSIVE, (
            f"gate {gate.name} is inconclusive: {tallies} (inconclusiveLimit "
            f"{gate.inconclusive_limit}); unknown is never healthy"
            + (f"; last: {_last(rec, None)}" if rec.measurements else "")
        )
    if n >= gate.count:
        if rec.successful == 0:
            return GateVerdict.INCONCLUSIVE, (
                f"gate {gate.name} is inconclusive: {tallies}, none successful"
            )
        return GateVerdict.PASSED, f"gate {gate.name} passed: {tallies}"
    return GateVerdict.RUNNING, f"gate {gate.name}: {tallies}"


def _last(rec: GateRecord, phase: MeasurementPhase | None) -> str:
    for m in reversed(rec.measurements):
        if phase is None or m.phase == phase:
            return f"{m.phase} at {m.at}" + (f" ({m.message})" if m.message else "")
    return "not kept"


def next_due(gate: models.Gate, rec: GateRecord) -> datetime.datetime | None:
    """When the next measurement is due: at the gate's start for the first, then
    ``intervalSeconds`` after the last one; ``None`` once the verdict is final."""
    if rec.verdict in FINAL:
        return None
    if rec.measurements:
        return _parse(rec.measurements[-1].at) + datetime.timedelta(seconds=gate.interval_seconds)
    return _parse(rec.started_at) if rec.started_at else None


def evaluate(
    gate: models.Gate,
    rec: GateRecord,
    *,
    now: datetime.datetime,
    problem: str | None = None,
) -> tuple[GateRecord, Evaluation]:
    """The gate's record with its verdict brought up to date, and what to do next.

    ``problem``: why the gate cannot measure at all, found from the spec (Misconfigured). A
    final verdict is kept as it is; a record of another spec of the gate starts afresh.
    """
    if rec.spec_digest != spec_digest(gate) or rec.name != gate.name:
        rec = start(gate, now=now)
    if rec.verdict in STICKY:
        return rec, Evaluation(rec.verdict, rec.message or "", None)
    if problem is not None:
        found, message = GateVerdict.MISCONFIGURED, f"gate {gate.name} is misconfigured: {problem}"
    else:
        found, message = verdict(gate, rec)
    rec = rec.model_copy(
        update={
            "verdict": found,
            "message": message,
            "finished_at": _timestamp(now) if found in FINAL else None,
        }
    )
    return rec, Evaluation(found, message, next_due(gate, rec))


def with_measurement(
    status: models.GuardedReleaseStatus,
    *,
    revision: str,
    gate: str,
    measurement: Measurement,
    stage: str = "gates",
) -> models.GuardedReleaseStatus:
    """``status`` with ``measurement`` recorded in the gate ``gate`` of ``revision``'s record,
    among its ``gates`` (before promotion) or its ``analysis`` (after); unchanged if there is
    no such record (the attempt ended meanwhile)."""
    records = []
    for rev in status.revisions:
        if rev.hash == revision:
            kept = rev.gates if stage == "gates" else rev.analysis
            rev = rev.model_copy(
                update={stage: [record(g, measurement) if g.name == gate else g for g in kept]}
            )
        records.append(rev)
    return status.model_copy(update={"revisions": records})
