"""The webhook's TLS and what the operator lets out: TLS 1.2+ only, a short-lived certificate
rotated without a restart, and no secret in the logs, the Events or the status."""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import pathlib
import socket
import ssl
import threading
import uuid
from typing import Any

import yaml
from test_admission_vectors import MEMBER, webhook_port
from test_fuzz_webhook import post

from conftest import BREAK_GLASS_GROUP, Operator, release, start_guarded, stop_guarded, wait_phase
from k8s_harness import Cluster, wait_for
from permafrost.guards import certs

LEGACY = "DEFAULT:@SECLEVEL=0"  # NB: lets this client offer TLS 1.0/1.1, so the server decides


def handshake(port: int, version: ssl.TLSVersion) -> tuple[str | None, bytes | None, str]:
    """(negotiated version, the server's certificate (DER), error) of a handshake pinned to
    ``version``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers(LEGACY)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw) as tls,
        ):
            return tls.version(), tls.getpeercert(binary_form=True), ""
    except (ssl.SSLError, OSError) as exc:
        return None, None, str(exc)


def permissive_server(tmp_path: pathlib.Path) -> tuple[int, threading.Thread]:
    """A loopback TLS server that accepts TLS 1.0 and up (one connection per version): the
    control showing that this client really offers the old versions."""
    bundle = certs.issue(hostnames=["127.0.0.1"], now=datetime.datetime.now(datetime.UTC))
    (tmp_path / "c.pem").write_bytes(bundle.cert)
    (tmp_path / "k.pem").write_bytes(bundle.key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers(LEGACY)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)

    def serve() -> None:
        with listener:
            for _ in range(4):
                conn, _ = listener.accept()
                with (
                    contextlib.suppress(ssl.SSLError, OSError),
                    context.wrap_socket(conn, server_side=True),
                ):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


VERSIONS = (
    ssl.TLSVersion.TLSv1,
    ssl.TLSVersion.TLSv1_1,
    ssl.TLSVersion.TLSv1_2,
    ssl.TLSVersion.TLSv1_3,
)


def test_the_webhook_speaks_tls_1_2_and_1_3_only(
    guarded_operator: Operator, tmp_path: pathlib.Path
) -> None:
    port, control = permissive_server(tmp_path)
    offered = {v: handshake(port, v)[0] for v in VERSIONS}
    control.join(timeout=30)
    assert offered == {
        ssl.TLSVersion.TLSv1: "TLSv1",
        ssl.TLSVersion.TLSv1_1: "TLSv1.1",
        ssl.TLSVersion.TLSv1_2: "TLSv1.2",
        ssl.TLSVersion.TLSv1_3: "TLSv1.3",
    }, "this client cannot offer every version: the test would prove nothing"

    webhook = webhook_port(guarded_operator)
    results = {v: handshake(webhook, v) for v in VERSIONS}
    assert results[ssl.TLSVersion.TLSv1_2][0] == "TLSv1.2"
    assert results[ssl.TLSVersion.TLSv1_3][0] == "TLSv1.3"
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        negotiated, _, error = results[old]
        assert negotiated is None, f"{old.name} was accepted"
        assert error, f"{old.name}: no error"


def secret_body(name: str, namespace: str, bundle: certs.Bundle) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace},
        "data": bundle.to_secret_data(),
    }


def test_a_short_lived_certificate_is_rotated_without_a_restart(
    crds: Cluster, namespace: str, operator_namespace: str, tmp_path: pathlib.Path, request: Any
) -> None:
    """A user-supplied certificate (as cert-manager makes) living 3 minutes is replaced in its
    Secret; the server serves the new one within seconds, long before the old one expires."""
    now = datetime.datetime.now(datetime.UTC)
    lifetime = datetime.timedelta(minutes=3)
    first = certs.issue(hostnames=["127.0.0.1"], now=now, validity=lifetime)
    name = f"short-lived-{uuid.uuid4().hex[:6]}"
    crds.apply(secret_body(name, operator_namespace, first))
    op = start_guarded(
        crds, namespace, operator_namespace, tmp_path / "operator.log", ["--tls-secret", name]
    )
    request.node.operator_log = op.log
    try:
        port = webhook_port(op)
        served = handshake(port, ssl.TLSVersion.TLSv1_3)[1]
        assert served == ssl.PEM_cert_to_DER_cert(first.cert.decode())

        # The issuer renews it: the same CA, a new certificate.
        second = certs.issue(
            hostnames=["127.0.0.1"],
            now=datetime.datetime.now(datetime.UTC),
            validity=lifetime,
            ca=(first.ca_cert, first.ca_key),
        )
        assert second.cert != first.cert
        crds.apply(secret_body(name, operator_namespace, second))
        rotated = datetime.datetime.now(datetime.UTC)
        wanted = ssl.PEM_cert_to_DER_cert(second.cert.decode())
        wait_for(
            lambda: handshake(port, ssl.TLSVersion.TLSv1_3)[1] == wanted,
            timeout=90,
            interval=1,
            what="the renewed certificate to be served",
        )
        took = datetime.datetime.now(datetime.UTC) - rotated
        assert took < certs.expires_at(first.cert) - rotated  # before the old one expired
        assert op.proc is not None
        assert op.proc.poll() is None  # no restart
        print(f"certificate rotation: the new certificate served {took.total_seconds():.0f}s after")
    finally:
        stop_guarded(crds, op)
        crds.kubectl("delete", "secret", name, namespace=operator_namespace, check=False)


def needles(crds: Cluster, operator_namespace: str, values: list[str]) -> dict[str, str]:
    """What must never be seen, by what it is: the values, base64 too, and the private keys."""
    found: dict[str, str] = {}
    for value in values:
        found[f"value {value[:6]}…"] = value
        found[f"base64 of {value[:6]}…"] = base64.b64encode(value.encode()).decode()
    tls = crds.get("secret", "permafrost-webhook-tls", namespace=operator_namespace)
    for key in ("tls.key", "ca.key"):
        pem = base64.b64decode(tls["data"][key]).decode()
        body = "".join(line for line in pem.splitlines() if "-----" not in line)
        found[f"webhook {key}"] = body[20:60]  # NB: a slice of the key material itself
    kubeconfig = yaml.safe_load(pathlib.Path(crds.kubeconfig).read_text())
    for user in kubeconfig.get("users") or []:
        for field in ("client-key-data", "token"):
            if secret := (user.get("user") or {}).get(field):
                found[f"kubeconfig {field}"] = secret[20:60]
    return found


def test_secrets_never_appear_in_logs_events_or_status(
    crds: Cluster, namespace: str, operator_namespace: str, guarded_operator: Operator
) -> None:
    values = [f"pw-{uuid.uuid4().hex}", f"pw-{uuid.uuid4().hex}"]
    crds.kubectl(
        "create",
        "secret",
        "generic",
        "db",
        f"--from-literal=password={values[0]}",
        namespace=namespace,
    )
    config = [{"kind": "Secret", "name": "db"}]
    crds.apply(release("shop", service="shop", config=config), namespace=namespace)
    first = wait_phase(crds, namespace, "shop", "Stable", timeout=90)["stableRevision"]
    snapshot = crds.get("secret", f"db-{first}", namespace=namespace)
    assert base64.b64decode(snapshot["data"]["password"]).decode() == values[0]

    # A new secret value: a new revision with its own snapshot.
    patch = {"data": {"password": base64.b64encode(values[1].encode()).decode()}}
    crds.kubectl("patch", "secret", "db", "-p", yaml.safe_dump(patch), namespace=namespace)
    wait_for(
        lambda: (
            (s := crds.get("guardedrelease", "shop", namespace=namespace)["status"]).get("phase")
            == "Stable"
            and s.get("stableRevision") != first
        ),
        timeout=90,
        what="a new stable revision after the Secret changed",
    )
    # Admission at work too: a break-glass edit puts the secret value into the frozen revision
    # itself; the webhook records the use (an Event) and the operator sees the drift.
    stable = crds.get("guardedrelease", "shop", namespace=namespace)["status"]["stableRevision"]
    crds.kubectl(
        "create", "rolebinding", "alice", "--clusterrole=edit", "--user=alice", namespace=namespace
    )
    env = [{"name": "PASSWORD", "value": values[1]}]
    patch = {
        "metadata": {"annotations": {"permafrost.dev/break-glass": "INC-1 rotate the password"}},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "env": env}]}}},
    }
    crds.kubectl(
        "patch",
        "deployment",
        f"shop-{stable}",
        "-p",
        json.dumps(patch),
        *MEMBER,
        namespace=namespace,
    )
    wait_for(
        lambda: [
            e
            for e in crds.get("events", namespace=namespace)["items"]
            if e["reason"] == "BreakGlassUsed"
        ],
        timeout=30,
        what="the BreakGlassUsed Event",
    )

    haystacks = {
        "the operator log": guarded_operator.log.read_text(errors="replace"),
        "the Events": crds.kubectl("get", "events", "-A", "-o", "json").stdout,
        "the release": crds.kubectl(
            "get", "guardedrelease", "shop", "-o", "json", namespace=namespace
        ).stdout,
    }
    leaks = [
        f"{what} in {where}"
        for what, needle in needles(crds, operator_namespace, values).items()
        for where, haystack in haystacks.items()
        if needle in haystack
    ]
    assert leaks == []
    assert len(haystacks["the operator log"]) > 1000  # the log is not empty: it was scanned


def _forged_review(target: dict[str, Any], *, reason: str, user: str) -> bytes:
    """An AdmissionReview as the apiserver would send it for a break-glass edit of ``target``
    by ``user`` — but posted by a client that is not the apiserver."""
    new = json.loads(json.dumps(target))
    new["metadata"].setdefault("annotations", {})["permafrost.dev/break-glass"] = reason
    new["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "FORGED", "value": "1"}]
    meta = target["metadata"]
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": str(uuid.uuid4()),
                "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
                "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
                "name": meta["name"],
                "namespace": meta["namespace"],
                "operation": "UPDATE",
                "userInfo": {
                    "username": user,
                    "groups": [BREAK_GLASS_GROUP, "system:authenticated"],
                },
                "object": new,
                "oldObject": target,
                "dryRun": False,
            },
        }
    ).encode()


def test_forged_break_glass_reviews_leave_no_event_and_no_count(
    crds: Cluster, namespace: str, guarded_operator: Operator
) -> None:
    """Anyone who reaches the webhook can post a review naming any user; the webhook answers
    it (it cannot tell), but only a change the apiserver really made is recorded."""
    crds.apply(release("shop", replicas=1), namespace=namespace)
    stable = wait_phase(crds, namespace, "shop", "Stable", timeout=90)["stableRevision"]
    target = crds.get("deployment", f"shop-{stable}", namespace=namespace)
    port = webhook_port(guarded_operator)
    forged = [f"INC-forged-{i}" for i in range(5)]
    for reason in forged:
        status_code, answer = post(
            port, "/frozen-managed", _forged_review(target, reason=reason, user="mallory")
        )
        assert status_code == 200, answer
        assert json.loads(answer)["response"]["allowed"] is True  # the review itself says so

    # The control: a real break-glass edit by a member, through the apiserver, is recorded.
    crds.kubectl(
        "create", "rolebinding", "alice", "--clusterrole=edit", "--user=alice", namespace=namespace
    )
    env = [{"name": "DEBUG", "value": "1"}]  # NB: a real change of what runs
    patch = {
        "metadata": {"annotations": {"permafrost.dev/break-glass": "INC-real"}},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "env": env}]}}},
    }
    crds.kubectl(
        "patch", "deployment", f"shop-{stable}", "-p", json.dumps(patch), *MEMBER,
        namespace=namespace,
    )  # fmt: skip

    def recorded() -> list[str]:
        return [
            e["message"]
            for e in crds.get("events", namespace=namespace)["items"]
            if e["reason"] == "BreakGlassUsed"
        ]

    (real,) = wait_for(recorded, timeout=30, what="the real BreakGlassUsed Event")
    assert "INC-real" in real

    def given_up() -> bool:
        log = guarded_operator.log.read_text(errors="replace")
        return log.count("but the change never appeared in the cluster") == len(forged)

    wait_for(given_up, timeout=60, what="the operator to give up on every forged review")
    assert recorded() == [real]
    assert "mallory" not in real
