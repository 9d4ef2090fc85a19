"""The benchmarks still work: each runs at tiny sizes against the real cluster.

No timing is asserted (benchmarks are not tests): only that every benchmark finished, counted
what it should, saw no errors, kept every repetition, and left nothing cluster-wide behind.
"""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from conftest import WEBHOOK_CONFIGURATION
from k8s_harness import ROOT, Cluster, wait_for

# NB: every benchmark in its smoke size, in one subprocess, set up by the first test.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def results(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "--smoke", "--report"),
            *("--out", str(out), "--doc", str(out / "benchmarks.md")),
        ],
        cwd=ROOT,
        env=crds.env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def load(results: pathlib.Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((results / f"{name}.json").read_text())
    assert data["smoke"] is True
    return data


def finite(*values: float) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in values)


def test_webhook_benchmark_answers_every_review_without_errors(results: pathlib.Path) -> None:
    data = load(results, "admission")
    rows = data["webhook"]
    assert len(rows) == data["repetitions"] * len(data["rates"])
    for row in rows:
        assert row["errors"] == 0, row["error_kinds"]
        assert row["ok"] == row["sent"] == row["allowed"] > 0
        assert finite(row["p50_ms"], row["p99_ms"])
        assert row["p50_ms"] <= row["p99_ms"]


def test_apiserver_benchmark_times_every_variant_and_operation(results: pathlib.Path) -> None:
    data = load(results, "admission")
    assert len(data["apiserver"]) == data["repetitions"]
    for row in data["apiserver"]:
        for variant in ("webhook", "policy-only", "no-guard"):
            for op in ("create", "update"):
                assert row[f"{variant}.{op}.n"] == data["apiserver_ops_per_variant"]
                assert finite(row[f"{variant}.{op}.p50_ms"], row[f"{variant}.{op}.p99_ms"])


def test_rollout_benchmark_times_both_sides_for_every_size(results: pathlib.Path) -> None:
    data = load(results, "rollout")
    assert len(data["rows"]) == len(data["sizes"]) * data["repetitions"]
    for size in data["sizes"]:
        mine = [r for r in data["rows"] if r["replicas"] == size]
        assert sorted(r["repetition"] for r in mine) == list(range(data["repetitions"]))
        # NB: no pod is Ready before its delay: a faster "rollout" means a broken clock.
        assert all(r["permafrost_s"] >= data["ready_after_seconds"] for r in mine)
        assert all(r["native_s"] >= data["ready_after_seconds"] for r in mine)
        assert all(r["native_full_surge_s"] >= data["ready_after_seconds"] for r in mine)


def test_rollback_benchmark_sees_each_failure_rolled_back_off_traffic(
    results: pathlib.Path,
) -> None:
    data = load(results, "rollback")
    assert len(data["rows"]) == 2 * data["repetitions"]
    reasons = {"crash-loop": "CrashLoop", "deadline": "ProgressDeadlineExceeded"}
    for row in data["rows"]:
        assert row["reason"] == reasons[row["mode"]]
        assert row["samples_off_stable"] == 0
        assert math.isfinite(row["to_done_s"])
        assert row["to_done_s"] >= max(row["to_rolled_back_s"], row["to_scaled_down_s"])
    assert len({r["revision"] for r in data["rows"]}) == len(data["rows"])


def test_scale_benchmark_counts_the_operators_requests_and_memory(
    results: pathlib.Path,
) -> None:
    data = load(results, "scale")
    assert data["progress"][-1][1] == data["releases"]
    # NB: every rollout writes at least its revision Deployment and its status.
    assert data["requests"]["writes"] >= 2 * data["releases"]
    assert data["requests"]["reads"] > 0
    assert data["peak_rss"] >= data["rss_before_releases"] > 0
    assert finite(data["operator_cpu_s"], data["all_stable_s"])


def test_policy_benchmark_evaluates_the_library_both_ways(results: pathlib.Path) -> None:
    data = load(results, "policy_engine")
    assert data["allowed"] is True, data["violations"]
    assert data["rules_evaluated"] > 0
    assert len(data["rows"]) == data["repetitions"]
    for row in data["rows"]:
        assert row["cached_evaluations"] > 0
        assert row["uncached_evaluations"] > 0


def test_zero_downtime_benchmark_records_every_request_of_each_switch(
    results: pathlib.Path,
) -> None:
    data = load(results, "zero_downtime")
    if data.get("skipped"):
        pytest.skip(data["skipped"])
    rows = {row["scenario"]: row for row in data["rows"]}
    assert set(rows) == {"promote", "native-max-unavailable-0"}
    for row in rows.values():
        assert row["sent"] > 0
        assert sum(sum(counts) for counts in row["series"].values()) == row["sent"]
        assert len(row["failures_at_s"]) == row["failed"]
    promote = rows["promote"]
    assert promote["failed"] == 0, promote["first_failures"]
    assert promote["unverified"] == 0, promote["first_unverified"]
    assert set(promote["versions"]) == {"v1", "v2"}
    assert rows["native-max-unavailable-0"]["unverified"] is None  # nothing verified there


def test_report_covers_every_benchmark(results: pathlib.Path) -> None:
    text = (results / "benchmarks.md").read_text()
    for heading in (
        "1a.",
        "1b.",
        "## 2.",
        "## 3.",
        "## 4.",
        "## 5.",
        "## 6.",
        "## 7.",
        "## Targets",
    ):
        assert heading in text
    switches = len(load(results, "zero_downtime")["rows"])
    assert len(list((results / "benchmarks").glob("*.png"))) == 4 + switches


def test_benchmarks_leave_nothing_cluster_wide_behind(results: pathlib.Path, crds: Cluster) -> None:
    assert crds.get("validatingwebhookconfiguration", WEBHOOK_CONFIGURATION) is None
    schemas = crds.get("flowschemas")["items"]
    assert not [s for s in schemas if s["metadata"]["name"].startswith("permafrost-bench")]
    assert crds.get("guardrailpolicies")["items"] == []
    assert crds.get("clusterrolebinding", "permafrost-bench-operator") is None
    live = [
        n["metadata"]["name"]
        for n in crds.get("namespaces", selector="bench.permafrost.dev/run=true")["items"]
        if not n["metadata"].get("deletionTimestamp")
    ]
    assert live == []


def test_the_benchmarks_leave_no_admission_policy_behind(
    crds: Cluster, results: pathlib.Path
) -> None:
    """The operators the benchmarks start with ``--admission`` install fail-safe policies that
    exempt only their own identity: left behind, they would refuse the revisions of the next
    operator in the cluster (a test's, run under another user)."""

    def left() -> list[str]:
        found = []
        for kind in ("validatingadmissionpolicies", "mutatingadmissionpolicies"):
            names = crds.kubectl("get", kind, "-o", "name").stdout.split()
            found += [n for n in names if n.rpartition("/")[2].startswith("permafrost-")]
        return found

    # NB: the compiled policies go with their GuardrailPolicies, by the garbage collector.
    wait_for(lambda: not left(), timeout=60, interval=1, what="no admission policy left")


def test_the_admission_benchmark_measures_the_compiled_policies(results: pathlib.Path) -> None:
    data = load(results, "admission")
    assert "apiserver" in data["enforced_by"].values(), data["enforced_by"]
    (row, *_) = data["apiserver_compiled"]
    for variant in ("compiled+webhook", "compiled", "no-guard"):
        for op in ("create", "update"):
            assert row[f"{variant}.{op}.n"] > 0, row
            assert finite(row[f"{variant}.{op}.p50_ms"], row[f"{variant}.{op}.p99_ms"]), row
