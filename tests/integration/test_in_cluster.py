"""Permafrost installed as users install it, on the real node: the operator image built from the
Dockerfile by BuildKit (``make image``), then ``kubectl apply -k`` of ``deploy/`` with the image
overridden by digest, two real replicas serving the webhooks through their Service.

The image is built by ``hack/operator-image.sh`` (a few seconds with BuildKit's cache, minutes
cold) and pushed to the node's registry; the install is an overlay of ``deploy/`` written for
the test, as a platform team would write theirs. No operator runs outside the cluster here.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from cryptography import x509
from test_high_availability import ACTION, CreationRecorder

from conftest import (
    CRDS,
    OPERATOR_NAMESPACE,
    WEBHOOK_CONFIGURATION,
    Background,
    release,
    status,
    wait_established,
    wait_phase,
)
from k8s_harness import ROOT, Cluster, RealNode, _versions, cache_root, to_yaml, wait_for
from permafrost.guards import certs

pytestmark = pytest.mark.real_node

IMAGE = "ghcr.io/permafrost-dev/permafrost"
SELECTOR = "app.kubernetes.io/name=permafrost,app.kubernetes.io/component=operator"
POLICY_NAME = "permafrost-frozen-workloads"
VERSION = next(
    line.split('"')[1]
    for line in (ROOT / "pyproject.toml").read_text().splitlines()
    if line.startswith("version = ")
)
# How long the image build may take: cold (an empty BuildKit cache and no base root filesystem:
# mmdebstrap, then pip wheel of every dependency) a few minutes; warm, seconds.
BUILD_TIMEOUT = 1200
# deploy/operator.yaml: permafrost run's default peering lifetime, and the liveness probe's
# period times its failure threshold, plus its timeout.
PEERING_LIFETIME = 60
LIVENESS_WINDOW = 20 * 3 + 5


def crane() -> str:
    """The crane that ``hack/build-binaries.sh node`` built."""
    path = cache_root() / f"crane-{_versions()['CRANE_VERSION']}" / "bin" / "crane"
    assert path.exists(), f"{path} is missing: run hack/build-binaries.sh node"
    return str(path)


@pytest.fixture(scope="module")
def operator_image(real_node: RealNode) -> str:
    """``make image``: the operator image, built from the Dockerfile and pushed to the node's
    registry; its pinned reference, ``127.0.0.1:5000/permafrost@sha256:...``."""
    proc = subprocess.run(
        [str(ROOT / "hack" / "operator-image.sh"), "build"],
        capture_output=True,
        text=True,
        check=False,
        timeout=BUILD_TIMEOUT,
    )
    assert proc.returncode == 0, f"hack/operator-image.sh build failed:\n{proc.stderr[-3000:]}"
    ref = proc.stdout.strip()
    assert ref.startswith(f"{real_node.registry}/permafrost@sha256:"), ref
    return ref


def run_pod(
    cluster: Cluster, namespace: str, real_node: RealNode, name: str, container: dict[str, Any]
) -> str:
    """Run one container to completion on the real node; return its log (it must succeed)."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": real_node.schedule(
            {
                "restartPolicy": "Never",
                # NB: no runAsUser: the kubelet checks the image's own USER is not root.
                "securityContext": {"runAsNonRoot": True},
                "containers": [{"name": "main", **container}],
            }
        ),
    }
    cluster.apply(pod, namespace=namespace)
    phase = wait_for(
        lambda: (
            p
            if (
                p := (cluster.get("pod", name, namespace=namespace) or {})
                .get("status", {})
                .get("phase")
            )
            in ("Succeeded", "Failed")
            else None
        ),
        timeout=120,
        interval=0.5,
        what=f"pod {name} to finish",
    )
    log = cluster.kubectl("logs", name, namespace=namespace).stdout
    assert phase == "Succeeded", f"pod {name}: {phase}\n{log}"
    return log


def test_the_image_built_from_the_dockerfile_runs_the_cli_as_its_non_root_user(
    cluster: Cluster, namespace: str, real_node: RealNode, operator_image: str
) -> None:
    config = json.loads(
        subprocess.run(
            [crane(), "config", "--insecure", operator_image],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    )["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["permafrost"]
    assert config["Cmd"][0] == "run"

    version = run_pod(
        cluster, namespace, real_node, "version", {"image": operator_image, "args": ["--version"]}
    )
    assert version.strip() == f"permafrost {VERSION}"
    usage = run_pod(
        cluster,
        namespace,
        real_node,
        "run-help",
        {"image": operator_image, "args": ["run", "--help"]},
    )
    assert usage.startswith("usage: permafrost run")
    assert "--webhook-service" in usage
    ids = run_pod(
        cluster,
        namespace,
        real_node,
        "whoami",
        {
            "image": operator_image,
            "command": ["python3", "-c", "import os; print(os.getuid(), os.getgid())"],
        },
    )
    assert ids.split() == ["65532", "65532"]


# --- kubectl apply -k: deploy/ with the image overridden by digest ------------------------------


def overlay(directory: pathlib.Path, image: str, real_node: RealNode) -> pathlib.Path:
    """A platform team's overlay of ``deploy/``: the image by digest from its own registry, the
    pods on the real node, and the trusted-registries list edited to hold that registry, as
    docs/install.md says to. Returns the overlay's directory."""
    repository, digest = image.split("@", 1)
    trusted = (ROOT / "deploy" / "policies" / "permafrost-trusted-registries.yaml").read_text()
    edited = trusted.replace(
        "|| i[1].startsWith('ghcr.io/permafrost/')",
        f"|| i[1].startsWith('ghcr.io/permafrost/') || i[1].startsWith('{real_node.registry}/')",
    )
    assert edited.count(f"'{real_node.registry}/'") == 2, "the policy's list changed its form"
    placement = real_node.schedule({})
    on_the_node = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "permafrost", "namespace": OPERATOR_NAMESPACE},
        "spec": {"template": {"spec": placement}},
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "trusted-registries.yaml").write_text(edited)
    (directory / "on-the-real-node.yaml").write_text(to_yaml(on_the_node))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(ROOT / "deploy", directory)],
        "images": [{"name": IMAGE, "newName": repository, "digest": digest}],
        "patches": [{"path": "on-the-real-node.yaml"}, {"path": "trusted-registries.yaml"}],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return directory


def operator_pods(cluster: Cluster) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = cluster.get(
        "pods", namespace=OPERATOR_NAMESPACE, selector=SELECTOR
    )["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def pod_log(cluster: Cluster, pod: str) -> str:
    return cluster.kubectl("logs", pod, namespace=OPERATOR_NAMESPACE, check=False).stdout


def peering_state(log: str) -> str | None:
    """What the replica's log last said about the peering: "active", "standby" or None."""
    state = None
    for line in log.splitlines():
        if "this replica is active" in line:
            state = "active"
        elif "another replica is active; standing by" in line:
            state = "standby"
    return state


class Installation:
    """The installed operator: its overlay, its image, and the logs of every replica container
    that ran (``kubectl logs -f`` of each, from :meth:`follow` on, until it exits)."""

    def __init__(
        self, cluster: Cluster, overlay: pathlib.Path, image: str, logs: pathlib.Path
    ) -> None:
        self.cluster, self.overlay, self.image, self.logs_dir = cluster, overlay, image, logs
        self._followers: dict[str, subprocess.Popen[bytes]] = {}

    def follow(self) -> None:
        """Follow the log of every replica container not followed yet."""
        for pod in operator_pods(self.cluster):
            name = pod["metadata"]["name"]
            for state in pod.get("status", {}).get("containerStatuses") or []:
                if "running" not in state.get("state", {}):
                    continue
                key = f"{name}.{state['restartCount']}"
                if key in self._followers:
                    continue
                with (self.logs_dir / f"{key}.log").open("wb") as out:
                    self._followers[key] = subprocess.Popen(
                        ["kubectl", "logs", "-f", name, "-n", OPERATOR_NAMESPACE],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=self.cluster.env,
                    )

    def logs(self) -> dict[str, str]:
        """Every followed container's log so far: ``<pod>.<restart count>`` -> text."""
        return {
            key: (self.logs_dir / f"{key}.log").read_text(errors="replace")
            for key in self._followers
        }

    def stop_following(self) -> None:
        for proc in self._followers.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)

    def apply(self) -> None:
        self.cluster.kubectl("apply", "-k", str(self.overlay), timeout=120)

    def set_image(self, image: str) -> None:
        """Point the overlay at ``image`` (by digest) and apply it: an upgrade, as users do it."""
        path = self.overlay / "kustomization.yaml"
        kustomization = yaml.safe_load(path.read_text())
        repository, digest = image.split("@", 1)
        kustomization["images"] = [{"name": IMAGE, "newName": repository, "digest": digest}]
        path.write_text(yaml.safe_dump(kustomization, sort_keys=False))
        self.apply()

    def set_args(self, extra: list[str]) -> None:
        """Add ``extra`` to the operator's arguments through the overlay (none: as deployed),
        and apply it."""
        path = self.overlay / "kustomization.yaml"
        kustomization = yaml.safe_load(path.read_text())
        patches = [p for p in kustomization["patches"] if p.get("path") != "extra-args.yaml"]
        if extra:
            ops = [
                {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": arg}
                for arg in extra
            ]
            (self.overlay / "extra-args.yaml").write_text(yaml.safe_dump(ops))
            target = {"kind": "Deployment", "name": "permafrost"}
            patches.append({"path": "extra-args.yaml", "target": target})
        kustomization["patches"] = patches
        path.write_text(yaml.safe_dump(kustomization, sort_keys=False))
        self.apply()

    def mount_tls(self, secret: str | None, path: str) -> None:
        """Mount ``secret`` at ``path`` and serve with ``--tls-dir`` through the overlay, as
        docs/install.md says (``None``: as deployed), and apply it."""
        where = self.overlay / "kustomization.yaml"
        kustomization = yaml.safe_load(where.read_text())
        patches = [p for p in kustomization["patches"] if p.get("path") != "tls-mount.yaml"]
        if secret is not None:
            ops = [
                {"op": "add", "path": "/spec/template/spec/volumes/-",
                 "value": {"name": "tls", "secret": {"secretName": secret}}},
                {"op": "add", "path": "/spec/template/spec/containers/0/volumeMounts/-",
                 "value": {"name": "tls", "mountPath": path, "readOnly": True}},
                {"op": "add", "path": "/spec/template/spec/containers/0/args/-",
                 "value": f"--tls-dir={path}"},
            ]  # fmt: skip
            (self.overlay / "tls-mount.yaml").write_text(yaml.safe_dump(ops))
            target = {"kind": "Deployment", "name": "permafrost"}
            patches.append({"path": "tls-mount.yaml", "target": target})
        kustomization["patches"] = patches
        where.write_text(yaml.safe_dump(kustomization, sort_keys=False))
        self.apply()

    def rolled_out(self, timeout: int = 240) -> None:
        self.cluster.kubectl(
            "rollout", "status", "deployment/permafrost", f"--timeout={timeout}s",
            namespace=OPERATOR_NAMESPACE, timeout=timeout + 30,
        )  # fmt: skip

    def uninstall(self) -> None:
        """docs/install.md's uninstall: ``kubectl delete -k`` and the operator's own webhook
        configuration."""
        self.cluster.kubectl("delete", "-k", str(self.overlay), "--ignore-not-found", "--wait=true",
                             timeout=180, check=False)  # fmt: skip
        self.cluster.kubectl("delete", "validatingwebhookconfiguration", WEBHOOK_CONFIGURATION,
                             "--ignore-not-found", check=False)  # fmt: skip


@pytest.fixture(scope="module")
def installed(
    crds: Cluster,
    real_node: RealNode,
    operator_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Installation]:
    """Permafrost installed as docs/install.md says (CRDs, waits, ``kubectl apply -k``), from an
    overlay that pins the image built here by digest; rolled out. Uninstalled afterwards."""
    cluster = crds
    existed = cluster.get("namespace", OPERATOR_NAMESPACE) is not None
    if existed:
        # NB: another module's session fixture made the namespace for its local operators; the
        # install owns it while it runs (a stale TLS Secret there would be reused as is).
        cluster.kubectl("delete", "secret", "permafrost-webhook-tls", "--ignore-not-found",
                        namespace=OPERATOR_NAMESPACE, check=False)  # fmt: skip
    cluster.kubectl("apply", "-k", str(ROOT / "crds"))
    wait_established(
        cluster,
        "crd/guardedreleases.permafrost.dev",
        "crd/guardrailpolicies.permafrost.dev",
        "crd/clusterkopfpeerings.kopf.dev",
    )
    install = Installation(
        cluster,
        overlay(tmp_path_factory.mktemp("overlay"), operator_image, real_node),
        operator_image,
        tmp_path_factory.mktemp("replica-logs"),
    )
    install.apply()
    try:
        install.rolled_out()
        install.follow()
        yield install
    finally:
        install.stop_following()
        install.uninstall()
        wait_for(
            lambda: cluster.get("namespace", OPERATOR_NAMESPACE) is None,
            timeout=120,
            what=f"namespace {OPERATOR_NAMESPACE} gone",
        )
        if existed:
            cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
        # NB: the uninstall deleted the CRDs (deploy/ holds them); the session's other modules
        # had them installed once (the crds fixture) and expect them still.
        for crd in CRDS:
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
        wait_established(
            cluster,
            "crd/guardedreleases.permafrost.dev",
            "crd/guardrailpolicies.permafrost.dev",
            "crd/clusterkopfpeerings.kopf.dev",
            "crd/kopfpeerings.kopf.dev",
        )


def test_kubectl_apply_k_runs_two_ready_replicas_one_active_serving_webhooks_through_the_service(
    installed: Installation, real_node: RealNode
) -> None:
    cluster = installed.cluster
    digest = installed.image.split("@", 1)[1]
    pods = operator_pods(cluster)
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] == real_node.name
        assert pod["status"]["phase"] == "Running"
        assert ready(pod), pod["status"]
        (container,) = pod["spec"]["containers"]
        assert container["image"] == installed.image
        (state,) = pod["status"]["containerStatuses"]
        assert state["imageID"].endswith(digest), state["imageID"]
        # The ServiceAccount's projected token, nothing else, talks to the apiserver.
        assert pod["spec"]["serviceAccountName"] == "permafrost"

    # Peering: one replica active, the other standing by.
    names = [p["metadata"]["name"] for p in pods]
    states = wait_for(
        lambda: (
            s
            if sorted(s := [peering_state(pod_log(cluster, n)) for n in names])
            == ["active", "standby"]
            else None
        ),
        timeout=60,
        interval=1,
        what="one replica active and one standing by",
    )
    assert sorted(states) == ["active", "standby"]

    # The webhooks: reached through the Service, with Permafrost's own CA.
    config = cluster.get("validatingwebhookconfiguration", WEBHOOK_CONFIGURATION)
    assert config is not None, "the operator did not apply its webhook configuration"
    secret = cluster.get("secret", "permafrost-webhook-tls", namespace=OPERATOR_NAMESPACE)
    ca = secret["data"]["ca.crt"]
    for hook in config["webhooks"]:
        client = hook["clientConfig"]
        assert "url" not in client
        assert client["service"]["namespace"] == OPERATOR_NAMESPACE
        assert client["service"]["name"] == "permafrost-webhook"
        assert client["service"]["port"] == 443
        assert client["caBundle"] == ca
    assert_served_by_the_ca(secret)
    endpoints = cluster.get("endpointslices", namespace=OPERATOR_NAMESPACE,
                            selector="kubernetes.io/service-name=permafrost-webhook")  # fmt: skip
    addresses = {
        a for s in endpoints["items"] for e in s.get("endpoints") or [] for a in e["addresses"]
        if (e.get("conditions") or {}).get("ready")
    }  # fmt: skip
    assert addresses == {p["status"]["podIP"] for p in pods}
    # A policy that does not compile: only the webhook can refuse it (the fail-safe policy knows
    # no GuardrailPolicies), and the apiserver reaches the webhook only through the Service.
    broken = {
        "apiVersion": "permafrost.dev/v1alpha1",
        "kind": "GuardrailPolicy",
        "metadata": {"name": "does-not-compile"},
        "spec": {"stages": ["create"], "rules": [{"name": "x", "expression": "(", "message": "x"}]},
    }
    proc = cluster.create(broken, check=False)
    assert proc.returncode != 0
    assert 'admission webhook "policies.permafrost.dev" denied the request' in proc.stderr

    # The fail-safe policy, applied by the operator at start-up (its field manager) as well as
    # by kubectl, and the built-in policies.
    policy = json.loads(
        cluster.kubectl(
            "get", "validatingadmissionpolicy", POLICY_NAME, "--show-managed-fields", "-o", "json"
        ).stdout
    )
    managers = {m["manager"] for m in policy["metadata"]["managedFields"]}
    assert "permafrost" in managers, managers
    for suffix in ("managed", "enforced", "unenforced"):
        assert cluster.get("validatingadmissionpolicybinding", f"{POLICY_NAME}-{suffix}")
    builtin = {p.stem for p in (ROOT / "deploy" / "policies").glob("permafrost-*.yaml")}
    names_there = {
        p["metadata"]["name"] for p in cluster.get("guardrailpolicies")["items"]
    }  # fmt: skip
    assert builtin <= names_there


def assert_served_by_the_ca(secret: dict[str, Any]) -> None:
    """The serving certificate is issued by the Secret's CA, for the webhook Service's name."""
    from cryptography import x509

    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"permafrost-webhook.{OPERATOR_NAMESPACE}.svc" in names.get_values_for_type(x509.DNSName)


def web(image: str, real_node: RealNode, *, limits: bool = True) -> dict[str, Any]:
    """The demo app as a GuardedRelease on the real node, meeting the built-in policies."""
    manifest = release("web", service="web", deadline=60, min_ready=2, scale_down_delay=2)
    container: dict[str, Any] = {
        "name": "app",
        "image": image,
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
        "securityContext": {
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
        },
    }
    if limits:
        container["resources"] = {"limits": {"cpu": "200m", "memory": "64Mi"}}
    manifest["spec"]["template"]["spec"] = real_node.schedule({"containers": [container]})
    return manifest


def answer(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=3) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body


def test_a_guarded_release_rolls_out_and_frozen_edits_are_denied_by_the_installed_operator(
    installed: Installation, namespace: str, real_node: RealNode, demo_images: dict[str, str]
) -> None:
    cluster = installed.cluster
    cluster.kubectl("label", "namespace", namespace, "permafrost.dev/enforce=true")

    # The built-in policies are loaded: an image from a registry not on the trusted list is
    # refused at once (Enforce); a container without limits is admitted with a warning (Warn).
    def dry_run(manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=to_yaml(manifest),
                               namespace=namespace, check=False)  # fmt: skip

    refused = dry_run(web("registry.untrusted.example/app@sha256:" + "1" * 64, real_node))
    assert refused.returncode != 0, refused.stdout
    # NB: by the policy compiled into the apiserver, or by the webhook until it is compiled.
    assert (
        "ValidatingAdmissionPolicy 'permafrost-policies-enforce'" in refused.stderr
        or 'admission webhook "releases.permafrost.dev" denied the request' in refused.stderr
    ), refused.stderr
    assert "permafrost-trusted-registries/trusted-registry" in refused.stderr
    warned = dry_run(web(demo_images["v1"], real_node, limits=False))
    assert warned.returncode == 0, warned.stderr
    assert "permafrost-resource-limits" in warned.stderr

    cluster.apply(web(demo_images["v1"], real_node), namespace=namespace)
    stable = wait_phase(cluster, namespace, "web", "Stable", timeout=120)["stableRevision"]
    service = cluster.get("service", "web", namespace=namespace)
    assert answer(f"http://{service['spec']['clusterIP']}/")["version"] == "v1"
    (revision,) = cluster.get(
        "deployments", namespace=namespace, selector=f"permafrost.dev/revision={stable}"
    )["items"]
    name = revision["metadata"]["name"]
    edit = ("set", "image", f"deployment/{name}", f"app={demo_images['v2']}")

    # The fail-safe policy refuses the edit first (it runs before the webhooks).
    by_policy = cluster.kubectl(*edit, namespace=namespace, check=False)
    assert by_policy.returncode != 0
    assert f"Deployment {namespace}/{name} is frozen by Permafrost" in by_policy.stderr

    # Without it, the webhook of the installed replicas refuses it too, through the Service.
    cluster.kubectl("delete", "validatingadmissionpolicybinding", f"{POLICY_NAME}-managed")
    try:

        def webhook_refuses() -> str | None:
            proc = cluster.kubectl(*edit, "--dry-run=server", namespace=namespace, check=False)
            said = 'admission webhook "managed.frozen.permafrost.dev" denied the request'
            return proc.stderr if proc.returncode != 0 and said in proc.stderr else None

        wait_for(webhook_refuses, timeout=30, interval=0.5, what="the webhook's own refusal")
        by_webhook = cluster.kubectl(*edit, namespace=namespace, check=False)
        assert by_webhook.returncode != 0
        assert "is frozen by Permafrost: this request changes spec.template" in by_webhook.stderr
    finally:
        installed.apply()  # restores the binding
    events = cluster.get("events", namespace=namespace)["items"]
    assert any(
        e["reason"] == "TemplateFrozen" and e["involvedObject"]["name"] == name
        and e.get("reportingComponent") == "permafrost"
        for e in events
    ), [(e["reason"], e["involvedObject"]["name"]) for e in events]  # fmt: skip
    after = cluster.get("deployment", name, namespace=namespace)
    assert after["spec"]["template"] == revision["spec"]["template"]
    assert status(cluster, namespace, "web")["stableRevision"] == stable


# --- failover, probes and metrics, least privilege, uninstall -----------------------------------

BROKEN_POLICY = {
    "apiVersion": "permafrost.dev/v1alpha1",
    "kind": "GuardrailPolicy",
    "metadata": {"name": "does-not-compile"},
    "spec": {"stages": ["create"], "rules": [{"name": "x", "expression": "(", "message": "x"}]},
}


def roles(installed: Installation) -> dict[str, str]:
    """Each running replica pod's peering state, from the log of its current container."""
    states: dict[str, str] = {}
    for pod in operator_pods(installed.cluster):
        name = pod["metadata"]["name"]
        (container,) = pod["status"].get("containerStatuses") or [{"restartCount": 0}]
        log = installed.logs().get(f"{name}.{container['restartCount']}", "")
        state = peering_state(log)
        if state is not None:
            states[name] = state
    return states


def one_active(installed: Installation) -> tuple[str, str]:
    """(active pod, standby pod), once the replicas agree."""
    installed.follow()
    found = wait_for(
        lambda: r if sorted((r := roles(installed)).values()) == ["active", "standby"] else None,
        timeout=90,
        interval=1,
        what="one replica active and one standing by",
    )
    active = next(name for name, state in found.items() if state == "active")
    standby = next(name for name, state in found.items() if state == "standby")
    return active, standby


class AdmissionProbe(Background):
    """Admission requests in the background (dry runs, one at a time): a frozen edit, which the
    fail-safe must always deny, and a policy that does not compile, which only the webhook
    denies. Per request: "denied", or what happened instead."""

    def __init__(self, cluster: Cluster, namespace: str, edit: tuple[str, ...]) -> None:
        super().__init__()
        self.cluster, self.namespace, self.edit = cluster, namespace, edit
        self.frozen: list[str] = []
        self.webhook: list[str] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            proc = self.cluster.kubectl(
                *self.edit, "--dry-run=server", namespace=self.namespace, check=False
            )
            frozen = proc.returncode != 0 and "is frozen by Permafrost" in proc.stderr
            self.frozen.append("denied" if frozen else f"{proc.returncode}: {proc.stderr.strip()}")
            proc = self.cluster.kubectl(
                "create", "--dry-run=server", "-f", "-", stdin=to_yaml(BROKEN_POLICY), check=False
            )
            said = 'admission webhook "policies.permafrost.dev" denied the request'
            self.webhook.append(
                "denied" if said in proc.stderr else f"{proc.returncode}: {proc.stderr.strip()}"
            )
            self._stop.wait(0.2)


def test_failover_the_standby_takes_over_nothing_is_done_twice_and_admission_keeps_answering(
    installed: Installation, namespace: str, real_node: RealNode, demo_images: dict[str, str]
) -> None:
    cluster = installed.cluster
    cluster.kubectl("label", "namespace", namespace, "permafrost.dev/enforce=true")
    cluster.apply(web(demo_images["v1"], real_node), namespace=namespace)
    first = wait_phase(cluster, namespace, "web", "Stable", timeout=120)["stableRevision"]
    (revision,) = cluster.get(
        "deployments", namespace=namespace, selector=f"permafrost.dev/revision={first}"
    )["items"]
    edit = (
        "set",
        "image",
        f"deployment/{revision['metadata']['name']}",
        "app=x@sha256:" + "0" * 64,
    )
    active, _ = one_active(installed)

    recorder = CreationRecorder(cluster, namespace)
    try:
        with AdmissionProbe(cluster, namespace, edit) as probe:
            time.sleep(2)  # a few answers before
            cluster.apply(web(demo_images["v2"], real_node), namespace=namespace)
            wait_phase(cluster, namespace, "web", "Progressing", timeout=60)
            cluster.kubectl("delete", "pod", active, "--wait=false", namespace=OPERATOR_NAMESPACE)
            deleted = time.monotonic()

            # NB: the deleted replica serves on for its preStop sleep; the Deployment's
            # replacement may start meanwhile with a higher priority and take over instead of
            # the standby: either is a takeover.
            def taken_over() -> bool:
                installed.follow()
                return any(
                    state == "active" and name != active for name, state in roles(installed).items()
                )

            wait_for(
                taken_over,
                timeout=PEERING_LIFETIME + 30,
                interval=0.5,
                what=f"another replica than {active} to take over",
            )
            takeover = time.monotonic() - deleted
            second = wait_for(
                lambda: (
                    s["stableRevision"]
                    if (s := status(cluster, namespace, "web")).get("phase") == "Stable"
                    and s.get("stableRevision") != first
                    else None
                ),
                timeout=180,
                interval=0.5,
                what="v2 promoted by the replica that took over",
            )
            installed.rolled_out()  # the Deployment replaced the deleted pod
            installed.follow()
            time.sleep(2)  # a few answers after
    finally:
        recorder.stop()

    print(
        f"failover: took over after {takeover:.1f}s; frozen edits {len(probe.frozen)} "
        f"({probe.frozen.count('denied')} denied); webhook requests {len(probe.webhook)} "
        f"({probe.webhook.count('denied')} denied)"
    )
    assert takeover < PEERING_LIFETIME, f"took over after {takeover:.1f}s"
    assert second != first
    # Every revision Deployment was created once, and every action was taken once.
    assert Counter(recorder.added) == Counter(set(recorder.added)), recorder.added
    taken = [a for log in installed.logs().values() for a in actions_in(log)]
    assert any(a.endswith(f"/web: create revision web-{second}") for a in taken), taken
    duplicated = [a for a, n in Counter(taken).items() if n > 1 and "scale" not in a]
    assert duplicated == [], duplicated
    # Admission kept answering: the fail-safe denied every frozen edit; the webhook answered
    # through the Service, the replica that stopped drained.
    assert len(probe.frozen) >= 10
    assert [o for o in probe.frozen if o != "denied"] == []
    failed = [o for o in probe.webhook if o != "denied"]
    assert failed == [], f"{len(failed)} of {len(probe.webhook)} webhook requests failed: {failed}"


def actions_in(log: str) -> list[str]:
    return [
        f"{m.group(1)}: {m.group(2)}" for line in log.splitlines() if (m := ACTION.search(line))
    ]


def test_an_upgrade_to_a_new_digest_under_admission_load_fails_no_request_and_finishes_releases(
    installed: Installation, namespace: str, real_node: RealNode, demo_images: dict[str, str]
) -> None:
    """The operator's own Deployment rolled to a new image digest (the overlay's digest changed
    and applied again, as an upgrade is) while admission requests keep coming and a release is
    mid-rollout: no request fails, the release finishes."""
    cluster = installed.cluster
    cluster.kubectl("label", "namespace", namespace, "permafrost.dev/enforce=true")
    cluster.apply(web(demo_images["v1"], real_node), namespace=namespace)
    first = wait_phase(cluster, namespace, "web", "Stable", timeout=120)["stableRevision"]
    (revision,) = cluster.get(
        "deployments", namespace=namespace, selector=f"permafrost.dev/revision={first}"
    )["items"]
    edit = (
        "set",
        "image",
        f"deployment/{revision['metadata']['name']}",
        "app=x@sha256:" + "0" * 64,
    )
    # The next version: the same image with another label, so another digest.
    repository = installed.image.split("@", 1)[0]
    upgraded = subprocess.run(
        [crane(), "mutate", "--insecure", installed.image, "--label",
         "org.opencontainers.image.version=upgrade-test", "-t", f"{repository}:upgrade-test"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    assert upgraded.startswith(f"{repository}@sha256:")
    assert upgraded != installed.image
    old_pods = {p["metadata"]["name"] for p in operator_pods(cluster)}
    try:
        with AdmissionProbe(cluster, namespace, edit) as probe:
            time.sleep(2)
            cluster.apply(web(demo_images["v2"], real_node), namespace=namespace)
            installed.set_image(upgraded)
            installed.rolled_out()
            installed.follow()
            second = wait_for(
                lambda: (
                    s["stableRevision"]
                    if (s := status(cluster, namespace, "web")).get("phase") == "Stable"
                    and s.get("stableRevision") != first
                    else None
                ),
                timeout=180,
                interval=0.5,
                what="v2 promoted across the upgrade",
            )
            time.sleep(2)
        pods = operator_pods(cluster)
        assert len(pods) == 2
        assert not {p["metadata"]["name"] for p in pods} & old_pods
        assert {p["spec"]["containers"][0]["image"] for p in pods} == {upgraded}
        assert all(ready(p) for p in pods)
    finally:
        installed.set_image(installed.image)
        installed.rolled_out()
        installed.follow()
    print(
        f"upgrade: frozen edits {len(probe.frozen)} ({probe.frozen.count('denied')} denied); "
        f"webhook requests {len(probe.webhook)} ({probe.webhook.count('denied')} denied)"
    )
    assert second != first
    assert len(probe.frozen) >= 10
    assert [o for o in probe.frozen if o != "denied"] == []
    failed = [o for o in probe.webhook if o != "denied"]
    assert failed == [], f"{len(failed)} of {len(probe.webhook)} webhook requests failed: {failed}"


WEBHOOK_HOST = f"permafrost-webhook.{OPERATOR_NAMESPACE}.svc"


def serving(cluster: Cluster, ca: bytes) -> set[int] | None:
    """:func:`served_serials`, or ``None`` while a replica being replaced still answers with
    another certificate or refuses the connection (it serves on for its preStop sleep)."""
    try:
        return served_serials(cluster, ca)
    except (ssl.SSLError, OSError):
        return None


def served_serials(cluster: Cluster, ca: bytes, *, connections: int = 12) -> set[int]:
    """The serials of the certificates the webhook Service serves (over ``connections``
    connections, which kube-proxy spreads over the replicas), each verified against ``ca``."""
    service = cluster.get("service", "permafrost-webhook", namespace=OPERATOR_NAMESPACE)
    context = ssl.create_default_context(cadata=ca.decode())
    serials = set()
    for _ in range(connections):
        with (
            socket.create_connection((service["spec"]["clusterIP"], 443), timeout=3) as raw,
            context.wrap_socket(raw, server_hostname=WEBHOOK_HOST) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        serials.add(x509.load_der_x509_certificate(der).serial_number)
    return serials


def tls_secret(name: str, bundle: certs.Bundle) -> dict[str, Any]:
    """A Secret in cert-manager's layout: tls.crt, tls.key, ca.crt (no CA key)."""
    data = {"tls.crt": bundle.cert, "tls.key": bundle.key, "ca.crt": bundle.ca_cert}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": OPERATOR_NAMESPACE},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


TLS_MOUNT = "/etc/permafrost/tls"


def crash_said(cluster: Cluster, pods: set[str]) -> tuple[str, str] | None:
    """A new replica (not in ``pods``) whose container exited, and what its last run logged."""
    for pod in operator_pods(cluster):
        name = pod["metadata"]["name"]
        if name in pods:
            continue
        for state in pod["status"].get("containerStatuses") or []:
            if state["state"].get("terminated"):
                which: list[str] = []  # exited, not restarted yet
            elif state.get("lastState", {}).get("terminated"):
                which = ["--previous"]  # restarted: the run that exited
            else:
                continue
            log = cluster.kubectl(
                "logs", name, *which, namespace=OPERATOR_NAMESPACE, check=False
            ).stdout
            # NB: empty until the kubelet has the exited run's log: looked at again then.
            if log.strip():
                return name, log
    return None


# NB: three rollouts of the operator and a kubelet sync of the mounted Secret.
@pytest.mark.timeout(600)
def test_a_mounted_cert_manager_secret_serves_instead_of_the_own_ca_and_rotates_while_serving(
    installed: Installation, namespace: str, real_node: RealNode, demo_images: dict[str, str]
) -> None:
    """``--tls-dir`` with a Secret in cert-manager's layout mounted as a volume (no Secret access
    granted): first without ``ca.crt``, which the new replica refuses in one line while the
    running ones serve on; then right, served with its certificate and registered with its CA;
    when its issuer rotates the certificate (same CA, as cert-manager does) and the kubelet
    updates the volume, the replicas serve the new one, and no request fails meanwhile."""
    cluster = installed.cluster
    cluster.kubectl("label", "namespace", namespace, "permafrost.dev/enforce=true")
    cluster.apply(web(demo_images["v1"], real_node), namespace=namespace)
    stable = wait_phase(cluster, namespace, "web", "Stable", timeout=120)["stableRevision"]
    (revision,) = cluster.get(
        "deployments", namespace=namespace, selector=f"permafrost.dev/revision={stable}"
    )["items"]
    edit = (
        "set",
        "image",
        f"deployment/{revision['metadata']['name']}",
        "app=x@sha256:" + "0" * 64,
    )
    now = datetime.datetime.now(datetime.UTC)
    hostnames = [WEBHOOK_HOST, f"{WEBHOOK_HOST}.cluster.local", WEBHOOK_HOST.removesuffix(".svc")]
    ca = certs.new_ca(now=now, common_name="an issuer of the cluster's own")
    # NB: short-lived, so that a stale certificate would be seen; the replicas look at mounted
    # files every 10 s whatever the certificate's lifetime.
    first = certs.issue(hostnames=hostnames, now=now, ca=ca, validity=datetime.timedelta(minutes=5))
    # A key missing: a kubernetes.io/tls Secret without ca.crt (what a public issuer writes).
    wrong = tls_secret("webhook-cert", first)
    del wrong["data"]["ca.crt"]
    cluster.apply(wrong)
    can_read = cluster.kubectl(
        "auth", "can-i", "get", "secret/webhook-cert",
        f"--as=system:serviceaccount:{OPERATOR_NAMESPACE}:permafrost",
        namespace=OPERATOR_NAMESPACE, check=False,
    )  # fmt: skip
    assert can_read.stdout.strip() == "no", "the mounted Secret needs no grant to read it"
    running = {p["metadata"]["name"] for p in operator_pods(cluster)}
    try:
        installed.mount_tls("webhook-cert", TLS_MOUNT)
        crashed, log = wait_for(
            lambda: crash_said(cluster, running),
            timeout=120,
            interval=1,
            what="the new replica refusing the mounted files",
        )
        said = [line for line in log.splitlines() if "TLS files in" in line]
        assert len(said) == 1, log
        assert said[0].startswith(
            f"permafrost: TLS files in {TLS_MOUNT} cannot be used: there is no 'ca.crt' ("
        ), said
        assert "Traceback" not in log, log
        serving_ones = [p for p in operator_pods(cluster) if p["metadata"]["name"] in running]
        assert len(serving_ones) == 2
        assert all(ready(p) for p in serving_ones)
        refused = cluster.create(BROKEN_POLICY, check=False)
        assert 'admission webhook "policies.permafrost.dev" denied the request' in refused.stderr

        # Right: the issuer writes the Secret; the crashing replica is replaced (rather than
        # waiting out its back-off) and the rollout finishes.
        cluster.apply(tls_secret("webhook-cert", first))
        cluster.kubectl("delete", "pod", crashed, "--wait=false", namespace=OPERATOR_NAMESPACE)
        installed.rolled_out()
        installed.follow()
        config = cluster.get("validatingwebhookconfiguration", WEBHOOK_CONFIGURATION)
        assert {base64.b64decode(h["clientConfig"]["caBundle"]) for h in config["webhooks"]} == {
            first.ca_cert
        }
        serial = x509.load_pem_x509_certificate(first.cert).serial_number
        wait_for(
            lambda: serving(cluster, first.ca_cert) == {serial},
            timeout=60,
            interval=1,
            what="both replicas serving the mounted certificate",
        )
        rotated = certs.issue(
            hostnames=hostnames, now=datetime.datetime.now(datetime.UTC), ca=ca,
            validity=datetime.timedelta(hours=1),
        )  # fmt: skip
        new_serial = x509.load_pem_x509_certificate(rotated.cert).serial_number
        with AdmissionProbe(cluster, namespace, edit) as probe:
            time.sleep(2)
            cluster.apply(tls_secret("webhook-cert", rotated))
            # NB: the kubelet updates a mounted Secret when it next syncs the pod (every 10 to
            # 15 s on the test node, hack/node.sh; a minute to a minute and a half by
            # default); the replicas look at the files every 10 s.
            wait_for(
                lambda: serving(cluster, first.ca_cert) == {new_serial},
                timeout=180,
                interval=2,
                what="both replicas serving the rotated certificate",
            )
            time.sleep(2)
        print(
            f"rotation: webhook requests {len(probe.webhook)} "
            f"({probe.webhook.count('denied')} denied)"
        )
        assert [o for o in probe.frozen if o != "denied"] == []
        failed = [o for o in probe.webhook if o != "denied"]
        assert failed == [], f"{len(failed)} of {len(probe.webhook)} failed: {failed}"
        assert len(probe.webhook) >= 5
    finally:
        installed.mount_tls(None, TLS_MOUNT)
        installed.rolled_out()
        installed.follow()
        cluster.kubectl("delete", "secret", "webhook-cert", namespace=OPERATOR_NAMESPACE)


def test_an_upgrade_to_an_image_that_cannot_be_pulled_leaves_the_replicas_serving(
    installed: Installation,
) -> None:
    """Bad input: the overlay names a digest the registry does not have. The new pod says why
    in one Event line; the running replicas stay (maxUnavailable 0) and keep answering."""
    cluster = installed.cluster
    before = {p["metadata"]["name"] for p in operator_pods(cluster)}
    missing = installed.image.split("@", 1)[0] + "@sha256:" + "e" * 64
    installed.set_image(missing)
    try:

        def stuck() -> str | None:
            for pod in operator_pods(cluster):
                for state in pod["status"].get("containerStatuses") or []:
                    waiting = state.get("state", {}).get("waiting") or {}
                    if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff"):
                        return str(pod["metadata"]["name"])
            return None

        new = wait_for(stuck, timeout=90, interval=1, what="the new pod failing to pull")
        events = cluster.get("events", namespace=OPERATOR_NAMESPACE)["items"]
        said = [
            e["message"]
            for e in events
            if e["involvedObject"]["name"] == new and e["reason"] == "Failed"
        ]
        assert any("e" * 64 in m and "\n" not in m for m in said), said
        running = [p for p in operator_pods(cluster) if p["metadata"]["name"] in before]
        assert len(running) == 2
        assert all(ready(p) for p in running)
        proc = cluster.create(BROKEN_POLICY, check=False)
        assert 'admission webhook "policies.permafrost.dev" denied the request' in proc.stderr
    finally:
        installed.set_image(installed.image)
        installed.rolled_out()
        installed.follow()


def plain_deployment(image: str) -> dict[str, Any]:
    """A Deployment Permafrost does not manage, at 0 replicas, as the built-in policies want it:
    non-root (enforced at creation), limits and a read-only root filesystem (warned about)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "plain"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "plain"}},
            "template": {
                "metadata": {"labels": {"app": "plain"}},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
                    "containers": [
                        {
                            "name": "app",
                            "image": image,
                            "securityContext": {"readOnlyRootFilesystem": True},
                            "resources": {"limits": {"cpu": "100m", "memory": "32Mi"}},
                        }
                    ],
                },
            },
        },
    }


def test_with_no_webhook_endpoint_the_cluster_stays_usable(
    installed: Installation, namespace: str, demo_images: dict[str, str]
) -> None:
    """No replica at all (scaled to 0): kube-system and the operator's namespace are never
    blocked, the workload webhooks fail open, the fail-safe keeps frozen workloads frozen, and
    the GuardrailPolicy webhook refuses (closed) in one line that names it."""
    cluster = installed.cluster
    cluster.kubectl("label", "namespace", namespace, "permafrost.dev/enforce=true")
    plain = plain_deployment(demo_images["v1"])
    cluster.apply(plain, namespace=namespace)
    cluster.kubectl("scale", "deployment/permafrost", "--replicas=0", namespace=OPERATOR_NAMESPACE)
    try:
        # NB: a stopping replica serves on for its preStop sleep: wait until none is left.
        wait_for(
            lambda: (
                cluster.get("pods", namespace=OPERATOR_NAMESPACE, selector=SELECTOR)["items"] == []
            ),
            timeout=90,
            what="no replica left, stopping ones included",
        )
        for ns in ("kube-system", OPERATOR_NAMESPACE):
            cluster.kubectl("create", "configmap", "usable", namespace=ns)
            cluster.kubectl("delete", "configmap", "usable", namespace=ns)
        # Workloads: the webhooks fail open, the fail-safe policy still decides.
        other = {**plain, "metadata": {"name": "another"}}
        cluster.apply(other, namespace=namespace)
        frozen = cluster.kubectl(
            "set", "image", "deployment/plain", f"app={demo_images['v2']}",
            namespace=namespace, check=False,
        )  # fmt: skip
        assert frozen.returncode != 0
        assert "is frozen by Permafrost" in frozen.stderr
        refused = cluster.create(BROKEN_POLICY, check=False)
        assert refused.returncode != 0
        assert 'failed calling webhook "policies.permafrost.dev"' in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    finally:
        installed.apply()  # back to the overlay's two replicas
        installed.rolled_out()
        installed.follow()


def test_metrics_are_scraped_through_the_service(installed: Installation) -> None:
    service = installed.cluster.get("service", "permafrost-metrics", namespace=OPERATOR_NAMESPACE)
    url = f"http://{service['spec']['clusterIP']}:9090/metrics"
    for _ in range(10):  # kube-proxy spreads the scrapes over both replicas
        with urllib.request.urlopen(url, timeout=3) as response:
            assert response.status == 200
            text = response.read().decode()
        assert "# TYPE permafrost_admission_decisions_total counter" in text
        assert "# TYPE permafrost_releases gauge" in text


def test_the_liveness_probe_restarts_a_wedged_replica(installed: Installation) -> None:
    """A replica whose process stops answering (SIGSTOP, from the node: a wedged event loop
    looks the same to the probe) is restarted by the kubelet; the other keeps serving."""
    cluster = installed.cluster
    _, standby = one_active(installed)
    pod = cluster.get("pod", standby, namespace=OPERATOR_NAMESPACE)
    (state,) = pod["status"]["containerStatuses"]
    before = state["restartCount"]
    pid = container_pid(pod["metadata"]["uid"])
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(
            lambda: (
                cluster.get("pod", standby, namespace=OPERATOR_NAMESPACE)["status"][
                    "containerStatuses"
                ][0]["restartCount"]
                > before
            ),
            timeout=LIVENESS_WINDOW + 60,
            interval=1,
            what=f"the kubelet to restart {standby}",
        )
    finally:
        with contextlib.suppress(ProcessLookupError):  # the kubelet killed it
            os.kill(pid, signal.SIGCONT)
    events = cluster.get("events", namespace=OPERATOR_NAMESPACE)["items"]
    assert any(
        e["reason"] == "Unhealthy"
        and e["involvedObject"]["name"] == standby
        and "Liveness probe failed" in e["message"]
        for e in events
    ), [(e["reason"], e["message"]) for e in events if e["involvedObject"]["name"] == standby]
    installed.rolled_out()
    installed.follow()
    assert operator_pods(cluster)[0]["status"]["phase"] == "Running"


def container_pid(pod_uid: str) -> int:
    """The PID (in this PID namespace) of the ``permafrost`` process of the pod ``pod_uid``: the
    node's containers share this machine's kernel, and their cgroups name the pod."""
    token = pod_uid.replace("-", "_")
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cgroups = (proc / "cgroup").read_text()
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (pod_uid in cgroups or token in cgroups) and any(
            part.endswith(b"/permafrost") for part in cmdline[:2]
        ):
            found.append(int(proc.name))
    assert len(found) == 1, f"the operator process of pod {pod_uid}: {found}"
    return found[0]


def test_the_replicas_were_never_refused_anything(installed: Installation) -> None:
    """Least privilege, for real: the replicas ran on their ServiceAccount's token through the
    scenarios above (the tests before this one in the module); nothing was forbidden."""
    logs = installed.logs()
    # NB: a replica started at the end of the test before may not have logged anything yet.
    assert sum(1 for log in logs.values() if log.strip()) >= 2, "the replicas logged nothing"
    refused = [
        f"{key}: {line}"
        for key, log in logs.items()
        for line in log.splitlines()
        if "forbidden" in line.lower()
    ]
    assert refused == []


def test_uninstall_as_documented_leaves_a_working_cluster(
    installed: Installation, namespace: str, demo_images: dict[str, str]
) -> None:
    """docs/install.md's uninstall (``kubectl delete -k`` and the operator's webhook
    configuration): nothing left that points at the gone Service, nothing stuck, and workloads
    of a formerly enforced namespace editable again. The last test of the module."""
    cluster = installed.cluster
    cluster.kubectl("label", "namespace", namespace, "permafrost.dev/enforce=true")
    plain = plain_deployment(demo_images["v1"])
    cluster.apply(plain, namespace=namespace)
    edit = ("set", "image", "deployment/plain", f"app={demo_images['v2']}")
    frozen = cluster.kubectl(*edit, namespace=namespace, check=False)
    assert frozen.returncode != 0
    assert "is frozen by Permafrost" in frozen.stderr

    installed.stop_following()
    installed.uninstall()
    wait_for(
        lambda: cluster.get("namespace", OPERATOR_NAMESPACE) is None,
        timeout=120,
        what=f"namespace {OPERATOR_NAMESPACE} gone",
    )
    wait_for(
        lambda: (
            not [
                c
                for c in cluster.get("customresourcedefinitions")["items"]
                if c["spec"]["group"] in ("permafrost.dev", "kopf.dev")
            ]
        ),
        timeout=60,
        what="the CRDs gone",
    )
    hooks = cluster.get("validatingwebhookconfigurations")["items"]
    assert [
        h["metadata"]["name"]
        for h in hooks
        if any(
            (w["clientConfig"].get("service") or {}).get("namespace") == OPERATOR_NAMESPACE
            for w in h["webhooks"]
        )
    ] == []
    for kind in ("validatingadmissionpolicies", "validatingadmissionpolicybindings"):
        left = [o["metadata"]["name"] for o in cluster.get(kind)["items"]]
        assert [n for n in left if n.startswith(POLICY_NAME)] == [], left

    # The cluster works: the frozen workload is editable, kube-system and new workloads too.
    cluster.kubectl(*edit, namespace=namespace)
    after = cluster.get("deployment", "plain", namespace=namespace)
    assert after["spec"]["template"]["spec"]["containers"][0]["image"] == demo_images["v2"]
    cluster.kubectl("create", "deployment", "tagged", "--image=registry.example/app:1.0",
                    "--replicas=0", namespace=namespace)  # fmt: skip
    cluster.kubectl("create", "configmap", f"after-uninstall-{namespace[-6:]}",
                    namespace="kube-system")  # fmt: skip
    cluster.kubectl("delete", "configmap", f"after-uninstall-{namespace[-6:]}",
                    namespace="kube-system")  # fmt: skip
