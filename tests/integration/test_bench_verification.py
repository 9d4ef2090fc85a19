"""The image verification benchmark still works: it runs at tiny sizes against a real registry
on loopback (no cluster), and its results and its section of the report are complete.

No timing is asserted (benchmarks are not tests): only that every verification was made and
succeeded, that the percentiles are ordered, and that the caches kept what their bounds allow.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import pytest
from bench import oci_registry

from k8s_harness import ROOT


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    reason = oci_registry.missing()
    if reason is not None:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("bench")
    doc = out / "benchmarks.md"
    for args in (("--smoke", "--only", "verification", "--no-report"), ("--report-only",)):
        proc = subprocess.run(
            [sys.executable, "-m", "bench", *args, "--out", str(out), "--doc", str(doc)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
    data: dict[str, Any] = json.loads((out / "verification.json").read_text())
    return data, doc.read_text()


def ordered(row: dict[str, Any]) -> bool:
    values = [row[k] for k in ("p50", "p99", "max", "signature_p50", "check_p50")]
    return (
        all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in values)
        and row["p50"] <= row["p99"] <= row["max"]
        and row["signature_p50"] <= row["signature_p99"]
        and row["check_p50"] <= row["check_p99"]
    )


def test_every_verification_is_made_and_verified(results: tuple[dict[str, Any], str]) -> None:
    data, _ = results
    assert data["smoke"] is True
    assert "skipped" not in data
    for name, n in (
        ("cold", data["cold_per_repetition"]),
        ("cold_attested", data["cold_per_repetition"]),
        ("cached", data["cached_per_repetition"]),
        ("cached_attested", data["cached_per_repetition"]),
    ):
        rows = data[name]
        assert len(rows) == data["repetitions"]
        for row in rows:
            assert row["n"] == n > 0
            assert row["failed"] == 0, (name, row)
            assert ordered(row), (name, row)


def test_a_cold_verification_costs_more_than_a_cached_one(
    results: tuple[dict[str, Any], str],
) -> None:
    """Cold is in milliseconds, cached in microseconds: a cold one makes several requests over
    loopback, a cached one none (a cold p50 under 100 µs would mean nothing was fetched)."""
    data, _ = results
    assert all(r["p50"] * 1000 > 100 for r in data["cold"])
    assert data["cold_p99_ms"] > 0
    assert data["cached_p99_us"] > 0
    # NB: at least the signature manifest, its payload and the image manifest; the attestation
    # adds its manifest and its envelope.
    assert data["requests"]["cold"] >= 3
    assert data["requests"]["cold_attested"] == data["requests"]["cold"] + 2


def test_the_caches_keep_what_their_bounds_allow(results: tuple[dict[str, Any], str]) -> None:
    data, _ = results
    bounds = data["bounds"]
    for cache in (bounds["signatures"], bounds["registry_check"]):
        assert bounds["inserted"] > cache["entries_bound"]
        assert cache["entries"] == cache["entries_bound"]
        assert 0 < cache["bytes_estimated"] <= cache["bytes_bound"]
    assert bounds["signatures"]["newest_kept"] is True
    assert bounds["signatures"]["oldest_kept"] is False
    assert bounds["bytes_measured"] > 0


def test_the_report_has_its_section_and_targets(results: tuple[dict[str, Any], str]) -> None:
    _, text = results
    assert "## 7. Image verification" in text
    section = text.partition("## 7. Image verification")[2]
    for target in (
        "7. cold, signature p99 < 50 ms",
        "7. cached, signature p99 < 1 ms",
        "7. the caches are bounded (entries and bytes)",
    ):
        assert target in section
    assert "| signatures | 64 (64) |" in section
