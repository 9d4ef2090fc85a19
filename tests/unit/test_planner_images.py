"""The registry check in the planner: a revision whose images are not in their registry is not
created (pure; the shell looks the images up, see permafrost.artifacts.registry.Checker)."""

from __future__ import annotations

import dataclasses

import pytest
from planner_fixtures import applied, condition, event_reasons, situation

from permafrost.artifacts import images
from permafrost.releases import planner

IMAGE = "reg.example/shop/checkout@sha256:" + "a" * 64


def _with(*checks: images.Check, fail_open: bool = False) -> planner.Situation:
    return dataclasses.replace(situation(), image_checks=checks, images_fail_open=fail_open)


def _created(plan: planner.Plan) -> bool:
    return any(isinstance(a, planner.CreateRevision) for a in plan.actions)


def test_images_found_in_their_registry_let_the_revision_be_created() -> None:
    plan = planner.plan(_with(images.Check(IMAGE, images.OK)))
    assert _created(plan)
    assert plan.status.phase != "Held"


@pytest.mark.parametrize("fail_open", [False, True])
def test_a_missing_image_holds_the_release_and_nothing_is_created(fail_open: bool) -> None:
    missing = images.Check(IMAGE, images.MISSING, f"{IMAGE}: the registry has no such image")
    s = _with(images.Check("reg.example/ok:1", images.OK), missing, fail_open=fail_open)
    plan = planner.plan(s)
    assert not _created(plan)
    assert plan.status.phase == "Held"
    compliant = condition(plan, "PolicyCompliant")
    assert (compliant.status, compliant.reason) == ("False", "ImageNotFound")
    assert "the registry has no such image" in compliant.message
    assert "ImageNotFound" in event_reasons(plan)
    # The same verdict on the next pass: no second Event.
    assert "ImageNotFound" not in event_reasons(planner.plan(applied(s, plan)))


def test_an_unreachable_registry_holds_when_the_check_fails_closed() -> None:
    down = images.Check(IMAGE, images.UNREACHABLE, "reg.example is unreachable: timed out")
    plan = planner.plan(_with(down))
    assert not _created(plan)
    compliant = condition(plan, "PolicyCompliant")
    assert (compliant.status, compliant.reason) == ("False", "RegistryUnreachable")
    assert plan.status.phase == "Held"


def test_an_unreachable_registry_is_reported_and_let_through_when_the_check_fails_open() -> None:
    down = images.Check(IMAGE, images.UNREACHABLE, "reg.example is unreachable: timed out")
    plan = planner.plan(_with(down, fail_open=True))
    assert _created(plan)
    assert "RegistryUnreachable" in event_reasons(plan)
    assert condition(plan, "PolicyCompliant").reason != "RegistryUnreachable"


def test_an_image_that_is_not_a_reference_holds_whatever_the_mode() -> None:
    bad = images.Check("${IMAGE}", images.INVALID, "'${IMAGE}' is not a repository name")
    for fail_open in (False, True):
        plan = planner.plan(_with(bad, fail_open=fail_open))
        assert not _created(plan)
        assert condition(plan, "PolicyCompliant").reason == "InvalidImage"


def test_hold_of_names_every_image_of_the_worst_outcome() -> None:
    checks = (
        images.Check("a", images.MISSING, "a: missing"),
        images.Check("b", images.UNREACHABLE, "b: down"),
        images.Check("c", images.MISSING, "c: missing"),
    )
    reason, message = images.hold_of(checks, fail_open=False) or ("", "")
    assert reason == "ImageNotFound"
    assert message.startswith("a: missing; c: missing")
    assert images.hold_of(checks[1:2], fail_open=True) is None
    assert images.hold_of((), fail_open=False) is None


def test_a_verify_images_violation_holds_with_its_own_reason() -> None:
    from permafrost.policies import policy

    unsigned = policy.RuleResult(
        "shop-signed", "signed", "Enforce", "Fail", f"{IMAGE}: no signature", "ImageNotSigned"
    )
    s = dataclasses.replace(
        situation(), create_verdict=policy.Verdict(stage="create", results=(unsigned,))
    )
    plan = planner.plan(s)
    assert not _created(plan)
    assert plan.status.phase == "Held"
    compliant = condition(plan, "PolicyCompliant")
    assert (compliant.status, compliant.reason) == ("False", "ImageNotSigned")
    assert "shop-signed/signed" in compliant.message
    assert "ImageNotSigned" in event_reasons(plan)
    # Mixed with a CEL rule's violation: the general reason.
    cel = policy.RuleResult("other", "rule", "Enforce", "Fail", "no")
    mixed = dataclasses.replace(s, create_verdict=policy.Verdict("create", (unsigned, cel)))
    assert condition(planner.plan(mixed), "PolicyCompliant").reason == "PolicyViolation"


@pytest.mark.parametrize(
    ("outcome", "fail_open"),
    [(o, f) for o in (images.UNAUTHORIZED, images.UNREACHABLE) for f in (False, True)],
)
def test_refused_credentials_hold_when_closed_and_are_reported_and_let_through_when_open(
    outcome: str, fail_open: bool
) -> None:
    refused = images.Check(IMAGE, outcome, f"{IMAGE}: reg.example needs credentials")
    plan = planner.plan(_with(refused, fail_open=fail_open))
    assert _created(plan) is fail_open
    assert outcome in event_reasons(plan)
    compliant = condition(plan, "PolicyCompliant")
    assert (compliant.reason == outcome) is not fail_open
    if fail_open:
        assert plan.status.phase != "Held"
    else:
        assert plan.status.phase == "Held"
        assert compliant.message.startswith(f"{IMAGE}: reg.example needs credentials")


@pytest.mark.parametrize(
    "outcome",
    [
        images.PULL_SECRET_MISSING,
        images.PULL_SECRET_INVALID,
        images.PULL_SECRET_FORBIDDEN,
        images.REGISTRY_CHECK_FORBIDDEN,
        images.PLATFORM_MISSING,
    ],
)
@pytest.mark.parametrize("fail_open", [False, True])
def test_pull_secret_and_platform_problems_hold_whatever_the_mode(
    outcome: str, fail_open: bool
) -> None:
    problem = images.Check("Secret shop/regcred", outcome, "the pull secret shop/regcred: why")
    plan = planner.plan(_with(problem, fail_open=fail_open))
    assert not _created(plan)
    compliant = condition(plan, "PolicyCompliant")
    assert (compliant.status, compliant.reason) == ("False", outcome)
    assert compliant.message.startswith("the pull secret shop/regcred: why (nothing is created")
    assert plan.status.phase == "Held"
    assert outcome in event_reasons(plan)


@pytest.mark.parametrize(
    "reason",
    ["AttestationMissing", "AttestationUntrusted", "AttestationInvalid", "PolicyNotPassed"],
)
def test_an_attestation_violation_holds_with_its_own_reason(reason: str) -> None:
    from permafrost.policies import policy

    unattested = policy.RuleResult(
        "prod", "ci-approved", "Enforce", "Fail", f"{IMAGE}: no attestation", reason
    )
    s = dataclasses.replace(
        situation(), create_verdict=policy.Verdict(stage="create", results=(unattested,))
    )
    plan = planner.plan(s)
    assert not _created(plan)
    assert plan.status.phase == "Held"
    compliant = condition(plan, "PolicyCompliant")
    assert (compliant.status, compliant.reason) == ("False", reason)
    assert "prod/ci-approved" in compliant.message
    assert reason in event_reasons(plan)


@pytest.mark.parametrize("outcome", sorted(images.CREDENTIALS_UNUSABLE | {images.UNAUTHORIZED}))
@pytest.mark.parametrize("enforcement", ["Enforce", "Warn"])
def test_a_verify_images_entry_whose_pull_secrets_cannot_be_used_holds_with_that_reason(
    outcome: str, enforcement: str
) -> None:
    """Signatures are fetched with the pods' pull secrets: one that cannot be used (or
    credentials the registry refuses) hold an enforced entry with the registry check's reason;
    a warning entry reports it and lets the revision be created."""
    from permafrost.artifacts import signatures
    from permafrost.policies import policy

    requirement = policy.ImageRequirement("shop-signed", "signed", enforcement, IMAGE, keys=())
    problem = images.Check("Secret shop/regcred", outcome, "the pull secret shop/regcred: why")
    verdict = (
        signatures.not_fetched(IMAGE, [problem])
        if outcome in images.CREDENTIALS_UNUSABLE
        else signatures.Verification(IMAGE, outcome, f"{IMAGE}: reg.example needs credentials")
    )
    results = policy.signature_results([requirement], {requirement.key: verdict})
    s = dataclasses.replace(situation(), create_verdict=policy.Verdict("create", results))
    plan = planner.plan(s)
    compliant = condition(plan, "PolicyCompliant")
    if enforcement == "Warn":
        assert _created(plan)
        assert plan.status.phase != "Held"
        assert compliant.reason == "PolicyWarnings"
        return
    assert not _created(plan)
    assert plan.status.phase == "Held"
    assert (compliant.status, compliant.reason) == ("False", outcome)
    assert compliant.message.startswith(f"shop-signed/signed: {IMAGE}: ")
    if outcome in images.CREDENTIALS_UNUSABLE:
        assert "not verified: the pull secret shop/regcred: why" in compliant.message
    assert outcome in event_reasons(plan)
