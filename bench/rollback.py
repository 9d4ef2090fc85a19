"""Time to rollback: from the moment a failure is detectable to the rollback being done.

A GuardedRelease with a Service runs a healthy stable revision; each repetition changes its
template to one that fails, in two ways:

- ``crash-loop``: the new pods restart (kwok ``crash-loop``: the first restart about 2 s after
  scheduling; the progress deadline is long). Detectable when a pod's status first shows a
  restart.
- ``deadline``: the new pods never become Ready (kwok ``never-ready``);
  ``progressDeadlineSeconds`` passes. Detectable at the attempt's recorded start (the status'
  ``attemptStartedAt``, whole seconds) plus the deadline: the operator's own definition.

Done when both happened: the release reports ``RolledBack=True`` for that revision, and the
failed revision is scaled to 0. Moments are taken from watches (as precise as the operator's
own view, not limited by a poll interval). The Service never leaves the stable revision
(Permafrost moves traffic only after verification), so "the Service selects the stable
revision again" holds throughout: the benchmark polls it every 20 ms and counts any sample
where it did not.
"""

from __future__ import annotations

import datetime
import pathlib
import time
from typing import Any

from bench import common
from bench.rollout import LABEL_REVISION, POLL, _selected, wait_stable


def _new_revision(status: dict[str, Any], known: set[str]) -> dict[str, Any] | None:
    for record in status.get("revisions") or []:
        if record.get("hash") not in known:
            return dict(record)
    return None


def _rolled_back(status: dict[str, Any], revision: str) -> bool:
    failed = next((r for r in status.get("revisions") or [] if r.get("hash") == revision), None)
    condition = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "RolledBack"), {}
    )
    return bool(failed and failed.get("outcome") == "Failed" and condition.get("status") == "True")


def _parse(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _labels(body: dict[str, Any]) -> dict[str, str]:
    return dict((body.get("metadata") or {}).get("labels") or {})


def one(
    api: common.Api,
    namespace: str,
    name: str,
    *,
    mode: str,
    generation: str,
    deadline: int,
    timeout: float,
) -> dict[str, Any]:
    """Break the release once; the times from detectable to rolled back (wall clock)."""
    before = common.release_status(api, namespace, name)
    stable = before["stableRevision"]
    known = {r["hash"] for r in before.get("revisions") or []} | {stable}

    def new(body: dict[str, Any]) -> bool:
        return _labels(body).get(LABEL_REVISION) not in known

    def restarted(pod: dict[str, Any]) -> bool:
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        return new(pod) and any((c.get("restartCount") or 0) > 0 for c in statuses)

    def rolled_back(body: dict[str, Any]) -> bool:
        record = _new_revision(body.get("status") or {}, known)
        return record is not None and _rolled_back(body.get("status") or {}, record["hash"])

    def scaled_down(deployment: dict[str, Any]) -> bool:
        return new(deployment) and (deployment.get("spec") or {}).get("replicas") == 0

    selector = f"permafrost.dev/release={name}"
    watchers = {
        "restart": common.FirstSeen(
            api,
            api.core.list_namespaced_pod,
            namespace,
            label_selector=selector,
            predicate=restarted,
            timeout=timeout,
        ),
        "rolled_back": common.FirstSeen(
            api,
            api.custom.list_namespaced_custom_object,
            "permafrost.dev",
            "v1alpha1",
            namespace,
            "guardedreleases",
            field_selector=f"metadata.name={name}",
            predicate=rolled_back,
            timeout=timeout,
        ),
        "scaled_down": common.FirstSeen(
            api,
            api.apps.list_namespaced_deployment,
            namespace,
            label_selector=selector,
            predicate=scaled_down,
            timeout=timeout,
        ),
    }
    if mode != "crash-loop":
        del watchers["restart"]
    for watcher in watchers.values():
        watcher.start()
    behavior = "crash-loop" if mode == "crash-loop" else "never-ready"
    # NB: the crash loop must be what fails the revision, not the deadline.
    patch = {
        "spec": {
            "rollout": {"progressDeadlineSeconds": deadline if mode == "deadline" else 60},
            "template": {
                "metadata": {
                    "annotations": {
                        "bench.permafrost.dev/generation": generation,
                        "sim.permafrost.dev/behavior": behavior,
                    }
                }
            },
        }
    }
    api.custom.patch_namespaced_custom_object(
        "permafrost.dev", "v1alpha1", namespace, "guardedreleases", name, patch
    )
    off_stable = 0
    give_up = time.monotonic() + timeout
    try:
        while any(w.at is None for w in watchers.values()):
            for key, watcher in watchers.items():
                if watcher.error is not None:
                    raise RuntimeError(f"watching for {key} failed") from watcher.error
            if _selected(api, namespace, name) != stable:
                off_stable += 1
            if time.monotonic() > give_up:
                missing = ", ".join(k for k, w in watchers.items() if w.at is None)
                raise TimeoutError(f"{name} ({mode}): no {missing} within {timeout:.0f}s")
            time.sleep(POLL)
    finally:
        for watcher in watchers.values():
            watcher.stop()
    rolled, scaled = watchers["rolled_back"], watchers["scaled_down"]
    assert rolled.at is not None
    assert rolled.obj is not None
    assert scaled.at is not None
    record = _new_revision(rolled.obj["status"], known)
    assert record is not None
    if mode == "crash-loop":
        detectable = watchers["restart"].at
        assert detectable is not None
    else:
        detectable = _parse(record["attemptStartedAt"]) + deadline
    return {
        "mode": mode,
        "revision": record["hash"],
        "reason": record.get("reason"),
        "to_rolled_back_s": rolled.at - detectable,
        "to_scaled_down_s": scaled.at - detectable,
        "to_done_s": max(rolled.at, scaled.at) - detectable,
        "samples_off_stable": off_stable,
    }


def run(api: common.Api, out: pathlib.Path, *, smoke: bool) -> dict[str, Any]:
    repetitions = 2 if smoke else 5
    replicas = 1 if smoke else 3
    deadline = 2 if smoke else 3
    timeout = 60.0
    namespace = common.create_namespace(api, common.unique("bench-rollback"))
    rows = []
    try:
        with common.Operator(api, out, namespaces=[namespace]) as operator:
            name = "rb"
            api.custom.create_namespaced_custom_object(
                "permafrost.dev",
                "v1alpha1",
                namespace,
                "guardedreleases",
                common.release(
                    name,
                    replicas=replicas,
                    template=common.pod_template(name),
                    service=name,
                    deadline=deadline,
                ),
            )
            wait_stable(api, namespace, name, timeout=timeout)
            for rep in range(repetitions):
                for mode in ("crash-loop", "deadline"):
                    row = one(
                        api,
                        namespace,
                        name,
                        mode=mode,
                        generation=f"{mode}-{rep}",
                        deadline=deadline,
                        timeout=timeout,
                    )
                    row["repetition"] = rep
                    rows.append(row)
                    operator.alive()
    finally:
        common.delete_namespaces(api, [namespace])
    return {
        "repetitions": repetitions,
        "replicas": replicas,
        "progress_deadline_seconds": deadline,
        "rows": rows,
    }
