"""A leader paused past its peering lifetime writes nothing from what it knew before the pause.

Two replicas peer (``--peering``): ``first`` (the higher priority) acts, ``second`` stands by.
While upgrades are under way, ``first`` is stopped with SIGSTOP for longer than its peering
lifetime; ``second`` takes over and finishes them. Then ``first`` gets SIGCONT: its queued
timers fire and the watch events it missed arrive, and every write they would make is fenced
(``not written``) until its right to act is confirmed again. So that it certainly has work
then, ``second`` is stopped too once it has finished, and the spec changes meanwhile.

What ``first`` wrote is counted by the apiserver itself: ``first`` runs as a ServiceAccount of
its own, and a FlowSchema matching that ServiceAccount's writes (everything but Kopf's peering
object) counts them. Every write counted after SIGCONT must be one that ``first`` logged after it
became active again (the Kubernetes client logs every request with ``--verbose``). A request
the apiserver received before the pause is counted before it, even if its answer is logged
after SIGCONT.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import uuid

from flow_counts import admin_identity, dispatched, drop_identity, flow_schema

from conftest import Operator, release, status
from k8s_harness import Cluster, wait_for

PEERING = "permafrost"
LIFETIME = 10  # seconds a silent replica counts as alive
RELEASES = ("alpha", "beta")
NEW_DIGEST = "@sha256:" + "5" * 64
THIRD_DIGEST = "@sha256:" + "6" * 64
ACTIVE = "this replica is active"
FENCED = "not written: this replica's right to act is not confirmed"
WRITE = re.compile(r'"(POST|PUT|PATCH|DELETE) /apis?/\S+ HTTP/1\.1"')


def _stable_on(cluster: Cluster, namespace: str, name: str, *, not_: str | None) -> str | None:
    st = status(cluster, namespace, name)
    revision = st.get("stableRevision")
    return revision if st.get("phase") == "Stable" and revision != not_ else None


def test_a_leader_paused_past_its_lifetime_writes_nothing_once_resumed(
    crds: Cluster, namespace: str, tmp_path: pathlib.Path
) -> None:
    run = uuid.uuid4().hex[:6]
    account, schema = f"permafrost-first-{run}", f"pf-first-writes-{run}"
    crds.apply(
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}},
        namespace=namespace,
    )
    admin_identity(crds, namespace, account, tmp_path / "first.kubeconfig")
    crds.apply(
        flow_schema(
            schema,
            account=account,
            namespace=namespace,
            rule={
                "verbs": ["create", "update", "patch", "delete", "deletecollection"],
                # NB: every group the operator writes to, not kopf.dev (the peering object)
                "apiGroups": ["", "apps", "permafrost.dev", "events.k8s.io"],
                "resources": ["*"],
                "namespaces": ["*"],
                "clusterScope": True,
            },
        )
    )

    def replica(name: str, priority: int, kubeconfig: pathlib.Path | None) -> Operator:
        flags = ["--peering", PEERING, "--priority", str(priority)]
        op = Operator(
            crds,
            namespace,
            tmp_path / f"{name}.log",
            extra=[*flags, "--peering-lifetime", str(LIFETIME)],
            kubeconfig=kubeconfig,
        )
        op.start()
        return op

    first = replica("first", 200, tmp_path / "first.kubeconfig")
    second: Operator | None = None
    try:
        wait_for(lambda: ACTIVE in first.log.read_text(), timeout=120, what="first active")
        second = replica("second", 100, None)
        wait_for(
            lambda: "standing by" in second.log.read_text(),  # type: ignore[union-attr]
            timeout=120,
            what="second standing by",
        )
        for name in RELEASES:
            crds.apply(release(name, min_ready=3, deadline=90), namespace=namespace)
        olds = {
            n: wait_for(
                lambda n=n: _stable_on(crds, namespace, n, not_=None),
                timeout=180,
                what=f"{n} stable",
            )
            for n in RELEASES
        }
        for name in RELEASES:
            crds.apply(
                release(name, min_ready=3, deadline=90, digest=NEW_DIGEST), namespace=namespace
            )
        wait_for(
            lambda: all(
                status(crds, namespace, n).get("desiredRevision") not in (None, olds[n])
                for n in RELEASES
            ),
            timeout=60,
            what="every upgrade begun",
        )
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGSTOP)
        try:
            wait_for(
                lambda: ACTIVE in second.log.read_text(),  # type: ignore[union-attr]
                timeout=LIFETIME * 9,
                what="second to take over",
            )
            for n in RELEASES:
                wait_for(
                    lambda n=n: _stable_on(crds, namespace, n, not_=olds[n]),
                    timeout=180,
                    what=f"{n} stable on its new revision (second's work)",
                )
            # NB: work that is certainly left for ``first`` when it resumes: a new spec that
            # ``second`` (stopped too) does not take up. ``first`` sees it at once, before its
            # right to act is confirmed again.
            assert second.proc is not None
            os.kill(second.proc.pid, signal.SIGSTOP)
            crds.apply(
                release(RELEASES[0], min_ready=3, deadline=90, digest=THIRD_DIGEST),
                namespace=namespace,
            )
            paused_writes = dispatched(crds, schema)
            offset = first.log.stat().st_size
        finally:
            os.kill(first.proc.pid, signal.SIGCONT)

        def resumed() -> str:
            return first.log.read_text(errors="replace")[offset:]

        # Once its right is confirmed again (``second`` is silent), it acts again.
        wait_for(lambda: ACTIVE in resumed(), timeout=120, what="first active again")
        wait_for(
            lambda: "create revision" in resumed()[resumed().index(ACTIVE) :],
            timeout=60,
            what="first to take up the new spec once active",
        )
        first.stop()  # NB: then every write it made is both counted and logged
        tail = resumed()
        active_at = tail.index(ACTIVE)
        later = [m.group(0) for m in WRITE.finditer(tail) if m.start() > active_at]
        assert FENCED in tail[:active_at], "nothing was left to fence: the test proved nothing"
        # NB: counted by the apiserver, not read from the log alone: a request answered just
        # before SIGSTOP is logged only after SIGCONT, but the apiserver counted it before.
        assert dispatched(crds, schema) - paused_writes == len(later), (
            "first wrote after SIGCONT before it was active again"
        )
    finally:
        for op in (first, second):
            if op is not None:
                if op.proc is not None and op.proc.poll() is None:
                    os.kill(op.proc.pid, signal.SIGCONT)
                op.stop()
        drop_identity(crds, account, schema)
