"""Cosign-compatible image signatures: what signature artifacts prove about a digest. Pure.

The format is cosign's "simple signing" layout, the one ``cosign sign --key`` writes by default
and every verifier of it reads (cosign, Kyverno's ``verifyImages``, sigstore's
policy-controller): the signatures of ``REPO@sha256:<hex>`` are the layers of an OCI image
manifest tagged ``sha256-<hex>.sig`` in the same repository. Each layer's blob is a JSON
payload naming the digest it signs (``critical.image.docker-manifest-digest``) and the
repository (``critical.identity.docker-reference``); its annotation
``dev.cosignproject.cosign/signature`` holds the base64 signature of exactly those bytes
(ECDSA P-256 with SHA-256, DER-encoded; or Ed25519).

This module decides, from bytes already fetched, whether an image is signed by one of a set
of public keys, and makes signatures and their artifacts; the registry adapter
(:mod:`permafrost.artifacts.registry`) fetches and pushes them. No Rekor, no Fulcio: keyless
signatures need the transparency log and the certificate authority on the internet.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from permafrost.artifacts import ed25519ph, images

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PAYLOAD_TYPE = "cosign container image signature"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
# A simple-signing payload is a few hundred bytes; anything far larger is not one (and is not
# fetched: the bound is checked against the manifest's declared size first).
MAX_PAYLOAD_BYTES = 64 * 1024
# OCI 1.1 referrers holding sigstore bundles (cosign sign --new-bundle-format): a DSSE envelope
# of an in-toto statement whose subject is the image's digest.
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO = "application/vnd.in-toto+json"
IN_TOTO_STATEMENT = "https://in-toto.io/Statement/v1"
MAX_SIGNATURES = 64
MAX_KEYS = 16

# Outcomes (also the reasons of conditions and Events).
VERIFIED = "Verified"
NOT_SIGNED = "ImageNotSigned"
UNTRUSTED = "SignatureUntrusted"
INVALID = "SignatureInvalid"
UNPINNED = "ImageNotPinned"
UNREACHABLE = "RegistryUnreachable"
# The registry refused the credentials the pods pull with (or asked for some, and none were
# given): the registry check's value (permafrost.artifacts.images.UNAUTHORIZED).
UNAUTHORIZED = images.UNAUTHORIZED
# The outcomes that say nothing of the image: its registry could not be asked (unreachable,
# refusing the credentials), or the credentials its pods pull with could not be had (a pull
# secret missing, unusable or not readable: the registry check's reasons). A policy result of
# them is an Error, not a Fail; they are never cached; for a revision that already runs they
# say nothing new.
NOT_ASKED = frozenset({UNREACHABLE, UNAUTHORIZED, *images.CREDENTIALS_UNUSABLE})

_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


class InvalidKey(ValueError):
    """A key that cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True)
class PublicKey:
    """A trusted public key: ``id`` is ``sha256:`` and the first 16 hex digits of the SHA-256
    of its DER SubjectPublicKeyInfo (what messages name it by)."""

    id: str
    algorithm: str  # "ecdsa-p256" or "ed25519"
    key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey = dataclasses.field(compare=False)

    def verifies(self, signature: bytes, payload: bytes) -> bool:
        """ECDSA over SHA-256 (DER); Ed25519, pure or prehashed (Ed25519ph: what cosign v2
        signs images with when given an Ed25519 key, while its verify expects pure)."""
        try:
            if isinstance(self.key, ec.EllipticCurvePublicKey):
                self.key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
            else:
                self.key.verify(signature, payload)
        except (crypto_exceptions.InvalidSignature, ValueError):
            if isinstance(self.key, ed25519.Ed25519PublicKey):
                raw = self.key.public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw
                )
                return ed25519ph.verify(raw, signature, payload)
            return False
        return True


def _key_id(key: Any) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()[:16]


def load_public_key(pem: str | bytes) -> PublicKey:
    """A PEM public key (``-----BEGIN PUBLIC KEY-----``, as ``cosign.pub``): ECDSA P-256 or
    Ed25519. Raises :class:`InvalidKey`."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data.strip() + b"\n")
    except (ValueError, TypeError, crypto_exceptions.UnsupportedAlgorithm) as exc:
        raise InvalidKey(f"not a PEM public key: {_first_line(exc)}") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise InvalidKey(f"an ECDSA key on {key.curve.name}: only P-256 is supported")
        return PublicKey(id=_key_id(key), algorithm="ecdsa-p256", key=key)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return PublicKey(id=_key_id(key), algorithm="ed25519", key=key)
    raise InvalidKey(f"a {type(key).__name__}: only ECDSA P-256 and Ed25519 keys are supported")


PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def load_private_key(pem: bytes) -> PrivateKey:
    """An unencrypted PEM private key (PKCS #8, or SEC 1 ``EC PRIVATE KEY``): ECDSA P-256 or
    Ed25519. Raises :class:`InvalidKey` (also for an encrypted key, such as cosign's own
    ``cosign.key``)."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise InvalidKey("the key is encrypted: give an unencrypted PEM key") from None
    except (ValueError, crypto_exceptions.UnsupportedAlgorithm) as exc:
        raise InvalidKey(f"not a PEM private key: {_first_line(exc)}") from None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise InvalidKey(f"a {type(key).__name__}: only ECDSA P-256 and Ed25519 keys are supported")


def public_key_of(key: PrivateKey) -> PublicKey:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return load_public_key(pem)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def signature_tag(digest: str) -> str:
    """The tag cosign stores a digest's signatures under: ``sha256-<hex>.sig``."""
    algorithm, _, hexdigits = digest.partition(":")
    return f"{algorithm}-{hexdigits}.sig"


def docker_reference(ref: images.Reference) -> str:
    """The repository as cosign writes it in a payload (Docker Hub as ``index.docker.io``)."""
    registry = "index.docker.io" if ref.registry == images.DOCKER_HUB else ref.registry
    return f"{registry}/{ref.repository}"


def _same_repository(written: str, ref: images.Reference) -> bool:
    try:
        other = images.parse(written)
    except images.InvalidReference:
        return False
    hub = {images.DOCKER_HUB, "index.docker.io", images.DOCKER_HUB_API}
    registry = images.DOCKER_HUB if other.registry in hub else other.registry
    mine = images.DOCKER_HUB if ref.registry in hub else ref.registry
    repository = other.repository
    if registry == images.DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    return (registry, repository) == (mine, ref.repository)


def payload(ref: images.Reference, digest: str) -> bytes:
    """The simple-signing payload for ``digest`` in ``ref``'s repository, byte for byte as
    cosign writes it."""
    document = {
        "critical": {
            "identity": {"docker-reference": docker_reference(ref)},
            "image": {"docker-manifest-digest": digest},
            "type": PAYLOAD_TYPE,
        },
        "optional": None,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def sign(key: PrivateKey, data: bytes) -> bytes:
    """The signature of ``data`` as cosign makes it: ECDSA P-256 over SHA-256 (DER), or
    Ed25519."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    return key.sign(data)


# --- what was fetched, and what it proves -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer of a signature manifest: its descriptor, and its blob if it could be used
    (``None``: ``problem`` says why not: larger than :data:`MAX_PAYLOAD_BYTES`, missing, or
    not the content its digest names)."""

    media_type: str
    digest: str
    annotations: Mapping[str, str]
    blob: bytes | None
    problem: str = ""


@dataclasses.dataclass(frozen=True)
class Verification:
    """What the signatures of one image say: ``outcome`` is one of the constants above;
    ``key`` the id of the key that verified it."""

    image: str
    outcome: str
    message: str = ""
    key: str | None = None

    @property
    def verified(self) -> bool:
        return self.outcome == VERIFIED


def not_fetched(image: str, problems: Sequence[images.Check]) -> Verification:
    """The verdict on ``image`` when the credentials its pods pull with could not be had
    (``problems``: the registry check's verdicts on the pull secrets or the ServiceAccount
    that could not be used), so nothing was fetched: the first problem's outcome, in the order
    the registry check ranks them (:func:`permafrost.artifacts.images.hold_of`: a secret the
    operator may not read first), with the messages of the problems of that outcome."""
    found = images.first_problem(problems)
    if found is None:
        raise ValueError("no problem to report")
    outcome, bad = found
    said = "; ".join(dict.fromkeys(c.message for c in bad))
    return Verification(image, outcome, f"{image}: not verified: {said}")


def layers_of(manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The layer descriptors of a signature manifest; raises ``ValueError`` if it has none
    usable, or too many."""
    found = manifest.get("layers") if isinstance(manifest, Mapping) else None
    if not isinstance(found, list) or not all(isinstance(d, Mapping) for d in found):
        raise ValueError("the signature manifest has no list of layers")
    if len(found) > MAX_SIGNATURES:
        raise ValueError(
            f"the signature manifest has {len(found)} layers (more than {MAX_SIGNATURES})"
        )
    return found


def verify(
    *,
    image: str,
    ref: images.Reference,
    layers: Sequence[Layer],
    keys: Sequence[PublicKey],
    bundles: Sequence[bytes] = (),
) -> Verification:
    """Whether one of ``layers`` is a signature by one of ``keys`` of ``ref.digest`` in
    ``ref``'s repository.

    Verified: a signature checks with a key, and its payload names this digest and this
    repository. Otherwise, in this order: a signature by a trusted key for something else (a
    signature copied from another image or repository) or malformed layers only: invalid;
    well-formed signatures by none of the keys: untrusted; no signature at all: not signed.
    """
    digest = ref.digest or ""
    if not _DIGEST.match(digest):
        return Verification(
            image,
            UNPINNED,
            f"{image}: not pinned by a sha256 digest: only a digest can be verified",
        )
    if not layers and not bundles:
        return Verification(
            image,
            NOT_SIGNED,
            f"{image}: no signature (no {signature_tag(digest)} in its repository, no "
            "sigstore bundle among its referrers)",
        )
    mismatched: list[str] = []
    malformed: list[str] = []
    untrusted = 0
    for layer in layers:
        short = layer.digest[:19]
        encoded = layer.annotations.get(SIGNATURE_ANNOTATION)
        if layer.blob is None:
            why = layer.problem or f"is larger than {MAX_PAYLOAD_BYTES} bytes"
            malformed.append(f"layer {short} {why}")
            continue
        if not encoded:
            malformed.append(f"layer {short} has no {SIGNATURE_ANNOTATION} annotation")
            continue
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            malformed.append(f"layer {short}: the signature is not base64")
            continue
        by = next((k for k in keys if k.verifies(raw, layer.blob)), None)
        if by is None:
            untrusted += 1
            continue
        problem = _claims_problem(layer.blob, ref=ref, digest=digest)
        if problem is None:
            return Verification(image, VERIFIED, f"{image}: signed by key {by.id}", key=by.id)
        mismatched.append(f"key {by.id} signed {problem}")
    for number, bundle in enumerate(bundles, start=1):
        try:
            envelope, payload_bytes, signed_bytes = _envelope(bundle)
        except ValueError as exc:
            malformed.append(f"bundle {number}: {exc}")
            continue
        by = next((k for k in keys if any(k.verifies(s, signed_bytes) for s in envelope)), None)
        if by is None:
            untrusted += 1
            continue
        problem = _statement_problem(payload_bytes, digest=digest)
        if problem is None:
            return Verification(
                image, VERIFIED, f"{image}: signed by key {by.id} (sigstore bundle)", key=by.id
            )
        mismatched.append(f"key {by.id} signed {problem}")
    if mismatched:
        return Verification(
            image,
            INVALID,
            f"{image}: a trusted signature for something else: " + "; ".join(mismatched),
        )
    if untrusted:
        ids = ", ".join(k.id for k in keys)
        return Verification(
            image,
            UNTRUSTED,
            f"{image}: {untrusted} signature(s), none by a trusted key ({ids})"
            + (f"; also malformed: {'; '.join(malformed)}" if malformed else ""),
        )
    return Verification(image, INVALID, f"{image}: malformed signature(s): " + "; ".join(malformed))


def _claims_problem(blob: bytes, *, ref: images.Reference, digest: str) -> str | None:
    """Why a payload does not name this digest in this repository (None: it does)."""
    try:
        document = json.loads(blob)
        critical = document["critical"]
        named = critical["image"]["docker-manifest-digest"]
        identity = critical["identity"]["docker-reference"]
    except (ValueError, KeyError, TypeError):
        return "a payload that is not a simple-signing payload"
    if named != digest:
        return f"another digest ({str(named)[:19]}…)"
    if not isinstance(identity, str) or not _same_repository(identity, ref):
        return f"another repository ({identity})"
    return None


def _envelope(bundle: bytes) -> tuple[list[bytes], bytes, bytes]:
    """A bundle's DSSE signatures, payload, and the bytes signed (DSSE's pre-authentication
    encoding). Raises ``ValueError`` saying what is wrong."""
    try:
        document = json.loads(bundle)
        dsse = document["dsseEnvelope"]
        payload_type = dsse["payloadType"]
        payload_bytes = base64.b64decode(dsse["payload"], validate=True)
        sigs = [base64.b64decode(s["sig"], validate=True) for s in dsse["signatures"]]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise ValueError("not a sigstore bundle with a DSSE envelope") from None
    if payload_type != IN_TOTO:
        raise ValueError(f"a DSSE payload of type {str(payload_type)[:64]!r}, not in-toto")
    return sigs, payload_bytes, pae(payload_type, payload_bytes)


def pae(payload_type: str, payload_bytes: bytes) -> bytes:
    """DSSE's pre-authentication encoding: the bytes a DSSE signature signs."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload_bytes), payload_bytes)


def _statement_problem(payload_bytes: bytes, *, digest: str) -> str | None:
    """Why an in-toto statement does not name this digest as its subject (None: it does)."""
    try:
        statement = json.loads(payload_bytes)
        kind = statement["_type"]
        subjects = [s["digest"]["sha256"] for s in statement["subject"]]
    except (ValueError, KeyError, TypeError):
        return "a payload that is not an in-toto statement"
    if kind != IN_TOTO_STATEMENT:
        return f"a statement of type {str(kind)[:64]}"
    if digest.removeprefix("sha256:") not in subjects:
        return "a statement about another digest"
    return None


# --- making a signature artifact --------------------------------------------------------------


def blob_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def signature_layer(*, data: bytes, signature: bytes) -> dict[str, Any]:
    """The descriptor of a simple-signing layer holding ``data``, signed by ``signature``."""
    return {
        "mediaType": SIMPLE_SIGNING,
        "size": len(data),
        "digest": blob_digest(data),
        "annotations": {SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()},
    }


def artifact(*, layers: Sequence[Mapping[str, Any]]) -> tuple[bytes, bytes]:
    """``(config, manifest)`` of a signature image with these layer descriptors: an OCI image
    manifest as cosign writes it (its config lists the layers as diff IDs)."""
    config = json.dumps(
        {
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"} for _ in layers],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layers]},
            "config": {},
        },
        separators=(",", ":"),
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": blob_digest(config)},
            "layers": [dict(d) for d in layers],
        },
        separators=(",", ":"),
    ).encode()
    return config, manifest
