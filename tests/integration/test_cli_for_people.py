"""``permafrost status``, ``history``, ``rollback --watch`` and their errors, as people run them:
the real command line against the real cluster and a real operator."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator, Mapping

import pytest
import yaml

from conftest import Operator, free_port, release, wait_phase
from k8s_harness import ROOT, Cluster, KubectlError, wait_for

NEW_DIGEST = "@sha256:" + "2" * 64
BROKEN_DIGEST = "@sha256:" + "3" * 64


def permafrost(
    *args: str, env: Mapping[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "permafrost", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout


def two_revisions(cluster: Cluster, namespace: str) -> tuple[str, str]:
    """shop: v1 stable, then v2 stable; returns their revisions."""
    cluster.apply(release("shop", service="shop"), namespace=namespace)
    first = wait_phase(cluster, namespace, "shop", "Stable")["stableRevision"]
    cluster.apply(release("shop", service="shop", digest=NEW_DIGEST), namespace=namespace)
    second = wait_for(
        lambda: (
            (s := (cluster.get("grel", "shop", namespace=namespace) or {}).get("status") or {}).get(
                "stableRevision"
            )
            not in (None, first)
            and s.get("phase") == "Stable"
            and s["stableRevision"]
        ),
        timeout=60,
        what="v2 to be stable",
    )
    return first, second


def test_status_and_history_after_a_rollout_show_revisions_and_who_changed_the_spec(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    first, second = two_revisions(crds, namespace)

    table = permafrost("status", "-n", namespace, env=crds.env)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["NAME", "DESIRED", "STABLE", "PHASE", "READY", "AGE", "MESSAGE"]
    assert row.split()[:5] == ["shop", second, second, "Stable", "2/2"]

    everywhere = permafrost("status", "-A", env=crds.env)
    assert any(
        line.split()[:3] == [namespace, "shop", second] for line in everywhere.stdout.splitlines()
    )

    detail = permafrost("status", "shop", "-n", namespace, env=crds.env)
    assert detail.returncode == 0, detail.stderr
    assert f"Stable:      {second} (Service shop selects it)" in detail.stdout
    assert "AllReplicasReady" in detail.stdout

    doc = json.loads(
        permafrost("status", "shop", "-n", namespace, "-o", "json", env=crds.env).stdout
    )
    assert (doc["phase"], doc["stableRevision"]) == ("Stable", second)
    assert {r["hash"]: r["outcome"] for r in doc["revisions"]} == {
        first: "Retired",
        second: "Stable",
    }
    listed = yaml.safe_load(
        permafrost("status", "-n", namespace, "-o", "yaml", env=crds.env).stdout
    )
    assert [i["name"] for i in listed["items"]] == ["shop"]

    history = permafrost("history", "shop", "-n", namespace, env=crds.env)
    assert history.returncode == 0, history.stderr
    assert "Spec last changed by kubectl-client-side-apply (Update)" in history.stdout
    timeline = history.stdout.split("Timeline (UTC):")[1]
    assert f"created revision {first}" in timeline
    assert f"revision {second} is verified and now serves traffic (was {first})" in timeline

    data = json.loads(
        permafrost("history", "shop", "-n", namespace, "-o", "json", env=crds.env).stdout
    )
    assert data["specChanges"][0]["manager"] == "kubectl-client-side-apply"
    promoted = [e for e in data["timeline"] if e["reason"] == "Promoted" and e["source"] == "event"]
    assert [e["message"].split()[1] for e in promoted] == [first, second]
    times = [e["time"] for e in data["timeline"]]
    assert times == sorted(times)


def test_watch_prints_a_rollout_until_it_is_stable(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    crds.apply(release("shop", service="shop"), namespace=namespace)
    watch = permafrost(
        "status", "shop", "-n", namespace, "--watch", "--timeout", "90", env=crds.env
    )
    assert watch.returncode == 0, watch.stdout + watch.stderr
    revision = crds.get("grel", "shop", namespace=namespace)["status"]["stableRevision"]
    assert f"Normal Promoted: revision {revision} is verified" in watch.stdout
    assert watch.stdout.splitlines()[-1].endswith("settled: Stable")


def test_watch_of_a_broken_rollout_ends_rolled_back_and_exits_one(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    crds.apply(release("shop", service="shop"), namespace=namespace)
    wait_phase(crds, namespace, "shop", "Stable")
    broken = release(
        "shop",
        service="shop",
        digest=BROKEN_DIGEST,
        # NB: long enough for the watch (a new Python process) to start before the rollback
        # on a busy machine: it shows the Events it sees, not those before it.
        deadline=20,
        annotations={"sim.permafrost.dev/behavior": "never-ready"},
    )
    crds.apply(broken, namespace=namespace)
    watch = permafrost("status", "shop", "-n", namespace, "-w", "--timeout", "120", env=crds.env)
    assert watch.returncode == 1, watch.stdout + watch.stderr
    assert "Warning RolledBack: revision" in watch.stdout
    assert watch.stdout.splitlines()[-1].endswith("settled: RolledBack")
    no_traceback(watch)


def test_rollback_with_watch_verifies_the_target_and_history_records_who_asked(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    first, second = two_revisions(crds, namespace)
    out = permafrost("rollback", "shop", "-n", namespace, "--to", first, "--watch", env=crds.env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"rolling back to revision {first}" in out.stdout
    assert f"Normal RollbackStarted: manual rollback to revision {first}" in out.stdout
    assert out.stdout.splitlines()[-1].endswith("settled: Stable")
    doc = json.loads(
        permafrost("status", "shop", "-n", namespace, "-o", "json", env=crds.env).stdout
    )
    assert doc["stableRevision"] == first
    outcomes = {r["hash"]: r["outcome"] for r in doc["revisions"]}
    assert (outcomes[first], outcomes[second]) == ("Stable", "Retired")

    history = permafrost("history", "shop", "-n", namespace, env=crds.env).stdout
    assert (
        f"Requested: permafrost.dev/rollback-to={first} (annotation written by permafrost-cli"
        in (history)
    )
    assert f"manual rollback to revision {first}" in history
    detail = permafrost("status", "shop", "-n", namespace, env=crds.env).stdout
    assert "ManualRollback" in detail

    # Nothing failed: retry changes nothing and says so (it printed "a new attempt starts").
    retry = permafrost("retry", "shop", "-n", namespace, env=crds.env)
    assert retry.returncode == 1
    assert (
        f"{namespace}/shop has no failed revision to retry (Stable: revision {first} is Stable)"
        in (retry.stderr)
    )
    annotations = (
        crds.get("guardedrelease", "shop", namespace=namespace)["metadata"].get("annotations") or {}
    )
    assert "permafrost.dev/retry" not in annotations
    no_traceback(retry)


def test_an_unknown_release_is_reported_with_a_suggestion_and_exit_one(
    crds: Cluster, namespace: str
) -> None:
    crds.apply(release("checkout"), namespace=namespace)
    for command in (["status", "chekout"], ["history", "chekout"], ["retry", "chekout"]):
        proc = permafrost(*command, "-n", namespace, env=crds.env)
        assert proc.returncode == 1
        assert f"GuardedRelease {namespace}/chekout not found" in proc.stderr
        assert "did you mean checkout?" in proc.stderr
        assert "permafrost status -A" in proc.stderr
        no_traceback(proc)
    proc = permafrost("rollback", "chekout", "--to", "x", "-n", namespace, env=crds.env)
    assert proc.returncode == 1
    assert "not found" in proc.stderr


def test_a_release_in_another_namespace_is_named_with_its_namespace(
    crds: Cluster, namespace: str
) -> None:
    crds.apply(release("checkout"), namespace=namespace)
    proc = permafrost("status", "checkout", "-n", "default", env=crds.env)
    assert proc.returncode == 1
    assert (
        f"GuardedRelease default/checkout not found; there is one named checkout in namespace "
        f"{namespace}" in proc.stderr
    )
    assert f"permafrost status checkout -n {namespace}" in proc.stderr
    no_traceback(proc)


def test_without_n_the_namespace_is_the_kubeconfig_contexts_as_for_kubectl(
    crds: Cluster, namespace: str, tmp_path: pathlib.Path
) -> None:
    crds.apply(release("checkout"), namespace=namespace)
    config = yaml.safe_load(crds.kubeconfig.read_text())
    current = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    current["context"]["namespace"] = namespace
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    proc = permafrost("status", env={**crds.env, "KUBECONFIG": str(kubeconfig)})
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()] == ["NAME", "checkout"]
    proc = permafrost("history", "checkout", env={**crds.env, "KUBECONFIG": str(kubeconfig)})
    assert proc.stdout.startswith(f"GuardedRelease {namespace}/checkout:")


def test_watch_gives_up_after_its_timeout_with_exit_five(crds: Cluster, namespace: str) -> None:
    # No operator runs for this namespace: the release never settles.
    crds.apply(release("shop"), namespace=namespace)
    proc = permafrost("status", "shop", "-n", namespace, "-w", "--timeout", "2", env=crds.env)
    assert proc.returncode == 5
    assert "not reconciled yet: is the operator running?" in proc.stdout
    assert "still not settled after 2s" in proc.stderr


def test_ctrl_c_stops_a_watch_cleanly(crds: Cluster, namespace: str) -> None:
    crds.apply(release("shop"), namespace=namespace)
    proc = subprocess.Popen(
        [sys.executable, "-m", "permafrost", "status", "shop", "-n", namespace, "-w"],
        env={**crds.env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the watch has started
    assert "shop" in first
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.strip() == "permafrost: interrupted"


def test_run_takes_its_options_from_the_environment(
    crds: Cluster, namespace: str, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> None:
    port = free_port()
    env = {
        **crds.env,
        "PYTHONUNBUFFERED": "1",
        "PERMAFROST_NAMESPACE": namespace,
        "PERMAFROST_METRICS_PORT": str(port),
        "PERMAFROST_VERBOSE": "true",
    }
    log = tmp_path / "operator.log"
    request.node.operator_log = log
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "permafrost", "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        crds.apply(release("shop"), namespace=namespace)
        wait_phase(crds, namespace, "shop", "Stable")

        def scrape() -> bytes | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    return bytes(r.read())
            except OSError:
                return None

        metrics = wait_for(scrape, timeout=30, what="/metrics")
        assert b'permafrost_rollout_events_total{reason="Promoted"} 1.0' in metrics
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# --- the cluster cannot be used ------------------------------------------------------------------


def test_a_missing_kubeconfig_is_reported_with_exit_three(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "missing")}
    proc = permafrost("status", env=env)
    assert proc.returncode == 3
    # Called missing, not "Invalid kube-config file"; the hint starts with real clusters.
    assert f"no kubeconfig: {tmp_path / 'missing'} does not exist" in proc.stderr
    assert "Point KUBECONFIG at your cluster's kubeconfig" in proc.stderr
    assert "export KUBECONFIG=" in proc.stderr
    no_traceback(proc)
    operator = permafrost("run", "-n", "shop", env=env, timeout=60)
    assert operator.returncode == 3
    assert "does not exist" in operator.stderr
    no_traceback(operator)


def test_an_invalid_kubeconfig_is_reported_with_exit_three(tmp_path: pathlib.Path) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("clusters: [\n")
    proc = permafrost("history", "shop", env={**os.environ, "KUBECONFIG": str(broken)})
    assert proc.returncode == 3
    assert "no usable kubeconfig" in proc.stderr
    no_traceback(proc)


def test_an_unreachable_cluster_is_reported_with_exit_three(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    # The real kubeconfig, pointed at a port nothing listens on.
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:9"
    unreachable = tmp_path / "kubeconfig"
    unreachable.write_text(yaml.safe_dump(config))
    proc = permafrost("status", "-A", env={**cluster.env, "KUBECONFIG": str(unreachable)})
    assert proc.returncode == 3
    assert "cannot reach the Kubernetes API at https://127.0.0.1:9" in proc.stderr
    assert "kubectl cluster-info" in proc.stderr
    no_traceback(proc)


@pytest.fixture
def bare_cluster(tmp_path: pathlib.Path) -> Iterator[Cluster]:
    """A second, separate control plane with no Permafrost CRDs (the shared one has them)."""
    env = {
        **os.environ,
        "PERMAFROST_CLUSTER_DIR": str(tmp_path / "bare"),
        "PERMAFROST_CLUSTER_NAME": f"bare-{uuid.uuid4().hex[:6]}",
        "PERMAFROST_NODES": "1",
        # NB: no real node: the shared cluster's has the network namespace (the one we run in).
        "REAL_NODE": "0",
    }
    script = str(ROOT / "hack" / "cluster.sh")
    try:
        subprocess.run([script, "up"], env=env, check=True, timeout=180)
        yield Cluster(kubeconfig=tmp_path / "bare" / "kubeconfig", logs_dir=tmp_path)
    finally:
        subprocess.run([script, "down"], env=env, check=False, timeout=120)


def test_missing_crds_are_reported_with_how_to_install_them(bare_cluster: Cluster) -> None:
    with pytest.raises(KubectlError):
        bare_cluster.kubectl("get", "crd", "guardedreleases.permafrost.dev")
    for command in (["status"], ["status", "-A"], ["status", "shop"], ["history", "shop"]):
        proc = permafrost(*command, env=bare_cluster.env)
        assert proc.returncode == 4, proc.stderr
        assert "Permafrost's CRDs are not installed in this cluster" in proc.stderr
        assert "kubectl apply --server-side -k crds/" in proc.stderr
        no_traceback(proc)
    operator = permafrost("run", env=bare_cluster.env, timeout=60)
    assert operator.returncode == 4
    assert "Permafrost's CRDs are not installed" in operator.stderr
