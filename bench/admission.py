"""Admission latency: the webhook alone, and as the apiserver sees it.

(a) ``webhook``: AdmissionReviews POSTed straight to the operator's webhook (loopback, HTTPS,
keep-alive connections) at fixed rates, open loop: request *i* is due at ``start + i/rate`` and
its latency counts from when it was due, so a server that falls behind is charged for the queue
(no coordinated omission). Half are CREATEs of a Deployment in an enforced namespace (the
built-in policy library is evaluated), half UPDATEs that change only a label (the frozen-field
review). An error is a non-200 answer, a timeout (2 s, the webhook's own timeout) or a broken
connection.

(b) ``apiserver``: creates and updates of Deployments (0 replicas: admission only, no pods)
through the apiserver, in three namespaces at once — enforced with the operator's webhook and
the fail-safe ValidatingAdmissionPolicy, enforced with the policy only, and unguarded — in one
interleaved run, so all three see the same machine at the same moments. The operator runs with
``--no-compile-policies``: the webhook judges every policy.

(c) ``apiserver_compiled``: the same, with the operator compiling the create-stage policies
into ValidatingAdmissionPolicies (its default): an enforced namespace with the webhook (which
leaves the compiled policies to the apiserver), one without the webhook (the fail-safe policy
and the compiled ones: what holds with the operator stopped), and the unguarded one again.
"""

from __future__ import annotations

import asyncio
import copy
import pathlib
import ssl
import time
import uuid
from typing import Any

import aiohttp
import kubernetes

from bench import common

USER = {"username": "alice@example.com", "groups": ["system:authenticated"]}


def _review(operation: str, namespace: str, name: str) -> dict[str, Any]:
    body = common.deployment(name, replicas=0, template=common.pod_template(name))
    body["metadata"].update({"namespace": namespace, "uid": str(uuid.uuid4())})
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
        "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
        "requestKind": {"group": "apps", "version": "v1", "kind": "Deployment"},
        "requestResource": {"group": "apps", "version": "v1", "resource": "deployments"},
        "name": name,
        "namespace": namespace,
        "operation": operation,
        "userInfo": USER,
        "object": body,
        "oldObject": None,
        "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }
    if operation == "UPDATE":
        old = copy.deepcopy(body)
        body["metadata"]["labels"]["touched"] = "yes"
        request["oldObject"] = old
        request["options"]["kind"] = "UpdateOptions"
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


async def _blast(
    url: str, ca: bytes, *, rate: float, seconds: float, namespace: str
) -> dict[str, Any]:
    """Open-loop load at ``rate`` per second for ``seconds``; latencies in ms, error count."""
    context = ssl.create_default_context(cadata=ca.decode())
    reviews = [
        _review("CREATE" if i % 2 == 0 else "UPDATE", namespace, f"web-{i}") for i in range(64)
    ]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    allowed = 0
    connector = aiohttp.TCPConnector(ssl=context, limit=256)
    timeout = aiohttp.ClientTimeout(total=2)
    count = max(1, int(rate * seconds))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # NB: warm the connection pool and the operator (first TLS handshakes, imports).
        for review in reviews[:8]:
            async with session.post(url, json=review) as response:
                await response.read()

        async def one(i: int, due: float) -> None:
            nonlocal allowed
            try:
                async with session.post(url, json=reviews[i % len(reviews)]) as response:
                    payload = await response.json()
                    if response.status != 200:
                        errors[f"HTTP {response.status}"] = (
                            errors.get(f"HTTP {response.status}", 0) + 1
                        )
                        return
                    if payload["response"]["allowed"]:
                        allowed += 1
            except (TimeoutError, aiohttp.ClientError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            latencies.append((time.perf_counter() - due) * 1000)

        start = time.perf_counter() + 0.05
        tasks = []
        for i in range(count):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {
        "rate": rate,
        "sent": count,
        "achieved_rate": count / elapsed,
        "ok": len(latencies),
        "allowed": allowed,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "p50_ms": common.percentile(latencies, 50),
        "p99_ms": common.percentile(latencies, 99),
        "max_ms": max(latencies, default=float("nan")),
    }


def _apiserver_round(
    api: common.Api, namespaces: dict[str, str], *, round_: int, count: int
) -> dict[str, dict[str, list[float]]]:
    """``count`` creates then ``count`` updates per variant, interleaved variant by variant.

    NB: the order of the variants turns with each object, so that each comes first, second and
    third as often: a request right after another shares the apiserver with what the first one
    set off (the deployment controller's ReplicaSet, watch events), and in a fixed order one
    variant would always pay for another's.
    """
    samples: dict[str, dict[str, list[float]]] = {
        v: {"create": [], "update": []} for v in namespaces
    }
    names = [f"adm-{round_}-{i}" for i in range(count)]
    order = list(namespaces.items())

    def turned(i: int) -> list[tuple[str, str]]:
        shift = i % len(order)
        return order[shift:] + order[:shift]

    for i, name in enumerate(names):
        for variant, namespace in turned(i):
            body = common.deployment(name, replicas=0, template=common.pod_template(name))
            t0 = time.perf_counter()
            api.apps.create_namespaced_deployment(namespace, body)
            samples[variant]["create"].append((time.perf_counter() - t0) * 1000)
    for i, name in enumerate(names):
        for variant, namespace in turned(i):
            patch = {"metadata": {"labels": {"touched": str(i)}}}
            t0 = time.perf_counter()
            api.apps.patch_namespaced_deployment(name, namespace, patch)
            samples[variant]["update"].append((time.perf_counter() - t0) * 1000)
    for variant, namespace in namespaces.items():
        api.apps.delete_collection_namespaced_deployment(namespace)
        del variant
    return samples


SKIP_TERM = {"key": "bench.permafrost.dev/webhook", "operator": "NotIn", "values": ["off"]}


def _skip_webhook_in(api: common.Api, *, settle: float = 2.0, timeout: float = 60) -> None:
    """The operator's enforced webhooks skip namespaces labelled ``bench…/webhook=off`` (an extra
    namespaceSelector term); the ValidatingAdmissionPolicies still apply there.

    NB: the operator registers its configuration again as its policies move (a moment after
    their status says where they are enforced), which replaces the term: it is added until it
    stays for ``settle`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        configuration = api.admission.read_validating_webhook_configuration(
            common.WEBHOOK_CONFIGURATION
        )
        missing = False
        for hook in configuration.webhooks:
            if not hook.name.startswith("enforced."):
                continue
            terms = hook.namespace_selector.match_expressions
            if not any(t.key == SKIP_TERM["key"] for t in terms):
                terms.append(kubernetes.client.V1LabelSelectorRequirement(**SKIP_TERM))
                missing = True
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the webhooks did not keep the bench's term within {timeout}s")
        try:
            api.admission.replace_validating_webhook_configuration(
                common.WEBHOOK_CONFIGURATION, configuration
            )
        except kubernetes.client.ApiException as exc:
            if exc.status != 409:  # NB: the operator wrote it meanwhile: read it again
                raise
        time.sleep(settle)


def _apiserver_rounds(
    api: common.Api, variants: dict[str, str], *, repetitions: int, per_round: int
) -> list[dict[str, Any]]:
    # NB: warm-up round (connections, the webhook's first requests), not reported.
    _apiserver_round(api, variants, round_=-1, count=min(per_round, 10))
    rounds = []
    for rep in range(repetitions):
        samples = _apiserver_round(api, variants, round_=rep, count=per_round)
        row: dict[str, Any] = {"repetition": rep}
        for variant, ops in samples.items():
            for op, values in ops.items():
                row[f"{variant}.{op}.p50_ms"] = common.percentile(values, 50)
                row[f"{variant}.{op}.p99_ms"] = common.percentile(values, 99)
                row[f"{variant}.{op}.n"] = len(values)
        rounds.append(row)
    return rounds


def _wait_compiled(api: common.Api, names: list[str], *, timeout: float = 120) -> dict[str, str]:
    """Wait until the operator said where each policy is enforced (its ``Compiled`` condition,
    of the current generation); returns ``enforcedBy`` by policy."""
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, str] = {}
        for name in names:
            body = api.custom.get_cluster_custom_object(
                "permafrost.dev", "v1alpha1", "guardrailpolicies", name
            )
            status = body.get("status") or {}
            generation = body["metadata"].get("generation")
            compiled = [
                c
                for c in status.get("conditions") or []
                if c.get("type") == "Compiled"
                and c.get("observedGeneration") == generation
                # NB: what the operator of (b), run with --no-compile-policies, said
                and c.get("reason") != "CompilationDisabled"
            ]
            if compiled:
                # NB: no enforcedBy: nothing of the policy is judged at admission
                found[name] = status.get("enforcedBy") or "nothing at admission"
        if len(found) == len(names):
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"policies not compiled within {timeout}s: {set(names) - set(found)}"
            )
        time.sleep(0.5)


def run(api: common.Api, out: pathlib.Path, *, smoke: bool) -> dict[str, Any]:
    rates = [20.0, 50.0] if smoke else [100.0, 300.0, 1000.0]
    seconds = 1.0 if smoke else 4.0
    repetitions = 2 if smoke else 5
    per_round = 5 if smoke else 60
    enforced = common.create_namespace(
        api, common.unique("bench-adm-webhook"), labels={common.LABEL_ENFORCE: "true"}
    )
    vap_only = common.create_namespace(
        api,
        common.unique("bench-adm-vap"),
        labels={common.LABEL_ENFORCE: "true", "bench.permafrost.dev/webhook": "off"},
    )
    unguarded = common.create_namespace(api, common.unique("bench-adm-none"))
    policies = common.apply_policies(api, common.LIBRARY)
    result: dict[str, Any] = {
        "policies": len(policies),
        "rates": rates,
        "seconds_per_repetition": seconds,
        "repetitions": repetitions,
    }
    try:
        with common.Operator(
            api,
            out,
            namespaces=[enforced],
            admission=True,
            extra_args=["--no-compile-policies"],
        ) as operator:
            ca = operator.webhook_ca()
            url = f"https://127.0.0.1:{operator.port}/frozen-enforced"
            webhook: list[dict[str, Any]] = []
            for rep in range(repetitions):
                for rate in rates:
                    cpu, own = operator.cpu_seconds(), time.process_time()
                    row = asyncio.run(
                        _blast(url, ca, rate=rate, seconds=seconds, namespace=enforced)
                    )
                    # NB: what one review costs the operator, and what sending it cost the
                    # load generator (on the same cores).
                    row["operator_cpu_ms_per_review"] = (
                        (operator.cpu_seconds() - cpu) * 1000 / row["sent"]
                    )
                    row["client_cpu_ms_per_review"] = (
                        (time.process_time() - own) * 1000 / row["sent"]
                    )
                    row["repetition"] = rep
                    webhook.append(row)
                    operator.alive()
            result["webhook"] = webhook
            result["webhook_operator_peak_rss"] = operator.peak_rss
            _skip_webhook_in(api)
            result["apiserver"] = _apiserver_rounds(
                api,
                {"webhook": enforced, "policy-only": vap_only, "no-guard": unguarded},
                repetitions=repetitions,
                per_round=per_round,
            )
            operator.alive()
            result["apiserver_ops_per_variant"] = per_round
        # (c) the same operator compiling the create-stage policies (its default).
        with common.Operator(api, out, namespaces=[enforced], admission=True) as operator:
            result["enforced_by"] = _wait_compiled(api, policies)
            _skip_webhook_in(api)
            result["apiserver_compiled"] = _apiserver_rounds(
                api,
                {"compiled+webhook": enforced, "compiled": vap_only, "no-guard": unguarded},
                repetitions=repetitions,
                per_round=per_round,
            )
            operator.alive()
    finally:
        common.delete_policies(api, policies)
        common.delete_namespaces(api, [enforced, vap_only, unguarded])
    return result
