"""The built-in GuardrailPolicy library (``deploy/policies``) and its fixtures.

Every library file parses and compiles; every fixture under ``deploy/policies/fixtures/<policy>/``
passes or fails its own policy exactly as its file name says (``pass-*.yaml``, ``fail-*.yaml``),
with a message that names the problem; and a failing fixture fails *only* its own policy, so
each fixture shows one thing. A fixture is one YAML document (the subject object); a sibling
``<name>.context.yaml`` may give ``stage`` (default: the policy's first stage), ``namespace``
(``{name, labels}``), ``stable`` and ``now`` (default: a date outside the change freeze).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import pytest
import yaml

from permafrost import models
from permafrost.policies import policy

ROOT = pathlib.Path(__file__).resolve().parents[2]
LIBRARY_DIR = ROOT / "deploy" / "policies"
FIXTURES_DIR = LIBRARY_DIR / "fixtures"
DEFAULT_NOW = "2025-06-02T09:00:00Z"  # outside the change-freeze window of the library
CONTEXT_KEYS = {"stage", "namespace", "stable", "now"}
KINDS = {"GuardedRelease", "Deployment", "StatefulSet", "DaemonSet", "Pod", models.ARTIFACT_KIND}

# The library the brief asks for: name -> (stages, enforcement).
EXPECTED = {
    "permafrost-images-pinned": (["build", "create"], "Enforce"),
    "permafrost-trusted-registries": (["build", "create"], "Enforce"),
    "permafrost-no-latest-tag": (["build", "create"], "Enforce"),
    "permafrost-resource-limits": (["create"], "Warn"),
    "permafrost-run-as-non-root": (["create"], "Enforce"),
    "permafrost-host-isolation": (["create"], "Enforce"),
    "permafrost-read-only-root-filesystem": (["create"], "Warn"),
    "permafrost-change-freeze": (["promote"], "Enforce"),
    "permafrost-no-version-downgrade": (["promote"], "Enforce"),
    "permafrost-production-approval": (["promote"], "Enforce"),
}

# What the message of each failing fixture must say (the offender and the problem).
MESSAGES: dict[str, tuple[str, ...]] = {
    "permafrost-images-pinned/fail-artifact-tag-only": (
        "registry.example/shop/checkout:1.5.0",
        "not pinned by digest",
    ),
    "permafrost-images-pinned/fail-container-tag-only": ("container web", "not pinned by digest"),
    "permafrost-images-pinned/fail-init-container": ("container migrate", "not pinned"),
    "permafrost-images-pinned/fail-ephemeral-container": ("container debugger", "not pinned"),
    "permafrost-images-pinned/fail-uppercase-digest": ("container web", "not pinned"),
    "permafrost-trusted-registries/fail-artifact-docker-hub": (
        "artifact uses image docker.io/library/nginx",
        "not trusted",
    ),
    "permafrost-trusted-registries/fail-look-alike-host": (
        "container web",
        "registry.example.evil.io",
        "not trusted",
    ),
    "permafrost-trusted-registries/fail-untrusted-sidecar": ("container log-shipper", "quay.io"),
    "permafrost-trusted-registries/fail-implicit-docker-hub": ("container proxy", "nginx:1.27"),
    "permafrost-no-latest-tag/fail-artifact-latest": ("artifact", "tagged ':latest'"),
    "permafrost-no-latest-tag/fail-sidecar-latest": ("container envoy", "tagged ':latest'"),
    "permafrost-resource-limits/fail-no-memory-limit": ("container web has no memory limit",),
    "permafrost-resource-limits/fail-init-container-no-limits": (
        "container migrate has no CPU or memory limit",
    ),
    "permafrost-run-as-non-root/fail-not-set": ("container web may run as root", "neither"),
    "permafrost-run-as-non-root/fail-container-overrides-pod": (
        "container migrate may run as root",
        "runAsNonRoot: false",
    ),
    "permafrost-host-isolation/fail-privileged": ("container node-agent is privileged",),
    "permafrost-host-isolation/fail-host-path": (
        "volume runtime",
        "/var/run/containerd/containerd.sock",
    ),
    "permafrost-host-isolation/fail-host-network": ("hostNetwork: true",),
    "permafrost-host-isolation/fail-host-pid": ("hostPID: true",),
    "permafrost-host-isolation/fail-host-ipc": ("hostIPC: true",),
    "permafrost-read-only-root-filesystem/fail-writable-root": (
        "container web has a writable root filesystem",
    ),
    "permafrost-read-only-root-filesystem/fail-init-container-unset": ("container migrate",),
    "permafrost-change-freeze/fail-inside-window": ("change freeze", "January 5, 08:00 UTC"),
    "permafrost-change-freeze/fail-at-window-start": ("change freeze", "December 19, 17:00 UTC"),
    "permafrost-no-version-downgrade/fail-downgrade-minor": (
        "version 1.9.3 is lower than 1.10.0",
        "rollback",
    ),
    "permafrost-no-version-downgrade/fail-downgrade-patch": ("version 1.4.2 is lower than 1.4.10",),
    "permafrost-no-version-downgrade/fail-downgrade-major": (
        "version v1.12.0 is lower than 2.0.0",
    ),
    "permafrost-production-approval/fail-not-approved": (
        "GuardedRelease checkout",
        "permafrost.dev/approved-by",
    ),
    "permafrost-production-approval/fail-blank-approval": ("permafrost.dev/approved-by",),
}


# --- loading -----------------------------------------------------------------------------------

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def load_all(path: pathlib.Path) -> tuple[Any, ...]:
    """The YAML documents of a file (parsed once: read-only, never mutate them)."""
    return tuple(yaml.load_all(path.read_text(), Loader=LOADER))


def load(path: pathlib.Path) -> Any:
    [doc] = load_all(path)
    return doc


def library_files() -> list[pathlib.Path]:
    return sorted(LIBRARY_DIR.glob("*.yaml"))


@functools.cache
def library() -> dict[str, policy.Policy]:
    compiled = {}
    for path in library_files():
        for name, spec in policy.parse_policies(list(load_all(path))):
            compiled[name] = policy.compile_policy(name, spec)
    return compiled


@dataclasses.dataclass(frozen=True)
class Fixture:
    policy: str
    path: pathlib.Path

    @property
    def id(self) -> str:
        return f"{self.policy}/{self.path.stem}"

    @property
    def expect_pass(self) -> bool:
        return self.path.name.startswith("pass-")

    @property
    def context_path(self) -> pathlib.Path:
        return self.path.with_name(f"{self.path.stem}.context.yaml")

    def context(self) -> dict[str, Any]:
        if not self.context_path.exists():
            return {}
        return load(self.context_path) or {}

    def stage(self) -> Any:
        return self.context().get("stage") or _first_stage(self.policy)

    def evaluate(self, policies: list[policy.Policy]) -> policy.Verdict:
        body = load(self.path)
        context = self.context()
        namespace = context.get("namespace") or {
            "name": (body.get("metadata") or {}).get("namespace") or "default",
            "labels": {},
        }
        subject = policy.Subject(
            object=body,
            stable=context.get("stable"),
            namespace=namespace,
            artifact=body if body.get("kind") == models.ARTIFACT_KIND else None,
        )
        return policy.evaluate(
            policies, stage=self.stage(), subject=subject, now=_time(context.get("now"))
        )


def _first_stage(name: str) -> str:
    return str(load(LIBRARY_DIR / f"{name}.yaml")["spec"]["stages"][0])


def _time(value: Any) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    return datetime.datetime.fromisoformat(str(value or DEFAULT_NOW).replace("Z", "+00:00"))


def fixtures() -> list[Fixture]:
    found = []
    for directory in sorted(p for p in FIXTURES_DIR.iterdir() if p.is_dir()):
        for path in sorted(directory.glob("*.yaml")):
            if not path.name.endswith(".context.yaml"):
                found.append(Fixture(directory.name, path))
    return found


FIXTURES = fixtures()
FAILING = [f for f in FIXTURES if not f.expect_pass]


def not_passed(verdict: policy.Verdict) -> list[policy.RuleResult]:
    return [r for r in verdict.results if r.outcome != "Pass"]


def evaluate_one(name: str, body: Mapping[str, Any], **kw: Any) -> policy.Verdict:
    stage = kw.pop("stage", _first_stage(name))
    artifact = body if body.get("kind") == models.ARTIFACT_KIND else None
    subject = policy.Subject(object=body, artifact=artifact, **kw)
    return policy.evaluate([library()[name]], stage=stage, subject=subject, now=_time(None))


# --- the library -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", library_files(), ids=lambda p: p.name)
def test_library_file_parses_and_compiles(path: pathlib.Path) -> None:
    docs = list(load_all(path))
    assert len(docs) == 1, "one GuardrailPolicy per file"
    doc = docs[0]
    assert doc["apiVersion"] == models.API_VERSION
    assert doc["kind"] == models.POLICY_KIND
    assert "namespace" not in doc["metadata"], "GuardrailPolicies are cluster-scoped"
    [(name, spec)] = policy.parse_policies(docs)
    assert name.startswith("permafrost-")
    assert path.stem == name
    compiled = policy.compile_policy(name, spec)
    for rule in compiled.rules:
        # A static message for when the messageExpression cannot be evaluated.
        assert rule.message, rule.name
        assert not rule.message.startswith("rule "), rule.name
        # Depth 1 keeps every rule linear in its input: the cost budget never refuses it.
        assert rule.depth <= 1, f"{name}/{rule.name} nests comprehensions"


def test_library_is_complete() -> None:
    found = {
        name: (sorted(p.stages, key=["build", "create", "promote"].index), p.enforcement)
        for name, p in library().items()
    }
    assert found == EXPECTED
    readme = (LIBRARY_DIR / "README.md").read_text()
    for name in EXPECTED:
        assert name in readme, f"{name} is not in deploy/policies/README.md"


def test_every_policy_has_passing_and_failing_fixtures() -> None:
    directories = {p.name for p in FIXTURES_DIR.iterdir() if p.is_dir()}
    assert directories == set(library()), "one fixtures directory per library policy"
    for name in library():
        kinds = {f.expect_pass for f in FIXTURES if f.policy == name}
        assert kinds == {True, False}, f"{name} needs pass-*.yaml and fail-*.yaml fixtures"
    for path in FIXTURES_DIR.rglob("*"):
        if path.is_file():
            assert re.fullmatch(r"(pass|fail)-[a-z0-9-]+(\.context)?\.yaml", path.name), path
    for path in FIXTURES_DIR.rglob("*.context.yaml"):
        assert path.with_name(path.name.replace(".context", "")).exists(), f"orphan {path}"
        assert set(load(path)) <= CONTEXT_KEYS, path


def test_every_failing_fixture_has_message_expectations() -> None:
    assert set(MESSAGES) == {f.id for f in FAILING}


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.id)
def test_fixture_outcome_for_its_own_policy(fixture: Fixture) -> None:
    [body] = load_all(fixture.path)  # a single document: the subject
    assert body["kind"] in KINDS
    own = library()[fixture.policy]
    verdict = fixture.evaluate([own])
    failed = not_passed(verdict)
    if fixture.expect_pass:
        assert failed == []
        return
    assert failed, "the fixture should fail its policy"
    rules = {r.name: r for r in own.rules}
    for result in failed:
        # Fail, not Error: an Error would mean the rule itself is broken.
        assert result.outcome == "Fail", result.message
        assert result.message.strip()
        if rules[result.rule].message_program is not None:
            assert result.message != rules[result.rule].message, "messageExpression fell back"
    message = " | ".join(r.message for r in failed)
    for expected in MESSAGES[fixture.id]:
        assert expected in message


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_policy_runs_on_a_passing_fixture(name: str) -> None:
    """A pass that comes from the policy not matching at all would prove nothing."""
    ran = [
        f
        for f in FIXTURES
        if f.policy == name and f.expect_pass and f.evaluate([library()[name]]).results
    ]
    assert ran


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.id)
def test_fixture_is_isolated(fixture: Fixture) -> None:
    """A failing fixture fails only its own policy; a passing one complies with the library."""
    others = [p for name, p in library().items() if name != fixture.policy]
    verdict = fixture.evaluate(others if not fixture.expect_pass else list(library().values()))
    assert not_passed(verdict) == []


# --- compliant workloads -----------------------------------------------------------------------

DIGEST = "sha256:" + "0feb10e9c82f2c657fe96a40d800f2cd3fde09cf15f687e8dc6104e67732e218"


def compliant_pod_spec() -> dict[str, Any]:
    def container(name: str, image: str) -> dict[str, Any]:
        return {
            "name": name,
            "image": image,
            "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
            "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
        }

    return {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
        "initContainers": [container("migrate", f"registry.example/shop/migrate:1.4.2@{DIGEST}")],
        "containers": [
            container("web", f"registry.example/shop/checkout:1.4.2@{DIGEST}"),
            container("envoy", f"ghcr.io/permafrost/envoy:1.31.2@{DIGEST}"),
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }


def compliant(kind: str) -> dict[str, Any]:
    template = {
        "metadata": {"labels": {"app": "checkout", "app.kubernetes.io/version": "1.4.2"}},
        "spec": compliant_pod_spec(),
    }
    if kind == "GuardedRelease":
        return {
            "apiVersion": models.API_VERSION,
            "kind": kind,
            "metadata": {
                "name": "checkout",
                "namespace": "shop",
                "annotations": {models.ANNOTATION_APPROVED_BY: "alice"},
            },
            "spec": {"replicas": 2, "template": template},
        }
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": "checkout", "namespace": "shop"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "checkout"}},
            "template": template,
        },
    }


@pytest.mark.parametrize("kind", ["GuardedRelease", "Deployment"])
def test_compliant_workload_passes_the_whole_library_at_create(kind: str) -> None:
    assert len(policy.pod_spec(compliant(kind))["containers"]) == 2
    verdict = policy.evaluate(
        library().values(),
        stage="create",
        subject=policy.Subject(object=compliant(kind), namespace={"name": "shop", "labels": {}}),
        now=_time(None),
    )
    assert verdict.violations == ()
    assert verdict.warnings == ()
    assert verdict.audits == ()
    create_rules = sum(len(p.rules) for p in library().values() if "create" in p.stages)
    assert len(verdict.results) == create_rules, "every create-stage policy applies"


def test_compliant_release_is_promoted_in_production_during_no_freeze() -> None:
    verdict = policy.evaluate(
        library().values(),
        stage="promote",
        subject=policy.Subject(
            object=compliant("GuardedRelease"),
            namespace={
                "name": "shop",
                "labels": {"environment": "production", "permafrost.dev/change-freeze": "true"},
            },
            stable={"hash": "a1b2c3d4e5", "name": "checkout-a1b2c3d4e5", "version": "1.3.9"},
        ),
        now=_time(None),
    )
    assert verdict.allowed
    assert not_passed(verdict) == []
    assert {r.policy for r in verdict.results} == {
        n for n, p in library().items() if "promote" in p.stages
    }


def test_compliant_artifact_passes_the_whole_library_at_build() -> None:
    artifact = {
        "apiVersion": models.API_VERSION,
        "kind": models.ARTIFACT_KIND,
        "metadata": {"name": "checkout"},
        "image": f"registry.example/shop/checkout:1.5.0@{DIGEST}",
        "digest": DIGEST,
        "labels": {},
        "annotations": {},
    }
    verdict = policy.evaluate(
        library().values(),
        stage="build",
        subject=policy.Subject(object=artifact, artifact=artifact),
        now=_time(None),
    )
    assert verdict.results
    assert not_passed(verdict) == []


# --- the rules, case by case -------------------------------------------------------------------

HEX64 = "0123456789abcdef" * 4


def with_image(image: str) -> dict[str, Any]:
    body = compliant("Deployment")
    body["spec"]["template"]["spec"]["containers"][0]["image"] = image
    return body


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        (f"registry.example/a:1.0@sha256:{HEX64}", True),
        (f"registry.example/a@sha256:{HEX64}", True),
        (f"registry.example:5000/a:1.0@sha256:{HEX64}", True),
        (f"registry.example/a@sha512:{HEX64 * 2}", True),
        ("registry.example/a:1.0", False),
        ("registry.example/a", False),
        (f"registry.example/a@sha256:{HEX64[:-1]}", False),
        (f"registry.example/a@sha256:{HEX64}0", False),
        (f"registry.example/a@sha256:{HEX64.upper()}", False),
        (f"registry.example/a@sha512:{HEX64}", False),
        (f"registry.example/a@md5:{HEX64[:32]}", False),
        (f"@sha256:{HEX64}", False),
        (f"registry.example/a@sha256:{HEX64}@sha256:{HEX64}", False),
    ],
)
def test_images_pinned(image: str, allowed: bool) -> None:
    verdict = evaluate_one("permafrost-images-pinned", with_image(image), stage="create")
    assert (not_passed(verdict) == []) is allowed


def test_images_pinned_requires_an_image() -> None:
    body = with_image("x")
    del body["spec"]["template"]["spec"]["containers"][0]["image"]
    [result] = not_passed(evaluate_one("permafrost-images-pinned", body, stage="create"))
    assert result.outcome == "Fail"
    assert "(none)" in result.message


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        ("registry.example/shop/a:1", True),
        ("ghcr.io/permafrost/a:1", True),
        ("ghcr.io/permafrost/team/a:1", True),
        ("registry.example.evil.io/shop/a:1", False),
        ("registry.example:5000/shop/a:1", False),
        ("ghcr.io/permafrostx/a:1", False),
        ("ghcr.io/other/a:1", False),
        ("evil.io/registry.example/a:1", False),
        ("nginx:1.27", False),
        ("", False),
    ],
)
def test_trusted_registries(image: str, allowed: bool) -> None:
    verdict = evaluate_one("permafrost-trusted-registries", with_image(image), stage="create")
    assert (not_passed(verdict) == []) is allowed


def test_trusted_registries_lists_agree() -> None:
    """The list appears in the expression and in the messageExpression: they must not drift."""
    [rule] = library()["permafrost-trusted-registries"].rules
    prefixes = re.compile(r"startsWith\('([^']*)'\)")
    assert prefixes.findall(rule.expression)
    doc = load(LIBRARY_DIR / "permafrost-trusted-registries.yaml")
    message_expression = doc["spec"]["rules"][0]["messageExpression"]
    assert prefixes.findall(message_expression) == prefixes.findall(rule.expression)
    assert all(p.endswith("/") for p in prefixes.findall(rule.expression))


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        ("registry.example/a:1.4.2", True),
        (f"registry.example/a@sha256:{HEX64}", True),
        ("registry.example:5000/a:1.4.2", True),
        ("registry.example/latest:1.0", True),
        ("registry.example/a:latest-2024", True),
        ("registry.example/a:latest", False),
        (f"registry.example/a:latest@sha256:{HEX64}", False),
        ("registry.example/a", False),
        ("registry.example:5000/a", False),
        ("a:latest", False),
        ("", False),
    ],
)
def test_no_latest_tag(image: str, allowed: bool) -> None:
    verdict = evaluate_one("permafrost-no-latest-tag", with_image(image), stage="create")
    assert (not_passed(verdict) == []) is allowed


def test_no_latest_tag_names_an_untagged_image() -> None:
    verdict = evaluate_one(
        "permafrost-no-latest-tag", with_image("registry.example/a"), stage="create"
    )
    [result] = not_passed(verdict)
    assert "container web uses image registry.example/a, which has no tag" in result.message


def downgrade_verdict(new: str | None, old: Any, **annotations: str) -> policy.Verdict:
    body = compliant("GuardedRelease")
    labels = body["spec"]["template"]["metadata"]["labels"]
    labels.pop("app.kubernetes.io/version")
    if new is not None:
        labels["app.kubernetes.io/version"] = new
    body["metadata"]["annotations"] = annotations
    stable = None if old == "-" else {"hash": "h", "name": "checkout-h", "version": old}
    return evaluate_one("permafrost-no-version-downgrade", body, stable=stable)


def semver_core(version: str) -> tuple[int, ...] | None:
    match = re.fullmatch(r"v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z_.-]*)?", version)
    return tuple(int(g) for g in match.groups()[:3]) if match else None


VERSION_PAIRS = [
    # (new, stable): numeric order, not text order
    ("1.10.0", "1.9.9"),
    ("1.9.9", "1.10.0"),
    ("2.0.0", "10.0.0"),
    ("10.0.0", "9.99.99"),
    ("1.2.10", "1.2.9"),
    ("1.2.9", "1.2.10"),
    ("1.4.2", "1.4.2"),
    ("0.0.1", "0.0.0"),
    ("0.0.0", "0.0.1"),
    ("123.45.6", "123.5.60"),
    ("123.5.60", "123.45.6"),
    ("1.99.0", "2.0.0"),
    ("3.0.0", "2.99.99"),
    ("20241105.1.0", "20241104.9.9"),
    ("1.0.10", "1.0.9"),
    ("1.0.0", "1.0.10"),
    # the optional 'v', on either side
    ("v1.4.3", "1.4.2"),
    ("1.4.1", "v1.4.2"),
    ("v2.0.0", "v10.0.0"),
    # a suffix is ignored
    ("1.4.2-rc.1", "1.4.2"),
    ("1.4.2", "1.4.2-rc.1"),
    ("1.4.1-hotfix", "1.4.2"),
    ("1.5.0-rc.1", "1.4.9"),
    # not in the accepted form: not compared
    ("1.4", "1.5.0"),
    ("01.2.3", "1.2.4"),
    ("2024-06-01", "2025-01-01"),
    ("latest", "1.0.0"),
    ("1.2.3", "banana"),
]


@pytest.mark.parametrize(("new", "old"), VERSION_PAIRS)
def test_no_version_downgrade_compares_dotted_integers(new: str, old: str) -> None:
    a, b = semver_core(new), semver_core(old)
    allowed = a is None or b is None or not a < b
    assert (not_passed(downgrade_verdict(new, old)) == []) is allowed


@pytest.mark.parametrize(
    ("new", "old", "annotations", "allowed"),
    [
        ("1.4.1", "1.4.2", {models.ANNOTATION_ROLLBACK_TO: "5d8c7f9b2a"}, True),
        ("1.4.1", "1.4.2", {models.ANNOTATION_ROLLBACK_TO: ""}, False),
        ("1.4.1", "1.4.2", {models.ANNOTATION_ROLLBACK_FROM: "5d8c7f9b2a"}, False),
        ("1.4.1", "-", {}, True),  # no stable revision
        (None, "1.4.2", {}, True),  # no version on the new template
        ("1.4.1", None, {}, True),  # no version on the stable revision
    ],
)
def test_no_version_downgrade_exceptions(
    new: str | None, old: str | None, annotations: dict[str, str], allowed: bool
) -> None:
    verdict = downgrade_verdict(new, old, **annotations)
    assert verdict.results, "the policy applies at promote"
    assert (not_passed(verdict) == []) is allowed
    assert all(r.outcome != "Error" for r in verdict.results)


def test_no_version_downgrade_without_version_in_stable() -> None:
    body = compliant("GuardedRelease")
    verdict = evaluate_one("permafrost-no-version-downgrade", body, stable={"hash": "h"})
    assert verdict.results
    assert not_passed(verdict) == []


@pytest.mark.parametrize(
    ("value", "allowed"),
    [("alice", True), ("alice@example.com", True), ("", False), ("   ", False), (None, False)],
)
def test_production_approval(value: str | None, allowed: bool) -> None:
    body = compliant("GuardedRelease")
    body["metadata"]["annotations"] = (
        {} if value is None else {models.ANNOTATION_APPROVED_BY: value}
    )
    production = {"name": "shop", "labels": {"environment": "production"}}
    verdict = evaluate_one("permafrost-production-approval", body, namespace=production)
    assert verdict.results
    assert (not_passed(verdict) == []) is allowed
    # Outside production, and for other kinds, the policy does not apply.
    staging = {"name": "shop", "labels": {"environment": "staging"}}
    assert evaluate_one("permafrost-production-approval", body, namespace=staging).results == ()
    deployment = compliant("Deployment")
    assert (
        evaluate_one("permafrost-production-approval", deployment, namespace=production).results
        == ()
    )


@pytest.mark.parametrize(
    ("now", "frozen"),
    [
        ("2026-12-19T16:59:59Z", False),
        ("2026-12-19T17:00:00Z", True),
        ("2027-01-01T00:00:00Z", True),
        ("2027-01-05T07:59:59Z", True),
        ("2027-01-05T08:00:00Z", False),
        ("2027-07-01T12:00:00Z", False),
        ("2031-12-24T10:00:00Z", True),
    ],
)
def test_the_built_in_change_freeze_recurs_every_year(now: str, frozen: bool) -> None:
    # It was a fixed window that had already ended: a freeze that never applies again.
    body = {"kind": "GuardedRelease", "metadata": {"name": "web", "namespace": "shop"}}
    subject = policy.Subject(
        object=body,
        namespace={"name": "shop", "labels": {"permafrost.dev/change-freeze": "true"}},
    )
    verdict = policy.evaluate(
        [library()["permafrost-change-freeze"]], stage="promote", subject=subject, now=_time(now)
    )
    assert bool(verdict.violations) is frozen
