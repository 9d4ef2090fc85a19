"""Guardrail attestations: what an image's signed in-toto statements say about the policies it
passed. Pure.

``permafrost check --stage build --attest`` records, for every image it approved, which
build-stage policies judged it and that they passed; GuardrailPolicies' ``verifyImages``
entries can then require, at the create and promote stages, that an image carry such a record
(``attestations``): a digest that skipped CI's guardrails never runs where they are enforced.

The format is cosign's classic attestation layout, the one ``cosign attest --key --type``
writes and ``cosign verify-attestation`` reads: the attestations of ``REPO@sha256:<hex>`` are
the layers of an OCI image manifest tagged ``sha256-<hex>.att`` in the same repository, each
a DSSE envelope (media type :data:`DSSE_ENVELOPE`, annotation ``predicateType``) whose payload
is an in-toto statement (:data:`STATEMENT_V01`, as cosign writes; v1 is read too) with the
digest as its subject, signed over DSSE's pre-authentication encoding (ECDSA P-256 with
SHA-256, or Ed25519). Its predicate (:data:`PREDICATE_TYPE`)::

    {"stage": "build", "verdict": "Allowed",
     "policies": [{"name": ..., "enforcement": ..., "digest": "sha256:...", "passed": true}],
     "checkedAt": "2026-01-02T03:04:05Z",
     "checker": {"name": "permafrost", "version": "0.1.0"}}

``digest`` is the SHA-256 of the policy's spec in canonical JSON (:func:`policy_digest`): a
requirement can name it, so that an edited policy's old verdicts no longer count.

This module makes statements and envelopes and judges fetched layers; the registry adapter
(:mod:`permafrost.artifacts.registry`) fetches and pushes them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from permafrost.artifacts import images, signatures

PREDICATE_TYPE = "https://permafrost.dev/attestations/guardrails/v1"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
PREDICATE_ANNOTATION = "predicateType"
STATEMENT_V01 = "https://in-toto.io/Statement/v0.1"
STATEMENT_V1 = signatures.IN_TOTO_STATEMENT
STATEMENTS = frozenset({STATEMENT_V01, STATEMENT_V1})
CHECKER = "permafrost"
BUILD = "build"
ALLOWED = "Allowed"

# Outcomes (also the reasons of conditions and Events); a verified attestation is
# signatures.VERIFIED.
MISSING = "AttestationMissing"
UNTRUSTED = "AttestationUntrusted"
INVALID = "AttestationInvalid"
NOT_PASSED = "PolicyNotPassed"
OUTCOMES = frozenset({MISSING, UNTRUSTED, INVALID, NOT_PASSED})

_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


def attestation_tag(digest: str) -> str:
    """The tag cosign stores a digest's attestations under: ``sha256-<hex>.att``."""
    algorithm, _, hexdigits = digest.partition(":")
    return f"{algorithm}-{hexdigits}.att"


def policy_digest(spec: Mapping[str, Any]) -> str:
    """The digest of a policy's spec (its JSON form, camelCase, as applied): SHA-256 of the
    canonical JSON (sorted keys, no whitespace)."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


# --- making an attestation --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PolicyRecord:
    """One policy that judged an image at the build stage, as the predicate records it."""

    name: str
    enforcement: str
    digest: str
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "enforcement": self.enforcement,
            "digest": self.digest,
            "passed": self.passed,
        }


def predicate(
    *, policies: Sequence[PolicyRecord], checked_at: datetime.datetime, version: str
) -> dict[str, Any]:
    """The predicate of an attestation that ``policies`` judged an image at the build stage
    and the verdict allowed it (nothing is attested otherwise)."""
    return {
        "stage": BUILD,
        "verdict": ALLOWED,
        "policies": [p.to_json() for p in sorted(policies, key=lambda p: p.name)],
        "checkedAt": checked_at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "checker": {"name": CHECKER, "version": version},
    }


def statement(*, ref: images.Reference, digest: str, predicate: Mapping[str, Any]) -> bytes:
    """The in-toto statement (v0.1, as ``cosign attest`` writes) of ``predicate`` about
    ``digest`` in ``ref``'s repository."""
    document = {
        "_type": STATEMENT_V01,
        "predicateType": PREDICATE_TYPE,
        "subject": [
            {
                "name": signatures.docker_reference(ref),
                "digest": {"sha256": digest.removeprefix("sha256:")},
            }
        ],
        "predicate": dict(predicate),
    }
    return json.dumps(document, separators=(",", ":")).encode()


def envelope(*, key: signatures.PrivateKey, payload: bytes) -> bytes:
    """A DSSE envelope of an in-toto ``payload``, signed by ``key`` over DSSE's
    pre-authentication encoding (an empty ``keyid``, as cosign writes for a key)."""
    signature = signatures.sign(key, signatures.pae(signatures.IN_TOTO, payload))
    document = {
        "payloadType": signatures.IN_TOTO,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": "", "sig": base64.b64encode(signature).decode()}],
    }
    return json.dumps(document, separators=(",", ":")).encode()


def attestation_layer(*, data: bytes, predicate_type: str = PREDICATE_TYPE) -> dict[str, Any]:
    """The descriptor of an attestation layer holding the envelope ``data``, as cosign writes
    it (the signature is inside the envelope: the signature annotation is empty)."""
    return {
        "mediaType": DSSE_ENVELOPE,
        "size": len(data),
        "digest": signatures.blob_digest(data),
        "annotations": {
            signatures.SIGNATURE_ANNOTATION: "",
            PREDICATE_ANNOTATION: predicate_type,
        },
    }


# --- reading one --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Envelope:
    """A parsed DSSE envelope: its payload type, payload, and signatures."""

    payload_type: str
    payload: bytes
    sigs: tuple[bytes, ...]

    @property
    def signed(self) -> bytes:
        """The bytes its signatures sign (DSSE's pre-authentication encoding)."""
        return signatures.pae(self.payload_type, self.payload)

    def signed_by(self, keys: Sequence[signatures.PublicKey]) -> signatures.PublicKey | None:
        signed = self.signed
        return next((k for k in keys if any(k.verifies(s, signed) for s in self.sigs)), None)


def parse_envelope(blob: bytes) -> Envelope:
    """A DSSE envelope from its JSON; raises ``ValueError`` saying what is wrong."""
    try:
        document = json.loads(blob)
        payload_type = document["payloadType"]
        payload = base64.b64decode(document["payload"], validate=True)
        sigs = tuple(base64.b64decode(s["sig"], validate=True) for s in document["signatures"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise ValueError("not a DSSE envelope") from None
    if not isinstance(payload_type, str):
        raise ValueError("not a DSSE envelope (its payloadType is not a string)")
    if payload_type != signatures.IN_TOTO:
        raise ValueError(f"a DSSE payload of type {payload_type[:64]!r}, not in-toto")
    if not sigs:
        raise ValueError("a DSSE envelope without signatures")
    return Envelope(payload_type=payload_type, payload=payload, sigs=sigs)


def parse_statement(payload: bytes) -> Mapping[str, Any]:
    """An in-toto statement (v0.1 or v1) from its JSON; raises ``ValueError``."""
    try:
        document = json.loads(payload)
    except ValueError:
        raise ValueError("a payload that is not JSON") from None
    if not isinstance(document, dict):
        raise ValueError("a payload that is not an in-toto statement")
    kind = document.get("_type")
    if kind not in STATEMENTS:
        raise ValueError(f"a statement of type {str(kind)[:64]!r}, not in-toto v0.1 or v1")
    subjects = document.get("subject")
    if not isinstance(subjects, list) or not all(
        isinstance(s, dict) and isinstance(s.get("digest"), dict) for s in subjects
    ):
        raise ValueError("a statement without a list of subjects")
    if not isinstance(document.get("predicateType"), str):
        raise ValueError("a statement without a predicateType")
    return document


def subject_digests(statement: Mapping[str, Any]) -> frozenset[str]:
    """The sha256 digests (``sha256:<hex>``) a parsed statement is about."""
    return frozenset(
        f"sha256:{s['digest']['sha256']}"
        for s in statement["subject"]
        if isinstance(s["digest"].get("sha256"), str)
    )


@dataclasses.dataclass(frozen=True)
class Requirement:
    """What one ``verifyImages`` entry requires of an image: an attestation signed by one of
    ``keys`` whose predicate says build-stage policy ``policy`` passed (with that spec
    ``digest``, when given)."""

    policy: str
    keys: tuple[signatures.PublicKey, ...]
    digest: str | None = None

    @property
    def key(self) -> tuple[str, frozenset[str], str]:
        """What verdicts about it are found under (the key ids, not the keys)."""
        return self.policy, frozenset(k.id for k in self.keys), self.digest or ""

    def describe(self) -> str:
        pinned = f" (spec {self.digest[:19]}…)" if self.digest else ""
        return f"build-stage policy {self.policy!r}{pinned}"


# What a verification of an image's signatures and attestations is found under: the image,
# the ids of the signature keys, and the attestation requirements' keys.
VerificationKey = tuple[str, frozenset[str], frozenset[tuple[str, frozenset[str], str]]]


def verification_key(
    image: str,
    keys: Sequence[signatures.PublicKey],
    requirements: Sequence[Requirement] = (),
) -> VerificationKey:
    return image, frozenset(k.id for k in keys), frozenset(r.key for r in requirements)


def judge_predicate(found: Any, *, requirement: Requirement) -> str | None:
    """Why a guardrails predicate does not say that the required policy passed at the build
    stage (None: it does). Raises ``ValueError`` for a predicate that is not one."""
    if not isinstance(found, Mapping):
        raise ValueError("a predicate that is not an object")
    stage, verdict, listed = found.get("stage"), found.get("verdict"), found.get("policies")
    if not isinstance(stage, str) or not isinstance(verdict, str) or not isinstance(listed, list):
        raise ValueError("a predicate without stage, verdict and policies")
    records = [p for p in listed if isinstance(p, Mapping) and p.get("name") == requirement.policy]
    if stage != BUILD:
        return f"it records the {stage[:32]} stage, not build"
    if verdict != ALLOWED:
        return f"its verdict is {verdict[:32]!r}, not {ALLOWED}"
    if not records:
        return f"policy {requirement.policy!r} is not among the policies it records"
    record = records[0]
    if record.get("passed") is not True:
        return f"policy {requirement.policy!r} did not pass"
    if requirement.digest and record.get("digest") != requirement.digest:
        return (
            f"policy {requirement.policy!r} passed with spec {str(record.get('digest'))[:19]}…, "
            f"not {requirement.digest[:19]}…"
        )
    return None


def verify(
    *,
    image: str,
    ref: images.Reference,
    layers: Sequence[signatures.Layer],
    requirement: Requirement,
) -> signatures.Verification:
    """Whether one of ``layers`` (of the ``.att`` manifest of ``ref.digest``) is an
    attestation signed by one of the requirement's keys, about this digest, whose guardrails
    predicate says the required build-stage policy passed.

    Verified: such an attestation. Otherwise, in this order: a trusted attestation of this
    digest that says otherwise (the policy did not pass, was not evaluated, had another spec):
    policy not passed; a trusted one about another digest, or with a predicate that does not
    parse: invalid; guardrail attestations by none of the keys: untrusted; malformed layers
    only: invalid; nothing of this predicate type (attestations of other types are not this
    requirement's business): missing. Never verified by omission.
    """
    digest = ref.digest or ""
    what = requirement.describe()
    if not _DIGEST.match(digest):
        return signatures.Verification(
            image,
            signatures.UNPINNED,
            f"{image}: not pinned by a sha256 digest: only a digest is attested",
        )
    not_passed: list[str] = []
    mismatched: list[str] = []
    malformed: list[str] = []
    untrusted = others = 0
    for layer in layers:
        short = layer.digest[:19]
        if layer.blob is None:
            why = layer.problem or f"is larger than {signatures.MAX_PAYLOAD_BYTES} bytes"
            malformed.append(f"layer {short} {why}")
            continue
        try:
            parsed = parse_envelope(layer.blob)
            document = parse_statement(parsed.payload)
        except ValueError as exc:
            malformed.append(f"layer {short}: {exc}")
            continue
        if document["predicateType"] != PREDICATE_TYPE:
            others += 1
            continue
        by = parsed.signed_by(requirement.keys)
        if by is None:
            untrusted += 1
            continue
        if digest not in subject_digests(document):
            mismatched.append(f"key {by.id} attested another digest")
            continue
        try:
            problem = judge_predicate(document.get("predicate"), requirement=requirement)
        except ValueError as exc:
            mismatched.append(f"key {by.id} attested {exc}")
            continue
        if problem is None:
            return signatures.Verification(
                image,
                signatures.VERIFIED,
                f"{image}: attested by key {by.id}: {what} passed",
                key=by.id,
            )
        not_passed.append(f"key {by.id} attested it, but {problem}")
    if not_passed:
        return signatures.Verification(
            image, NOT_PASSED, f"{image}: {what} not passed: " + "; ".join(not_passed)
        )
    if mismatched:
        return signatures.Verification(
            image,
            INVALID,
            f"{image}: a trusted attestation that does not count: " + "; ".join(mismatched),
        )
    if untrusted:
        ids = ", ".join(k.id for k in requirement.keys)
        return signatures.Verification(
            image,
            UNTRUSTED,
            f"{image}: {untrusted} guardrail attestation(s), none by a trusted key ({ids})"
            + (f"; also malformed: {'; '.join(malformed)}" if malformed else ""),
        )
    if malformed:
        return signatures.Verification(
            image, INVALID, f"{image}: malformed attestation(s): " + "; ".join(malformed)
        )
    elsewhere = f"; {others} attestation(s) of other predicate types" if others else ""
    return signatures.Verification(
        image,
        MISSING,
        f"{image}: no attestation that {what} passed (no {PREDICATE_TYPE} attestation in "
        f"{attestation_tag(digest)}{elsewhere}): permafrost check --stage build --attest makes "
        "one",
    )


def replaced(layers: Sequence[signatures.Layer], *, key: signatures.PublicKey) -> frozenset[str]:
    """The digests of the layers a new guardrails attestation by ``key`` replaces: its
    earlier ones (so that a digest checked again and again does not pile them up; those of
    other keys and of other predicate types stay)."""
    found = set()
    for layer in layers:
        if layer.blob is None or layer.annotations.get(PREDICATE_ANNOTATION) != PREDICATE_TYPE:
            continue
        try:
            parsed = parse_envelope(layer.blob)
            document = parse_statement(parsed.payload)
        except ValueError:
            continue
        if document["predicateType"] == PREDICATE_TYPE and parsed.signed_by([key]) is not None:
            found.add(layer.digest)
    return frozenset(found)
