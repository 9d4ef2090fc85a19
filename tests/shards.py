"""Which test modules each shard of ``make test`` runs (``PERMAFROST_SHARD=K/N``).

``hack/test.sh`` runs the suite as N shards side by side, each against a cluster of its own:
most of the suite's time is spent waiting on real pods, the apiserver and Argo CD, not on the
CPU. Modules go whole to one shard (their module-scoped fixtures stay shared), largest first to
the shard with the least so far (LPT), from the seconds each module took on the reference
machine; a module not listed counts :data:`DEFAULT_SECONDS` (:data:`UNIT_SECONDS` for a unit-test
module). Modules of one :data:`GROUPS` entry go to the same shard: they share something of the
machine's that admits one user at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

DEFAULT_SECONDS = 5.0
# A unit-test module (tests/unit/) not listed: most take under a second, none against a cluster.
UNIT_SECONDS = 1.0

# Seconds per module on the reference machine (2 cores) in a sharded run (hack/test.sh lists
# them at the end of each run); only the integration modules that take long are worth naming.
SECONDS: dict[str, float] = {
    "integration/test_in_cluster.py": 351,
    "integration/test_argocd_services.py": 348,
    "integration/test_argocd_sync.py": 250,
    "integration/test_gates.py": 180,
    "integration/test_rollouts.py": 162,
    "integration/test_admission_vectors.py": 137,
    "integration/test_webhook_security.py": 107,
    "integration/test_outages.py": 104,
    "integration/test_cli_for_people.py": 102,
    "integration/test_autoscaling.py": 99,
    "integration/test_bench_smoke.py": 99,
    "integration/test_argocd_install.py": 96,
    "integration/test_zero_downtime.py": 89,
    "integration/test_stalls.py": 77,
    "integration/test_exec_sessions.py": 76,
    "integration/test_pull_secrets.py": 68,
    "integration/test_policies.py": 58,
    "integration/test_compiled_policies.py": 55,
    "integration/test_least_privilege.py": 45,
    "integration/test_demo.py": 44,
    "integration/test_attestations.py": 40,
    "integration/test_signatures.py": 38,
    "integration/test_bounded_watches.py": 35,
    "integration/test_fencing.py": 35,
    "integration/test_chaos.py": 33,
    "integration/test_crd_wait.py": 26,
    "integration/test_registry_check.py": 25,
    "integration/test_high_availability.py": 25,
    "integration/test_observability.py": 23,
    "integration/test_real_node.py": 23,
    "integration/test_gitops.py": 22,
    "integration/test_services.py": 18,
    "integration/test_prometheus.py": 18,
    "integration/test_argocd_health.py": 16,
    "integration/test_control_plane.py": 15,
    "integration/test_doc_commands.py": 14,
    "integration/test_peering.py": 13,
    "integration/test_fuzz_webhook.py": 13,
    "integration/test_run_preflight.py": 12,
    "integration/test_event_loop.py": 11,
    "integration/test_crd_validation.py": 10,
    "integration/test_pin.py": 9,
    "integration/test_bench_verification.py": 5,
}

# The operator image is built with one builder state (hack/operator-image.sh): its users queue.
GROUPS: tuple[frozenset[str], ...] = (
    frozenset({"integration/test_in_cluster.py", "integration/test_argocd_install.py"}),
)

# Runs alone after the shards (it compares the whole host's state, which another running
# cluster changes): hack/test.sh runs it last; no shard takes it.
ALONE = frozenset({"integration/test_node_teardown.py"})


def default_seconds(module: str) -> float:
    """The weight of a module :data:`SECONDS` does not list."""
    return UNIT_SECONDS if module.startswith("unit/") else DEFAULT_SECONDS


def assign(
    modules: Iterable[str],
    *,
    shards: int,
    seconds: Mapping[str, float] = SECONDS,
    groups: Iterable[frozenset[str]] = GROUPS,
) -> dict[str, int]:
    """Each module's shard, 1..``shards``; deterministic for the same modules.

    ``modules`` are paths relative to ``tests/`` (``integration/test_x.py``). Modules in
    :data:`ALONE` are left out of the result.
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1, not {shards}")
    units: dict[str, list[str]] = {}
    groups = tuple(groups)
    for module in sorted(set(modules) - ALONE):
        group = next((g for g in groups if module in g), None)
        key = min(group) if group else module
        units.setdefault(key, []).append(module)

    def weight(members: list[str]) -> float:
        return sum(seconds.get(m, default_seconds(m)) for m in members)

    loads = [0.0] * shards
    placed: dict[str, int] = {}
    for key in sorted(units, key=lambda k: (-weight(units[k]), k)):
        shard = min(range(shards), key=lambda i: (loads[i], i))
        loads[shard] += weight(units[key])
        for module in units[key]:
            placed[module] = shard + 1
    return placed


def parse(value: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)``, with 1 <= K <= N; a ValueError says what is wrong."""
    k, sep, n = value.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise ValueError(f"PERMAFROST_SHARD={value!r}: expected K/N with 1 <= K <= N, e.g. 1/2")
    return int(k), int(n)
