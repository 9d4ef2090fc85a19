"""Prometheus metrics: counters of guardrail decisions, served by ``permafrost run --metrics``.

Counting is the only thing done here; the decisions are made elsewhere. Label values are
bounded (reason constants, policy and rule names), never object names, so cardinality stays
small on large clusters.
"""

from __future__ import annotations

from collections.abc import Iterable

import prometheus_client

REGISTRY = prometheus_client.CollectorRegistry()

ADMISSION_DECISIONS = prometheus_client.Counter(
    "permafrost_admission_decisions_total",
    "Admission decisions of the operator's webhooks, by reason and result.",
    ["reason", "result"],
    registry=REGISTRY,
)
BREAK_GLASS = prometheus_client.Counter(
    "permafrost_break_glass_total",
    "Mutations let through (or refused) under break-glass.",
    ["result"],
    registry=REGISTRY,
)
POLICY_RESULTS = prometheus_client.Counter(
    "permafrost_policy_results_total",
    "GuardrailPolicy rule results that did not pass, by stage, enforcement and outcome.",
    ["stage", "policy", "rule", "enforcement", "outcome"],
    registry=REGISTRY,
)
ROLLOUT_EVENTS = prometheus_client.Counter(
    "permafrost_rollout_events_total",
    "Rollout decisions of the planner (Promoted, RolledBack, Superseded, DriftRepaired, ...).",
    ["reason"],
    registry=REGISTRY,
)


def count_admission(*, reason: str, allowed: bool) -> None:
    ADMISSION_DECISIONS.labels(reason=reason, result="allowed" if allowed else "denied").inc()


def count_policy_results(*, stage: str, results: Iterable[object]) -> None:
    for result in results:
        outcome = getattr(result, "outcome", "Pass")
        if outcome != "Pass":
            POLICY_RESULTS.labels(
                stage=stage,
                policy=getattr(result, "policy", ""),
                rule=getattr(result, "rule", ""),
                enforcement=getattr(result, "enforcement", ""),
                outcome=outcome,
            ).inc()


def serve(*, port: int, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` from a background thread (the standard Prometheus client server)."""
    prometheus_client.start_http_server(port, addr=addr, registry=REGISTRY)
