"""Cosign-compatible signatures, verified from bytes (permafrost.artifacts.signatures): keys
made here, payloads and layers as cosign writes them."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from permafrost import models
from permafrost.artifacts import attestations, images, signatures
from permafrost.policies import policy

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
IMAGE = f"registry.example/shop/app:1.0@{DIGEST}"


def pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(params=["ecdsa", "ed25519"])
def private(request: pytest.FixtureRequest) -> signatures.PrivateKey:
    if request.param == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def layer(data: bytes, signature: bytes | str | None) -> signatures.Layer:
    annotations = {}
    if signature is not None:
        annotations[signatures.SIGNATURE_ANNOTATION] = (
            signature if isinstance(signature, str) else base64.b64encode(signature).decode()
        )
    return signatures.Layer(
        media_type=signatures.SIMPLE_SIGNING,
        digest=signatures.blob_digest(data),
        annotations=annotations,
        blob=data,
    )


def signed(
    key: signatures.PrivateKey, *, image: str = IMAGE, digest: str = DIGEST
) -> signatures.Layer:
    data = signatures.payload(images.parse(image), digest)
    return layer(data, signatures.sign(key, data))


def check(
    layers: list[signatures.Layer], *keys: signatures.PublicKey, image: str = IMAGE
) -> signatures.Verification:
    return signatures.verify(image=image, ref=images.parse(image), layers=layers, keys=keys)


def test_a_signature_by_a_trusted_key_verifies(private: signatures.PrivateKey) -> None:
    trusted = signatures.load_public_key(pem(private))
    found = check([signed(private)], trusted)
    assert found.outcome == signatures.VERIFIED, found.message
    assert found.key == trusted.id
    assert trusted.id in found.message


def test_the_payload_is_cosigns() -> None:
    data = signatures.payload(images.parse(IMAGE), DIGEST)
    assert data == (
        b'{"critical":{"identity":{"docker-reference":"registry.example/shop/app"},'
        b'"image":{"docker-manifest-digest":"' + DIGEST.encode() + b'"},'
        b'"type":"cosign container image signature"},"optional":null}'
    )
    hub = signatures.payload(images.parse(f"nginx@{DIGEST}"), DIGEST)
    assert (
        json.loads(hub)["critical"]["identity"]["docker-reference"]
        == "index.docker.io/library/nginx"
    )
    assert signatures.signature_tag(DIGEST) == f"sha256-{'ab' * 32}.sig"


def test_one_of_several_signatures_and_keys_is_enough() -> None:
    mine, theirs = ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate()
    keys = [
        signatures.load_public_key(pem(k)) for k in (ec.generate_private_key(ec.SECP256R1()), mine)
    ]
    found = check([signed(theirs), signed(mine)], *keys)
    assert found.verified
    assert found.key == keys[1].id


def test_no_signature_is_not_signed(private: signatures.PrivateKey) -> None:
    found = check([], signatures.load_public_key(pem(private)))
    assert found.outcome == signatures.NOT_SIGNED
    assert signatures.signature_tag(DIGEST) in found.message


def test_a_signature_by_another_key_is_untrusted(private: signatures.PrivateKey) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    trusted = signatures.load_public_key(pem(private))
    found = check([signed(stranger)], trusted)
    assert found.outcome == signatures.UNTRUSTED
    assert "none by a trusted key" in found.message
    assert trusted.id in found.message


def test_a_trusted_signature_of_another_digest_or_repository_is_invalid(
    private: signatures.PrivateKey,
) -> None:
    trusted = signatures.load_public_key(pem(private))
    # A signature copied onto this digest's tag from another image.
    other_digest = check([signed(private, digest=OTHER)], trusted)
    assert other_digest.outcome == signatures.INVALID
    assert "another digest" in other_digest.message
    elsewhere = check([signed(private, image=f"registry.example/evil/app@{DIGEST}")], trusted)
    assert elsewhere.outcome == signatures.INVALID
    assert "another repository (registry.example/evil/app)" in elsewhere.message


def test_a_tampered_payload_is_not_verified(private: signatures.PrivateKey) -> None:
    trusted = signatures.load_public_key(pem(private))
    good = signed(private, digest=OTHER)
    assert good.blob is not None
    tampered = layer(
        good.blob.replace(OTHER.encode(), DIGEST.encode()),
        good.annotations[signatures.SIGNATURE_ANNOTATION],
    )
    assert check([tampered], trusted).outcome == signatures.UNTRUSTED


@pytest.mark.parametrize(
    ("bad", "said"),
    [
        (layer(b"{}", None), "no dev.cosignproject.cosign/signature annotation"),
        (layer(b"{}", "not base64!"), "not base64"),
        (
            signatures.Layer(signatures.SIMPLE_SIGNING, "sha256:" + "0" * 64, {}, None),
            "larger than",
        ),
    ],
)
def test_malformed_layers_are_invalid(bad: signatures.Layer, said: str) -> None:
    key = signatures.load_public_key(pem(ec.generate_private_key(ec.SECP256R1())))
    found = check([bad], key)
    assert found.outcome == signatures.INVALID
    assert said in found.message


def test_a_trusted_key_signing_garbage_is_invalid(private: signatures.PrivateKey) -> None:
    trusted = signatures.load_public_key(pem(private))
    found = check([layer(b"not json", signatures.sign(private, b"not json"))], trusted)
    assert found.outcome == signatures.INVALID
    assert "not a simple-signing payload" in found.message


def test_an_image_without_a_digest_cannot_be_verified() -> None:
    key = signatures.load_public_key(pem(ec.generate_private_key(ec.SECP256R1())))
    found = check([], key, image="registry.example/shop/app:1.0")
    assert found.outcome == signatures.UNPINNED


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("hello", "not a PEM public key"),
        (pem(ec.generate_private_key(ec.SECP384R1())), "only P-256"),
        (
            pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "only ECDSA P-256 and Ed25519",
        ),
    ],
)
def test_keys_that_cannot_be_used_are_refused(text: str, said: str) -> None:
    with pytest.raises(signatures.InvalidKey, match=said):
        signatures.load_public_key(text)


def test_private_keys_load_unencrypted_only(private: signatures.PrivateKey) -> None:
    plain = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    loaded = signatures.load_private_key(plain)
    assert signatures.public_key_of(loaded).id == signatures.load_public_key(pem(private)).id
    locked = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(signatures.InvalidKey, match="encrypted"):
        signatures.load_private_key(locked)


def test_the_artifact_is_an_oci_manifest_of_the_layers(private: signatures.PrivateKey) -> None:
    data = signatures.payload(images.parse(IMAGE), DIGEST)
    descriptor = signatures.signature_layer(data=data, signature=signatures.sign(private, data))
    config, manifest = signatures.artifact(layers=[descriptor])
    document = json.loads(manifest)
    assert document["mediaType"] == signatures.OCI_MANIFEST
    assert document["config"]["digest"] == signatures.blob_digest(config)
    assert document["layers"] == [descriptor]
    assert json.loads(config)["rootfs"]["diff_ids"] == [signatures.blob_digest(data)]
    assert signatures.layers_of(document) == [descriptor]
    with pytest.raises(ValueError, match="more than"):
        signatures.layers_of({"layers": [descriptor] * (signatures.MAX_SIGNATURES + 1)})


# --- verifyImages in GuardrailPolicies (permafrost.policies.policy) ------------------------------


def _policy(
    key: signatures.PrivateKey, *patterns: str, enforcement: str = "Enforce"
) -> policy.Policy:
    spec = models.GuardrailPolicySpec.model_validate(
        {
            "stages": ["build", "create"],
            "enforcement": enforcement,
            "verifyImages": [{"name": "signed", "images": list(patterns), "keys": [pem(key)]}],
        }
    )
    return policy.compile_policy("shop-signed", spec)


def _release(*images_: str) -> policy.Subject:
    containers = [{"name": f"c{i}", "image": image} for i, image in enumerate(images_)]
    return policy.Subject(
        object={
            "kind": "GuardedRelease",
            "spec": {"template": {"spec": {"containers": containers}}},
        }
    )


def test_a_policy_requires_signatures_of_the_images_its_patterns_cover() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    covered, other = IMAGE, f"registry.example/other/app@{DIGEST}"
    pol = _policy(key, "registry.example/shop/*")
    required = policy.image_requirements([pol], stage="create", subject=_release(covered, other))
    assert [(r.policy, r.rule, r.image) for r in required] == [("shop-signed", "signed", covered)]
    assert policy.image_requirements([pol], stage="promote", subject=_release(covered)) == ()
    deep = _policy(key, "registry.example/**")
    assert (
        len(policy.image_requirements([deep], stage="create", subject=_release(covered, other)))
        == 2
    )
    hub = _policy(key, "docker.io/library/*")
    assert policy.image_requirements([hub], stage="create", subject=_release(f"nginx@{DIGEST}"))
    artifact = policy.Subject(object={"kind": "Artifact", "image": covered})
    assert policy.image_requirements([pol], stage="build", subject=artifact)


def test_results_pass_only_when_every_covered_image_is_verified() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pol = _policy(key, "registry.example/**", enforcement="Warn")
    second = f"registry.example/shop/web@{OTHER}"
    required = policy.image_requirements([pol], stage="create", subject=_release(IMAGE, second))
    good = {r.key: signatures.Verification(r.image, signatures.VERIFIED, "ok") for r in required}
    assert [r.outcome for r in policy.signature_results(required, good)] == ["Pass"]
    one_bad = {
        **good,
        required[1].key: signatures.Verification(second, signatures.NOT_SIGNED, "no signature"),
    }
    (result,) = policy.signature_results(required, one_bad)
    assert (result.outcome, result.reason, result.enforcement) == ("Fail", "ImageNotSigned", "Warn")
    assert result.message == "no signature"
    assert result.to_json()["reason"] == "ImageNotSigned"
    # Nothing verified is never a pass.
    (missing,) = policy.signature_results(required, {})
    assert missing.outcome == "Error"
    assert missing.reason == "RegistryUnreachable"


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ({"keys": ["not a key"]}, "key 1: not a PEM public key"),
        ({"images": ["registry.example/[ab]"]}, "is not a repository pattern"),
    ],
)
def test_a_policy_with_a_key_or_pattern_that_cannot_be_used_does_not_compile(
    entry: dict[str, Any], said: str
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    spec = models.GuardrailPolicySpec.model_validate(
        {
            "stages": ["create"],
            "verifyImages": [
                {"name": "signed", "images": ["registry.example/**"], "keys": [pem(key)], **entry}
            ],
        }
    )
    with pytest.raises(policy.PolicyError, match=said):
        policy.compile_policy("p", spec)


def test_ed25519ph_signatures_as_cosign_makes_them_verify() -> None:
    """RFC 8032, 7.3 (Ed25519ph, "abc"), and a key's pure signature is not taken for one."""
    from permafrost.artifacts import ed25519ph

    public = bytes.fromhex("ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf")
    signature = bytes.fromhex(
        "98a70222f0b8121aa9d30f813d683f809e462b469c7ff87639499bb94e6dae41"
        "31f85042463c2a355a2003d062adf5aaa10b8c61e636062aaad11c2a26083406"
    )
    assert ed25519ph.verify(public, signature, b"abc")
    assert not ed25519ph.verify(public, signature, b"abd")
    assert not ed25519ph.verify(public, signature[:32] + bytes(32), b"abc")
    key = signatures.load_public_key(
        ed25519.Ed25519PublicKey.from_public_bytes(public)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert key.verifies(signature, b"abc")
    mine = ed25519.Ed25519PrivateKey.generate()
    raw = mine.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert not ed25519ph.verify(raw, mine.sign(b"abc"), b"abc")


# --- the operator's cache of verdicts (permafrost.artifacts.registry.SignatureChecker) -----------


class _Registry:
    """A registry client's signature lookup, counted: what it answers is set per test."""

    def __init__(self, answer: list[signatures.Layer] | Exception) -> None:
        self.answer, self.asked = answer, 0
        self.credentials: dict[str, tuple[str, str]] = {}  # the operator-wide config's

    def signature_layers(self, ref: images.Reference) -> list[signatures.Layer]:
        self.asked += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def signature_bundles(self, ref: images.Reference) -> list[bytes]:
        return []


def test_verdicts_are_cached_by_image_and_keys_for_as_long_as_they_hold() -> None:
    from permafrost.artifacts import registry

    key = ec.generate_private_key(ec.SECP256R1())
    trusted = (signatures.load_public_key(pem(key)),)
    now = [0.0]
    client = _Registry([signed(key)])
    checker = registry.SignatureChecker(client=client, clock=lambda: now[0])  # type: ignore[arg-type]
    assert checker.verify_now(IMAGE, trusted).verified
    now[0] += registry.VERIFIED_SECONDS - 1
    assert checker.verify_now(IMAGE, trusted).verified
    assert client.asked == 1
    # Another key set is another question.
    other = (signatures.load_public_key(pem(ec.generate_private_key(ec.SECP256R1()))),)
    assert checker.verify_now(IMAGE, other).outcome == signatures.UNTRUSTED
    assert client.asked == 2
    now[0] += registry.UNVERIFIED_SECONDS + 1
    assert checker.verify_now(IMAGE, other).outcome == signatures.UNTRUSTED
    assert client.asked == 3
    # An unreachable registry is never kept: asked again at once.
    client.answer = registry.RegistryError(registry.UNREACHABLE, "down")
    image = f"registry.example/shop/app@{OTHER}"
    assert checker.verify_now(image, trusted).outcome == signatures.UNREACHABLE
    assert checker.verify_now(image, trusted).outcome == signatures.UNREACHABLE
    assert client.asked == 5
    # A manifest that is not one: invalid, not unreachable.
    client.answer = registry.RegistryError(registry.INVALID, "not JSON")
    third = f"registry.example/shop/db@{DIGEST}"
    assert checker.verify_now(third, trusted).outcome == signatures.INVALID


def test_the_cache_is_bounded() -> None:
    from permafrost.artifacts import registry

    key = signatures.load_public_key(pem(ec.generate_private_key(ec.SECP256R1())))
    checker = registry.SignatureChecker(client=_Registry([]))  # type: ignore[arg-type]
    for n in range(registry.MAX_VERIFICATIONS + 10):
        checker.verify_now(f"registry.example/shop/app{n}@{DIGEST}", (key,))
    assert len(checker._cache) == registry.MAX_VERIFICATIONS
    assert checker.cached(f"registry.example/shop/app0@{DIGEST}", (key,)) is None
    assert checker._cache.bytes <= registry.MAX_VERIFICATION_BYTES


def test_the_cache_is_bounded_in_bytes_too() -> None:
    """Long image references (no schema bounds them) fill the bytes before the entries: the
    oldest go, the newest stay, and one larger than the whole bound is not kept at all."""
    from permafrost.artifacts import registry

    key = signatures.load_public_key(pem(ec.generate_private_key(ec.SECP256R1())))
    checker = registry.SignatureChecker(client=_Registry([]))  # type: ignore[arg-type]
    long = "x" * 100_000
    wanted = [f"registry.example/shop/{long}{n}@{DIGEST}" for n in range(400)]
    for image in wanted:
        checker.verify_now(image, (key,))
    assert checker._cache.bytes <= registry.MAX_VERIFICATION_BYTES
    # NB: each entry holds its reference twice (key and verdict) and once more in its message.
    assert 16 < len(checker._cache) < 400 // 4
    assert checker.cached(wanted[-1], (key,)) is not None
    assert checker.cached(wanted[0], (key,)) is None
    huge = f"registry.example/shop/{'y' * registry.MAX_VERIFICATION_BYTES}@{DIGEST}"
    assert checker.verify_now(huge, (key,)).outcome == signatures.NOT_SIGNED
    assert checker.cached(huge, (key,)) is None
    assert checker.cached(wanted[-1], (key,)) is not None


def test_a_bounded_cache_counts_its_bytes_as_entries_come_and_go() -> None:
    from permafrost.artifacts import registry

    cache: registry.Bounded[str, str] = registry.Bounded(
        max_entries=3, max_bytes=10, size=lambda k, v: len(v)
    )
    cache.put("a", "1234")
    cache.put("b", "1234")
    assert (len(cache), cache.bytes) == (2, 8)
    cache.put("a", "12")  # replaced: the newest now, its old size forgotten
    assert (len(cache), cache.bytes) == (2, 6)
    cache.put("c", "12345")  # 11 bytes: "b", the oldest, goes
    assert (cache.get("b"), cache.get("a"), cache.get("c")) == (None, "12", "12345")
    assert cache.bytes == 7
    cache.put("d", "1")
    cache.put("e", "1")  # 4 entries: "a" goes
    assert (len(cache), cache.get("a")) == (3, None)
    cache.put("f", "x" * 11)  # larger than the bound alone: not kept, nothing dropped
    assert (len(cache), cache.get("f"), cache.bytes) == (3, None, 7)
    cache.pop("c")
    assert (len(cache), cache.bytes) == (2, 2)


def test_a_bounded_cache_keeps_what_is_read_and_drops_the_least_recently_used() -> None:
    from permafrost.artifacts import registry

    cache: registry.Bounded[str, str] = registry.Bounded(
        max_entries=2, max_bytes=100, size=lambda k, v: len(v)
    )
    cache.put("hot", "1")
    cache.put("once", "1")
    assert cache.get("hot") == "1"  # read: now the most recently used
    cache.put("new", "1")
    assert (cache.get("hot"), cache.get("once"), cache.get("new")) == ("1", None, "1")


def _bundle(key: signatures.PrivateKey, digest: str, *, kind: str = signatures.IN_TOTO) -> bytes:
    """A sigstore bundle as cosign sign --new-bundle-format makes it (DSSE, in-toto)."""
    statement = json.dumps(
        {
            "_type": signatures.IN_TOTO_STATEMENT,
            "subject": [{"digest": {"sha256": digest.removeprefix("sha256:")}}],
            "predicateType": "https://sigstore.dev/cosign/sign/v1",
        }
    ).encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(kind), kind.encode(), len(statement), statement)
    envelope = {
        "payload": base64.b64encode(statement).decode(),
        "payloadType": kind,
        "signatures": [{"sig": base64.b64encode(signatures.sign(key, pae)).decode()}],
    }
    return json.dumps({"mediaType": signatures.BUNDLE, "dsseEnvelope": envelope}).encode()


def test_sigstore_bundles_among_the_referrers_verify(private: signatures.PrivateKey) -> None:
    trusted = signatures.load_public_key(pem(private))
    ref = images.parse(IMAGE)

    def check_bundles(*bundles: bytes) -> signatures.Verification:
        return signatures.verify(image=IMAGE, ref=ref, layers=(), keys=[trusted], bundles=bundles)

    found = check_bundles(_bundle(private, DIGEST))
    assert found.verified, found.message
    assert "sigstore bundle" in found.message
    assert check_bundles(_bundle(private, OTHER)).outcome == signatures.INVALID
    stranger = ec.generate_private_key(ec.SECP256R1())
    assert check_bundles(_bundle(stranger, DIGEST)).outcome == signatures.UNTRUSTED
    assert check_bundles(b"").outcome == signatures.INVALID
    other_type = check_bundles(_bundle(private, DIGEST, kind="text/plain"))
    assert other_type.outcome == signatures.INVALID
    assert "not in-toto" in other_type.message


# --- with the credentials the pods pull with ------------------------------------------------------

HOST = "registry.example"


class _Private:
    """A registry whose signatures only ``allowed`` credentials may read; what each lookup was
    made with (the client's credentials for HOST), in order."""

    def __init__(self, allowed: tuple[str, str], answer: signatures.Layer) -> None:
        self.allowed, self.answer = allowed, answer
        self.asked: list[tuple[str, str] | None] = []


def _serving(fake: _Private, monkeypatch: pytest.MonkeyPatch) -> None:
    from permafrost.artifacts import registry

    def signature_layers(self: registry.Client, ref: images.Reference) -> list[signatures.Layer]:
        creds = self.credentials.get(ref.api_host)
        fake.asked.append(creds)
        if creds != fake.allowed:
            raise registry.RegistryError(
                registry.UNAUTHORIZED, f"{ref.text}: the registry refused the credentials"
            )
        return [fake.answer]

    def signature_bundles(self: registry.Client, ref: images.Reference) -> list[bytes]:
        return []

    # NB: every client the checker makes answers through the fake, with its own credentials.
    monkeypatch.setattr(registry.Client, "signature_layers", signature_layers)
    monkeypatch.setattr(registry.Client, "signature_bundles", signature_bundles)


async def test_signatures_are_fetched_with_the_given_credentials_cached_per_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from permafrost.artifacts import registry

    key = ec.generate_private_key(ec.SECP256R1())
    trusted = (signatures.load_public_key(pem(key)),)
    fake = _Private(("shop", "right"), signed(key))
    _serving(fake, monkeypatch)
    checker = registry.SignatureChecker(client=registry.Client(), clock=lambda: 0.0)
    wanted = [(IMAGE, trusted, ())]
    asked = attestations.verification_key(IMAGE, trusted, ())

    right = await checker.verify(wanted, credentials={HOST: ("shop", "right")})
    assert right[asked].verified, right[asked].message
    # Another namespace, without credentials or with other ones: asked again, refused (never
    # the verdict the right credentials earned).
    anonymous = await checker.verify(wanted, credentials={})
    wrong = await checker.verify(wanted, credentials={HOST: ("shop", "wrong")})
    for refused in (anonymous[asked], wrong[asked]):
        assert refused.outcome == signatures.UNAUTHORIZED == "RegistryUnauthorized"
        assert "refused the credentials" in refused.message
    assert fake.asked == [("shop", "right"), None, ("shop", "wrong")]
    # The same credentials (from any namespace) share the verdict; a refusal is not kept.
    fake.asked.clear()
    again = await checker.verify(wanted, credentials={HOST: ("shop", "right")})
    assert again[asked].verified
    assert fake.asked == []
    await checker.verify(wanted, credentials={})
    assert fake.asked == [None]
    # Without credentials given: the operator-wide ones (here the same: the same verdict).
    checker.client = registry.Client(credentials={HOST: ("shop", "right")})
    fake.asked.clear()
    assert (await checker.verify(wanted))[asked].verified
    assert checker.verify_now(IMAGE, trusted).verified
    assert fake.asked == []


def test_a_verdict_without_usable_pull_secrets_names_the_worst_problem() -> None:
    missing = images.Check(
        "Secret shop/a", images.PULL_SECRET_MISSING, "the image pull secret shop/a does not exist"
    )
    forbidden = images.Check(
        "Secret shop/b", images.PULL_SECRET_FORBIDDEN, "the operator may not read shop/b"
    )
    found = signatures.not_fetched(IMAGE, [missing, forbidden])
    # NB: the registry check's order: a secret the operator may not read comes first.
    assert found.outcome == "PullSecretForbidden"
    assert found.message == f"{IMAGE}: not verified: the operator may not read shop/b"
    assert not found.verified
    only = signatures.not_fetched(IMAGE, [missing, missing])
    assert only.outcome == "PullSecretMissing"
    assert only.message.count("does not exist") == 1
    with pytest.raises(ValueError, match="no problem"):
        signatures.not_fetched(IMAGE, [])


@pytest.mark.parametrize("outcome", sorted(signatures.NOT_ASKED))
def test_a_verdict_that_could_not_be_asked_is_an_error_with_its_reason(outcome: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pol = _policy(key, "registry.example/**")
    required = policy.image_requirements([pol], stage="create", subject=_release(IMAGE))
    found = {r.key: signatures.Verification(r.image, outcome, f"{IMAGE}: why") for r in required}
    (result,) = policy.signature_results(required, found)
    assert (result.outcome, result.reason, result.message) == ("Error", outcome, f"{IMAGE}: why")
    assert outcome in {
        "RegistryUnreachable",
        "RegistryUnauthorized",
        "PullSecretMissing",
        "PullSecretInvalid",
        "PullSecretForbidden",
        "RegistryCheckForbidden",
    }
    # A verdict on the image itself is a Fail.
    said = {
        r.key: signatures.Verification(r.image, signatures.NOT_SIGNED, "none") for r in required
    }
    assert [r.outcome for r in policy.signature_results(required, said)] == ["Fail"]
