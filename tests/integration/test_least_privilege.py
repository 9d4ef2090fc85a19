"""The operator does everything it promises with the permissions ``deploy/`` grants, and no more.

The namespace, ServiceAccount and RBAC are applied for real from ``kubectl kustomize deploy/``; a
token is minted for the ServiceAccount (TokenRequest API) and the real operator runs with a
kubeconfig holding only that token, cluster-wide, with peering and admission, as the Deployment
runs it (with the registry check on, ``open``: the scenarios' images are in no registry, and
the check's reads are exercised). It then goes through a rollout to Stable, an automatic
rollback, an admission denial, a break-glass use (an Event the webhook posts), an exec under a
break-glass session (the pod marked, then replaced), workloads fingerprinted in an enforced
namespace, and a drift repair. A missing permission fails a scenario, and the operator's log is
scanned for any refusal at all. Afterwards the cluster is as it was: the webhook configuration,
the RBAC and (when this module made them) the namespace, the peering object and the fail-safe
policy are removed.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from conftest import (
    OPERATOR_NAMESPACE,
    Operator,
    free_port,
    release,
    status,
    stop_guarded,
    wait_for_webhook,
    wait_phase,
)
from k8s_harness import ROOT, Cluster, wait_for
from permafrost.guards import certs

ACCOUNT = f"system:serviceaccount:{OPERATOR_NAMESPACE}:permafrost"
IDENTITY_KINDS = (
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
)
POLICY = "permafrost-frozen-workloads"
EXEC_POLICY = "permafrost-frozen-exec"
POLICY_OBJECTS = (
    ("validatingadmissionpolicy", POLICY),
    ("validatingadmissionpolicybinding", f"{POLICY}-managed"),
    ("validatingadmissionpolicybinding", f"{POLICY}-enforced"),
    ("validatingadmissionpolicy", EXEC_POLICY),
    ("validatingadmissionpolicybinding", f"{EXEC_POLICY}-managed"),
    ("validatingadmissionpolicybinding", f"{EXEC_POLICY}-enforced"),
    ("validatingadmissionpolicybinding", f"{POLICY}-unenforced"),
)
PEERING = "permafrost"
TLS_SECRET = "permafrost-webhook-tls"
NEW_DIGEST = "@sha256:" + "2" * 64
OTHER_DIGEST = "@sha256:" + "3" * 64
# What the operator's log must never say: an API refusal (RBAC's "User ... cannot ...", Kopf's
# APIForbiddenError, Events that could not be posted). NB: creating anything in a namespace
# being deleted (left by other tests) is also a 403; that is not about permissions.
REFUSED = re.compile(r"forbidden|not enough permissions|\(403\)|could not post event", re.I)
TERMINATING = "because it is being terminated"
# NB: an Event about a release whose namespace is already gone (a test's namespace deleted while
# the operator still reacts to the cascade) is refused with 404, not for want of a permission.
GONE = re.compile(r'namespaces "[^"]+" not found')
API_REQUEST = re.compile(r'"(GET|POST|PUT|PATCH|DELETE) (/apis?/[^ ?"]+)(\S*) HTTP/1\.1"')
# Permissions only Kopf uses (its requests are not logged): its watches, peering, CRD discovery,
# and the lists that start its watches. NB: a server-side apply that creates its object is
# logged as a PATCH; the "create" it also needs is not visible here.
KOPF_ONLY = {("permafrost.dev", "guardedreleases", "list")} | {
    ("", resource, "list") for resource in ("services",)
}
GUARD = "permafrost-operator-writes"  # deploy/operator-guard.yaml
REGISTRY_CHECK = "permafrost-registry-check"  # ClusterRole, bound only with --registry-check
REGISTRY_CHECK_BINDING = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRoleBinding",
    "metadata": {"name": REGISTRY_CHECK},
    "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": REGISTRY_CHECK,
    },
    "subjects": [{"kind": "ServiceAccount", "name": "permafrost", "namespace": OPERATOR_NAMESPACE}],
}
RECORD = re.compile(r"^(?=\[\d{4}-\d\d-\d\d )", re.MULTILINE)  # where a log record starts


def _identity_manifests(cluster: Cluster) -> list[dict[str, Any]]:
    rendered = cluster.kubectl("kustomize", str(ROOT / "deploy")).stdout
    return [
        d
        for d in yaml.safe_load_all(rendered)
        if d and (d["kind"] in IDENTITY_KINDS or d["metadata"]["name"] == GUARD)
    ]


def _kubeconfig_with_token(cluster: Cluster, token: str, path: pathlib.Path) -> pathlib.Path:
    """A kubeconfig holding the cluster's server and CA, and ``token``: nothing else."""
    admin = json.loads(
        cluster.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout
    )
    server = admin["clusters"][0]["cluster"]
    ca = {"certificate-authority-data": server["certificate-authority-data"]}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server["server"], **ca}}],
        "users": [{"name": "permafrost", "user": {"token": token}}],
        "contexts": [{"name": "permafrost", "context": {"cluster": "local", "user": "permafrost"}}],
        "current-context": "permafrost",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def _seed_a_certificate_to_renew(cluster: Cluster) -> None:
    """Put a serving certificate for another host into the webhook TLS Secret, keeping its CA:
    the operator must renew it in place at start-up (the Role's one permission)."""
    now = datetime.datetime.now(datetime.UTC)
    secret = cluster.get("secret", TLS_SECRET, namespace=OPERATOR_NAMESPACE)
    ca = None
    if secret is not None:
        held = certs.Bundle.from_secret_data(secret["data"])
        ca = (held.ca_cert, held.ca_key)
    bundle = certs.issue(hostnames=["elsewhere.invalid"], now=now, ca=ca)
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": TLS_SECRET, "namespace": OPERATOR_NAMESPACE},
            "data": bundle.to_secret_data(),
        }
    )


def api_calls(log: pathlib.Path) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every request the Kubernetes client logged (kube.py's;
    Kopf's own requests are not in the log)."""
    calls = set()
    for method, path, query in API_REQUEST.findall(log.read_text(errors="replace")):
        parts = path.strip("/").split("/")
        group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
        if rest[0] == "namespaces" and len(rest) >= 3:
            rest = rest[2:]
        resource = "/".join(rest[0:1] + rest[2:3])
        named = len(rest) >= 2
        if method == "GET":
            verb = "watch" if "watch=" in query else ("get" if named else "list")
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
        calls.add((group, resource, verb))
    return calls


def granted(identity: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for obj in identity
        if obj["kind"] in ("ClusterRole", "Role")
        for rule in obj["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def refusals(log: pathlib.Path) -> list[str]:
    """The records of the operator's log (a line with its traceback) that report a refusal."""
    records = RECORD.split(log.read_text(errors="replace"))
    return [r for r in records if REFUSED.search(r) and TERMINATING not in r and not GONE.search(r)]


class Deployed:
    """The operator running as its ServiceAccount, and how to check it was never refused."""

    def __init__(
        self, cluster: Cluster, operator: Operator, identity: list[dict[str, Any]]
    ) -> None:
        self.cluster, self.operator, self.identity = cluster, operator, identity

    def assert_never_refused(self) -> None:
        assert refusals(self.operator.log) == []


@pytest.fixture(scope="module")
def deployed(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    tmp = tmp_path_factory.mktemp("least-privilege")
    had_namespace = crds.get("namespace", OPERATOR_NAMESPACE) is not None
    had_peering = crds.get("clusterkopfpeering", PEERING) is not None
    had_policy = {obj: crds.get(*obj) is not None for obj in POLICY_OBJECTS}
    identity = _identity_manifests(crds)
    crds.apply(identity)
    # NB: as docs/install.md asks with --registry-check (on below: its reads are exercised too).
    crds.apply(REGISTRY_CHECK_BINDING)
    wait_for(
        lambda: (
            crds.kubectl(
                "auth", "can-i", "list", "nodes", f"--as={ACCOUNT}", check=False
            ).stdout.strip()
            == "yes"
        ),
        timeout=30,
        what="the permafrost-registry-check binding to apply",
    )
    if not had_peering:
        crds.apply(
            {
                "apiVersion": "kopf.dev/v1",
                "kind": "ClusterKopfPeering",
                "metadata": {"name": PEERING},
            }
        )
    _seed_a_certificate_to_renew(crds)
    token = crds.kubectl(
        "create", "token", "permafrost", "--duration=1h", namespace=OPERATOR_NAMESPACE
    ).stdout.strip()
    kubeconfig = _kubeconfig_with_token(crds, token, tmp / "kubeconfig")
    port = free_port()
    op = Operator(
        crds,
        None,
        tmp / "operator.log",
        extra=[
            f"--peering={PEERING}",
            f"--liveness=http://127.0.0.1:{free_port()}/healthz",
            f"--metrics-port={free_port()}",
            "--admission",
            f"--webhook-listen=127.0.0.1:{port}",
            f"--webhook-url=https://127.0.0.1:{port}",
            f"--operator-namespace={OPERATOR_NAMESPACE}",
            # NB: the scenarios' images are in no registry: open lets them through (with a
            # Warning Event), while the check reads what it needs (ServiceAccount, nodes).
            "--registry-check=open",
            "--registry-timeout=3",
        ],
        kubeconfig=kubeconfig,
    )
    op.start()
    try:
        wait_for_webhook(crds, port)
        yield Deployed(crds, op, identity)
    finally:
        stop_guarded(crds, op)
        for obj, existed in had_policy.items():
            if not existed:
                crds.kubectl("delete", *obj, "--ignore-not-found", check=False)
        if not had_peering:
            crds.kubectl("delete", "clusterkopfpeering", PEERING, "--ignore-not-found")
        crds.kubectl(
            "delete", "clusterrolebinding", REGISTRY_CHECK, "--ignore-not-found", check=False
        )
        for manifest in reversed(identity):
            if manifest["kind"] == "Namespace" and had_namespace:
                continue
            meta = manifest["metadata"]
            crds.kubectl(
                "delete",
                manifest["kind"].lower(),
                meta["name"],
                *(["-n", meta["namespace"]] if meta.get("namespace") else []),
                "--ignore-not-found",
                "--wait=false",
                check=False,
            )
        if not had_namespace:
            crds.kubectl(
                "wait", "--for=delete", f"namespace/{OPERATOR_NAMESPACE}", "--timeout=120s"
            )


@pytest.fixture
def op(deployed: Deployed, request: pytest.FixtureRequest) -> Iterator[Deployed]:
    request.node.operator_log = deployed.operator.log
    yield deployed
    deployed.assert_never_refused()


def _events(cluster: Cluster, namespace: str, *, reason: str, name: str) -> list[dict[str, Any]]:
    selector = f"reason={reason},involvedObject.name={name}"
    items: list[dict[str, Any]] = json.loads(
        cluster.kubectl(
            "get", "events", "--field-selector", selector, "-o", "json", namespace=namespace
        ).stdout
    )["items"]
    return items


def _grant_secrets(cluster: Cluster, namespace: str) -> None:
    """What docs/install.md asks for in a namespace whose releases reference Secrets."""
    cluster.kubectl(
        "create", "rolebinding", "permafrost-secrets", "--clusterrole=permafrost-secrets",
        f"--serviceaccount={OPERATOR_NAMESPACE}:permafrost", namespace=namespace,
    )  # fmt: skip
    # NB: the authorizer learns of a new binding through its cache: wait until it applies.
    wait_for(
        lambda: (
            cluster.kubectl(
                "auth",
                "can-i",
                "get",
                "secrets",
                f"--as={ACCOUNT}",
                namespace=namespace,
                check=False,
            ).stdout.strip()
            == "yes"
        ),
        timeout=30,
        what="the permafrost-secrets binding to apply",
    )


def _stable(cluster: Cluster, namespace: str, *, deadline: int = 15) -> str:
    _grant_secrets(cluster, namespace)
    cluster.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "1"}},
        namespace=namespace,
    )
    cluster.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "key"}, "data": {"k": "MQ=="}},
        namespace=namespace,
    )
    config = [{"kind": "ConfigMap", "name": "cfg"}, {"kind": "Secret", "name": "key"}]
    cluster.apply(
        release("shop", service="shop", config=config, history=1, deadline=deadline),
        namespace=namespace,
    )
    revision: str = wait_phase(cluster, namespace, "shop", "Stable")["stableRevision"]
    return revision


def _new_stable(cluster: Cluster, namespace: str, *, not_in: set[str]) -> str:
    def probe() -> str | None:
        st = status(cluster, namespace, "shop")
        revision = st.get("stableRevision")
        done = st.get("phase") == "Stable" and revision not in not_in
        return str(revision) if done else None

    return wait_for(probe, timeout=60, interval=0.5, what=f"a stable revision not in {not_in}")


# --- the scenarios --------------------------------------------------------------------------


def test_the_operator_runs_as_its_service_account_only(op: Deployed) -> None:
    kubeconfig = op.operator.kubeconfig
    assert kubeconfig is not None
    config = yaml.safe_load(kubeconfig.read_text())
    assert [set(u["user"]) for u in config["users"]] == [{"token"}]
    proc = op.cluster.kubectl("auth", "whoami", "-o", "json", f"--kubeconfig={kubeconfig}")
    assert json.loads(proc.stdout)["status"]["userInfo"]["username"] == ACCOUNT
    refused = op.cluster.kubectl(
        "create",
        "clusterrolebinding",
        "x",
        "--clusterrole=admin",
        f"--user={ACCOUNT}",
        f"--kubeconfig={kubeconfig}",
        check=False,
    )
    assert refused.returncode != 0
    assert "forbidden" in refused.stderr
    # The serving certificate seeded for another host was renewed in place, by this account.
    assert "renewed the webhook certificate" in op.operator.log.read_text()
    secret = op.cluster.get("secret", TLS_SECRET, namespace=OPERATOR_NAMESPACE)
    assert (
        certs.needs_renewal(
            certs.Bundle.from_secret_data(secret["data"]),
            hostnames=["127.0.0.1"],
            now=datetime.datetime.now(datetime.UTC),
        )
        is None
    )


def test_a_release_with_config_rolls_out_to_stable_and_on_to_a_new_revision(
    op: Deployed, namespace: str
) -> None:
    c = op.cluster
    c.kubectl("label", "namespace", namespace, "permafrost.dev/enforce=true", "--overwrite")
    first = _stable(c, namespace)
    snapshots = c.get("configmaps", namespace=namespace, selector="permafrost.dev/release=shop")
    assert snapshots["items"], "no config snapshot was made"
    c.apply(
        release(
            "shop",
            service="shop",
            config=[{"kind": "ConfigMap", "name": "cfg"}, {"kind": "Secret", "name": "key"}],
            history=1,
            digest=NEW_DIGEST,
        ),
        namespace=namespace,
    )
    second = _new_stable(c, namespace, not_in={first})
    selector = c.get("service", "shop", namespace=namespace)["spec"]["selector"]
    assert selector["permafrost.dev/revision"] == second
    # A Secret change rolls out too (the operator reads it again every 30 s, and snapshots it).
    c.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "key"}, "data": {"k": "Mg=="}},
        namespace=namespace,
    )
    _new_stable(c, namespace, not_in={first, second})


def _as_operator(op: Deployed, *args: str, namespace: str | None = None) -> Any:
    return op.cluster.kubectl(
        *args, f"--kubeconfig={op.operator.kubeconfig}", namespace=namespace, check=False
    )


def test_the_operator_s_token_cannot_mint_tokens_read_unrelated_secrets_or_touch_kube_system(
    op: Deployed, namespace: str
) -> None:
    c = op.cluster
    _grant_secrets(c, namespace)  # the most it is ever granted: Secrets in a release's namespace
    other = f"{namespace}-other"[:63]
    c.kubectl("create", "namespace", other)
    try:
        c.kubectl("create", "secret", "generic", "db", "--from-literal=password=x", namespace=other)
        refused = {
            "a token by TokenRequest": _as_operator(
                op, "create", "token", "default", namespace=namespace
            ),
            "a Secret where none is granted": _as_operator(
                op, "get", "secret", "db", namespace=other
            ),
            "every Secret of the cluster": _as_operator(op, "get", "secrets", "-A"),
            "a Secret in kube-system": _as_operator(
                op, "get", "secrets", namespace="kube-system"
            ),
            "a Deployment in kube-system": _as_operator(
                op, "create", "deployment", "x", "--image=registry.example/x" + NEW_DIGEST,
                namespace="kube-system",
            ),
        }  # fmt: skip
    finally:
        c.kubectl("delete", "namespace", other, "--wait=false", check=False)
    token_secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/service-account-token",
        "metadata": {
            "name": "stolen",
            "annotations": {"kubernetes.io/service-account.name": "default"},
            "labels": {"app.kubernetes.io/managed-by": "permafrost"},
        },
    }
    refused["a service-account token Secret"] = op.cluster.kubectl(
        "create", "-f", "-", f"--kubeconfig={op.operator.kubeconfig}", namespace=namespace,
        stdin=json.dumps(token_secret), check=False,
    )  # fmt: skip
    for what, proc in refused.items():
        assert proc.returncode != 0, f"{what}: allowed ({proc.stdout})"
        assert "forbidden" in proc.stderr.lower() or "denied" in proc.stderr.lower(), (
            what,
            proc.stderr,
        )
    assert "permafrost-operator-writes" in refused["a service-account token Secret"].stderr
    assert "permafrost-operator-writes" in refused["a Deployment in kube-system"].stderr
    assert c.get("secret", "stolen", namespace=namespace) is None


def test_a_failing_revision_is_rolled_back_automatically(op: Deployed, namespace: str) -> None:
    c = op.cluster
    stable = _stable(c, namespace, deadline=8)
    c.apply(
        release(
            "shop",
            service="shop",
            config=[{"kind": "ConfigMap", "name": "cfg"}, {"kind": "Secret", "name": "key"}],
            history=1,
            deadline=8,
            annotations={"sim.permafrost.dev/behavior": "crash-loop"},
        ),
        namespace=namespace,
    )
    st = wait_phase(c, namespace, "shop", "RolledBack", timeout=60)
    assert st["stableRevision"] == stable
    assert st["desiredRevision"] != stable
    failed = c.get("deployment", f"shop-{st['desiredRevision']}", namespace=namespace)
    wait_for(
        lambda: (
            c.get("deployment", f"shop-{st['desiredRevision']}", namespace=namespace)["spec"][
                "replicas"
            ]
            == 0
        ),
        timeout=30,
        what="the failed revision scaled to 0",
    )
    assert failed is not None
    assert _events(c, namespace, reason="RolledBack", name="shop")


def test_a_job_gate_runs_its_job_with_the_operator_s_account(op: Deployed, namespace: str) -> None:
    c = op.cluster
    body = release("gated", deadline=60)
    body["spec"]["rollout"]["gates"] = [
        {
            "name": "smoke",
            "job": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": "smoke", "image": "127.0.0.1:5000/smoke@sha256:" + "5" * 64}
                        ]
                    }
                },
                "activeDeadlineSeconds": 30,
            },
            "count": 1,
            "intervalSeconds": 1,
        }
    ]
    c.apply(body, namespace=namespace)
    # NB: on the fake nodes the Job's pod completes (kwok's stage for pods of Jobs)
    st = wait_phase(c, namespace, "gated", "Stable", timeout=90)
    record = next(r for r in st["revisions"] if r["hash"] == st["stableRevision"])
    assert [(g["name"], g["verdict"]) for g in record["gates"]] == [("smoke", "Passed")], record
    jobs = c.get("jobs", namespace=namespace, selector="permafrost.dev/gate=smoke")["items"]
    assert len(jobs) == 1, jobs


def test_an_in_place_set_image_of_a_frozen_revision_is_denied(op: Deployed, namespace: str) -> None:
    c = op.cluster
    stable = _stable(c, namespace)
    proc = c.kubectl(
        "set",
        "image",
        f"deployment/shop-{stable}",
        f"app=registry.example/shop/app{OTHER_DIGEST}",
        namespace=namespace,
        check=False,
    )
    assert proc.returncode != 0
    assert "is frozen by Permafrost" in proc.stderr
    assert "update the GuardedRelease shop instead" in proc.stderr


def _break_glass(
    cluster: Cluster, namespace: str, kind: str, name: str, *, reason: str, debug: str
) -> list[dict[str, Any]]:
    """A break-glass edit of what runs by alice (a member), through the apiserver; the
    BreakGlassUsed Events of the object, once there."""
    env = [{"name": "DEBUG", "value": debug}]
    patch = {
        "metadata": {"annotations": {"permafrost.dev/break-glass": reason}},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "env": env}]}}},
    }
    proc = cluster.kubectl(
        "patch", kind, name, "--as=alice", "--as-group=permafrost:break-glass",
        "--as-group=system:authenticated", "-p", json.dumps(patch),
        namespace=namespace, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events: list[dict[str, Any]] = wait_for(
        lambda: _events(cluster, namespace, reason="BreakGlassUsed", name=name),
        timeout=30,
        what=f"the BreakGlassUsed Event of {kind} {name}",
    )
    return events


def test_a_break_glass_use_is_let_through_and_recorded_by_the_webhook(
    op: Deployed, namespace: str
) -> None:
    c = op.cluster
    stable = _stable(c, namespace)
    c.kubectl(
        "create", "rolebinding", "oncall", "--clusterrole=edit", "--user=alice", namespace=namespace
    )
    reason = f"INC-{uuid.uuid4().hex[:6]} hotfix"
    (event, *_) = _break_glass(
        c, namespace, "deployment", f"shop-{stable}", reason=reason, debug="1"
    )
    assert reason in event["message"]
    # A revision's ReplicaSet is frozen too; its break-glass change is looked for (listed) by
    # the operator before it is recorded. (A new reason: the Deployment's is copied to it.)
    replicaset = c.get(
        "replicasets", namespace=namespace, selector=f"permafrost.dev/revision={stable}"
    )["items"][0]["metadata"]["name"]
    _break_glass(c, namespace, "replicaset", replicaset, reason=f"{reason} (rs)", debug="2")


def test_an_exec_under_a_break_glass_session_marks_the_pod_which_is_replaced_after(
    op: Deployed, namespace: str
) -> None:
    c = op.cluster
    stable = _stable(c, namespace)
    c.kubectl(
        "create", "rolebinding", "oncall", "--clusterrole=edit", "--user=alice", namespace=namespace
    )
    alice = ("--as=alice", "--as-group=permafrost:break-glass", "--as-group=system:authenticated")
    pod = wait_for(
        lambda: c.get("pods", namespace=namespace, selector=f"permafrost.dev/revision={stable}")[
            "items"
        ],
        timeout=30,
        what="a pod of the stable revision",
    )[0]["metadata"]["name"]
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    until = now + datetime.timedelta(seconds=8)
    c.kubectl(
        "annotate", "pod", pod, *alice, "permafrost.dev/session-user=alice",
        f"permafrost.dev/session-since={now:%Y-%m-%dT%H:%M:%SZ}",
        f"permafrost.dev/session-until={until:%Y-%m-%dT%H:%M:%SZ}",
        "permafrost.dev/session-reason=least privilege", namespace=namespace,
    )  # fmt: skip
    # NB: a fake node: the exec, admitted, then fails to reach a kubelet.
    proc = c.kubectl("exec", *alice, pod, "--", "true", namespace=namespace, check=False)
    assert "no preferred addresses found" in proc.stderr, proc.stderr
    wait_for(  # the operator's patch of the pod's labels
        lambda: (c.get("pod", pod, namespace=namespace)["metadata"]["labels"]).get(
            "permafrost.dev/tainted"
        ),
        timeout=30,
        what="the pod marked",
    )
    wait_for(  # the operator's delete of the pod, once the session is over
        lambda: (
            (gone := c.get("pod", pod, namespace=namespace)) is None
            or gone["metadata"].get("deletionTimestamp")
        ),
        timeout=60,
        what="the marked pod deleted",
    )


def test_workloads_in_an_enforced_namespace_are_fingerprinted(op: Deployed, namespace: str) -> None:
    c = op.cluster
    c.kubectl("label", "namespace", namespace, "permafrost.dev/enforce=true", "--overwrite")
    for kind in ("Deployment", "StatefulSet", "DaemonSet"):
        labels = {"app": kind.lower()}
        spec: dict[str, Any] = {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{"name": "app", "image": f"registry.example/app{NEW_DIGEST}"}]
                },
            },
        }
        if kind == "StatefulSet":
            spec["serviceName"] = "statefulset"
        c.create(
            {
                "apiVersion": "apps/v1",
                "kind": kind,
                "metadata": {"name": kind.lower()},
                "spec": spec,
            },
            namespace=namespace,
        )
    for kind in ("deployment", "statefulset", "daemonset"):
        wait_for(
            lambda kind=kind: (
                "permafrost.dev/template-fingerprint"
                in (c.get(kind, kind, namespace=namespace)["metadata"].get("annotations") or {})
            ),
            timeout=30,
            what=f"the fingerprint on {kind}",
        )


def test_a_revision_changed_by_someone_exempt_is_repaired(op: Deployed, namespace: str) -> None:
    c = op.cluster
    stable = _stable(c, namespace)
    name = f"shop-{stable}"
    before = c.get("deployment", name, namespace=namespace)
    image = before["spec"]["template"]["spec"]["containers"][0]["image"]
    # NB: the exempt user (the operator's own account) passes both guards: a change the guards
    # let through, as when they were down.
    proc = c.kubectl(
        "set",
        "image",
        f"deployment/{name}",
        f"app=registry.example/shop/app{OTHER_DIGEST}",
        f"--as={ACCOUNT}",
        namespace=namespace,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    wait_for(
        lambda: _events(c, namespace, reason="DriftRepaired", name="shop"),
        timeout=60,
        what="a DriftRepaired Event on the release",
    )
    repaired = wait_for(
        lambda: (
            (d := c.get("deployment", name, namespace=namespace))
            and d["metadata"]["uid"] != before["metadata"]["uid"]
            and d
        ),
        timeout=60,
        what=f"{name} re-created",
    )
    assert repaired["spec"]["template"]["spec"]["containers"][0]["image"] == image
    wait_phase(c, namespace, "shop", "Stable", timeout=60, stableRevision=stable)


def test_the_log_scan_catches_a_refusal(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "operator.log"
    log.write_text(
        "[2026-01-01 00:00:00,001] kopf: started\n"
        '[2026-01-01 00:00:00,002] HTTP response body: {"reason":"Forbidden","message":"secrets '
        'is forbidden: User \\"system:serviceaccount:permafrost-system:permafrost\\" cannot '
        'update resource"}\n'
        "[2026-01-01 00:00:00,003] could not post event RolledBack on GuardedRelease ns/shop: "
        "Forbidden\n"
        "[2026-01-01 00:00:00,004] Not enough permissions to watch for resources\n"
        "[2026-01-01 00:00:00,005] reconcile failed\nTraceback (most recent call last):\n"
        "kubernetes.client.exceptions.ForbiddenException: (403)\nReason: Forbidden\n"
        'HTTP response body: {"message":"pods \\"p\\" is forbidden: unable to create new '
        'content in namespace x because it is being terminated"}\n'
        "[2026-01-01 00:00:00,006] reconcile failed\nTraceback (most recent call last):\n"
        "kubernetes.client.exceptions.ForbiddenException: (403)\nReason: Forbidden\n"
        'HTTP response body: {"message":"deployments.apps is forbidden: User \\"x\\" cannot '
        'delete resource"}\n'
    )
    found = refusals(log)
    assert [r.split("] ")[0][-3:] for r in found] == ["002", "003", "004", "006"]


def test_a_create_stage_policy_is_compiled_into_the_apiserver_by_the_operator_s_account(
    op: Deployed,
) -> None:
    """The operator's account applies, reads back, bundles, binds and deletes a compiled
    policy, and writes its status."""
    c, name = op.cluster, "least-privilege-compiled"
    vap = f"permafrost-policy-{name}"
    policy = {
        "apiVersion": "permafrost.dev/v1alpha1",
        "kind": "GuardrailPolicy",
        "metadata": {"name": name},
        "spec": {
            "stages": ["create"],
            "match": {"kinds": ["Deployment"]},
            "rules": [{"name": "team", "expression": "has(object.metadata.labels)"}],
        },
    }

    def compiled() -> bool:
        body = c.get("guardrailpolicy", name) or {}
        return (body.get("status") or {}).get("enforcedBy") == "apiserver"

    try:
        c.apply(policy)
        wait_for(compiled, timeout=60, interval=0.5, what="the policy to be compiled")
        assert c.get("validatingadmissionpolicy", vap) is not None
        bundle = c.get("validatingadmissionpolicy", BUNDLE) or {}
        assert f"{name}/team: " in json.dumps(bundle.get("spec")), bundle
        assert c.get("validatingadmissionpolicybinding", f"{BUNDLE}-workloads") is not None
    finally:
        c.kubectl("delete", "guardrailpolicy", name, "--ignore-not-found", check=False)

    def removed() -> bool:
        bundle = c.get("validatingadmissionpolicy", BUNDLE) or {}
        return c.get("validatingadmissionpolicy", vap) is None and f"{name}/team: " not in (
            json.dumps(bundle.get("spec"))
        )

    wait_for(removed, timeout=60, interval=0.5, what="the compiled policy to be deleted")


BUNDLE = "permafrost-policies-enforce"


def test_every_permission_the_adapter_needs_was_exercised_by_the_scenarios(
    deployed: Deployed,
) -> None:
    """NB: runs after the scenarios above (file order); it checks what they made the operator do."""
    rights = granted(deployed.identity)
    used = api_calls(deployed.operator.log)
    assert used, "the operator's log shows no API request"
    assert used <= rights, f"used without a grant: {used - rights}"
    expected = {
        (group, resource, verb)
        for group, resource, verb in rights
        if verb != "watch"
        and group not in ("kopf.dev", "apiextensions.k8s.io")
        and not (group == "admissionregistration.k8s.io" and verb == "create")
    } - KOPF_ONLY
    assert expected - used == set(), "granted, but never used by the scenarios"
