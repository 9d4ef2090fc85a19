"""The test harness for the real local control plane: start/reuse it, run kubectl, wait.

Integration tests drive the cluster with the real ``kubectl`` (the built v1.36 one, first on the
PATH) and read state back through it, so what they check is what a user would see.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import yaml
from bench import builds

ROOT = pathlib.Path(__file__).resolve().parent.parent
T = TypeVar("T")


_versions = builds.versions
cache_root = builds.cache_root


def bin_dirs() -> list[pathlib.Path]:
    """The directories of the built binaries, in PATH order (kubectl v1.36 first)."""
    v = _versions()
    return [
        cache_root() / f"kubernetes-{v['K8S_VERSION']}" / "bin",
        cache_root() / f"kwok-{v['KWOK_VERSION']}" / "bin",
        cache_root() / f"etcd-{v['ETCD_VERSION']}" / "bin",
    ]


class KubectlError(Exception):
    """kubectl exited non-zero; ``stderr`` holds what it (or the apiserver) said."""

    def __init__(self, args: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A running local control plane."""

    kubeconfig: pathlib.Path
    logs_dir: pathlib.Path

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = os.pathsep.join([*map(str, bin_dirs()), env.get("PATH", "")])
        return env

    def kubectl(
        self,
        *args: str,
        namespace: str | None = None,
        stdin: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl; raise :class:`KubectlError` on a non-zero exit if ``check``."""
        full = [*args] if namespace is None else ["-n", namespace, *args]
        proc = subprocess.run(
            ["kubectl", *full],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise KubectlError(full, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def apply(
        self,
        manifest: Mapping[str, Any] | Sequence[Mapping[str, Any]] | str,
        *,
        namespace: str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl apply -f -`` of a dict, a list of dicts, or YAML text."""
        return self.kubectl(
            "apply", "-f", "-", namespace=namespace, stdin=to_yaml(manifest), check=check
        )

    def create(
        self, manifest: Mapping[str, Any] | str, *, namespace: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.kubectl(
            "create", "-f", "-", namespace=namespace, stdin=to_yaml(manifest), check=check
        )

    def get(
        self,
        kind: str,
        name: str | None = None,
        *,
        namespace: str | None = None,
        selector: str | None = None,
    ) -> Any:
        """The object (or list) as JSON; ``None`` if the named object does not exist."""
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if selector:
            args += ["-l", selector]
        proc = self.kubectl(*args, namespace=namespace, check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            raise KubectlError(args, proc.returncode, proc.stdout, proc.stderr)
        return json.loads(proc.stdout)


def to_yaml(manifest: Mapping[str, Any] | Sequence[Mapping[str, Any]] | str) -> str:
    if isinstance(manifest, str):
        return manifest
    if isinstance(manifest, Mapping):
        return yaml.safe_dump(dict(manifest), sort_keys=False)
    return yaml.safe_dump_all([dict(m) for m in manifest], sort_keys=False)


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.25,
    what: str = "condition",
) -> T:
    """Call ``probe`` until it returns something truthy; return it, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def condition(obj: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    """The condition of ``type_`` in ``obj.status.conditions``, or ``None``."""
    if not obj:
        return None
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


NETNS = os.environ.get("PERMAFROST_NETNS", "permafrost")


@functools.cache
def real_node_reason() -> str | None:
    """``None`` if the local cluster has (or will have) the real node, else why not, in a line.

    ``hack/cluster.sh real-node`` decides, by REAL_NODE (auto, 1, 0) and what the machine allows.
    """
    proc = subprocess.run(
        [str(ROOT / "hack" / "cluster.sh"), "real-node"],
        capture_output=True,
        text=True,
        check=False,
    )
    answer = (
        proc.stdout.strip() or proc.stderr.strip() or f"hack/cluster.sh exited {proc.returncode}"
    )
    return None if answer == "1" else answer


def in_netns() -> bool:
    """Whether this process runs in the real node's network namespace, where the cluster is."""
    proc = subprocess.run(
        ["ip", "netns", "identify", str(os.getpid())], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() == NETNS


@dataclasses.dataclass(frozen=True)
class RealNode:
    """The real worker node (hack/node.sh): kubelet, containerd and runc, kube-proxy, and a
    registry, all in the cluster's network namespace. Pods go there only if they ask to:
    :meth:`schedule` adds the node selector and the toleration of its taint."""

    name: str = "permafrost-node"
    registry: str = "127.0.0.1:5000"
    label: str = "permafrost.dev/real-node"

    def schedule(self, pod_spec: Mapping[str, Any]) -> dict[str, Any]:
        """``pod_spec`` with what puts its pod on the real node (and on no fake one)."""
        toleration = {"key": self.label, "operator": "Exists", "effect": "NoSchedule"}
        return {
            **pod_spec,
            "nodeSelector": {**pod_spec.get("nodeSelector", {}), self.label: "true"},
            "tolerations": [*pod_spec.get("tolerations", []), toleration],
        }

    def build_image(self, source: pathlib.Path, name: str, version: str) -> str:
        """Build the Go module ``source`` into an image (hack/image.sh), push it to the node's
        registry as ``name:version``; return its pinned reference, ``REGISTRY/NAME@sha256:...``."""
        proc = subprocess.run(
            [
                str(ROOT / "hack" / "image.sh"),
                "build",
                str(source),
                f"{self.registry}/{name}:{version}",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if proc.returncode != 0:
            raise AssertionError(f"hack/image.sh build {source} failed: {proc.stderr.strip()}")
        return proc.stdout.strip()


def start_cluster() -> tuple[Cluster, bool]:
    """Start the local cluster, or reuse a healthy one. Returns (cluster, started_here)."""
    if real_node_reason() is None and not in_netns():
        raise RuntimeError(
            f"the local cluster has the real node, so it lives in the network namespace {NETNS}: "
            "run the tests there (make test, or hack/cluster.sh exec .venv/bin/pytest ...), "
            "or without the real node (REAL_NODE=0)"
        )
    script = ROOT / "hack" / "cluster.sh"
    was_healthy = subprocess.run([str(script), "status"], check=False).returncode == 0
    subprocess.run([str(script), "up"], check=True)
    logs = subprocess.run([str(script), "logs-dir"], check=True, capture_output=True, text=True)
    kubeconfig = pathlib.Path(os.environ.get("PERMAFROST_CLUSTER_DIR", ROOT / ".cluster"))
    return Cluster(
        kubeconfig=kubeconfig / "kubeconfig", logs_dir=pathlib.Path(logs.stdout.strip())
    ), not was_healthy


def stop_cluster() -> None:
    subprocess.run([str(ROOT / "hack" / "cluster.sh"), "down"], check=False)
