"""Outages: the apiserver restarting under the operator, the operator gone with its webhooks
still registered, and a webhook that answers too slowly.

The fail-safe policy with the operator gone, and the repair of what changed meanwhile, are in
``test_admission_vectors.py`` (``test_with_the_operator_gone_…``, ``test_a_revision_changed_…``).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

from conftest import (
    WEBHOOK_CONFIGURATION,
    Operator,
    release,
    start_guarded,
    status,
    stop_guarded,
    wait_phase,
)
from k8s_harness import Cluster, to_yaml, wait_for

NEW_DIGEST = "@sha256:" + "5" * 64
THIRD_DIGEST = "@sha256:" + "6" * 64
RELEASES = ("north", "south", "east")


def apiserver_ready(cluster: Cluster) -> bool:
    proc = cluster.kubectl("get", "--raw", "/readyz", check=False, timeout=10)
    return proc.returncode == 0 and proc.stdout.strip() == "ok"


def restart_apiserver(cluster: Cluster) -> float:
    """Stop the cluster's kube-apiserver (SIGTERM, SIGKILL after 15 s) and start it again with
    the same command line, environment and log file; return how long it was unreachable.

    NB: kwokctl's binary runtime runs each component as a plain process with a pid file and has
    no command to restart one; ``kwokctl start cluster`` skips a component whose exited process
    is not reaped yet. So this does what kwokctl does, for the apiserver only, and records the
    new pid where kwokctl (``hack/cluster.sh down``) finds it.
    """
    pidfile = pathlib.Path(cluster.logs_dir).parent / "pids" / "kube-apiserver.pid"
    pid = int(pidfile.read_text().strip())
    proc_dir = pathlib.Path(f"/proc/{pid}")
    argv = [a.decode() for a in (proc_dir / "cmdline").read_bytes().split(b"\0") if a]
    cwd = os.readlink(proc_dir / "cwd")
    env = dict(
        item.split("=", 1)
        for item in (proc_dir / "environ").read_bytes().decode(errors="replace").split("\0")
        if "=" in item
    )
    os.kill(pid, signal.SIGTERM)
    stopped = time.monotonic()
    try:
        # NB: a graceful stop waits for open watches (up to their timeout, minutes): after a
        # while, the stop becomes a crash.
        wait_for(lambda: not running(pid), timeout=15, what="kube-apiserver to exit")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not running(pid), timeout=30, what="kube-apiserver to be killed")
    assert not apiserver_ready(cluster)
    with (pathlib.Path(cluster.logs_dir) / "kube-apiserver.log").open("ab") as log:
        restarted = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pidfile.write_text(str(restarted.pid))
    wait_for(lambda: apiserver_ready(cluster), timeout=120, interval=0.5, what="/readyz")
    down = time.monotonic() - stopped
    start_what_exited(cluster)
    return down


def start_what_exited(cluster: Cluster, *, settle: float = 0) -> None:
    """Start the control-plane components that exited while the apiserver was away (after
    ``settle`` seconds, the time they may take to notice that they lost their leases).

    NB: the controller-manager and the scheduler exit when they cannot renew their leases;
    kwokctl starts again what is not running (the apiserver now is).
    """
    time.sleep(settle)
    pids = pathlib.Path(cluster.logs_dir).parent / "pids"
    subprocess.run(
        ["kwokctl", "start", "cluster", "--name", pids.parent.name],
        env={**cluster.env, "KWOK_WORKDIR": str(pids.parent.parent.parent)},
        check=True,
        capture_output=True,
        timeout=180,
    )
    for component in ("kube-controller-manager", "kube-scheduler"):
        pid = int((pids / f"{component}.pid").read_text().strip())
        assert running(pid), f"{component} is not running"


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (an exited one left unreaped counts as gone)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def stable_on(cluster: Cluster, namespace: str, name: str, old: str | None) -> str | None:
    st = status(cluster, namespace, name)
    ok = st.get("phase") == "Stable" and st.get("stableRevision") not in (None, old)
    return st["stableRevision"] if ok else None


def test_rollouts_finish_and_new_changes_are_seen_after_the_apiserver_restarts(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    for name in RELEASES:
        crds.apply(release(name, min_ready=5, deadline=90), namespace=namespace)
    olds = {
        n: wait_for(lambda n=n: stable_on(crds, namespace, n, None), timeout=90, what=n)
        for n in RELEASES
    }
    for name in RELEASES:
        crds.apply(release(name, min_ready=5, deadline=90, digest=NEW_DIGEST), namespace=namespace)
    wait_for(
        lambda: all(status(crds, namespace, n).get("phase") == "Progressing" for n in RELEASES),
        timeout=60,
        what="every upgrade in verification",
    )
    down = restart_apiserver(crds)
    news = {
        n: wait_for(lambda n=n: stable_on(crds, namespace, n, olds[n]), timeout=120, what=n)
        for n in RELEASES
    }
    # A change made after the restart reaches the operator only through a re-established watch
    # (nothing else would look at a Stable release again).
    crds.apply(release("north", min_ready=1, deadline=90, digest=THIRD_DIGEST), namespace=namespace)
    third = wait_for(
        lambda: stable_on(crds, namespace, "north", news["north"]), timeout=90, what="north again"
    )
    assert third not in (olds["north"], news["north"])
    assert operator.proc is not None
    assert operator.proc.poll() is None, "the operator exited instead of reconnecting"
    print(f"apiserver restart: unreachable for {down:.1f}s; every rollout finished")


def test_with_the_operator_gone_and_its_webhooks_registered_the_cluster_keeps_working(
    crds: Cluster, namespace: str, operator_namespace: str, tmp_path: pathlib.Path, request: Any
) -> None:
    op = start_guarded(crds, namespace, operator_namespace, tmp_path / "operator.log")
    request.node.operator_log = op.log
    try:
        crds.apply(release("shop", service="shop"), namespace=namespace)
        old = wait_phase(crds, namespace, "shop", "Stable", timeout=90)["stableRevision"]
        op.stop()  # NB: the webhook configuration stays, pointing at a closed port
        assert crds.get("validatingwebhookconfiguration", WEBHOOK_CONFIGURATION) is not None

        # No deadlock: kube-system and the operator's own namespace are never sent to it, and
        # the failurePolicy Ignore webhooks let everything else through (the policy still guards).
        for ns in ("kube-system", operator_namespace, namespace):
            name = f"outage-{int(time.time() * 1000) % 100000}"
            crds.kubectl("create", "configmap", name, "--from-literal=a=b", namespace=ns)
            crds.kubectl("delete", "configmap", name, namespace=ns)
        crds.kubectl("scale", f"deployment/shop-{old}", "--replicas=3", namespace=namespace)
        # The release changes while the operator is down (its webhook fails open).
        crds.apply(release("shop", service="shop", digest=NEW_DIGEST), namespace=namespace)
        # A GuardrailPolicy cannot be checked without the operator: refused (fails closed).
        policy = {
            "apiVersion": "permafrost.dev/v1alpha1",
            "kind": "GuardrailPolicy",
            "metadata": {"name": "during-outage"},
            "spec": {"stages": ["create"], "rules": [{"name": "r", "expression": "true"}]},
        }
        refused = crds.create(policy, check=False)
        assert refused.returncode != 0
        assert "policies.permafrost.dev" in refused.stderr

        # Back: it catches up with the change made while it was down.
        op.start()
        wait_for(lambda: stable_on(crds, namespace, "shop", old), timeout=120, what="catch-up")
    finally:
        stop_guarded(crds, op)
        crds.kubectl("delete", "guardrailpolicy", "during-outage", check=False)


@contextlib.contextmanager
def tarpit() -> Iterator[int]:
    """A loopback port that accepts connections and never says anything (a hung webhook)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.5)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


def test_a_webhook_that_hangs_costs_its_timeout_then_each_failure_policy_applies(
    crds: Cluster, namespace: str, operator_namespace: str, tmp_path: pathlib.Path, request: Any
) -> None:
    op = start_guarded(crds, namespace, operator_namespace, tmp_path / "operator.log")
    request.node.operator_log = op.log
    try:
        crds.apply(release("shop", service="shop"), namespace=namespace)
        old = wait_phase(crds, namespace, "shop", "Stable", timeout=90)["stableRevision"]
        op.stop()
        with tarpit() as port:
            config = crds.get("validatingwebhookconfiguration", WEBHOOK_CONFIGURATION)
            for hook in config["webhooks"]:
                hook["clientConfig"]["url"] = f"https://127.0.0.1:{port}/{hook['name']}"
            config["metadata"].pop("managedFields", None)
            crds.kubectl("replace", "-f", "-", stdin=to_yaml(config))
            timeouts = {h["name"]: h["timeoutSeconds"] for h in config["webhooks"]}

            # Ignore: allowed after the timeout (metadata of a frozen revision may change).
            started = time.monotonic()
            crds.kubectl(
                "annotate", f"deployment/shop-{old}", "example.com/note=outage", namespace=namespace
            )
            ignored = time.monotonic() - started
            # Fail: a GuardrailPolicy is refused after the timeout.
            started = time.monotonic()
            policy = {
                "apiVersion": "permafrost.dev/v1alpha1",
                "kind": "GuardrailPolicy",
                "metadata": {"name": "during-hang"},
                "spec": {"stages": ["create"], "rules": [{"name": "r", "expression": "true"}]},
            }
            refused = crds.create(policy, check=False)
            failed = time.monotonic() - started
        assert refused.returncode != 0
        assert "policies.permafrost.dev" in refused.stderr
        assert "timeout" in refused.stderr.lower() or "deadline" in refused.stderr.lower()
        meta = crds.get("deployment", f"shop-{old}", namespace=namespace)["metadata"]
        assert meta["annotations"]["example.com/note"] == "outage"
        print(
            f"hung webhook: timeouts {sorted(set(timeouts.values()))}s; an Ignore call took "
            f"{ignored:.1f}s (allowed), a Fail call {failed:.1f}s (refused)"
        )
    finally:
        stop_guarded(crds, op)
        crds.kubectl("delete", "guardrailpolicy", "during-hang", check=False)


def test_a_revision_the_apiserver_refuses_is_an_event_not_a_traceback(
    crds: Cluster, namespace: str, operator: Operator
) -> None:
    """An admission policy of someone else's refuses the revision's Deployment: the release gets
    a Warning Event ActionRefused with the policy's message, the operator one log line (no
    traceback), and the revision is created once the policy is gone."""
    name = f"deny-revisions-{namespace[-6:]}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["deployments"],
                    }
                ]
            },
            "validations": [
                {"expression": "false", "message": "no new Deployments during the freeze"}
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    crds.apply(policy)
    crds.apply(binding)
    try:
        # NB: the apiserver starts enforcing a new binding within a second or so
        def refusing() -> bool:
            probe = crds.kubectl(
                "create",
                "deployment",
                "probe",
                "--image=x@sha256:" + "7" * 64,
                "-n",
                namespace,
                "--dry-run=server",
                check=False,
            )
            return "no new Deployments" in probe.stderr

        wait_for(refusing, timeout=30, interval=0.5, what="the policy enforced")
        crds.apply(release("frozen-out"), namespace=namespace)

        def refused_event() -> dict[str, Any] | None:
            events = crds.get("events", namespace=namespace)["items"]
            return next((e for e in events if e.get("reason") == "ActionRefused"), None)

        event = wait_for(refused_event, timeout=60, interval=0.5, what="an ActionRefused Event")
        assert event["type"] == "Warning", event
        assert "refused to create revision" in event["message"], event
        assert "no new Deployments during the freeze" in event["message"], event
        assert "Traceback" not in operator.log.read_text(), "a refusal is not a traceback"
    finally:
        crds.kubectl("delete", "validatingadmissionpolicybinding", name, check=False)
        crds.kubectl("delete", "validatingadmissionpolicy", name, check=False)
    st = wait_phase(crds, namespace, "frozen-out", "Stable", timeout=90)
    assert st["stableRevision"], st
