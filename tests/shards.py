"""Which test modules each shard of ``make test`` runs (``PERMAFROST_SHARD=K/N``).

``hack/test.sh`` runs the suite as N shards side by side, each against a cluster of its own:
most of the suite's time is spent waiting on real pods, the apiserver and Argo CD, not on the
CPU. Modules go whole to one shard (their module-scoped fixtures stay shared), largest first to
the shard with the least so far (LPT), from the seconds each module took on the reference
machine; a module not listed counts :data:`DEFAULT_SECONDS`. Modules of one :data:`GROUPS` entry
go to the same shard: they share something of the machine's that admits one user at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

DEFAULT_SECONDS = 5.0

# Seconds per module on the reference machine (2 cores) in a sharded run (hack/test.sh lists
# them at the end of each run); only the integration modules that take long are worth naming.
SECONDS: dict[str, float] = {
    "integration/test_cli_for_people.py": 332,
    "integration/test_admission_vectors.py": 453,
    "integration/test_argocd_services.py": 452,
    "integration/test_argocd_sync.py": 268,
    "integration/test_in_cluster.py": 569,
    "integration/test_argocd_install.py": 163,
    "integration/test_bench_smoke.py": 125,
    "integration/test_bench_verification.py": 20,
    "integration/test_autoscaling.py": 161,
    "integration/test_rollouts.py": 325,
    "integration/test_zero_downtime.py": 117,
    "integration/test_demo.py": 75,
    "integration/test_policies.py": 214,
    "integration/test_gates.py": 420,
    "integration/test_compiled_policies.py": 150,
    "integration/test_argocd_health.py": 160,
    "integration/test_webhook_security.py": 155,
    "integration/test_crd_wait.py": 62,
    "integration/test_outages.py": 150,
    "integration/test_bounded_watches.py": 110,
    "integration/test_chaos.py": 105,
    "integration/test_fencing.py": 100,
    "integration/test_fuzz_webhook.py": 62,
    "integration/test_stalls.py": 86,
    "integration/test_least_privilege.py": 115,
    "integration/test_high_availability.py": 62,
    "integration/test_real_node.py": 50,
    "integration/test_exec_sessions.py": 161,
    "integration/test_crd_validation.py": 40,
    "integration/test_doc_commands.py": 40,
    "integration/test_peering.py": 40,
    "integration/test_event_loop.py": 30,
    "integration/test_pin.py": 60,
    "integration/test_registry_check.py": 100,
    "integration/test_pull_secrets.py": 100,
    "integration/test_prometheus.py": 60,
    "integration/test_signatures.py": 180,
    "integration/test_attestations.py": 120,
}

# The operator image is built with one builder state (hack/operator-image.sh): its users queue.
GROUPS: tuple[frozenset[str], ...] = (
    frozenset({"integration/test_in_cluster.py", "integration/test_argocd_install.py"}),
)

# Runs alone after the shards (it compares the whole host's state, which another running
# cluster changes): hack/test.sh runs it last; no shard takes it.
ALONE = frozenset({"integration/test_node_teardown.py"})


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
        return sum(seconds.get(m, DEFAULT_SECONDS) for m in members)

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
