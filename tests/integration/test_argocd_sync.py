"""GitOps with a real Argo CD (tests/argocd_harness.py): automated sync with prune and selfHeal
drives examples/argocd/shop through v1, v2, a broken v3 that Permafrost rolls back, and the
revert — with client-side diff and apply, and with server-side diff and apply. At every step the
Application must stay Synced while the operator rolls out (no OutOfSync from its selector
switch, snapshots or status; no ``ignoreDifferences``), the release's health must be what the
shipped health check says, and neither side may undo the other: Argo CD syncs once per commit
and the operator never writes what Git holds.

Also the health the real controller reports for a release in each state: held by a policy,
waiting for an approval, rolled back, verifying.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from argocd_harness import NAMESPACE, AppState, ArgoCD, GitRepo, edit_yaml, manifests
from argocd_health import OPEN_LIBS_KEY
from conftest import Background, Operator, release, wait_phase
from k8s_harness import ROOT, Cluster, wait_for

APP_DIR = ROOT / "examples" / "argocd" / "shop"
APPROVAL_POLICY = ROOT / "deploy" / "policies" / "permafrost-production-approval.yaml"
HOLD_POLICY = "argocd-e2e-hold"
GR = "GuardedRelease"
# NB: long enough for the controller to have compared the app again several times
# (tests/argocd_harness.py: APP_RESYNC_SECONDS) and for the operator to have finished.
QUIET_SECONDS = 20

DIFF_MODES = {
    "client-side": {"annotations": {}, "sync_options": ()},
    "server-side": {
        "annotations": {"argocd.argoproj.io/compare-options": "ServerSideDiff=true"},
        "sync_options": ("ServerSideApply=true",),
    },
}


@dataclasses.dataclass(frozen=True)
class Sample:
    at: float
    app: AppState
    generation: int
    observed: dict[str, Any]


class Watcher(Background):
    """Samples the Application (what Argo CD reports) and the release (what the operator did)
    twice a second, in the background."""

    def __init__(self, argocd: ArgoCD, app: str, namespace: str, release: str) -> None:
        super().__init__()
        self.argocd, self.app, self.namespace, self.release = argocd, app, namespace, release
        self.samples: list[Sample] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            # NB: the Application first, then the release: a sync Argo CD reports as done was
            # applied before the release is read, so a sample never pairs "synced" with the
            # generation before the sync (read the other way round, it once did: {2, 3}).
            state = AppState.of(self.argocd.app(self.app))
            grel = self.argocd.cluster.get("guardedrelease", self.release, namespace=self.namespace)
            if grel is not None:
                self.samples.append(
                    Sample(
                        time.monotonic(),
                        state,
                        int(grel["metadata"].get("generation", 0)),
                        grel.get("status") or {},
                    )
                )
            self._stop.wait(0.5)

    def since(self, start: float) -> list[Sample]:
        return [s for s in self.samples if s.at >= start]

    def wait(self, what: str, probe: Callable[[Sample], bool], *, timeout: float) -> Sample:
        """The first sample from now on that satisfies ``probe``."""
        start = time.monotonic()

        def found() -> Sample | None:
            self.argocd.alive()
            return next((s for s in self.since(start) if probe(s)), None)

        last = lambda: self.samples[-1].app.summary() if self.samples else "no sample"  # noqa: E731
        try:
            return wait_for(found, timeout=timeout, interval=0.5, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last: {last()}") from None


@pytest.fixture
def repo_with_v1(git_repo: GitRepo) -> tuple[GitRepo, str]:
    return git_repo, git_repo.commit("v1", {f"shop/{k}": v for k, v in manifests(APP_DIR).items()})


def checkout_edit(edit: Callable[[dict[str, Any]], None]) -> str:
    return edit_yaml((APP_DIR / "checkout.yaml").read_text(), edit)


def v2(doc: dict[str, Any]) -> None:
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["image"] = "registry.example/shop/checkout:1.5.0@sha256:" + "5" * 64


def v3_broken(doc: dict[str, Any]) -> None:
    v2(doc)
    doc["spec"]["template"]["metadata"]["annotations"] = {
        "sim.permafrost.dev/behavior": "crash-loop"
    }


def in_sync_with(revision: str) -> Callable[[Sample], bool]:
    return lambda s: (
        s.app.revision == revision and s.app.sync == "Synced" and s.app.operation == "Succeeded"
    )


def gr_health(sample: Sample) -> tuple[str, str]:
    return sample.app.health_of(GR, "checkout")


@pytest.fixture
def shop_app(argocd: ArgoCD, namespace: str, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"shop-{namespace}"[:53]
    request.node.argocd = argocd  # the logs go into the report if the test fails
    yield name
    argocd.delete_app(name)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", sorted(DIFF_MODES))
def test_the_example_app_through_a_rollout_a_rollback_and_the_revert(
    argocd: ArgoCD,
    crds: Cluster,
    namespace: str,
    operator: Operator,
    repo_with_v1: tuple[GitRepo, str],
    shop_app: str,
    mode: str,
) -> None:
    repo, v1_sha = repo_with_v1
    options: dict[str, Any] = DIFF_MODES[mode]
    steps: list[tuple[str, str]] = []  # what the real controller showed, for the report

    with Watcher(argocd, shop_app, namespace, "checkout") as watch:
        argocd.create_app(
            shop_app,
            repo=repo.url,
            path="shop",
            namespace=namespace,
            sync_options=options["sync_options"],
            annotations=options["annotations"],
        )

        def step(name: str, sha: str, health: str, fragment: str, syncs: int) -> Sample:
            """Wait until Argo CD synced ``sha`` (its ``syncs``-th sync) and the release settled
            at ``health``; then check the whole time since the sync, and a quiet window after
            it."""
            # NB: Argo CD may report the new revision Synced a moment before it appends the sync
            # to the history: the window starts once both are written.
            synced = watch.wait(
                f"{name}: synced to {sha[:8]}",
                lambda s: in_sync_with(sha)(s) and s.app.syncs == syncs,
                timeout=90,
            )
            settled = watch.wait(
                f"{name}: the release {health}",
                lambda s: s.app.revision == sha and gr_health(s)[0] == health,
                timeout=120,
            )
            assert fragment in gr_health(settled)[1], gr_health(settled)
            time.sleep(QUIET_SECONDS)
            window = watch.since(synced.at)
            # Synced all along: the operator's rollout changed nothing Argo CD compares.
            assert {s.app.sync for s in window} == {"Synced"}, [s.app.summary() for s in window]
            # No sync fight: no sync operation after the one for this commit, and the operator
            # never wrote the spec (the generation Argo CD applied is the one that stays).
            assert {s.app.syncs for s in window} == {synced.app.syncs}, name
            assert {s.generation for s in window} == {synced.generation}, name
            last = window[-1]
            assert gr_health(last)[0] == health, gr_health(last)
            steps.append((name, f"{last.app.summary()} release: {gr_health(last)}"))
            return last

        # v1: first sync; the release is Progressing until its first revision is verified.
        first = step("v1", v1_sha, "Healthy", "replicas Ready", 1)
        assert any(gr_health(s)[0] == "Progressing" for s in watch.samples), steps
        assert first.app.syncs == 1
        stable_v1 = first.observed["stableRevision"]

        # v2: a new image; a new revision, verified, promoted.
        v2_sha = repo.commit("v2", {"shop/checkout.yaml": checkout_edit(v2)})
        argocd.refresh(shop_app)
        start = time.monotonic()
        second = step("v2", v2_sha, "Healthy", "replicas Ready", 2)
        assert any(gr_health(s)[0] == "Progressing" for s in watch.since(start)), steps
        assert second.app.syncs == 2
        stable_v2 = second.observed["stableRevision"]
        assert stable_v2 != stable_v1

        # v3 crash-loops: rolled back; Degraded with the reason; traffic stays on v2.
        v3_sha = repo.commit("v3: broken", {"shop/checkout.yaml": checkout_edit(v3_broken)})
        argocd.refresh(shop_app)
        third = step("v3 (broken)", v3_sha, "Degraded", "Rolled back (CrashLoop)", 3)
        assert third.app.health == "Degraded", third.app.summary()
        assert third.app.syncs == 3
        assert third.observed["stableRevision"] == stable_v2
        service = crds.get("service", "checkout", namespace=namespace)
        assert service["spec"]["selector"]["permafrost.dev/revision"] == stable_v2

        # The revert: the same content as v2, the same hash; Healthy without a new rollout.
        revert_sha = repo.revert(v3_sha)
        argocd.refresh(shop_app)
        fourth = step("revert", revert_sha, "Healthy", "replicas Ready", 4)
        assert fourth.app.health == "Healthy", fourth.app.summary()
        assert fourth.app.syncs == 4
        assert fourth.observed["stableRevision"] == stable_v2
        assert fourth.observed["desiredRevision"] == stable_v2

    for name, summary in steps:
        print(f"{mode} {name}: {summary}")
    # NB: what the controller showed, each change once (printed with -s, for the docs)
    shown: list[tuple[str, str, str, str]] = []
    for s in watch.samples:
        seen = (s.app.sync, s.app.health, *gr_health(s))
        if not shown or shown[-1] != seen:
            shown.append(seen)
    for seen in shown:
        print(f"{mode} shown: {seen}")


# --- the health of a release in each state, as the real controller reports it -----------------
def hold_policy(namespace: str) -> dict[str, Any]:
    """A promote-stage policy that holds every release labelled ``hold=true`` in ``namespace``."""
    return {
        "apiVersion": "permafrost.dev/v1alpha1",
        "kind": "GuardrailPolicy",
        "metadata": {"name": HOLD_POLICY},
        "spec": {
            "stages": ["promote"],
            "match": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "objectSelector": {"matchLabels": {"hold": "true"}},
            },
            "rules": [
                {
                    "name": "change-window",
                    "expression": "false",
                    "message": "no promotions outside the change window",
                }
            ],
        },
    }


def dump(*objs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(list(objs), sort_keys=False)


NEW_DIGEST = "@sha256:" + "2" * 64


@pytest.fixture
def production(crds: Cluster, namespace: str) -> Iterator[str]:
    """A second namespace, labelled environment=production, with the built-in approval policy."""
    name = f"{namespace[:50]}-prod"
    crds.kubectl("create", "namespace", name)
    crds.kubectl("label", "namespace", name, "environment=production")
    crds.kubectl("apply", "-f", str(APPROVAL_POLICY))
    yield name
    crds.kubectl("delete", "guardrailpolicy", "permafrost-production-approval", check=False)
    crds.kubectl("delete", "guardrailpolicy", HOLD_POLICY, "--ignore-not-found", check=False)
    crds.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.timeout(600)
def test_the_real_controller_reports_the_health_of_each_state(
    argocd: ArgoCD,
    crds: Cluster,
    namespace: str,
    production: str,
    git_repo: GitRepo,
    shop_app: str,
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
) -> None:
    # NB: one operator for both namespaces (the fixture's watches one)
    op = Operator(crds, None, tmp_path / "operator.log")
    request.node.operator_log = op.log
    op.start()
    try:
        crds.apply(hold_policy(namespace))
        held = release("held", deadline=30)
        held["metadata"]["labels"] = {"hold": "true"}
        good = {n: release(n, deadline=30) for n in ("crash", "slow")}
        sha = git_repo.commit(
            "releases",
            {
                "states/releases.yaml": dump(held, *good.values()),
                "prod/r.yaml": dump(release("approval", deadline=30)),
            },
        )
        prod_app = f"{shop_app[:48]}-prod"
        argocd.create_app(shop_app, repo=git_repo.url, path="states", namespace=namespace)
        argocd.create_app(prod_app, repo=git_repo.url, path="prod", namespace=production)
        try:
            for name in ("crash", "slow"):
                wait_phase(crds, namespace, name, "Stable", timeout=120)
            crash = release("crash", digest=NEW_DIGEST, deadline=30,
                            annotations={"sim.permafrost.dev/behavior": "crash-loop"})  # fmt: skip
            slow = release("slow", digest=NEW_DIGEST, deadline=300, annotations={
                "sim.permafrost.dev/behavior": "slow-ready",
                "sim.permafrost.dev/ready-after": "300s",
            })  # fmt: skip
            sha = git_repo.commit("v2", {"states/releases.yaml": dump(held, crash, slow)})
            argocd.refresh(shop_app)

            def health_is(app: str, name: str, status: str, fragment: str) -> tuple[str, str]:
                def probe() -> tuple[str, str] | None:
                    argocd.alive()
                    got = AppState.of(argocd.app(app)).health_of(GR, name)
                    return got if got[0] == status and fragment in got[1] else None

                try:
                    return wait_for(probe, timeout=120, interval=1, what=f"{name} {status}")
                except AssertionError as exc:
                    seen = AppState.of(argocd.app(app)).health_of(GR, name)
                    raise AssertionError(f"{exc}; Argo CD shows {seen}") from None

            shown = {
                "held by policy": health_is(
                    shop_app, "held", "Degraded", "Held by policy (PromotionHeld): argocd-e2e-hold"
                ),
                "waiting for approval": health_is(
                    prod_app, "approval", "Suspended", "Waiting for approval: permafrost-production"
                ),
                "rolled back": health_is(shop_app, "crash", "Degraded", "Rolled back (CrashLoop)"),
                "verifying": health_is(shop_app, "slow", "Progressing", "verifying revision"),
            }
            state = AppState.of(argocd.app(shop_app))
            assert (state.sync, state.revision) == ("Synced", sha), state.summary()
            assert state.health == "Degraded", state.summary()
            assert AppState.of(argocd.app(prod_app)).health == "Suspended"
            for what, (status, message) in shown.items():
                print(f"{what}: {status}: {message}")
        finally:
            argocd.delete_app(prod_app)
    finally:
        op.stop()


def test_argocd_is_configured_only_as_the_shipped_patch_says(argocd: ArgoCD) -> None:
    """The harness's argocd-cm is the shipped patch, nothing else: what the tests see is what
    users who apply it get."""
    shipped = yaml.safe_load((ROOT / "deploy" / "argocd" / "argocd-cm-health.yaml").read_text())
    live = argocd.cluster.get("configmap", "argocd-cm", namespace=NAMESPACE)
    assert live["data"] == shipped["data"]


@pytest.mark.timeout(300)
def test_without_use_open_libs_a_wait_for_approval_is_degraded_not_unknown(
    argocd: ArgoCD,
    crds: Cluster,
    production: str,
    git_repo: GitRepo,
    shop_app: str,
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
) -> None:
    """Argo CD's default sandbox (the health key alone, no useOpenLibs): the check must still
    give a health — the version first shipped made Argo CD show Unknown here."""
    op = Operator(crds, production, tmp_path / "operator.log")
    request.node.operator_log = op.log
    op.start()
    crds.kubectl(
        "patch", "configmap", "argocd-cm", "--type", "json",
        "-p", json.dumps([{"op": "remove", "path": "/data/" + OPEN_LIBS_KEY.replace("/", "~1")}]),
        namespace=NAMESPACE,
    )  # fmt: skip
    try:
        git_repo.commit("approval", {"prod/r.yaml": dump(release("approval", deadline=30))})
        argocd.create_app(shop_app, repo=git_repo.url, path="prod", namespace=production)

        def degraded() -> tuple[str, str] | None:
            argocd.alive()
            got = AppState.of(argocd.app(shop_app)).health_of(GR, "approval")
            # NB: verified first (Progressing), then held: the hold is what is looked at.
            return got if got[0] == "Degraded" and "PromotionHeld" in got[1] else None

        status, message = wait_for(degraded, timeout=120, interval=1, what="approval Degraded")
        assert message.startswith("Held by policy (PromotionHeld): permafrost-production"), message
        assert "permafrost.dev/approved-by" in message
        print(f"without useOpenLibs: {status}: {message}")
    finally:
        op.stop()
        crds.kubectl(
            "patch", "configmap", "argocd-cm", "--type", "merge",
            "--patch-file", str(ROOT / "deploy" / "argocd" / "argocd-cm-health.yaml"),
            namespace=NAMESPACE,
        )  # fmt: skip
