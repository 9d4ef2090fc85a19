"""GuardrailPolicies in the cluster: refused when broken, enforced at create and promote."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from conftest import Operator, release, status, wait_phase
from k8s_harness import ROOT, Cluster, condition, to_yaml, wait_for


def guardrail(
    name: str,
    *,
    stages: list[str],
    rules: list[dict[str, str]],
    enforcement: str = "Enforce",
    match: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"stages": stages, "enforcement": enforcement, "rules": rules}
    if match:
        spec["match"] = match
    return {
        "apiVersion": "permafrost.dev/v1alpha1",
        "kind": "GuardrailPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.fixture
def policies(crds: Cluster) -> Iterator[list[str]]:
    """Names of the GuardrailPolicies a test creates; deleted afterwards (they are global)."""
    created: list[str] = []
    yield created
    for name in created:
        crds.kubectl("delete", "guardrailpolicy", name, "--ignore-not-found", check=False)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_a_policy_that_does_not_compile_is_refused_with_the_compile_error(
    crds: Cluster, namespace: str, guarded_operator: Operator, policies: list[str]
) -> None:
    name = unique("broken")
    proc = crds.apply(
        guardrail(
            name,
            stages=["create"],
            rules=[{"name": "oops", "expression": "object.spec.(", "message": "never"}],
        ),
        check=False,
    )
    policies.append(name)
    assert proc.returncode != 0
    assert "does not compile" in proc.stderr
    assert "oops" in proc.stderr
    assert crds.get("guardrailpolicy", name) is None


def test_an_enforced_create_policy_denies_a_release_at_admission_and_warn_only_warns(
    crds: Cluster, namespace: str, guarded_operator: Operator, policies: list[str]
) -> None:
    deny, warn = unique("deny-team-x"), unique("warn-limits")
    crds.apply(
        [
            guardrail(
                deny,
                stages=["create"],
                match={"objectSelector": {"matchLabels": {"team": "x"}}},
                rules=[
                    {
                        "name": "team-x-frozen",
                        "expression": "false",
                        "message": "team x is in a change freeze",
                    }
                ],
            ),
            guardrail(
                warn,
                stages=["create"],
                enforcement="Warn",
                rules=[
                    {
                        "name": "limits",
                        "expression": "podSpec.containers.all(c, has(c.resources) && "
                        "has(c.resources.limits))",
                        "message": "set resources.limits on every container",
                    }
                ],
            ),
        ]
    )
    policies += [deny, warn]

    def denied() -> str | None:
        manifest = release("shop", service="shop")
        manifest["metadata"]["labels"] = {"team": "x"}
        proc = crds.apply(manifest, namespace=namespace, check=False)
        return proc.stderr if proc.returncode != 0 else None

    message = wait_for(denied, timeout=30, interval=0.5, what="the policy to be in force")
    assert f"{deny}/team-x-frozen: team x is in a change freeze" in message
    assert crds.get("guardedrelease", "shop", namespace=namespace) is None

    proc = crds.apply(release("shop", service="shop"), namespace=namespace)
    assert f"{warn}/limits: set resources.limits on every container" in proc.stderr
    st = wait_phase(crds, namespace, "shop", "Stable")
    compliant = condition({"status": st}, "PolicyCompliant")
    assert compliant is not None
    assert (compliant["status"], compliant["reason"]) == ("True", "PolicyWarnings")
    assert warn in compliant["message"]


def test_a_create_policy_holds_a_revision_that_was_admitted_before_the_policy_existed(
    crds: Cluster, namespace: str, operator: Operator, policies: list[str]
) -> None:
    name = unique("no-shop")
    crds.apply(
        guardrail(
            name,
            stages=["create"],
            match={
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
            rules=[
                {
                    "name": "closed",
                    "expression": "object.metadata.name != 'shop'",
                    "message": "this namespace takes no new revisions of shop",
                }
            ],
        )
    )
    policies.append(name)
    # No admission webhook in this test: the release is admitted, the planner must hold it.
    crds.apply(release("shop", service="shop"), namespace=namespace)
    st = wait_phase(crds, namespace, "shop", "Held")
    compliant = condition({"status": st}, "PolicyCompliant")
    assert compliant is not None
    assert (compliant["status"], compliant["reason"]) == ("False", "PolicyViolation")
    assert f"{name}/closed" in compliant["message"]
    deployments = crds.get(
        "deployments", namespace=namespace, selector="permafrost.dev/release=shop"
    )["items"]
    assert deployments == []
    events = crds.kubectl(
        "get",
        "events",
        "--field-selector",
        "reason=PolicyViolation",
        "-o",
        "jsonpath={.items[*].message}",
        namespace=namespace,
    ).stdout
    assert f"{name}/closed" in events

    # Deleting the policy releases the hold by itself (policy changes re-queue every release).
    crds.kubectl("delete", "guardrailpolicy", name)
    wait_phase(crds, namespace, "shop", "Stable", timeout=60)


def test_switching_a_failing_policy_to_enforce_makes_a_running_release_say_so(
    crds: Cluster, namespace: str, operator: Operator, policies: list[str]
) -> None:
    # A create-stage policy the running release fails, first in Warn, then in Enforce: the
    # release never claims that every policy passes, and what runs keeps serving.
    name = unique("no-shop-running")
    policy = guardrail(
        name,
        stages=["create"],
        enforcement="Warn",
        match={"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
        rules=[
            {
                "name": "closed",
                "expression": "object.metadata.name != 'shop'",
                "message": "shop takes no new revisions",
            }
        ],
    )
    crds.apply(policy)
    policies.append(name)
    crds.apply(release("shop", service="shop"), namespace=namespace)
    st = wait_phase(crds, namespace, "shop", "Stable", timeout=90)
    revision = st["stableRevision"]
    compliant = condition({"status": st}, "PolicyCompliant")
    assert compliant is not None
    assert (compliant["status"], compliant["reason"]) == ("True", "PolicyWarnings")

    policy["spec"]["enforcement"] = "Enforce"
    crds.apply(policy)

    def violated() -> dict[str, Any] | None:
        found = condition({"status": status(crds, namespace, "shop")}, "PolicyCompliant")
        return found if found and found["reason"] == "EnforcedPolicyViolated" else None

    compliant = wait_for(violated, timeout=60, interval=0.5, what="the release to re-evaluate")
    assert compliant["status"] == "False"
    assert f"Enforce {name}/closed: shop takes no new revisions" in compliant["message"]
    assert f"revision {revision} keeps serving" in compliant["message"]
    st = status(crds, namespace, "shop")
    assert (st["phase"], st["stableRevision"]) == ("Stable", revision)
    svc = crds.get("service", "shop", namespace=namespace)
    assert svc["spec"]["selector"]["permafrost.dev/revision"] == revision
    events = crds.kubectl(
        "get",
        "events",
        "--field-selector",
        "reason=EnforcedPolicyViolated",
        "-o",
        "jsonpath={.items[*].message}",
        namespace=namespace,
    ).stdout
    assert f"{name}/closed" in events


def test_a_promote_policy_holds_traffic_until_the_release_is_approved(
    crds: Cluster, namespace: str, operator: Operator, policies: list[str]
) -> None:
    name = unique("approval")
    crds.kubectl("label", "namespace", namespace, "environment=production")
    crds.apply(
        guardrail(
            name,
            stages=["promote"],
            match={
                "namespaceSelector": {
                    "matchLabels": {
                        "environment": "production",
                        "kubernetes.io/metadata.name": namespace,
                    }
                }
            },
            rules=[
                {
                    "name": "approved",
                    "expression": "has(object.metadata.annotations) && "
                    "'permafrost.dev/approved-by' in object.metadata.annotations && "
                    "object.metadata.annotations['permafrost.dev/approved-by'] != ''",
                    "message": "production releases need the annotation permafrost.dev/approved-by",
                }
            ],
        )
    )
    policies.append(name)
    crds.apply(release("shop", service="shop"), namespace=namespace)
    st = wait_phase(crds, namespace, "shop", "Held")
    compliant = condition({"status": st}, "PolicyCompliant")
    assert compliant is not None
    assert compliant["reason"] == "PromotionHeld"
    assert st.get("stableRevision") is None
    # No traffic anywhere: the Service selects no pod while nothing is verified.
    svc = crds.get("service", "shop", namespace=namespace)
    assert svc["spec"]["selector"]["permafrost.dev/revision"] == "none"
    revision = st["desiredRevision"]
    assert crds.get("deployment", f"shop-{revision}", namespace=namespace) is not None

    # A held rollout has settled: `status --watch` exits 1 at once, not after its timeout.
    command = ["permafrost", "status", "shop", "-n", namespace, "-w", "--timeout", "60"]
    watch = subprocess.run(
        [sys.executable, "-m", *command],
        env=crds.env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert watch.returncode == 1, watch.stdout + watch.stderr
    assert watch.stdout.splitlines()[-1].endswith("settled: Held")

    crds.kubectl(
        "annotate", "grel", "shop", "permafrost.dev/approved-by=alice", namespace=namespace
    )
    st = wait_phase(crds, namespace, "shop", "Stable", timeout=60, stableRevision=revision)
    svc = crds.get("service", "shop", namespace=namespace)
    assert svc["spec"]["selector"]["permafrost.dev/revision"] == revision
    assert (
        condition({"status": status(crds, namespace, "shop")}, "PolicyCompliant")["status"]
        == "True"
    )  # type: ignore[index]


# --- the fixture corpus: `permafrost check` and the cluster agree -------------------------------

LIBRARY = ROOT / "deploy" / "policies"
ADMITTED_KINDS = ("GuardedRelease", "Deployment", "StatefulSet", "DaemonSet")


def corpus() -> list[tuple[pathlib.Path, dict[str, Any], dict[str, Any]]]:
    """(fixture, body, context) of every create-stage fixture the cluster admits by kind."""
    found = []
    for path in sorted(LIBRARY.glob("fixtures/*/*.yaml")):
        if path.name.endswith(".context.yaml"):
            continue
        body = yaml.safe_load(path.read_text())
        context_file = path.with_name(path.name.removesuffix(".yaml") + ".context.yaml")
        context = yaml.safe_load(context_file.read_text()) if context_file.exists() else {}
        policy_file = LIBRARY / f"{path.parent.name}.yaml"
        stage = context.get("stage") or yaml.safe_load(policy_file.read_text())["spec"]["stages"][0]
        if stage == "create" and body.get("kind") in ADMITTED_KINDS:
            found.append((path, body, context))
    return found


def test_the_fixture_corpus_gets_the_same_verdicts_from_permafrost_check_and_the_cluster(
    crds: Cluster, namespace: str, guarded_operator: Operator
) -> None:
    fixtures = corpus()
    assert len(fixtures) >= 10, "the corpus must exercise the cluster path"
    crds.kubectl("apply", "-f", str(LIBRARY))
    try:
        disagreements = []
        for path, body, context in fixtures:
            # NB: create-stage fixtures carry no namespace labels (the cluster's namespace has
            # only the enforce label); a fixture that needs some would need them here too.
            assert not (context.get("namespace") or {}).get("labels"), path
            args: list[str] = []
            cli = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "permafrost",
                    "check",
                    "--stage",
                    "create",
                    "-o",
                    "json",
                    "--namespace",
                    namespace,
                    *args,
                    str(path),
                ],
                capture_output=True,
                text=True,
                check=False,
                env=crds.env,
            )
            assert cli.returncode in (0, 1), cli.stderr
            report = json.loads(cli.stdout)
            allowed = report["violations"] == 0
            warnings = [
                f"{r['policy']}/{r['rule']}"
                for i in report["inputs"]
                for r in i["results"]
                if r["outcome"] != "Pass" and r["enforcement"] == "Warn"
            ]

            proc = crds.kubectl(
                "create",
                "--dry-run=server",
                "-f",
                "-",
                namespace=namespace,
                stdin=to_yaml(_strip(body)),
                check=False,
            )
            if (proc.returncode == 0) != allowed:
                disagreements.append(
                    f"{path.relative_to(LIBRARY)}: check says "
                    f"{'allowed' if allowed else 'denied'}, the cluster "
                    f"{'allowed' if proc.returncode == 0 else 'denied'}: "
                    f"{proc.stderr.strip()[:300]}"
                )
            elif allowed:
                missing = [w for w in warnings if w not in proc.stderr]
                if missing:
                    disagreements.append(
                        f"{path.relative_to(LIBRARY)}: warnings {missing} "
                        "missing from the admission response"
                    )
        assert disagreements == []
    finally:
        crds.kubectl("delete", "-f", str(LIBRARY), "--ignore-not-found", check=False)


def _strip(body: dict[str, Any]) -> dict[str, Any]:
    """The manifest without a namespace of its own (the test's namespace is used)."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "namespace"}
    return {**body, "metadata": meta}
