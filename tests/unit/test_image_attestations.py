"""Guardrail attestations, made and judged from bytes (permafrost.artifacts.attestations): keys
made here, envelopes and layers as cosign's classic ``.att`` layout holds them."""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from permafrost import models
from permafrost.artifacts import attestations, images, registry, signatures
from permafrost.policies import checking, policy
from permafrost.releases import conditions

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
IMAGE = f"registry.example/shop/app:1.0@{DIGEST}"
REF = images.parse(IMAGE)
WHEN = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
POLICY_DIGEST = "sha256:" + "12" * 32


def pem(key: signatures.PrivateKey) -> str:
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


def public(key: signatures.PrivateKey) -> signatures.PublicKey:
    return signatures.public_key_of(key)


def record(name: str = "build-guardrails", *, passed: bool = True) -> attestations.PolicyRecord:
    return attestations.PolicyRecord(
        name=name, enforcement="Enforce", digest=POLICY_DIGEST, passed=passed
    )


def layer(data: bytes, *, predicate_type: str = attestations.PREDICATE_TYPE) -> signatures.Layer:
    descriptor = attestations.attestation_layer(data=data, predicate_type=predicate_type)
    return signatures.Layer(
        media_type=descriptor["mediaType"],
        digest=descriptor["digest"],
        annotations=descriptor["annotations"],
        blob=data,
    )


def attested(
    key: signatures.PrivateKey,
    *,
    digest: str = DIGEST,
    records: tuple[attestations.PolicyRecord, ...] = (record(),),
    predicate: dict[str, Any] | None = None,
    predicate_type: str = attestations.PREDICATE_TYPE,
) -> signatures.Layer:
    found = predicate or attestations.predicate(policies=records, checked_at=WHEN, version="1")
    statement = json.loads(attestations.statement(ref=REF, digest=digest, predicate=found))
    statement["predicateType"] = predicate_type
    data = attestations.envelope(key=key, payload=json.dumps(statement).encode())
    return layer(data, predicate_type=predicate_type)


def judge(
    layers: list[signatures.Layer], *keys: signatures.PublicKey, **kwargs: Any
) -> signatures.Verification:
    requirement = attestations.Requirement(policy="build-guardrails", keys=keys, **kwargs)
    return attestations.verify(image=IMAGE, ref=REF, layers=layers, requirement=requirement)


# --- the format --------------------------------------------------------------------------------


def test_pae_is_dsses_pre_authentication_encoding() -> None:
    # The example of the DSSE specification (protocol.md).
    assert signatures.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert signatures.pae("", b"") == b"DSSEv1 0  0 "


def test_the_statement_and_envelope_are_what_cosign_attest_writes(
    private: signatures.PrivateKey,
) -> None:
    pred = attestations.predicate(policies=[record("b"), record("a")], checked_at=WHEN, version="9")
    assert pred == {
        "stage": "build",
        "verdict": "Allowed",
        "policies": [
            {"name": "a", "enforcement": "Enforce", "digest": POLICY_DIGEST, "passed": True},
            {"name": "b", "enforcement": "Enforce", "digest": POLICY_DIGEST, "passed": True},
        ],
        "checkedAt": "2026-01-02T03:04:05Z",
        "checker": {"name": "permafrost", "version": "9"},
    }
    payload = attestations.statement(ref=REF, digest=DIGEST, predicate=pred)
    statement = json.loads(payload)
    assert statement["_type"] == "https://in-toto.io/Statement/v0.1"
    assert statement["predicateType"] == "https://permafrost.dev/attestations/guardrails/v1"
    assert statement["subject"] == [
        {"name": "registry.example/shop/app", "digest": {"sha256": "ab" * 32}}
    ]
    envelope = json.loads(attestations.envelope(key=private, payload=payload))
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert base64.b64decode(envelope["payload"]) == payload
    (sig,) = envelope["signatures"]
    assert sig["keyid"] == ""
    signed = signatures.pae("application/vnd.in-toto+json", payload)
    assert public(private).verifies(base64.b64decode(sig["sig"]), signed)
    descriptor = attestations.attestation_layer(data=b"{}")
    assert descriptor["mediaType"] == "application/vnd.dsse.envelope.v1+json"
    assert descriptor["annotations"] == {
        "dev.cosignproject.cosign/signature": "",
        "predicateType": attestations.PREDICATE_TYPE,
    }
    assert attestations.attestation_tag(DIGEST) == f"sha256-{'ab' * 32}.att"


def test_the_policy_digest_is_canonical() -> None:
    one = attestations.policy_digest({"b": 1, "a": [1, 2]})
    assert one == attestations.policy_digest({"a": [1, 2], "b": 1})
    assert one != attestations.policy_digest({"a": [2, 1], "b": 1})
    assert one.startswith("sha256:")
    assert len(one) == 71


# --- judging -----------------------------------------------------------------------------------


def test_an_attestation_by_a_trusted_key_that_the_policy_passed_verifies(
    private: signatures.PrivateKey,
) -> None:
    found = judge([attested(private)], public(private))
    assert found.outcome == signatures.VERIFIED, found.message
    assert found.key == public(private).id
    assert "build-stage policy 'build-guardrails' passed" in found.message
    # With the policy's spec digest required, the same one counts.
    assert judge([attested(private)], public(private), digest=POLICY_DIGEST).verified


def test_an_attestation_cosign_wrote_with_a_v1_statement_verifies() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pred = attestations.predicate(policies=[record()], checked_at=WHEN, version="1")
    statement = json.loads(attestations.statement(ref=REF, digest=DIGEST, predicate=pred))
    statement["_type"] = "https://in-toto.io/Statement/v1"
    data = attestations.envelope(key=key, payload=json.dumps(statement).encode())
    assert judge([layer(data)], public(key)).verified


def test_no_attestation_is_missing_and_other_predicate_types_do_not_count() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    none = judge([], public(key))
    assert none.outcome == "AttestationMissing"
    assert "permafrost check --stage build --attest" in none.message
    other = judge([attested(key, predicate_type="https://slsa.dev/provenance/v1")], public(key))
    assert other.outcome == "AttestationMissing"
    assert "1 attestation(s) of other predicate types" in other.message


def test_an_attestation_by_another_key_is_untrusted() -> None:
    key, stranger = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    found = judge([attested(stranger)], public(key))
    assert found.outcome == "AttestationUntrusted"
    assert public(key).id in found.message
    assert not found.verified


def test_an_attestation_of_another_digest_is_invalid() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    found = judge([attested(key, digest=OTHER)], public(key))
    assert found.outcome == "AttestationInvalid"
    assert "another digest" in found.message


@pytest.mark.parametrize(
    ("records", "pred", "said"),
    [
        ((record(passed=False),), None, "did not pass"),
        ((record("something-else"),), None, "is not among the policies it records"),
        (
            (),
            {"stage": "create", "verdict": "Allowed", "policies": [record().to_json()]},
            "the create stage, not build",
        ),
        (
            (),
            {"stage": "build", "verdict": "Denied", "policies": [record().to_json()]},
            "its verdict is 'Denied'",
        ),
    ],
)
def test_a_trusted_attestation_that_does_not_say_the_policy_passed_is_not_a_pass(
    records: tuple[attestations.PolicyRecord, ...], pred: dict[str, Any] | None, said: str
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    found = judge([attested(key, records=records, predicate=pred)], public(key))
    assert found.outcome == "PolicyNotPassed"
    assert said in found.message


def test_a_policy_that_passed_with_another_spec_is_not_a_pass() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    found = judge([attested(key)], public(key), digest="sha256:" + "34" * 32)
    assert found.outcome == "PolicyNotPassed"
    assert "passed with spec sha256:121212121212" in found.message


def test_one_good_attestation_among_bad_ones_verifies() -> None:
    key, stranger = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    layers = [
        attested(stranger),
        attested(key, records=(record(passed=False),)),
        layer(b"not json"),
        attested(key),
    ]
    assert judge(layers, public(key)).verified


def _envelope(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


GOOD_PAYLOAD = base64.b64encode(b'{"_type": "x"}').decode()


@pytest.mark.parametrize(
    ("blob", "said"),
    [
        (b"not json", "not a DSSE envelope"),
        (b"[]", "not a DSSE envelope"),
        (_envelope(payloadType=signatures.IN_TOTO, payload="%%%", signatures=[]), "not a DSSE"),
        (
            _envelope(payloadType="text/plain", payload=GOOD_PAYLOAD, signatures=[{"sig": ""}]),
            "not in-toto",
        ),
        (
            _envelope(payloadType=signatures.IN_TOTO, payload=GOOD_PAYLOAD, signatures=[]),
            "without signatures",
        ),
        (
            _envelope(
                payloadType=signatures.IN_TOTO,
                payload=base64.b64encode(b"nope").decode(),
                signatures=[{"sig": ""}],
            ),
            "not JSON",
        ),
        (
            _envelope(
                payloadType=signatures.IN_TOTO, payload=GOOD_PAYLOAD, signatures=[{"sig": ""}]
            ),
            "not in-toto v0.1 or v1",
        ),
        (
            _envelope(
                payloadType=signatures.IN_TOTO,
                payload=base64.b64encode(
                    b'{"_type": "https://in-toto.io/Statement/v1", "subject": "x"}'
                ).decode(),
                signatures=[{"sig": ""}],
            ),
            "without a list of subjects",
        ),
    ],
)
def test_malformed_attestations_are_invalid_with_the_reason(blob: bytes, said: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    found = judge([layer(blob)], public(key))
    assert found.outcome == "AttestationInvalid"
    assert said in found.message
    assert not found.verified


def test_a_layer_that_could_not_be_read_is_invalid() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    unread = signatures.Layer(
        media_type=attestations.DSSE_ENVELOPE,
        digest=DIGEST,
        annotations={},
        blob=None,
        problem="is missing, or not the content of its digest",
    )
    found = judge([unread], public(key))
    assert found.outcome == "AttestationInvalid"
    assert "is missing" in found.message


def test_a_trusted_predicate_that_is_not_a_guardrails_one_is_invalid() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    found = judge([attested(key, predicate={"anything": 1})], public(key))
    assert found.outcome == "AttestationInvalid"
    assert "a predicate without stage, verdict and policies" in found.message


def test_an_unpinned_image_is_never_attested() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    requirement = attestations.Requirement(policy="p", keys=(public(key),))
    ref = images.parse("registry.example/shop/app:1.0")
    found = attestations.verify(image=ref.text, ref=ref, layers=[], requirement=requirement)
    assert found.outcome == "ImageNotPinned"


def test_a_new_attestation_replaces_only_the_same_keys_guardrail_ones() -> None:
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    mine, theirs = attested(key), attested(other)
    slsa = attested(key, predicate_type="https://slsa.dev/provenance/v1")
    broken = layer(b"not json")
    layers = [mine, theirs, slsa, broken]
    assert attestations.replaced(layers, key=public(key)) == {mine.digest}


def test_the_outcomes_are_the_conditions_reasons_that_hold() -> None:
    reasons = {
        conditions.ATTESTATION_MISSING,
        conditions.ATTESTATION_UNTRUSTED,
        conditions.ATTESTATION_INVALID,
        conditions.POLICY_NOT_PASSED,
    }
    assert reasons == attestations.OUTCOMES
    assert attestations.OUTCOMES <= conditions.HOLDING_REASONS


# --- the policy: verifyImages[].attestations ---------------------------------------------------


def _spec(key: signatures.PrivateKey, **attestation: Any) -> models.GuardrailPolicySpec:
    return models.GuardrailPolicySpec.model_validate(
        {
            "stages": ["create", "promote"],
            "verifyImages": [
                {
                    "name": "ci-passed",
                    "images": ["registry.example/**"],
                    "keys": [pem(key)],
                    "attestations": [{"policy": "build-guardrails", **attestation}],
                }
            ],
        }
    )


def _release(image: str) -> policy.Subject:
    return policy.Subject(
        object={
            "kind": "GuardedRelease",
            "metadata": {"name": "app"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}},
        }
    )


def test_an_entrys_attestations_are_required_with_its_keys_by_default() -> None:
    key, ci = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    compiled = policy.compile_policy("prod", _spec(key))
    (required,) = policy.image_requirements([compiled], stage="create", subject=_release(IMAGE))
    (wanted,) = required.attestations
    assert (wanted.policy, wanted.keys, wanted.digest) == ("build-guardrails", required.keys, None)
    own = policy.compile_policy("prod", _spec(key, keys=[pem(ci)], policyDigest=POLICY_DIGEST))
    (required,) = policy.image_requirements([own], stage="promote", subject=_release(IMAGE))
    (wanted,) = required.attestations
    assert wanted.keys == (public(ci),)
    assert wanted.digest == POLICY_DIGEST
    # Another requirement is another question: verdicts are found under different keys.
    plain = policy.compile_policy(
        "plain",
        models.GuardrailPolicySpec.model_validate(
            {
                "stages": ["create"],
                "verifyImages": [
                    {"name": "signed", "images": ["registry.example/**"], "keys": [pem(key)]}
                ],
            }
        ),
    )
    (bare,) = policy.image_requirements([plain], stage="create", subject=_release(IMAGE))
    assert bare.key != required.key
    assert bare.key[:2] == required.key[:2]


def test_an_attestation_key_that_does_not_load_refuses_the_policy() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(policy.PolicyError, match="attestation 1: key 1: not a PEM public key"):
        policy.compile_policy("prod", _spec(key, keys=["not a key"]))


@pytest.mark.parametrize(
    ("attestation", "said"),
    [
        ({"policy": "Not A Name"}, "should match pattern"),
        ({"policy": "p", "policyDigest": "sha256:short"}, "should match pattern"),
        ({"policy": "p", "keys": []}, "at least 1 item"),
        ({"policy": "p", "unknown": 1}, "Extra inputs are not permitted"),
    ],
)
def test_malformed_attestation_requirements_are_refused(
    attestation: dict[str, Any], said: str
) -> None:
    with pytest.raises(ValueError, match=said):
        models.GuardrailPolicySpec.model_validate(
            {
                "stages": ["create"],
                "verifyImages": [
                    {"name": "s", "images": ["r/**"], "keys": ["k"], "attestations": [attestation]}
                ],
            }
        )


def test_a_compiled_policy_knows_its_spec_digest() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    spec = _spec(key)
    compiled = policy.compile_policy("prod", spec)
    assert compiled.digest == attestations.policy_digest(spec.to_json())
    assert compiled.digest != policy.compile_policy("prod", _spec(key, keys=[pem(key)])).digest


# --- permafrost check: what a build-stage report approves -------------------------------------

BUILD_POLICIES = """
apiVersion: permafrost.dev/v1alpha1
kind: GuardrailPolicy
metadata: {name: build-guardrails}
spec:
  stages: [build]
  rules:
  - name: pinned
    expression: "object.image.contains('@sha256:')"
---
apiVersion: permafrost.dev/v1alpha1
kind: GuardrailPolicy
metadata: {name: build-audit}
spec:
  stages: [build]
  enforcement: Audit
  rules:
  - name: from-shop
    expression: "object.image.startsWith('registry.example/shop/')"
"""


def _artifacts(*found: str) -> str:
    return "\n---\n".join(
        json.dumps(
            {
                "apiVersion": "permafrost.dev/v1alpha1",
                "kind": "Artifact",
                "metadata": {"name": f"a{n}"},
                "image": image,
            }
        )
        for n, image in enumerate(found)
    )


def _report(*found: str) -> tuple[checking.Report, list[policy.Policy]]:
    policies = checking.load_policies([("policies.yaml", BUILD_POLICIES)])
    report = checking.check(
        inputs=[("artifacts.yaml", _artifacts(*found))],
        policies=policies,
        stage="build",
        now=WHEN,
    )
    return report, policies


def test_an_allowed_build_report_approves_its_images_with_the_policies_that_judged_them() -> None:
    elsewhere = f"registry.example/other/app@{OTHER}"
    report, policies = _report(IMAGE, elsewhere, IMAGE)
    approved = checking.approved_images(report, policies=policies)
    digests = {p.name: p.digest for p in policies}
    assert approved[IMAGE] == (
        attestations.PolicyRecord("build-audit", "Audit", digests["build-audit"], True),
        attestations.PolicyRecord("build-guardrails", "Enforce", digests["build-guardrails"], True),
    )
    # An Audit policy that failed is recorded as not passed; the verdict still allows.
    assert [(r.name, r.passed) for r in approved[elsewhere]] == [
        ("build-audit", False),
        ("build-guardrails", True),
    ]


def test_a_denied_build_report_approves_nothing() -> None:
    report, policies = _report(IMAGE, "registry.example/shop/app:1.0")
    assert report.exit_code == checking.EXIT_VIOLATION
    assert checking.approved_images(report, policies=policies) == {}


# --- the checker: a signature first, then every attestation -------------------------------------


class _Registry:
    """A registry client's lookups: signature and attestation layers set per test, counted."""

    def __init__(
        self, signed: list[signatures.Layer], attested: list[signatures.Layer] | Exception
    ) -> None:
        self.signed, self.attested, self.asked = signed, attested, 0
        self.credentials: dict[str, tuple[str, str]] = {}  # the operator-wide config's

    def signature_layers(self, ref: images.Reference) -> list[signatures.Layer]:
        return self.signed

    def signature_bundles(self, ref: images.Reference) -> list[bytes]:
        return []

    def attestation_layers(self, ref: images.Reference) -> list[signatures.Layer]:
        self.asked += 1
        if isinstance(self.attested, Exception):
            raise self.attested
        return self.attested


def _signature(key: signatures.PrivateKey) -> signatures.Layer:
    data = signatures.payload(REF, DIGEST)
    return signatures.Layer(
        media_type=signatures.SIMPLE_SIGNING,
        digest=signatures.blob_digest(data),
        annotations={
            signatures.SIGNATURE_ANNOTATION: base64.b64encode(signatures.sign(key, data)).decode()
        },
        blob=data,
    )


def test_the_checker_verifies_the_signature_then_the_attestations() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    keys = (public(key),)
    wanted = (attestations.Requirement(policy="build-guardrails", keys=keys),)
    client = _Registry([_signature(key)], [attested(key)])
    checker = registry.SignatureChecker(client=client)  # type: ignore[arg-type]
    found = checker.verify_now(IMAGE, keys, wanted)
    assert found.verified, found.message
    assert "signed by key" in found.message
    assert "passed" in found.message
    # Without a requirement the attestations are not even read.
    assert checker.verify_now(IMAGE, keys).verified
    assert client.asked == 1
    # Not signed: the signature's verdict, the attestations unread.
    unsigned = registry.SignatureChecker(client=_Registry([], [attested(key)]))  # type: ignore[arg-type]
    assert unsigned.verify_now(IMAGE, keys, wanted).outcome == signatures.NOT_SIGNED
    missing = registry.SignatureChecker(client=_Registry([_signature(key)], []))  # type: ignore[arg-type]
    assert missing.verify_now(IMAGE, keys, wanted).outcome == attestations.MISSING
    down = registry.SignatureChecker(
        client=_Registry(  # type: ignore[arg-type]
            [_signature(key)], registry.RegistryError(registry.UNREACHABLE, "down")
        )
    )
    assert down.verify_now(IMAGE, keys, wanted).outcome == signatures.UNREACHABLE


# --- permafrost check --attest: what is refused before anything is evaluated or pushed ----------


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--stage", "build", "--attest"], "--attest needs --key KEY.pem"),
        (["--stage", "create", "--attest", "--key", "KEY"], "use it with --stage build"),
        (["--stage", "build", "--key", "KEY"], "--key is for --attest"),
        (["--stage", "build", "--attest", "--key", "MISSING"], "cannot be read"),
        (["--stage", "build", "--attest", "--key", "PUBLIC"], "not a PEM private key"),
    ],
)
def test_check_refuses_an_attestation_it_cannot_make_with_exit_2(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], flags: list[str], said: str
) -> None:
    from permafrost import cli

    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "key.pem").write_bytes(private_pem)
    (tmp_path / "key.pub").write_text(pem(key))
    (tmp_path / "policies.yaml").write_text(BUILD_POLICIES)
    (tmp_path / "artifacts.yaml").write_text(_artifacts(IMAGE))
    paths = {
        "KEY": str(tmp_path / "key.pem"),
        "MISSING": str(tmp_path / "nope.pem"),
        "PUBLIC": str(tmp_path / "key.pub"),
    }
    args = [paths.get(f, f) for f in flags]
    code = cli.main(
        ["check", *args, "-p", str(tmp_path / "policies.yaml"), str(tmp_path / "artifacts.yaml")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert said in err
    assert "Traceback" not in err


def test_check_attests_nothing_when_the_verdict_denies(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from permafrost import cli

    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "policies.yaml").write_text(BUILD_POLICIES)
    # A tag: the build-guardrails policy denies it; nothing is asked of any registry.
    (tmp_path / "artifacts.yaml").write_text(_artifacts("registry.invalid/shop/app:1.0"))
    code = cli.main(
        [
            "check", "--stage", "build", "--attest", "--key", str(tmp_path / "key.pem"),
            "-p", str(tmp_path / "policies.yaml"), str(tmp_path / "artifacts.yaml"),
        ]
    )  # fmt: skip
    assert code == 1
    captured = capsys.readouterr()
    assert "nothing attested: the verdict does not allow" in captured.err
    assert "DENIED" in captured.out
