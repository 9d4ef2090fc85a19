"""What every benchmark shares: the cluster client, the operator process, workloads, statistics.

The benchmarks drive the local control plane (kwok nodes and pods) with the official Python
client (admin credentials from ``KUBECONFIG``), start ``permafrost run`` as a subprocess under
its own ServiceAccount, and measure from the outside: wall-clock times of what the apiserver
shows, the operator's memory and CPU from ``/proc``, and the apiserver's own request counters.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import pathlib
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import kubernetes
import psutil
import yaml
from kubernetes.client.exceptions import ApiException

ROOT = pathlib.Path(__file__).resolve().parent.parent
T = TypeVar("T")

OPERATOR_NAMESPACE = "permafrost-system"
OPERATOR_ACCOUNT = "permafrost"
OPERATOR_BINDING = "permafrost-bench-operator"
WEBHOOK_CONFIGURATION = "permafrost-frozen-workloads"
# What an operator started with --admission installs besides its webhooks (guards/admission.py):
# the fail-safe policies exempt only that operator's identity, and the next operator (another
# benchmark's, a test's) would have its revisions refused by them.
FAIL_SAFE: tuple[tuple[str, str], ...] = (
    *(
        ("validatingadmissionpolicybinding", f"{WEBHOOK_CONFIGURATION}-{scope}")
        for scope in ("managed", "enforced", "unenforced")
    ),
    ("validatingadmissionpolicy", WEBHOOK_CONFIGURATION),
    *(
        ("validatingadmissionpolicybinding", f"permafrost-frozen-exec-{scope}")
        for scope in ("managed", "enforced")
    ),
    ("validatingadmissionpolicy", "permafrost-frozen-exec"),
    ("validatingadmissionpolicybinding", "permafrost-service-type"),
    ("validatingadmissionpolicy", "permafrost-service-type"),
    *(
        (kind, name)
        for kind in ("mutatingadmissionpolicybinding", "mutatingadmissionpolicy")
        for name in ("permafrost-service-selectors", "permafrost-service-routes")
    ),
)
LABEL_ENFORCE = "permafrost.dev/enforce"
LABEL_BENCH = "bench.permafrost.dev/run"
DIGEST = "@sha256:" + "1" * 64
IMAGE = "registry.example/shop/app:1.0.0" + DIGEST
FLOW_READS = "permafrost-bench-operator-reads"
FLOW_WRITES = "permafrost-bench-operator-writes"
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
READ_VERBS = ("get", "list", "watch")


# --- the cluster -------------------------------------------------------------------------------


@dataclasses.dataclass
class Api:
    """Admin clients for the benchmark driver itself (not the operator)."""

    client: Any
    core: Any
    apps: Any
    custom: Any
    admission: Any
    flow: Any
    kubeconfig: pathlib.Path

    @classmethod
    def connect(cls, *, pool: int = 32) -> Api:
        kubeconfig = pathlib.Path(os.environ["KUBECONFIG"])
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(
            config_file=str(kubeconfig), client_configuration=configuration
        )
        configuration.connection_pool_maxsize = pool
        client = kubernetes.client.ApiClient(configuration)
        return cls(
            client=client,
            core=kubernetes.client.CoreV1Api(client),
            apps=kubernetes.client.AppsV1Api(client),
            custom=kubernetes.client.CustomObjectsApi(client),
            admission=kubernetes.client.AdmissionregistrationV1Api(client),
            flow=kubernetes.client.FlowcontrolApiserverV1Api(client),
            kubeconfig=kubeconfig,
        )

    @property
    def server(self) -> str:
        return str(self.client.configuration.host)

    def raw(self, path: str) -> str:
        """GET a raw apiserver path (e.g. ``/metrics``) as text."""
        response = self.client.call_api("GET", self.server + path)
        response.read()
        return str(response.data.decode())


def wait_for(
    probe: Callable[[], T | None], *, timeout: float, interval: float = 0.1, what: str
) -> T:
    """Call ``probe`` until it returns something truthy; raise ``TimeoutError`` after
    ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def ignore_status(*statuses: int) -> contextlib.AbstractContextManager[None]:
    """A context that swallows API errors with the given HTTP statuses."""

    @contextlib.contextmanager
    def swallow() -> Iterator[None]:
        try:
            yield
        except ApiException as exc:
            if exc.status not in statuses:
                raise

    return swallow()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def create_namespace(api: Api, name: str, *, labels: Mapping[str, str] | None = None) -> str:
    """Create a namespace and wait for its default ServiceAccount (pods need it)."""
    api.core.create_namespace(
        {"metadata": {"name": name, "labels": {LABEL_BENCH: "true", **(labels or {})}}}
    )

    def account() -> bool:
        try:
            api.core.read_namespaced_service_account("default", name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    wait_for(account, timeout=60, what=f"the default ServiceAccount in {name}")
    return name


def delete_namespaces(api: Api, names: Sequence[str]) -> None:
    """Delete namespaces without waiting (their objects go with them)."""
    for name in names:
        with ignore_status(404, 409):
            api.core.delete_namespace(name)


def apply_policies(api: Api, directory: pathlib.Path) -> list[str]:
    """Create the GuardrailPolicies in ``directory`` (the built-in library); their names."""
    names = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "GuardrailPolicy":
                continue
            with ignore_status(409):
                api.custom.create_cluster_custom_object(
                    "permafrost.dev", "v1alpha1", "guardrailpolicies", doc
                )
            names.append(doc["metadata"]["name"])
    return names


def delete_policies(api: Api, names: Sequence[str]) -> None:
    for name in names:
        with ignore_status(404):
            api.custom.delete_cluster_custom_object(
                "permafrost.dev", "v1alpha1", "guardrailpolicies", name
            )


LIBRARY = ROOT / "deploy" / "policies"


# --- workloads ---------------------------------------------------------------------------------


def pod_template(
    app: str,
    *,
    ready_after: float | None = None,
    behavior: str | None = None,
    generation: str = "0",
) -> dict[str, Any]:
    """A pod template that passes the built-in policy library (pinned, limited, non-root,
    read-only root filesystem), optionally with a kwok behaviour."""
    annotations = {"bench.permafrost.dev/generation": generation}
    if behavior is not None:
        annotations["sim.permafrost.dev/behavior"] = behavior
    if ready_after is not None:
        annotations["sim.permafrost.dev/behavior"] = "slow-ready"
        annotations["sim.permafrost.dev/ready-after"] = f"{ready_after:g}s"
    return {
        "metadata": {"labels": {"app": app}, "annotations": annotations},
        "spec": {
            "securityContext": {"runAsNonRoot": True},
            "containers": [
                {
                    "name": "app",
                    "image": IMAGE,
                    "resources": {
                        "limits": {"cpu": "100m", "memory": "64Mi"},
                        "requests": {"cpu": "10m", "memory": "16Mi"},
                    },
                    "securityContext": {
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                    },
                }
            ],
        },
    }


def deployment(
    name: str, *, replicas: int, template: Mapping[str, Any], min_ready: int = 0
) -> dict[str, Any]:
    """A plain (unmanaged) Deployment of ``template``."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "minReadySeconds": min_ready,
            "selector": {"matchLabels": {"app": template["metadata"]["labels"]["app"]}},
            "template": template,
        },
    }


def release(
    name: str,
    *,
    replicas: int,
    template: Mapping[str, Any],
    service: str | None = None,
    deadline: int = 120,
    min_ready: int = 0,
    scale_down_delay: int = 0,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "replicas": replicas,
        "template": template,
        "rollout": {
            "progressDeadlineSeconds": deadline,
            "minReadySeconds": min_ready,
            "scaleDownDelaySeconds": scale_down_delay,
        },
        "revisionHistoryLimit": 2,
    }
    if service:
        spec["service"] = {"name": service}
    return {
        "apiVersion": "permafrost.dev/v1alpha1",
        "kind": "GuardedRelease",
        "metadata": {"name": name},
        "spec": spec,
    }


def release_status(api: Api, namespace: str, name: str) -> dict[str, Any]:
    try:
        body = api.custom.get_namespaced_custom_object(
            "permafrost.dev", "v1alpha1", namespace, "guardedreleases", name
        )
    except ApiException as exc:
        if exc.status == 404:
            return {}
        raise
    return dict(body.get("status") or {})


def stable(status: Mapping[str, Any]) -> bool:
    return bool(
        status.get("phase") == "Stable"
        and status.get("stableRevision")
        and status.get("stableRevision") == status.get("desiredRevision")
    )


# --- the operator ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def operator_identity(api: Api, directory: pathlib.Path) -> pathlib.Path:
    """A kubeconfig for the operator's own ServiceAccount (cluster-admin while the benchmark
    runs: :meth:`Operator.stop` removes the binding), so the apiserver can tell its requests
    from everyone else's (see :class:`RequestCounter`)."""
    with ignore_status(409):
        api.core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
    with ignore_status(409):
        api.core.create_namespaced_service_account(
            OPERATOR_NAMESPACE, {"metadata": {"name": OPERATOR_ACCOUNT}}
        )
    with ignore_status(409):
        kubernetes.client.RbacAuthorizationV1Api(api.client).create_cluster_role_binding(
            {
                "metadata": {"name": OPERATOR_BINDING},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "cluster-admin",
                },
                "subjects": [
                    {
                        "kind": "ServiceAccount",
                        "name": OPERATOR_ACCOUNT,
                        "namespace": OPERATOR_NAMESPACE,
                    }
                ],
            }
        )
    token = api.core.create_namespaced_service_account_token(
        OPERATOR_ACCOUNT,
        OPERATOR_NAMESPACE,
        {"spec": {"expirationSeconds": 7200}},
    ).status.token
    ca = api.client.configuration.ssl_ca_cert
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "local", "cluster": {"server": api.server, "certificate-authority": ca}}
        ],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": "operator"}}],
        "current-context": "operator",
    }
    path = directory / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class Operator:
    """``permafrost run`` as a subprocess under its own ServiceAccount; samples its RSS and CPU.

    ``--admission`` makes it serve the webhooks on 127.0.0.1 (a free port) and register them;
    ``env`` adds to its environment (``PYTHONPATH``: another version of the operator's code).
    """

    def __init__(
        self,
        api: Api,
        directory: pathlib.Path,
        *,
        namespaces: Sequence[str] = (),
        admission: bool = False,
        profile: pathlib.Path | None = None,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 90,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.api, self.directory = api, directory
        self.extra_args = list(extra_args)
        self.env, self.start_timeout = dict(env or {}), start_timeout
        self.namespaces, self.admission, self.profile = list(namespaces), admission, profile
        self.port = free_port() if admission else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.peak_rss = 0
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self.log = directory / f"operator-{uuid.uuid4().hex[:6]}.log"

    def start(self) -> Operator:
        kubeconfig = operator_identity(self.api, self.directory)
        args = [*(f"--namespace={n}" for n in self.namespaces)]
        if self.admission:
            args += [
                "--admission",
                f"--webhook-listen=127.0.0.1:{self.port}",
                f"--webhook-url=https://127.0.0.1:{self.port}",
                f"--operator-namespace={OPERATOR_NAMESPACE}",
            ]
        args += self.extra_args
        command = [sys.executable, "-m", "permafrost", "run", *args]
        if self.profile is not None:
            command = [
                sys.executable,
                "-m",
                "pyinstrument",
                "-r",
                "html" if self.profile.suffix == ".html" else "text",
                "--show=*/kopf/*",
                "-o",
                str(self.profile),
                "-m",
                "permafrost",
                "run",
                *args,
            ]
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        if self.admission:
            wait_for(
                self._webhook_answers,
                timeout=self.start_timeout,
                interval=0.3,
                what="the webhook",
            )
        return self

    def _sample(self) -> None:
        assert self.proc is not None
        process = psutil.Process(self.proc.pid)
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                rss = sum(p.memory_info().rss for p in self._tree(process))
                self.peak_rss = max(self.peak_rss, rss)
            self._stop.wait(0.1)

    @staticmethod
    def _tree(process: psutil.Process) -> list[psutil.Process]:
        return [process, *process.children(recursive=True)]

    def cpu_seconds(self) -> float:
        """User plus system CPU time the operator has used so far."""
        assert self.proc is not None
        total = 0.0
        with contextlib.suppress(psutil.Error):
            for p in self._tree(psutil.Process(self.proc.pid)):
                times = p.cpu_times()
                total += times.user + times.system
        return total

    def rss(self) -> int:
        assert self.proc is not None
        with contextlib.suppress(psutil.Error):
            return sum(p.memory_info().rss for p in self._tree(psutil.Process(self.proc.pid)))
        return 0

    def _webhook_answers(self) -> bool:
        # NB: only the operator's webhook answers this (the fail-safe policy knows no policies):
        # a GuardrailPolicy that does not compile, created in dry-run.
        self.alive()
        probe = {
            "apiVersion": "permafrost.dev/v1alpha1",
            "kind": "GuardrailPolicy",
            "metadata": {"name": "bench-readiness-probe"},
            "spec": {"stages": ["create"], "rules": [{"name": "p", "expression": "("}]},
        }
        try:
            self.api.custom.create_cluster_custom_object(
                "permafrost.dev", "v1alpha1", "guardrailpolicies", probe, dry_run="All"
            )
        except ApiException as exc:
            return "GuardrailPolicy bench-readiness-probe is refused" in str(exc.body)
        return False

    def alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace").splitlines()[-30:]
            raise RuntimeError("the operator exited:\n" + "\n".join(tail))

    def webhook_ca(self) -> bytes:
        secret = self.api.core.read_namespaced_secret("permafrost-webhook-tls", OPERATOR_NAMESPACE)
        return base64.b64decode(secret.data["ca.crt"])

    def stop(self) -> None:
        """SIGTERM (then SIGKILL); unregister the webhooks, which would point at a closed port."""
        self._stop.set()
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT if self.profile else signal.SIGTERM)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
            if self._sampler is not None:
                self._sampler.join(timeout=5)
            if self.admission:
                with ignore_status(404):
                    self.api.admission.delete_validating_webhook_configuration(
                        WEBHOOK_CONFIGURATION
                    )
                for kind, name in FAIL_SAFE:
                    subprocess.run(
                        ["kubectl", "delete", kind, name, "--ignore-not-found"],
                        check=False,
                        capture_output=True,
                        timeout=60,
                    )
            # NB: the binding makes the operator's ServiceAccount cluster-admin; it must not
            # outlive the benchmark (a deployed operator has the same account, least-privileged).
            with ignore_status(404):
                kubernetes.client.RbacAuthorizationV1Api(
                    self.api.client
                ).delete_cluster_role_binding(OPERATOR_BINDING)

    def __enter__(self) -> Operator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- counting the operator's requests at the apiserver ----------------------------------------


class RequestCounter:
    """The apiserver's own count of the operator's requests, reads and writes apart.

    Two FlowSchemas (API Priority and Fairness) match the operator's ServiceAccount, one for
    the read verbs and one for the write verbs, in the exempt priority level (no queueing);
    ``apiserver_flowcontrol_dispatched_requests_total`` counts each. A watch counts once, when
    it is opened.
    """

    def __init__(self, api: Api) -> None:
        self.api = api

    def install(self) -> None:
        for name, verbs in ((FLOW_READS, READ_VERBS), (FLOW_WRITES, WRITE_VERBS)):
            body = {
                "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
                "kind": "FlowSchema",
                "metadata": {"name": name},
                "spec": {
                    "matchingPrecedence": 50,
                    "priorityLevelConfiguration": {"name": "exempt"},
                    "rules": [
                        {
                            "subjects": [
                                {
                                    "kind": "ServiceAccount",
                                    "serviceAccount": {
                                        "name": OPERATOR_ACCOUNT,
                                        "namespace": OPERATOR_NAMESPACE,
                                    },
                                }
                            ],
                            "resourceRules": [
                                {
                                    "verbs": list(verbs),
                                    "apiGroups": ["*"],
                                    "resources": ["*"],
                                    "clusterScope": True,
                                    "namespaces": ["*"],
                                }
                            ],
                        }
                    ],
                },
            }
            with ignore_status(409):
                self.api.flow.create_flow_schema(body)

    def uninstall(self) -> None:
        for name in (FLOW_READS, FLOW_WRITES):
            with ignore_status(404):
                self.api.flow.delete_flow_schema(name)

    def read(self) -> dict[str, int]:
        counts = {"reads": 0, "writes": 0}
        for line in self.api.raw("/metrics").splitlines():
            if not line.startswith("apiserver_flowcontrol_dispatched_requests_total{"):
                continue
            for key, schema in (("reads", FLOW_READS), ("writes", FLOW_WRITES)):
                if f'flow_schema="{schema}"' in line:
                    counts[key] += int(float(line.rsplit(" ", 1)[1]))
        return counts


# --- statistics and facts ----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """Median and spread (min, max, p25, p75) of repetitions."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "p25": percentile(values, 25),
        "p75": percentile(values, 75),
    }


def machine() -> dict[str, Any]:
    """The machine's cores, memory and software versions, for the report."""
    versions = {}
    env = ROOT / "hack" / "versions.env"
    for line in env.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip()
    import kopf

    import permafrost

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_bytes": psutil.virtual_memory().total,
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "permafrost": permafrost.__version__,
        "kopf": getattr(kopf, "__version__", "unknown"),
        "kubernetes": versions.get("K8S_VERSION"),
        "etcd": versions.get("ETCD_VERSION"),
        "kwok": versions.get("KWOK_VERSION"),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def dump(path: pathlib.Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


class FirstSeen:
    """Watches a list call in a thread; remembers when (wall clock) an object first matched.

    Watch events arrive as the apiserver commits changes, so the time is as precise as the
    operator's own view (which watches the same way), not limited by a poll interval.
    """

    def __init__(
        self,
        api: Api,
        list_fn: Callable[..., Any],
        *args: Any,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float,
        **kwargs: Any,
    ) -> None:
        self.api, self.predicate = api, predicate
        self.at: float | None = None
        self.obj: dict[str, Any] | None = None
        self.error: Exception | None = None
        self._watch = kubernetes.watch.Watch()
        self._args, self._kwargs = (list_fn, *args), {**kwargs, "timeout_seconds": int(timeout)}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        try:
            self._follow()
        except Exception as exc:  # NB: reported by the waiting thread
            self.error = exc
            self._ready.set()

    def _follow(self) -> None:
        fn, *args = self._args
        listing = fn(*args, **{k: v for k, v in self._kwargs.items() if k != "timeout_seconds"})
        version = (
            listing["metadata"]["resourceVersion"]
            if isinstance(listing, dict)
            else listing.metadata.resource_version
        )
        for item in listing["items"] if isinstance(listing, dict) else listing.items:
            if self._check(item):
                return
        self._ready.set()
        for event in self._watch.stream(fn, *args, resource_version=version, **self._kwargs):
            if event["type"] in ("ADDED", "MODIFIED") and self._check(event["object"]):
                self._watch.stop()
                return

    def _check(self, item: Any) -> bool:
        body = item if isinstance(item, dict) else self.api.client.sanitize_for_serialization(item)
        if self.predicate(body):
            self.at, self.obj = time.time(), body
            self._ready.set()
            return True
        return False

    def start(self) -> FirstSeen:
        self._thread.start()
        self._ready.wait(timeout=30)
        return self

    def stop(self) -> None:
        self._watch.stop()
