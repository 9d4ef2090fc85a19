"""Image signatures against a real OCI registry (distribution, on loopback) with the real cosign
(built from its Go module by hack/build-binaries.sh): cosign signs and Permafrost verifies,
Permafrost signs and cosign verifies, a tag pushed again keeps the pinned digest verified, and
the operator holds a GuardedRelease whose image is not signed by a trusted key.

Everything is offline: key pairs, no transparency log (``--tlog-upload=false``,
``--insecure-ignore-tlog``), no certificate authority.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from conftest import Operator, release, status, wait_phase
from k8s_harness import Cluster, _versions, cache_root, condition, wait_for
from oci_registry import crane, push

COSIGN = cache_root() / f"cosign-{_versions()['COSIGN_VERSION']}" / "bin" / "cosign"


@pytest.fixture(scope="module")
def cosign() -> pathlib.Path:
    if not COSIGN.exists():
        pytest.skip(f"needs cosign (hack/build-binaries.sh node builds it): {COSIGN} not found")
    return COSIGN


def run_cosign(
    cosign: pathlib.Path, *args: str, cwd: pathlib.Path
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(cwd),
        "COSIGN_PASSWORD": "",
        # NB: offline. cosign still tries to fetch sigstore's trusted root from the internet
        # (and goes on without it); any such request goes to a proxy on the discard port of
        # loopback and fails at once, wherever the test runs; the loopback registry is direct.
        "TUF_ROOT": str(cwd / "tuf"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    return subprocess.run(
        [str(cosign), *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


class KeyPair:
    """A key made here: its private PEM (PKCS #8, unencrypted) and public PEM, as files."""

    def __init__(self, directory: pathlib.Path, name: str, kind: str = "ecdsa") -> None:
        key: Any = (
            ec.generate_private_key(ec.SECP256R1())
            if kind == "ecdsa"
            else ed25519.Ed25519PrivateKey.generate()
        )
        directory.mkdir(parents=True, exist_ok=True)
        self.private = directory / f"{name}.pem"
        self.public = directory / f"{name}.pub"
        self.private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.public.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        self.directory, self.name = directory, name

    def cosign_key(self, cosign: pathlib.Path) -> pathlib.Path:
        """The same key as cosign's own encrypted ``.key`` (cosign import-key-pair)."""
        prefix = self.directory / f"{self.name}-cosign"
        done = run_cosign(
            cosign, "import-key-pair", "--key", str(self.private),
            "--output-key-prefix", str(prefix), "-y", cwd=self.directory,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return prefix.with_suffix(".key")

    @property
    def pem(self) -> str:
        return self.public.read_text()


def permafrost(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "permafrost", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def policy(
    name: str,
    patterns: Sequence[str],
    *keys: KeyPair,
    enforcement: str = "Enforce",
    stages: Sequence[str] = ("build", "create"),
) -> dict[str, Any]:
    return {
        "apiVersion": "permafrost.dev/v1alpha1",
        "kind": "GuardrailPolicy",
        "metadata": {"name": name},
        "spec": {
            "stages": list(stages),
            "enforcement": enforcement,
            "verifyImages": [
                {"name": "signed", "images": list(patterns), "keys": [k.pem for k in keys]}
            ],
        },
    }


def check_artifact(
    tmp: pathlib.Path, image: str, pol: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    (tmp / "policy.json").write_text(json.dumps(pol))
    artifact = {
        "apiVersion": "permafrost.dev/v1alpha1",
        "kind": "Artifact",
        "metadata": {"name": "app"},
        "image": image,
    }
    (tmp / "artifact.json").write_text(json.dumps(artifact))
    return permafrost(
        "check",
        "--stage",
        "build",
        "-o",
        "json",
        "-p",
        str(tmp / "policy.json"),
        str(tmp / "artifact.json"),
    )


def results(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [r for i in json.loads(done.stdout)["inputs"] for r in i["results"]]


# --- cosign and Permafrost, each reading what the other wrote ----------------------------------


@pytest.mark.parametrize("kind", ["ecdsa", "ed25519"])
def test_cosign_signs_and_permafrost_verifies(
    cosign: pathlib.Path, registry_host: str, tmp_path: pathlib.Path, kind: str
) -> None:
    repo = f"{registry_host}/shop/{kind}"
    digest = push(f"{repo}:v1", f"app {kind}".encode())
    image = f"{repo}:v1@{digest}"
    signer, stranger = KeyPair(tmp_path, "ci", kind), KeyPair(tmp_path, "stranger")
    unsigned = check_artifact(
        tmp_path, image, policy("signed", [f"{registry_host}/shop/*"], signer)
    )
    assert unsigned.returncode == 1, unsigned.stderr
    assert results(unsigned)[0]["reason"] == "ImageNotSigned"

    done = run_cosign(
        cosign, "sign", "--key", str(signer.cosign_key(cosign)), "--tlog-upload=false",
        "--allow-insecure-registry", "-y", f"{repo}@{digest}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    verified = check_artifact(
        tmp_path, image, policy("signed", [f"{registry_host}/shop/*"], signer)
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert [r["outcome"] for r in results(verified)] == ["Pass"]
    other = check_artifact(tmp_path, image, policy("signed", [f"{registry_host}/**"], stranger))
    assert other.returncode == 1
    assert results(other)[0]["reason"] == "SignatureUntrusted"
    # An image the policy's patterns do not cover is not its business.
    elsewhere = check_artifact(tmp_path, image, policy("signed", ["registry.example/**"], stranger))
    assert elsewhere.returncode == 0
    assert results(elsewhere) == []


def test_cosign_bundles_as_oci_referrers_verify(
    cosign: pathlib.Path, registry_host: str, tmp_path: pathlib.Path
) -> None:
    """cosign sign --new-bundle-format: a sigstore bundle (DSSE, in-toto) attached as an OCI
    1.1 referrer (distribution v3 has no referrers API: cosign writes the referrers tag)."""
    repo = f"{registry_host}/shop/bundled"
    digest = push(f"{repo}:v1", b"app in a bundle")
    signer, stranger = KeyPair(tmp_path, "ci"), KeyPair(tmp_path, "stranger")
    done = run_cosign(
        cosign, "sign", "--key", str(signer.cosign_key(cosign)), "--tlog-upload=false",
        "--new-bundle-format", "--allow-insecure-registry", "-y", f"{repo}@{digest}",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    image = f"{repo}:v1@{digest}"
    verified = check_artifact(tmp_path, image, policy("signed", [repo], signer))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    other = check_artifact(tmp_path, image, policy("signed", [repo], stranger))
    assert results(other)[0]["reason"] == "SignatureUntrusted"


def test_permafrost_signs_and_cosign_verifies(
    cosign: pathlib.Path, registry_host: str, tmp_path: pathlib.Path
) -> None:
    repo = f"{registry_host}/shop/app"
    digest = push(f"{repo}:v1", b"app signed by permafrost")
    signer, other = KeyPair(tmp_path, "ci"), KeyPair(tmp_path, "other", "ed25519")

    def cosign_verify(key: KeyPair) -> subprocess.CompletedProcess[str]:
        return run_cosign(
            cosign, "verify", "--key", str(key.public), "--insecure-ignore-tlog",
            "--allow-insecure-registry", f"{repo}@{digest}", cwd=tmp_path,
        )  # fmt: skip

    assert cosign_verify(signer).returncode != 0
    signed = permafrost("sign", f"{repo}:v1@{digest}", "--key", str(signer.private))
    assert signed.returncode == 0, signed.stderr
    assert f"sha256-{digest.removeprefix('sha256:')}.sig" in signed.stdout
    done = cosign_verify(signer)
    assert done.returncode == 0, done.stderr
    claims = json.loads(done.stdout)
    assert claims[0]["critical"]["image"]["docker-manifest-digest"] == digest
    assert claims[0]["critical"]["identity"]["docker-reference"] == repo
    assert cosign_verify(other).returncode != 0
    # A second key adds a signature; the first one stays.
    again = permafrost("sign", f"{repo}@{digest}", "--key", str(other.private))
    assert again.returncode == 0, again.stderr
    assert cosign_verify(signer).returncode == 0
    assert cosign_verify(other).returncode == 0, cosign_verify(other).stderr
    # Signing again with a key that already signed changes nothing.
    same = permafrost("sign", f"{repo}@{digest}", "--key", str(signer.private))
    assert same.returncode == 0
    assert "already signed" in same.stdout
    # A tag is not signed: a signature is on a digest.
    tag = permafrost("sign", f"{repo}:v1", "--key", str(signer.private))
    assert tag.returncode == 2
    assert "permafrost pin" in tag.stderr


def test_a_tag_pushed_again_keeps_the_pinned_digest_verified(
    registry_host: str, tmp_path: pathlib.Path
) -> None:
    repo = f"{registry_host}/shop/moving"
    first = push(f"{repo}:v1", b"first content")
    signer = KeyPair(tmp_path, "ci")
    assert permafrost("sign", f"{repo}@{first}", "--key", str(signer.private)).returncode == 0
    second = push(f"{repo}:v1", b"other content, same tag")
    assert second != first
    assert crane("digest", f"{repo}:v1") == second
    pol = policy("signed", [repo], signer)
    assert check_artifact(tmp_path, f"{repo}:v1@{first}", pol).returncode == 0
    moved = check_artifact(tmp_path, f"{repo}:v1@{second}", pol)
    assert moved.returncode == 1
    assert results(moved)[0]["reason"] == "ImageNotSigned"
    # The signature of the first digest copied onto the second's tag is refused: it names the
    # first digest.
    crane(
        "copy",
        f"{repo}:sha256-{first.removeprefix('sha256:')}.sig",
        f"{repo}:sha256-{second.removeprefix('sha256:')}.sig",
    )
    copied = check_artifact(tmp_path, f"{repo}:v1@{second}", pol)
    assert results(copied)[0]["reason"] == "SignatureInvalid"
    assert "another digest" in results(copied)[0]["message"]


# --- the operator: a revision is created only from images signed by a trusted key -----------


@pytest.fixture
def policies(crds: Cluster) -> Iterator[list[str]]:
    """Names of the GuardrailPolicies a test creates; deleted afterwards (they are global)."""
    created: list[str] = []
    yield created
    for name in created:
        crds.kubectl("delete", "guardrailpolicy", name, "--ignore-not-found", check=False)


def held(cluster: Cluster, namespace: str, name: str, reason: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        st = status(cluster, namespace, name)
        compliant = condition({"status": st}, "PolicyCompliant")
        ok = st.get("phase") == "Held" and compliant and compliant["reason"] == reason
        return dict(compliant) if ok and compliant else None

    return wait_for(found, timeout=60, interval=0.5, what=f"{name} held ({reason})")


def events(cluster: Cluster, namespace: str, reason: str) -> str:
    return cluster.kubectl(
        "get", "events", "--field-selector",
        f"reason={reason},involvedObject.kind=GuardedRelease",
        "-o", "jsonpath={.items[*].message}", namespace=namespace,
    ).stdout  # fmt: skip


def revisions(cluster: Cluster, namespace: str, name: str) -> list[str]:
    found = cluster.get(
        "deployments", namespace=namespace, selector=f"permafrost.dev/release={name}"
    )
    return [d["metadata"]["name"] for d in found["items"]]


def test_the_operator_creates_revisions_only_from_images_signed_by_a_trusted_key(
    crds: Cluster,
    namespace: str,
    registry_host: str,
    operator: Operator,
    policies: list[str],
    tmp_path: pathlib.Path,
) -> None:
    repo = f"{registry_host}/{namespace}/app"
    good, bare, wrong = (push(f"{repo}:{t}", t.encode()) for t in ("good", "bare", "wrong"))
    trusted, stranger = KeyPair(tmp_path, "trusted"), KeyPair(tmp_path, "stranger")
    for digest, key in ((good, trusted), (wrong, stranger)):
        done = permafrost("sign", f"{repo}@{digest}", "--key", str(key.private))
        assert done.returncode == 0, done.stderr
    name = f"signed-{namespace}"
    crds.apply(policy(name, [f"{registry_host}/{namespace}/*"], trusted, stages=["create"]))
    policies.append(name)

    crds.apply(release("good", image=repo, digest=f"@{good}"), namespace=namespace)
    crds.apply(release("bare", image=repo, digest=f"@{bare}"), namespace=namespace)
    crds.apply(release("wrong", image=repo, digest=f"@{wrong}"), namespace=namespace)
    wait_phase(crds, namespace, "good", "Stable", timeout=90)
    bare_held = held(crds, namespace, "bare", "ImageNotSigned")
    assert f"{name}/signed: {repo}@{bare}: no signature" in bare_held["message"]
    assert "no signature" in events(crds, namespace, "ImageNotSigned")
    wrong_held = held(crds, namespace, "wrong", "SignatureUntrusted")
    assert "none by a trusted key" in wrong_held["message"]
    for held_name in ("bare", "wrong"):
        assert revisions(crds, namespace, held_name) == [], held_name

    # Signed afterwards by the trusted key: seen within seconds (a registry is not watched).
    assert permafrost("sign", f"{repo}@{bare}", "--key", str(trusted.private)).returncode == 0
    wait_phase(crds, namespace, "bare", "Stable", timeout=90)


def test_a_warn_policy_reports_an_unsigned_image_and_lets_it_roll_out(
    crds: Cluster,
    namespace: str,
    registry_host: str,
    operator: Operator,
    policies: list[str],
    tmp_path: pathlib.Path,
) -> None:
    repo = f"{registry_host}/{namespace}/app"
    digest = push(f"{repo}:bare", b"not signed")
    name = f"signed-warn-{namespace}"
    crds.apply(policy(name, [repo], KeyPair(tmp_path, "k"), enforcement="Warn", stages=["create"]))
    policies.append(name)
    crds.apply(release("bare", image=repo, digest=f"@{digest}"), namespace=namespace)
    st = wait_phase(crds, namespace, "bare", "Stable", timeout=90)
    compliant = condition({"status": st}, "PolicyCompliant")
    assert compliant is not None
    assert compliant["reason"] == "PolicyWarnings"
    assert "no signature" in compliant["message"]
    assert "no signature" in events(crds, namespace, "PolicyWarning")
