"""Two replicas of the operator, as ``deploy/`` runs them: one reconciles, the other takes over.

Both start with the same flags (``--peering permafrost``, all namespaces). Kopf pauses every
replica when two live ones share a priority, so identical replicas must not stand still: exactly
one is active, a release rolls out, and when the active one stops the other resumes and rolls
out the next change.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from conftest import Operator, release, status, wait_phase
from k8s_harness import Cluster, wait_for

PEERING = "permafrost"
# NB: Permafrost's own line, not Kopf's "Resuming operations": Kopf may resume a replica for a
# moment at start-up, before it sees its peer; Permafrost's work queues wait until the replica's
# own announcement is in the peering object and no live peer outranks it.
ACTIVE = "this replica is active"
NEW_DIGEST = "@sha256:" + "4" * 64


@pytest.fixture
def replicas(crds: Cluster, tmp_path: pathlib.Path) -> Iterator[list[Operator]]:
    existed = crds.get("clusterkopfpeering", PEERING) is not None
    if not existed:
        crds.apply(
            {
                "apiVersion": "kopf.dev/v1",
                "kind": "ClusterKopfPeering",
                "metadata": {"name": PEERING},
            }
        )
    ops = [
        Operator(crds, None, tmp_path / f"replica-{i}.log", extra=[f"--peering={PEERING}"])
        for i in (1, 2)
    ]
    try:
        for op in ops:
            op.start()
        yield ops
    finally:
        for op in ops:
            op.stop()
        if not existed:
            crds.kubectl("delete", "clusterkopfpeering", PEERING, "--ignore-not-found")


def _active(ops: list[Operator]) -> list[Operator]:
    return [op for op in ops if op.proc and op.proc.poll() is None and _resumed(op) > 0]


def _resumed(op: Operator) -> int:
    return op.log.read_text(errors="replace").count(ACTIVE) if op.log.exists() else 0


def test_one_of_two_identical_replicas_reconciles_and_the_other_takes_over(
    crds: Cluster, namespace: str, replicas: list[Operator], request: pytest.FixtureRequest
) -> None:
    (first,) = wait_for(
        lambda: _active(replicas) or None, timeout=60, what="one replica to become active"
    )
    request.node.operator_log = first.log
    crds.apply(release("shop", service="shop"), namespace=namespace)
    stable = wait_phase(crds, namespace, "shop", "Stable")["stableRevision"]
    (second,) = [op for op in replicas if op is not first]
    assert _resumed(second) == 0, "both replicas were active at once"
    assert "Pausing all operators" not in first.log.read_text() + second.log.read_text()

    first.stop()
    wait_for(lambda: _resumed(second) > 0, timeout=90, what="the other replica to take over")
    request.node.operator_log = second.log
    crds.apply(release("shop", service="shop", digest=NEW_DIGEST), namespace=namespace)

    def new_stable() -> str | None:
        st = status(crds, namespace, "shop")
        revision = st.get("stableRevision")
        return revision if st.get("phase") == "Stable" and revision != stable else None

    wait_for(new_stable, timeout=60, interval=0.5, what="a new stable revision")
