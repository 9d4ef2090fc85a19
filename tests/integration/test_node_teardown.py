"""The real node leaves the host as it found it: a second cluster with a real node, in a network
namespace of its own, is brought up with a running pod and torn down, and what the host has
(processes, mounts, links, addresses, routes, firewall rules, sysctls, namespaces, cgroups, host
paths) is compared before, during and after. A node that fails to start says so in one line,
names its log, and stops what it had started.

The host's network state is read in the host's network namespace (PID 1's); mounts and paths in
this process's mount namespace, which is the host's (``hack/cluster.sh exec`` changes only the
network namespace).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from k8s_harness import ROOT, bin_dirs, wait_for

pytestmark = pytest.mark.real_node

HOST_NET = ["nsenter", "--net=/proc/1/ns/net", "--"]
SYSCTLS = (
    "vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables", "net/netfilter/nf_conntrack_max",
)  # fmt: skip
# Where a kubelet, containerd or CNI plugins put things by default.
HOST_PATHS = (
    "/var/lib/kubelet", "/var/lib/containerd", "/var/lib/cni", "/var/log/pods",
    "/var/log/containers", "/run/containerd", "/run/netns", "/etc/cni", "/opt/cni",
    "/etc/containerd", "/run/runc",
)  # fmt: skip
TOP_DIRS = ("/run", "/var/lib", "/var/log", "/etc", "/opt", "/tmp")


def run(args: list[str], **kwargs: Any) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs).stdout


def processes(marks: tuple[str, ...], netns: set[str]) -> list[str]:
    """Live processes (not zombies) whose command line or cgroups name one of ``marks``, or that
    run in one of the network namespaces ``netns`` (as ``net:[INODE]``)."""
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            if re.search(r"\) Z ", stat):
                continue
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cgroups = (proc / "cgroup").read_text()
            net = os.readlink(proc / "ns" / "net")
        except OSError:
            continue
        if net in netns or any(mark in cmdline or mark in cgroups for mark in marks):
            found.append(f"{proc.name} {cmdline.strip()}")
    return sorted(found)


def host_state(marks: tuple[str, ...], netns: set[str]) -> dict[str, Any]:
    """What the host has that a node could leave behind (or change)."""
    mountinfo = pathlib.Path("/proc/self/mountinfo").read_text().splitlines()
    mounts = sorted(line.split()[4] for line in mountinfo)
    sysctls = {}
    for name in SYSCTLS:
        out = run([*HOST_NET, "cat", f"/proc/sys/{name}"]).strip()
        sysctls[name] = out or None
    iptables = run([*HOST_NET, "iptables-save"]) if os.path.exists("/usr/sbin/iptables") else ""
    cgroups = sorted(
        str(d) for h in pathlib.Path("/sys/fs/cgroup").iterdir() if h.is_dir()
        for d in h.iterdir() if d.is_dir()
    )  # fmt: skip
    return {
        "processes": processes(marks, netns),
        "mounts": mounts,
        "links": sorted(run([*HOST_NET, "ip", "-o", "link", "show"]).splitlines()),
        "addresses": sorted(run([*HOST_NET, "ip", "-o", "addr", "show"]).splitlines()),
        "routes": sorted(run([*HOST_NET, "ip", "route", "show", "table", "all"]).splitlines()),
        "nft": run([*HOST_NET, "nft", "list", "ruleset"]),
        # NB: without the comments (a timestamp) and the packet counters.
        "iptables": [
            re.sub(r"\[\d+:\d+\]", "[]", line)
            for line in iptables.splitlines()
            if not line.startswith("#")
        ],
        "sysctls": sysctls,
        "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else None,
        "cgroups": cgroups,
        "host paths": [path for path in HOST_PATHS if os.path.lexists(path)],
        "top dirs": {top: sorted(os.listdir(top)) for top in TOP_DIRS if os.path.isdir(top)},
    }


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {key: (before[key], after[key]) for key in before if before[key] != after[key]}


class SecondCluster:
    """A second local cluster with a real node, in its own directory and network namespace."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.netns = f"pf-teardown-{uuid.uuid4().hex[:6]}"
        self.directory = directory
        self.env = {
            **os.environ,
            "PATH": os.pathsep.join([*map(str, bin_dirs()), os.environ["PATH"]]),
            "REAL_NODE": "1",
            "PERMAFROST_NETNS": self.netns,
            "PERMAFROST_CLUSTER_DIR": str(directory),
            "PERMAFROST_CLUSTER_NAME": "teardown",
            "PERMAFROST_NODES": "1",
            "KUBECONFIG": str(directory / "kubeconfig"),
        }
        # What identifies its processes: its directory, its namespace's name (in its cgroups),
        # and the namespace itself, once it exists (kept, to find what outlives it).
        self.marks = (str(directory), self.netns)
        self.namespaces: set[str] = set()

    def state(self) -> dict[str, Any]:
        path = pathlib.Path("/run/netns") / self.netns
        if path.exists():
            self.namespaces.add(f"net:[{path.stat().st_ino}]")
        return host_state(self.marks, self.namespaces)

    def cluster_sh(
        self, *args: str, check: bool = True, **env: str
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(ROOT / "hack" / "cluster.sh"), *args],
            capture_output=True,
            text=True,
            env={**self.env, **env},
            timeout=300,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"hack/cluster.sh {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
            )
        return proc

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """kubectl against the second cluster, inside its network namespace."""
        proc = subprocess.run(
            [str(ROOT / "hack" / "cluster.sh"), "exec", "kubectl", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=90,
            check=False,
        )
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc.stdout


@pytest.fixture
def second() -> Iterator[SecondCluster]:
    # NB: a short directory: the node's sockets live under it.
    directory = pathlib.Path(f"/tmp/pf-{uuid.uuid4().hex[:6]}")
    directory.mkdir()
    cluster = SecondCluster(directory)
    yield cluster
    cluster.cluster_sh("down", check=False)
    subprocess.run(["rm", "-rf", str(directory)], check=False)


def test_teardown_leaves_the_host_as_it_was(second: SecondCluster) -> None:
    before = second.state()
    assert before["processes"] == []

    second.cluster_sh("up")
    pause = (second.directory / "node" / "pause-image").read_text().strip()
    pod = f"""
apiVersion: v1
kind: Pod
metadata: {{name: sleeper, namespace: default}}
spec:
  nodeSelector: {{permafrost.dev/real-node: "true"}}
  tolerations: [{{key: permafrost.dev/real-node, operator: Exists}}]
  containers: [{{name: sleeper, image: "{pause}"}}]
"""
    # NB: a pod cannot be created until the ServiceAccount controller made "default" (with the
    # controllers on ServiceAccount credentials, it may come a few seconds after the node).
    second.kubectl(
        "wait", "--for=create", "serviceaccount/default", "-n", "default", "--timeout=60s"
    )
    second.kubectl("apply", "-f", "-", stdin=pod)
    second.kubectl("wait", "--for=condition=Ready", "pod/sleeper", "--timeout=60s")
    during = second.state()

    second.cluster_sh("down")
    after = wait_for(
        lambda: (state := second.state())["processes"] == [] and state,
        timeout=20,
        what="no process of the second cluster left",
    )

    # The comparison can fail: while the node ran, the host saw its processes, its namespace
    # and its cgroups.
    running = changed(before, during)
    assert {"processes", "netns", "cgroups"} <= running.keys(), running
    assert any("kubelet" in p for p in during["processes"])
    assert any("containerd-shim" in p for p in during["processes"])
    # And after teardown, nothing is different.
    assert changed(before, after) == {}


def test_a_node_that_cannot_start_says_why_and_stops_everything(second: SecondCluster) -> None:
    before = second.state()
    failed = second.cluster_sh("up", check=False, PERMAFROST_KUBELET_ARGS="--no-such-flag")
    assert failed.returncode != 0
    errors = [line for line in failed.stderr.splitlines() if "ERROR" in line]
    assert errors, failed.stderr
    log = second.directory / "logs" / "node" / "kubelet.log"
    assert f"[node] ERROR: the kubelet exited; see {log}" in errors[0]
    assert "no-such-flag" in log.read_text()
    after = wait_for(
        lambda: (state := second.state())["processes"] == [] and state,
        timeout=20,
        what="no process of the failed cluster left",
    )
    assert changed(before, after) == {}
