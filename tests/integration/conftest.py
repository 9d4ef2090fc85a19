"""Fixtures for tests that run the real operator against the real cluster."""

from __future__ import annotations

import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any, Self

import pytest

import oci_registry
import prometheus_harness
from argocd_harness import ArgoCD, Binaries, GitRepo
from argocd_harness import binaries as argocd_binaries
from k8s_harness import ROOT, Cluster, RealNode, real_node_reason, to_yaml, wait_for

CRDS = (
    ROOT / "crds" / "guardedrelease.yaml",
    ROOT / "crds" / "guardrailpolicy.yaml",
    ROOT / "crds" / "kopf-peering.yaml",
)
DIGEST = "@sha256:" + "1" * 64
# How the project waits for CRDs it has just applied (docs/install.md): until the apiserver has
# written their status, then until they are Established. `kubectl wait
# --for=condition=Established` alone fails at once, instead of waiting, on a CRD whose
# `.status.conditions` is still null ("accessor error: <nil> is of the type <nil>").
CRD_WAITS = ("--for=jsonpath={.status.conditions[0]}", "--for=condition=Established")


def wait_established(cluster: Cluster, *crds: str, timeout: int = 60) -> None:
    """Wait until the CRDs (``crd/<name>``) are Established, as docs/install.md does."""
    for condition in CRD_WAITS:
        cluster.kubectl("wait", condition, f"--timeout={timeout}s", *crds, timeout=timeout + 30)


@pytest.fixture(scope="session")
def real_node(cluster: Cluster) -> RealNode:
    """The real worker node, Ready; the test skips, saying why, where the cluster has none."""
    reason = real_node_reason()
    if reason is not None:
        pytest.skip(f"needs the real node, and the local cluster has none: {reason}")
    node = RealNode()
    ready = cluster.kubectl(
        "get", "node", node.name,
        "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
    ).stdout  # fmt: skip
    assert ready == "True", f"the real node {node.name} is not Ready: {ready!r}"
    return node


@pytest.fixture(scope="session")
def demo_images(real_node: RealNode) -> dict[str, str]:
    """The demo app (examples/app) built and pushed to the node's registry as v1 and v2:
    version -> pinned reference. The same source with another version baked in: two digests."""
    return {
        version: real_node.build_image(ROOT / "examples" / "app", "demo", version)
        for version in ("v1", "v2")
    }


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> Cluster:
    """The Permafrost CRDs, installed (server-side apply) and Established."""
    for crd in CRDS:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    wait_established(
        cluster,
        "crd/guardedreleases.permafrost.dev",
        "crd/guardrailpolicies.permafrost.dev",
        "crd/clusterkopfpeerings.kopf.dev",
        "crd/kopfpeerings.kopf.dev",
    )
    # NB: the local cluster is the project's own; what `make demo` left in it (its webhook
    # configuration, pointing at an operator that is gone, and the built-in policies, which
    # apply cluster-wide) would decide the tests' outcomes instead of the tests.
    cluster.kubectl(
        "delete",
        "validatingwebhookconfiguration",
        WEBHOOK_CONFIGURATION,
        "--ignore-not-found",
        check=False,
    )
    cluster.kubectl("delete", "guardrailpolicies", "--all", check=False)
    return cluster


class Operator:
    """``permafrost run`` as a real subprocess, watching one namespace (``None``: all of them).

    With ``kubeconfig``, it talks to the apiserver as whoever that kubeconfig names instead of
    the cluster's administrator.
    """

    def __init__(
        self,
        cluster: Cluster,
        namespace: str | None,
        log: pathlib.Path,
        extra: Sequence[str] = (),
        *,
        kubeconfig: pathlib.Path | None = None,
    ) -> None:
        self.cluster, self.namespace, self.log = cluster, namespace, log
        self.extra = list(extra)
        self.kubeconfig = kubeconfig
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**self.cluster.env, "PYTHONUNBUFFERED": "1"}
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        scope = ["-n", self.namespace] if self.namespace else ["--all-namespaces"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "permafrost",
                    "run",
                    *scope,
                    "--verbose",
                    *self.extra,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye — as a crashed or evicted pod."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def operator_args() -> Sequence[str]:
    """More ``permafrost run`` flags for the ``operator`` and ``guarded_operator`` fixtures (a
    test module overrides this fixture to add some)."""
    return ()


@pytest.fixture
def operator(
    crds: Cluster,
    namespace: str,
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
    operator_args: Sequence[str],
) -> Iterator[Operator]:
    op = Operator(crds, namespace, tmp_path / "operator.log", extra=operator_args)
    request.node.operator_log = op.log  # attached to the report if the test fails
    op.start()
    yield op
    op.stop()


def release(
    name: str,
    *,
    image: str = "registry.example/shop/app",
    replicas: int = 2,
    annotations: dict[str, str] | None = None,
    config: list[dict[str, str]] | None = None,
    service: str | None = None,
    deadline: int = 15,
    min_ready: int = 1,
    scale_down_delay: int = 2,
    history: int = 3,
    digest: str = DIGEST,
) -> dict[str, Any]:
    """A GuardedRelease manifest for tests."""
    spec: dict[str, Any] = {
        "replicas": replicas,
        "template": {
            "metadata": {"labels": {"app": name}, "annotations": annotations or {}},
            "spec": {"containers": [{"name": "app", "image": f"{image}{digest}"}]},
        },
        "rollout": {
            "progressDeadlineSeconds": deadline,
            "minReadySeconds": min_ready,
            "scaleDownDelaySeconds": scale_down_delay,
        },
        "revisionHistoryLimit": history,
    }
    if config:
        spec["configRefs"] = config
    if service:
        spec["service"] = {"name": service}
    return {
        "apiVersion": "permafrost.dev/v1alpha1",
        "kind": "GuardedRelease",
        "metadata": {"name": name},
        "spec": spec,
    }


def status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    obj = cluster.get("guardedrelease", name, namespace=namespace)
    return (obj or {}).get("status") or {}


def wait_phase(
    cluster: Cluster, namespace: str, name: str, phase: str, *, timeout: float = 60, **fields: str
) -> dict[str, Any]:
    """Wait until the release's status has ``phase`` (and the given status fields)."""

    def probe() -> dict[str, Any] | None:
        st = status(cluster, namespace, name)
        ok = st.get("phase") == phase and all(st.get(k) == v for k, v in fields.items())
        return st if ok else None

    return wait_for(probe, timeout=timeout, interval=0.5, what=f"{name} phase={phase} {fields}")


class Background:
    """A loop run in a daemon thread for the duration of a ``with`` block: ``_run`` loops until
    ``_stop`` is set, which leaving the block does (then waits up to ``join_timeout``)."""

    join_timeout: float = 10

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.join_timeout)

    def _run(self) -> None:
        raise NotImplementedError


class SelectorSampler(Background):
    """Samples a Service's selector in the background and checks what it points at.

    Every sample records the revision the selector names and whether, at that instant, that
    revision had every one of its pods Ready. ``violations`` lists samples where it did not.
    """

    def __init__(self, cluster: Cluster, namespace: str, service: str) -> None:
        super().__init__()
        self.cluster, self.namespace, self.service = cluster, namespace, service
        self.samples: list[tuple[float, str, bool]] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            svc = self.cluster.get("service", self.service, namespace=self.namespace)
            revision = ((svc or {}).get("spec", {}).get("selector") or {}).get(
                "permafrost.dev/revision"
            )
            # NB: "none" (no revision verified yet) selects no pod: nothing unverified served.
            if revision and revision != "none":
                pods = self.cluster.get(
                    "pods", namespace=self.namespace, selector=f"permafrost.dev/revision={revision}"
                )["items"]
                live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
                ready = bool(live) and all(
                    any(
                        c["type"] == "Ready" and c["status"] == "True"
                        for c in p.get("status", {}).get("conditions", [])
                    )
                    for p in live
                )
                self.samples.append((time.monotonic(), revision, ready))
            self._stop.wait(0.2)

    @property
    def revisions(self) -> set[str]:
        return {r for _, r, _ in self.samples}

    @property
    def violations(self) -> list[tuple[float, str, bool]]:
        return [s for s in self.samples if not s[2]]


@pytest.fixture
def sampler_factory(crds: Cluster, namespace: str) -> Any:
    return lambda service: SelectorSampler(crds, namespace, service)


OPERATOR_NAMESPACE = "permafrost-system"
BREAK_GLASS_GROUP = "permafrost:break-glass"
WEBHOOK_CONFIGURATION = "permafrost-frozen-workloads"
SERVICE_GUARD = "permafrost-service-selectors"  # permafrost.guards.admission.SERVICE_GUARD
SERVICE_ROUTES = "permafrost-service-routes"  # permafrost.guards.admission.SERVICE_ROUTES
SERVICE_TYPE = "permafrost-service-type"  # permafrost.guards.admission.SERVICE_TYPE
EXEC_POLICY = "permafrost-frozen-exec"  # permafrost.guards.admission.EXEC_POLICY


def webhook_target(cluster: Cluster) -> str | None:
    """Where the registered webhook configuration sends the apiserver (scheme://host:port)."""
    config = cluster.get("validatingwebhookconfiguration", WEBHOOK_CONFIGURATION)
    hooks = (config or {}).get("webhooks") or []
    if not hooks:
        return None
    url = urllib.parse.urlsplit(hooks[0]["clientConfig"].get("url") or "")
    return f"{url.scheme}://{url.netloc}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def operator_namespace(crds: Cluster) -> str:
    """The operator's own namespace (holds the webhook TLS Secret; never frozen)."""
    if crds.get("namespace", OPERATOR_NAMESPACE) is None:
        crds.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    return OPERATOR_NAMESPACE


@pytest.fixture
def guarded_operator(
    crds: Cluster,
    namespace: str,
    operator_namespace: str,
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
    operator_args: Sequence[str],
) -> Iterator[Operator]:
    """The operator with admission enabled: webhooks on 127.0.0.1, the fail-safe VAP applied.

    The test's namespace is labelled ``permafrost.dev/enforce=true``. Ready when the apiserver
    routes to this operator's webhook (an unpinned image is denied by the webhook itself).
    """
    op = start_guarded(
        crds, namespace, operator_namespace, tmp_path / "operator.log", operator_args
    )
    request.node.operator_log = op.log
    yield op
    stop_guarded(crds, op)


def start_guarded(
    crds: Cluster,
    namespace: str,
    operator_namespace: str,
    log: pathlib.Path,
    extra: Sequence[str] = (),
) -> Operator:
    """Start the operator as :func:`guarded_operator` does (with ``extra`` flags); return it
    once the apiserver routes to its webhook (stopped again if it never does)."""
    crds.kubectl("label", "namespace", namespace, "permafrost.dev/enforce=true", "--overwrite")
    port = free_port()
    op = Operator(
        crds,
        namespace,
        log,
        extra=[
            "--admission",
            "--webhook-listen",
            f"127.0.0.1:{port}",
            "--webhook-url",
            f"https://127.0.0.1:{port}",
            "--operator-namespace",
            operator_namespace,
            "--break-glass-group",
            BREAK_GLASS_GROUP,
            # NB: a module's own operator may still hold the webhooks (test_admission_vectors);
            # the test's operator takes them over on purpose (run refuses without this flag).
            "--webhook-takeover",
            *extra,
        ],
    )
    op.start()
    try:
        wait_for_webhook(crds, port)
    except AssertionError:
        stop_guarded(crds, op)
        raise
    return op


def wait_for_webhook(cluster: Cluster, port: int) -> None:
    """Wait until the apiserver routes admission to the operator's webhook on ``port``."""

    def webhook_answers() -> bool:
        # NB: only the operator's webhook answers this (the fail-safe policy knows no policies):
        # a GuardrailPolicy that does not compile, created in dry-run.
        probe = {
            "apiVersion": "permafrost.dev/v1alpha1",
            "kind": "GuardrailPolicy",
            "metadata": {"name": "readiness-probe"},
            "spec": {
                "stages": ["create"],
                "rules": [{"name": "probe", "expression": "(", "message": "x"}],
            },
        }
        proc = cluster.kubectl(
            "create", "--dry-run=server", "-f", "-", stdin=to_yaml(probe), check=False
        )
        return (
            proc.returncode != 0
            and f"127.0.0.1:{port}" not in proc.stderr
            and ("policies.permafrost.dev" in proc.stderr)
        )

    wait_for(webhook_answers, timeout=60, interval=0.5, what="the operator's webhook to answer")


# The cluster-wide policies an operator with --admission applies (admission.policy_manifests,
# exec_policy_manifests, service_type_manifests): (kind, name).
FAIL_SAFE_POLICIES = (
    *(
        ("validatingadmissionpolicybinding", f"{WEBHOOK_CONFIGURATION}-{scope}")
        for scope in ("managed", "enforced", "unenforced")
    ),
    ("validatingadmissionpolicy", WEBHOOK_CONFIGURATION),
    *(
        ("validatingadmissionpolicybinding", f"{EXEC_POLICY}-{scope}")
        for scope in ("managed", "enforced")
    ),
    ("validatingadmissionpolicy", EXEC_POLICY),
    ("validatingadmissionpolicybinding", SERVICE_TYPE),
    ("validatingadmissionpolicy", SERVICE_TYPE),
)


def stop_guarded(cluster: Cluster, op: Operator) -> None:
    """Stop an operator that served admission, and unregister its webhooks: they would point at
    a closed port (and the policies webhook fails closed). The policies it applied go too: they
    exempt only that operator's user; the Services' guard would put back the selector keys that
    the next test's operator switches, and the fail-safe policy, which reserves the revision
    labels to kube-controller-manager and the exempt users, would refuse the revisions of the
    next test's operator if it runs under another identity."""
    op.stop()
    cluster.kubectl(
        "delete",
        "validatingwebhookconfiguration",
        WEBHOOK_CONFIGURATION,
        "--ignore-not-found",
        check=False,
    )
    for kind in ("mutatingadmissionpolicybinding", "mutatingadmissionpolicy"):
        for name in (SERVICE_GUARD, SERVICE_ROUTES):
            cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)
    for kind, name in FAIL_SAFE_POLICIES:
        cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)


# --- Argo CD (tests/argocd_harness.py) ----------------------------------------------------------
@pytest.fixture(scope="session")
def argocd(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArgoCD]:
    """A real Argo CD (application controller, repo server, redis) against the local cluster,
    installed and started once for the session and stopped at its end; the test skips, saying
    why, where it is not built."""
    bins = argocd_binaries()
    if isinstance(bins, str):
        pytest.skip(f"needs Argo CD: {bins}")
    instance = ArgoCD(crds, bins, tmp_path_factory.mktemp("argocd"))
    try:
        instance.install()
        instance.start()
        yield instance
    finally:
        # NB: also when a component failed to start: the others must not outlive the tests
        instance.stop()


@pytest.fixture
def git_repo(tmp_path: pathlib.Path) -> GitRepo:
    """An empty Git repository (branch main) that Argo CD reads as ``file://``."""
    bins = argocd_binaries()
    return GitRepo(tmp_path / "git", bins.git if isinstance(bins, Binaries) else "git")


@pytest.fixture(scope="module")
def registry_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real OCI registry on loopback (tests/oci_registry.py): ``HOST:PORT``."""
    with oci_registry.serve(tmp_path_factory.mktemp("registry")) as host:
        yield host


# --- Prometheus (tests/prometheus_harness.py) ---------------------------------------------------
@pytest.fixture(scope="session")
def prometheus(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus for the session, scraping every 2 s the pods whose template carries
    ``prometheus_harness.SCRAPE_ANNOTATIONS`` (the demo app's ``/metrics``); yields its base URL
    (``http://127.0.0.1:PORT``, reachable from the tests and from the operator they start) and
    stops it at the end. The test skips, saying why, where Prometheus is not built; the pods it
    scrapes run on the real node (``real_node`` fixture)."""
    binary = prometheus_harness.binary()
    if isinstance(binary, str):
        pytest.skip(f"needs Prometheus: {binary}")
    instance = prometheus_harness.Prometheus(
        binary, tmp_path_factory.mktemp("prometheus"), kubeconfig=cluster.kubeconfig
    )
    try:
        instance.start()
        yield instance.url
    finally:
        instance.stop()
