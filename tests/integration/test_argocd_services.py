"""A release's Service with a real Argo CD (tests/argocd_harness.py), kept in Git and not, with
client-side and with server-side diff and apply.

The example app goes through v1, v2 and a broken v3 that Permafrost rolls back; then Argo CD is
made to apply everything again (a sync operation, as a self-heal or a manual sync does). All the
while, Argo CD must report the Application Synced (one sync per commit: no fight), and the
Service, sampled every fraction of a second with its EndpointSlices, must never select the pods
of a revision that was not verified: its selector always carries Permafrost's two keys, names a
revision whose pods are all Ready, and every endpoint is a pod of a verified revision.

The operator runs under its own identity (the ServiceAccount deploy/ gives it), and the guard
of deploy/admission-policy.yaml is installed, as ``permafrost run --admission`` installs it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from test_argocd_sync import (
    APP_DIR,
    DIFF_MODES,
    Watcher,
    checkout_edit,
    gr_health,
    in_sync_with,
    v2,
    v3_broken,
)

from argocd_harness import NAMESPACE, AppState, ArgoCD, GitRepo, manifests
from conftest import OPERATOR_NAMESPACE, Background, Operator
from k8s_harness import ROOT, Cluster, wait_for
from permafrost.guards import admission

ACCOUNT = "permafrost"
OURS = ("permafrost.dev/release", "permafrost.dev/revision")
QUIET_SECONDS = 10
GIT_SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "checkout"},
    "spec": {
        "selector": {"app": "checkout"},
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
    },
}


def _gen_deploy_settings() -> admission.Settings:
    """The admission settings deploy/ is generated with (hack/gen_deploy.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_deploy", ROOT / "hack" / "gen_deploy.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    settings: admission.Settings = module.settings()
    return settings


@pytest.fixture(scope="module")
def operator_identity(
    crds: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[pathlib.Path]:
    """A kubeconfig of the operator's ServiceAccount (allowed everything here: what is tested is
    who the guard exempts), with the Services' guard installed as deploy/ installs it."""
    if crds.get("namespace", OPERATOR_NAMESPACE) is None:
        crds.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    made_account = crds.get("serviceaccount", ACCOUNT, namespace=OPERATOR_NAMESPACE) is None
    if made_account:
        crds.kubectl("create", "serviceaccount", ACCOUNT, namespace=OPERATOR_NAMESPACE)
    binding = "permafrost-argocd-services-test"
    crds.kubectl(
        "create", "clusterrolebinding", binding, "--clusterrole=cluster-admin",
        f"--serviceaccount={OPERATOR_NAMESPACE}:{ACCOUNT}", check=False,
    )  # fmt: skip
    token = crds.kubectl(
        "create", "token", ACCOUNT, "--duration=2h", namespace=OPERATOR_NAMESPACE
    ).stdout.strip()
    admin = json.loads(
        crds.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout
    )
    server = admin["clusters"][0]["cluster"]
    path = tmp_path_factory.mktemp("identity") / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "local", "cluster": server}],
                "users": [{"name": ACCOUNT, "user": {"token": token}}],
                "contexts": [{"name": "op", "context": {"cluster": "local", "user": ACCOUNT}}],
                "current-context": "op",
            }
        )
    )
    path.chmod(0o600)
    guard = [
        *admission.service_guard_manifests(
            name=admission.SERVICE_GUARD, settings=_gen_deploy_settings()
        ),
        *admission.service_route_manifests(
            name=admission.SERVICE_ROUTES, settings=_gen_deploy_settings()
        ),
    ]
    for body in guard:
        crds.apply(body)
    time.sleep(2)  # NB: the apiserver loads admission policies asynchronously
    yield path
    for body in guard:
        crds.kubectl("delete", body["kind"], body["metadata"]["name"], check=False)
    crds.kubectl("delete", "clusterrolebinding", binding, check=False)
    if made_account:
        crds.kubectl("delete", "serviceaccount", ACCOUNT, namespace=OPERATOR_NAMESPACE, check=False)


@dataclasses.dataclass(frozen=True)
class Look:
    at: float
    selector: dict[str, str]
    resource_version: str
    ready: bool  # every pod of the revision the selector names was Ready
    matched: frozenset[str]  # the revisions of the pods the whole selector matches
    endpoint_revisions: frozenset[str]  # the revisions of the pods behind the EndpointSlices
    stable: str | None


class ServiceSampler(Background):
    """The Service's selector, the pods it names and its EndpointSlices, about 3 times a second."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        super().__init__()
        self.cluster, self.namespace = cluster, namespace
        self.looks: list[Look] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            svc = self.cluster.get("service", "checkout", namespace=self.namespace)
            if svc is not None:
                pods = self.cluster.get("pods", namespace=self.namespace)["items"]
                slices = self.cluster.get(
                    "endpointslices",
                    namespace=self.namespace,
                    selector="kubernetes.io/service-name=checkout",
                )["items"]
                grel = self.cluster.get("guardedrelease", "checkout", namespace=self.namespace)
                self.looks.append(self._look(svc, pods, slices, grel))
            self._stop.wait(0.1)

    @staticmethod
    def _look(svc: Any, pods: list[Any], slices: list[Any], grel: Any) -> Look:
        selector = svc["spec"].get("selector") or {}
        revision_of = {
            p["metadata"]["name"]: p["metadata"].get("labels", {}).get(OURS[1], "") for p in pods
        }
        named = [
            p
            for p in pods
            if p["metadata"].get("labels", {}).get(OURS[1]) == selector.get(OURS[1])
            and not p["metadata"].get("deletionTimestamp")
        ]
        # NB: a selector naming no revision is judged by what it matches (Look.matched)
        ready = selector.get(OURS[1]) in (None, "none") or (
            bool(named)
            and all(
                any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in p.get("status", {}).get("conditions", [])
                )
                for p in named
            )
        )
        matched = frozenset(
            p["metadata"].get("labels", {}).get(OURS[1], "")
            for p in pods
            if selector
            and not p["metadata"].get("deletionTimestamp")
            and all(p["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
        )
        endpoints = frozenset(
            revision_of.get((e.get("targetRef") or {}).get("name", ""), "?")
            for s in slices
            for e in s.get("endpoints") or []
        )
        return Look(
            at=time.monotonic(),
            selector=dict(selector),
            resource_version=svc["metadata"]["resourceVersion"],
            ready=ready,
            matched=matched,
            endpoint_revisions=endpoints,
            stable=((grel or {}).get("status") or {}).get("stableRevision"),
        )


class ServiceWatch:
    """Every version of the Service the apiserver stores, from a watch (none is missed, however
    briefly it lasts): (resourceVersion, selector)."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.versions: list[tuple[str, dict[str, str]]] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> ServiceWatch:
        self._proc = subprocess.Popen(
            [
                "kubectl", "get", "services", "-n", self.namespace, "--watch",
                "--field-selector", "metadata.name=checkout",
                "-o", 'jsonpath={.metadata.resourceVersion} {.spec.selector}{"\\n"}',
            ],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.cluster.env,
        )  # fmt: skip
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            version, _, selector = line.strip().partition(" ")
            self.versions.append((version, json.loads(selector) if selector else {}))

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        time.sleep(1)  # NB: the last events reach the watch
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._thread.join(timeout=10)


def force_sync(argocd: ArgoCD, app: str, sync_options: tuple[str, ...]) -> None:
    """Start a sync operation now (what self-heal or a manual sync does): Argo CD applies every
    resource of the Application again, the Service included."""
    argocd.cluster.kubectl(
        "patch", "application", app, "--type", "merge", "-p",
        json.dumps({"operation": {
            "initiatedBy": {"username": "test"},
            "sync": {"syncOptions": list(sync_options)},
        }}),
        namespace=NAMESPACE,
    )  # fmt: skip


@pytest.fixture
def services_app(argocd: ArgoCD, namespace: str, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"svc-{namespace}"[:53]
    request.node.argocd = argocd
    yield name
    argocd.delete_app(name)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("in_git", [True, False], ids=["service-in-git", "service-from-spec"])
@pytest.mark.parametrize("mode", sorted(DIFF_MODES))
def test_a_service_never_fights_argocd_and_never_selects_unverified_pods(
    argocd: ArgoCD,
    crds: Cluster,
    namespace: str,
    operator_identity: pathlib.Path,
    git_repo: GitRepo,
    services_app: str,
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
    mode: str,
    in_git: bool,
) -> None:
    options: dict[str, Any] = DIFF_MODES[mode]
    files = {f"shop/{k}": v for k, v in manifests(APP_DIR).items()}
    if in_git:
        kustomization = yaml.safe_load(files["shop/kustomization.yaml"])
        kustomization["resources"].append("service.yaml")
        files["shop/kustomization.yaml"] = yaml.safe_dump(kustomization)
        files["shop/service.yaml"] = yaml.safe_dump(GIT_SERVICE)
    v1_sha = git_repo.commit("v1", files)
    op = Operator(crds, namespace, tmp_path / "operator.log", kubeconfig=operator_identity)
    request.node.operator_log = op.log
    op.start()
    try:
        with (
            Watcher(argocd, services_app, namespace, "checkout") as watch,
            ServiceSampler(crds, namespace) as sampler,
            ServiceWatch(crds, namespace) as stored,
        ):
            argocd.create_app(
                services_app,
                repo=git_repo.url,
                path="shop",
                namespace=namespace,
                sync_options=options["sync_options"],
                annotations=options["annotations"],
            )
            verified: set[str] = set()

            def step(name: str, sha: str, health: str, syncs: int) -> None:
                # NB: the window starts once the sync is in the history too (see
                # test_argocd_sync's step).
                synced = watch.wait(
                    f"{name}: synced",
                    lambda s: in_sync_with(sha)(s) and s.app.syncs == syncs,
                    timeout=90,
                )
                watch.wait(
                    f"{name}: {health}",
                    lambda s: s.app.revision == sha and gr_health(s)[0] == health,
                    timeout=120,
                )
                time.sleep(QUIET_SECONDS)
                window = watch.since(synced.at)
                assert {s.app.sync for s in window} == {"Synced"}, [s.app.summary() for s in window]
                assert {s.app.syncs for s in window} == {syncs}, name
                verified.update(s.observed["stableRevision"] for s in window
                                if s.observed.get("stableRevision"))  # fmt: skip

            step("v1", v1_sha, "Healthy", 1)
            v2_sha = git_repo.commit("v2", {"shop/checkout.yaml": checkout_edit(v2)})
            argocd.refresh(services_app)
            step("v2", v2_sha, "Healthy", 2)
            v3_sha = git_repo.commit("v3", {"shop/checkout.yaml": checkout_edit(v3_broken)})
            argocd.refresh(services_app)
            step("v3 (broken)", v3_sha, "Degraded", 3)
            # Argo CD applies the Service again while a failed revision's pods exist.
            before = crds.get("service", "checkout", namespace=namespace)
            force_sync(argocd, services_app, options["sync_options"])
            watch.wait(
                "the forced sync", lambda s: s.app.syncs == 4 and s.app.operation == "Succeeded",
                timeout=60,
            )  # fmt: skip
            time.sleep(QUIET_SECONDS)
            after = crds.get("service", "checkout", namespace=namespace)
            assert AppState.of(argocd.app(services_app)).sync == "Synced"
            if in_git:
                # With the operator down, the Service is deleted and Argo CD creates it again
                # from Git: from its first stored version it selects the stable revision only
                # (deploy/'s route policy), with no operator to route it.
                op.stop()
                crds.kubectl("delete", "service", "checkout", namespace=namespace)
                force_sync(argocd, services_app, options["sync_options"])

                def recreated_svc() -> dict[str, Any] | None:
                    svc = crds.get("service", "checkout", namespace=namespace)
                    new = svc is not None and svc["metadata"]["uid"] != after["metadata"]["uid"]
                    return svc if new else None

                recreated = wait_for(recreated_svc, timeout=90, interval=0.5, what="re-created")
                assert "ownerReferences" not in recreated["metadata"]  # Argo CD's, not ours
                assert recreated["spec"]["selector"] == after["spec"]["selector"]
                time.sleep(QUIET_SECONDS)
                assert AppState.of(argocd.app(services_app)).sync == "Synced"
    finally:
        op.stop()

    # Every version of the Service ever stored (the one Argo CD re-created included): once
    # routed, Permafrost's keys are always there and name no revision but a verified one (or
    # none).
    assert stored.versions, "the watch saw no version of the Service"
    first = next(i for i, (_, sel) in enumerate(stored.versions) if all(k in sel for k in OURS))
    for _, sel in stored.versions[first:]:
        assert all(k in sel for k in OURS), stored.versions
        assert sel[OURS[1]] in {*verified, "none"}, (verified, stored.versions)
    if in_git:
        assert all(sel.get("app") == "checkout" for _, sel in stored.versions), stored.versions
    looks = sampler.looks
    assert len(looks) > 20, len(looks)
    # Never, at any sample, a selector that matches a pod of a revision not verified, or names
    # one whose pods are not all Ready. (A Service from Git has only its own key until the
    # operator routes it, before the first revision's pods exist.)
    widened = [lk for lk in looks if not lk.matched <= verified]
    assert not widened, (verified, widened[:3])
    routed = next(i for i, lk in enumerate(looks) if all(k in lk.selector for k in OURS))
    assert all(all(k in lk.selector for k in OURS) for lk in looks[routed:])
    assert not [lk for lk in looks if not lk.ready], [lk for lk in looks if not lk.ready][:3]
    # Every endpoint, at every sample, is a pod of a revision that was verified.
    unverified = [lk for lk in looks if not lk.endpoint_revisions <= verified]
    assert not unverified, (verified, unverified[:3])
    assert any(lk.endpoint_revisions for lk in looks), "no endpoint was ever seen"
    # The user's key stays (no fight); the forced apply changed nothing the operator routed.
    if in_git:
        assert all(lk.selector.get("app") == "checkout" for lk in looks), looks[-1]
    assert after["spec"]["selector"] == before["spec"]["selector"]
    assert after["spec"]["selector"][OURS[1]] in verified
    # The operator wrote the selector once per routing (none, v1, v2), never back and forth.
    selectors = [json.dumps(lk.selector, sort_keys=True) for lk in looks]
    changes = [b for a, b in itertools.pairwise(selectors) if a != b]
    assert len(changes) <= 3, changes
    print(
        f"{mode} in_git={in_git}: {len(looks)} samples, selectors {sorted(set(selectors))}, "
        f"{len(stored.versions)} stored Service versions {stored.versions}, verified {verified}"
    )
