"""The policy engine (``permafrost.policies.policy``): compile, cache, match, evaluate, fail safe.

The engine is pure: every test builds specs and subjects in memory. The rules that matter most
are the fail-safe ones: a rule that errors, returns a non-boolean or is too expensive to run is
never a pass.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import pytest

from permafrost import models
from permafrost.policies import policy

NOW = datetime.datetime(2025, 6, 2, 9, 0, tzinfo=datetime.UTC)
IMAGE = "registry.example/shop/checkout:1.4.2@sha256:" + "a" * 64


def make_spec(
    *rules: str | dict[str, Any],
    stages: tuple[str, ...] = ("create",),
    enforcement: str = "Enforce",
    match: dict[str, Any] | None = None,
) -> models.GuardrailPolicySpec:
    """A spec from expressions (rule names r1, r2, …) or full rule dicts."""
    return models.GuardrailPolicySpec.model_validate(
        {
            "stages": list(stages),
            "enforcement": enforcement,
            "match": match or {},
            "rules": [
                r if isinstance(r, dict) else {"name": f"r{i}", "expression": r}
                for i, r in enumerate(rules, 1)
            ],
        }
    )


def make_policy(name: str = "p", *rules: str | dict[str, Any], **kw: Any) -> policy.Policy:
    return policy.compile_policy(name, make_spec(*rules, **kw))


def deployment(**labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "checkout", "namespace": "shop", "labels": labels},
        "spec": {
            "replicas": 3,
            "template": {
                "metadata": {"labels": {"app": "checkout"}},
                "spec": {"containers": [{"name": "web", "image": IMAGE}]},
            },
        },
    }


def run(
    *policies: policy.Policy,
    obj: dict[str, Any] | None = None,
    stage: models.Stage = "create",
    namespace: dict[str, Any] | None = None,
    budget: int = policy.DEFAULT_BUDGET,
    **subject: Any,
) -> policy.Verdict:
    return policy.evaluate(
        policies,
        stage=stage,
        subject=policy.Subject(object=obj or deployment(), namespace=namespace, **subject),
        now=NOW,
        budget=budget,
    )


def only(verdict: policy.Verdict) -> policy.RuleResult:
    [result] = verdict.results
    return result


# --- macro_depth -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "depth"),
    [
        ("true", 0),
        ("size(podSpec.containers) > 0 && has(object.spec)", 0),
        ("l.all(x, x > 0)", 1),
        ("l.exists_one(x, x > 0)", 1),
        ("l . all (x, x > 0)", 1),
        ("l.all(x, x > 0) && l.exists(y, y > 0) || l.map(z, z).size() > 0", 1),
        ("l.map(x, x * 2).filter(y, y > 2).all(z, z > 0)", 1),  # chained, not nested
        ("[l.map(x, x)].all(v, size(v) > 0)", 1),  # the target is outside the body
        ("l.all(x, m.exists(y, y == x))", 2),
        ("l.all(x, (x > 1) && [x].exists(y, m.map(z, z).size() > y))", 3),
        ("l.all(x, {'k': m.filter(y, y > x)}.k.size() > 0)", 2),
        ("l.map(a, l.map(b, l.map(c, l.map(d, a + b + c + d))))", 4),
        ("l.all(x, x > 0) && m.all(y, n.all(z, y == z))", 2),
    ],
)
def test_macro_depth_counts_nesting(expression: str, depth: int) -> None:
    assert policy.macro_depth(expression) == depth


@pytest.mark.parametrize(
    ("expression", "depth"),
    [
        ("'l.all(x, x)' == s", 0),
        ('"l.map(x, l.map(y, y))" + s', 0),
        ("'''l.all(\nx''' + s", 0),
        ('"""l.exists(\n""" + s', 0),
        ("'it\\'s .all(' + s", 0),  # an escaped quote does not end the string
        ('"a\'b" + l.all(x, m.exists(y, y))', 2),  # a quote inside the other kind of quotes
        ("l.all(x, x.matches('[.]all[(]')) && s.endsWith(').map(')", 1),
        ("b'.all(' == b", 0),
    ],
)
def test_macro_depth_ignores_macros_in_strings(expression: str, depth: int) -> None:
    assert policy.macro_depth(expression) == depth


def test_macro_depth_sees_through_comments() -> None:
    expression = "// don't stop\nl.map(a, l.map(b, l.map(c, l.map(d, a)))) // '"
    assert policy.macro_depth(expression) == 4


def test_macro_depth_knows_raw_strings() -> None:
    expression = "r'\\' == s && l.map(a, l.map(b, l.map(c, a))).size() > 0 && s != '\\''"
    assert policy.macro_depth(expression) == 3


# --- the cost budget ---------------------------------------------------------------------------

RUNAWAY = (
    "size(object.spec.items.map(a, object.spec.items.map(b, object.spec.items.map(c, "
    "object.spec.items.map(d, a + b + c + d))))) > 0"
)


def with_items(count: int) -> dict[str, Any]:
    obj = deployment()
    obj["spec"]["items"] = list(range(count))
    return obj


def test_cost_budget_stops_a_runaway_rule_fast() -> None:
    runaway = make_policy("p", RUNAWAY)
    assert runaway.rules[0].depth == 4
    started = time.perf_counter()
    verdict = run(runaway, obj=with_items(40))  # 40**4 = 2,560,000 > 100,000
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5
    result = only(verdict)
    assert result.outcome == "Error"
    assert "exceeds the cost budget" in result.message
    assert verdict.violations == (result,)
    assert not verdict.allowed
    assert "p/r1" in verdict.summary()


def test_cost_budget_runs_the_same_rule_on_a_small_input() -> None:
    assert only(run(make_policy("p", RUNAWAY), obj=with_items(8))).outcome == "Pass"


def test_cost_budget_is_a_parameter() -> None:
    rule = make_policy("p", "object.spec.items.all(a, object.spec.items.all(b, a + b >= 0))")
    assert only(run(rule, obj=with_items(30))).outcome == "Pass"  # 900
    assert only(run(rule, obj=with_items(30), budget=500)).outcome == "Error"


def test_an_oversized_collection_is_refused_even_without_comprehensions() -> None:
    result = only(run(make_policy("p", "size(object.spec.items) > 0"), obj=with_items(10_001)))
    assert result.outcome == "Error"
    assert "cost budget" in result.message


def test_cost_budget_counts_collections_built_by_the_expression() -> None:
    literal = "[" + ",".join(str(i) for i in range(30)) + "]"
    rule = make_policy("p", f"{literal}.all(a, {literal}.all(b, {literal}.all(c, true)))")
    # 30**3 = 27,000 steps against a budget of 10,000: the rule must not run.
    assert only(run(rule, budget=10_000)).outcome == "Error"


def test_a_comment_does_not_bypass_the_cost_budget() -> None:
    rule = make_policy(
        "p",
        "// don't worry, it is cheap\n"
        "size(object.spec.items.map(a, object.spec.items.map(b, object.spec.items.map(c, a))))"
        " > 0 && object.kind != 'Pod'",
    )
    # 20**3 = 8,000 steps against a budget of 1,000: the rule must not run.
    assert only(run(rule, obj=with_items(20), budget=1_000)).outcome == "Error"


# --- fail safe ---------------------------------------------------------------------------------


@pytest.mark.parametrize("expression", ["1", "'true'", "null", "[true]", "{'ok': true}", "1.0"])
def test_a_non_boolean_result_is_an_error(expression: str) -> None:
    verdict = run(make_policy("p", expression))
    result = only(verdict)
    assert result.outcome == "Error"
    assert "not a boolean" in result.message
    assert verdict.violations == (result,)


@pytest.mark.parametrize(
    "expression",
    [
        "object.spec.missing == 1",
        "!(object.spec.missing == 1)",
        "object.metadata.labels['absent'] == 'x'",
        "podSpec.containers[3].name == 'web'",
        "object.spec.replicas / 0 == 1",
        "int('three') == 3",
        "object.metadata.name.matches('(')",
        "object.spec.replicas == 'three' || object.spec.missing",
    ],
)
@pytest.mark.parametrize("enforcement", ["Enforce", "Warn", "Audit"])
def test_a_runtime_error_is_an_error_never_a_pass(expression: str, enforcement: str) -> None:
    verdict = run(make_policy("p", expression, enforcement=enforcement))
    result = only(verdict)
    assert result.outcome == "Error"
    assert result.message.startswith("evaluation error")
    bucket = {"Enforce": verdict.violations, "Warn": verdict.warnings, "Audit": verdict.audits}
    assert bucket[enforcement] == (result,)


def test_messages_of_passing_and_failing_rules() -> None:
    verdict = run(
        make_policy(
            "p",
            {"name": "passes", "expression": "true", "message": "never shown"},
            {"name": "static", "expression": "false", "message": "replicas must be odd"},
            {"name": "default", "expression": "false"},
            {
                "name": "dynamic",
                "expression": "object.spec.replicas < 3",
                "message": "too many replicas",
                "messageExpression": "'replicas ' + string(object.spec.replicas) + ' >= 3'",
            },
        )
    )
    assert [(r.rule, r.outcome, r.message) for r in verdict.results] == [
        ("passes", "Pass", ""),
        ("static", "Fail", "replicas must be odd"),
        ("default", "Fail", "rule default of policy p is not satisfied"),
        ("dynamic", "Fail", "replicas 3 >= 3"),
    ]


@pytest.mark.parametrize(
    "message_expression",
    ["object.spec.missing", "'replicas ' + object.spec.replicas", "42", "''", "null"],
)
def test_a_broken_message_expression_falls_back_to_the_static_message(
    message_expression: str,
) -> None:
    rule = {
        "name": "r",
        "expression": "false",
        "message": "static message",
        "messageExpression": message_expression,
    }
    result = only(run(make_policy("p", rule)))
    assert (result.outcome, result.message) == ("Fail", "static message")


def test_a_message_expression_is_not_evaluated_for_a_pass() -> None:
    rule = {"name": "r", "expression": "true", "messageExpression": "object.spec.missing"}
    assert only(run(make_policy("p", rule))).outcome == "Pass"


# --- compiling ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "what"),
    [
        ({"name": "bad-rule", "expression": "object.spec +"}, "expression"),
        ({"name": "bad-rule", "expression": "has(object)"}, "expression"),
        ({"name": "bad-rule", "expression": "'unterminated"}, "expression"),
        (
            {"name": "bad-rule", "expression": "true", "messageExpression": "'a' +"},
            "messageExpression",
        ),
    ],
)
def test_a_compile_error_names_policy_and_rule(rule: dict[str, Any], what: str) -> None:
    spec = make_spec({"name": "good", "expression": "true"}, rule)
    with pytest.raises(policy.PolicyError) as caught:
        policy.compile_policy("team-guard", spec)
    message = str(caught.value)
    assert "policy 'team-guard'" in message
    assert "rule 'bad-rule'" in message
    assert f"the {what} does not compile" in message


def test_duplicate_rule_names_are_refused() -> None:
    spec = make_spec(
        {"name": "same", "expression": "true"},
        {"name": "other", "expression": "true"},
        {"name": "same", "expression": "false"},
    )
    with pytest.raises(policy.PolicyError, match=r"policy 'p': duplicate rule names \['same'\]"):
        policy.compile_policy("p", spec)


def test_a_rule_can_read_the_namespace_as_namespace_object() -> None:
    rule = make_policy("p", "namespaceObject.metadata.labels['environment'] == 'production'")
    verdict = run(rule, namespace={"name": "shop", "labels": {"environment": "production"}})
    assert only(verdict).outcome == "Pass"


@pytest.mark.parametrize(
    ("expressions", "variables"),
    [
        pytest.param(("true",), set(), id="none"),
        pytest.param(("podSpec.containers.all(c, c.image != '')",), {"podSpec"}, id="one"),
        pytest.param(("has(object.spec)", "'at ' + string(now)"), {"object", "now"}, id="message"),
        pytest.param(("objects == oldObjects",), set(), id="longer-names-are-not-variables"),
        pytest.param(("'the stable one' != ''",), {"stable"}, id="strings-count-too"),
    ],
)
def test_a_rule_knows_which_variables_it_may_read(
    expressions: tuple[str, ...], variables: set[str]
) -> None:
    assert policy.referenced(*expressions) == variables


def test_rules_reading_different_variables_each_see_theirs_in_one_verdict() -> None:
    verdict = run(
        make_policy("a", "podSpec.containers[0].name == 'web'"),
        make_policy("b", "namespaceObject.metadata.name == 'shop'"),
        make_policy("c", {"name": "r", "expression": "false", "messageExpression": "object.kind"}),
        namespace={"name": "shop", "labels": {}},
    )
    assert [(r.policy, r.outcome, r.message) for r in verdict.results] == [
        ("a", "Pass", ""),
        ("b", "Pass", ""),
        ("c", "Fail", "Deployment"),
    ]


def test_parse_policies_reads_policies_and_skips_other_documents() -> None:
    documents = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
        {
            "apiVersion": models.API_VERSION,
            "kind": models.POLICY_KIND,
            "metadata": {"name": "pinned"},
            "spec": {"stages": ["create"], "rules": [{"name": "r", "expression": "true"}]},
        },
    ]
    [(name, spec)] = policy.parse_policies(documents)
    assert name == "pinned"
    assert spec.enforcement == "Enforce"
    assert spec.stages == ["create"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"stages": ["create"], "rules": []}, "policy 'p' is malformed"),
        ({"stages": [], "rules": [{"name": "r", "expression": "true"}]}, "malformed"),
        ({"stages": ["deploy"], "rules": [{"name": "r", "expression": "true"}]}, "malformed"),
        (
            {"stages": ["create"], "rules": [{"name": "Bad_Name", "expression": "true"}]},
            "malformed",
        ),
        (
            {"stages": ["create"], "rules": [{"name": "r", "expresion": "true"}]},
            "malformed",
        ),
        (
            {"stages": ["create"], "rules": [{"name": "r", "expression": "x" * 4097}]},
            "malformed",
        ),
    ],
)
def test_parse_policies_refuses_a_malformed_policy(spec: dict[str, Any], expected: str) -> None:
    documents = [{"kind": models.POLICY_KIND, "metadata": {"name": "p"}, "spec": spec}]
    with pytest.raises(policy.PolicyError, match=expected):
        policy.parse_policies(documents)


def test_parse_policies_names_an_unnamed_document_by_position() -> None:
    documents = [{"kind": "Service"}, {"kind": models.POLICY_KIND, "spec": {}}]
    with pytest.raises(policy.PolicyError, match="policy 'document 2' is malformed"):
        policy.parse_policies(documents)


# --- the Library cache -------------------------------------------------------------------------


def test_library_compiles_once_per_distinct_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = policy.compile_policy

    def counting(name: str, spec: models.GuardrailPolicySpec) -> policy.Policy:
        calls.append(name)
        return real(name, spec)

    monkeypatch.setattr(policy, "compile_policy", counting)
    library = policy.Library()
    first = library.get("p", make_spec("true"))
    again = library.put("p", make_spec("true"))  # an equal spec, a different object
    assert again is first
    assert calls == ["p"]

    changed = library.get("p", make_spec("false"))
    assert changed is not first
    assert changed.rules[0].expression == "false"
    assert calls == ["p", "p"]
    assert library.get("p", make_spec("false")) is changed
    assert calls == ["p", "p"]


def test_library_keeps_one_policy_per_name_sorted() -> None:
    library = policy.Library()
    for name in ["zeta", "alpha", "mid"]:
        library.put(name, make_spec("true"))
    library.put("alpha", make_spec("false"))
    assert [p.name for p in library.policies()] == ["alpha", "mid", "zeta"]
    assert library.policies()[0].rules[0].expression == "false"
    library.forget("mid")
    library.forget("never-there")
    assert [p.name for p in library.policies()] == ["alpha", "zeta"]


def test_library_refuses_a_broken_spec() -> None:
    library = policy.Library()
    with pytest.raises(policy.PolicyError, match="policy 'p'"):
        library.get("p", make_spec("1 +"))


# --- matching ----------------------------------------------------------------------------------


def test_a_policy_runs_only_at_its_stages() -> None:
    build_and_create = make_policy("p", "true", stages=("build", "create"))
    assert run(build_and_create, stage="create").results
    assert run(build_and_create, stage="build").results
    assert run(build_and_create, stage="promote").results == ()


def test_a_policy_runs_only_on_its_kinds() -> None:
    releases = make_policy("p", "true", match={"kinds": ["GuardedRelease", "StatefulSet"]})
    assert run(releases).results == ()
    release = {"apiVersion": models.API_VERSION, "kind": "GuardedRelease", "metadata": {}}
    assert run(releases, obj=release).results
    every_kind = make_policy("p", "true", match={"kinds": []})
    assert run(every_kind).results


IN_AB = {"matchExpressions": [{"key": "env", "operator": "In", "values": ["a", "b"]}]}
NOT_IN_A = {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["a"]}]}
EXISTS = {"matchExpressions": [{"key": "env", "operator": "Exists"}]}
DOES_NOT_EXIST = {"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}
WEB_IN_PROD = {  # matchLabels and every expression are ANDed
    "matchLabels": {"tier": "web"},
    "matchExpressions": [
        {"key": "env", "operator": "In", "values": ["prod"]},
        {"key": "legacy", "operator": "DoesNotExist"},
    ],
}


@pytest.mark.parametrize(
    ("selector", "labels", "selected"),
    [
        (None, {}, True),
        ({}, {"a": "1"}, True),
        ({"matchLabels": {"tier": "web"}}, {"tier": "web", "x": "y"}, True),
        ({"matchLabels": {"tier": "web"}}, {"tier": "db"}, False),
        ({"matchLabels": {"tier": "web"}}, {}, False),
        (IN_AB, {"env": "b"}, True),
        (IN_AB, {"env": "c"}, False),
        (IN_AB, {}, False),
        (NOT_IN_A, {"env": "b"}, True),
        (NOT_IN_A, {"env": "a"}, False),
        (NOT_IN_A, {}, True),  # Kubernetes: NotIn selects what lacks the key
        (EXISTS, {"env": ""}, True),
        (EXISTS, {"other": "x"}, False),
        (DOES_NOT_EXIST, {}, True),
        (DOES_NOT_EXIST, {"env": "a"}, False),
        (WEB_IN_PROD, {"tier": "web", "env": "prod"}, True),
        (WEB_IN_PROD, {"tier": "web", "env": "prod", "legacy": "true"}, False),
        (WEB_IN_PROD, {"tier": "web"}, False),
    ],
)
def test_object_and_namespace_selectors(
    selector: dict[str, Any] | None, labels: dict[str, str], selected: bool
) -> None:
    parsed = None if selector is None else models.LabelSelector.model_validate(selector)
    assert policy.selects(parsed, labels) is selected

    by_object = make_policy("p", "true", match={"objectSelector": selector})
    assert bool(run(by_object, obj=deployment(**labels)).results) is selected

    by_namespace = make_policy("p", "true", match={"namespaceSelector": selector})
    namespace = {"name": "shop", "labels": labels}
    assert bool(run(by_namespace, namespace=namespace).results) is selected


def test_an_unknown_namespace_has_no_labels() -> None:
    production = make_policy("p", "true", match={"namespaceSelector": {"matchLabels": {"e": "p"}}})
    assert run(production, namespace=None).results == ()
    unlabelled = make_policy(
        "p",
        "true",
        match={
            "namespaceSelector": {"matchExpressions": [{"key": "e", "operator": "DoesNotExist"}]}
        },
    )
    assert run(unlabelled, namespace=None).results


# --- verdicts ----------------------------------------------------------------------------------


def test_warn_and_audit_failures_do_not_deny() -> None:
    warn = make_policy("warn", "false", "object.spec.missing", enforcement="Warn")
    audit = make_policy("audit", "false", enforcement="Audit")
    verdict = run(warn, audit)
    assert verdict.allowed
    assert verdict.violations == ()
    assert verdict.summary() == ""
    assert [(r.policy, r.rule, r.outcome) for r in verdict.warnings] == [
        ("warn", "r1", "Fail"),
        ("warn", "r2", "Error"),
    ]
    assert [(r.policy, r.outcome) for r in verdict.audits] == [("audit", "Fail")]

    enforce = make_policy("enforce", "false")
    denied = run(warn, audit, enforce)
    assert not denied.allowed
    assert [r.policy for r in denied.violations] == ["enforce"]
    assert denied.summary() == "enforce/r1: rule r1 of policy enforce is not satisfied"


def test_verdict_order_is_deterministic() -> None:
    policies = [
        make_policy("charlie", {"name": "z", "expression": "false"}),
        make_policy(
            "alpha",
            {"name": "second", "expression": "true"},
            {"name": "first", "expression": "false"},
        ),
        make_policy("bravo", {"name": "only", "expression": "object.spec.missing"}),
    ]
    expected = [
        ("alpha", "second"),  # rules keep the order of the spec
        ("alpha", "first"),
        ("bravo", "only"),
        ("charlie", "z"),
    ]
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        verdict = run(*(policies[i] for i in order))
        assert [(r.policy, r.rule) for r in verdict.results] == expected
    assert run(*policies).results == run(*reversed(policies)).results


def test_results_serialise_to_json() -> None:
    result = only(run(make_policy("p", {"name": "r", "expression": "false", "message": "m"})))
    assert result.to_json() == {
        "policy": "p",
        "rule": "r",
        "enforcement": "Enforce",
        "outcome": "Fail",
        "message": "m",
    }


# --- what a rule sees --------------------------------------------------------------------------


def test_pod_spec_of_each_kind() -> None:
    spec = {"containers": [{"name": "web", "image": IMAGE}]}
    release = {"kind": "GuardedRelease", "spec": {"template": {"spec": spec}}}
    pod = {"kind": "Pod", "spec": spec}
    artifact = {"kind": models.ARTIFACT_KIND, "image": IMAGE, "metadata": {"name": "a"}}
    assert policy.pod_spec(release) == spec
    assert policy.pod_spec(deployment()) == deployment()["spec"]["template"]["spec"]
    assert policy.pod_spec(pod) == spec
    assert policy.pod_spec(artifact) == {}
    assert policy.pod_spec({"kind": "Deployment", "spec": {"template": {}}}) == {}


def test_the_variables_a_rule_sees() -> None:
    checks = [
        "object.kind == 'Deployment'",
        "podSpec.containers[0].name == 'web'",
        "oldObject == null",
        "stable.version == '1.4.1'",
        "artifact == null",
        "now == timestamp('2025-06-02T09:00:00Z')",
        "now > timestamp('2025-06-02T08:59:59Z') && now < timestamp('2025-06-02T09:00:01Z')",
    ]
    verdict = run(make_policy("p", *checks), stable={"version": "1.4.1"})
    assert [r.outcome for r in verdict.results] == ["Pass"] * len(checks)


def test_an_artifact_at_build() -> None:
    artifact = {
        "apiVersion": models.API_VERSION,
        "kind": models.ARTIFACT_KIND,
        "metadata": {"name": "checkout"},
        "image": IMAGE,
        "digest": "sha256:" + "a" * 64,
    }
    checks = ["artifact.image == object.image", "podSpec == {}", "stable == null"]
    rules = make_policy("p", *checks, stages=("build",))
    verdict = run(rules, obj=artifact, stage="build", artifact=artifact)
    assert [r.outcome for r in verdict.results] == ["Pass"] * len(checks)
