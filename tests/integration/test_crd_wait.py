"""Waiting for CRDs just created: the project's way never fails; the condition alone can.

A CRD has no conditions (``.status.conditions`` is null) from its creation until the
apiserver's naming controller has accepted its names and written them, a moment later. `kubectl
wait --for=condition=Established` fails at once on that null instead of waiting (``error:
.status.conditions accessor error: <nil> is of the type <nil>``), which is how ``make demo`` used
to fail on a brand-new cluster. The project waits instead as docs/install.md does
(:data:`conftest.CRD_WAITS`): until the conditions exist, then until Established.

Every CRD here has a name never used before, which is what a fresh cluster offers too; several
are created at once, which keeps the apiserver's CRD controllers busy, as on a brand-new
cluster, and widens the window. The CRDs are in a group of their own, labelled with the run, and
deleted at the end.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conftest import CRD_WAITS, wait_established
from k8s_harness import Cluster, KubectlError, wait_for

GROUP = "crdwait.test.permafrost.dev"
ROUNDS = 5  # at most: bounded in count...
PARALLEL = 20  # CRDs created (and waited for) at once in a round
BUDGET = 120.0  # ...and in time: no round starts after this many seconds
OLD_WAIT = "--for=condition=Established"
NULL_CONDITIONS = "accessor error: <nil> is of the type <nil>"


def crd(run: str, token: str, **schema: Any) -> dict[str, Any]:
    plural = f"w{token}s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"permafrost.dev/test": run}},
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {"plural": plural, "singular": f"w{token}", "kind": f"W{token}"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": schema
                        or {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }


@pytest.fixture
def run(cluster: Cluster) -> Iterator[str]:
    """A label value for this test's CRDs; they are deleted afterwards (without waiting)."""
    label = f"crd-wait-{uuid.uuid4().hex[:6]}"
    yield label
    cluster.kubectl(
        "delete", "crd", "-l", f"permafrost.dev/test={label}", "--wait=false", check=False,
        timeout=120,
    )  # fmt: skip


def old_wait(cluster: Cluster, name: str) -> None:
    cluster.kubectl("wait", OLD_WAIT, "--timeout=60s", name, timeout=90)


def create_then_wait(
    cluster: Cluster, run: str, wait: Callable[[Cluster, str], None]
) -> tuple[int, list[str]]:
    """Create fresh CRDs, ``PARALLEL`` at a time, each waited for as soon as it is created;
    stop after ``ROUNDS`` rounds, after ``BUDGET`` seconds, or after a round with a failed wait.
    Returns how many were waited for and what the failed waits said."""

    def one(_: int) -> str | None:
        fresh = crd(run, uuid.uuid4().hex[:10])
        cluster.create(fresh)
        try:
            wait(cluster, f"crd/{fresh['metadata']['name']}")
        except KubectlError as error:
            return error.stderr.strip()
        return None

    tries, failures = 0, []
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        for _ in range(ROUNDS):
            if failures or time.monotonic() - start > BUDGET:
                break
            results = list(pool.map(one, range(PARALLEL)))
            tries += len(results)
            failures += [result for result in results if result is not None]
    return tries, failures


def test_the_project_s_wait_never_fails_on_crds_just_created(cluster: Cluster, run: str) -> None:
    tries, failures = create_then_wait(cluster, run, wait_established)
    assert not failures, f"{len(failures)} of {tries} waits failed: {failures[:3]}"
    assert tries >= PARALLEL


def test_the_condition_alone_can_fail_on_crds_just_created(cluster: Cluster, run: str) -> None:
    """The race itself, as `make demo` met it: a failure is what is expected, but it is timing;
    on a cluster whose controllers always win it, the test skips (the next one shows the same
    failure deterministically)."""
    tries, failures = create_then_wait(cluster, run, old_wait)
    if not failures:
        pytest.skip(f"the race did not show in {tries} fresh CRDs waited for with {OLD_WAIT}")
    assert all(NULL_CONDITIONS in failure for failure in failures), failures


def test_null_conditions_fail_the_condition_alone_and_not_the_project_s_wait(
    cluster: Cluster, run: str
) -> None:
    """The state a CRD is in before the apiserver writes its status, held still: an object of a
    kind of our own whose ``.status.conditions`` is null (kubectl wait reads any kind alike)."""
    token = uuid.uuid4().hex[:10]
    item = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    conditions = {"type": "array", "nullable": True, "items": item}
    kind = crd(
        run, token, type="object",
        properties={"status": {"type": "object", "properties": {"conditions": conditions}}},
    )  # fmt: skip
    cluster.create(kind)
    wait_established(cluster, f"crd/{kind['metadata']['name']}")
    obj = {
        "apiVersion": f"{GROUP}/v1",
        "kind": f"W{token}",
        "metadata": {"name": "just-created"},
        "status": {"conditions": None},
    }
    # NB: create, not apply (which drops nulls); retried until the new kind is discovered.
    wait_for(
        lambda: cluster.create(obj, check=False).returncode == 0,
        timeout=30,
        what="the object with null conditions to be created",
    )
    name = f"w{token}/just-created"
    assert cluster.get(f"w{token}", "just-created")["status"] == {"conditions": None}

    # The condition alone: fails at once, with the error `make demo` printed.
    started = time.monotonic()
    with pytest.raises(KubectlError) as failed:
        old_wait(cluster, name)
    assert NULL_CONDITIONS in failed.value.stderr
    assert time.monotonic() - started < 30

    # The project's wait: keeps waiting until the conditions are written and say Established.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(wait_established, cluster, name, timeout=60)
        time.sleep(2)
        assert not waiting.done(), waiting.exception()
        status = {"type": "Established", "status": "False", "reason": "Installing"}
        cluster.kubectl("patch", name, "--type=merge", "-p", patch(status))
        time.sleep(1)
        assert not waiting.done(), waiting.exception()
        cluster.kubectl("patch", name, "--type=merge", "-p", patch({**status, "status": "True"}))
        waiting.result(timeout=60)
    assert CRD_WAITS[-1] == OLD_WAIT  # what the project waits for in the end is the same


def patch(established: dict[str, str]) -> str:
    """A merge patch writing the conditions as the apiserver's naming controller does."""
    names = {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"}
    return json.dumps({"status": {"conditions": [names, established]}})
