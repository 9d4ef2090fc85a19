"""Create-stage GuardrailPolicies compiled into ValidatingAdmissionPolicies. Pure.

The admission webhook judges a create-stage policy on two kinds of request (see
``guards/webhooks.py``): a GuardedRelease created or changed in any namespace Permafrost guards,
and a Deployment, StatefulSet or DaemonSet created in an enforced namespace
(``permafrost.dev/enforce=true``) that Permafrost does not manage. :func:`compile_policy` turns a
policy into a ValidatingAdmissionPolicy that judges exactly those requests inside the
apiserver, with one binding per kind of request, or says precisely why it cannot
(:class:`NotCompiled`): the webhook then keeps judging it.

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
LABEL_POLICY = "permafrost.dev/guardrail-policy"
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


def translate(expression: str, *, policy_name: str, rule: str) -> str:
    """The expression for the apiserver: Permafrost's variables read from ``variables.``.

    Raises :class:`NotCompilable` for a rule that reads the clock (``now``), a variable only the
    apiserver has, a function not in :data:`FUNCTIONS`, or a comprehension variable named like
    one of Permafrost's variables.
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
            out[i] = f"variables.{text}"
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
    """The bindings a compiled policy may have: (GuardedReleases, workloads)."""
    return f"{policy_name(name)}-releases", f"{policy_name(name)}-workloads"


ACTIONS = {"Enforce": ["Deny", "Audit"], "Warn": ["Warn", "Audit"], "Audit": ["Audit"]}


def _labels_cel(selector: models.LabelSelector) -> str:
    """CEL: ``selector`` matches the labels of the object as admitted (the new object only, as
    Permafrost matches it; an objectSelector would also match the old object of an update)."""
    labels = "(has(object.metadata.labels) ? object.metadata.labels : {})"
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
    exempt_users: Iterable[str] = (),
    excluded_namespaces: Iterable[str] = ("kube-system",),
) -> Compiled | NotCompiled:
    """The ValidatingAdmissionPolicy and bindings that judge what the webhook judges of the
    create-stage policy ``name`` (owned by the GuardrailPolicy of ``uid``), or why not.

    ``exempt_users`` are never judged (a match condition); ``excluded_namespaces`` never matched.
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
    vap = policy_name(name)
    labels = {models.LABEL_MANAGED_BY: models.MANAGER, LABEL_POLICY: name}
    owner = {
        "apiVersion": models.API_VERSION,
        "kind": models.POLICY_KIND,
        "name": name,
        "uid": uid,
        "controller": True,
    }
    metadata = {"labels": labels, "ownerReferences": [owner]}
    workloads = sorted(WORKLOAD_RESOURCES[k] for k in admitted if k in WORKLOAD_RESOURCES)
    workload_rules = (
        [
            {
                "apiGroups": ["apps"],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": workloads,
            }
        ]
        if workloads
        else []
    )
    release_rules = [dict(RELEASES)] if models.KIND in admitted else []
    match_conditions = []
    exempt = sorted(set(exempt_users))
    if exempt:
        match_conditions.append(
            {
                "name": "not-exempt",
                "expression": f"!(request.userInfo.username in {json.dumps(exempt)})",
            }
        )
    if spec.match.object_selector is not None:
        match_conditions.append(
            {"name": "object-selector", "expression": _labels_cel(spec.match.object_selector)}
        )
    body: dict[str, Any] = {
        "apiVersion": API,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": vap, **metadata},
        "spec": {
            # NB: a rule that errors fails, as in Permafrost's engine; the binding's actions
            # then apply to it as to a failed rule.
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [*release_rules, *workload_rules]},
            "variables": [
                {"name": variable, "expression": expression}
                for variable, expression in VARIABLES.items()
            ],
            "validations": validations,
        },
    }
    if match_conditions:
        body["spec"]["matchConditions"] = match_conditions
    releases_binding, workloads_binding = binding_names(name)
    excluded = sorted(set(excluded_namespaces))

    def binding(
        binding_name: str, rules: list[dict[str, Any]], resources: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "apiVersion": API,
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": binding_name, **metadata},
            "spec": {
                "policyName": vap,
                "validationActions": list(ACTIONS[spec.enforcement]),
                "matchResources": {"resourceRules": rules, **resources},
            },
        }

    bindings = []
    if release_rules:
        bindings.append(
            binding(
                releases_binding,
                release_rules,
                {
                    "namespaceSelector": _namespaces(
                        spec.match.namespace_selector, excluded=excluded
                    )
                },
            )
        )
    if workload_rules:
        bindings.append(
            binding(
                workloads_binding,
                workload_rules,
                {
                    "namespaceSelector": _namespaces(
                        spec.match.namespace_selector,
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
    compiled ValidatingAdmissionPolicy, named in ``admissionPolicy``) or ``webhook``; a policy
    without a create stage has none.
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
            message=f"enforced by the ValidatingAdmissionPolicy {outcome.name}",
            generation=generation,
            previous=before,
            now=now,
        )
        enforced_by: str | None = ENFORCED_BY_APISERVER
        admission_policy: str | None = outcome.name
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
        enforced_by = (
            None
            if outcome.reason in (NO_CREATE_STAGE, NOT_ADMITTED, NO_RULES)
            else (ENFORCED_BY_WEBHOOK)
        )
        admission_policy = None
    return {
        "observedGeneration": generation,
        "enforcedBy": enforced_by,
        "admissionPolicy": admission_policy,
        "conditions": [condition.to_json()],
    }


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
