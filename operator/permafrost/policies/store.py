"""What the operator knows between events: compiled policies and namespace labels.

A cache fed by watch events (and one listing at start-up), read by the admission webhooks — which
must not make network calls — and by reconciles. Losing it loses nothing: it is rebuilt from the
cluster on every start.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pydantic

from permafrost import models
from permafrost.policies import policy


def _broken(name: str, spec: Mapping[str, Any], error: str) -> policy.Policy:
    """A policy that cannot be compiled still counts: every rule of it errors (fail safe)."""
    stages = frozenset(s for s in spec.get("stages") or () if s in ("build", "promote", "create"))
    enforcement = str(spec.get("enforcement"))
    if enforcement not in ("Enforce", "Warn", "Audit"):
        enforcement = "Enforce"
    failing = policy.Rule(
        name="compile",
        expression="false",
        program=None,
        message=f"the policy does not compile: {error}",
        message_program=None,
        depth=0,
    )
    return policy.Policy(
        name=name,
        stages=stages or frozenset({"build", "promote", "create"}),
        enforcement=enforcement,
        match=models.PolicyMatch(),
        rules=(failing,),
    )


@dataclasses.dataclass
class Store:
    """The policies (compiled, or broken) and the labels of every namespace.

    NB: written on the event loop only (by the watch handlers); read there and maybe from other
    threads. What readers iterate (the policies) is replaced on every change, never mutated in
    place; the namespaces are only ever read one key at a time, which is atomic, and are
    updated in place (a copy per event would cost O(namespaces) on every namespace event).
    """

    library: policy.Library = dataclasses.field(default_factory=policy.Library)
    broken: Mapping[str, policy.Policy] = dataclasses.field(default_factory=dict)
    namespaces: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    # Namespaces being deleted: nothing is planned there any more (the garbage collector and the
    # namespace controller remove everything, and what the operator may read goes first).
    terminating: set[str] = dataclasses.field(default_factory=set)
    # Policies whose current generation their compiled ValidatingAdmissionPolicy judges (as
    # their status says): the webhook leaves them to the apiserver. Replaced, never mutated.
    in_apiserver: frozenset[str] = frozenset()

    def put_policy(self, name: str, spec: Mapping[str, Any]) -> str | None:
        """Compile and keep a policy; returns the compile error, if any (kept as broken)."""
        try:
            self.library.put(name, models.GuardrailPolicySpec.model_validate(dict(spec)))
        except (pydantic.ValidationError, policy.PolicyError) as exc:
            self.library.forget(name)
            self.broken = {**self.broken, name: _broken(name, spec, str(exc))}
            return str(exc)
        self._unbreak(name)
        return None

    def forget_policy(self, name: str) -> None:
        self.library.forget(name)
        self._unbreak(name)
        self.enforced_in_apiserver(name, False)

    def enforced_in_apiserver(self, name: str, compiled: bool) -> None:
        """Record whether the apiserver judges the policy ``name`` (its compiled VAP)."""
        if compiled != (name in self.in_apiserver):
            self.in_apiserver = (
                self.in_apiserver | {name} if compiled else self.in_apiserver - {name}
            )

    def _unbreak(self, name: str) -> None:
        if name in self.broken:
            self.broken = {k: v for k, v in self.broken.items() if k != name}

    def policies(self) -> list[policy.Policy]:
        return [*self.library.policies(), *self.broken.values()]

    def admission_policies(self) -> list[policy.Policy]:
        """The policies the webhook judges: all but those the apiserver judges itself."""
        skipped = self.in_apiserver
        return [p for p in self.policies() if p.name not in skipped]

    def webhook_kinds(self, kinds: frozenset[str]) -> frozenset[str]:
        """Which of ``kinds`` a create-stage policy with rules that the webhook judges (see
        :meth:`admission_policies`) may match: their creation must reach the webhook.

        NB: a superset: the policies' namespace and object selectors are not looked at (the
        webhook's configuration is one for all namespaces). A broken policy matches every
        kind (its rules fail closed).
        """
        found: set[str] = set()
        for p in self.admission_policies():
            if "create" in p.stages and p.rules:
                found |= kinds & set(p.match.kinds) if p.match.kinds else kinds
        return frozenset(found)

    def namespace(self, name: str) -> dict[str, Any]:
        return {"name": name, "labels": dict(self.namespaces.get(name, {}))}


STORE = Store()
