"""Create-stage GuardrailPolicies compiled into ValidatingAdmissionPolicies. Pure.

The admission webhook judges a create-stage policy on two kinds of request (see
``guards/webhooks.py``): a GuardedRelease created or changed in any namespace Permafrost guards,
and a Deployment, StatefulSet or DaemonSet created in an enforced namespace
(``permafrost.dev/enforce=true``) that Permafrost does not manage. :func:`compile_policy` turns a
policy into a ValidatingAdmissionPolicy of its own (``permafrost-policy-<name>``, bound to
nothing: the apiserver type-checks it), or says precisely why it cannot (:class:`NotCompiled`):
the webhook then keeps judging it. :func:`bundle` then merges the policies of one mode
(Enforce, Warn, Audit) that type-checked clean into one bound ValidatingAdmissionPolicy
(``permafrost-policies-<mode>``), each rule guarded by its policy's match, with one binding per
kind of request: the apiserver prepares its variables and converts the object once per mode,
not once per policy (what each policy costs a request on its own, whatever its rules). A
bundle's match condition (:func:`_may_refuse`, joined) lets through to its validations only a
request one of its rules refuses: a clean one is prepared once, not three times.

The rules keep their CEL. What differs between the two engines is bridged here:

- ``podSpec`` and ``namespaceObject`` become VAP ``variables`` computed as Permafrost computes
  them (the pod template's spec; the namespace's name and labels only);
- ``oldObject``, ``stable`` and ``artifact`` are ``null`` whenever Permafrost judges a request
  at admission, and become ``null`` variables (``dyn``, so that rules reading them still
  type-check);
- ``now`` has no counterpart (the apiserver's CEL reads no clock): a rule reading it does not
  compile;
- only functions known to behave alike in both engines are let through
  (:data:`FUNCTIONS`); any other one, or a variable Permafrost does not declare (``request``,
  ``params``...), keeps the policy on the webhook.

The apiserver type-checks what is compiled; the shell reads its warnings back
(:func:`type_warnings`) and keeps a policy with warnings on the webhook too.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from permafrost import models
from permafrost.policies import policy
from permafrost.releases import conditions

PREFIX = "permafrost-policy-"
BUNDLE_PREFIX = "permafrost-policies-"
LABEL_POLICY = "permafrost.dev/guardrail-policy"
LABEL_ENFORCEMENT = "permafrost.dev/enforcement"
LABEL_BUNDLE = "permafrost.dev/policy-bundle"
API = "admissionregistration.k8s.io/v1"
CONDITION_COMPILED = "Compiled"
ENFORCED_BY_APISERVER = "apiserver"
ENFORCED_BY_WEBHOOK = "webhook"

# Reasons of the Compiled condition.
COMPILED = "CompiledToAdmissionPolicy"
NO_CREATE_STAGE = "NoCreateStage"
NOT_ADMITTED = "NoKindJudgedAtAdmission"
NO_RULES = "NoRulesToJudgeAtAdmission"
DOES_NOT_COMPILE = "PolicyDoesNotCompile"
READS_THE_CLOCK = "ReadsTheClock"
UNKNOWN_VARIABLE = "UnknownVariable"
UNSUPPORTED_FUNCTION = "UnsupportedFunction"
SHADOWED_VARIABLE = "ShadowedVariable"
TYPE_CHECK_WARNINGS = "TypeCheckWarnings"
REJECTED_BY_APISERVER = "RejectedByApiserver"
APPLY_FAILED = "ApplyFailed"
COMPILATION_DISABLED = "CompilationDisabled"

# The kinds the webhook asks create-stage policies about, and how the apiserver names them.
RELEASES: dict[str, Any] = {
    "apiGroups": [models.GROUP],
    "apiVersions": [models.VERSION],
    "operations": ["CREATE", "UPDATE"],
    "resources": [models.PLURAL],
}
WORKLOAD_RESOURCES = {"Deployment": "deployments", "StatefulSet": "statefulsets",
                      "DaemonSet": "daemonsets"}  # fmt: skip
ADMITTED_KINDS = frozenset({models.KIND, *WORKLOAD_RESOURCES})

# Functions and macros that both engines have, with the same meaning (global or member).
FUNCTIONS = frozenset(
    {
        "has", "size", "matches", "startsWith", "endsWith", "contains",
        "all", "exists", "exists_one", "map", "filter",
        "string", "int", "uint", "double", "bytes", "type", "dyn",
        "timestamp", "duration",
    }
)  # fmt: skip
# Identifiers that are words of CEL, or type names usable as values (``type(x) == string``).
_WORDS = frozenset(
    {
        "true", "false", "null", "in",
        "string", "int", "uint", "double", "bool", "bytes", "list", "map", "type",
        "null_type", "dyn",
    }
)  # fmt: skip
# Variables of the apiserver's CEL that Permafrost's engine does not declare: a rule reading
# one errors in Permafrost (and so fails) but would run in the apiserver.
_APISERVER_ONLY = frozenset({"request", "params", "authorizer", "variables"})
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})

# The bundles' own variable: the request is made by an exempt user (the operator).
EXEMPT = "permafrostExempt"
# The match conditions of a bundle: the request is not made by an exempt user, and some rule
# may refuse it (each policy's own ValidatingAdmissionPolicy carries its part of the latter).
NOT_EXEMPT = "not-exempt"
MAY_REFUSE = "may-refuse"

# Permafrost's variables as the compiled policy declares them (``variables.<name>``); object
# is the apiserver's own. NB: dyn() keeps the rules as untyped as Permafrost's engine runs
# them: a field a typed schema lacks is a runtime error (a failed rule) in both.
VARIABLES: dict[str, str] = {
    "podSpec": "has(object.spec) && has(object.spec.template) && has(object.spec.template.spec)"
    " ? dyn(object.spec.template.spec) : dyn({})",
    # NB: the apiserver's CEL wants the values of a map literal of one type: both are dyn.
    "namespaceObject": "dyn({'metadata': {'name': dyn(namespaceObject.metadata.name), 'labels': "
    "(has(namespaceObject.metadata.labels) ? dyn(namespaceObject.metadata.labels) : dyn({}))}})",
    # NB: at admission Permafrost judges the object as created: no previous version, no stable
    # revision, no artifact.
    "oldObject": "dyn(null)",
    "stable": "dyn(null)",
    "artifact": "dyn(null)",
}

# How the rules read Permafrost's variables: in validations, from the compiled variables; in a
# match condition, written out (the apiserver declares no ``variables`` there, and gives it no
# namespace: a rule reading ``namespaceObject`` has no such form).
_AS_VARIABLES = {name: f"variables.{name}" for name in VARIABLES}
_WRITTEN_OUT = {
    name: f"({expression})" for name, expression in VARIABLES.items() if name != "namespaceObject"
}
_READS_THE_NAMESPACE = "ReadsTheNamespace"

_LEXEME = re.compile(
    r"(?P<comment>//[^\n]*)"
    r"|(?P<string>[bB]?[rR]?[bB]?(?:'{3}(?:.|\n)*?'{3}|\"{3}(?:.|\n)*?\"{3}"
    r"|'(?:\\.|[^'\\\n])*'|\"(?:\\.|[^\"\\\n])*\"))"
    r"|(?P<number>0[xX][0-9a-fA-F]+[uU]?|[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?[uU]?)"
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<space>\s+)"
    r"|(?P<other>.)",
    re.DOTALL,
)


class NotCompilable(ValueError):
    """A rule the apiserver's CEL cannot run as Permafrost's engine does; ``reason`` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def translate(
    expression: str,
    *,
    policy_name: str,
    rule: str,
    variables: Mapping[str, str] = _AS_VARIABLES,
) -> str:
    """The expression for the apiserver: each of Permafrost's variables replaced by what
    ``variables`` maps it to (by default, read from ``variables.``).

    Raises :class:`NotCompilable` for a rule that reads the clock (``now``), a variable only the
    apiserver has, a function not in :data:`FUNCTIONS`, or a comprehension variable named like
    one of Permafrost's variables; and for one of Permafrost's variables ``variables`` lacks.
    """
    where = f"policy {policy_name!r}, rule {rule!r}"
    lexemes = [(m.lastgroup or "", m.group()) for m in _LEXEME.finditer(expression)]
    significant = [i for i, (kind, _) in enumerate(lexemes) if kind not in ("space", "comment")]
    bound: set[str] = set()
    for pos, i in enumerate(significant[:-3]):
        # `.all(x, ...)`: x is bound inside the macro.
        kind, text = lexemes[i]
        if (
            text == "."
            and lexemes[significant[pos + 1]][1] in _MACROS
            and (
                lexemes[significant[pos + 2]][1] == "("
                and lexemes[significant[pos + 3]][0] == "ident"
            )
        ):
            bound.add(lexemes[significant[pos + 3]][1])
    shadowed = sorted(bound & (set(VARIABLES) | {"object", "now"}))
    if shadowed:
        raise NotCompilable(
            SHADOWED_VARIABLE,
            f"{where}: a comprehension binds {shadowed[0]!r}, a name of Permafrost's variables "
            "(rename it)",
        )
    out = [text for _, text in lexemes]
    for pos, i in enumerate(significant):
        kind, text = lexemes[i]
        if kind != "ident":
            continue
        before = lexemes[significant[pos - 1]][1] if pos else ""
        after = lexemes[significant[pos + 1]][1] if pos + 1 < len(significant) else ""
        if after == "(":
            if text not in FUNCTIONS:
                raise NotCompilable(
                    UNSUPPORTED_FUNCTION,
                    f"{where}: the function {text}() is not known to behave the same in the "
                    "apiserver's CEL",
                )
            continue
        if before == "." or text in _WORDS or text in bound or text == "object":
            continue
        if text == "now":
            raise NotCompilable(
                READS_THE_CLOCK,
                f"{where}: it reads now, and the apiserver's CEL has no clock",
            )
        if text in VARIABLES:
            if text not in variables:
                raise NotCompilable(
                    _READS_THE_NAMESPACE,
                    f"{where}: it reads {text}, which a match condition is not given",
                )
            out[i] = variables[text]
            continue
        if text in _APISERVER_ONLY:
            raise NotCompilable(
                UNKNOWN_VARIABLE,
                f"{where}: {text} is a variable of the apiserver's CEL that Permafrost's engine "
                "does not have (the rule errors there)",
            )
        raise NotCompilable(
            UNKNOWN_VARIABLE, f"{where}: {text} is not a variable Permafrost's engine declares"
        )
    return "".join(out)


@dataclasses.dataclass(frozen=True)
class Compiled:
    """The objects that enforce a policy in the apiserver: the policy first, then bindings."""

    policy: dict[str, Any]
    bindings: tuple[dict[str, Any], ...]

    @property
    def name(self) -> str:
        return str(self.policy["metadata"]["name"])

    def manifests(self) -> list[dict[str, Any]]:
        return [self.policy, *self.bindings]


@dataclasses.dataclass(frozen=True)
class NotCompiled:
    """Why a policy stays on the webhook (or, without a create stage, is not at admission)."""

    reason: str
    message: str


def policy_name(name: str) -> str:
    """The ValidatingAdmissionPolicy compiled from the GuardrailPolicy ``name``."""
    return f"{PREFIX}{name}"


def binding_names(name: str) -> tuple[str, str]:
    """The bindings a ValidatingAdmissionPolicy ``name`` (a policy's own, as earlier versions
    bound it, or a bundle) may have: (GuardedReleases, workloads)."""
    return f"{name}-releases", f"{name}-workloads"


def bundle_name(enforcement: str) -> str:
    """The bound ValidatingAdmissionPolicy that judges the compiled policies of a mode."""
    return f"{BUNDLE_PREFIX}{enforcement.lower()}"


ENFORCEMENTS = ("Enforce", "Warn", "Audit")


ACTIONS = {"Enforce": ["Deny", "Audit"], "Warn": ["Warn", "Audit"], "Audit": ["Audit"]}


def _labels_cel(selector: models.LabelSelector, *, of: str = "object") -> str:
    """CEL: ``selector`` matches the labels of ``of`` (``object``: the object as admitted, the
    new one only, as Permafrost matches it (an objectSelector would also match the old object
    of an update); ``namespaceObject``: its namespace)."""
    labels = f"(has({of}.metadata.labels) ? {of}.metadata.labels : {{}})"
    terms = []
    for key, value in sorted((selector.match_labels or {}).items()):
        k = json.dumps(key)
        terms.append(f"({k} in {labels} && {labels}[{k}] == {json.dumps(value)})")
    for req in selector.match_expressions or []:
        k = json.dumps(req.key)
        values = json.dumps(sorted(req.values or []))
        terms.append(
            {
                "In": f"({k} in {labels} && {labels}[{k}] in {values})",
                "NotIn": f"(!({k} in {labels}) || !({labels}[{k}] in {values}))",
                "Exists": f"({k} in {labels})",
                "DoesNotExist": f"!({k} in {labels})",
            }[req.operator]
        )
    return " && ".join(terms) or "true"


def _namespaces(
    selector: models.LabelSelector | None,
    *,
    excluded: Iterable[str],
    extra: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The policy's namespace selector, narrowed to where the webhook judges (ANDed)."""
    result: dict[str, Any] = selector.to_json() if selector is not None else {}
    expressions = [
        *result.get("matchExpressions", []),
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": sorted(excluded)},
        *extra,
    ]
    result["matchExpressions"] = expressions
    return result


def _message(text: str) -> str:
    # NB: a VAP's message may not hold line breaks.
    return " ".join(text.split())


def compile_policy(
    name: str,
    spec: models.GuardrailPolicySpec,
    *,
    uid: str,
) -> Compiled | NotCompiled:
    """The create-stage policy ``name``'s own ValidatingAdmissionPolicy (owned by the
    GuardrailPolicy of ``uid``; no bindings), or why there is none.

    Its rules judge what the webhook judges of the policy once :func:`bundle` binds them: each
    is guarded by the policy's match (kinds, namespace and object selectors), so that rules of
    policies that match differently can share one bound ValidatingAdmissionPolicy.
    """
    if "create" not in spec.stages:
        return NotCompiled(
            NO_CREATE_STAGE, "the policy has no create stage: nothing to judge at admission"
        )
    if not spec.rules:
        # NB: signatures need the registry: the operator verifies them before it creates a
        # revision, never at admission (neither the webhook nor a compiled policy).
        return NotCompiled(
            NO_RULES,
            "the policy has no rules, only verifyImages, which the operator checks before it "
            "creates a revision: nothing to judge at admission",
        )
    kinds = set(spec.match.kinds) if spec.match.kinds else set(ADMITTED_KINDS)
    admitted = kinds & ADMITTED_KINDS
    if not admitted:
        return NotCompiled(
            NOT_ADMITTED,
            f"its kinds ({', '.join(sorted(kinds))}) are not judged at admission "
            "(only GuardedRelease, Deployment, StatefulSet and DaemonSet are)",
        )
    try:
        compiled = policy.compile_policy(name, spec)
    except policy.PolicyError as exc:
        return NotCompiled(DOES_NOT_COMPILE, str(exc))
    validations = []
    try:
        for rule in compiled.rules:
            prefix = f"{name}/{rule.name}: "
            validation: dict[str, Any] = {
                "expression": translate(rule.expression, policy_name=name, rule=rule.name),
                "message": _message(prefix + rule.message),
                "reason": "Forbidden",
            }
            source = next(r for r in spec.rules if r.name == rule.name)
            if source.message_expression:
                translated = translate(source.message_expression, policy_name=name, rule=rule.name)
                validation["messageExpression"] = f"{json.dumps(prefix)} + ({translated})"
            validations.append(validation)
    except NotCompilable as exc:
        return NotCompiled(exc.reason, str(exc))
    guard = _guard(spec.match, admitted)
    if guard:
        for validation in validations:
            validation["expression"] = f"!({guard}) || ({validation['expression']})"
    may_refuse = _may_refuse(name, compiled.rules, spec.match, admitted)
    labels = {
        models.LABEL_MANAGED_BY: models.MANAGER,
        LABEL_POLICY: name,
        LABEL_ENFORCEMENT: spec.enforcement,
    }
    owner = {
        "apiVersion": models.API_VERSION,
        "kind": models.POLICY_KIND,
        "name": name,
        "uid": uid,
        "controller": True,
    }
    workloads = sorted(WORKLOAD_RESOURCES[k] for k in admitted if k in WORKLOAD_RESOURCES)
    body: dict[str, Any] = {
        "apiVersion": API,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": policy_name(name), "labels": labels, "ownerReferences": [owner]},
        "spec": {
            # NB: a rule that errors fails, as in Permafrost's engine; the binding's actions
            # then apply to it as to a failed rule.
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": _resource_rules(
                releases=models.KIND in admitted, workloads=workloads
            )},
            "variables": [
                {"name": variable, "expression": expression}
                for variable, expression in VARIABLES.items()
            ],
            "validations": validations,
        },
    }  # fmt: skip
    if may_refuse is not None:
        # NB: never evaluated here (the policy is bound to nothing), but compiled by the
        # apiserver like the rules; the bundle matches a request only if one of its members'
        # conditions holds.
        body["spec"]["matchConditions"] = [{"name": MAY_REFUSE, "expression": may_refuse}]
    return Compiled(policy=body, bindings=())


def _may_refuse(
    name: str,
    rules: Sequence[policy.Rule],
    match: models.PolicyMatch,
    admitted: set[str],
) -> str | None:
    """CEL for a match condition: some rule of the policy refuses the request, as its guarded
    validations say (true where one fails, an error where one errors and none fails, false
    where all pass); ``None`` where it cannot be exact.

    NB: a match condition is given no namespace: a policy with a namespace selector, or a rule
    that reads ``namespaceObject``, has none (a rule that errors in a namespace its policy does
    not select would otherwise fail requests there). Nor has a rule that nests comprehensions:
    its cost may grow with the square of the object's lists, and the condition is one
    expression under the apiserver's per-expression limit, where each rule has that limit to
    itself as a validation.
    """
    if match.namespace_selector is not None or any(rule.depth > 1 for rule in rules):
        return None
    guard = _guard(match, admitted)
    try:
        passes = [
            translate(rule.expression, policy_name=name, rule=rule.name, variables=_WRITTEN_OUT)
            for rule in rules
        ]
    except NotCompilable:
        return None
    terms = [f"(!({guard}) || ({p}))" if guard else f"({p})" for p in passes]
    return f"!({' && '.join(terms)})"


def _guard(match: models.PolicyMatch, admitted: set[str]) -> str:
    """CEL: the request is one ``match`` selects (kinds, namespace, object labels), as
    Permafrost matches a policy; empty if every request of a bundle's bindings is."""
    terms = []
    if admitted != ADMITTED_KINDS:
        terms.append(f"request.kind.kind in {json.dumps(sorted(admitted))}")
    if match.namespace_selector is not None:
        terms.append(_labels_cel(match.namespace_selector, of="namespaceObject"))
    if match.object_selector is not None:
        terms.append(_labels_cel(match.object_selector))
    return " && ".join(f"({t})" for t in terms)


def _resource_rules(*, releases: bool, workloads: Sequence[str]) -> list[dict[str, Any]]:
    rules = [dict(RELEASES)] if releases else []
    if workloads:
        rules.append(
            {
                "apiGroups": ["apps"],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": sorted(workloads),
            }
        )
    return rules


def bundle(
    enforcement: str,
    members: Sequence[Mapping[str, Any]],
    *,
    exempt_users: Iterable[str] = (),
    excluded_namespaces: Iterable[str] = ("kube-system",),
) -> Compiled | None:
    """The bound ValidatingAdmissionPolicy that judges, in the apiserver, every rule of
    ``members`` (policies' own ValidatingAdmissionPolicies of mode ``enforcement``, as
    :func:`compile_policy` made them and the apiserver type-checked them clean); ``None``
    without members.

    Owned by every member's GuardrailPolicy (the garbage collector removes it with the last
    one); ``exempt_users`` pass every rule, ``excluded_namespaces`` are never matched. NB: the
    variables are the same in every member, so each is computed once.
    """
    if not members:
        return None
    ordered = sorted(members, key=lambda m: str(m["metadata"]["labels"][LABEL_POLICY]))
    releases = False
    workloads: set[str] = set()
    for member in ordered:
        for rule in member["spec"]["matchConstraints"]["resourceRules"]:
            if rule["apiGroups"] == [models.GROUP]:
                releases = True
            else:
                workloads |= set(rule["resources"])
    name = bundle_name(enforcement)
    labels = {models.LABEL_MANAGED_BY: models.MANAGER, LABEL_BUNDLE: enforcement}
    owners = [
        {**ref, "controller": False}
        for member in ordered
        for ref in member["metadata"].get("ownerReferences") or []
    ]
    metadata = {"labels": labels, "ownerReferences": owners}
    rules = _resource_rules(releases=releases, workloads=sorted(workloads))
    body: dict[str, Any] = {
        "apiVersion": API,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, **metadata},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": rules},
            "variables": [
                {"name": variable, "expression": expression}
                for variable, expression in VARIABLES.items()
            ],
            "validations": [
                dict(validation)
                for member in ordered
                for validation in member["spec"]["validations"]
            ],
        },
    }
    exempt = sorted(set(exempt_users))
    may_refuse = [_condition(member, MAY_REFUSE) for member in ordered]
    if all(may_refuse):
        # NB: the apiserver prepares a request for CEL (the object converted, the namespace and
        # the request too) once for a policy's match conditions, and then once each for its
        # validations, their messages and its audit annotations, whatever they hold. A request
        # no rule refuses, the common case, is now prepared once, not three times; one that a
        # rule refuses, four times, with the same verdicts and messages. (A rule that errors
        # where no other one refuses errors in the condition too: the request fails alike, its
        # message quotes the condition; docs/policies.md.)
        conditions = [{"name": MAY_REFUSE, "expression": " || ".join(f"({e})" for e in may_refuse)}]
        if exempt:
            conditions.insert(
                0,
                {
                    "name": NOT_EXEMPT,
                    "expression": f"!(request.userInfo.username in {json.dumps(exempt)})",
                },
            )
        body["spec"]["matchConditions"] = conditions
    elif exempt:
        # NB: a variable every rule reads first, not a match condition: without one already,
        # a match condition would make the apiserver prepare the request for CEL once more
        # (the object converted again), and a variable is computed once with the rules.
        body["spec"]["variables"].append(
            {
                "name": EXEMPT,
                "expression": f"request.userInfo.username in {json.dumps(exempt)}",
            }
        )
        for validation in body["spec"]["validations"]:
            validation["expression"] = f"variables.{EXEMPT} || ({validation['expression']})"
    releases_binding, workloads_binding = binding_names(name)
    excluded = sorted(set(excluded_namespaces))

    def binding(
        binding_name: str, resource_rules: list[dict[str, Any]], resources: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "apiVersion": API,
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": binding_name, **metadata},
            "spec": {
                "policyName": name,
                "validationActions": list(ACTIONS[enforcement]),
                "matchResources": {"resourceRules": resource_rules, **resources},
            },
        }

    bindings = []
    if releases:
        bindings.append(
            binding(
                releases_binding,
                [dict(RELEASES)],
                {"namespaceSelector": _namespaces(None, excluded=excluded)},
            )
        )
    if workloads:
        bindings.append(
            binding(
                workloads_binding,
                [r for r in rules if r["apiGroups"] == ["apps"]],
                {
                    "namespaceSelector": _namespaces(
                        None,
                        excluded=excluded,
                        extra=[{"key": models.LABEL_ENFORCE, "operator": "In", "values": ["true"]}],
                    ),
                    # NB: what Permafrost manages goes to the managed webhook, which judges no
                    # policy (the operator judged the release before creating its revision).
                    "objectSelector": {
                        "matchExpressions": [
                            {"key": models.LABEL_RELEASE, "operator": "DoesNotExist"}
                        ]
                    },
                },
            )
        )
    return Compiled(policy=body, bindings=tuple(bindings))


def _condition(vap: Mapping[str, Any], name: str) -> str | None:
    """The expression of the match condition ``name`` of a ValidatingAdmissionPolicy, if any."""
    for condition in vap["spec"].get("matchConditions") or []:
        if condition.get("name") == name:
            return str(condition["expression"])
    return None


def clean(vap: Mapping[str, Any] | None) -> bool:
    """Whether a policy's own ValidatingAdmissionPolicy (as read back) may join its bundle: the
    apiserver type-checked its current generation without a warning."""
    return type_warnings(vap) == []


def type_warnings(vap: Mapping[str, Any] | None) -> list[str] | None:
    """The apiserver's type-checking warnings on a ValidatingAdmissionPolicy as read back;
    ``None`` while it has not checked the current generation yet."""
    if vap is None:
        return None
    status = vap.get("status") or {}
    generation = (vap.get("metadata") or {}).get("generation")
    if status.get("observedGeneration") != generation or "typeChecking" not in status:
        return None
    warnings = (status.get("typeChecking") or {}).get("expressionWarnings") or []
    return [f"{w.get('fieldRef')}: {w.get('warning')}" for w in warnings]


def fingerprint(
    name: str,
    spec: Mapping[str, Any],
    *,
    uid: str,
    exempt_users: Iterable[str],
    excluded_namespaces: Iterable[str],
) -> str:
    """What a compilation depends on, as a digest (the same one needs no second look)."""
    text = json.dumps(
        [name, dict(spec), uid, sorted(exempt_users), sorted(excluded_namespaces)],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


# --- status ------------------------------------------------------------------------------------


def status(
    *,
    outcome: Compiled | NotCompiled,
    generation: int | None,
    previous: Mapping[str, Any] | None,
    now: datetime.datetime,
) -> dict[str, Any]:
    """The GuardrailPolicy's ``status`` (Permafrost's fields) after a compilation.

    ``enforcedBy`` says what judges the policy's create stage at admission: ``apiserver`` (the
    bundle of its mode, named in ``admissionPolicy``) or ``webhook``; a policy without a create
    stage has none.
    """
    before = []
    for c in (previous or {}).get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == CONDITION_COMPILED:
            try:
                before.append(models.Condition.model_validate(c))
            except ValueError:
                continue  # NB: a condition someone else spoilt is written anew
    if isinstance(outcome, Compiled):
        condition = conditions.make(
            type_=CONDITION_COMPILED,
            status=models.ConditionStatus.TRUE,
            reason=COMPILED,
            message=f"enforced by the ValidatingAdmissionPolicy {enforced_by(outcome)}, with "
            f"the other compiled policies of its mode (type-checked as {outcome.name})",
            generation=generation,
            previous=before,
            now=now,
        )
        by: str | None = ENFORCED_BY_APISERVER
        admission_policy: str | None = enforced_by(outcome)
    else:
        condition = conditions.make(
            type_=CONDITION_COMPILED,
            status=models.ConditionStatus.FALSE,
            reason=outcome.reason,
            message=outcome.message,
            generation=generation,
            previous=before,
            now=now,
        )
        by = (
            None
            if outcome.reason in (NO_CREATE_STAGE, NOT_ADMITTED, NO_RULES)
            else (ENFORCED_BY_WEBHOOK)
        )
        admission_policy = None
    return {
        "observedGeneration": generation,
        "enforcedBy": by,
        "admissionPolicy": admission_policy,
        "conditions": [condition.to_json()],
    }


def enforced_by(compiled: Compiled) -> str:
    """The bundle (bound ValidatingAdmissionPolicy) that judges a policy compiled alone."""
    return bundle_name(str(compiled.policy["metadata"]["labels"][LABEL_ENFORCEMENT]))


def same_status(current: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> bool:
    """Whether writing ``wanted`` would change nothing of ``current`` (Permafrost's fields)."""
    return {k: (current or {}).get(k) for k in wanted} == dict(wanted)


def enforced_in_apiserver(body: Mapping[str, Any]) -> bool:
    """Whether a GuardrailPolicy (as read, with its status) is judged by its compiled
    ValidatingAdmissionPolicy at its current generation: the webhook may leave it alone."""
    status_ = body.get("status") or {}
    generation = (body.get("metadata") or {}).get("generation")
    compiled = next(
        (
            c
            for c in status_.get("conditions") or []
            if isinstance(c, Mapping) and c.get("type") == CONDITION_COMPILED
        ),
        None,
    )
    return (
        status_.get("enforcedBy") == ENFORCED_BY_APISERVER
        and status_.get("observedGeneration") == generation
        and generation is not None
        and compiled is not None
        and compiled.get("status") == "True"
        and compiled.get("observedGeneration") == generation
    )
