"""Admission guardrails end to end: every kubectl way to change what runs in a frozen workload.

The real operator serves its webhooks on loopback and installs the fail-safe
ValidatingAdmissionPolicy; the real apiserver evaluates both. Every vector asserts the outcome
(denied: a non-zero exit and the object unchanged when read back; allowed: a zero exit and the
change visible) and what the user is told.

NB: the apiserver evaluates the ValidatingAdmissionPolicy before validating webhooks, so every
denial here carries the policy's message (unpinned images at creation included; the webhook
checks them too, behind it); what only the webhook does is record break-glass (an Event and an
admission warning), which is also how the tests know the apiserver routes to it.

Most vectors share one module-scoped setup (its own namespace and guarded operator, a Stable
release and unmanaged workloads); tests that stop the operator or remove the guards use the
per-test ``guarded_operator`` fixture and restore the guards before they end.
"""

from __future__ import annotations

import dataclasses
import datetime
import http.client
import json
import pathlib
import re
import ssl
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from conftest import (
    BREAK_GLASS_GROUP,
    OPERATOR_NAMESPACE,
    WEBHOOK_CONFIGURATION,
    Operator,
    free_port,
    release,
    stop_guarded,
    wait_phase,
)
from k8s_harness import Cluster, RealNode, to_yaml, wait_for
from permafrost import models
from permafrost.guards import admission, webhooks

OLD_DIGEST = "a" * 64
NEW_DIGEST = "b" * 64
IMAGE = f"registry.example/x@sha256:{OLD_DIGEST}"
NEW_IMAGE = f"registry.example/x@sha256:{NEW_DIGEST}"
PROBE_IMAGE = "registry.example/probe@sha256:" + "c" * 64  # for dry runs: a change to anything
UNPINNED_IMAGE = "registry.example/x:1.0"

POLICY = webhooks.POLICY
BINDINGS = (f"{POLICY}-managed", f"{POLICY}-enforced", f"{POLICY}-unenforced")
# The settings the guarded operator runs with (its defaults for these flags).
SETTINGS = webhooks.settings_from(
    exempt_users=[f"system:serviceaccount:{OPERATOR_NAMESPACE}:permafrost"],
    break_glass_groups=[BREAK_GLASS_GROUP],
    namespace=OPERATOR_NAMESPACE,
)
BREAK_GLASS = admission.ANNOTATION_BREAK_GLASS
FINGERPRINT = "permafrost.dev/template-fingerprint"
MEMBER = ("--as=alice", f"--as-group={BREAK_GLASS_GROUP}", "--as-group=system:authenticated")
NON_MEMBER = ("--as=bob", "--as-group=system:authenticated")

TEMPLATE_FROZEN = "spec.template cannot change in place"
IMAGES_FROZEN = "its container images cannot change in place"
EPHEMERAL_DENIED = "ephemeral containers cannot be added"

# NB: webhooks.Server._serve reads the body with request.content.read(MAX_REVIEW_BYTES + 1),
# which returns what is buffered (about 128 KiB), not the whole body.
KINDS = {
    "deployment": "Deployment",
    "statefulset": "StatefulSet",
    "daemonset": "DaemonSet",
    "replicaset": "ReplicaSet",
    "pod": "Pod",
}


# --- the objects under test ----------------------------------------------------------------------


def workload(kind: str, name: str, *, image: str = IMAGE) -> dict[str, Any]:
    """An unmanaged workload of ``kind`` (Deployment, StatefulSet, DaemonSet), one container."""
    labels = {"app": name}
    spec: dict[str, Any] = {
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "app", "image": image}]},
        },
    }
    if kind != "DaemonSet":
        spec["replicas"] = 1
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


@dataclasses.dataclass(frozen=True)
class Target:
    """One frozen object: ``kind`` as kubectl spells it, and the release managing it (if any)."""

    namespace: str
    kind: str
    name: str
    container: str = "app"
    release: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def what(self) -> str:
        """How the denial names it: "Deployment ns/name"."""
        return f"{KINDS[self.kind]} {self.namespace}/{self.name}"

    @property
    def instead(self) -> str:
        """What the denial says to do instead."""
        if self.release:
            return f"update the GuardedRelease {self.release} instead"
        return "deploy the change as a new workload instead"


def _live(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in items if not i["metadata"].get("deletionTimestamp")]


def _current_replicaset(cluster: Cluster, namespace: str, deployment: str) -> str | None:
    owned = [
        rs
        for rs in _live(cluster.get("replicasets", namespace=namespace)["items"])
        if any(o.get("name") == deployment for o in rs["metadata"].get("ownerReferences") or [])
    ]
    if not owned:
        return None
    newest = max(
        owned,
        key=lambda rs: int(
            rs["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision", 0)
        ),
    )
    return str(newest["metadata"]["name"])


def _running_pod(cluster: Cluster, namespace: str, selector: str) -> str | None:
    pods = _live(cluster.get("pods", namespace=namespace, selector=selector)["items"])
    # NB: a pod a break-glass session marked is replaced by the operator once the session is
    # over, maybe in the middle of a later test: never one to test with.
    running = [
        p
        for p in pods
        if p.get("status", {}).get("phase") == "Running"
        and "permafrost.dev/tainted" not in (p["metadata"].get("labels") or {})
    ]
    return str(running[0]["metadata"]["name"]) if running else None


def resolve(cluster: Cluster, namespace: str, key: str, *, release_name: str = "shop") -> Target:
    """The object a test key names, as it is now (names of revisions, ReplicaSets, pods vary).

    Keys: ``managed-deployment|replicaset|pod`` (the stable revision of the release),
    ``deployment|replicaset|pod`` (the unmanaged Deployment "web"), ``statefulset`` ("db"),
    ``daemonset`` ("agent").
    """
    if key.startswith("managed-"):
        revision = wait_phase(cluster, namespace, release_name, "Stable")["stableRevision"]
        deployment = f"{release_name}-{revision}"
        pods = f"permafrost.dev/revision={revision}"
        kind = key.removeprefix("managed-")
    else:
        simple = {"statefulset": "db", "daemonset": "agent"}
        if key in simple:
            return Target(namespace, key, simple[key])
        deployment, pods, kind = "web", "app=web", key
    managed_by = release_name if key.startswith("managed-") else None
    wait_for(
        lambda: cluster.get("deployment", deployment, namespace=namespace),
        timeout=30,
        what=f"the Deployment {deployment}",
    )
    if kind == "deployment":
        return Target(namespace, "deployment", deployment, release=managed_by)
    if kind == "replicaset":
        name = wait_for(
            lambda: _current_replicaset(cluster, namespace, deployment),
            timeout=30,
            what=f"the ReplicaSet of {deployment}",
        )
        return Target(namespace, "replicaset", name, release=managed_by)
    name = wait_for(
        lambda: _running_pod(cluster, namespace, pods), timeout=30, what=f"a pod of {deployment}"
    )
    return Target(namespace, "pod", name, release=managed_by)


def what_runs(cluster: Cluster, target: Target) -> dict[str, Any]:
    """What admission freezes, read back: a workload's template and selector, a pod's images."""
    obj = cluster.get(target.kind, target.name, namespace=target.namespace)
    assert obj is not None, f"{target.ref} is gone"
    spec = obj["spec"]
    if target.kind == "pod":
        return {
            key: [(c["name"], c["image"]) for c in spec.get(key) or []]
            for key in ("containers", "initContainers", "ephemeralContainers")
        }
    return {"template": spec["template"], "selector": spec["selector"]}


def image_of(cluster: Cluster, target: Target) -> str:
    obj = cluster.get(target.kind, target.name, namespace=target.namespace)
    spec = obj["spec"] if target.kind == "pod" else obj["spec"]["template"]["spec"]
    return str(spec["containers"][0]["image"])


def events(
    cluster: Cluster, namespace: str, *, reason: str, name: str, kind: str | None = None
) -> list[dict[str, Any]]:
    selector = f"reason={reason},involvedObject.name={name}"
    if kind:
        selector += f",involvedObject.kind={kind}"
    items: list[dict[str, Any]] = json.loads(
        cluster.kubectl(
            "get", "events", "--field-selector", selector, "-o", "json", namespace=namespace
        ).stdout
    )["items"]
    return items


# --- the guards: webhook configuration, policy bindings ----------------------------------------


def guarded_args(port: int) -> list[str]:
    """The flags of the ``guarded_operator`` fixture."""
    return [
        "--admission",
        "--webhook-listen",
        f"127.0.0.1:{port}",
        "--webhook-url",
        f"https://127.0.0.1:{port}",
        "--operator-namespace",
        OPERATOR_NAMESPACE,
        "--break-glass-group",
        BREAK_GLASS_GROUP,
    ]


def webhook_port(operator: Operator) -> int:
    listen = operator.extra[operator.extra.index("--webhook-listen") + 1]
    return int(listen.rpartition(":")[2])


def guards(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """The webhook configuration, the policy and its bindings that exist, by name."""
    proc = cluster.kubectl(
        "get",
        f"validatingwebhookconfiguration/{WEBHOOK_CONFIGURATION}",
        f"validatingadmissionpolicy/{POLICY}",
        *(f"validatingadmissionpolicybinding/{b}" for b in BINDINGS),
        "-o",
        "json",
        "--ignore-not-found",
    )
    if not proc.stdout.strip():
        return {}
    found = json.loads(proc.stdout)
    items = found.get("items", []) if found.get("kind") == "List" else [found]
    return {f"{i['kind']}/{i['metadata']['name']}": i for i in items}


def bindings_exist(cluster: Cluster) -> bool:
    found = guards(cluster)
    return all(f"ValidatingAdmissionPolicyBinding/{b}" in found for b in BINDINGS)


def remove_guards(cluster: Cluster) -> None:
    """What an admin (or an attacker with cluster rights) does to bypass Permafrost."""
    cluster.kubectl("delete", "validatingadmissionpolicybinding", *BINDINGS, "--ignore-not-found")
    cluster.kubectl(
        "delete", "validatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "--ignore-not-found"
    )


def restore_policy(cluster: Cluster) -> None:
    """The fail-safe policy and its bindings, applied as the operator applies them.

    NB: the operator runs as the tests' user here, and adds itself to the users that may create
    its revisions' pods; so does this.
    """
    me = cluster.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout
    settings = dataclasses.replace(
        SETTINGS, controller_users=SETTINGS.controller_users | {me.strip()}
    )
    cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager",
        "permafrost",
        "--force-conflicts",
        "-f",
        "-",
        stdin=to_yaml(admission.policy_manifests(name=POLICY, settings=settings)),
    )


def restart_and_wait_for_the_guards(cluster: Cluster, operator: Operator, probe: Target) -> None:
    """Restart the operator (it re-applies its guards at start-up) and wait until they hold."""
    operator.stop()
    operator.start()
    wait_for(lambda: bindings_exist(cluster), timeout=60, what="the policy bindings re-applied")
    wait_for_webhook(cluster, probe)


def wait_for_webhook(cluster: Cluster, probe: Target) -> None:
    """Until the apiserver routes to the operator's webhook.

    NB: the policy answers every denial before the webhook is asked, so the probe is what only
    the webhook does: a dry-run break-glass change of a frozen workload comes back with its
    admission warning (a dry run posts no Event and changes nothing).
    """
    token = uuid.uuid4().hex[:8]
    patch = {
        "metadata": {"annotations": {BREAK_GLASS: f"readiness probe {token}"}},
        "spec": {"template": {"metadata": {"annotations": {"example.com/probe": token}}}},
    }

    def answers() -> bool:
        proc = cluster.kubectl(
            "patch",
            probe.kind,
            probe.name,
            "--dry-run=server",
            "--type",
            "merge",
            "-p",
            json.dumps(patch),
            "--as=readiness-probe",
            "--as-group=system:masters",
            f"--as-group={BREAK_GLASS_GROUP}",
            namespace=probe.namespace,
            check=False,
        )
        return proc.returncode == 0 and "Warning: break-glass:" in proc.stderr

    wait_for(answers, timeout=60, interval=0.5, what="the operator's webhook to answer")


def _dry_run_set_image(cluster: Cluster, target: Target) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(
        "set",
        "image",
        target.ref,
        f"{target.container}={PROBE_IMAGE}",
        "--dry-run=server",
        namespace=target.namespace,
        check=False,
    )


def wait_until_allowed(cluster: Cluster, target: Target) -> None:
    """Until a frozen change goes through (deleted bindings take effect asynchronously)."""
    wait_for(
        lambda: _dry_run_set_image(cluster, target).returncode == 0,
        timeout=30,
        interval=0.5,
        what="the guards to be gone",
    )


def wait_until_denied_by_the_policy(cluster: Cluster, target: Target) -> None:
    """Until a frozen change is denied by the policy again (bindings take effect asynchronously)."""

    def denied() -> bool:
        proc = _dry_run_set_image(cluster, target)
        return proc.returncode != 0 and "ValidatingAdmissionPolicy" in proc.stderr

    wait_for(denied, timeout=30, interval=0.5, what="the policy to deny again")


# --- the shared setup ---------------------------------------------------------------------------


@dataclasses.dataclass
class Frozen:
    """A guarded operator in its own enforced namespace with a Stable release and workloads."""

    cluster: Cluster
    namespace: str  # enforced: permafrost.dev/enforce=true
    unenforced: str  # did not opt in: only what Permafrost manages is frozen
    operator: Operator
    port: int
    tmp: pathlib.Path

    def ensure_guarded(self) -> None:
        """Re-register this operator if a test in between removed or took over the guards."""
        found = guards(self.cluster)
        webhook = found.get(f"ValidatingWebhookConfiguration/{WEBHOOK_CONFIGURATION}")
        ours = webhook is not None and all(
            f"127.0.0.1:{self.port}/" in w["clientConfig"].get("url", "")
            for w in webhook["webhooks"]
        )
        if ours and all(f"ValidatingAdmissionPolicyBinding/{b}" in found for b in BINDINGS):
            return
        probe = Target(self.namespace, "deployment", "web")
        restart_and_wait_for_the_guards(self.cluster, self.operator, probe)

    def target(self, key: str) -> Target:
        """``key`` as :func:`resolve` takes it; prefixed ``unenforced-``: in that namespace."""
        if key.startswith("unenforced-"):
            return resolve(self.cluster, self.unenforced, key.removeprefix("unenforced-"))
        return resolve(self.cluster, self.namespace, key)


@pytest.fixture(scope="module")
def frozen(
    crds: Cluster, operator_namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Frozen]:
    tmp = tmp_path_factory.mktemp("admission")
    namespace = f"admission-{uuid.uuid4().hex[:6]}"
    unenforced = f"{namespace}-unenforced"
    crds.kubectl("create", "namespace", namespace)
    crds.kubectl("label", "namespace", namespace, "permafrost.dev/enforce=true")
    crds.kubectl("create", "namespace", unenforced)
    port = free_port()
    op = Operator(
        crds, namespace, tmp / "operator.log", extra=["-n", unenforced, *guarded_args(port)]
    )
    try:
        for ns in (namespace, unenforced):
            wait_for(
                lambda ns=ns: crds.get("serviceaccount", "default", namespace=ns),
                timeout=30,
                what=f"the default ServiceAccount in {ns}",
            )
        # alice (break-glass) and bob (not) may edit workloads here, as developers would.
        for ns in (namespace, unenforced):
            crds.kubectl(
                "create",
                "rolebinding",
                "developers",
                "--clusterrole=edit",
                "--user=alice",
                "--user=bob",
                namespace=ns,
            )
        crds.create(workload("Deployment", "web"), namespace=namespace)
        op.start()
        wait_for_webhook(crds, Target(namespace, "deployment", "web"))
        crds.apply(
            [
                release("shop", service="shop"),
                workload("StatefulSet", "db"),
                workload("DaemonSet", "agent"),
            ],
            namespace=namespace,
        )
        crds.apply(
            [release("shop", service="shop"), release("cart"), workload("Deployment", "web")],
            namespace=unenforced,
        )
        env = Frozen(crds, namespace, unenforced, op, port, tmp)
        for key in ("managed-pod", "pod", "unenforced-managed-pod", "unenforced-pod"):
            env.target(key)
        resolve(crds, unenforced, "managed-pod", release_name="cart")
        wait_for(lambda: _running_pod(crds, namespace, "app=db"), timeout=30, what="a pod of db")
        yield env
    finally:
        stop_guarded(crds, op)
        crds.kubectl("delete", "namespace", namespace, unenforced, "--wait=false", check=False)


@pytest.fixture
def guarded(frozen: Frozen, request: pytest.FixtureRequest) -> Frozen:
    request.node.operator_log = frozen.operator.log  # attached to the report if the test fails
    frozen.ensure_guarded()
    return frozen


# --- the vectors ----------------------------------------------------------------------------------

Run = Callable[[Cluster, Target, pathlib.Path], subprocess.CompletedProcess[str]]


@dataclasses.dataclass(frozen=True)
class Vector:
    """One way to change what runs, and the phrase a denial of it must contain."""

    name: str
    run: Run
    phrases: tuple[str, ...]  # any one of them

    def __str__(self) -> str:
        return self.name


def _kubectl(cluster: Cluster, target: Target, *args: str, stdin: str | None = None) -> Any:
    return cluster.kubectl(*args, namespace=target.namespace, stdin=stdin, check=False)


def _with_new_image(cluster: Cluster, target: Target, *, for_apply: bool) -> dict[str, Any]:
    obj: dict[str, Any] = cluster.get(target.kind, target.name, namespace=target.namespace)
    obj["spec"]["template"]["spec"]["containers"][0]["image"] = NEW_IMAGE
    obj.pop("status", None)
    if for_apply:
        for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
            obj["metadata"].pop(key, None)
    return obj


def set_image(c: Cluster, t: Target, _: pathlib.Path) -> Any:
    return _kubectl(c, t, "set", "image", t.ref, f"{t.container}={NEW_IMAGE}")


def set_env(c: Cluster, t: Target, _: pathlib.Path) -> Any:
    return _kubectl(c, t, "set", "env", t.ref, "MODE=changed-in-place")


def set_resources(c: Cluster, t: Target, _: pathlib.Path) -> Any:
    return _kubectl(
        c, t, "set", "resources", t.ref, "-c", t.container, "--limits=cpu=200m,memory=64Mi"
    )


def edit(c: Cluster, t: Target, tmp: pathlib.Path) -> Any:
    # The editor swaps the image's digest in the file kubectl opens; kubectl then patches.
    editor = f"sed -i 's#@sha256:[0-9a-f]\\{{64\\}}#@sha256:{NEW_DIGEST}#'"
    return subprocess.run(
        ["kubectl", "edit", t.ref, "-n", t.namespace],
        env={**c.env, "KUBE_EDITOR": editor, "TMPDIR": str(tmp)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def patch_strategic(c: Cluster, t: Target, _: pathlib.Path) -> Any:
    body = {
        "spec": {"template": {"spec": {"containers": [{"name": t.container, "image": NEW_IMAGE}]}}}
    }
    return _kubectl(c, t, "patch", t.kind, t.name, "-p", json.dumps(body))


def patch_merge(c: Cluster, t: Target, _: pathlib.Path) -> Any:
    # Even metadata inside the template changes what runs (it rolls the pods).
    body = {"spec": {"template": {"metadata": {"annotations": {"example.com/patched": "yes"}}}}}
    return _kubectl(c, t, "patch", t.kind, t.name, "--type", "merge", "-p", json.dumps(body))


def patch_json(c: Cluster, t: Target, _: pathlib.Path) -> Any:
    ops = [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": NEW_IMAGE}]
    return _kubectl(c, t, "patch", t.kind, t.name, "--type", "json", "-p", json.dumps(ops))


def apply_client_side(c: Cluster, t: Target, _: pathlib.Path) -> Any:
    return _kubectl(
        c, t, "apply", "-f", "-", stdin=json.dumps(_with_new_image(c, t, for_apply=True))
    )


def apply_server_side(c: Cluster, t: Target, _: pathlib.Path) -> Any:
    manifest = {
        "apiVersion": "apps/v1",
        "kind": KINDS[t.kind],
        "metadata": {"name": t.name},
        "spec": {"template": {"spec": {"containers": [{"name": t.container, "image": NEW_IMAGE}]}}},
    }
    return _kubectl(
        c,
        t,
        "apply",
        "--server-side",
        "--field-manager=intruder",
        "--force-conflicts",
        "-f",
        "-",
        stdin=to_yaml(manifest),
    )


def replace(c: Cluster, t: Target, _: pathlib.Path) -> Any:
    return _kubectl(
        c, t, "replace", "-f", "-", stdin=json.dumps(_with_new_image(c, t, for_apply=False))
    )


def rollout_restart(c: Cluster, t: Target, _: pathlib.Path) -> Any:
    return _kubectl(c, t, "rollout", "restart", t.ref)


def change_selector(c: Cluster, t: Target, _: pathlib.Path) -> Any:
    ops = [
        {"op": "add", "path": "/spec/selector/matchLabels/tier", "value": "moved"},
        {"op": "add", "path": "/spec/template/metadata/labels/tier", "value": "moved"},
    ]
    return _kubectl(c, t, "patch", t.kind, t.name, "--type", "json", "-p", json.dumps(ops))


def pod_set_image(c: Cluster, t: Target, _: pathlib.Path) -> Any:
    return _kubectl(c, t, "set", "image", t.ref, f"{t.container}={NEW_IMAGE}")


def pod_patch_image(c: Cluster, t: Target, _: pathlib.Path) -> Any:
    ops = [{"op": "replace", "path": "/spec/containers/0/image", "value": NEW_IMAGE}]
    return _kubectl(c, t, "patch", "pod", t.name, "--type", "json", "-p", json.dumps(ops))


def debug(c: Cluster, t: Target, _: pathlib.Path) -> Any:
    container = f"debugger-{uuid.uuid4().hex[:6]}"
    return _kubectl(c, t, "debug", t.ref, f"--image={NEW_IMAGE}", f"--container={container}")


SET_IMAGE = Vector("set-image", set_image, (TEMPLATE_FROZEN,))
SET_ENV = Vector("set-env", set_env, (TEMPLATE_FROZEN,))
SET_RESOURCES = Vector("set-resources", set_resources, (TEMPLATE_FROZEN,))
EDIT = Vector("edit", edit, (TEMPLATE_FROZEN,))
PATCH_STRATEGIC = Vector("patch-strategic", patch_strategic, (TEMPLATE_FROZEN,))
PATCH_MERGE = Vector("patch-merge", patch_merge, (TEMPLATE_FROZEN,))
PATCH_JSON = Vector("patch-json", patch_json, (TEMPLATE_FROZEN,))
APPLY = Vector("apply", apply_client_side, (TEMPLATE_FROZEN,))
APPLY_SERVER_SIDE = Vector("apply-server-side", apply_server_side, (TEMPLATE_FROZEN,))
REPLACE = Vector("replace", replace, (TEMPLATE_FROZEN,))
ROLLOUT_RESTART = Vector("rollout-restart", rollout_restart, (TEMPLATE_FROZEN,))
# NB: apps/v1 validation (which runs before validating admission) rejects it first.
APISERVER_SAYS = ("field is immutable", "updates to statefulset spec for fields other than")
SELECTOR = Vector(
    "change-selector", change_selector, (*APISERVER_SAYS, "spec.selector cannot change in place")
)
POD_SET_IMAGE = Vector("set-image", pod_set_image, (IMAGES_FROZEN,))
POD_PATCH_IMAGE = Vector("patch-image", pod_patch_image, (IMAGES_FROZEN,))
DEBUG = Vector("debug", debug, (EPHEMERAL_DENIED,))

WORKLOAD_VECTORS = (
    SET_IMAGE,
    SET_ENV,
    SET_RESOURCES,
    EDIT,
    PATCH_STRATEGIC,
    PATCH_MERGE,
    PATCH_JSON,
    APPLY,
    APPLY_SERVER_SIDE,
    REPLACE,
    ROLLOUT_RESTART,
)
DENIED = [
    *((key, v) for key in ("managed-deployment", "deployment") for v in WORKLOAD_VECTORS),
    *(
        (key, v)
        for key in ("statefulset", "daemonset")
        for v in (SET_IMAGE, SET_ENV, PATCH_MERGE, APPLY_SERVER_SIDE, REPLACE, ROLLOUT_RESTART)
    ),
    *((key, SELECTOR) for key in ("managed-deployment", "deployment", "statefulset")),
    *(
        (key, v)
        for key in ("managed-replicaset", "replicaset")
        for v in (PATCH_STRATEGIC, PATCH_MERGE, SET_IMAGE)
    ),
    *((key, v) for key in ("managed-pod", "pod") for v in (POD_SET_IMAGE, POD_PATCH_IMAGE, DEBUG)),
    # Where enforcement is not opted in, what Permafrost manages is frozen all the same.
    *(
        ("unenforced-managed-deployment", v)
        for v in (SET_IMAGE, PATCH_MERGE, APPLY_SERVER_SIDE, REPLACE, ROLLOUT_RESTART, SELECTOR)
    ),
    ("unenforced-managed-replicaset", PATCH_STRATEGIC),
    ("unenforced-managed-pod", POD_SET_IMAGE),
    ("unenforced-managed-pod", DEBUG),
]


def assert_denied(
    cluster: Cluster, target: Target, vector: Vector, tmp: pathlib.Path, *, by_policy: bool = False
) -> None:
    before = what_runs(cluster, target)
    proc = vector.run(cluster, target, tmp)
    said = proc.stderr + proc.stdout
    assert proc.returncode != 0, f"{vector} on {target.ref} was allowed:\n{said}"
    assert what_runs(cluster, target) == before, f"{vector} changed {target.ref}:\n{said}"
    assert any(p in proc.stderr for p in vector.phrases), proc.stderr
    if any(p in proc.stderr for p in APISERVER_SAYS):
        return  # the apiserver's own validation said no first
    assert f"{target.what} is frozen by Permafrost" in proc.stderr
    assert target.instead in proc.stderr
    assert f"{BREAK_GLASS}=<reason> in the same request" in proc.stderr
    if by_policy:
        assert f"ValidatingAdmissionPolicy '{POLICY}'" in proc.stderr


# --- denied -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "vector"), DENIED, ids=[f"{key}-{vector}" for key, vector in DENIED]
)
def test_changing_what_runs_in_place_is_denied_and_says_what_to_do_instead(
    guarded: Frozen, key: str, vector: Vector
) -> None:
    assert_denied(guarded.cluster, guarded.target(key), vector, guarded.tmp)


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet", "DaemonSet"])
def test_creating_a_workload_with_an_unpinned_image_in_an_enforced_namespace_is_denied(
    guarded: Frozen, kind: str
) -> None:
    name = f"unpinned-{kind.lower()}"
    proc = guarded.cluster.create(
        workload(kind, name, image=UNPINNED_IMAGE), namespace=guarded.namespace, check=False
    )
    assert proc.returncode != 0, proc.stdout
    assert guarded.cluster.get(kind.lower(), name, namespace=guarded.namespace) is None
    assert_unpinned_refused(proc.stderr, f"{kind} {guarded.namespace}/{name}")


def assert_unpinned_refused(said: str, what: str) -> None:
    """The policy's refusal (it runs first) or the webhook's: both name the digest form."""
    by_policy = f"{what} is refused: every image must be pinned by digest" in said
    by_webhook = (
        'admission webhook "enforced.frozen.permafrost.dev" denied the request' in said
        and f"image {UNPINNED_IMAGE!r} is not pinned by digest" in said
    )
    assert by_policy or by_webhook, said
    assert "sha256:<64 hex>" in said


# --- allowed ------------------------------------------------------------------------------------


def _replicas(cluster: Cluster, target: Target) -> int:
    obj = cluster.get(target.kind, target.name, namespace=target.namespace)
    return int(obj["spec"]["replicas"])


def _settled(cluster: Cluster, target: Target, replicas: int) -> bool:
    """Scaled to ``replicas``, and the pods followed (no pod left terminating for later tests)."""
    obj = cluster.get(target.kind, target.name, namespace=target.namespace)
    return bool(
        obj["spec"]["replicas"] == replicas
        and obj.get("status", {}).get("replicas") == replicas
        and obj["status"].get("readyReplicas") == replicas
    )


@pytest.mark.parametrize("how", ["kubectl-scale", "scale-subresource"])
@pytest.mark.parametrize("key", ["managed-deployment", "deployment", "statefulset"])
def test_scaling_a_frozen_workload_is_allowed(guarded: Frozen, key: str, how: str) -> None:
    c, t = guarded.cluster, guarded.target(key)
    before = _replicas(c, t)
    wanted = before + 1
    if how == "kubectl-scale":
        proc = _kubectl(c, t, "scale", t.ref, f"--replicas={wanted}", "-o", "json")
    else:
        body = json.dumps({"spec": {"replicas": wanted}})
        proc = _kubectl(
            c, t, "patch", t.kind, t.name, "--subresource=scale", "--type", "merge", "-p", body,
            "-o", "json",
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["spec"]["replicas"] == wanted
    if t.release:
        # The revision's replica count belongs to the release: the operator sets it back.
        wait_for(
            lambda: _replicas(c, t) == before,
            timeout=30,
            what=f"the operator to scale {t.ref} back to {before}",
        )
    else:
        assert _replicas(c, t) == wanted
        _kubectl(c, t, "scale", t.ref, f"--replicas={before}")
    wait_for(lambda: _settled(c, t, before), timeout=30, what=f"{t.ref} settled at {before}")


@pytest.mark.parametrize("verb", ["label", "annotate"])
@pytest.mark.parametrize(
    "key", ["managed-deployment", "deployment", "daemonset", "managed-pod", "pod"]
)
def test_changing_metadata_of_a_frozen_workload_or_pod_is_allowed(
    guarded: Frozen, key: str, verb: str
) -> None:
    c, t = guarded.cluster, guarded.target(key)
    before = what_runs(c, t)
    value = uuid.uuid4().hex[:8]
    proc = _kubectl(c, t, verb, t.ref, f"example.com/touched={value}", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    meta = c.get(t.kind, t.name, namespace=t.namespace)["metadata"]
    assert meta["labels" if verb == "label" else "annotations"]["example.com/touched"] == value
    assert what_runs(c, t) == before


@pytest.mark.parametrize("key", ["managed-pod", "pod"])
def test_deleting_a_pod_of_a_frozen_workload_is_allowed(guarded: Frozen, key: str) -> None:
    c, t = guarded.cluster, guarded.target(key)
    uid = c.get("pod", t.name, namespace=t.namespace)["metadata"]["uid"]
    proc = _kubectl(c, t, "delete", "pod", t.name, "--wait=false")
    assert proc.returncode == 0, proc.stderr

    def gone() -> bool:
        pod = c.get("pod", t.name, namespace=t.namespace)
        return pod is None or pod["metadata"]["uid"] != uid

    wait_for(gone, timeout=30, what=f"{t.ref} deleted")


def test_deleting_an_unmanaged_frozen_deployment_is_allowed(guarded: Frozen) -> None:
    c, ns = guarded.cluster, guarded.namespace
    c.create(workload("Deployment", "doomed"), namespace=ns)
    proc = c.kubectl("delete", "deployment", "doomed", "--wait=false", namespace=ns, check=False)
    assert proc.returncode == 0, proc.stderr
    wait_for(
        lambda: c.get("deployment", "doomed", namespace=ns) is None,
        timeout=30,
        what="the Deployment doomed gone",
    )


def test_deleting_a_revision_deployment_is_allowed_and_the_operator_recreates_it(
    guarded: Frozen,
) -> None:
    c, t = guarded.cluster, guarded.target("managed-deployment")
    uid = c.get("deployment", t.name, namespace=t.namespace)["metadata"]["uid"]
    proc = _kubectl(c, t, "delete", "deployment", t.name, "--wait=false")
    assert proc.returncode == 0, proc.stderr

    def recreated() -> dict[str, Any] | None:
        obj = c.get("deployment", t.name, namespace=t.namespace)
        return obj if obj and obj["metadata"]["uid"] != uid else None

    wait_for(recreated, timeout=60, what=f"{t.ref} re-created with a new uid")
    wait_phase(c, t.namespace, "shop", "Stable", timeout=60)


def test_where_enforcement_is_not_opted_in_unmanaged_workloads_are_not_frozen(
    guarded: Frozen,
) -> None:
    c, t = guarded.cluster, guarded.target("unenforced-deployment")
    proc = set_image(c, t, guarded.tmp)
    assert proc.returncode == 0, proc.stderr
    assert image_of(c, t) == NEW_IMAGE
    proc = c.create(
        workload("Deployment", "unpinned", image=UNPINNED_IMAGE),
        namespace=guarded.unenforced,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


LABELS_FROZEN = "its permafrost.dev/release and permafrost.dev/revision labels cannot change"


@pytest.mark.parametrize("label", [models.LABEL_RELEASE, models.LABEL_REVISION])
@pytest.mark.parametrize("kind", ["pod", "deployment"])
def test_removing_the_labels_that_make_a_revision_managed_is_denied(
    guarded: Frozen, kind: str, label: str
) -> None:
    """Else: strip the label (the managed guards no longer match), change what runs, relabel.

    In a namespace that did not opt in, only the labels make a revision frozen.
    """
    c = guarded.cluster
    t = resolve(c, guarded.unenforced, f"managed-{kind}", release_name="cart")
    before = c.get(t.kind, t.name, namespace=t.namespace)["metadata"]["labels"]
    proc = _kubectl(c, t, "label", t.ref, f"{label}-")
    assert proc.returncode != 0, proc.stdout
    assert c.get(t.kind, t.name, namespace=t.namespace)["metadata"]["labels"] == before
    assert f"{t.what} is frozen by Permafrost: {LABELS_FROZEN}; " in proc.stderr
    assert t.instead in proc.stderr  # the release it was managed by, though the label goes
    # ... so the change that would follow is still denied.
    assert_denied(c, t, SET_IMAGE if kind == "deployment" else POD_SET_IMAGE, guarded.tmp)


# --- exclusions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "labels"),
    [(OPERATOR_NAMESPACE, {}), ("kube-system", {"permafrost.dev/release": "x"})],
    ids=["operator-namespace-labelled-enforced", "kube-system-with-a-release-label"],
)
def test_workloads_in_excluded_namespaces_are_never_frozen(
    guarded: Frozen, where: str, labels: dict[str, str]
) -> None:
    c = guarded.cluster
    name = f"excluded-{uuid.uuid4().hex[:6]}"
    manifest = workload("Deployment", name)
    manifest["metadata"]["labels"] = labels
    target = Target(where, "deployment", name)
    previous = (c.get("namespace", where)["metadata"].get("labels") or {}).get(
        admission.LABEL_ENFORCE
    )
    try:
        if where == OPERATOR_NAMESPACE:
            c.kubectl("label", "namespace", where, f"{admission.LABEL_ENFORCE}=true", "--overwrite")
        c.create(manifest, namespace=where)
        proc = set_image(c, target, guarded.tmp)
        assert proc.returncode == 0, proc.stderr
        assert image_of(c, target) == NEW_IMAGE
        proc = rollout_restart(c, target, guarded.tmp)
        assert proc.returncode == 0, proc.stderr
    finally:
        c.kubectl("delete", "deployment", name, "--ignore-not-found", namespace=where, check=False)
        if where == OPERATOR_NAMESPACE:
            label = (
                f"{admission.LABEL_ENFORCE}-"
                if previous is None
                else f"{admission.LABEL_ENFORCE}={previous}"
            )
            c.kubectl("label", "namespace", where, label, "--overwrite", check=False)


# --- break-glass --------------------------------------------------------------------------------


def _break_glass_patch(target: Target, reason: str, env: str) -> str:
    return json.dumps(
        {
            "metadata": {"annotations": {BREAK_GLASS: reason}},
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": target.container, "env": [{"name": "DEBUG", "value": env}]}
                        ]
                    }
                }
            },
        }
    )


def _env(cluster: Cluster, target: Target) -> list[dict[str, Any]]:
    obj = cluster.get(target.kind, target.name, namespace=target.namespace)
    env: list[dict[str, Any]] = obj["spec"]["template"]["spec"]["containers"][0].get("env") or []
    return env


def test_break_glass_from_a_user_outside_the_group_is_refused(guarded: Frozen) -> None:
    c, ns = guarded.cluster, guarded.namespace
    for key in ("deployment", "managed-deployment"):
        t = guarded.target(key)
        before = what_runs(c, t)
        proc = _kubectl(
            c, t, "patch", t.kind, t.name, *NON_MEMBER, "-p", _break_glass_patch(t, "INC-0", "1")
        )
        assert proc.returncode != 0, proc.stdout
        assert what_runs(c, t) == before
        meta = c.get(t.kind, t.name, namespace=ns)["metadata"]
        assert BREAK_GLASS not in (meta.get("annotations") or {})
        assert TEMPLATE_FROZEN in proc.stderr
        assert f"Break-glass: set the annotation {BREAK_GLASS}=<reason>" in proc.stderr
        assert f"members of {BREAK_GLASS_GROUP} only" in proc.stderr


def _break_glass_target(frozen: Frozen, key: str) -> Target:
    if key == "managed-deployment":
        return frozen.target(key)
    # A fresh workload: the shared "web" stays as it was admitted.
    name = f"glass-{uuid.uuid4().hex[:6]}"
    frozen.cluster.create(workload("Deployment", name), namespace=frozen.namespace)
    return Target(frozen.namespace, "deployment", name)


def _break_glass_events(cluster: Cluster, target: Target, reason: str) -> list[dict[str, Any]]:
    return [
        e
        for e in events(
            cluster, target.namespace, reason="BreakGlassUsed", name=target.name, kind="Deployment"
        )
        if e["message"].endswith(f": {reason}")
    ]


@pytest.mark.parametrize("key", ["deployment", "managed-deployment"])
def test_break_glass_by_a_member_lets_one_change_through_and_records_who_and_why(
    guarded: Frozen, key: str
) -> None:
    c, t = guarded.cluster, _break_glass_target(guarded, key)
    reason = f"INC-{uuid.uuid4().hex[:6]} hotfix"

    proc = _kubectl(
        c, t, "patch", t.kind, t.name, *MEMBER, "-p", _break_glass_patch(t, reason, "1")
    )
    assert proc.returncode == 0, proc.stderr
    assert _env(c, t) == [{"name": "DEBUG", "value": "1"}]
    assert "Warning: break-glass:" in proc.stderr
    assert f"{t.what} changes spec.template; this is recorded ({reason})" in proc.stderr
    recorded = wait_for(
        lambda: _break_glass_events(c, t, reason), timeout=30, what="the BreakGlassUsed Event"
    )
    for event in recorded:
        assert event["type"] == "Warning"
        assert event["message"] == (
            f"alice changes spec.template of frozen {t.what} under break-glass: {reason}"
        )

    # The same value again does not open the glass a second time: one mutation per value.
    before = what_runs(c, t)
    proc = _kubectl(
        c, t, "patch", t.kind, t.name, *MEMBER, "-p", _break_glass_patch(t, reason, "2")
    )
    assert proc.returncode != 0, proc.stdout
    assert what_runs(c, t) == before
    assert TEMPLATE_FROZEN in proc.stderr
    assert t.instead in proc.stderr


@pytest.mark.parametrize(
    "key",
    [
        "deployment",
        "managed-deployment",
    ],
)
def test_one_break_glass_use_is_recorded_exactly_once(guarded: Frozen, key: str) -> None:
    c, t = guarded.cluster, _break_glass_target(guarded, key)
    reason = f"INC-{uuid.uuid4().hex[:6]} once"
    proc = _kubectl(
        c, t, "patch", t.kind, t.name, *MEMBER, "-p", _break_glass_patch(t, reason, "3")
    )
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: _break_glass_events(c, t, reason), timeout=30, what="the Event")
    time.sleep(1)  # any duplicate is posted by the same burst of admission calls
    assert len(_break_glass_events(c, t, reason)) == 1
    assert proc.stderr.count("Warning: break-glass:") == 1, proc.stderr


def test_break_glass_on_a_large_workload_is_still_recorded(guarded: Frozen) -> None:
    """The review of an UPDATE carries the object twice: here ~1.2 MB, over aiohttp's 1 MiB
    default body limit. A webhook that refused the body would fail open: allowed, unrecorded.
    """
    c, ns = guarded.cluster, guarded.namespace
    t = Target(ns, "deployment", f"bulky-{uuid.uuid4().hex[:6]}")
    manifest = workload("Deployment", t.name)
    manifest["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "BLOB", "value": "x" * 600_000}
    ]
    reason = f"INC-{uuid.uuid4().hex[:6]} bulky"
    patch = {
        "metadata": {"annotations": {BREAK_GLASS: reason}},
        "spec": {"template": {"metadata": {"annotations": {"example.com/hotfix": "1"}}}},
    }
    try:
        c.create(manifest, namespace=ns)
        proc = _kubectl(
            c, t, "patch", t.kind, t.name, *MEMBER, "--type", "merge", "-p", json.dumps(patch)
        )
        assert proc.returncode == 0, proc.stderr
        assert f"{t.what} changes spec.template; this is recorded ({reason})" in proc.stderr
        wait_for(
            lambda: _break_glass_events(c, t, reason),
            timeout=30,
            what="the BreakGlassUsed Event",
        )
    finally:
        c.kubectl("delete", "deployment", t.name, "--ignore-not-found", namespace=ns, check=False)


# --- exec, attach, cp, port-forward (CONNECT) ----------------------------------------------------
# NB: these pods run on fake nodes: a CONNECT admission lets through fails next with "no
# preferred addresses found" (there is no kubelet to reach); a denial never gets that far.
# Real exec on the real node: tests/integration/test_exec_sessions.py.
# NB: with the real node in the cluster, the fake nodes have no address; without it, kwok answers
# for them, and has nothing to run ("no exec found", "no attaches found" …). Both come after
# admission: the request was admitted.
NO_KUBELET = re.compile(r"no preferred addresses found|no [a-z ]+ found for container")


def admitted(stderr: str) -> bool:
    return NO_KUBELET.search(stderr) is not None


def connect_ways(target: Target, tmp: pathlib.Path) -> dict[str, tuple[str, ...]]:
    return {
        "exec": ("exec", target.name, "--", "true"),
        "cp": ("cp", f"{target.name}:/etc/hostname", str(tmp / f"copied-{target.name}")),
        "attach": ("attach", target.name),
        "port-forward": ("port-forward", target.name, "0:8080"),
    }


def connect(cluster: Cluster, target: Target, args: Sequence[str], *who: str) -> Any:
    # NB: the flags go first: after exec's "--" they would be the command's.
    return cluster.kubectl(*who, *args, namespace=target.namespace, check=False, timeout=30)


def developers(cluster: Cluster, namespace: str) -> None:
    """alice (break-glass), bob and carol may exec and edit in ``namespace``, as developers."""
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "developers-connect"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
            for user in ("alice", "bob", "carol")
        ],
    }
    cluster.apply(binding, namespace=namespace)


@pytest.mark.parametrize("key", ["managed-pod", "pod", "unenforced-managed-pod"])
def test_exec_attach_cp_and_port_forward_into_a_frozen_pod_are_denied(
    guarded: Frozen, key: str
) -> None:
    target = guarded.target(key)
    developers(guarded.cluster, target.namespace)
    for way, args in connect_ways(target, guarded.tmp).items():
        for who in ((), MEMBER):  # a member, too, needs a session (none is open)
            proc = connect(guarded.cluster, target, args, *who)
            assert proc.returncode != 0, (way, proc.stdout)
            assert f"into Pod {target.namespace}/{target.name} is denied" in proc.stderr, (
                way,
                proc.stderr,
            )
            assert "permafrost break-glass" in proc.stderr, proc.stderr
            if who or key.startswith("unenforced-"):
                # NB: members pass the policy; outside enforced namespaces it does not apply.
                assert 'admission webhook "connect.permafrost.dev"' in proc.stderr, proc.stderr
            else:
                assert "ValidatingAdmissionPolicy 'permafrost-frozen-exec'" in proc.stderr


def test_exec_into_a_pod_that_is_not_frozen_is_not_an_admission_matter(guarded: Frozen) -> None:
    target = guarded.target("unenforced-pod")
    developers(guarded.cluster, target.namespace)
    for way, args in connect_ways(target, guarded.tmp).items():
        proc = connect(guarded.cluster, target, args, *NON_MEMBER)
        assert admitted(proc.stderr), (way, proc.stderr)


def test_a_session_opened_by_a_member_for_themselves_lets_only_them_in(guarded: Frozen) -> None:
    target = guarded.target("unenforced-managed-pod")
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    until = now + datetime.timedelta(seconds=20)

    def annotations(user: str) -> list[str]:
        return [
            f"permafrost.dev/session-user={user}",
            f"permafrost.dev/session-since={now:%Y-%m-%dT%H:%M:%SZ}",
            f"permafrost.dev/session-until={until:%Y-%m-%dT%H:%M:%SZ}",
            "permafrost.dev/session-reason=vector suite",
        ]

    c = guarded.cluster
    developers(c, target.namespace)
    refused = connect(c, target, ("annotate", "pod", target.name, *annotations("bob")), *MEMBER)
    assert refused.returncode != 0, refused.stdout
    assert "refused" in refused.stderr, refused.stderr
    assert "for themselves" in refused.stderr, refused.stderr
    opened = connect(c, target, ("annotate", "pod", target.name, *annotations("alice")), *MEMBER)
    assert opened.returncode == 0, opened.stderr
    for way, args in connect_ways(target, guarded.tmp).items():
        proc = connect(c, target, args, *MEMBER)
        assert admitted(proc.stderr), (way, proc.stderr)  # admitted
        other = connect(c, target, args, "--as=carol", f"--as-group={BREAK_GLASS_GROUP}")
        assert "no break-glass session of yours" in other.stderr, (way, other.stderr)
    assert wait_for(
        lambda: (c.get("pod", target.name, namespace=target.namespace)["metadata"]["labels"]).get(
            "permafrost.dev/tainted"
        ),
        timeout=20,
        what="the pod marked",
    ) in ("exec", "attach")
    assert events(c, target.namespace, reason="BreakGlassExec", name=target.name)


# --- traffic: the revision labels are reserved, a Service's endpoints are its controller's -----

RESERVED_BY_POLICY = "are reserved for the pods of a GuardedRelease's revisions"
RESERVED_BY_WEBHOOK = "which only the pods of a GuardedRelease's revisions carry"
ENDPOINTS_RESERVED = "only the EndpointSlice controller writes"
JOB_TEMPLATE_FROZEN = "spec.jobTemplate cannot change in place"
BOB = NON_MEMBER
# Someone an admin granted EndpointSlice writes (no default role does).
MALLORY = ("--as=mallory", "--as-group=system:authenticated")


def assert_reserved(proc: subprocess.CompletedProcess[str], what: str) -> None:
    """Denied, by the policy or the webhook, naming the object and what to do instead."""
    said = proc.stderr + proc.stdout
    assert proc.returncode != 0, f"{what} was allowed:\n{said}"
    assert f"{what} is refused: " in said, said
    assert RESERVED_BY_POLICY in said or RESERVED_BY_WEBHOOK in said, said
    assert "update the GuardedRelease" in said, said


def revision_pod(cluster: Cluster, namespace: str, release_name: str = "shop") -> dict[str, Any]:
    """A pod of the release's stable revision, as the cluster holds it."""
    target = resolve(cluster, namespace, "managed-pod", release_name=release_name)
    pod: dict[str, Any] = cluster.get("pod", target.name, namespace=namespace)
    return pod


def bare_pod(name: str, labels: dict[str, str], **metadata: Any) -> dict[str, Any]:
    """A pod made by hand, running an image nobody verified."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels, **metadata},
        "spec": {"containers": [{"name": "app", "image": NEW_IMAGE}]},
    }


def as_user(cluster: Cluster, manifest: dict[str, Any], namespace: str, *who: str) -> Any:
    return cluster.kubectl(
        "create", *who, "-f", "-", stdin=json.dumps(manifest), namespace=namespace, check=False
    )


LABELLINGS = {
    "both-labels": (models.LABEL_RELEASE, models.LABEL_REVISION),
    "the-release-label": (models.LABEL_RELEASE,),
    "the-revision-label": (models.LABEL_REVISION,),
}


@pytest.mark.parametrize("labelling", sorted(LABELLINGS))
@pytest.mark.parametrize("where", ["enforced", "unenforced"])
def test_a_pod_made_by_hand_with_the_revision_labels_is_denied(
    guarded: Frozen, where: str, labelling: str
) -> None:
    """The hijack: a bare pod labelled like the stable revision's would join its Service."""
    c = guarded.cluster
    ns = guarded.namespace if where == "enforced" else guarded.unenforced
    stable = revision_pod(c, ns)["metadata"]["labels"]
    labels = {"app": stable["app"], **{k: stable[k] for k in LABELLINGS[labelling]}}
    name = f"hijack-{uuid.uuid4().hex[:6]}"
    proc = as_user(c, bare_pod(name, labels), ns, *BOB)
    assert_reserved(proc, f"Pod {ns}/{name}")
    assert c.get("pod", name, namespace=ns) is None
    # The same pod without the labels is the user's to run (where nothing is enforced).
    if where == "unenforced":
        proc = as_user(c, bare_pod(name, {"app": stable["app"]}), ns, *BOB)
        assert proc.returncode == 0, proc.stderr
        c.kubectl("delete", "pod", name, "--wait=false", namespace=ns, check=False)


def test_an_owner_reference_to_the_revisions_replicaset_proves_nothing(guarded: Frozen) -> None:
    """Whoever creates a pod writes its ownerReferences: the pod is judged by who creates it."""
    c, ns = guarded.cluster, guarded.unenforced
    stable = revision_pod(c, ns)
    (owner,) = stable["metadata"]["ownerReferences"]
    assert owner["kind"] == "ReplicaSet"
    name = f"forged-{uuid.uuid4().hex[:6]}"
    pod = bare_pod(name, dict(stable["metadata"]["labels"]), ownerReferences=[owner])
    for who in (BOB, ("--as=admin-ish", "--as-group=system:masters")):
        proc = as_user(c, pod, ns, *who)
        assert_reserved(proc, f"Pod {ns}/{name}")
    assert c.get("pod", name, namespace=ns) is None


@pytest.mark.parametrize("labelling", sorted(LABELLINGS))
def test_labelling_a_pod_into_a_release_is_denied(guarded: Frozen, labelling: str) -> None:
    c, ns = guarded.cluster, guarded.unenforced
    stable = revision_pod(c, ns)["metadata"]["labels"]
    name = f"relabel-{uuid.uuid4().hex[:6]}"
    proc = as_user(c, bare_pod(name, {"app": stable["app"]}), ns, *BOB)
    assert proc.returncode == 0, proc.stderr
    try:
        labels = [f"{k}={stable[k]}" for k in LABELLINGS[labelling]]
        proc = c.kubectl("label", "pod", name, *labels, *BOB, namespace=ns, check=False)
        assert_reserved(proc, f"Pod {ns}/{name}")
        assert c.get("pod", name, namespace=ns)["metadata"]["labels"] == {"app": stable["app"]}
    finally:
        c.kubectl("delete", "pod", name, "--wait=false", namespace=ns, check=False)


def test_pod_labels_and_ips_cannot_change_through_pods_status(guarded: Frozen) -> None:
    """The apiserver takes a pod's labels and IPs from a pods/status write (the kubelet's and
    the controllers' path; no default role but theirs grants it): the policy judges it."""
    c, ns = guarded.cluster, guarded.unenforced
    stable = revision_pod(c, ns)
    name, before = stable["metadata"]["name"], stable["metadata"]["labels"]
    drop = {"metadata": {"labels": {models.LABEL_REVISION: None}}}
    proc = c.kubectl(
        "patch", "pod", name, "--subresource=status", "--type", "merge", "-p", json.dumps(drop),
        namespace=ns, check=False,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stdout
    assert LABELS_FROZEN in proc.stderr
    assert c.get("pod", name, namespace=ns)["metadata"]["labels"] == before
    # Nor its IP, which the EndpointSlice controller would publish for the Service.
    ip = stable["status"]["podIP"]
    assert ip
    moved = {"status": {"podIP": "10.244.0.254", "podIPs": [{"ip": "10.244.0.254"}]}}
    proc = c.kubectl(
        "patch", "pod", name, "--subresource=status", "--type", "merge", "-p", json.dumps(moved),
        namespace=ns, check=False,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stdout
    assert "never changes once assigned" in proc.stderr, proc.stderr
    assert c.get("pod", name, namespace=ns)["status"]["podIP"] == ip
    plain = f"plain-{uuid.uuid4().hex[:6]}"
    assert as_user(c, bare_pod(plain, {"app": "x"}), ns).returncode == 0
    try:
        add = {"metadata": {"labels": {k: before[k] for k in LABELLINGS["both-labels"]}}}
        proc = c.kubectl(
            "patch", "pod", plain, "--subresource=status", "--type", "merge",
            "-p", json.dumps(add), namespace=ns, check=False,
        )  # fmt: skip
        assert_reserved(proc, f"Pod {ns}/{plain}")
        assert c.get("pod", plain, namespace=ns)["metadata"]["labels"] == {"app": "x"}
    finally:
        c.kubectl("delete", "pod", plain, "--wait=false", namespace=ns, check=False)


def test_moving_a_revision_pod_to_another_revision_is_denied(guarded: Frozen) -> None:
    c, ns = guarded.cluster, guarded.unenforced
    pod = revision_pod(c, ns, release_name="cart")
    name, before = pod["metadata"]["name"], pod["metadata"]["labels"]
    proc = c.kubectl(
        "label", "pod", name, f"{models.LABEL_REVISION}=0123456789", "--overwrite",
        namespace=ns, check=False,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stdout
    assert LABELS_FROZEN in proc.stderr
    assert c.get("pod", name, namespace=ns)["metadata"]["labels"] == before


def _with_pods_labelled(kind: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A workload of ``kind`` whose pods would carry ``labels``."""
    template: dict[str, Any] = {
        "metadata": {"labels": {"app": name, **labels}},
        "spec": {"containers": [{"name": "app", "image": NEW_IMAGE}]},
    }
    if kind in ("Job", "CronJob"):
        template["spec"]["restartPolicy"] = "Never"
        job = {"template": template}
        if kind == "Job":
            return {"apiVersion": "batch/v1", "kind": kind, "metadata": {"name": name}, "spec": job}
        spec: dict[str, Any] = {"schedule": "0 3 * * *", "jobTemplate": {"spec": job}}
        return {"apiVersion": "batch/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    if kind == "ReplicationController":
        spec = {"replicas": 1, "selector": {"app": name}, "template": template}
        return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    manifest = workload(kind if kind != "ReplicaSet" else "Deployment", name, image=NEW_IMAGE)
    manifest["kind"] = kind
    manifest["spec"]["template"]["metadata"]["labels"].update(labels)
    return manifest


@pytest.mark.parametrize(
    "kind",
    ["Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "ReplicationController", "Job",
     "CronJob"],
)  # fmt: skip
def test_a_workload_whose_pods_would_carry_the_revision_labels_is_denied(
    guarded: Frozen, kind: str
) -> None:
    """Its controller would create the pods (the ReplicaSet controller itself, for a
    ReplicaSet or a Deployment's ReplicaSet): the workload is judged when it is made."""
    c, ns = guarded.cluster, guarded.unenforced
    stable = revision_pod(c, ns)["metadata"]["labels"]
    labels = {k: stable[k] for k in (models.LABEL_RELEASE, models.LABEL_REVISION)}
    name = f"carrier-{kind.lower()}"
    proc = as_user(c, _with_pods_labelled(kind, name, labels), ns, *BOB)
    assert_reserved(proc, f"{kind} {ns}/{name}")
    assert c.get(kind.lower(), name, namespace=ns) is None


def test_giving_a_workloads_pods_the_revision_labels_is_denied(guarded: Frozen) -> None:
    c = guarded.cluster
    t = guarded.target("unenforced-deployment")
    stable = revision_pod(c, t.namespace)["metadata"]["labels"]
    before = what_runs(c, t)
    body = {
        "spec": {
            "template": {
                "metadata": {"labels": {models.LABEL_REVISION: stable[models.LABEL_REVISION]}}
            }
        }
    }
    proc = _kubectl(c, t, "patch", t.ref, "--type", "merge", "-p", json.dumps(body), *BOB)
    assert_reserved(proc, f"Deployment {t.namespace}/{t.name}")
    assert what_runs(c, t) == before


def _cronjob(name: str, image: str = IMAGE) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name},
        "spec": {
            "schedule": "0 3 * * *",
            "jobTemplate": {
                "spec": {
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [{"name": "app", "image": image}],
                        }
                    }
                }
            },
        },
    }


def test_set_image_on_a_cronjob_in_an_enforced_namespace_is_denied(guarded: Frozen) -> None:
    c, ns = guarded.cluster, guarded.namespace
    name = f"nightly-{uuid.uuid4().hex[:6]}"
    c.create(_cronjob(name), namespace=ns)

    def template() -> Any:
        return c.get("cronjob", name, namespace=ns)["spec"]["jobTemplate"]

    before = template()
    for how in (
        ("set", "image", f"cronjob/{name}", f"app={NEW_IMAGE}"),
        ("set", "env", f"cronjob/{name}", "MODE=changed-in-place"),
        ("patch", "cronjob", name, "--type", "json", "-p", json.dumps([{
            "op": "replace", "value": NEW_IMAGE,
            "path": "/spec/jobTemplate/spec/template/spec/containers/0/image",
        }])),
    ):  # fmt: skip
        proc = c.kubectl(*how, *BOB, namespace=ns, check=False)
        assert proc.returncode != 0, f"{how} was allowed"
        assert f"CronJob {ns}/{name} is frozen by Permafrost" in proc.stderr, proc.stderr
        assert JOB_TEMPLATE_FROZEN in proc.stderr or "changes spec.jobTemplate" in proc.stderr
        assert template() == before
    # What does not change what runs is allowed: suspending it, its schedule.
    proc = c.kubectl(
        "patch", "cronjob", name, "-p", json.dumps({"spec": {"suspend": True}}), *BOB,
        namespace=ns, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert c.get("cronjob", name, namespace=ns)["spec"]["suspend"] is True


@pytest.mark.parametrize("kind", ["CronJob", "Job", "ReplicationController"])
def test_creating_a_job_or_cronjob_with_an_unpinned_image_in_an_enforced_namespace_is_denied(
    guarded: Frozen, kind: str
) -> None:
    c, ns = guarded.cluster, guarded.namespace
    name = f"unpinned-{kind.lower()}"
    manifest = _with_pods_labelled(kind, name, {})
    pod = manifest["spec"]
    pod = (pod["jobTemplate"]["spec"] if kind == "CronJob" else pod)["template"]["spec"]
    pod["containers"][0]["image"] = UNPINNED_IMAGE
    proc = c.create(manifest, namespace=ns, check=False)
    assert proc.returncode != 0, proc.stdout
    assert c.get(kind.lower(), name, namespace=ns) is None
    assert_unpinned_refused(proc.stderr, f"{kind} {ns}/{name}")


def test_a_jobs_template_and_its_pods_images_are_frozen(guarded: Frozen) -> None:
    c, ns = guarded.cluster, guarded.namespace
    name = f"once-{uuid.uuid4().hex[:6]}"
    job = _with_pods_labelled("Job", name, {})
    job["spec"]["template"]["spec"]["containers"][0]["image"] = IMAGE
    job["spec"]["suspend"] = True  # NB: a suspended Job's template is partly mutable
    c.create(job, namespace=ns)
    proc = c.kubectl("set", "image", f"job/{name}", f"app={NEW_IMAGE}", namespace=ns, check=False)
    assert proc.returncode != 0, proc.stdout
    proc = c.kubectl(
        "patch", "job", name, "--type", "merge", "-p",
        json.dumps({"spec": {"template": {"spec": {"nodeSelector": {"x": "y"}}}}}),
        namespace=ns, check=False,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stdout
    assert f"Job {ns}/{name} is frozen by Permafrost" in proc.stderr, proc.stderr
    c.kubectl("patch", "job", name, "-p", json.dumps({"spec": {"suspend": False}}), namespace=ns)
    pod_name = wait_for(
        lambda: _running_pod(c, ns, f"job-name={name}")
        or next(
            (p["metadata"]["name"] for p in _live(
                c.get("pods", namespace=ns, selector=f"job-name={name}")["items"]
            )),
            None,
        ),
        timeout=30,
        what=f"a pod of the Job {name}",
    )  # fmt: skip
    pod = Target(ns, "pod", pod_name)
    assert_denied(c, pod, POD_SET_IMAGE, guarded.tmp)


def _endpointslice(name: str, service: str, ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
    }


def _grant_endpointslices(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl(
        "create", "role", "endpointslice-writer", "--verb=create,update,patch,get",
        "--resource=endpointslices.discovery.k8s.io", namespace=namespace, check=False,
    )  # fmt: skip
    cluster.kubectl(
        "create", "rolebinding", "endpointslice-writer", "--role=endpointslice-writer",
        "--user=mallory", namespace=namespace, check=False,
    )  # fmt: skip


def test_an_endpointslice_written_by_hand_for_a_service_is_denied_where_enforced(
    guarded: Frozen,
) -> None:
    """kube-proxy sends a Service's traffic to every EndpointSlice labelled with its name,
    whoever wrote it. Where Permafrost enforces, only the EndpointSlice controller writes them."""
    c, ns = guarded.cluster, guarded.namespace
    _grant_endpointslices(c, ns)
    name = f"shop-forged-{uuid.uuid4().hex[:6]}"
    proc = as_user(c, _endpointslice(name, "shop", "10.244.0.250"), ns, *MALLORY)
    assert proc.returncode != 0, proc.stdout
    assert f"EndpointSlice {ns}/{name} is refused: " in proc.stderr, proc.stderr
    assert ENDPOINTS_RESERVED in proc.stderr
    assert c.get("endpointslice", name, namespace=ns) is None
    # ... nor changes the controller's.
    (owned, *_) = c.get("endpointslices", namespace=ns, selector="kubernetes.io/service-name=shop")[
        "items"
    ]
    ops = [{"op": "replace", "path": "/endpoints/0/addresses/0", "value": "10.244.0.250"}]
    proc = c.kubectl(
        "patch", "endpointslice", owned["metadata"]["name"], "--type", "json",
        "-p", json.dumps(ops), *MALLORY, namespace=ns, check=False,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stdout
    assert ENDPOINTS_RESERVED in proc.stderr
    # The EndpointSlice controller still keeps them: scaling the release's Service follows.
    assert c.get("endpointslice", owned["metadata"]["name"], namespace=ns)["endpoints"]


def test_where_nothing_is_enforced_endpointslices_are_left_to_rbac(guarded: Frozen) -> None:
    """The one vector admission leaves open (docs/security.md): a hand-written EndpointSlice
    in a namespace that did not opt in. No default role grants EndpointSlice writes."""
    c, ns = guarded.cluster, guarded.unenforced
    proc = as_user(c, _endpointslice("shop-by-bob", "shop", "10.244.0.251"), ns, *BOB)
    assert proc.returncode != 0
    assert 'cannot create resource "endpointslices"' in proc.stderr, proc.stderr
    _grant_endpointslices(c, ns)
    name = f"shop-granted-{uuid.uuid4().hex[:6]}"
    proc = as_user(c, _endpointslice(name, "shop", "10.244.0.251"), ns, *MALLORY)
    assert proc.returncode == 0, proc.stderr
    c.kubectl("delete", "endpointslice", name, namespace=ns, check=False)
    # ... unless the slice itself claims to be the release's.
    slice_ = _endpointslice(name, "shop", "10.244.0.251")
    slice_["metadata"]["labels"][models.LABEL_RELEASE] = "shop"
    proc = as_user(c, slice_, ns, *MALLORY)
    assert proc.returncode != 0, proc.stdout
    assert ENDPOINTS_RESERVED in proc.stderr


def test_with_only_the_webhook_the_traffic_vectors_are_denied_all_the_same(
    guarded: Frozen,
) -> None:
    """The policy answers first when both hold; without its bindings, the webhook says no."""
    c, ns = guarded.cluster, guarded.unenforced
    stable = revision_pod(c, ns)["metadata"]["labels"]
    try:
        c.kubectl("delete", "validatingadmissionpolicybinding", *BINDINGS, "--ignore-not-found")
        name = f"hijack-{uuid.uuid4().hex[:6]}"

        def by_webhook() -> bool:
            proc = as_user(c, bare_pod(name, dict(stable)), ns, "--dry-run=server", *BOB)
            return proc.returncode != 0 and RESERVED_BY_WEBHOOK in proc.stderr

        wait_for(by_webhook, timeout=30, interval=0.5, what="the webhook alone to deny")
        proc = as_user(c, bare_pod(name, dict(stable)), ns, *BOB)
        assert_reserved(proc, f"Pod {ns}/{name}")
        assert 'admission webhook "managed.frozen.permafrost.dev" denied' in proc.stderr
        revision_only = {models.LABEL_REVISION: stable[models.LABEL_REVISION]}
        proc = as_user(c, bare_pod(name, revision_only), ns, *BOB)
        assert_reserved(proc, f"Pod {ns}/{name}")
        assert 'admission webhook "unenforced.labels.permafrost.dev" denied' in proc.stderr
        proc = as_user(c, bare_pod(name, {"app": "x"}), ns, *BOB)
        assert proc.returncode == 0, proc.stderr
        proc = c.kubectl(
            "label", "pod", name, f"{models.LABEL_RELEASE}=shop", *BOB, namespace=ns, check=False
        )
        assert_reserved(proc, f"Pod {ns}/{name}")
        c.kubectl("delete", "pod", name, "--wait=false", namespace=ns, check=False)
        carrier = _with_pods_labelled("CronJob", "carrier", revision_only)
        assert_reserved(as_user(c, carrier, ns, *BOB), f"CronJob {ns}/carrier")
        nightly = f"nightly-{uuid.uuid4().hex[:6]}"
        c.create(_cronjob(nightly), namespace=guarded.namespace)
        proc = c.kubectl(
            "set", "image", f"cronjob/{nightly}", f"app={NEW_IMAGE}",
            namespace=guarded.namespace, check=False,
        )  # fmt: skip
        assert proc.returncode != 0, proc.stdout
        assert 'admission webhook "enforced.frozen.permafrost.dev" denied' in proc.stderr
        assert "changes spec.jobTemplate" in proc.stderr
        _grant_endpointslices(c, guarded.namespace)
        proc = as_user(
            c, _endpointslice("forged", "shop", "10.244.0.252"), guarded.namespace, *MALLORY
        )
        assert proc.returncode != 0, proc.stdout
        assert 'admission webhook "enforced.frozen.permafrost.dev" denied' in proc.stderr
        assert "only the EndpointSlice controller writes the endpoints" in proc.stderr
    finally:
        restore_policy(c)


def test_with_the_operator_gone_the_policy_still_denies_the_traffic_vectors(
    crds: Cluster, namespace: str, guarded_operator: Operator
) -> None:
    """The fail-safe holds them: in an enforced namespace, then in one that did not opt in."""
    crds.apply(release("shop", service="shop"), namespace=namespace)
    crds.kubectl(
        "create", "rolebinding", "developers", "--clusterrole=edit", "--user=bob",
        namespace=namespace,
    )  # fmt: skip
    _grant_endpointslices(crds, namespace)
    stable = revision_pod(crds, namespace)["metadata"]["labels"]
    crds.create(_cronjob("nightly"), namespace=namespace)

    guarded_operator.stop()
    crds.kubectl("delete", "validatingwebhookconfiguration", WEBHOOK_CONFIGURATION)

    proc = crds.kubectl(
        "set", "image", "cronjob/nightly", f"app={NEW_IMAGE}", *BOB,
        namespace=namespace, check=False,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stdout
    assert JOB_TEMPLATE_FROZEN in proc.stderr
    proc = as_user(crds, _endpointslice("forged", "shop", "10.244.0.253"), namespace, *MALLORY)
    assert proc.returncode != 0, proc.stdout
    assert ENDPOINTS_RESERVED in proc.stderr

    for enforced in (True, False):
        if not enforced:
            crds.kubectl("label", "namespace", namespace, f"{admission.LABEL_ENFORCE}-")
            # NB: the policy reads the namespace from the apiserver's cache: until it follows,
            # a pinned CronJob's new image is still denied as frozen.
            wait_for(
                lambda: crds.kubectl(
                    "set", "image", "cronjob/nightly", f"app={NEW_IMAGE}", "--dry-run=server",
                    namespace=namespace, check=False,
                ).returncode == 0,
                timeout=30,
                interval=0.5,
                what="the policy to see the namespace no longer enforced",
            )  # fmt: skip
        for labelling, labels in LABELLINGS.items():
            name = f"hijack-{labelling}"
            pod = bare_pod(name, {k: stable[k] for k in labels})
            proc = as_user(crds, pod, namespace, *BOB)
            assert_reserved(proc, f"Pod {namespace}/{name}")
            assert f"ValidatingAdmissionPolicy '{POLICY}'" in proc.stderr
        plain = f"plain-{enforced}".lower()
        proc = as_user(crds, bare_pod(plain, {"app": "shop"}), namespace, *BOB)
        assert proc.returncode == 0, proc.stderr
        revision = f"{models.LABEL_REVISION}={stable[models.LABEL_REVISION]}"
        proc = crds.kubectl("label", "pod", plain, revision, *BOB, namespace=namespace, check=False)
        assert_reserved(proc, f"Pod {namespace}/{plain}")
        carrier = _with_pods_labelled("Deployment", "carrier", {models.LABEL_RELEASE: "shop"})
        assert_reserved(as_user(crds, carrier, namespace, *BOB), f"Deployment {namespace}/carrier")

    # What the cluster's controllers do goes on: the revision's pods are re-created.
    victim = revision_pod(crds, namespace)["metadata"]["name"]
    crds.kubectl("delete", "pod", victim, "--wait=false", namespace=namespace)
    wait_for(
        lambda: (
            (p := _running_pod(crds, namespace, f"{models.LABEL_RELEASE}=shop")) and p != victim
        ),
        timeout=60,
        what="the revision's ReplicaSet to re-create its pod",
    )


@pytest.mark.real_node
def test_on_the_real_node_a_hand_made_pod_or_endpointslice_would_take_the_traffic(
    crds: Cluster,
    namespace: str,
    guarded_operator: Operator,
    real_node: RealNode,
    demo_images: dict[str, str],
) -> None:
    """The vectors are real: with the guards gone, kube-proxy sends a managed Service's traffic
    to a pod made by hand with the stable revision's labels, and to whatever a hand-written
    EndpointSlice names. With the guards, both are refused and only the verified v1 answers."""
    probe = {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}

    def pod_spec(image: str) -> dict[str, Any]:
        return real_node.schedule(
            {"containers": [{"name": "app", "image": image, "readinessProbe": probe}]}
        )

    manifest = release("web", service="web", deadline=30, min_ready=2, scale_down_delay=2)
    manifest["spec"]["template"]["spec"] = pod_spec(demo_images["v1"])
    crds.apply(manifest, namespace=namespace)
    wait_phase(crds, namespace, "web", "Stable", timeout=90)
    ip = crds.get("service", "web", namespace=namespace)["spec"]["clusterIP"]
    url = f"http://{ip}/"
    crds.kubectl(
        "create", "rolebinding", "developers", "--clusterrole=edit", "--user=bob",
        namespace=namespace,
    )  # fmt: skip
    _grant_endpointslices(crds, namespace)
    # NB: what the Service selects, as the stable pods carry it; not pod-template-hash (the
    # ReplicaSet would adopt the pod, one too many, and delete one).
    labels = revision_pod(crds, namespace, release_name="web")["metadata"]["labels"]
    selector = crds.get("service", "web", namespace=namespace)["spec"]["selector"]
    stable = {k: labels[k] for k in selector}
    assert stable == selector

    def versions(n: int = 40) -> set[str]:
        seen = set()
        for _ in range(n):
            with urllib.request.urlopen(url, timeout=3) as answer:
                seen.add(json.loads(answer.read())["version"])
        return seen

    def ready_ip(name: str) -> str | None:
        pod = crds.get("pod", name, namespace=namespace) or {}
        ready = any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod.get("status", {}).get("conditions", [])
        )
        return str(pod["status"]["podIP"]) if ready else None

    v2 = {"apiVersion": "v1", "kind": "Pod", "spec": pod_spec(demo_images["v2"])}
    hijack = {**v2, "metadata": {"name": "hijack", "labels": dict(stable)}}
    assert_reserved(as_user(crds, hijack, namespace, *BOB), f"Pod {namespace}/hijack")
    impostor = {**v2, "metadata": {"name": "impostor", "labels": {"app": "impostor"}}}
    crds.create(impostor, namespace=namespace)
    impostor_ip = wait_for(lambda: ready_ip("impostor"), timeout=60, what="the impostor Ready")
    forged = _endpointslice("web-forged", "web", impostor_ip)
    forged["ports"] = [{"name": "http", "port": 8080, "protocol": "TCP"}]
    proc = as_user(crds, forged, namespace, *MALLORY)
    assert proc.returncode != 0, proc.stdout
    assert ENDPOINTS_RESERVED in proc.stderr
    assert versions() == {"v1"}

    try:
        guarded_operator.stop()
        remove_guards(crds)
        wait_for(
            lambda: as_user(crds, forged, namespace, "--dry-run=server").returncode == 0,
            timeout=30,
            interval=0.5,
            what="the guards to be gone",
        )
        crds.create(forged, namespace=namespace)
        wait_for(lambda: "v2" in versions(20), timeout=30, what="the forged slice to take traffic")
        crds.kubectl("delete", "endpointslice", "web-forged", namespace=namespace)
        wait_for(lambda: versions() == {"v1"}, timeout=30, what="the forged slice gone")
        crds.create(hijack, namespace=namespace)
        wait_for(lambda: ready_ip("hijack"), timeout=60, what="the hand-made pod Ready")
        wait_for(lambda: "v2" in versions(20), timeout=30, what="the hand-made pod to take traffic")
    finally:
        crds.kubectl("delete", "pod", "hijack", "impostor", "--ignore-not-found", "--wait=false",
                     namespace=namespace, check=False)  # fmt: skip
        if not bindings_exist(crds):
            restore_policy(crds)


# --- without the operator: the fail-safe policy -------------------------------------------------

FAIL_SAFE = [
    *((key, v) for key in ("managed-deployment", "deployment") for v in (
        SET_IMAGE, PATCH_MERGE, APPLY_SERVER_SIDE, REPLACE, ROLLOUT_RESTART
    )),
    *((key, v) for key in ("managed-pod", "pod") for v in (POD_SET_IMAGE, DEBUG)),
]  # fmt: skip


def test_with_the_operator_gone_the_policy_still_denies_every_vector_and_scaling_still_works(
    crds: Cluster, namespace: str, guarded_operator: Operator, tmp_path: pathlib.Path
) -> None:
    crds.apply(
        [release("shop", service="shop"), workload("Deployment", "web")], namespace=namespace
    )
    targets = {key: resolve(crds, namespace, key) for key in ("managed-pod", "pod")}

    guarded_operator.stop()
    crds.kubectl("delete", "validatingwebhookconfiguration", WEBHOOK_CONFIGURATION)
    assert guarded_operator.proc is not None
    assert guarded_operator.proc.poll() is not None
    assert f"ValidatingWebhookConfiguration/{WEBHOOK_CONFIGURATION}" not in guards(crds)

    proc = crds.create(
        workload("Deployment", "unpinned", image=UNPINNED_IMAGE), namespace=namespace, check=False
    )
    assert proc.returncode != 0, proc.stdout
    assert crds.get("deployment", "unpinned", namespace=namespace) is None
    assert f"ValidatingAdmissionPolicy '{POLICY}'" in proc.stderr
    assert_unpinned_refused(proc.stderr, f"Deployment {namespace}/unpinned")

    for key, vector in FAIL_SAFE:
        target = targets.get(key) or resolve(crds, namespace, key)
        assert_denied(crds, target, vector, tmp_path, by_policy=True)

    # exec and friends: denied by the exec policy in this enforced namespace (a CONNECT shows it
    # no labels, so it cannot tell managed pods; members of a break-glass group pass it).
    developers(crds, namespace)
    for target in targets.values():
        for way, args in connect_ways(target, tmp_path).items():
            proc = connect(crds, target, args)
            assert proc.returncode != 0, (way, proc.stdout)
            assert "ValidatingAdmissionPolicy 'permafrost-frozen-exec'" in proc.stderr, proc.stderr
            member = connect(crds, target, args, *MEMBER)
            assert admitted(member.stderr), (way, member.stderr)

    for key in ("managed-deployment", "deployment"):
        target = resolve(crds, namespace, key)
        proc = crds.kubectl("scale", target.ref, "--replicas=3", namespace=namespace, check=False)
        assert proc.returncode == 0, proc.stderr
        assert _replicas(crds, target) == 3


# --- drift: what happens when the guards were bypassed ------------------------------------------


def test_a_revision_changed_while_the_guards_were_down_is_repaired_from_the_release(
    crds: Cluster, namespace: str, guarded_operator: Operator
) -> None:
    crds.apply(release("shop", service="shop"), namespace=namespace)
    target = resolve(crds, namespace, "managed-deployment")
    original = image_of(crds, target)
    deployment = wait_for(
        lambda: (
            (d := crds.get("deployment", target.name, namespace=namespace))
            and FINGERPRINT in d["metadata"].get("annotations", {})
            and d
        ),
        timeout=30,
        what="the fingerprint recorded on the revision",
    )
    uid = deployment["metadata"]["uid"]
    try:
        remove_guards(crds)
        # NB: stopped first, so the repair happens at start-up (the operator catches up on what
        # changed while it was away), not racing the restart.
        guarded_operator.stop()
        wait_until_allowed(crds, target)
        proc = set_image(crds, target, pathlib.Path())
        assert proc.returncode == 0, proc.stderr  # nothing guards it now
        restart_and_wait_for_the_guards(crds, guarded_operator, target)
    finally:
        if not bindings_exist(crds):
            restore_policy(crds)

    wait_for(
        lambda: events(crds, namespace, reason="DriftRepaired", name="shop", kind="GuardedRelease"),
        timeout=60,
        what="a DriftRepaired Event on the release",
    )
    repaired = wait_for(
        lambda: (
            (d := crds.get("deployment", target.name, namespace=namespace))
            and d["metadata"]["uid"] != uid
            and d
        ),
        timeout=60,
        what=f"{target.ref} re-created",
    )
    assert repaired["spec"]["template"]["spec"]["containers"][0]["image"] == original
    wait_phase(crds, namespace, "shop", "Stable", timeout=60, stableRevision=target.name[5:])
    wait_until_denied_by_the_policy(crds, target)


def test_an_unmanaged_workload_changed_while_the_guards_were_down_is_reported_as_drifted(
    crds: Cluster, namespace: str, guarded_operator: Operator
) -> None:
    crds.create(workload("Deployment", "web"), namespace=namespace)
    target = Target(namespace, "deployment", "web")
    wait_for(
        lambda: (
            FINGERPRINT
            in (
                crds.get("deployment", "web", namespace=namespace)["metadata"].get("annotations")
                or {}
            )
        ),
        timeout=30,
        what="the fingerprint recorded on web",
    )
    try:
        remove_guards(crds)
        wait_until_allowed(crds, target)
        proc = set_image(crds, target, pathlib.Path())
        assert proc.returncode == 0, proc.stderr  # nothing guards it now
        (event,) = wait_for(
            lambda: events(crds, namespace, reason="DriftDetected", name="web", kind="Deployment"),
            timeout=30,
            what="a DriftDetected Event on web",
        )
        assert event["type"] == "Warning"
        assert "was changed in place" in event["message"]
        labels = crds.get("deployment", "web", namespace=namespace)["metadata"]["labels"]
        assert labels.get("permafrost.dev/drift") == "detected"
    finally:
        restart_and_wait_for_the_guards(crds, guarded_operator, target)
        if not bindings_exist(crds):
            restore_policy(crds)
    wait_until_denied_by_the_policy(crds, target)


# --- hostile input to the webhook server --------------------------------------------------------


def _review_request(namespace: str, uid: str, *, size: int = 0) -> dict[str, Any]:
    """A well-formed request: an UPDATE changing the image of a Deployment (a dry run)."""
    old = workload("Deployment", "web")
    new = workload("Deployment", "web", image=NEW_IMAGE)
    for obj in (old, new):
        obj["metadata"]["namespace"] = namespace
        if size:
            obj["metadata"]["annotations"] = {"example.com/huge": "x" * size}
    gvr = {"group": "apps", "version": "v1", "resource": "deployments"}
    gvk = {"group": "apps", "version": "v1", "kind": "Deployment"}
    return {
        "uid": uid,
        "kind": gvk,
        "resource": gvr,
        "requestKind": gvk,
        "requestResource": gvr,
        "name": "web",
        "namespace": namespace,
        "operation": "UPDATE",
        "userInfo": {"username": "mallory", "groups": ["system:authenticated"]},
        "object": new,
        "oldObject": old,
        "dryRun": True,
    }


def _review(request: Any) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def _without(request: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in request.items() if k not in keys}


def _post(port: int, body: bytes) -> tuple[int, bytes]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        conn.request(
            "POST", "/frozen-enforced", body=body, headers={"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _answered_properly(status: int, body: bytes, uid: str) -> bool:
    """HTTP 400, or a well-formed AdmissionReview answering this uid."""
    if status == 400:
        return True
    if status != 200:
        return False
    review = json.loads(body)
    return review.get("kind") == "AdmissionReview" and review["response"]["uid"] == uid


def _wait_until_serving(port: int, namespace: str) -> None:
    """The fixture waits for the apiserver's view; this waits for the server itself."""

    def serving() -> bool:
        uid = str(uuid.uuid4())
        try:
            status, answer = _post(
                port, json.dumps(_review(_review_request(namespace, uid))).encode()
            )
        except OSError:
            return False
        return status == 200 and json.loads(answer)["response"]["uid"] == uid

    wait_for(serving, timeout=30, interval=0.5, what=f"the webhook server on port {port}")


def _assert_reviewed(status: int, answer: bytes, uid: str) -> None:
    """A valid review is answered: this uid, and the verdict (an image change is denied)."""
    assert status == 200, f"HTTP {status} {answer[:300]!r}"
    response = json.loads(answer)["response"]
    assert response["uid"] == uid
    assert response["allowed"] is False
    assert "is frozen by Permafrost" in response["status"]["message"]


def test_malformed_admission_reviews_get_a_400_never_a_hang_or_a_crash(
    namespace: str, guarded_operator: Operator
) -> None:
    port = webhook_port(guarded_operator)
    _wait_until_serving(port, namespace)
    uid = str(uuid.uuid4())
    good = _review_request(namespace, uid)
    hostile: list[tuple[str, bytes | dict[str, Any] | list[Any] | str]] = [
        ("not JSON", b"{this is not json"),
        ("not UTF-8", b"\xff\xfe\xfd"),
        ("empty", b""),
        ("a JSON array", []),
        ("a JSON string", "AdmissionReview"),
        ("an object without request", {"apiVersion": "admission.k8s.io/v1", "kind": "x"}),
        ("a review without request", _review(None)),
        ("a request that is a string", _review("request")),
        ("a request without uid", _review(_without(good, "uid"))),
        ("a request without resource", _review(_without(good, "resource"))),
        ("a resource without its plural", _review({**good, "resource": {"group": "apps"}})),
        ("a request without userInfo", _review(_without(good, "userInfo"))),
        ("a request without objects", _review(_without(good, "object", "oldObject"))),
        ("metadata that is a string", _review({**good, "object": {"metadata": "x"}})),
        ("a spec that is a list", _review({**good, "object": {**good["object"], "spec": []}})),
    ]
    problems = []
    for what, body in hostile:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            status, answer = _post(port, raw)
        except (TimeoutError, OSError) as exc:
            problems.append(f"{what}: no answer ({exc!r})")
            continue
        if not _answered_properly(status, answer, uid):
            problems.append(f"{what}: HTTP {status} {answer[:200]!r}")
        assert guarded_operator.proc is not None
        assert guarded_operator.proc.poll() is None, f"the operator died on {what}"
    assert problems == []

    # Still serving: a valid review is answered, and correctly.
    _assert_reviewed(*_post(port, json.dumps(_review(good)).encode()), uid)


def test_huge_but_valid_admission_reviews_are_answered_not_refused(
    namespace: str, guarded_operator: Operator
) -> None:
    """An UPDATE review carries the object twice; etcd allows objects up to 1.5 MiB.

    A review the server refuses (HTTP 400 or 413) makes the apiserver fail open
    (failurePolicy Ignore): allowed, with nothing recorded.
    """
    port = webhook_port(guarded_operator)
    _wait_until_serving(port, namespace)
    # 1 MB of annotations in all (under aiohttp's 1 MiB default), then 2 MB (over it).
    for size in (500_000, 1_000_000):
        uid = str(uuid.uuid4())
        body = json.dumps(_review(_review_request(namespace, uid, size=size))).encode()
        _assert_reviewed(*_post(port, body), uid)
        assert guarded_operator.proc is not None
        assert guarded_operator.proc.poll() is None
