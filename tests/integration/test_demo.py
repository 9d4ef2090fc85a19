"""``make demo`` tells its story on the real cluster, non-interactively, and cleans up after
itself: no operator left running, no webhook configuration left pointing at it."""

from __future__ import annotations

import pathlib
import re
import subprocess
from collections.abc import Iterator

import pytest

from conftest import WEBHOOK_CONFIGURATION
from k8s_harness import ROOT, Cluster, RealNode

NAMESPACE = "permafrost-demo"
V2_IMAGE = "registry.example/shop/checkout:1.5.0@sha256:"
V3_IMAGE = "registry.example/shop/checkout:1.6.0@sha256:"


@pytest.fixture(scope="module")
def demo(crds: Cluster) -> Iterator[subprocess.CompletedProcess[str]]:
    """The demo's run, once for the module's tests; afterwards, what it leaves on purpose goes
    too (the suite shares the cluster): its namespace and the built-in policies, which apply
    cluster-wide."""
    try:
        yield subprocess.run(
            [str(ROOT / "hack" / "demo.sh")],
            env={**crds.env, "DEMO_NONINTERACTIVE": "1"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=540,
            check=False,
        )
    finally:
        subprocess.run([str(ROOT / "hack" / "demo.sh"), "down"], env=crds.env, check=False)
        crds.kubectl(
            "delete", "-f", str(ROOT / "deploy" / "policies"), "--ignore-not-found", check=False
        )
        crds.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


@pytest.mark.timeout(600)
def test_the_demo_ships_upgrades_is_denied_rolls_back_and_leaves_no_operator_behind(
    crds: Cluster, demo: subprocess.CompletedProcess[str]
) -> None:
    out = demo.stdout
    assert demo.returncode == 0, out[-4000:] + demo.stderr[-2000:]

    first = re.search(r"v1 is Stable: revision (\w+) serves", out)
    second = re.search(r"v2 is Stable: revision (\w+) serves \(was (\w+)\)", out)
    third = re.search(r"v3 rolled back automatically: revision (\w+) failed", out)
    assert first, out
    assert second, out
    assert third, out
    v1, v2, v3 = first.group(1), second.group(1), third.group(1)
    assert second.group(2) == v1
    assert len({v1, v2, v3}) == 3
    assert f"Service checkout selects revision {v2}" in out
    assert f"denied: in-place kubectl set image on checkout-{v2}" in out
    assert "is frozen by Permafrost" in out
    assert "denied: unpinned image" in out
    assert "is not pinned by digest" in out
    assert f"Service checkout selected only revision {v2} during the v3 rollout" in out
    assert "Timeline (UTC):" in out
    assert re.search(r"\[\d\d:\d\d:\d\d \+ *\d+s\]", out), "timeline lines carry their time"

    release = crds.get("grel", "checkout", namespace=NAMESPACE)
    status = release["status"]
    assert (status["stableRevision"], status["phase"]) == (v2, "RolledBack")
    records = {r["hash"]: r for r in status["revisions"]}
    assert records[v2]["outcome"] == "Stable"
    assert records[v2]["images"][0].startswith(V2_IMAGE)
    assert records[v3]["outcome"] == "Failed"
    assert records[v3]["images"][0].startswith(V3_IMAGE)
    rolled_back = next(c for c in status["conditions"] if c["type"] == "RolledBack")
    assert rolled_back["status"] == "True"
    service = crds.get("service", "checkout", namespace=NAMESPACE)
    assert service["spec"]["selector"]["permafrost.dev/revision"] == v2

    # Nothing of the demo's operator is left: its process, its webhook configuration.
    pid = re.search(r"operator started \(pid (\d+),", out)
    assert pid, out
    cmdline = pathlib.Path(f"/proc/{pid.group(1)}/cmdline")
    assert not cmdline.exists() or b"permafrost" not in cmdline.read_bytes()
    assert crds.get("validatingwebhookconfiguration", WEBHOOK_CONFIGURATION) is None


@pytest.mark.real_node
@pytest.mark.timeout(600)
def test_the_demo_shows_real_requests_answered_only_by_verified_revisions(
    crds: Cluster, real_node: RealNode, demo: subprocess.CompletedProcess[str]
) -> None:
    """With the real node, the demo's chapter on real containers: a crashing v2 rolled back and
    a good v2 promoted, under steady requests that all succeed, answered by v1, then v2."""
    out = demo.stdout
    assert demo.returncode == 0, out[-4000:] + demo.stderr[-2000:]
    assert "Real containers on the real node" in out
    assert "the crashing v2 was rolled back (CrashLoop): web v1 kept serving" in out
    answered = re.search(
        r"(\d+) requests during both rollouts: 0 failed; answered by v1, then", out
    )
    assert answered, out
    assert int(answered.group(1)) >= 20
    # The count was shown live, a line a second, through both rollouts (which take about 10 s
    # here: how many lines is a matter of speed, not of what is shown).
    live = re.findall(r"requests: sent (\d+) failed (\d+) (.*)", out)
    assert len(live) >= 5, out
    assert {failed for _, failed, _ in live} == {"0"}, live
    assert [int(sent) for sent, _, _ in live] == sorted(int(sent) for sent, _, _ in live)
    assert "v2=" in live[-1][2], live[-1]
    status = crds.get("guardedrelease", "web", namespace=NAMESPACE)["status"]
    assert status["phase"] == "Stable"
    assert sorted(r["outcome"] for r in status["revisions"]) == ["Failed", "Retired", "Stable"]
