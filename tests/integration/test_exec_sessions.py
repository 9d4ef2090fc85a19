"""Exec, attach, cp and port-forward into frozen pods, and break-glass sessions, for real.

A GuardedRelease runs real pods on the real node; ``kubectl exec`` really runs a process in
them when it is let through. Without a session, every way into a frozen pod is denied (by the
operator's webhook, and in an enforced namespace by the fail-safe policy too). A member of a
break-glass group, with real credentials (a ServiceAccount's token, not impersonation), opens a
session with ``permafrost break-glass``: the exec works, the pod is marked and the use recorded
(Events on the pod and the release, ``permafrost history``); once the session ends, the pod is
replaced by a fresh one of the same revision. With the operator down, what the fail-safe policy
alone holds is asserted as documented (docs/admission.md).
"""

from __future__ import annotations

import datetime
import json
import pathlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

import pytest
import yaml

from conftest import (
    BREAK_GLASS_GROUP,
    Operator,
    free_port,
    release,
    start_guarded,
    stop_guarded,
    wait_phase,
)
from k8s_harness import ROOT, Cluster, RealNode, wait_for

pytestmark = pytest.mark.real_node

PROBE = {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}
TAINTED = "permafrost.dev/tainted"
EXEC = ("--", "/app", "get", "http://127.0.0.1:8080/")


@pytest.fixture
def operator_args(namespace: str) -> Sequence[str]:
    # NB: the ServiceAccounts of the test's namespace are a break-glass group: alice is one of
    # them and holds a real token; bob is not.
    return ["--break-glass-group", f"system:serviceaccounts:{namespace}"]


def _kubeconfig(
    cluster: Cluster, namespace: str, account: str, path: pathlib.Path, *, home: str | None = None
) -> pathlib.Path:
    """A kubeconfig with the cluster's server and CA and a token of the ServiceAccount
    ``account`` (of the namespace ``home``, default ``namespace``), working in ``namespace``."""
    home = home or namespace
    cluster.kubectl("create", "serviceaccount", account, namespace=home)
    token = cluster.kubectl("create", "token", account, "--duration=1h", namespace=home).stdout
    token = token.strip()
    admin = json.loads(
        cluster.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout
    )
    server = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {
                    "server": server["server"],
                    "certificate-authority-data": server["certificate-authority-data"],
                },
            }
        ],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [
            {
                "name": account,
                "context": {"cluster": "local", "user": account, "namespace": namespace},
            }
        ],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def _as(cluster: Cluster, kubeconfig: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        env={**cluster.env, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def _pods(cluster: Cluster, namespace: str, revision: str) -> list[dict[str, Any]]:
    items = cluster.get("pods", namespace=namespace, selector=f"permafrost.dev/revision={revision}")
    return [
        p
        for p in items["items"]
        if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running"
    ]


def refused(proc: subprocess.CompletedProcess[str], *phrases: str) -> None:
    """The command failed, and said each of ``phrases``."""
    assert proc.returncode != 0, proc.stdout
    for phrase in phrases:
        assert phrase in proc.stderr, proc.stderr


def _events(cluster: Cluster, namespace: str, reason: str, name: str) -> list[dict[str, Any]]:
    selector = f"reason={reason},involvedObject.name={name}"
    out = cluster.kubectl(
        "get", "events", "--field-selector", selector, "-o", "json", namespace=namespace
    ).stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def test_exec_into_a_frozen_pod_needs_a_session_which_marks_it_and_it_is_replaced_after(
    crds: Cluster,
    namespace: str,
    guarded_operator: Operator,
    real_node: RealNode,
    demo_images: dict[str, str],
    tmp_path: pathlib.Path,
) -> None:
    manifest = release("web", replicas=1, deadline=60, min_ready=1, scale_down_delay=1)
    manifest["spec"]["template"]["spec"] = real_node.schedule(
        {"containers": [{"name": "app", "image": demo_images["v1"], "readinessProbe": PROBE}]}
    )
    crds.apply(manifest, namespace=namespace)
    revision = wait_phase(crds, namespace, "web", "Stable", timeout=120)["stableRevision"]
    pod = wait_for(lambda: _pods(crds, namespace, revision), timeout=60, what="a running pod")[0]
    name = pod["metadata"]["name"]
    crds.kubectl(
        "create", "rolebinding", "developers", "--clusterrole=edit",
        f"--serviceaccount={namespace}:alice", f"--serviceaccount=default:{namespace}-bob",
        f"--user={namespace}-carol", namespace=namespace,
    )  # fmt: skip
    alice = _kubeconfig(crds, namespace, "alice", tmp_path / "alice")
    # NB: bob's ServiceAccount lives elsewhere: he is not in the test namespace's group.
    bob = _kubeconfig(crds, namespace, f"{namespace}-bob", tmp_path / "bob", home="default")

    def kubectl(config: pathlib.Path | None, *args: str) -> subprocess.CompletedProcess[str]:
        if config is None:
            return crds.kubectl(*args, namespace=namespace, check=False)
        return _as(crds, config, "kubectl", "-n", namespace, *args)

    # Without a session, nobody gets in: not the cluster's admin, not a break-glass member.
    for who in (None, alice):
        for args in (
            ("exec", name, *EXEC),
            ("cp", f"{name}:/app", str(tmp_path / "app")),
            ("attach", name),
            ("port-forward", name, "0:8080"),
        ):
            proc = kubectl(who, *args)
            assert proc.returncode != 0, (args, proc.stdout)
            assert "is denied" in proc.stderr, (args, proc.stderr)
            assert "permafrost break-glass" in proc.stderr, proc.stderr
    assert not (tmp_path / "app").exists()
    assert _events(crds, namespace, "ExecDenied", name), "the denial is an Event on the pod"
    assert TAINTED not in (crds.get("pod", name, namespace=namespace)["metadata"]["labels"])

    # bob (not a member) cannot open a session; alice cannot open one for bob, or for 5h.
    proc = _as(
        crds, bob, sys.executable, "-m", "permafrost", "break-glass", name, "-n", namespace,
        "--for", "20s", "--reason", "not mine",
    )  # fmt: skip
    refused(proc, "break-glass session on Pod", "refused")
    proc = _as(
        crds, alice, sys.executable, "-m", "permafrost", "break-glass", name, "-n", namespace,
        "--for", "5h", "--reason", "too long",
    )  # fmt: skip
    refused(proc, "at most 4h")
    forged = {
        "permafrost.dev/session-user": f"system:serviceaccount:{namespace}:bob",
        "permafrost.dev/session-since": "2026-01-01T00:00:00Z",
        "permafrost.dev/session-until": "2026-01-01T00:10:00Z",
        "permafrost.dev/session-reason": "for a friend",
    }
    proc = kubectl(alice, "annotate", "pod", name, *(f"{k}={v}" for k, v in forged.items()))
    refused(proc, "refused")

    # alice opens a session for herself: her exec runs, for real, and is recorded.
    proc = _as(
        crds, alice, sys.executable, "-m", "permafrost", "break-glass", name, "-n", namespace,
        "--for", "25s", "--reason", "INC-42 look at the live config",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "break-glass session for" in proc.stdout
    proc = kubectl(alice, "exec", name, *EXEC)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["version"] == "v1"
    # Others still do not get in: the session is alice's (the admin, no member, is denied by
    # the policy already; a member who is not alice by the webhook).
    refused(kubectl(None, "exec", name, *EXEC), "is denied")
    other = (f"--as={namespace}-carol", f"--as-group=system:serviceaccounts:{namespace}")
    refused(kubectl(None, "exec", *other, name, *EXEC), "no break-glass session of yours")

    marked = wait_for(
        lambda: (crds.get("pod", name, namespace=namespace)["metadata"].get("labels") or {}).get(
            TAINTED
        ),
        timeout=20,
        what="the pod marked tainted",
    )
    assert marked == "exec"
    wait_for(
        lambda: _events(crds, namespace, "BreakGlassExec", name),
        timeout=20,
        what="the exec recorded on the pod",
    )
    assert _events(crds, namespace, "BreakGlassSessionOpened", name)
    history = crds.kubectl(
        "get", "events", "--field-selector", "involvedObject.kind=GuardedRelease,"
        "involvedObject.name=web", "-o", "json", namespace=namespace,
    ).stdout  # fmt: skip
    reasons = {e["reason"] for e in json.loads(history)["items"]}
    assert {"BreakGlassSessionOpened", "BreakGlassExec"} <= reasons, reasons
    shown = subprocess.run(
        [sys.executable, "-m", "permafrost", "history", "web", "-n", namespace],
        env=crds.env, capture_output=True, text=True, timeout=60, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    assert "BreakGlassExec" in shown, shown
    assert "INC-42" in shown, shown

    # Once the session is over, the pod is replaced by a fresh one of the same revision.
    fresh = wait_for(
        lambda: [p for p in _pods(crds, namespace, revision) if p["metadata"]["name"] != name],
        timeout=90,
        interval=1,
        what="the marked pod replaced",
    )
    assert crds.get("pod", name, namespace=namespace) is None or crds.get(
        "pod", name, namespace=namespace
    )["metadata"].get("deletionTimestamp")
    assert TAINTED not in (fresh[0]["metadata"].get("labels") or {})
    assert fresh[0]["metadata"]["labels"]["permafrost.dev/revision"] == revision
    wait_for(
        lambda: any(
            e["reason"] == "TaintedPodReplaced"
            for e in json.loads(
                crds.kubectl(
                    "get", "events", "--field-selector", "involvedObject.name=web", "-o", "json",
                    namespace=namespace,
                ).stdout
            )["items"]
        ),
        timeout=20,
        what="the replacement recorded on the release",
    )  # fmt: skip
    # And the session is gone with the pod: alice no longer gets into the fresh one.
    fresh_name = fresh[0]["metadata"]["name"]
    proc = kubectl(alice, "exec", fresh_name, *EXEC)
    refused(proc, "is denied")
    assert wait_phase(crds, namespace, "web", "Stable", timeout=60)["stableRevision"] == revision

    # With the operator down, the fail-safe policy alone: in this enforced namespace, exec is
    # denied to everyone but the break-glass groups (it cannot read sessions; see the docs).
    guarded_operator.stop()
    proc = kubectl(None, "exec", fresh_name, *EXEC)
    assert proc.returncode != 0, proc.stdout
    assert "ValidatingAdmissionPolicy 'permafrost-frozen-exec'" in proc.stderr, proc.stderr
    proc = kubectl(None, "port-forward", fresh_name, "0:8080")
    refused(proc, "permafrost-frozen-exec")
    proc = kubectl(alice, "exec", fresh_name, *EXEC)
    assert proc.returncode == 0, proc.stderr
    proc = kubectl(
        None, "annotate", "pod", fresh_name, *(f"{k}={v}" for k, v in forged.items()),
        f"--as=system:serviceaccount:{namespace}:alice",
        f"--as-group=system:serviceaccounts:{namespace}", "--as-group=system:authenticated",
    )  # fmt: skip
    refused(proc, "permafrost-frozen-exec")


def test_a_managed_pod_outside_enforced_namespaces_is_guarded_by_the_webhook_only(
    crds: Cluster,
    namespace: str,
    guarded_operator: Operator,
    real_node: RealNode,
    demo_images: dict[str, str],
) -> None:
    """The policy cannot tell a managed pod from a CONNECT (it sees no labels): outside the
    enforced namespaces, the webhook alone denies; with the operator down, exec goes through."""
    crds.kubectl("label", "namespace", namespace, "permafrost.dev/enforce-")
    manifest = release("web", replicas=1, deadline=60, min_ready=1, scale_down_delay=1)
    manifest["spec"]["template"]["spec"] = real_node.schedule(
        {"containers": [{"name": "app", "image": demo_images["v1"], "readinessProbe": PROBE}]}
    )
    crds.apply(manifest, namespace=namespace)
    revision = wait_phase(crds, namespace, "web", "Stable", timeout=120)["stableRevision"]
    pod = wait_for(lambda: _pods(crds, namespace, revision), timeout=60, what="a running pod")[0]
    name = pod["metadata"]["name"]
    proc = crds.kubectl("exec", name, *EXEC, namespace=namespace, check=False)
    refused(proc, "connect.permafrost.dev", "is denied")
    member = ("--as=carol", f"--as-group={BREAK_GLASS_GROUP}", "--as-group=system:masters")
    proc = crds.kubectl("exec", *member, name, *EXEC, namespace=namespace, check=False)
    refused(proc, "no break-glass session")

    guarded_operator.stop()
    proc = crds.kubectl("exec", name, *EXEC, namespace=namespace, check=False)
    assert proc.returncode == 0, proc.stderr


def test_a_release_may_keep_its_marked_pods_and_port_forward_may_be_allowed(
    crds: Cluster,
    namespace: str,
    operator_namespace: str,
    real_node: RealNode,
    demo_images: dict[str, str],
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
) -> None:
    op = start_guarded(
        crds, namespace, operator_namespace, tmp_path / "operator.log", ["--allow-port-forward"]
    )
    request.node.operator_log = op.log
    try:
        manifest = release("web", replicas=1, deadline=60, min_ready=1, scale_down_delay=1)
        manifest["spec"]["rollout"]["replaceTaintedPods"] = False
        manifest["spec"]["template"]["spec"] = real_node.schedule(
            {"containers": [{"name": "app", "image": demo_images["v1"], "readinessProbe": PROBE}]}
        )
        crds.apply(manifest, namespace=namespace)
        revision = wait_phase(crds, namespace, "web", "Stable", timeout=120)["stableRevision"]
        name = wait_for(lambda: _pods(crds, namespace, revision), timeout=60, what="a pod")[0][
            "metadata"
        ]["name"]

        # Port-forward is allowed to anyone (read-only debugging); exec still is not.
        bob = ("--as=bob", "--as-group=system:masters")
        port = free_port()
        forward = subprocess.Popen(
            ["kubectl", "-n", namespace, *bob, "port-forward", name, f"{port}:8080"],
            env=crds.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            answer = wait_for(
                lambda: _get(f"http://127.0.0.1:{port}/"), timeout=20, what="the port-forward"
            )
            assert answer["version"] == "v1"
        finally:
            forward.terminate()
            forward.wait(timeout=10)
        refused(
            crds.kubectl("exec", *bob, name, *EXEC, namespace=namespace, check=False), "is denied"
        )

        # A session's exec marks the pod; the release keeps it after the session.
        carol = ("--as=carol", f"--as-group={BREAK_GLASS_GROUP}", "--as-group=system:masters")
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        until = now + datetime.timedelta(seconds=10)
        crds.kubectl(
            "annotate", "pod", name, *carol,
            "permafrost.dev/session-user=carol",
            f"permafrost.dev/session-since={now:%Y-%m-%dT%H:%M:%SZ}",
            f"permafrost.dev/session-until={until:%Y-%m-%dT%H:%M:%SZ}",
            "permafrost.dev/session-reason=opt-out check",
            namespace=namespace,
        )  # fmt: skip
        proc = crds.kubectl("exec", *carol, name, *EXEC, namespace=namespace, check=False)
        assert proc.returncode == 0, proc.stderr
        wait_for(
            lambda: (crds.get("pod", name, namespace=namespace)["metadata"]["labels"]).get(TAINTED),
            timeout=20,
            what="the pod marked",
        )
        time.sleep(max(0.0, (until - datetime.datetime.now(datetime.UTC)).total_seconds()) + 15)
        kept = crds.get("pod", name, namespace=namespace)
        assert kept is not None
        assert not kept["metadata"].get("deletionTimestamp")
        assert kept["metadata"]["labels"][TAINTED] == "exec"
        assert not _events(crds, namespace, "TaintedPodReplaced", "web")
    finally:
        stop_guarded(crds, op)


def _get(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            body: dict[str, Any] = json.loads(answer.read())
            return body
    except OSError:
        return None
