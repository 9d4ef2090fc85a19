"""Smoke tests proving the harness is a real control plane: controllers, kwok, admission."""

from __future__ import annotations

import datetime
import http.server
import json
import ssl
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from k8s_harness import Cluster, KubectlError, condition, wait_for

IMAGE = "registry.example/smoke/app@sha256:" + "a" * 64


def deployment(
    name: str,
    *,
    replicas: int,
    annotations: dict[str, str] | None = None,
    progress_deadline: int = 600,
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "progressDeadlineSeconds": progress_deadline,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations or {}},
                "spec": {"containers": [{"name": "app", "image": IMAGE}]},
            },
        },
    }


def test_deployment_becomes_available_through_the_real_controllers(
    cluster: Cluster, namespace: str
) -> None:
    cluster.apply(deployment("web", replicas=3), namespace=namespace)

    def available() -> dict[str, Any] | None:
        obj = cluster.get("deployment", "web", namespace=namespace)
        cond = condition(obj, "Available")
        ok = cond and cond["status"] == "True" and obj["status"].get("readyReplicas") == 3
        return obj if ok else None

    obj = wait_for(available, timeout=60, what="3 ready replicas")
    pods = cluster.get("pods", namespace=namespace, selector="app=web")["items"]
    assert len(pods) == 3
    assert {p["spec"]["nodeName"].startswith("kwok-node-") for p in pods} == {True}
    assert all(condition(p, "Ready")["status"] == "True" for p in pods)  # type: ignore[index]
    assert obj["status"]["availableReplicas"] == 3


def test_never_ready_deployment_exceeds_its_progress_deadline(
    cluster: Cluster, namespace: str
) -> None:
    cluster.apply(
        deployment(
            "stuck",
            replicas=1,
            progress_deadline=3,
            annotations={"sim.permafrost.dev/behavior": "never-ready"},
        ),
        namespace=namespace,
    )

    def deadline_exceeded() -> dict[str, Any] | None:
        cond = condition(cluster.get("deployment", "stuck", namespace=namespace), "Progressing")
        return cond if cond and cond.get("reason") == "ProgressDeadlineExceeded" else None

    cond = wait_for(deadline_exceeded, timeout=60, what="ProgressDeadlineExceeded")
    assert cond["status"] == "False"
    pod = cluster.get("pods", namespace=namespace, selector="app=stuck")["items"][0]
    assert pod["status"]["phase"] == "Running"
    assert condition(pod, "Ready")["status"] == "False"  # type: ignore[index]


def test_crash_loop_pod_shows_rising_restarts(cluster: Cluster, namespace: str) -> None:
    cluster.apply(
        deployment(
            "crasher", replicas=1, annotations={"sim.permafrost.dev/behavior": "crash-loop"}
        ),
        namespace=namespace,
    )

    def restarts() -> int:
        pods = cluster.get("pods", namespace=namespace, selector="app=crasher")["items"]
        statuses = pods[0]["status"].get("containerStatuses", []) if pods else []
        return int(statuses[0].get("restartCount", 0)) if statuses else 0

    first = wait_for(restarts, timeout=30, what="a first restart")
    later = wait_for(
        lambda: restarts() if restarts() > first else 0, timeout=30, what="a rising restartCount"
    )
    assert later > first >= 1
    pod = cluster.get("pods", namespace=namespace, selector="app=crasher")["items"][0]
    state = pod["status"]["containerStatuses"][0]["state"]
    assert state["waiting"]["reason"] == "CrashLoopBackOff"


def test_slow_ready_pod_becomes_ready_only_after_its_delay(
    cluster: Cluster, namespace: str
) -> None:
    cluster.apply(
        deployment(
            "slow",
            replicas=1,
            annotations={
                "sim.permafrost.dev/behavior": "slow-ready",
                "sim.permafrost.dev/ready-after": "4s",
            },
        ),
        namespace=namespace,
    )
    pod = wait_for(
        lambda: (cluster.get("pods", namespace=namespace, selector="app=slow")["items"] or [None])[
            0
        ],
        timeout=30,
        what="the pod",
    )
    created = datetime.datetime.fromisoformat(pod["metadata"]["creationTimestamp"])

    def ready_pod() -> dict[str, Any] | None:
        pods = cluster.get("pods", namespace=namespace, selector="app=slow")["items"]
        cond = condition(pods[0], "Ready") if pods else None
        return pods[0] if cond and cond["status"] == "True" else None

    ready = wait_for(ready_pod, timeout=30, what="the slow pod to become Ready")
    became_ready = datetime.datetime.fromisoformat(condition(ready, "Ready")["lastTransitionTime"])  # type: ignore[index]
    assert (became_ready - created).total_seconds() >= 3


# --- admission ---------------------------------------------------------------------------------


def _self_signed_ca_and_server_cert() -> tuple[bytes, bytes, bytes]:
    """A throwaway CA and a serving certificate for 127.0.0.1 signed by it (PEM)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smoke-test-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca_cert.public_bytes(pem), cert.public_bytes(pem), key_pem


class _Webhook(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, Any]]

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(review)
        request = review["request"]
        labels = request["object"]["metadata"].get("labels", {})
        allowed = labels.get("smoke") != "deny"
        response = {"uid": request["uid"], "allowed": allowed}
        if not allowed:
            response["status"] = {"code": 403, "message": "denied by the smoke-test webhook"}
        body = json.dumps(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook_server(tmp_path: Any) -> Iterator[tuple[int, bytes, list[dict[str, Any]]]]:
    ca, cert, key = _self_signed_ca_and_server_cert()
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    seen: list[dict[str, Any]] = []
    handler = type("Handler", (_Webhook,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], ca, seen
    server.shutdown()
    server.server_close()


def _configmap(
    name: str, labels: dict[str, str] | None = None, data: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels or {}},
        "data": data or {},
    }


def test_apiserver_calls_a_webhook_on_loopback_with_a_test_generated_ca(
    cluster: Cluster, namespace: str, webhook_server: tuple[int, bytes, list[dict[str, Any]]]
) -> None:
    import base64

    port, ca, seen = webhook_server
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    cluster.apply(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "smoke.permafrost.dev",
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{port}/validate",
                        "caBundle": base64.b64encode(ca).decode(),
                    },
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["configmaps"],
                        }
                    ],
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 5,
                }
            ],
        }
    )
    try:

        def denied() -> str | None:
            proc = cluster.create(
                _configmap(f"deny-{uuid.uuid4().hex[:6]}", {"smoke": "deny"}),
                namespace=namespace,
                check=False,
            )
            return proc.stderr if proc.returncode != 0 else None

        message = wait_for(denied, timeout=30, interval=0.5, what="the webhook to deny")
        assert "denied by the smoke-test webhook" in message
        cluster.create(_configmap("allowed", {"smoke": "allow"}), namespace=namespace)
        assert cluster.get("configmap", "allowed", namespace=namespace) is not None
        reviewed = {r["request"]["name"] for r in seen if r["request"]["namespace"] == namespace}
        assert "allowed" in reviewed
    finally:
        cluster.kubectl("delete", "validatingwebhookconfiguration", name, check=False)


def test_validating_admission_policy_denies_in_the_apiserver(
    cluster: Cluster, namespace: str
) -> None:
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    cluster.apply(
        [
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": name},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {
                        "resourceRules": [
                            {
                                "apiGroups": [""],
                                "apiVersions": ["v1"],
                                "operations": ["CREATE"],
                                "resources": ["configmaps"],
                            }
                        ]
                    },
                    "validations": [
                        {
                            "expression": "!has(object.data) || !('forbidden' in object.data)",
                            "message": "the key 'forbidden' is not allowed (smoke-test policy)",
                        }
                    ],
                },
            },
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": name},
                "spec": {
                    "policyName": name,
                    "validationActions": ["Deny"],
                    "matchResources": {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": namespace}
                        }
                    },
                },
            },
        ]
    )
    try:

        def denied() -> str | None:
            proc = cluster.create(
                _configmap(f"bad-{uuid.uuid4().hex[:6]}", data={"forbidden": "x"}),
                namespace=namespace,
                check=False,
            )
            return proc.stderr if proc.returncode != 0 else None

        message = wait_for(denied, timeout=30, interval=0.5, what="the policy to deny")
        assert "the key 'forbidden' is not allowed" in message
        assert "ValidatingAdmissionPolicy" in message
        cluster.create(_configmap("fine", data={"ok": "value"}), namespace=namespace)
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding", name, check=False)
        cluster.kubectl("delete", "validatingadmissionpolicy", name, check=False)


def test_kubectl_on_the_path_is_the_built_version(cluster: Cluster) -> None:
    out = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == "v1.36.3"
    assert out["serverVersion"]["gitVersion"] == "v1.36.3"


def test_kubectl_error_carries_the_apiserver_message(cluster: Cluster, namespace: str) -> None:
    with pytest.raises(KubectlError) as err:
        cluster.kubectl("get", "configmap", "does-not-exist", namespace=namespace)
    assert "not found" in err.value.stderr
