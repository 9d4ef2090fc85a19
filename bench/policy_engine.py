"""Policy engine: evaluations per second of the built-in library against a typical Deployment.

One evaluation is what admission does for a CREATE in an enforced namespace: every create-stage
policy of the library that matches, every rule. "cached" evaluates the policies compiled once
(as the operator keeps them in its store); "uncached" compiles the library again before every
evaluation (what an engine without a compile cache would pay).
"""

from __future__ import annotations

import datetime
import pathlib
import time
from typing import Any

from bench import common
from permafrost.policies import checking, policy


def _library() -> list[tuple[str, str]]:
    return [(str(p), p.read_text()) for p in sorted(common.LIBRARY.glob("*.yaml"))]


def _rate(fn: Any, *, seconds: float) -> tuple[float, int]:
    """Calls per second of ``fn`` over about ``seconds``; and the count."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start), count


def run(api: common.Api, out: pathlib.Path, *, smoke: bool) -> dict[str, Any]:
    del api, out  # NB: a pure benchmark: no cluster, no operator
    seconds = 0.3 if smoke else 2.0
    repetitions = 2 if smoke else 5
    sources = _library()
    compiled = checking.load_policies(sources)
    body = common.deployment("shop", replicas=3, template=common.pod_template("shop"))
    body["metadata"]["namespace"] = "shop"
    namespace = {"name": "shop", "labels": {common.LABEL_ENFORCE: "true"}}
    now = datetime.datetime.now(datetime.UTC)

    def evaluate(policies: list[policy.Policy]) -> policy.Verdict:
        subject = checking.subject_of(body, namespace=namespace)
        return policy.evaluate(policies, stage="create", subject=subject, now=now)

    verdict = evaluate(compiled)
    rows = []
    for rep in range(repetitions):
        cached, n_cached = _rate(lambda: evaluate(compiled), seconds=seconds)
        uncached, n_uncached = _rate(
            lambda: evaluate(checking.load_policies(sources)), seconds=seconds
        )
        rows.append(
            {
                "repetition": rep,
                "cached_per_second": cached,
                "uncached_per_second": uncached,
                "cached_evaluations": n_cached,
                "uncached_evaluations": n_uncached,
            }
        )
    return {
        "policies": len(compiled),
        "rules_evaluated": len(verdict.results),
        "allowed": verdict.allowed,
        "violations": [f"{r.policy}/{r.rule}" for r in verdict.violations],
        "seconds_per_repetition": seconds,
        "repetitions": repetitions,
        "rows": rows,
    }
