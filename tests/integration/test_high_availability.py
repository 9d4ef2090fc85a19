"""Two replicas with Kopf peering: only one acts; when it is killed the other takes over, and no
action is performed twice.

The evidence that nothing was done twice is read from three independent sources: a watch that
records every creation of a revision Deployment, the Events on the releases, and the logs of
both replicas (every action is logged by the replica that performs it).
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import threading
import time
from collections import Counter
from typing import Any

import pytest

from conftest import Operator, release, status
from k8s_harness import Cluster, wait_for

NEW_DIGEST = "@sha256:" + "4" * 64
PEERING = "permafrost"
LIFETIME = 10  # seconds a silent replica counts as alive: bounds the takeover
RELEASES = ("alpha", "beta", "gamma")
ACTION = re.compile(r"release (\S+): (create revision \S+|scale \S+ to \d+|route Service .*)$")


class CreationRecorder:
    """``kubectl get deployments --watch`` in the background: every ADDED revision Deployment."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.added: list[str] = []
        self._proc = subprocess.Popen(
            [
                "kubectl",
                "get",
                "deployments",
                "-n",
                namespace,
                "--watch",
                "--output-watch-events",
                "-o",
                "json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=cluster.env,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        decoder, buffer = json.JSONDecoder(), ""
        for line in self._proc.stdout:
            buffer += line
            try:
                event, end = decoder.raw_decode(buffer.lstrip())
            except json.JSONDecodeError:
                continue
            buffer = buffer.lstrip()[end:]
            if event.get("type") == "ADDED":
                self.added.append(event["object"]["metadata"]["name"])

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._thread.join(timeout=10)


def actions(log: pathlib.Path) -> list[str]:
    return [
        m.group(1) + ": " + m.group(2)
        for line in log.read_text(errors="replace").splitlines()
        if (m := ACTION.search(line))
    ]


def said(log: pathlib.Path, text: str) -> bool:
    return log.exists() and text in log.read_text(errors="replace")


@pytest.fixture
def replicas(crds: Cluster, namespace: str, tmp_path: pathlib.Path, request: Any) -> Any:
    crds.apply(
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}},
        namespace=namespace,
    )
    made = []

    def start(name: str, priority: int) -> Operator:
        op = Operator(
            crds,
            namespace,
            tmp_path / f"{name}.log",
            extra=[
                "--peering",
                PEERING,
                "--priority",
                str(priority),
                "--peering-lifetime",
                str(LIFETIME),
            ],
        )
        request.node.operator_log = op.log
        op.start()
        made.append(op)
        return op

    yield start
    for op in made:
        op.stop()


def test_only_one_replica_acts_and_the_other_takes_over_without_doing_anything_twice(
    crds: Cluster, namespace: str, replicas: Any
) -> None:
    first = replicas("first", 200)
    wait_for(lambda: said(first.log, "this replica is active"), timeout=60, what="first active")
    second = replicas("second", 100)
    wait_for(
        lambda: said(second.log, "standing by"), timeout=60, what="the second replica standing by"
    )
    recorder = CreationRecorder(crds, namespace)
    try:
        for name in RELEASES:
            crds.apply(release(name, min_ready=3, deadline=60), namespace=namespace)
        olds = {
            name: wait_for(
                lambda n=name: (
                    status(crds, namespace, n).get("stableRevision")
                    if status(crds, namespace, n).get("phase") == "Stable"
                    else None
                ),
                timeout=90,
                what=f"{name} stable",
            )
            for name in RELEASES
        }
        assert actions(second.log) == [], "the standby acted"

        for name in RELEASES:
            crds.apply(
                release(name, min_ready=3, deadline=60, digest=NEW_DIGEST), namespace=namespace
            )

        def upgrading() -> bool:
            # NB: one list per look, and "begun" rather than "all Progressing at once": on a
            # busy machine the first upgrade may finish before the last one is looked at.
            items = crds.get("guardedreleases", namespace=namespace)["items"]
            desired = {i["metadata"]["name"]: (i.get("status") or {}).get("desiredRevision")
                       for i in items}  # fmt: skip
            return all(desired.get(n) not in (None, olds[n]) for n in RELEASES)

        wait_for(upgrading, timeout=60, what="every upgrade begun")
        first.kill()
        killed = time.monotonic()
        wait_for(
            lambda: said(second.log, "this replica is active"),
            timeout=LIFETIME * 6,
            interval=0.1,
            what="the second replica to take over",
        )
        takeover = time.monotonic() - killed
        news = {
            name: wait_for(
                lambda n=name: (
                    status(crds, namespace, n).get("stableRevision")
                    if status(crds, namespace, n).get("phase") == "Stable"
                    and status(crds, namespace, n).get("stableRevision") != olds[n]
                    else None
                ),
                timeout=120,
                what=f"{name} stable on its new revision",
            )
            for name in RELEASES
        }
        wait_for(
            lambda: (
                sorted(recorder.added)
                == sorted(f"{n}-{r}" for n in RELEASES for r in (olds[n], news[n]))
            ),
            timeout=30,
            what="the watch to have seen every creation",
        )
    finally:
        recorder.stop()

    # 1. The watch: every revision Deployment was created exactly once.
    assert Counter(recorder.added).most_common(1)[0][1] == 1
    # 2. The Events: one RevisionCreated and one Promoted per revision, each a single occurrence.
    events = crds.get("events", namespace=namespace)["items"]
    for reason in ("RevisionCreated", "Promoted"):
        seen = [e for e in events if e["reason"] == reason]
        assert len(seen) == 2 * len(RELEASES), [e["message"] for e in seen]
        assert all((e.get("count") or 1) == 1 for e in seen)
        assert len({e["message"] for e in seen}) == len(seen)
    # 3. The logs: no action appears in both replicas' logs, and none twice in one.
    both = actions(first.log) + actions(second.log)
    creations = [a for a in both if "create revision" in a]
    assert len(creations) == len(set(creations)) == 2 * len(RELEASES)
    assert not set(actions(first.log)) & set(actions(second.log))
    print(f"high availability: takeover {takeover:.1f}s after SIGKILL (peer lifetime {LIFETIME}s)")
