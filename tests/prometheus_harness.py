"""A real Prometheus for the tests of metric gates, as a local process beside the cluster.

Built by ``hack/build-binaries.sh prometheus`` (``make binaries``) into the cache: the server
only, with Kubernetes service discovery and without the web UI. It listens on 127.0.0.1 (of
the cluster's network namespace when the tests run in it, as ``make test`` does with the real
node: the tests and the operator they start reach it there) and scrapes, every
:data:`SCRAPE_INTERVAL`, the pods that ask for it with :data:`SCRAPE_ANNOTATIONS`, found
through the apiserver with the cluster's kubeconfig (``kubernetes_sd_configs``, role pod).
Their pod IPs are on the real node's pod bridge, in the same namespace: no traffic leaves it.

Every series scraped from a pod carries ``namespace`` and ``pod``, and ``release`` and
``revision`` from the Permafrost labels of a revision's pods, so a query can select one
revision: ``demo_http_requests_total{namespace="shop", revision="4d5e6f"}``.
"""

from __future__ import annotations

import json
import pathlib
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from typing import Any

import yaml

from k8s_harness import _versions, cache_root, wait_for

VERSION = _versions()["PROMETHEUS_VERSION"]
BINARY = cache_root() / f"prometheus-{VERSION}" / "bin" / "prometheus"
# NB: short, so a test sees a change within seconds; the scrape must end before the next one.
SCRAPE_INTERVAL = "2s"
SCRAPE_TIMEOUT = "1500ms"
# What a pod's template carries to be scraped (the usual convention): its /metrics on that port.
SCRAPE_ANNOTATIONS = {"prometheus.io/scrape": "true", "prometheus.io/port": "8080"}
JOB = "pods"


def binary() -> pathlib.Path | str:
    """The built Prometheus, or a one-line reason why the tests that need it cannot run here."""
    if not BINARY.exists():
        return f"Prometheus {VERSION} is not built ({BINARY}; make binaries)"
    return BINARY


def config(*, kubeconfig: pathlib.Path | None) -> dict[str, Any]:
    """Prometheus's configuration: with ``kubeconfig``, the pods that carry
    :data:`SCRAPE_ANNOTATIONS`, in every namespace; without, nothing scraped."""
    settings: dict[str, Any] = {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_TIMEOUT,
            "evaluation_interval": SCRAPE_INTERVAL,
        }
    }
    if kubeconfig is None:
        return settings
    meta = "__meta_kubernetes_pod_"
    settings["scrape_configs"] = [
        {
            "job_name": JOB,
            "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig)}],
            "relabel_configs": [
                # Only the pods that ask, and only while they run.
                {
                    "source_labels": [f"{meta}annotation_prometheus_io_scrape"],
                    "regex": "true",
                    "action": "keep",
                },
                {"source_labels": [f"{meta}phase"], "regex": "Running", "action": "keep"},
                # NB: one target per declared container port, or per pod if none is declared;
                # the annotation's port replaces it, so a pod is scraped once, on that port.
                {
                    "source_labels": ["__address__", f"{meta}annotation_prometheus_io_port"],
                    "regex": r"([^:]+)(?::\d+)?;(\d+)",
                    "replacement": "$1:$2",
                    "target_label": "__address__",
                },
                {"source_labels": [f"{meta}container_init"], "regex": "true", "action": "drop"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": [f"{meta}name"], "target_label": "pod"},
                # NB: the revision labels only, not all of a pod's labels: a pod label named as
                # one of the app's own (code, version) would rename the app's to exported_*.
                {
                    "action": "labelmap",
                    "regex": f"{meta}label_permafrost_dev_(release|revision)",
                    "replacement": "$1",
                },
            ],
        }
    ]
    return settings


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """One Prometheus process: :meth:`start`, :meth:`stop`; :attr:`url` is its base URL.

    Its data (a TSDB that lives as long as the process needs it) and log are under ``home``.
    """

    def __init__(
        self, binary: pathlib.Path, home: pathlib.Path, *, kubeconfig: pathlib.Path | None
    ) -> None:
        self.binary, self.home, self.kubeconfig = binary, home, kubeconfig
        self.log = home / "prometheus.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it and wait until it is ready (its TSDB open, its configuration loaded)."""
        self.home.mkdir(parents=True, exist_ok=True)
        conf = self.home / "prometheus.yml"
        conf.write_text(yaml.safe_dump(config(kubeconfig=self.kubeconfig), sort_keys=False))
        self.port = free_port()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(self.binary),
                    f"--config.file={conf}",
                    f"--storage.tsdb.path={self.home / 'data'}",
                    "--storage.tsdb.retention.time=2h",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                # NB: no proxy variables: scrapes and the apiserver are in this namespace.
                env={"PATH": "/usr/bin:/bin", "HOME": str(self.home)},
                cwd=self.home,
                start_new_session=True,
            )

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"Prometheus exited {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        try:
            wait_for(ready, timeout=60, interval=0.2, what=f"Prometheus ready at {self.url}")
        except AssertionError:
            self.stop()
            raise

    def pause(self) -> None:
        """SIGSTOP: its port still accepts connections (the kernel's backlog), nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # NB: a paused process does not act on SIGTERM
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def api(url: str, path: str, **params: str) -> Any:
    """``GET url+path?params`` of Prometheus's HTTP API: its ``data``."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}{path}{query}", timeout=5) as answer:
        document = json.loads(answer.read())
    assert document["status"] == "success", document
    return document["data"]


def targets(url: str, *, namespace: str) -> list[dict[str, Any]]:
    """The active scrape targets of pods in ``namespace``."""
    active = api(url, "/api/v1/targets", state="active")["activeTargets"]
    return [t for t in active if t["labels"].get("namespace") == namespace]
