"""Metrics and structured logs of the real operator: ``/metrics`` scraped during a rollout, a
rollback and an admission denial; JSON log lines of the decisions with their fields."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Operator, free_port, release, status, wait_phase
from k8s_harness import Cluster, KubectlError, wait_for

NEW_DIGEST = "@sha256:" + "2" * 64
METRICS_PORT = free_port()

POLICY = "observability-frozen-out"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def deny_policy(namespace: str) -> dict[str, Any]:
    """A create-stage policy that refuses releases labelled ``frozen-out=true`` in ``namespace``."""
    return {
        "apiVersion": "permafrost.dev/v1alpha1",
        "kind": "GuardrailPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "stages": ["create"],
            "match": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "objectSelector": {"matchLabels": {"frozen-out": "true"}},
            },
            "rules": [
                {
                    "name": "not-frozen-out",
                    "expression": "false",
                    "message": "releases are frozen out of this namespace",
                }
            ],
        },
    }


@pytest.fixture
def deny_policy_cleanup(crds: Cluster) -> Iterator[None]:
    yield
    crds.kubectl("delete", "guardrailpolicy", POLICY, "--ignore-not-found", check=False)


@pytest.fixture
def operator_args() -> Sequence[str]:
    # NB: the webhook's own metrics and decision logs are measured: the denying policy stays on
    # the webhook (compiled, the apiserver would deny it: test_compiled_policies.py).
    return ["--metrics-port", str(METRICS_PORT), "--log-format", "json", "--no-compile-policies"]


def scrape() -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def first_scrape() -> Samples:
    def probe() -> Samples | None:
        try:
            return scrape()
        except OSError:
            return None

    return wait_for(probe, timeout=30, interval=0.5, what="the operator's /metrics")


def wait_metric(name: str, expected: float, **labels: str) -> Samples:
    """Wait until a sample has ``expected`` (metrics move right after the status is written)."""

    def probe() -> Samples | None:
        samples = scrape()
        return samples if value(samples, name, **labels) == expected else None

    return wait_for(probe, timeout=30, interval=0.5, what=f"{name}{labels} == {expected}")


def decisions(log: Any) -> list[dict[str, Any]]:
    """The JSON log records of the operator that carry a release."""
    records = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if "release" in record:
                records.append(record)
    return records


def test_metrics_count_a_rollout_a_rollback_and_a_denial(
    crds: Cluster, namespace: str, guarded_operator: Operator, deny_policy_cleanup: None
) -> None:
    before = first_scrape()
    promoted = value(before, "permafrost_rollouts_total", outcome="Promoted")
    rolled_back = value(before, "permafrost_rollouts_total", outcome="RolledBack")
    durations = value(before, "permafrost_rollout_duration_seconds_count")
    rollbacks = value(before, "permafrost_time_to_rollback_seconds_count")
    denial = {
        "webhook": "releases",
        "reason": "PolicyViolation",
        "result": "denied",
        "policy": POLICY,
        "rule": "not-frozen-out",
    }
    denied = value(before, "permafrost_admission_decisions_total", **denial)
    reviews = value(before, "permafrost_admission_duration_seconds_count", webhook="releases")

    # A first rollout: promoted, timed, one release Stable.
    crds.apply(release("shop", service="shop", deadline=20), namespace=namespace)
    stable = wait_phase(crds, namespace, "shop", "Stable", timeout=90)["stableRevision"]
    after = wait_metric("permafrost_rollouts_total", promoted + 1, outcome="Promoted")
    assert value(after, "permafrost_rollout_duration_seconds_count") == durations + 1
    assert value(after, "permafrost_rollout_duration_seconds_sum") > 0
    assert value(after, "permafrost_releases", phase="Stable") == 1

    # An upgrade that never becomes Ready: rolled back at its deadline, time to rollback observed.
    crds.apply(
        release(
            "shop",
            service="shop",
            deadline=6,
            digest=NEW_DIGEST,
            annotations={"sim.permafrost.dev/behavior": "never-ready"},
        ),
        namespace=namespace,
    )
    wait_phase(crds, namespace, "shop", "RolledBack", timeout=90)
    after = wait_metric("permafrost_rollouts_total", rolled_back + 1, outcome="RolledBack")
    assert value(after, "permafrost_time_to_rollback_seconds_count") == rollbacks + 1
    assert value(after, "permafrost_rollouts_total", outcome="Promoted") == promoted + 1
    assert value(after, "permafrost_releases", phase="RolledBack") == 1
    assert value(after, "permafrost_releases", phase="Stable") == 0
    assert status(crds, namespace, "shop")["stableRevision"] == stable

    # A release that a create-stage policy forbids: denied by the webhook, counted with the
    # policy and rule, timed.
    crds.apply(deny_policy(namespace))
    forbidden = release("forbidden")
    forbidden["metadata"]["labels"] = {"frozen-out": "true"}
    with pytest.raises(KubectlError, match="releases are frozen out"):
        crds.create(forbidden, namespace=namespace)
    after = wait_metric("permafrost_admission_decisions_total", denied + 1, **denial)
    assert value(after, "permafrost_admission_duration_seconds_count", webhook="releases") > reviews

    # Deleted, the release leaves the phase gauge.
    crds.kubectl("delete", "guardedrelease", "shop", namespace=namespace)
    wait_metric("permafrost_releases", 0, phase="RolledBack")

    # Every decision above is a JSON log line with its release, revision and reason.
    records = decisions(guarded_operator.log)
    promoted_lines = [r for r in records if r["reason"] == "Promoted"]
    assert [(r["release"], r["namespace"], r["revision"]) for r in promoted_lines] == [
        ("shop", namespace, stable)
    ]
    failed = status_revision_failed(records)
    assert failed not in (None, stable)
    ended = [r for r in records if r.get("outcome") == "RolledBack"]
    assert [(r["revision"], r["reason"]) for r in ended] == [(failed, "ProgressDeadlineExceeded")]
    assert ended[0]["time_to_rollback_seconds"] >= 0
    denials = [r for r in records if r["reason"] == "PolicyViolation"]
    assert [(r["release"], r["result"], r["policy"], r["rule"]) for r in denials] == [
        ("forbidden", "denied", POLICY, "not-frozen-out")
    ]


def status_revision_failed(records: list[dict[str, Any]]) -> str | None:
    """The revision of the (only) RolledBack Event's log line."""
    (line,) = [r for r in records if r["reason"] == "RolledBack" and "outcome" not in r]
    revision: str | None = line["revision"]
    return revision


def json_lines(log: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_every_operator_log_line_is_json_with_a_message_and_a_severity(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    crds.apply(release("shop", deadline=20), namespace=namespace)
    revision = wait_phase(crds, namespace, "shop", "Stable", timeout=90)["stableRevision"]
    created = wait_for(
        lambda: [
            r
            for r in json_lines(operator.log)
            if r.get("reason") == "RevisionCreated" and r.get("release") == "shop"
        ],
        timeout=30,
        what="the RevisionCreated log line",
    )
    assert [r["revision"] for r in created] == [revision]
    actions = [r for r in json_lines(operator.log) if r.get("action") == "CreateRevision"]
    assert [(r["release"], r["revision"]) for r in actions] == [("shop", revision)]
    phases = [r for r in json_lines(operator.log) if r.get("phase") == "Stable"]
    assert [(r["revision"], r["reason"]) for r in phases] == [(revision, "AllReplicasReady")]
    lines = [line for line in operator.log.read_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        record = json.loads(line)
        assert record["message"]
        assert record["severity"] in ("debug", "info", "warn", "error", "fatal")


def nightly(image: str) -> dict[str, Any]:
    """A suspended CronJob: no controller writes its spec or runs it while the test looks."""
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly"},
        "spec": {
            "schedule": "0 3 * * *",
            "suspend": True,
            "jobTemplate": {
                "spec": {
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [{"name": "report", "image": image}],
                        }
                    }
                }
            },
        },
    }


def test_the_webhook_is_sent_only_the_updates_that_could_change_what_runs(
    crds: Cluster, namespace: str, guarded_operator: Operator
) -> None:
    """The apiserver evaluates the webhooks' match conditions: an update of a workload's labels
    or annotations never reaches the operator; one of its spec does (and is allowed when it
    changes no frozen field). Counted by the webhook's own decisions."""
    first_scrape()
    sent = {
        "webhook": "frozen-enforced",
        "reason": "NoChange",
        "result": "allowed",
        "policy": "",
        "rule": "",
    }
    crds.create(nightly("registry.example/report" + NEW_DIGEST), namespace=namespace)
    before = value(scrape(), "permafrost_admission_decisions_total", **sent)

    crds.kubectl("label", "cronjob", "nightly", "team=payments", namespace=namespace)
    crds.kubectl("annotate", "cronjob", "nightly", "owner=alice@example.com", namespace=namespace)
    crds.kubectl(
        "patch", "cronjob", "nightly", "-p", '{"spec": {"suspend": false}}', namespace=namespace
    )

    # NB: each kubectl returned after the apiserver's admission: the count is final.
    after = scrape()
    assert value(after, "permafrost_admission_decisions_total", **sent) == before + 1
    body = crds.get("cronjob", "nightly", namespace=namespace)
    assert body["metadata"]["labels"]["team"] == "payments"
    assert body["spec"]["suspend"] is False
    crds.kubectl("delete", "cronjob", "nightly", namespace=namespace)
