"""Scale: many GuardedReleases applied at once among many unmanaged Deployments.

One operator (all namespaces, admission on, as deployed) and enforced namespaces holding the
unmanaged Deployments (0 replicas: the operator watches and fingerprints the Deployment objects;
their pods would not fit the fake nodes alongside the releases'). When the controller-manager
has synced them all and the operator has settled (its CPU idle), the releases (1 replica each,
with a Service, created beforehand, headless) are created at once from 16 threads, and the
benchmark measures:

- the time until every release is Stable (its Service selecting its first revision); this
  includes the controller-manager's work for each revision (its ReplicaSet, its pod), paced by
  its client rate limit (QPS 20 by default), as it would for plain Deployments;
- the operator's peak RSS (the whole process tree, sampled every 100 ms) over the whole run,
  and its RSS at the end;
- the operator's CPU seconds while the releases rolled out;
- the operator's requests to the apiserver while they rolled out, reads and writes apart, as
  the apiserver counted them (:class:`bench.common.RequestCounter`), per completed rollout.
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import time
from typing import Any

from bench import common


def _settle(
    operator: common.Operator, *, idle: float = 0.05, quiet: float = 3.0, timeout: float
) -> None:
    """Until the operator used less than ``idle`` CPU seconds per second for ``quiet`` s."""
    deadline = time.monotonic() + timeout
    last, calm_since = operator.cpu_seconds(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        operator.alive()
        now = operator.cpu_seconds()
        if now - last > idle * 0.5:
            calm_since = time.monotonic()
        last = now
        if time.monotonic() - calm_since >= quiet:
            return


def _count_stable(api: common.Api, label: str) -> int:
    items = api.custom.list_cluster_custom_object(
        "permafrost.dev", "v1alpha1", "guardedreleases", label_selector=label
    )["items"]
    return sum(1 for r in items if common.stable(r.get("status") or {}))


def run(api: common.Api, out: pathlib.Path, *, smoke: bool) -> dict[str, Any]:
    releases = 5 if smoke else 500
    unmanaged = 20 if smoke else 2000
    spaces = 2 if smoke else 10
    timeout = 120.0 if smoke else 900.0
    quiet = 1.0 if smoke else 3.0  # NB: seconds of an idle operator that count as settled
    run_id = common.unique("scale")
    label = f"bench.permafrost.dev/scale={run_id}"
    namespaces = [
        common.create_namespace(api, f"bench-{run_id}-{i}", labels={common.LABEL_ENFORCE: "true"})
        for i in range(spaces)
    ]
    counter = common.RequestCounter(api)
    counter.install()
    policies = common.apply_policies(api, common.LIBRARY)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=16)
    result: dict[str, Any] = {
        "releases": releases,
        "unmanaged_deployments": unmanaged,
        "namespaces": spaces,
        "policies": len(policies),
    }
    try:
        with common.Operator(api, out, admission=True) as operator:
            _settle(operator, quiet=quiet, timeout=timeout)
            started, at_start = time.monotonic(), counter.read()

            def make_deployment(i: int) -> None:
                name = f"plain-{i}"
                body = common.deployment(name, replicas=0, template=common.pod_template(name))
                body["metadata"]["labels"]["bench.permafrost.dev/scale"] = run_id
                api.apps.create_namespaced_deployment(namespaces[i % spaces], body)

            def synced() -> bool:
                items = api.apps.list_deployment_for_all_namespaces(label_selector=label).items
                return sum(1 for d in items if (d.status.observed_generation or 0) >= 1) == len(
                    items
                )

            list(pool.map(make_deployment, range(unmanaged)))
            result["unmanaged_create_s"] = time.monotonic() - started
            # NB: the controller-manager (client QPS 20 by default) takes a while to sync them
            # all; the releases start on a quiet cluster, so their time is theirs.
            common.wait_for(synced, timeout=timeout, interval=1.0, what="the Deployments synced")
            result["unmanaged_synced_s"] = time.monotonic() - started

            def make_service(i: int) -> None:
                # NB: headless: the local cluster's ClusterIP range (a /24) has too few
                # addresses for one Service per release; Permafrost adopts an existing Service
                # and owns its selector all the same.
                name = f"app-{i}"
                api.core.create_namespaced_service(
                    namespaces[i % spaces],
                    {
                        "metadata": {"name": name},
                        "spec": {
                            "clusterIP": "None",
                            "selector": {"app": name},
                            "ports": [{"port": 80, "targetPort": 8080}],
                        },
                    },
                )

            list(pool.map(make_service, range(releases)))
            _settle(operator, quiet=quiet, timeout=timeout)
            result["unmanaged_settled_s"] = time.monotonic() - started
            result["rss_before_releases"] = operator.rss()
            before, cpu_before = counter.read(), operator.cpu_seconds()
            result["requests_per_unmanaged"] = {
                k: (before[k] - at_start[k]) / unmanaged for k in before
            }

            def make_release(i: int) -> None:
                name = f"app-{i}"
                # NB: a long deadline: the controller-manager's pace is not a failed rollout.
                body = common.release(
                    name,
                    replicas=1,
                    template=common.pod_template(name),
                    service=name,
                    deadline=int(timeout),
                )
                body["metadata"]["labels"] = {"bench.permafrost.dev/scale": run_id}
                api.custom.create_namespaced_custom_object(
                    "permafrost.dev", "v1alpha1", namespaces[i % spaces], "guardedreleases", body
                )

            t0 = time.monotonic()
            list(pool.map(make_release, range(releases)))
            result["apply_s"] = time.monotonic() - t0
            progress: list[tuple[float, int]] = []

            def all_stable() -> bool:
                operator.alive()
                done = _count_stable(api, label)
                progress.append((time.monotonic() - t0, done))
                return done == releases

            common.wait_for(all_stable, timeout=timeout, interval=1.0, what="every release Stable")
            result["all_stable_s"] = time.monotonic() - t0
            after, cpu_after = counter.read(), operator.cpu_seconds()
            result["progress"] = progress
            result["operator_cpu_s"] = cpu_after - cpu_before
            result["requests"] = {k: after[k] - before[k] for k in after}
            result["requests_per_rollout"] = {k: (after[k] - before[k]) / releases for k in after}
            result["peak_rss"] = operator.peak_rss
            result["rss_end"] = operator.rss()
            result["rss_per_release"] = (
                result["rss_end"] - result["rss_before_releases"]
            ) / releases
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        common.delete_policies(api, policies)
        counter.uninstall()
        common.delete_namespaces(api, namespaces)
    return result
