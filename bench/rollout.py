"""Rollout time: from a spec change to traffic on the new revision, against a native Deployment.

For each size, one GuardedRelease (with a Service) and one plain Deployment of the same pod
template run side by side; every pod becomes Ready a fixed delay after it is scheduled (kwok
``slow-ready``). A repetition changes the template of each (an annotation: a new revision) —
the release first, then the Deployment, one after the other, never at once — and times:

- Permafrost: from the patch to the Service selecting the new revision (all its pods Ready and
  verified; ``minReadySeconds: 0``).
- native: from the patch to the rolling update being complete (``kubectl rollout status``:
  every replica updated and available, no old pod left; the defaults ``maxSurge``/
  ``maxUnavailable`` 25%, ``minReadySeconds: 0``).
- native, full surge: the same with ``maxSurge: 100%``, ``maxUnavailable: 0`` — a whole new
  ReplicaSet at once, as a Permafrost revision is (the fair comparison of speed; it costs
  twice the pods for the duration, as Permafrost does).

The clock is polled every 20 ms through the apiserver, the same way for both.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

from kubernetes.client.exceptions import ApiException

from bench import common

POLL = 0.02
LABEL_REVISION = "permafrost.dev/revision"


def _selected(api: common.Api, namespace: str, service: str) -> str | None:
    try:
        svc = api.core.read_namespaced_service(service, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return (svc.spec.selector or {}).get(LABEL_REVISION)


def _native_done(api: common.Api, namespace: str, name: str, generation: int) -> bool:
    d = api.apps.read_namespaced_deployment_status(name, namespace)
    s, replicas = d.status, d.spec.replicas
    return bool(
        (s.observed_generation or 0) >= generation
        and (s.updated_replicas or 0) == replicas
        and (s.replicas or 0) == replicas
        and (s.available_replicas or 0) == replicas
    )


def _patch_template(generation: str) -> dict[str, Any]:
    return {
        "spec": {
            "template": {
                "metadata": {"annotations": {"bench.permafrost.dev/generation": generation}}
            }
        }
    }


def permafrost_rollout(
    api: common.Api, namespace: str, name: str, *, generation: str, timeout: float
) -> float:
    """Seconds from the spec change to the Service selecting a new revision."""
    before = _selected(api, namespace, name)
    start = time.perf_counter()
    api.custom.patch_namespaced_custom_object(
        "permafrost.dev",
        "v1alpha1",
        namespace,
        "guardedreleases",
        name,
        _patch_template(generation),
    )
    common.wait_for(
        lambda: _selected(api, namespace, name) not in (None, "none", before),
        timeout=timeout,
        interval=POLL,
        what=f"{name}'s Service to select a new revision",
    )
    return time.perf_counter() - start


def native_rollout(
    api: common.Api, namespace: str, name: str, *, generation: str, timeout: float
) -> float:
    """Seconds from the template change to the rolling update being complete."""
    start = time.perf_counter()
    patched = api.apps.patch_namespaced_deployment(name, namespace, _patch_template(generation))
    target = patched.metadata.generation
    common.wait_for(
        lambda: _native_done(api, namespace, name, target),
        timeout=timeout,
        interval=POLL,
        what=f"{name}'s rolling update",
    )
    return time.perf_counter() - start


def settled(api: common.Api, namespace: str, name: str) -> bool:
    """The release is Stable and only its stable revision has replicas."""
    status = common.release_status(api, namespace, name)
    if not common.stable(status):
        return False
    revisions = api.apps.list_namespaced_deployment(
        namespace, label_selector=f"permafrost.dev/release={name}"
    ).items
    return all(
        (d.spec.replicas or 0) == 0
        or d.metadata.labels.get(LABEL_REVISION) == status["stableRevision"]
        for d in revisions
    )


def wait_stable(api: common.Api, namespace: str, name: str, *, timeout: float) -> None:
    """Until the release is Stable and its old revisions are scaled down (a quiet start)."""
    common.wait_for(
        lambda: settled(api, namespace, name),
        timeout=timeout,
        interval=0.1,
        what=f"{name} to be Stable with one revision running",
    )


def run(api: common.Api, out: pathlib.Path, *, smoke: bool) -> dict[str, Any]:
    sizes = [1, 2] if smoke else [1, 10, 50]
    repetitions = 2 if smoke else 5
    delay = 0.5 if smoke else 2.0
    timeout = 60 if smoke else 180
    namespace = common.create_namespace(api, common.unique("bench-rollout"))
    rows: list[dict[str, Any]] = []
    try:
        with common.Operator(api, out, namespaces=[namespace]) as operator:
            for size in sizes:
                gr, native, surge = f"gr-{size}", f"native-{size}", f"surge-{size}"
                template = common.pod_template(gr, ready_after=delay)
                api.custom.create_namespaced_custom_object(
                    "permafrost.dev",
                    "v1alpha1",
                    namespace,
                    "guardedreleases",
                    common.release(gr, replicas=size, template=template, service=gr),
                )
                api.apps.create_namespaced_deployment(
                    namespace,
                    common.deployment(
                        native,
                        replicas=size,
                        template=common.pod_template(native, ready_after=delay),
                    ),
                )
                full = common.deployment(
                    surge, replicas=size, template=common.pod_template(surge, ready_after=delay)
                )
                full["spec"]["strategy"] = {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": "100%", "maxUnavailable": 0},
                }
                api.apps.create_namespaced_deployment(namespace, full)
                wait_stable(api, namespace, gr, timeout=timeout)
                for plain in (native, surge):
                    common.wait_for(
                        lambda n=plain: _native_done(api, namespace, n, 1),
                        timeout=timeout,
                        what=f"{plain} to be available",
                    )
                for rep in range(repetitions):
                    generation = str(rep + 1)
                    p = permafrost_rollout(
                        api, namespace, gr, generation=generation, timeout=timeout
                    )
                    n = native_rollout(
                        api, namespace, native, generation=generation, timeout=timeout
                    )
                    f = native_rollout(
                        api, namespace, surge, generation=generation, timeout=timeout
                    )
                    rows.append(
                        {
                            "replicas": size,
                            "repetition": rep,
                            "permafrost_s": p,
                            "native_s": n,
                            "native_full_surge_s": f,
                        }
                    )
                    operator.alive()
                    wait_stable(api, namespace, gr, timeout=timeout)
                api.custom.delete_namespaced_custom_object(
                    "permafrost.dev", "v1alpha1", namespace, "guardedreleases", gr
                )
                api.apps.delete_namespaced_deployment(native, namespace)
                api.apps.delete_namespaced_deployment(surge, namespace)
    finally:
        common.delete_namespaces(api, [namespace])
    return {
        "sizes": sizes,
        "repetitions": repetitions,
        "ready_after_seconds": delay,
        "rows": rows,
    }
