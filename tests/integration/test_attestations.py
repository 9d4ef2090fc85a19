"""Guardrail attestations against a real OCI registry (distribution, on loopback) with the real
cosign: ``permafrost check --stage build --attest`` pushes what ``cosign verify-attestation``
accepts, ``cosign attest`` pushes what Permafrost accepts, a tag pushed again has no
attestation, and the operator holds a GuardedRelease whose image lacks the attestation a
policy requires until CI attests it.

Offline, as tests/integration/test_signatures.py: key pairs, no transparency log.
"""

from __future__ import annotations

import base64
import json
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from test_signatures import COSIGN, KeyPair, events, held, permafrost, revisions, run_cosign

from conftest import Operator, release, wait_phase
from k8s_harness import Cluster
from oci_registry import crane, push

PREDICATE_TYPE = "https://permafrost.dev/attestations/guardrails/v1"
BUILD_POLICY = "shop-build-guardrails"


@pytest.fixture(scope="module")
def cosign() -> pathlib.Path:
    if not COSIGN.exists():
        pytest.skip(f"needs cosign (hack/build-binaries.sh node builds it): {COSIGN} not found")
    return COSIGN


@pytest.fixture
def policies(crds: Cluster) -> Iterator[list[str]]:
    """Names of the GuardrailPolicies a test creates; deleted afterwards (they are global)."""
    created: list[str] = []
    yield created
    for name in created:
        crds.kubectl("delete", "guardrailpolicy", name, "--ignore-not-found", check=False)


def build_policy(name: str = BUILD_POLICY) -> dict[str, Any]:
    """A build-stage policy: the artifact's image is pinned by digest."""
    return {
        "apiVersion": "permafrost.dev/v1alpha1",
        "kind": "GuardrailPolicy",
        "metadata": {"name": name},
        "spec": {
            "stages": ["build"],
            "rules": [{"name": "pinned", "expression": "object.image.contains('@sha256:')"}],
        },
    }


def artifact(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "permafrost.dev/v1alpha1",
        "kind": "Artifact",
        "metadata": {"name": "app"},
        "image": image,
    }


def requiring(
    name: str, patterns: list[str], key: KeyPair, *, stages: list[str], **attestation: Any
) -> dict[str, Any]:
    """A policy that requires the images signed by ``key`` and attested (by ``key``) as having
    passed the build-stage policy."""
    return {
        "apiVersion": "permafrost.dev/v1alpha1",
        "kind": "GuardrailPolicy",
        "metadata": {"name": name},
        "spec": {
            "stages": stages,
            "verifyImages": [
                {
                    "name": "ci-approved",
                    "images": patterns,
                    "keys": [key.pem],
                    "attestations": [{"policy": BUILD_POLICY, **attestation}],
                }
            ],
        },
    }


def write(path: pathlib.Path, *documents: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump_all(documents))
    return str(path)


def attest(tmp: pathlib.Path, image: str, key: KeyPair) -> subprocess.CompletedProcess[str]:
    return permafrost(
        "check", "--stage", "build", "--attest", "--key", str(key.private),
        "-p", write(tmp / "build-policy.yaml", build_policy()),
        write(tmp / "artifact.yaml", artifact(image)),
    )  # fmt: skip


def check_create(
    tmp: pathlib.Path, image: str, pol: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    """``permafrost check --stage create`` of a GuardedRelease running ``image``."""
    name, _, digest = image.partition("@")
    body = release("app", image=name, digest=f"@{digest}")
    body["metadata"]["namespace"] = "shop"
    return permafrost(
        "check", "--stage", "create", "-o", "json",
        "-p", write(tmp / "create-policy.yaml", pol),
        write(tmp / "release.yaml", body),
    )  # fmt: skip


def results(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [r for i in json.loads(done.stdout)["inputs"] for r in i["results"]]


def verify_attestation(
    cosign: pathlib.Path, tmp: pathlib.Path, image: str, key: KeyPair, kind: str = PREDICATE_TYPE
) -> subprocess.CompletedProcess[str]:
    return run_cosign(
        cosign, "verify-attestation", "--key", str(key.public), "--type", kind,
        "--insecure-ignore-tlog", "--allow-insecure-registry", image, cwd=tmp,
    )  # fmt: skip


# --- Permafrost and cosign, each reading what the other wrote ----------------------------------


@pytest.mark.parametrize("kind", ["ecdsa", "ed25519"])
def test_check_attest_pushes_what_cosign_verify_attestation_accepts(
    cosign: pathlib.Path, registry_host: str, tmp_path: pathlib.Path, kind: str
) -> None:
    repo = f"{registry_host}/shop/attested-{kind}"
    digest = push(f"{repo}:v1", f"app attested by permafrost ({kind})".encode())
    image = f"{repo}:v1@{digest}"
    signer, other = KeyPair(tmp_path, "ci", kind), KeyPair(tmp_path, "other")
    assert verify_attestation(cosign, tmp_path, f"{repo}@{digest}", signer).returncode != 0

    done = attest(tmp_path, image, signer)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{image}: attested by key" in done.stderr
    assert f"sha256-{digest.removeprefix('sha256:')}.att" in done.stderr

    verified = verify_attestation(cosign, tmp_path, f"{repo}@{digest}", signer)
    assert verified.returncode == 0, verified.stderr
    envelope = json.loads(verified.stdout.splitlines()[0])
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["predicateType"] == PREDICATE_TYPE
    assert statement["subject"][0]["digest"]["sha256"] == digest.removeprefix("sha256:")
    (recorded,) = statement["predicate"]["policies"]
    assert (recorded["name"], recorded["passed"]) == (BUILD_POLICY, True)
    assert statement["predicate"]["verdict"] == "Allowed"
    # Another key, another predicate type: cosign refuses.
    assert verify_attestation(cosign, tmp_path, f"{repo}@{digest}", other).returncode != 0
    wrong_type = verify_attestation(
        cosign, tmp_path, f"{repo}@{digest}", signer, kind="https://slsa.dev/provenance/v1"
    )
    assert wrong_type.returncode != 0

    # Attesting again replaces this key's attestation: one layer, not two.
    again = attest(tmp_path, image, signer)
    assert again.returncode == 0, again.stderr
    manifest = json.loads(crane("manifest", f"{repo}:sha256-{digest.removeprefix('sha256:')}.att"))
    assert len(manifest["layers"]) == 1

    # A tag is not attested (exit 1, said why); a verdict that denies attests nothing.
    tag = attest(tmp_path, f"{repo}:v1", signer)
    assert tag.returncode == 1
    assert "nothing attested: the verdict does not allow" in tag.stderr
    unpinned_policy = build_policy()
    unpinned_policy["spec"]["rules"][0]["expression"] = "true"
    unpinned = permafrost(
        "check", "--stage", "build", "--attest", "--key", str(signer.private),
        "-p", write(tmp_path / "lax.yaml", unpinned_policy),
        write(tmp_path / "tag.yaml", artifact(f"{repo}:v1")),
    )  # fmt: skip
    assert unpinned.returncode == 1
    assert "not attested" in unpinned.stderr
    assert "not pinned by a sha256 digest" in unpinned.stderr
    assert "Traceback" not in unpinned.stderr


def test_cosign_attest_pushes_what_permafrost_accepts(
    cosign: pathlib.Path, registry_host: str, tmp_path: pathlib.Path
) -> None:
    repo = f"{registry_host}/shop/cosigned"
    digest = push(f"{repo}:v1", b"app attested by cosign")
    image = f"{repo}:v1@{digest}"
    signer, stranger = KeyPair(tmp_path, "ci"), KeyPair(tmp_path, "stranger")
    assert permafrost("sign", image, "--key", str(signer.private)).returncode == 0
    pol = requiring("prod", [repo], signer, stages=["create"])

    missing = check_create(tmp_path, image, pol)
    assert missing.returncode == 1, missing.stdout + missing.stderr
    (result,) = results(missing)
    assert result["reason"] == "AttestationMissing"
    assert "permafrost check --stage build --attest" in result["message"]

    def cosign_attest(key: KeyPair, passed: bool) -> None:
        predicate = {
            "stage": "build",
            "verdict": "Allowed",
            "policies": [{"name": BUILD_POLICY, "enforcement": "Enforce", "passed": passed}],
        }
        (tmp_path / "predicate.json").write_text(json.dumps(predicate))
        done = run_cosign(
            cosign, "attest", "--key", str(key.cosign_key(cosign)), "--type", PREDICATE_TYPE,
            "--predicate", str(tmp_path / "predicate.json"), "--tlog-upload=false",
            "--allow-insecure-registry", "-y", f"{repo}@{digest}", cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    cosign_attest(stranger, passed=True)
    untrusted = check_create(tmp_path, image, pol)
    assert results(untrusted)[0]["reason"] == "AttestationUntrusted"
    cosign_attest(signer, passed=False)
    failed = check_create(tmp_path, image, pol)
    assert results(failed)[0]["reason"] == "PolicyNotPassed"
    assert "did not pass" in results(failed)[0]["message"]
    cosign_attest(signer, passed=True)
    passed = check_create(tmp_path, image, pol)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert [r["outcome"] for r in results(passed)] == ["Pass"]
    # Pinned to a spec digest the predicate does not record: not a pass.
    pinned = requiring("prod", [repo], signer, stages=["create"], policyDigest="sha256:" + "0" * 64)
    assert results(check_create(tmp_path, image, pinned))[0]["reason"] == "PolicyNotPassed"


def test_a_tag_pushed_again_has_no_attestation(registry_host: str, tmp_path: pathlib.Path) -> None:
    repo = f"{registry_host}/shop/moved"
    first = push(f"{repo}:v1", b"first, through CI")
    signer = KeyPair(tmp_path, "ci")
    assert permafrost("sign", f"{repo}@{first}", "--key", str(signer.private)).returncode == 0
    assert attest(tmp_path, f"{repo}:v1@{first}", signer).returncode == 0
    pol = requiring("prod", [repo], signer, stages=["create"])
    assert check_create(tmp_path, f"{repo}:v1@{first}", pol).returncode == 0
    # Pushed again by hand, and even signed: the new digest never went through the build stage.
    second = push(f"{repo}:v1", b"second, by hand")
    assert permafrost("sign", f"{repo}@{second}", "--key", str(signer.private)).returncode == 0
    moved = check_create(tmp_path, f"{repo}:v1@{second}", pol)
    assert moved.returncode == 1
    assert results(moved)[0]["reason"] == "AttestationMissing"
    # The first digest's attestation copied onto the second's tag names the first digest.
    crane(
        "copy",
        f"{repo}:sha256-{first.removeprefix('sha256:')}.att",
        f"{repo}:sha256-{second.removeprefix('sha256:')}.att",
    )
    copied = check_create(tmp_path, f"{repo}:v1@{second}", pol)
    assert results(copied)[0]["reason"] == "AttestationInvalid"
    assert "another digest" in results(copied)[0]["message"]


# --- the operator: a revision is created only from images CI attested -------------------------


def test_the_operator_holds_an_image_ci_did_not_attest_until_it_does(
    crds: Cluster,
    namespace: str,
    registry_host: str,
    operator: Operator,
    policies: list[str],
    tmp_path: pathlib.Path,
) -> None:
    repo = f"{registry_host}/{namespace}/app"
    digest = push(f"{repo}:v1", b"built, signed, not yet attested")
    signer = KeyPair(tmp_path, "ci")
    assert permafrost("sign", f"{repo}@{digest}", "--key", str(signer.private)).returncode == 0
    name = f"attested-{namespace}"
    crds.apply(requiring(name, [f"{registry_host}/{namespace}/*"], signer, stages=["create"]))
    policies.append(name)

    crds.apply(release("app", image=repo, digest=f"@{digest}"), namespace=namespace)
    found = held(crds, namespace, "app", "AttestationMissing")
    assert f"{name}/ci-approved: {repo}@{digest}: no attestation that" in found["message"]
    assert f"build-stage policy '{BUILD_POLICY}'" in found["message"]
    assert "no attestation that" in events(crds, namespace, "AttestationMissing")
    assert revisions(crds, namespace, "app") == []

    # CI runs its build-stage check and attests: seen within seconds (a registry is not watched).
    done = attest(tmp_path, f"{repo}:v1@{digest}", signer)
    assert done.returncode == 0, done.stdout + done.stderr
    wait_phase(crds, namespace, "app", "Stable", timeout=90)
    assert len(revisions(crds, namespace, "app")) == 1
