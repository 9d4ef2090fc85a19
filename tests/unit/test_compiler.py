"""GuardrailPolicies compiled into ValidatingAdmissionPolicies (``policies/compiler.py``)."""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

import cel
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from permafrost import models
from permafrost.policies import compiler, policy, store

ROOT = pathlib.Path(__file__).resolve().parents[2]
LIBRARY = {
    doc["metadata"]["name"]: doc
    for path in sorted((ROOT / "deploy" / "policies").glob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
    if doc and doc.get("kind") == models.POLICY_KIND
}
CREATE_STAGE = sorted(n for n, d in LIBRARY.items() if "create" in d["spec"]["stages"])
UID = "0f1e2d3c-0000-4000-8000-000000000001"
NOW = datetime.datetime(2026, 6, 1, 12, tzinfo=datetime.UTC)


def spec(**fields: Any) -> models.GuardrailPolicySpec:
    fields.setdefault("stages", ["create"])
    fields.setdefault("rules", [{"name": "r", "expression": "true"}])
    return models.GuardrailPolicySpec.model_validate(fields)


def compiled(name: str = "p", **fields: Any) -> compiler.Compiled:
    outcome = compiler.compile_policy(name, spec(**fields), uid=UID)
    assert isinstance(outcome, compiler.Compiled), outcome
    return outcome


def not_compiled(**fields: Any) -> compiler.NotCompiled:
    outcome = compiler.compile_policy("p", spec(**fields), uid=UID)
    assert isinstance(outcome, compiler.NotCompiled), outcome
    return outcome


def run(expression: str, variables: dict[str, Any]) -> Any:
    """Evaluate CEL with Permafrost's engine (the same engine, to compare translations)."""
    program = policy._compile("t", "t", "expression", expression)
    return program.execute(policy._prepared(variables))


# --- the library ---------------------------------------------------------------------------


def test_every_create_stage_policy_of_the_library_compiles() -> None:
    assert CREATE_STAGE  # NB: the library has create-stage policies to compile
    for name in CREATE_STAGE:
        body = LIBRARY[name]
        outcome = compiler.compile_policy(
            name, models.GuardrailPolicySpec.model_validate(body["spec"]), uid=UID
        )
        assert isinstance(outcome, compiler.Compiled), (name, outcome)
        assert len(outcome.policy["spec"]["validations"]) == len(body["spec"]["rules"])


def test_promote_only_policies_have_nothing_to_compile() -> None:
    for name, body in LIBRARY.items():
        if "create" in body["spec"]["stages"]:
            continue
        outcome = compiler.compile_policy(
            name, models.GuardrailPolicySpec.model_validate(body["spec"]), uid=UID
        )
        assert isinstance(outcome, compiler.NotCompiled), name
        assert outcome.reason == compiler.NO_CREATE_STAGE


# --- names, owner, modes, kinds --------------------------------------------------------------


EXEMPT = ["system:serviceaccount:permafrost-system:permafrost"]
EXCLUDED = ["kube-system", "permafrost-system"]


def bundled(enforcement: str, *members: compiler.Compiled) -> compiler.Compiled:
    out = compiler.bundle(
        enforcement,
        [m.policy for m in members],
        exempt_users=EXEMPT,
        excluded_namespaces=EXCLUDED,
    )
    assert out is not None
    return out


def owner(name: str, *, controller: bool) -> dict[str, Any]:
    return {
        "apiVersion": "permafrost.dev/v1alpha1",
        "kind": "GuardrailPolicy",
        "name": name,
        "uid": UID,
        "controller": controller,
    }


def test_a_policy_compiles_alone_to_a_policy_bound_to_nothing() -> None:
    out = compiled("team-images")
    assert out.name == "permafrost-policy-team-images"
    assert out.bindings == ()
    meta = out.policy["metadata"]
    assert meta["labels"] == {
        "app.kubernetes.io/managed-by": "permafrost",
        compiler.LABEL_POLICY: "team-images",
        compiler.LABEL_ENFORCEMENT: "Enforce",
    }
    assert meta["ownerReferences"] == [owner("team-images", controller=True)]
    # NB: bound to nothing, never matched: the condition is compiled for its bundle.
    assert out.policy["spec"]["matchConditions"] == [
        {"name": "may-refuse", "expression": "!((true))"}
    ]


def test_a_bundle_holds_the_rules_of_every_policy_of_its_mode() -> None:
    a = compiled("a", rules=[{"name": "r", "expression": "true"}])
    b = compiled(
        "b", rules=[{"name": "s", "expression": "false"}, {"name": "t", "expression": "1 == 1"}]
    )
    out = bundled("Enforce", b, a)
    assert out.name == "permafrost-policies-enforce"
    assert [b["metadata"]["name"] for b in out.bindings] == [
        "permafrost-policies-enforce-releases",
        "permafrost-policies-enforce-workloads",
    ]
    assert all(b["spec"]["policyName"] == out.name for b in out.bindings)
    # In the order of the policies' names; each message names its policy and rule.
    assert [v["message"] for v in out.policy["spec"]["validations"]] == [
        "a/r: rule r of policy a is not satisfied",
        "b/s: rule s of policy b is not satisfied",
        "b/t: rule t of policy b is not satisfied",
    ]  # fmt: skip
    assert out.policy["spec"]["variables"] == a.policy["spec"]["variables"]
    # Matched if a rule of a policy may refuse, in the same order.
    assert out.policy["spec"]["matchConditions"][-1] == {
        "name": "may-refuse",
        "expression": "(!((true))) || (!((false) && (1 == 1)))",
    }
    for body in out.manifests():
        meta = body["metadata"]
        assert meta["labels"] == {
            "app.kubernetes.io/managed-by": "permafrost",
            compiler.LABEL_BUNDLE: "Enforce",
        }
        # NB: the garbage collector removes it with the last of its policies.
        assert meta["ownerReferences"] == [
            owner("a", controller=False), owner("b", controller=False)
        ]  # fmt: skip
    assert compiler.bundle("Warn", []) is None


@pytest.mark.parametrize(
    ("enforcement", "actions"),
    [("Enforce", ["Deny", "Audit"]), ("Warn", ["Warn", "Audit"]), ("Audit", ["Audit"])],
)
def test_modes_map_to_validation_actions(enforcement: str, actions: list[str]) -> None:
    member = compiled(enforcement=enforcement)
    assert member.policy["metadata"]["labels"][compiler.LABEL_ENFORCEMENT] == enforcement
    out = bundled(enforcement, member)
    assert out.name == f"permafrost-policies-{enforcement.lower()}"
    assert [b["spec"]["validationActions"] for b in out.bindings] == [actions, actions]


def test_kinds_choose_the_bindings_and_guard_the_rules() -> None:
    releases = compiled("rel", match={"kinds": ["GuardedRelease", "Pod"]})
    assert releases.policy["spec"]["matchConstraints"]["resourceRules"] == [compiler.RELEASES]
    out = bundled("Enforce", releases)
    assert [b["metadata"]["name"][-8:] for b in out.bindings] == ["releases"]
    [validation] = releases.policy["spec"]["validations"]
    assert validation["expression"] == '!((request.kind.kind in ["GuardedRelease"])) || (true)'
    workloads = compiled("wl", match={"kinds": ["StatefulSet", "Deployment"]})
    resources = {
        "apiGroups": ["apps"],
        "apiVersions": ["v1"],
        "operations": ["CREATE"],
        "resources": ["deployments", "statefulsets"],
    }
    assert workloads.policy["spec"]["matchConstraints"]["resourceRules"] == [resources]
    out = bundled("Enforce", workloads)
    assert [b["metadata"]["name"][-9:] for b in out.bindings] == ["workloads"]
    both = bundled("Enforce", workloads, releases, compiled("ds", match={"kinds": ["DaemonSet"]}))
    assert both.policy["spec"]["matchConstraints"]["resourceRules"] == [
        compiler.RELEASES,
        {**resources, "resources": ["daemonsets", "deployments", "statefulsets"]},
    ]
    assert [b["spec"]["matchResources"]["resourceRules"] for b in both.bindings] == [
        [compiler.RELEASES],
        [{**resources, "resources": ["daemonsets", "deployments", "statefulsets"]}],
    ]
    # Every kind: no guard.
    [plain] = compiled().policy["spec"]["validations"]
    assert plain["expression"] == "true"
    assert not_compiled(match={"kinds": ["Pod"]}).reason == compiler.NOT_ADMITTED
    assert not_compiled(stages=["build", "promote"]).reason == compiler.NO_CREATE_STAGE


def verify_images() -> list[dict[str, Any]]:
    """A ``verifyImages`` entry with a fresh ECDSA P-256 public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return [{"name": "signed", "images": ["registry.example/**"], "keys": [key]}]


def test_a_policy_with_only_verify_images_has_nothing_to_compile() -> None:
    """Signatures are verified by the operator (the registry is not reachable from CEL); a
    policy with rules and verifyImages compiles its rules."""
    verify = verify_images()
    assert not_compiled(rules=[], verifyImages=verify).reason == compiler.NO_RULES
    both = compiled(verifyImages=verify)
    assert [v["expression"] for v in both.policy["spec"]["validations"]] == ["true"]


def test_where_the_webhook_judges_is_where_the_bindings_match() -> None:
    out = bundled(
        "Enforce", compiled(match={"namespaceSelector": {"matchLabels": {"team": "pay"}}})
    )
    releases, workloads = (b["spec"]["matchResources"] for b in out.bindings)
    excluded = {
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": ["kube-system", "permafrost-system"],
    }
    # NB: the policy's own namespace selector guards its rules (below), not the bindings.
    assert releases["namespaceSelector"] == {"matchExpressions": [excluded]}
    assert "objectSelector" not in releases
    assert workloads["namespaceSelector"] == {
        "matchExpressions": [
            excluded,
            {"key": "permafrost.dev/enforce", "operator": "In", "values": ["true"]},
        ],
    }
    assert workloads["objectSelector"] == {
        "matchExpressions": [{"key": "permafrost.dev/release", "operator": "DoesNotExist"}]
    }


def test_exempt_users_are_not_matched_by_the_bundle() -> None:
    """A match condition before the one that says a rule may refuse (one more condition costs
    the apiserver no more preparation of the request)."""
    out = bundled("Enforce", compiled(rules=[{"name": "r", "expression": "false"}]))
    exempt, may_refuse = out.policy["spec"]["matchConditions"]
    assert exempt == {
        "name": "not-exempt",
        "expression": "!(request.userInfo.username in "
        '["system:serviceaccount:permafrost-system:permafrost"])',
    }
    assert may_refuse["name"] == "may-refuse"
    for user, matched in ((EXEMPT[0], False), ("alice", True)):
        assert run(exempt["expression"], {"request": {"userInfo": {"username": user}}}) is matched
    assert [v["expression"] for v in out.policy["spec"]["validations"]] == ["false"]
    assert "permafrostExempt" not in {v["name"] for v in out.policy["spec"]["variables"]}


def test_without_a_match_condition_exempt_users_pass_every_rule_of_the_bundle() -> None:
    """A member whose rule reads the namespace has no condition: the bundle has none, and the
    exempt users are a variable every rule reads first, not a match condition (which would
    make the apiserver prepare the request once more)."""
    out = bundled(
        "Enforce",
        compiled("a", rules=[{"name": "r", "expression": "false"}]),
        compiled("b", rules=[{"name": "s", "expression": "namespaceObject.metadata.name != ''"}]),
    )
    assert "matchConditions" not in out.policy["spec"]
    assert out.policy["spec"]["variables"][-1] == {
        "name": "permafrostExempt",
        "expression": "request.userInfo.username in "
        '["system:serviceaccount:permafrost-system:permafrost"]',
    }
    validation, _ = out.policy["spec"]["validations"]
    assert validation["expression"] == "variables.permafrostExempt || (false)"
    for user, passes in ((EXEMPT[0], True), ("alice", False)):
        exempt = run(
            out.policy["spec"]["variables"][-1]["expression"],
            {"request": {"userInfo": {"username": user}}},
        )
        assert run(validation["expression"], {"variables": {"permafrostExempt": exempt}}) is passes
    bare = compiler.bundle(
        "Enforce", [compiled(rules=[{"name": "r", "expression": "false"}]).policy]
    )
    assert bare is not None
    assert [c["name"] for c in bare.policy["spec"]["matchConditions"]] == ["may-refuse"]
    assert [v["expression"] for v in bare.policy["spec"]["validations"]] == ["false"]


SELECTORS = [
    {"matchLabels": {"tier": "web"}},
    {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]}]},
    {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["web"]}]},
    {"matchExpressions": [{"key": "tier", "operator": "Exists"}]},
    {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]},
    {
        "matchLabels": {"app": "shop"},
        "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}],
    },
    {},
]
LABELS = [None, {}, {"tier": "web"}, {"tier": "db"}, {"tier": "api", "app": "shop"},
          {"app": "shop"}, {"app": "other", "tier": "web"}]  # fmt: skip


@pytest.mark.parametrize("selector", SELECTORS)
@pytest.mark.parametrize("which", ["objectSelector", "namespaceSelector"])
def test_the_selectors_guard_the_rules_as_permafrost_matches(
    selector: dict[str, Any], which: str
) -> None:
    """A rule that always fails, guarded by the policy's selector: it fails exactly where
    Permafrost would judge the policy."""
    out = compiled(match={which: selector}, rules=[{"name": "r", "expression": "false"}])
    [validation] = out.policy["spec"]["validations"]
    parsed = models.LabelSelector.model_validate(selector)
    for labels in LABELS:
        metadata = {"name": "x"} if labels is None else {"name": "x", "labels": labels}
        other = {"metadata": {"name": "y", "labels": {"tier": "zzz"}}}
        context = (
            {"object": {"metadata": metadata}, "namespaceObject": other}
            if which == "objectSelector"
            else {"object": other, "namespaceObject": {"metadata": metadata}}
        )
        got = run(validation["expression"], context)
        assert got is not policy.selects(parsed, labels or {}), (selector, labels)


# --- the rules -----------------------------------------------------------------------------


def test_variables_are_read_from_the_compiled_variables() -> None:
    expression = (
        "podSpec.containers.all(c, c.image != 'podSpec') && object.podSpec == 1 "
        "&& namespaceObject.metadata.name != '' && artifact == null // podSpec"
    )
    assert compiler.translate(expression, policy_name="p", rule="r") == (
        "variables.podSpec.containers.all(c, c.image != 'podSpec') && object.podSpec == 1 "
        "&& variables.namespaceObject.metadata.name != '' && variables.artifact == null // podSpec"
    )


@pytest.mark.parametrize(
    ("expression", "reason", "says"),
    [
        ("now > timestamp('2026-01-01T00:00:00Z')", compiler.READS_THE_CLOCK, "reads now"),
        ("request.operation == 'CREATE'", compiler.UNKNOWN_VARIABLE, "request"),
        ("params.x == 1", compiler.UNKNOWN_VARIABLE, "params"),
        ("team == 'x'", compiler.UNKNOWN_VARIABLE, "team"),
        ("object.metadata.name.lowerAscii() == 'x'", compiler.UNSUPPORTED_FUNCTION, "lowerAscii"),
        ("max(1, 2) == 2", compiler.UNSUPPORTED_FUNCTION, "max"),
        ("[1].all(podSpec, podSpec > 0)", compiler.SHADOWED_VARIABLE, "podSpec"),
    ],
)
def test_what_does_not_compile_says_why(expression: str, reason: str, says: str) -> None:
    outcome = not_compiled(rules=[{"name": "r", "expression": expression}])
    assert outcome.reason == reason
    assert says in outcome.message
    assert "rule 'r'" in outcome.message


def test_a_broken_policy_does_not_compile() -> None:
    outcome = not_compiled(rules=[{"name": "r", "expression": "podSpec.("}])
    assert outcome.reason == compiler.DOES_NOT_COMPILE


def test_messages_name_the_policy_and_rule_and_hold_no_line_breaks() -> None:
    out = compiled(
        "p",
        rules=[
            {"name": "a", "expression": "false", "message": "first line\nsecond line"},
            {"name": "b", "expression": "false", "messageExpression": "'image ' + podSpec.x"},
            {"name": "c", "expression": "false"},
        ],
    )
    a, b, c = out.policy["spec"]["validations"]
    assert a["message"] == "p/a: first line second line"
    assert b["messageExpression"] == "\"p/b: \" + ('image ' + variables.podSpec.x)"
    assert c["message"] == "p/c: rule c of policy p is not satisfied"
    assert {v["reason"] for v in (a, b, c)} == {"Forbidden"}


def _cluster_variables(obj: dict[str, Any], namespace: dict[str, Any]) -> dict[str, Any]:
    """What the compiled policy's variables hold for ``obj``, evaluated with the same CEL."""
    vap_env = {"object": obj, "namespaceObject": namespace}
    return {
        name: run(expression.replace("dyn(", "("), vap_env)
        for name, expression in compiler.VARIABLES.items()
    }


WORKLOAD = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "shop", "labels": {"tier": "web"}},
    "spec": {
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "securityContext": {"runAsNonRoot": True},
                "containers": [
                    {"name": "web", "image": "registry.example/web:1.0@sha256:" + "a" * 64},
                    {"name": "proxy", "image": "nginx:latest", "securityContext": {
                        "privileged": True, "runAsNonRoot": False}},
                ],
                "volumes": [{"name": "sock", "hostPath": {"path": "/run"}}],
            },
        }
    },
}  # fmt: skip
NAMESPACE = {
    "metadata": {
        "name": "shop",
        "labels": {"kubernetes.io/metadata.name": "shop", "permafrost.dev/enforce": "true"},
        "annotations": {"owner": "team"},
    }
}


@pytest.mark.parametrize("name", CREATE_STAGE)
@pytest.mark.parametrize("obj", [WORKLOAD, {**WORKLOAD, "spec": {"template": {"spec": {}}}}])
def test_translated_rules_give_permafrosts_verdicts(name: str, obj: dict[str, Any]) -> None:
    """Each library rule, translated, gives the same result and message over the compiled
    variables as the original over Permafrost's (the same engine: the translation alone)."""
    body = LIBRARY[name]
    out = compiler.compile_policy(
        name, models.GuardrailPolicySpec.model_validate(body["spec"]), uid=UID
    )
    assert isinstance(out, compiler.Compiled)
    ns = {"name": "shop", "labels": NAMESPACE["metadata"]["labels"]}
    original = policy.context(policy.Subject(object=obj, namespace=ns), now=NOW)
    translated = {"object": obj, "variables": _cluster_variables(obj, NAMESPACE)}
    for rule, validation in zip(
        body["spec"]["rules"], out.policy["spec"]["validations"], strict=True
    ):
        want = run(rule["expression"], original)
        assert run(validation["expression"], translated) == want, (name, rule["name"])
        if "messageExpression" in validation and want is False:
            message = run(validation["messageExpression"], translated)
            assert message == f"{name}/{rule['name']}: " + run(rule["messageExpression"], original)


# --- the bundle's match condition -------------------------------------------------------------

DIGEST = "@sha256:" + "a" * 64
IMAGES = st.sampled_from(
    ["web", "web:latest", f"registry.example/web:1.0{DIGEST}", f"docker.io/x/y{DIGEST}",
     f"registry.example.evil.io/web:1.0{DIGEST}", "registry.example/web:1.0"]
)  # fmt: skip
FLAGS = st.fixed_dictionaries(
    {},
    optional={k: st.booleans() for k in ("runAsNonRoot", "privileged", "readOnlyRootFilesystem")},
)


@st.composite
def containers(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(0, 2))):
        c: dict[str, Any] = {"name": f"c{i}", "image": draw(IMAGES)}
        if draw(st.booleans()):
            c["securityContext"] = draw(FLAGS)
        if draw(st.booleans()):
            c["resources"] = {"limits": draw(st.fixed_dictionaries(
                {}, optional={"cpu": st.just("1"), "memory": st.just("1Gi")}))}  # fmt: skip
        out.append(c)
    return out


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from(sorted(compiler.ADMITTED_KINDS)))
    pod: dict[str, Any] = {"containers": draw(containers())}
    if draw(st.booleans()):
        pod["initContainers"] = draw(containers())
    if draw(st.booleans()):
        pod["securityContext"] = draw(FLAGS)
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if draw(st.integers(0, 3)) == 0:
            pod[flag] = True
    if draw(st.integers(0, 3)) == 0:
        pod["volumes"] = [{"name": "h", "hostPath": {"path": "/run"}}]
    labels = draw(st.sampled_from(LABELS))
    metadata = {"name": "x"} if labels is None else {"name": "x", "labels": labels}
    return kind, {"metadata": metadata, "spec": {"template": {"spec": pod}}}


def outcome(expression: str, variables: dict[str, Any]) -> Any:
    """``expression``'s value with Permafrost's engine (any length), or ``"error"``."""
    try:
        program = cel.compile(expression.replace("dyn(", "("))
        return program.execute(policy._prepared(variables))
    except Exception:  # NB: an error is an outcome here
        return "error"


def matched_and_refused(
    out: compiler.Compiled, kind: str, obj: dict[str, Any], namespace: dict[str, Any]
) -> tuple[Any, bool]:
    """The bundle's may-refuse condition on a request, and whether one of its rules refuses it
    (fails or errors), both with Permafrost's engine."""
    request = {"kind": {"kind": kind}, "userInfo": {"username": "alice"}}
    condition = compiler._condition(out.policy, compiler.MAY_REFUSE)
    assert condition is not None
    matched = outcome(condition, {"object": obj, "request": request})
    variables = _cluster_variables(obj, namespace)
    refused = any(
        outcome(v["expression"], {"object": obj, "request": request, "variables": variables})
        is not True
        for v in out.policy["spec"]["validations"]
    )
    return matched, refused


LIBRARY_BUNDLES = {
    mode: bundled(mode, *members)
    for mode in ("Enforce", "Warn")
    if (
        members := [
            c
            for n in CREATE_STAGE
            if LIBRARY[n]["spec"]["enforcement"] == mode
            and isinstance(
                c := compiler.compile_policy(
                    n, models.GuardrailPolicySpec.model_validate(LIBRARY[n]["spec"]), uid=UID
                ),
                compiler.Compiled,
            )
        ]
    )
}


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(request=requests())
def test_a_library_bundle_is_matched_exactly_when_one_of_its_rules_refuses(
    request: tuple[str, dict[str, Any]],
) -> None:
    """The library's policies read no namespace: the condition is exact. Where a rule errors,
    the condition errors or holds (the request fails either way)."""
    kind, obj = request
    assert set(LIBRARY_BUNDLES) == {"Enforce", "Warn"}
    for out in LIBRARY_BUNDLES.values():
        matched, refused = matched_and_refused(out, kind, obj, NAMESPACE)
        assert matched in ((True, "error") if refused else (False,)), (out.name, kind, obj)


@pytest.mark.parametrize("selector", SELECTORS)
def test_an_object_selector_guards_the_condition_as_it_guards_the_rules(
    selector: dict[str, Any],
) -> None:
    out = bundled(
        "Enforce",
        compiled("a", match={"objectSelector": selector},
                 rules=[{"name": "r", "expression": "podSpec.hostNetwork != true"}]),
        compiled("b", match={"kinds": ["StatefulSet"]},
                 rules=[{"name": "s", "expression": "!has(podSpec.hostPID)"}]),
    )  # fmt: skip
    for kind in ("Deployment", "StatefulSet"):
        for host in ({}, {"hostNetwork": True}, {"hostNetwork": False}, {"hostPID": True}):
            for labels in LABELS:
                meta = {"name": "x"} if labels is None else {"name": "x", "labels": labels}
                obj = {"metadata": meta, "spec": {"template": {"spec": host}}}
                matched, refused = matched_and_refused(out, kind, obj, NAMESPACE)
                assert matched in ((True, "error") if refused else (False,)), (kind, host, labels)


def test_no_condition_where_the_namespace_matters_or_comprehensions_nest() -> None:
    for expression in (
        "namespaceObject.metadata.name != 'x'",
        "podSpec.containers.all(c, podSpec.volumes.all(v, v.name != c.name))",
    ):
        out = compiled(
            rules=[{"name": "r", "expression": "true"}, {"name": "s", "expression": expression}]
        )
        assert "matchConditions" not in out.policy["spec"], expression
    selected = compiled(match={"namespaceSelector": {"matchLabels": {"tier": "web"}}})
    assert "matchConditions" not in selected.policy["spec"]
    nested_in_one = compiled(rules=[{"name": "r", "expression": "podSpec.containers.all(c, true)"}])
    assert compiler._condition(nested_in_one.policy, compiler.MAY_REFUSE) is not None


# --- status --------------------------------------------------------------------------------


def test_status_says_where_the_policy_is_enforced() -> None:
    out = compiled("p")
    status = compiler.status(outcome=out, generation=3, previous=None, now=NOW)
    assert status["enforcedBy"] == "apiserver"
    assert status["admissionPolicy"] == "permafrost-policies-enforce"
    assert status["observedGeneration"] == 3
    [condition] = status["conditions"]
    assert condition["type"] == "Compiled"
    assert condition["status"] == "True"
    assert condition["reason"] == compiler.COMPILED
    assert condition["observedGeneration"] == 3
    body = {"metadata": {"generation": 3}, "status": status}
    assert compiler.enforced_in_apiserver(body)
    assert not compiler.enforced_in_apiserver({**body, "metadata": {"generation": 4}})
    assert compiler.same_status(status, status)
    later = compiler.status(outcome=out, generation=3, previous=status, now=NOW.replace(hour=13))
    assert later == status  # NB: no flip, no new transition time: nothing to write

    refused = compiler.NotCompiled(compiler.READS_THE_CLOCK, "it reads now")
    after = compiler.status(outcome=refused, generation=4, previous=status, now=NOW)
    assert after["enforcedBy"] == "webhook"
    assert after["admissionPolicy"] is None
    assert after["conditions"][0]["status"] == "False"
    assert after["conditions"][0]["reason"] == "ReadsTheClock"
    assert not compiler.enforced_in_apiserver({"metadata": {"generation": 4}, "status": after})
    assert not compiler.same_status(status, after)
    promote = compiler.NotCompiled(compiler.NO_CREATE_STAGE, "none")
    assert (
        compiler.status(outcome=promote, generation=1, previous=None, now=NOW)["enforcedBy"] is None
    )


def test_type_warnings_are_read_only_for_the_current_generation() -> None:
    vap = {"metadata": {"generation": 2}, "status": {"observedGeneration": 1, "typeChecking": {}}}
    assert compiler.type_warnings(None) is None
    assert compiler.type_warnings(vap) is None
    vap["status"] = {"observedGeneration": 2, "typeChecking": {}}
    assert compiler.type_warnings(vap) == []
    vap["status"]["typeChecking"] = {
        "expressionWarnings": [{"fieldRef": "spec.validations[0].expression", "warning": "no"}]
    }
    assert compiler.type_warnings(vap) == ["spec.validations[0].expression: no"]


def test_the_webhook_leaves_policies_the_apiserver_judges() -> None:
    policies = store.Store()
    for name in ("a", "b"):
        assert policies.put_policy(name, spec().to_json()) is None
    policies.enforced_in_apiserver("a", True)
    assert [p.name for p in policies.admission_policies()] == ["b"]
    assert [p.name for p in policies.policies()] == ["a", "b"]  # NB: the operator judges all
    policies.enforced_in_apiserver("a", False)
    assert [p.name for p in policies.admission_policies()] == ["a", "b"]
    policies.enforced_in_apiserver("b", True)
    policies.forget_policy("b")
    assert policies.in_apiserver == frozenset()


WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet"})


def test_the_webhook_is_sent_the_creations_of_the_kinds_its_own_policies_may_match() -> None:
    policies = store.Store()
    assert policies.webhook_kinds(WORKLOAD_KINDS) == frozenset()
    policies.put_policy("any", spec().to_json())
    policies.put_policy("sts", spec(match={"kinds": ["StatefulSet", "GuardedRelease"]}).to_json())
    policies.put_policy("later", spec(stages=["promote"]).to_json())
    verify = verify_images()
    assert policies.put_policy("signed", spec(rules=[], verifyImages=verify).to_json()) is None
    assert policies.webhook_kinds(WORKLOAD_KINDS) == WORKLOAD_KINDS
    policies.enforced_in_apiserver("any", True)
    assert policies.webhook_kinds(WORKLOAD_KINDS) == {"StatefulSet"}
    policies.enforced_in_apiserver("sts", True)
    # Neither a promote-stage policy nor one with signatures alone is judged at admission.
    assert policies.webhook_kinds(WORKLOAD_KINDS) == frozenset()
    # A broken policy fails closed: every kind.
    assert policies.put_policy("broken", {"stages": ["create"], "rules": "no"}) is not None
    assert policies.webhook_kinds(WORKLOAD_KINDS) == WORKLOAD_KINDS
    policies.forget_policy("broken")
    policies.enforced_in_apiserver("sts", False)  # edited: the webhook judges it at once
    assert policies.webhook_kinds(WORKLOAD_KINDS) == {"StatefulSet"}
