"""The policy engine: GuardrailPolicies (CEL) evaluated at an action stage. Pure.

One engine for every place a policy runs — ``permafrost check`` in CI (build, promote, create),
the admission webhook (create), and the rollout planner (create before a revision's Deployment
is made, promote before traffic moves) — so the same inputs always get the same verdict.

``compile_policy`` turns a policy spec into programs once (cache them with :class:`Library`);
``evaluate(policies, stage=..., subject=..., now=...)`` runs the matching ones and returns a
:class:`Verdict` with one result per rule. Failing safe: a rule that errors counts as a
violation, never as a pass (argoproj/argo-rollouts#4479).

Budget: CEL evaluation in the underlying library cannot be interrupted, so a runaway expression
is stopped *before* it runs. Its cost is bounded by the largest collection in its input raised
to the nesting depth of its comprehension macros (``all``, ``exists``, ``map``…); above the
budget, the rule is not run and is reported as an error ("exceeds the cost budget").
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import cel

from permafrost import models
from permafrost.artifacts import attestations, images, signatures

Outcome = Literal["Pass", "Fail", "Error"]

MAX_EXPRESSION = 4096
DEFAULT_BUDGET = 100_000
MAX_COLLECTION = 10_000
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_TOKEN = re.compile(
    r"(?P<comment>//[^\n]*)"
    r"|(?P<raw>[bB]?[rR][bB]?(?:'{3}(?:.|\n)*?'{3}|\"{3}(?:.|\n)*?\"{3}|'[^'\n]*'|\"[^\"\n]*\"))"
    r"|(?P<string>[bB]?(?:'{3}(?:.|\n)*?'{3}|\"{3}(?:.|\n)*?\"{3}"
    r"|'(?:\\.|[^'\\\n])*'|\"(?:\\.|[^\"\\\n])*\"))"
    r"|(?P<macro>\.\s*(?:exists_one|exists|all|map|filter)\s*\()"
    r"|(?P<open>[(\[{])|(?P<close>[)\]}])|(?P<comma>,)|(?P<plus>\+)"
)


class PolicyError(ValueError):
    """A policy that cannot be compiled; the message names the policy, rule and problem."""


@dataclasses.dataclass(frozen=True)
class Estimate:
    """What bounds the cost of a CEL expression, read from its source.

    ``depth``: the deepest nesting of comprehension macros; ``literals``: how many elements its
    list and map literals hold in all; ``concatenations``: how many ``+`` it has outside the
    innermost comprehension bodies (a list built with ``+`` and then iterated can be that many
    times larger than its parts). Strings and comments are skipped.
    """

    depth: int
    literals: int
    concatenations: int

    def cost(self, largest_input: int) -> int:
        """Steps of the worst case, for inputs whose largest collection has that many items."""
        if not self.depth:
            return 0
        width = (largest_input + self.literals) * (1 + self.concatenations)
        return int(width**self.depth)


def estimate(expression: str) -> Estimate:
    # One frame per open bracket: (is a macro call, is a list/map literal, commas, where it starts).
    stack: list[tuple[bool, bool, list[int], int]] = []
    depth = literals = 0
    pluses: list[int] = []  # the comprehension depth of every `+`
    for match in _TOKEN.finditer(expression):
        kind = match.lastgroup
        if kind == "macro":
            stack.append((True, False, [0], match.end()))
            depth = max(depth, sum(frame[0] for frame in stack))
        elif kind == "open":
            stack.append((False, match.group() in "[{", [0], match.end()))
        elif kind == "close" and stack:
            _, literal, commas, start = stack.pop()
            if literal and expression[start : match.start()].strip():
                literals += commas[0] + 1
        elif kind == "comma" and stack:
            stack[-1][2][0] += 1
        elif kind == "plus":
            pluses.append(sum(frame[0] for frame in stack))
    # NB: a `+` in the innermost comprehension body (a + b) builds nothing that is iterated;
    # one at a shallower depth may build a collection a deeper comprehension iterates over.
    concatenations = sum(1 for level in pluses if level < depth)
    return Estimate(depth=depth, literals=literals, concatenations=concatenations)


def macro_depth(expression: str) -> int:
    """The deepest nesting of comprehension macros in a CEL expression (0 if none)."""
    return estimate(expression).depth


def largest_collection(value: Any, *, limit: int = 100_000) -> int:
    """The size of the largest list or map anywhere in ``value`` (walks at most ``limit``)."""
    largest, seen, todo = 0, 0, [value]
    while todo and seen < limit:
        item = todo.pop()
        seen += 1
        if isinstance(item, Mapping):
            largest = max(largest, len(item))
            todo.extend(item.values())
        elif isinstance(item, list | tuple):
            largest = max(largest, len(item))
            todo.extend(item)
    return largest if seen < limit else max(largest, limit)


# The variables every rule sees (see :func:`context`).
VARIABLES = frozenset(
    {"object", "oldObject", "stable", "namespaceObject", "artifact", "podSpec", "now"}
)


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    expression: str
    program: Any
    message: str
    message_program: Any | None
    depth: int
    cost: Estimate = Estimate(0, 0, 0)
    message_cost: Estimate = Estimate(0, 0, 0)
    # The variables of :func:`context` the expressions may read (all, when unknown).
    variables: frozenset[str] = dataclasses.field(default_factory=lambda: VARIABLES)


@dataclasses.dataclass(frozen=True)
class ImageRule:
    """A ``verifyImages`` entry: images whose repository matches one of ``patterns`` must be
    signed by one of ``keys``, and carry the ``attestations`` it requires."""

    name: str
    patterns: tuple[str, ...]
    keys: tuple[signatures.PublicKey, ...]
    matchers: tuple[re.Pattern[str], ...] = dataclasses.field(default=(), compare=False)
    attestations: tuple[attestations.Requirement, ...] = ()

    def covers(self, image: str) -> bool:
        """Whether ``image``'s repository (``registry/repository``, Docker Hub as
        ``docker.io/library/…``) matches a pattern; text that is not a reference never does
        (the registry check and admission report it)."""
        try:
            ref = images.parse(image)
        except images.InvalidReference:
            return False
        name = f"{ref.registry}/{ref.repository}"
        return any(m.fullmatch(name) for m in self.matchers)


@dataclasses.dataclass(frozen=True)
class Policy:
    name: str
    stages: frozenset[str]
    enforcement: str
    match: models.PolicyMatch
    rules: tuple[Rule, ...]
    verify_images: tuple[ImageRule, ...] = ()
    # The digest of its spec (attestations.policy_digest): what a guardrails attestation
    # records of it.
    digest: str = ""


def referenced(*expressions: str) -> frozenset[str]:
    """The variables of :func:`context` whose names occur in the expressions as words.

    NB: a superset of what they read (a name inside a string literal counts too): CEL has no
    way to reach a variable but by its name, so a variable left out is one never read.
    """
    return frozenset(
        name for name in VARIABLES if any(re.search(rf"\b{name}\b", e) for e in expressions)
    )


def _compile(policy: str, rule: str, what: str, expression: str) -> Any:
    if len(expression) > MAX_EXPRESSION:
        raise PolicyError(
            f"policy {policy!r}, rule {rule!r}: the {what} is longer than "
            f"{MAX_EXPRESSION} characters"
        )
    try:
        return cel.compile(expression)
    except (ValueError, RuntimeError) as exc:
        raise PolicyError(
            f"policy {policy!r}, rule {rule!r}: the {what} does not compile: {exc}"
        ) from None


def compile_policy(name: str, spec: models.GuardrailPolicySpec) -> Policy:
    """Compile every rule of a policy; raise :class:`PolicyError` naming the first bad one."""
    names = [r.name for r in spec.rules] + [v.name for v in spec.verify_images]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise PolicyError(f"policy {name!r}: duplicate rule names {duplicated}")
    rules = []
    for rule in spec.rules:
        program = _compile(name, rule.name, "expression", rule.expression)
        message_program = (
            _compile(name, rule.name, "messageExpression", rule.message_expression)
            if rule.message_expression
            else None
        )
        rules.append(
            Rule(
                name=rule.name,
                expression=rule.expression,
                program=program,
                message=rule.message or f"rule {rule.name} of policy {name} is not satisfied",
                message_program=message_program,
                depth=max(macro_depth(rule.expression), macro_depth(rule.message_expression or "")),
                cost=estimate(rule.expression),
                message_cost=estimate(rule.message_expression or ""),
                variables=referenced(rule.expression, rule.message_expression or ""),
            )
        )
    return Policy(
        name=name,
        stages=frozenset(spec.stages),
        enforcement=spec.enforcement,
        match=spec.match,
        rules=tuple(rules),
        verify_images=tuple(_compile_image_rule(name, v) for v in spec.verify_images),
        digest=attestations.policy_digest(spec.to_json()),
    )


class Library:
    """Compiled policies, each compiled once per distinct spec (a cache, not state).

    NB: copy on write: a change replaces the whole mapping, never mutates it, so a reader in
    another thread (an admission review) iterates a consistent snapshot and never sees "changed
    size during iteration".
    """

    def __init__(self) -> None:
        self._compiled: Mapping[str, tuple[str, Policy]] = {}

    @staticmethod
    def _key(spec: models.GuardrailPolicySpec) -> str:
        return hashlib.sha256(json.dumps(spec.to_json(), sort_keys=True).encode()).hexdigest()

    def get(self, name: str, spec: models.GuardrailPolicySpec) -> Policy:
        key = self._key(spec)
        cached = self._compiled.get(name)
        if cached is None or cached[0] != key:
            cached = (key, compile_policy(name, spec))
            self._compiled = {**self._compiled, name: cached}
        return cached[1]

    def put(self, name: str, spec: models.GuardrailPolicySpec) -> Policy:
        return self.get(name, spec)

    def forget(self, name: str) -> None:
        if name in self._compiled:
            self._compiled = {k: v for k, v in self._compiled.items() if k != name}

    def policies(self) -> list[Policy]:
        compiled = self._compiled
        return [policy for _, policy in sorted(compiled.values(), key=lambda p: p[1].name)]


# --- matching ----------------------------------------------------------------------------------


def selects(selector: models.LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics; ``None`` selects everything."""
    if selector is None:
        return True
    for key, value in (selector.match_labels or {}).items():
        if labels.get(key) != value:
            return False
    for req in selector.match_expressions or []:
        present = req.key in labels
        values = set(req.values or [])
        if req.operator == "In" and not (present and labels[req.key] in values):
            return False
        if req.operator == "NotIn" and present and labels[req.key] in values:
            return False
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
    return True


@dataclasses.dataclass(frozen=True)
class Subject:
    """What an action acts on, as the rules see it.

    ``object`` is the release, workload, pod or artifact; ``namespace`` is ``{"name", "labels"}``
    (``None`` when unknown, e.g. offline without ``--namespace-label``).
    """

    object: Mapping[str, Any]
    old_object: Mapping[str, Any] | None = None
    stable: Mapping[str, Any] | None = None
    namespace: Mapping[str, Any] | None = None
    artifact: Mapping[str, Any] | None = None

    @property
    def kind(self) -> str:
        return str(self.object.get("kind") or "")

    @property
    def labels(self) -> Mapping[str, str]:
        return ((self.object.get("metadata") or {}).get("labels")) or {}


def matches(policy: Policy, *, stage: str, subject: Subject) -> bool:
    if stage not in policy.stages:
        return False
    match = policy.match
    if match.kinds and subject.kind not in match.kinds:
        return False
    if not selects(match.object_selector, subject.labels):
        return False
    namespace_labels = (subject.namespace or {}).get("labels") or {}
    return selects(match.namespace_selector, namespace_labels)


def pod_spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod spec inside a release, workload or pod (``{}`` for an artifact)."""
    spec = obj.get("spec") or {}
    if isinstance(spec.get("template"), Mapping):
        return spec["template"].get("spec") or {}
    return spec if "containers" in spec else {}


def context(subject: Subject, *, now: datetime.datetime) -> dict[str, Any]:
    """The variables every rule sees (absent ones are ``null``)."""
    return {
        "object": dict(subject.object),
        "oldObject": dict(subject.old_object) if subject.old_object is not None else None,
        "stable": dict(subject.stable) if subject.stable is not None else None,
        # NB: `namespace` is a reserved word in CEL; like Kubernetes, the variable is
        # namespaceObject, shaped like the Namespace object itself.
        "namespaceObject": {
            "metadata": {
                "name": str((subject.namespace or {}).get("name") or ""),
                "labels": dict((subject.namespace or {}).get("labels") or {}),
            }
        },
        "artifact": dict(subject.artifact) if subject.artifact is not None else None,
        "podSpec": dict(pod_spec(subject.object)),
        "now": now.astimezone(datetime.UTC),
    }


# --- evaluation --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RuleResult:
    policy: str
    rule: str
    enforcement: str
    outcome: Outcome
    message: str
    # Why, as a condition reason, when it is more specific than "a rule failed" (a
    # verifyImages entry's: ImageNotSigned, SignatureUntrusted...); None for CEL rules.
    reason: str | None = None

    def to_json(self) -> dict[str, str]:
        found = dataclasses.asdict(self)
        if found["reason"] is None:
            del found["reason"]
        return found


@dataclasses.dataclass(frozen=True)
class Verdict:
    stage: str
    results: tuple[RuleResult, ...]

    @property
    def violations(self) -> tuple[RuleResult, ...]:
        """Failed or errored rules of Enforce policies: the action must not happen."""
        return tuple(r for r in self.results if r.outcome != "Pass" and r.enforcement == "Enforce")

    @property
    def warnings(self) -> tuple[RuleResult, ...]:
        return tuple(r for r in self.results if r.outcome != "Pass" and r.enforcement == "Warn")

    @property
    def audits(self) -> tuple[RuleResult, ...]:
        return tuple(r for r in self.results if r.outcome != "Pass" and r.enforcement == "Audit")

    @property
    def allowed(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        """One line: the violated rules and their messages (empty when allowed)."""
        return "; ".join(f"{r.policy}/{r.rule}: {r.message}" for r in self.violations)


def _run(rule: Rule, policy: Policy, variables: Any, largest: int, budget: int) -> RuleResult:
    def result(outcome: Outcome, message: str) -> RuleResult:
        return RuleResult(policy.name, rule.name, policy.enforcement, outcome, message)

    if rule.program is None:  # a placeholder for a policy that does not compile
        return result("Error", rule.message)
    steps = rule.cost.cost(largest)
    if largest > MAX_COLLECTION or steps > budget:
        return result(
            "Error",
            f"not evaluated: it exceeds the cost budget (about {steps} steps over {largest} "
            f"items at nesting depth {rule.cost.depth} > {budget})",
        )
    try:
        value = rule.program.execute(variables)
    except Exception as exc:  # NB: any CEL runtime error fails safe: it is never a pass
        return result("Error", f"evaluation error: {exc}")
    if value is True:
        return result("Pass", "")
    if value is not False:
        return result("Error", f"the expression returned {value!r}, not a boolean")
    message = rule.message
    if rule.message_program is not None and rule.message_cost.cost(largest) <= budget:
        try:
            produced = rule.message_program.execute(variables)
            if isinstance(produced, str) and produced:
                message = produced
        except Exception:  # NB: a broken message must not hide the violation itself
            message = rule.message
    return result("Fail", message)


def _prepared(variables: Mapping[str, Any]) -> Any:
    """The variables converted for the CEL engine once, shared by every rule of a verdict."""
    prepared = cel.Context()
    for name, value in variables.items():
        prepared.add_variable(name, value)
    return prepared


def evaluate(
    policies: Iterable[Policy],
    *,
    stage: models.Stage,
    subject: Subject,
    now: datetime.datetime,
    budget: int = DEFAULT_BUDGET,
) -> Verdict:
    """Evaluate every rule of every policy that matches ``stage`` and ``subject``."""
    applicable = [
        p
        for p in sorted(policies, key=lambda p: p.name)
        if matches(p, stage=stage, subject=subject)
    ]
    if not applicable:
        return Verdict(stage=stage, results=())
    variables = context(subject, now=now)
    largest = largest_collection(variables)
    # NB: converting a variable for the engine costs about as much as a simple rule; only the
    # variables some applicable rule reads are converted.
    needed = frozenset().union(*(rule.variables for policy in applicable for rule in policy.rules))
    prepared = _prepared({name: value for name, value in variables.items() if name in needed})
    results = [
        _run(rule, policy, prepared, largest, budget)
        for policy in applicable
        for rule in policy.rules
    ]
    return Verdict(stage=stage, results=tuple(results))


# --- image signatures (spec.verifyImages) -----------------------------------------------------


_GLOB = re.compile(r"^[A-Za-z0-9._\-/:*?\[\]]+$")


def glob(pattern: str) -> re.Pattern[str]:
    """A repository pattern: ``*`` and ``?`` within one path component, ``**`` across them
    (``registry.example/shop/*``, ``registry.example/**``)."""
    if not _GLOB.match(pattern) or "[" in pattern or "]" in pattern:
        raise ValueError(
            f"{pattern!r} is not a repository pattern (letters, digits, . _ - / : * ?)"
        )
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    regex = "".join(
        ".*" if p == "**" else "[^/]*" if p == "*" else "[^/]" if p == "?" else re.escape(p)
        for p in parts
    )
    return re.compile(regex)


def _compile_image_rule(policy: str, entry: models.ImageVerification) -> ImageRule:
    where = f"policy {policy!r}, verifyImages {entry.name!r}"
    try:
        matchers = tuple(glob(p) for p in entry.images)
    except ValueError as exc:
        raise PolicyError(f"{where}: {exc}") from None
    keys = _load_keys(entry.keys, where=where)
    required = []
    for index, wanted in enumerate(entry.attestations):
        required.append(
            attestations.Requirement(
                policy=wanted.policy,
                keys=(
                    _load_keys(wanted.keys, where=f"{where}, attestation {index + 1}")
                    if wanted.keys
                    else keys
                ),
                digest=wanted.policy_digest,
            )
        )
    return ImageRule(
        name=entry.name,
        patterns=tuple(entry.images),
        keys=keys,
        matchers=matchers,
        attestations=tuple(required),
    )


def _load_keys(pems: Sequence[str], *, where: str) -> tuple[signatures.PublicKey, ...]:
    keys = []
    for index, pem in enumerate(pems):
        try:
            keys.append(signatures.load_public_key(pem))
        except signatures.InvalidKey as exc:
            raise PolicyError(f"{where}: key {index + 1}: {exc}") from None
    return tuple(keys)


def images_of(subject: Subject) -> tuple[str, ...]:
    """The images an action would run: an Artifact's ``image``, or the pod spec's containers
    and init containers (each once, in order)."""
    if subject.kind == models.ARTIFACT_KIND:
        image = subject.object.get("image")
        return (image,) if isinstance(image, str) else ()
    spec = pod_spec(subject.object)
    found = []
    for field in ("initContainers", "containers"):
        for container in spec.get(field) or ():
            if isinstance(container, Mapping) and isinstance(container.get("image"), str):
                found.append(container["image"])
    return tuple(dict.fromkeys(found))


# What a verification of an image's signatures and attestations is found under.
VerificationKey = attestations.VerificationKey


@dataclasses.dataclass(frozen=True)
class ImageRequirement:
    """One image one ``verifyImages`` entry of one policy requires signed (and attested)."""

    policy: str
    rule: str
    enforcement: str
    image: str
    keys: tuple[signatures.PublicKey, ...]
    attestations: tuple[attestations.Requirement, ...] = ()

    @property
    def key(self) -> VerificationKey:
        """What a verification of it is found under (the image, the key ids, and the
        attestation requirements)."""
        return attestations.verification_key(self.image, self.keys, self.attestations)


def image_requirements(
    policies: Iterable[Policy], *, stage: models.Stage, subject: Subject
) -> tuple[ImageRequirement, ...]:
    """What the ``verifyImages`` entries of the policies that apply at ``stage`` require."""
    found = []
    subject_images = images_of(subject)
    for p in sorted(policies, key=lambda p: p.name):
        if not p.verify_images or not matches(p, stage=stage, subject=subject):
            continue
        for rule in p.verify_images:
            for image in subject_images:
                if rule.covers(image):
                    found.append(
                        ImageRequirement(
                            p.name, rule.name, p.enforcement, image, rule.keys, rule.attestations
                        )
                    )
    return tuple(found)


def signature_results(
    requirements: Sequence[ImageRequirement],
    verifications: Mapping[attestations.VerificationKey, signatures.Verification],
) -> tuple[RuleResult, ...]:
    """One result per ``verifyImages`` entry that requires something: ``Pass`` when every
    image it covers is verified; ``Fail`` (``Error`` when the registry could not be asked, or
    the pods' pull secrets could not be used to ask it: :data:`signatures.NOT_ASKED`) with
    each image's verdict otherwise, the reason being the first image's. A requirement with no
    verification is an ``Error``: never a pass by omission."""
    grouped: dict[tuple[str, str, str], list[signatures.Verification]] = {}
    for req in requirements:
        found = verifications.get(req.key) or signatures.Verification(
            req.image, signatures.UNREACHABLE, f"{req.image}: not verified"
        )
        grouped.setdefault((req.policy, req.rule, req.enforcement), []).append(found)
    results = []
    for (policy_name, rule, enforcement), verdicts in grouped.items():
        failing = [v for v in verdicts if not v.verified]
        if not failing:
            results.append(RuleResult(policy_name, rule, enforcement, "Pass", ""))
            continue
        outcome: Outcome = (
            "Error" if all(v.outcome in signatures.NOT_ASKED for v in failing) else "Fail"
        )
        results.append(
            RuleResult(
                policy_name,
                rule,
                enforcement,
                outcome,
                "; ".join(v.message for v in failing),
                reason=failing[0].outcome,
            )
        )
    return tuple(results)


def with_results(verdict: Verdict, extra: Sequence[RuleResult]) -> Verdict:
    return Verdict(stage=verdict.stage, results=(*verdict.results, *extra))


def parse_policies(
    documents: Sequence[Mapping[str, Any]],
) -> list[tuple[str, models.GuardrailPolicySpec]]:
    """(name, spec) of the GuardrailPolicy documents among ``documents``.

    Raises :class:`PolicyError` naming the document for a malformed one.
    """
    parsed = []
    for index, doc in enumerate(documents):
        if doc.get("kind") != models.POLICY_KIND:
            continue
        name = str((doc.get("metadata") or {}).get("name") or f"document {index + 1}")
        try:
            spec = models.GuardrailPolicySpec.model_validate(doc.get("spec") or {})
        except ValueError as exc:
            raise PolicyError(f"policy {name!r} is malformed: {exc}") from None
        parsed.append((name, spec))
    return parsed
