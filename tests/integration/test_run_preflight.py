"""``permafrost run --admission`` refuses, in one line and at once, what it could not serve:
a missing operator namespace, and webhooks registered for another operator that answers."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import uuid

from conftest import WEBHOOK_CONFIGURATION, Operator, free_port, webhook_target
from k8s_harness import Cluster


def run(crds: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "permafrost", "run", "--admission", *args],
        env=crds.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_admission_without_its_namespace_fails_at_once_in_one_line(
    crds: Cluster, namespace: str
) -> None:
    missing = f"no-such-{uuid.uuid4().hex[:6]}"
    port = free_port()
    proc = run(
        crds,
        "-n",
        namespace,
        "--operator-namespace",
        missing,
        "--webhook-listen",
        f"127.0.0.1:{port}",
        "--webhook-url",
        f"https://127.0.0.1:{port}",
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"permafrost: the operator's namespace {missing} does not exist" in proc.stderr
    assert f"kubectl create namespace {missing}" in proc.stderr


def test_a_second_operator_does_not_re_point_the_webhooks_of_one_that_answers(
    crds: Cluster, namespace: str, operator_namespace: str, guarded_operator: Operator
) -> None:
    first = webhook_target(crds)
    assert first is not None
    assert first.startswith("https://127.0.0.1:")
    # Started as a new user would: no --webhook-url (https://localhost:9443 by default).
    proc = run(crds, "-n", namespace, "--operator-namespace", operator_namespace)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"registered for another operator at {first}, which answers" in proc.stderr
    assert "this one would re-point them at https://localhost:9443" in proc.stderr
    assert "--webhook-takeover" in proc.stderr
    assert webhook_target(crds) == first, f"{WEBHOOK_CONFIGURATION} was re-pointed"


def test_unusable_tls_files_fail_at_once_in_one_line(
    crds: Cluster, namespace: str, operator_namespace: str, tmp_path: pathlib.Path
) -> None:
    """``--tls-dir`` naming files of the wrong names (a hand-made Secret, mounted): refused
    before the operator starts, in one line naming the directory and what is expected."""
    (tmp_path / "cert.pem").write_text("x")
    port = free_port()
    proc = run(
        crds, "-n", namespace, "--operator-namespace", operator_namespace,
        "--webhook-listen", f"127.0.0.1:{port}", "--webhook-url", f"https://127.0.0.1:{port}",
        "--tls-dir", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    said = [line for line in lines if line.startswith("permafrost: ")]
    assert said == [
        f"permafrost: TLS files in {tmp_path} cannot be used: there is no 'ca.crt', 'tls.crt', "
        "'tls.key' (expected the files tls.crt, tls.key and ca.crt, as a cert-manager Secret "
        "mounted as a volume holds them)"
    ], proc.stderr
