"""Cosign-compatible signatures, verified from bytes (permafrost.artifacts.signatures): keys
made here, payloads and layers as cosign writes them."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from permafrost.artifacts import images, signatures

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
