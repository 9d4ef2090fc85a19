"""The registry check with the pods' own credentials and the nodes' platforms, against a real
OCI registry (distribution, tests/oci_registry.py) on loopback that requires credentials
(htpasswd): a release whose pull secret (its own, or its ServiceAccount's) holds them rolls
out; one without is held, and one whose pull secret does not exist or does not parse is held,
each with its reason in the condition and an Event, and the secret's password nowhere. An
index that lacks the nodes' platform (the cluster's nodes are linux/amd64) is held; one that
holds it rolls out.

The signatures and attestations GuardrailPolicies' ``verifyImages`` require are fetched with the
same credentials (the registry check off: only the verification asks the registry): signed and
attested in that registry, a release whose pull secret holds the credentials is verified and
rolls out, the others are held with the same reasons. And with the operator running as a
ServiceAccount of its own, granted the ClusterRole ``permafrost`` of ``deploy/`` but neither
``permafrost-secrets`` nor ``permafrost-registry-check``, a release whose pull secret it may not
read is held (``PullSecretForbidden``), one whose ServiceAccount it may not read too
(``RegistryCheckForbidden``), by the registry check and by ``verifyImages`` alike."""

from __future__ import annotations

import base64
import json
import pathlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import yaml
from test_attestations import attest, requiring
from test_least_privilege import _kubeconfig_with_token
from test_signatures import KeyPair, permafrost, policy

from conftest import Operator, release, status, wait_phase
from k8s_harness import ROOT, Cluster, condition, wait_for
from oci_registry import crane, push, serve

USER, PASSWORD = "puller", "pull-s3cret"
# NB: bcrypt (cost 4) of PASSWORD: distribution's htpasswd accepts nothing else.
HTPASSWD = f"{USER}:$2b$04$tXI/pD/qYJoSBNxxpjyDpu62j3KjhdHnevP.FOKKZc64EgsaE6RZO\n"


@pytest.fixture
def operator_args() -> Sequence[str]:
    return ("--registry-check", "closed")


@pytest.fixture(scope="module")
def private_registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, pathlib.Path]]:
    """A registry that requires USER/PASSWORD; yields its HOST:PORT and a Docker config
    directory that holds them (for crane to push with)."""
    home = tmp_path_factory.mktemp("private-registry")
    with serve(home, htpasswd=HTPASSWD) as host:
        config = home / "docker"
        config.mkdir()
        (config / "config.json").write_text(json.dumps(_auths(host, PASSWORD)))
        yield host, config


def _auths(host: str, password: str) -> dict[str, Any]:
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    return {"auths": {host: {"auth": auth}}}


def _pull_secret(name: str, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    }


@pytest.fixture
def policies(crds: Cluster) -> Iterator[list[str]]:
    """Names of the GuardrailPolicies a test creates; deleted afterwards (they are global)."""
    created: list[str] = []
    yield created
    for name in created:
        crds.kubectl("delete", "guardrailpolicy", name, "--ignore-not-found", check=False)


def _account(name: str, *secrets: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name},
        "imagePullSecrets": [{"name": s} for s in secrets],
    }


def _release(name: str, image: str, *, secrets: Sequence[str] = (), **pod: Any) -> dict[str, Any]:
    manifest = release(name, image=image, digest="")
    spec = manifest["spec"]["template"]["spec"]
    if secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in secrets]
    spec.update(pod)
    return manifest


def _held(cluster: Cluster, namespace: str, name: str, reason: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        st = status(cluster, namespace, name)
        compliant = condition({"status": st}, "PolicyCompliant")
        ok = st.get("phase") == "Held" and compliant and compliant["reason"] == reason
        return dict(compliant) if ok and compliant else None

    return wait_for(found, timeout=60, interval=0.5, what=f"{name} held ({reason})")


def _event_messages(cluster: Cluster, namespace: str, reason: str) -> str:
    return cluster.kubectl(
        "get", "events", "--field-selector",
        f"reason={reason},involvedObject.kind=GuardedRelease",
        "-o", "jsonpath={.items[*].message}", namespace=namespace,
    ).stdout  # fmt: skip


def _revisions(cluster: Cluster, namespace: str, name: str) -> list[str]:
    found = cluster.get(
        "deployments", namespace=namespace, selector=f"permafrost.dev/release={name}"
    )
    return [d["metadata"]["name"] for d in found["items"]]


def test_a_release_pulls_with_its_pods_pull_secrets_and_is_held_without_usable_ones(
    crds: Cluster,
    namespace: str,
    private_registry: tuple[str, pathlib.Path],
    operator: Operator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host, docker_config = private_registry
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config))
    repo = f"{host}/shop/private"
    image = f"{repo}@{push(f'{repo}:v1', b'private v1')}"
    crds.apply(_pull_secret("regcred", _auths(host, PASSWORD)), namespace=namespace)
    # Valid JSON (the apiserver checks that much), but its auth is not base64 user:password.
    crds.apply(
        _pull_secret("broken", {"auths": {host: {"auth": "not base64!"}}}), namespace=namespace
    )
    crds.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "puller"},
            "imagePullSecrets": [{"name": "regcred"}],
        },
        namespace=namespace,
    )
    crds.apply(_release("with", image, secrets=["regcred"]), namespace=namespace)
    crds.apply(_release("account", image, serviceAccountName="puller"), namespace=namespace)
    crds.apply(_release("without", image), namespace=namespace)
    crds.apply(_release("missing", image, secrets=["nosuch"]), namespace=namespace)
    crds.apply(_release("broken", image, secrets=["broken"]), namespace=namespace)

    wait_phase(crds, namespace, "with", "Stable", timeout=90)
    wait_phase(crds, namespace, "account", "Stable", timeout=90)
    without = _held(crds, namespace, "without", "RegistryUnauthorized")
    assert f"{image}: {host} needs credentials" in without["message"]
    missing = _held(crds, namespace, "missing", "PullSecretMissing")
    assert f"the image pull secret {namespace}/nosuch does not exist" in missing["message"]
    broken = _held(crds, namespace, "broken", "PullSecretInvalid")
    assert f"Secret {namespace}/broken: the auth of '{host}' is not base64" in broken["message"]
    for reason, says in (
        ("RegistryUnauthorized", "needs credentials"),
        ("PullSecretMissing", "nosuch does not exist"),
        ("PullSecretInvalid", "is not base64"),
    ):
        assert says in _event_messages(crds, namespace, reason), reason
    for name in ("without", "missing", "broken"):
        assert _revisions(crds, namespace, name) == [], name
    # permafrost status says why each is held.
    shown = subprocess.run(
        [sys.executable, "-m", "permafrost", "status", "-n", namespace],
        env=crds.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    for reason in ("RegistryUnauthorized", "PullSecretMissing", "PullSecretInvalid"):
        assert reason in shown, shown
    # The secret's password is in no condition or Event.
    everything = (
        json.dumps(crds.get("guardedreleases", namespace=namespace))
        + crds.kubectl("get", "events", "-o", "json", namespace=namespace).stdout
    )
    assert PASSWORD not in everything
    assert base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in everything

    # The missing Secret is created: the held release is looked at again and rolls out.
    crds.apply(_pull_secret("nosuch", _auths(host, PASSWORD)), namespace=namespace)
    wait_phase(crds, namespace, "missing", "Stable", timeout=90)
    # A pull secret with the wrong password (a verdict cached for the right one must not
    # answer for it): refused by the registry.
    crds.apply(_pull_secret("wrong", _auths(host, "not-the-password")), namespace=namespace)
    crds.apply(_release("wrong", image, secrets=["wrong"]), namespace=namespace)
    wrong = _held(crds, namespace, "wrong", "RegistryUnauthorized")
    assert "the registry refused the credentials" in wrong["message"]


def test_an_index_without_the_nodes_platform_is_held(
    crds: Cluster, namespace: str, registry_host: str, operator: Operator
) -> None:
    nodes = crds.kubectl(
        "get", "nodes", "-o", "jsonpath={.items[*].status.nodeInfo.architecture}"
    ).stdout.split()
    assert set(nodes) == {"amd64"}, f"the test expects linux/amd64 nodes only: {nodes}"
    repo = f"{registry_host}/shop/multi"
    push(f"{repo}:arm64", b"arm64 build", platform="linux/arm64")
    push(f"{repo}:amd64", b"amd64 build", platform="linux/amd64")
    crane("index", "append", "-m", f"{repo}:arm64", "-t", f"{repo}:arm-only")
    crane("index", "append", "-m", f"{repo}:arm64", "-m", f"{repo}:amd64", "-t", f"{repo}:both")
    arm_only = f"{repo}@{crane('digest', f'{repo}:arm-only')}"
    both = f"{repo}@{crane('digest', f'{repo}:both')}"
    crds.apply(_release("arm-only", arm_only), namespace=namespace)
    crds.apply(_release("both", both), namespace=namespace)

    wait_phase(crds, namespace, "both", "Stable", timeout=90)
    held = _held(crds, namespace, "arm-only", "ImagePlatformMissing")
    assert (
        f"{arm_only}: the image is built for linux/arm64; the nodes it may run on are linux/amd64"
        in held["message"]
    )
    assert "is built for linux/arm64" in _event_messages(crds, namespace, "ImagePlatformMissing")
    assert _revisions(crds, namespace, "arm-only") == []


def test_signatures_and_attestations_are_fetched_with_the_pods_pull_secrets(
    crds: Cluster,
    namespace: str,
    private_registry: tuple[str, pathlib.Path],
    policies: list[str],
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    host, docker_config = private_registry
    # NB: crane and permafrost sign/check push with these credentials (DOCKER_CONFIG).
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config))
    repo = f"{host}/{namespace}/app"
    digest = push(f"{repo}:v1", b"signed and attested, in a private registry")
    image = f"{repo}@{digest}"
    bare = f"{repo}@{push(f'{repo}:bare', b'in a private registry, never signed')}"
    signer = KeyPair(tmp_path, "ci")
    signed = permafrost("sign", image, "--key", str(signer.private))
    assert signed.returncode == 0, signed.stderr
    attested = attest(tmp_path, f"{repo}:v1@{digest}", signer)
    assert attested.returncode == 0, attested.stdout + attested.stderr
    name = f"private-{namespace}"
    crds.apply(requiring(name, [f"{host}/{namespace}/*"], signer, stages=["create"]))
    policies.append(name)
    crds.apply(_pull_secret("regcred", _auths(host, PASSWORD)), namespace=namespace)
    crds.apply(_pull_secret("wrong", _auths(host, "not-the-password")), namespace=namespace)
    crds.apply(
        _pull_secret("broken", {"auths": {host: {"auth": "not base64!"}}}), namespace=namespace
    )
    crds.apply(_account("puller", "regcred"), namespace=namespace)
    # NB: the registry check is off: only the verification of signatures asks the registry,
    # and the operator-wide config holds no credentials for it.
    op = Operator(crds, namespace, tmp_path / "operator.log")
    request.node.operator_log = op.log
    op.start()
    try:
        crds.apply(_release("with", image, secrets=["regcred"]), namespace=namespace)
        crds.apply(_release("account", image, serviceAccountName="puller"), namespace=namespace)
        crds.apply(_release("bare", bare, secrets=["regcred"]), namespace=namespace)
        crds.apply(_release("without", image), namespace=namespace)
        crds.apply(_release("missing", image, secrets=["nosuch"]), namespace=namespace)
        crds.apply(_release("broken", image, secrets=["broken"]), namespace=namespace)

        wait_phase(crds, namespace, "with", "Stable", timeout=90)
        wait_phase(crds, namespace, "account", "Stable", timeout=90)
        # With the credentials, the registry's real answer about an image never signed.
        unsigned = _held(crds, namespace, "bare", "ImageNotSigned")
        assert f"{name}/ci-approved: {bare}: no signature" in unsigned["message"]
        without = _held(crds, namespace, "without", "RegistryUnauthorized")
        assert f"{name}/ci-approved: {image}" in without["message"]
        assert f"{host} needs credentials" in without["message"]
        missing = _held(crds, namespace, "missing", "PullSecretMissing")
        assert (
            f"{image}: not verified: the image pull secret {namespace}/nosuch does not exist"
            in missing["message"]
        )
        broken = _held(crds, namespace, "broken", "PullSecretInvalid")
        assert f"Secret {namespace}/broken: the auth of '{host}' is not base64" in broken["message"]
        for reason, says in (
            ("RegistryUnauthorized", "needs credentials"),
            ("PullSecretMissing", "nosuch does not exist"),
            ("PullSecretInvalid", "is not base64"),
            ("ImageNotSigned", "no signature"),
        ):
            assert says in _event_messages(crds, namespace, reason), reason
        for held_name in ("bare", "without", "missing", "broken"):
            assert _revisions(crds, namespace, held_name) == [], held_name
        # A pull secret with the wrong password: the verdict the right one earned (cached) does
        # not answer for it.
        crds.apply(_release("wrong", image, secrets=["wrong"]), namespace=namespace)
        wrong = _held(crds, namespace, "wrong", "RegistryUnauthorized")
        assert "the registry refused the credentials" in wrong["message"]
        assert _revisions(crds, namespace, "wrong") == []
        everything = (
            json.dumps(crds.get("guardedreleases", namespace=namespace))
            + crds.kubectl("get", "events", "-o", "json", namespace=namespace).stdout
        )
        assert PASSWORD not in everything
        # The missing Secret is created: looked at again within seconds, verified, rolled out.
        crds.apply(_pull_secret("nosuch", _auths(host, PASSWORD)), namespace=namespace)
        wait_phase(crds, namespace, "missing", "Stable", timeout=90)
    finally:
        op.stop()


# --- the grants the reads need, withheld: the operator as a ServiceAccount of its own -----------


def _restricted_operator(
    crds: Cluster, namespace: str, tmp: pathlib.Path, extra: Sequence[str]
) -> tuple[Operator, list[tuple[str, str]]]:
    """The operator watching ``namespace`` as ServiceAccount ``operator`` there, bound (with a
    ClusterRoleBinding) to a copy of ``deploy/``'s ClusterRole ``permafrost`` and nothing else:
    no ``permafrost-secrets``, no ``permafrost-registry-check``. Returns it (not started) and
    the cluster-scoped objects made for it, to delete afterwards."""
    rendered = crds.kubectl("kustomize", str(ROOT / "deploy")).stdout
    (role,) = (
        d
        for d in yaml.safe_load_all(rendered)
        if d and d["kind"] == "ClusterRole" and d["metadata"]["name"] == "permafrost"
    )
    name = f"permafrost-{namespace}"
    account = f"system:serviceaccount:{namespace}:operator"
    crds.apply({**role, "metadata": {"name": name}})
    made = [("clusterrole", name)]
    crds.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "operator"}},
        namespace=namespace,
    )
    crds.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": namespace}],
        }
    )
    made.append(("clusterrolebinding", name))

    def can(verb: str, resource: str) -> bool:
        said = crds.kubectl(
            "auth", "can-i", verb, resource, f"--as={account}", namespace=namespace, check=False
        ).stdout.strip()
        return said == "yes"

    wait_for(
        lambda: can("list", "guardedreleases.permafrost.dev"),
        timeout=30,
        what="the operator's binding to apply",
    )
    # What this test is about: the reads the registry check and verifyImages need are not
    # granted.
    for verb, resource in (("get", "secrets"), ("get", "serviceaccounts"), ("list", "nodes")):
        assert not can(verb, resource), f"{account} may {verb} {resource}"
    token = crds.kubectl(
        "create", "token", "operator", "--duration=1h", namespace=namespace
    ).stdout.strip()
    kubeconfig = _kubeconfig_with_token(crds, token, tmp / "kubeconfig")
    operator = Operator(crds, namespace, tmp / "operator.log", extra=extra, kubeconfig=kubeconfig)
    return operator, made


@pytest.mark.parametrize("asks", ["registry-check", "verifyImages"])
def test_pull_secrets_and_service_accounts_the_operator_may_not_read_hold_the_release(
    crds: Cluster,
    namespace: str,
    policies: list[str],
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
    asks: str,
) -> None:
    # NB: nothing is asked of a registry here (the credentials cannot be had): no registry.
    image = f"registry.example/{namespace}/app@sha256:" + "5" * 64
    if asks == "verifyImages":
        name = f"signed-{namespace}"
        crds.apply(
            policy(
                name, [f"registry.example/{namespace}/*"], KeyPair(tmp_path, "k"), stages=["create"]
            )
        )
        policies.append(name)
    extra = ["--registry-check", "closed"] if asks == "registry-check" else []
    op, made = _restricted_operator(crds, namespace, tmp_path, extra)
    request.node.operator_log = op.log
    crds.apply(_pull_secret("regcred", _auths("registry.example", PASSWORD)), namespace=namespace)
    op.start()
    try:
        crds.apply(_release("named", image, secrets=["regcred"]), namespace=namespace)
        crds.apply(_release("account", image), namespace=namespace)
        named = _held(crds, namespace, "named", "PullSecretForbidden")
        assert (
            f"the operator may not read the image pull secret {namespace}/regcred"
            in named["message"]
        )
        assert "bind the ClusterRole permafrost-secrets in its namespace" in named["message"]
        assert "permafrost-secrets" in _event_messages(crds, namespace, "PullSecretForbidden")
        if asks == "registry-check":
            account = _held(crds, namespace, "account", "RegistryCheckForbidden")
            assert (
                f"the operator may not read ServiceAccount {namespace}/default"
                in account["message"]
            )
            assert "bind the ClusterRole permafrost-registry-check" in account["message"]
            assert "permafrost-registry-check" in _event_messages(
                crds, namespace, "RegistryCheckForbidden"
            )
        else:
            # Signatures: a ServiceAccount the operator may not read leaves the operator-wide
            # credentials (none here), which reach for the registry: it cannot be reached.
            account = _held(crds, namespace, "account", "RegistryUnreachable")
            assert "ServiceAccount" not in account["message"]
        for held_name in ("named", "account"):
            assert _revisions(crds, namespace, held_name) == [], held_name
    finally:
        op.stop()
        for kind, name in made:
            crds.kubectl("delete", kind, name, "--ignore-not-found", check=False)
