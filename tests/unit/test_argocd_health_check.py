"""The Argo CD health check: every captured live state maps to the health it should, partial
objects never crash it, and the argocd-cm patch embeds exactly the tested script.

The Lua runs with exactly the libraries Argo CD opens (``argocd_health``): by default what the
shipped ``argocd-cm`` patch configures (``useOpenLibs``), and also Argo CD's default sandbox,
where a user who copied only the health key ends up."""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import types
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from lupa.lua51 import LuaError
from planner_fixtures import (
    V1,
    V2,
    applied,
    desired,
    make_spec,
    ready_pods,
    routed_to,
    situation,
    stable,
    view,
)
from planner_fixtures import failed as failed_record

from argocd_health import (
    FIXTURES,
    HEALTH_KEY,
    OPEN_LIBS_KEY,
    ROOT,
    SCRIPT,
    STATUSES,
    health,
    runtime,
)
from permafrost.releases import planner

# Fixture (captured by hack/capture-argocd-fixtures.sh) -> (health, a fragment of its message).
EXPECTED = {
    "progressing_no_status": ("Progressing", "Waiting for Permafrost to observe the release"),
    "progressing_new_generation": ("Progressing", "observe the latest spec"),
    "progressing_verifying": ("Progressing", "verifying revision"),
    "healthy_stable": ("Healthy", "replicas Ready"),
    "healthy_upgraded": ("Healthy", "replicas Ready"),
    "healthy_approved": ("Healthy", "replicas Ready"),
    "degraded_rolled_back_deadline": ("Degraded", "Rolled back (ProgressDeadlineExceeded)"),
    "degraded_rolled_back_crash_loop": ("Degraded", "Rolled back (CrashLoop)"),
    "degraded_policy_hold": ("Degraded", "Held by policy (PromotionHeld): argocd-health-hold"),
    "suspended_approval": ("Suspended", "Waiting for approval: permafrost-production-approval"),
}


def load(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((FIXTURES / f"{name}.yaml").read_text())
    return body


def test_every_captured_fixture_has_an_expected_health() -> None:
    assert sorted(p.stem for p in FIXTURES.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_captured_release_gets_its_expected_health(name: str) -> None:
    expected, fragment = EXPECTED[name]
    got, message = health(load(name))
    assert got == expected
    assert fragment in message


def test_argocds_default_sandbox_has_no_string_library() -> None:
    rt = runtime(open_libs=False)
    assert rt.execute("return string, math, io, os, debug, coroutine") == (None,) * 6
    assert rt.execute("return type(table.insert), table.time, type(require('os').date)") == (
        "function",
        None,
        "function",
    )
    with pytest.raises(LuaError, match="attempt to index"):
        rt.execute("return ('a;b'):gmatch(';')")


def test_the_open_libraries_sandbox_has_string() -> None:
    assert runtime(open_libs=True).execute("return type(string.gmatch)") == "function"


# What a release held for approval shows where only the health key is installed.
WITHOUT_OPEN_LIBS = {
    "suspended_approval": ("Degraded", "Held by policy (PromotionHeld): permafrost-production"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_captured_release_gets_a_health_in_argocds_default_sandbox(name: str) -> None:
    # NB: the check as first shipped failed here for every hold ("attempt to index global
    # 'string'"), and Argo CD showed those releases Unknown.
    expected, fragment = WITHOUT_OPEN_LIBS.get(name, EXPECTED[name])
    got, message = health(load(name), open_libs=False)
    assert (got, fragment in message) == (expected, True), message


def test_a_rolled_back_release_reports_the_failed_and_the_serving_revision() -> None:
    body = load("degraded_rolled_back_deadline")
    _, message = health(body)
    failed, stable = body["status"]["desiredRevision"], body["status"]["stableRevision"]
    assert failed != stable
    assert f"revision {failed} failed" in message
    assert f"traffic stays on revision {stable}" in message


def with_compliance(reason: str, message: str) -> dict[str, Any]:
    body = load("suspended_approval")
    for c in body["status"]["conditions"]:
        if c["type"] == "PolicyCompliant":
            c["reason"], c["message"] = reason, message
    return body


def test_an_approval_held_with_another_violation_is_degraded_not_suspended() -> None:
    approval = next(
        c["message"]
        for c in load("suspended_approval")["status"]["conditions"]
        if c["type"] == "PolicyCompliant"
    )
    freeze = "permafrost-change-freeze/outside-freeze-window: change freeze; it waits"
    assert health(with_compliance("PromotionHeld", f"{approval}; {freeze}"))[0] == "Degraded"
    assert health(with_compliance("PromotionHeld", f"{freeze}; {approval}"))[0] == "Degraded"


def test_an_approval_message_that_contains_a_separator_is_still_one_approval() -> None:
    message = "team/approved: needs permafrost.dev/approved-by; ask the on-call; then annotate"
    assert health(with_compliance("PromotionHeld", message))[0] == "Suspended"


def test_a_create_stage_violation_is_degraded_even_if_it_mentions_approval() -> None:
    message = "team/approved: needs permafrost.dev/approved-by"
    status, text = health(with_compliance("PolicyViolation", message))
    assert status == "Degraded"
    assert text.startswith("Held by policy (PolicyViolation)")


def test_a_manual_rollback_is_healthy_and_says_so() -> None:
    body = load("healthy_stable")
    for c in body["status"]["conditions"]:
        if c["type"] == "RolledBack":
            c.update(status="True", reason="ManualRollback", message="manually rolled back to x")
    status, message = health(body)
    assert status == "Healthy"
    assert "manually rolled back to x" in message


def test_a_ready_release_whose_desired_revision_is_not_stable_is_progressing() -> None:
    body = load("healthy_stable")
    body["status"]["desiredRevision"] = "0123456789"
    assert health(body)[0] == "Progressing"


PARTIAL: list[dict[str, Any]] = [
    {},
    {"metadata": {}},
    {"status": {}},
    {"metadata": {"generation": 3}, "status": {"observedGeneration": 3}},
    {"metadata": {"generation": 3}, "status": {"observedGeneration": 3, "conditions": []}},
    {"status": {"observedGeneration": 1, "conditions": [{}]}},
    {"status": {"observedGeneration": 1, "conditions": [{"type": "RolledBack", "status": "True"}]}},
    {"status": {"observedGeneration": 1, "conditions": [{"type": "Degraded", "status": "True"}]}},
    {
        "status": {
            "observedGeneration": 1,
            "conditions": [{"type": "PolicyCompliant", "status": "False"}],
        }
    },
    {
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {"type": "PolicyCompliant", "status": "False", "reason": "PromotionHeld"}
            ],
        }
    },
    {"status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}},
    {
        "status": {
            "observedGeneration": 1,
            "conditions": [{"type": "Progressing", "status": "True"}],
        }
    },
]


@pytest.mark.parametrize("obj", PARTIAL)
def test_a_partial_object_gets_a_health_without_an_error(obj: dict[str, Any]) -> None:
    status, _ = health(obj)
    assert status in ("Progressing", "Degraded")


def test_a_release_without_any_status_is_progressing() -> None:
    assert health({"metadata": {"generation": 1}}) == (
        "Progressing",
        "Waiting for Permafrost to observe the release",
    )


TYPES = ("Ready", "Progressing", "Degraded", "RolledBack", "PolicyCompliant", "Other")
REASONS = ("PromotionHeld", "PolicyViolation", "ManualRollback", "ConfigNotFound", "CrashLoop")
text = st.text(alphabet="abc-/:; .", max_size=20)
conditions = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(TYPES),
            "status": st.sampled_from(("True", "False", "Unknown")),
            "reason": st.sampled_from(REASONS),
            "message": st.one_of(text, st.just("x/y: permafrost.dev/approved-by")),
        },
    ),
    max_size=6,
)
statuses = st.fixed_dictionaries(
    {},
    optional={
        "observedGeneration": st.integers(0, 3),
        "desiredRevision": st.sampled_from(("a", "b")),
        "stableRevision": st.sampled_from(("a", "b")),
        "conditions": conditions,
    },
)


@settings(max_examples=150, deadline=None)
@given(
    status=st.one_of(st.none(), statuses),
    generation=st.one_of(st.none(), st.integers(0, 3)),
    open_libs=st.booleans(),
)
def test_any_shape_of_status_gets_a_valid_health(
    status: dict[str, Any] | None, generation: int | None, open_libs: bool
) -> None:
    obj: dict[str, Any] = {"metadata": {} if generation is None else {"generation": generation}}
    if status is not None:
        obj["status"] = status
    got, message = health(obj, open_libs=open_libs)
    assert got in STATUSES
    assert message


def _generator() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("gen_argocd", ROOT / "hack" / "gen_argocd.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_argocd_cm_patch_embeds_the_tested_script_verbatim() -> None:
    gen = _generator()
    patch = yaml.safe_load(pathlib.Path(gen.PATCH_PATH).read_text())
    assert patch["kind"] == "ConfigMap"
    assert patch["metadata"]["name"] == "argocd-cm"
    assert patch["data"][HEALTH_KEY] == SCRIPT.read_text()
    # NB: ConfigMap data are strings; Argo CD parses this one with strconv.ParseBool.
    assert patch["data"][OPEN_LIBS_KEY] == "true"
    assert gen.main(["--check"]) == 0


def test_the_generator_reports_a_stale_patch(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gen = _generator()
    stale = tmp_path / "argocd-cm-health.yaml"
    stale.write_text(gen.render("return {}\n"))
    monkeypatch.setattr(gen, "PATCH_PATH", stale)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    assert gen.main(["--check"]) == 1
    assert "is stale" in capsys.readouterr().out
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0


def violating(release: dict[str, Any], message: str) -> dict[str, Any]:
    """``release`` with PolicyCompliant=False, reason EnforcedPolicyViolated, and ``message``."""
    for c in release["status"]["conditions"]:
        if c["type"] == "PolicyCompliant":
            c.update(status="False", reason="EnforcedPolicyViolated", message=message)
    return release


def test_a_serving_release_that_violates_an_enforced_policy_is_degraded_not_held() -> None:
    """PolicyCompliant=False (EnforcedPolicyViolated) on a Stable release: nothing is held, what
    runs keeps serving; Argo CD says it breaks a rule in force."""
    release = violating(load("healthy_stable"), "shop/no-latest: image tags are not allowed")
    status, message = health(release)
    assert status == "Degraded"
    assert message == "Violates an enforced policy: shop/no-latest: image tags are not allowed"


def test_a_revision_in_verification_whose_promotion_a_policy_will_hold_stays_progressing() -> None:
    """During verification a promote-stage Enforce violation is EnforcedPolicyViolated (the
    hold, PromotionHeld, comes once verified): Argo CD keeps Progressing, with the reason."""
    release = violating(load("progressing_verifying"), "Enforce freeze/window: no changes now")
    status, message = health(release)
    assert status == "Progressing"
    assert message.endswith("(Enforce freeze/window: no changes now)")


# --- a scale (kubectl scale, an autoscaler): what the planner writes, as Argo CD judges it -------


def _scaled(replicas: int, ready: int, *, failed: bool = False) -> tuple[str, str]:
    """The health of a release serving v2 (v1 if ``failed``: v2 failed) right after the
    planner observed a scale from 3 to ``replicas``, with ``ready`` pods of the serving one
    Ready."""
    serving = V1 if failed else V2
    s = situation(
        spec=make_spec("v2", replicas=3),
        records=[stable(serving), *([failed_record(V2)] if failed else [])],
        stable_revision=serving,
        views=[view(serving, replicas=3), *([view(V2, replicas=0, pods=())] if failed else [])],
        service=routed_to(serving),
    )
    s = applied(s, planner.plan(s))
    spec = make_spec("v2", replicas=replicas)
    pods = {
        serving: dataclasses.replace(
            s.revisions[serving], pods=ready_pods(ready), ready_replicas=ready
        )
    }
    s = dataclasses.replace(
        s, spec=spec, desired=desired(spec), generation=2, revisions={**s.revisions, **pods}
    )
    status = planner.plan(s).status
    return health({"metadata": {"generation": 2}, "status": status.to_json()})


def test_a_scale_up_is_progressing_until_the_new_pods_are_ready_then_healthy() -> None:
    got, message = _scaled(5, 2)
    assert (got, "2/5 replicas Ready" in message) == ("Progressing", True), message
    assert _scaled(5, 5)[0] == "Healthy"


def test_a_scale_down_is_healthy_at_once() -> None:
    assert _scaled(1, 3)[0] == "Healthy"


def test_a_scale_of_a_rolled_back_release_stays_degraded() -> None:
    got, message = _scaled(4, 2, failed=True)
    assert (got, "Rolled back" in message) == ("Degraded", True), message


def test_a_scale_not_yet_observed_is_progressing() -> None:
    body = load("healthy_stable")
    body["metadata"]["generation"] = body["status"]["observedGeneration"] + 1
    assert health(body) == ("Progressing", "Waiting for Permafrost to observe the latest spec")


@pytest.mark.parametrize("reason", ["GateInconclusive", "GateMisconfigured"])
def test_a_release_held_by_a_promotion_gate_is_degraded_and_says_which(reason: str) -> None:
    body = load("healthy_stable")
    body["status"]["desiredRevision"] = "0123456789"
    for c in body["status"]["conditions"]:
        if c["type"] == "Progressing":
            c.update(status="False", reason=reason, message="gate smoke is inconclusive")
    status, message = health(body)
    assert status == "Degraded"
    assert f"Held by a promotion gate ({reason}): gate smoke is inconclusive" in message
