"""A real Argo CD for the GitOps tests: its application controller, repo server and redis as
local processes against the local cluster, and a Git repository served from a local path.

Built by ``hack/build-binaries.sh argocd`` (``make binaries``) into the cache: Argo CD's
controller and repo server (one binary, chosen by the name it runs as), its CRDs from the same
module, and kustomize for the repo server; redis is Debian's ``redis-server``. Everything listens
on 127.0.0.1 (inside the cluster's network namespace when the cluster has the real node), and the
repository is a ``file://`` URL: no network. One exception Argo CD v3.6.1 does not let us
configure: the controller's metrics listener binds 0.0.0.0 (of the cluster's network namespace
when the tests run in it, as ``make test`` does with the real node).

Argo CD polls by default (a branch's commit is cached 3 minutes, apps are compared every 3
minutes): here apps are compared every few seconds, the branch cache is short, and
:meth:`ArgoCD.refresh` asks for a hard refresh after every commit, as a webhook from the Git
server would.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import yaml

from k8s_harness import ROOT, Cluster, _versions, cache_root, wait_for

NAMESPACE = "argocd"
HEALTH_PATCH = ROOT / "deploy" / "argocd" / "argocd-cm-health.yaml"
# NB: seconds between two comparisons of an app with Git and the cluster (3 minutes by default).
APP_RESYNC_SECONDS = 5


@dataclasses.dataclass(frozen=True)
class Binaries:
    """Where the built Argo CD, its CRDs, kustomize, redis and git are."""

    argocd: pathlib.Path
    crds: pathlib.Path
    kustomize_dir: pathlib.Path
    redis: str
    git: str


def binaries() -> Binaries | str:
    """The binaries, or a one-line reason why the Argo CD tests cannot run here."""
    v = _versions()
    home = cache_root() / f"argocd-{v['ARGOCD_VERSION']}"
    kustomize = cache_root() / f"kustomize-{v['KUSTOMIZE_VERSION']}" / "bin"
    built = (home / "bin" / "argocd", home / "bin" / "git-verify-wrapper.sh", home / "crds")
    if not all(p.exists() for p in built):
        return f"Argo CD {v['ARGOCD_VERSION']} is not built ({home}; make binaries)"
    if not (kustomize / "kustomize").exists():
        return f"kustomize {v['KUSTOMIZE_VERSION']} is not built ({kustomize}; make binaries)"
    redis, git = shutil.which("redis-server"), shutil.which("git")
    if redis is None:
        return "redis-server is not installed (Debian: apt-get install redis-server)"
    if git is None:
        return "git is not installed"
    return Binaries(home / "bin" / "argocd", home / "crds", kustomize, redis, git)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, *, what: str, proc: subprocess.Popen[bytes], log: pathlib.Path) -> None:
    def listening() -> bool:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise AssertionError(f"{what} exited {proc.returncode}:\n{tail}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, timeout=60, interval=0.2, what=f"{what} on 127.0.0.1:{port}")


class GitRepo:
    """A bare repository (served as ``file://``, branch ``main``) and a clone to commit from."""

    def __init__(self, root: pathlib.Path, git: str) -> None:
        self.git, self.bare, self.work = git, root / "repo.git", root / "work"
        self._run("init", "--quiet", "--bare", "--initial-branch=main", str(self.bare))
        self._run("init", "--quiet", "--initial-branch=main", str(self.work))
        self._run("-C", str(self.work), "remote", "add", "origin", str(self.bare))

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def _run(self, *args: str) -> str:
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "Permafrost tests",
            "GIT_AUTHOR_EMAIL": "tests@permafrost.invalid",
            "GIT_COMMITTER_NAME": "Permafrost tests",
            "GIT_COMMITTER_EMAIL": "tests@permafrost.invalid",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
        }
        proc = subprocess.run(
            [self.git, *args], capture_output=True, text=True, env=env, check=False
        )
        if proc.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def commit(self, message: str, files: Mapping[str, str | None]) -> str:
        """Write (or, for ``None``, delete) ``files`` (path -> text), commit, push; the SHA."""
        for path, text in files.items():
            target = self.work / path
            if text is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
        self._run("-C", str(self.work), "add", "-A")
        self._run("-C", str(self.work), "commit", "--quiet", "-m", message)
        self._run("-C", str(self.work), "push", "--quiet", "origin", "main")
        return self._run("-C", str(self.work), "rev-parse", "HEAD")

    def revert(self, sha: str) -> str:
        """``git revert`` a commit and push; the new SHA."""
        self._run("-C", str(self.work), "revert", "--no-edit", sha)
        self._run("-C", str(self.work), "push", "--quiet", "origin", "main")
        return self._run("-C", str(self.work), "rev-parse", "HEAD")


class ArgoCD:
    """Argo CD's application controller, repo server and redis, as local processes.

    ``server_side_diff`` starts the controller with ``--server-side-diff-enabled`` (every app is
    diffed by a server-side apply dry run, as ``ServerSideDiff=true`` does per app).
    """

    def __init__(
        self,
        cluster: Cluster,
        bins: Binaries,
        workdir: pathlib.Path,
        *,
        server_side_diff: bool = False,
    ) -> None:
        self.cluster, self.bins, self.workdir = cluster, bins, workdir
        self.server_side_diff = server_side_diff
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, pathlib.Path] = {}

    # --- installation --------------------------------------------------------------------
    def install(self) -> None:
        """Argo CD's CRDs (from its module), its namespace, argocd-cm with Permafrost's health
        check applied as users apply it, and the default AppProject."""
        self.cluster.kubectl(
            "apply", "--server-side", "--force-conflicts", "-k", str(self.bins.crds)
        )
        for crd in ("applications.argoproj.io", "appprojects.argoproj.io"):
            for condition in (
                "--for=jsonpath={.status.conditions[0]}",
                "--for=condition=Established",
            ):
                self.cluster.kubectl("wait", condition, "--timeout=60s", f"crd/{crd}", timeout=90)
        if self.cluster.get("namespace", NAMESPACE) is None:
            self.cluster.kubectl("create", "namespace", NAMESPACE)
        # NB: Applications an interrupted run left behind would be reconciled by this controller
        self.cluster.kubectl("delete", "applications", "--all", namespace=NAMESPACE, check=False)
        labels = {"app.kubernetes.io/part-of": "argocd"}
        # NB: from scratch: `apply` would keep keys an earlier run patched in
        self.cluster.kubectl(
            "delete", "configmap", "argocd-cm", "--ignore-not-found", namespace=NAMESPACE
        )
        self.cluster.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": "argocd-cm",
                        "namespace": NAMESPACE,
                        "labels": {**labels, "app.kubernetes.io/name": "argocd-cm"},
                    },
                    "data": {},
                },
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {
                        "name": "argocd-secret",
                        "namespace": NAMESPACE,
                        "labels": {**labels, "app.kubernetes.io/name": "argocd-secret"},
                    },
                    "stringData": {"server.secretkey": os.urandom(16).hex()},
                },
                {
                    "apiVersion": "argoproj.io/v1alpha1",
                    "kind": "AppProject",
                    "metadata": {"name": "default", "namespace": NAMESPACE},
                    "spec": {
                        "sourceRepos": ["*"],
                        "destinations": [{"server": "*", "namespace": "*"}],
                        "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
                    },
                },
            ]
        )
        self.cluster.kubectl(
            "patch", "configmap", "argocd-cm", "--type", "merge",
            "--patch-file", str(HEALTH_PATCH), namespace=NAMESPACE,
        )  # fmt: skip

    # --- processes -----------------------------------------------------------------------
    def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        with log.open("ab") as out:
            self.procs[name] = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.cluster.env, **env},
                cwd=self.workdir,
                start_new_session=True,
            )

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        redis, repo = free_port(), free_port()
        self._spawn(
            "redis",
            [
                self.bins.redis, "--bind", "127.0.0.1", "--port", str(redis), "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir),
            ],
            {},
        )  # fmt: skip
        wait_port(redis, what="redis", proc=self.procs["redis"], log=self.logs["redis"])
        tmp = self.workdir / "tmp"
        for sub in ("tls", "ssh", "repos"):
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        common = {
            "ARGOCD_FAKE_IN_CLUSTER": "true",  # NB: the in-cluster destination = the kubeconfig's
            "ARGOCD_TLS_DATA_PATH": str(tmp / "tls"),
            "ARGOCD_SSH_DATA_PATH": str(tmp / "ssh"),
            "ARGOCD_GPG_ENABLED": "false",
            "TMPDIR": str(tmp / "repos"),
            # NB: the repo server runs kustomize and git-verify-wrapper.sh from its PATH
            "PATH": os.pathsep.join(
                [
                    str(self.bins.argocd.parent),
                    str(self.bins.kustomize_dir),
                    self.cluster.env.get("PATH", ""),
                ]
            ),
        }
        self._spawn(
            "repo-server",
            [
                str(self.bins.argocd),
                "--address", "127.0.0.1", "--port", str(repo),
                "--metrics-address", "127.0.0.1", "--metrics-port", str(free_port()),
                "--redis", f"127.0.0.1:{redis}",
                # NB: v3.6.1 refuses --disable-tls with its own default --client-ca-path
                "--disable-tls", "--client-ca-path=",
                # NB: a branch's commit is cached 3 minutes by default
                "--revision-cache-expiration", "5s",
                "--loglevel", "info", "--logformat", "text",
            ],
            {**common, "ARGOCD_BINARY_NAME": "argocd-repo-server"},
        )  # fmt: skip
        wait_port(
            repo,
            what="the repo server",
            proc=self.procs["repo-server"],
            log=self.logs["repo-server"],
        )
        self._spawn(
            "application-controller",
            [
                str(self.bins.argocd),
                "--kubeconfig", str(self.cluster.kubeconfig), "--namespace", NAMESPACE,
                "--redis", f"127.0.0.1:{redis}",
                "--repo-server", f"127.0.0.1:{repo}", "--repo-server-plaintext",
                "--metrics-port", str(free_port()),
                "--app-resync", str(APP_RESYNC_SECONDS), "--app-resync-jitter", "0",
                "--status-processors", "2", "--operation-processors", "2",
                # NB: v3 keeps resource health out of the Application unless asked to
                "--persist-resource-health",
                f"--server-side-diff-enabled={str(self.server_side_diff).lower()}",
                "--loglevel", "info", "--logformat", "text",
            ],
            {
                **common,
                "ARGOCD_BINARY_NAME": "argocd-application-controller",
                "HOSTNAME": "argocd-application-controller-0",
            },
        )  # fmt: skip

    def stop(self) -> None:
        for name in ("application-controller", "repo-server", "redis"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def alive(self) -> None:
        """Fail, with its log, if a component exited."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = "\n".join(self.logs[name].read_text(errors="replace").splitlines()[-30:])
                raise AssertionError(f"Argo CD's {name} exited {proc.returncode}:\n{tail}")

    def log_tails(self, lines: int = 60) -> Iterator[tuple[str, str]]:
        for name, log in self.logs.items():
            if log.exists():
                yield name, "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    # --- applications --------------------------------------------------------------------
    def create_app(
        self,
        name: str,
        *,
        repo: str,
        path: str,
        namespace: str,
        sync_options: Sequence[str] = (),
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        """An Application with automated sync, prune and selfHeal, like the examples'."""
        self.cluster.apply(
            {
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "Application",
                "metadata": {
                    "name": name,
                    "namespace": NAMESPACE,
                    "annotations": dict(annotations or {}),
                },
                "spec": {
                    "project": "default",
                    "source": {"repoURL": repo, "targetRevision": "main", "path": path},
                    "destination": {
                        "server": "https://kubernetes.default.svc",
                        "namespace": namespace,
                    },
                    "syncPolicy": {
                        "automated": {"prune": True, "selfHeal": True},
                        "syncOptions": list(sync_options),
                    },
                    # NB: every sync stays in the history, so the tests can count them
                    "revisionHistoryLimit": 100,
                },
            }
        )

    def delete_app(self, name: str) -> None:
        """Delete the Application, leaving its resources (the test's namespace goes with them)."""
        self.cluster.kubectl(
            "patch", "application", name, "--type", "json",
            "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]',
            namespace=NAMESPACE, check=False,
        )  # fmt: skip
        self.cluster.kubectl(
            "delete", "application", name, "--ignore-not-found", "--wait=false", namespace=NAMESPACE
        )

    def app(self, name: str) -> dict[str, Any]:
        body: dict[str, Any] = self.cluster.get("application", name, namespace=NAMESPACE) or {}
        return body

    def refresh(self, name: str) -> None:
        """Ask for a hard refresh now (what a Git webhook does), instead of waiting to poll."""
        self.cluster.kubectl(
            "annotate", "application", name, "argocd.argoproj.io/refresh=hard", "--overwrite",
            namespace=NAMESPACE,
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class AppState:
    """What the controller says about an Application at one moment."""

    sync: str
    revision: str
    health: str
    health_message: str
    operation: str
    syncs: int
    resources: dict[tuple[str, str], dict[str, Any]]

    @classmethod
    def of(cls, app: Mapping[str, Any]) -> AppState:
        st = app.get("status") or {}
        resources = {(r.get("kind", ""), r.get("name", "")): r for r in st.get("resources") or []}
        return cls(
            sync=(st.get("sync") or {}).get("status", ""),
            revision=(st.get("sync") or {}).get("revision", ""),
            health=(st.get("health") or {}).get("status", ""),
            health_message=(st.get("health") or {}).get("message", ""),
            operation=(st.get("operationState") or {}).get("phase", ""),
            syncs=len(st.get("history") or []),
            resources=resources,
        )

    def health_of(self, kind: str, name: str) -> tuple[str, str]:
        health = self.resources.get((kind, name), {}).get("health") or {}
        return health.get("status", ""), health.get("message", "")

    def summary(self) -> str:
        return json.dumps(
            {
                "sync": self.sync,
                "revision": self.revision[:8],
                "health": self.health,
                "message": self.health_message,
                "operation": self.operation,
                "syncs": self.syncs,
                "resources": {
                    f"{k}/{n}": [r.get("status"), (r.get("health") or {}).get("status")]
                    for (k, n), r in self.resources.items()
                },
            }
        )


def manifests(path: pathlib.Path) -> dict[str, str]:
    """The files of a directory of manifests, relative path -> text (to commit them)."""
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def edit_yaml(text: str, edit: Any) -> str:
    """``text`` (one YAML document) after ``edit(doc)`` changed it in place."""
    doc = yaml.safe_load(text)
    edit(doc)
    return yaml.safe_dump(doc, sort_keys=False)
