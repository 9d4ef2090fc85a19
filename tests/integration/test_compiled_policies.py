"""Create-stage GuardrailPolicies compiled into ValidatingAdmissionPolicies, against the real
apiserver: the same verdicts from ``permafrost check``, the webhook and the compiled policies
alone (the operator stopped), their status, and what stays on the webhook.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import yaml
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from conftest import Operator, free_port, start_guarded, stop_guarded
from k8s_harness import ROOT, Cluster, to_yaml, wait_for

LIBRARY = ROOT / "deploy" / "policies"
ADMITTED_KINDS = ("GuardedRelease", "Deployment", "StatefulSet", "DaemonSet")
POLICIES = {
    doc["metadata"]["name"]: doc
    for path in sorted(LIBRARY.glob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
    if doc and doc.get("kind") == "GuardrailPolicy"
}
CREATE_STAGE = sorted(n for n, d in POLICIES.items() if "create" in d["spec"]["stages"])
SAMPLE_SIZE = 24
DIGEST = "@sha256:" + "a" * 64


def corpus() -> list[tuple[str, dict[str, Any]]]:
    """(fixture, body) of every create-stage fixture of a kind judged at admission."""
    found = []
    for path in sorted(LIBRARY.glob("fixtures/*/*.yaml")):
        if path.name.endswith(".context.yaml"):
            continue
        body = yaml.safe_load(path.read_text())
        context_file = path.with_name(path.name.removesuffix(".yaml") + ".context.yaml")
        context = yaml.safe_load(context_file.read_text()) if context_file.exists() else {}
        stage = context.get("stage") or POLICIES[path.parent.name]["spec"]["stages"][0]
        if stage == "create" and body.get("kind") in ADMITTED_KINDS:
            meta = {k: v for k, v in body["metadata"].items() if k != "namespace"}
            found.append((str(path.relative_to(LIBRARY)), {**body, "metadata": meta}))
    return found


# --- generated workloads ---------------------------------------------------------------------

IMAGES = st.sampled_from(
    [
        f"registry.example/shop/web:1.4.2{DIGEST}",
        "registry.example/shop/web:1.4.2",
        f"registry.example/shop/web:latest{DIGEST}",
        f"ghcr.io/permafrost/app{DIGEST}",
        f"docker.io/library/nginx:1.27{DIGEST}",
        "nginx",
        f"registry.example.evil.io/web:1.0{DIGEST}",
        f"registry.example/shop/web:1.0@sha256:{'A' * 64}",
    ]
)
SECURITY = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "runAsNonRoot": st.booleans(),
            "privileged": st.booleans(),
            "readOnlyRootFilesystem": st.booleans(),
        },
    ),
)
LIMITS = st.one_of(
    st.none(),
    st.fixed_dictionaries({}, optional={"cpu": st.just("100m"), "memory": st.just("64Mi")}),
)


@st.composite
def container(draw: st.DrawFn, name: str) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "image": draw(IMAGES)}
    if (security := draw(SECURITY)) is not None:
        body["securityContext"] = security
    if (limits := draw(LIMITS)) is not None:
        body["resources"] = {"limits": limits}
    return body


@st.composite
def workload(draw: st.DrawFn, index: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(ADMITTED_KINDS))
    labels = {"app": f"gen-{index}"}
    containers = [draw(container("main"))]
    if draw(st.booleans()):
        containers.append(draw(container("side")))
    pod: dict[str, Any] = {"containers": containers}
    if draw(st.booleans()):
        pod["initContainers"] = [draw(container("init"))]
    if draw(st.booleans()):
        pod["securityContext"] = {"runAsNonRoot": draw(st.booleans())}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if draw(st.integers(0, 5)) == 0:
            pod[flag] = True
    if draw(st.integers(0, 5)) == 0:
        pod["volumes"] = [{"name": "host", "hostPath": {"path": "/var/run"}}]
    template = {"metadata": {"labels": labels}, "spec": pod}
    name = f"gen-{index}"
    if kind == "GuardedRelease":
        return {
            "apiVersion": "permafrost.dev/v1alpha1",
            "kind": kind,
            "metadata": {"name": name},
            "spec": {"template": template},
        }
    spec: dict[str, Any] = {"selector": {"matchLabels": labels}, "template": template}
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def sample() -> list[dict[str, Any]]:
    """A bounded, reproducible hypothesis sample of workloads (the same on every run)."""
    drawn: list[dict[str, Any]] = []

    @settings(max_examples=1, derandomize=True, database=None, phases=[Phase.generate])
    @given(st.tuples(*(workload(i) for i in range(SAMPLE_SIZE))))
    def draw(workloads: tuple[dict[str, Any], ...]) -> None:
        drawn[:] = list(workloads)

    draw()
    return drawn


# --- verdicts ----------------------------------------------------------------------------------


def check_verdicts(
    cluster: Cluster, documents: Sequence[dict[str, Any]], namespace: str, tmp: pathlib.Path
) -> list[tuple[bool, list[str]]]:
    """(allowed, the Warn rules it fails) of each document, by ``permafrost check``."""
    path = tmp / "inputs.yaml"
    path.write_text("---\n".join(to_yaml(d) for d in documents))
    proc = subprocess.run(
        [sys.executable, "-m", "permafrost", "check", "--stage", "create", "-o", "json",
         "--namespace", namespace, str(path)],
        capture_output=True, text=True, check=False, env=cluster.env,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(proc.stdout)
    assert len(report["inputs"]) == len(documents)
    return [
        (
            i["allowed"],
            sorted(
                f"{r['policy']}/{r['rule']}"
                for r in i["results"]
                if r["outcome"] != "Pass" and r["enforcement"] == "Warn"
            ),
        )
        for i in report["inputs"]
    ]


def admission_verdicts(
    cluster: Cluster, documents: Sequence[dict[str, Any]], namespace: str
) -> list[tuple[bool, list[str], str]]:
    """(allowed, the Warn rules named in its warnings, what it said) of each document, by a
    server-side dry-run create against the apiserver."""
    warned_rules = [
        f"{name}/{rule['name']}"
        for name in CREATE_STAGE
        if POLICIES[name]["spec"]["enforcement"] == "Warn"
        for rule in POLICIES[name]["spec"]["rules"]
    ]
    verdicts = []
    for body in documents:
        proc = cluster.kubectl(
            "create", "--dry-run=server", "-f", "-",
            namespace=namespace, stdin=to_yaml(body), check=False,
        )  # fmt: skip
        warnings = sorted(r for r in warned_rules if f"{r}:" in proc.stderr)
        verdicts.append((proc.returncode == 0, warnings, proc.stderr.strip()))
    return verdicts


def bundled_rules(cluster: Cluster, mode: str) -> str:
    """The bundle of a mode (``enforce``, ``warn``), as text ("" if there is none)."""
    body = cluster.get("validatingadmissionpolicy", f"permafrost-policies-{mode}") or {}
    return json.dumps(body.get("spec") or {})


def policy_status(cluster: Cluster, name: str) -> dict[str, Any]:
    body = cluster.get("guardrailpolicy", name) or {}
    return dict(body.get("status") or {})


def compiled_condition(cluster: Cluster, name: str) -> dict[str, Any]:
    body = cluster.get("guardrailpolicy", name) or {}
    for c in (body.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Compiled" and c.get("observedGeneration") == (
            body.get("metadata") or {}
        ).get("generation"):
            return dict(c)
    return {}


@pytest.fixture
def library(crds: Cluster) -> Iterator[None]:
    crds.kubectl("apply", "-f", str(LIBRARY))
    yield
    crds.kubectl("delete", "-f", str(LIBRARY), "--ignore-not-found", check=False)


@pytest.fixture
def operators(crds: Cluster) -> Iterator[list[Operator]]:
    """Operators a test starts (with start_guarded); stopped and unregistered afterwards."""
    started: list[Operator] = []
    yield started
    for op in started:
        stop_guarded(crds, op)


def test_webhook_check_and_the_compiled_policies_alone_give_the_same_verdicts(
    crds: Cluster,
    namespace: str,
    operator_namespace: str,
    library: None,
    operators: list[Operator],
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
) -> None:
    fixtures = corpus()
    assert len(fixtures) >= 10, "the corpus must exercise admission"
    generated = sample()
    documents = [body for _, body in fixtures] + generated
    labels = [name for name, _ in fixtures] + [
        f"generated {d['kind']} {json.dumps(d['spec'], sort_keys=True)}" for d in generated
    ]

    # 1. Compiled: every create-stage policy of the library is enforced by the apiserver.
    op = start_guarded(crds, namespace, operator_namespace, tmp_path / "compiled.log")
    operators.append(op)
    request.node.operator_log = op.log

    def all_compiled() -> bool:
        return all(
            compiled_condition(crds, n).get("reason") == "CompiledToAdmissionPolicy"
            for n in CREATE_STAGE
        )

    wait_for(all_compiled, timeout=90, interval=0.5, what="the library to be compiled")
    bundles = {}
    for name in CREATE_STAGE:
        status = policy_status(crds, name)
        assert status["enforcedBy"] == "apiserver", (name, status)
        mode = POLICIES[name]["spec"].get("enforcement", "Enforce")
        assert status["admissionPolicy"] == f"permafrost-policies-{mode.lower()}", (name, status)
        vap = crds.get("validatingadmissionpolicy", f"permafrost-policy-{name}")
        assert vap is not None, name
        owner = vap["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"]) == ("GuardrailPolicy", name)
        assert not (vap.get("status") or {}).get("typeChecking", {}).get("expressionWarnings")
        bundles.setdefault(status["admissionPolicy"], []).append(name)
    # One bound policy per mode holds the rules of all the policies of that mode.
    assert sorted(bundles) == ["permafrost-policies-enforce", "permafrost-policies-warn"]
    for bundle, names in bundles.items():
        body = crds.get("validatingadmissionpolicy", bundle)
        assert body is not None, bundle
        assert {o["name"] for o in body["metadata"]["ownerReferences"]} == set(names)
        assert len(body["spec"]["validations"]) == sum(
            len(POLICIES[n]["spec"]["rules"]) for n in names
        )
        assert not (body.get("status") or {}).get("typeChecking", {}).get("expressionWarnings")
        # NB: a request no rule refuses stops at the match conditions (the verdicts below are
        # judged through them).
        assert [c["name"] for c in body["spec"]["matchConditions"]][-1] == "may-refuse"
        for suffix in ("releases", "workloads"):
            assert crds.get("validatingadmissionpolicybinding", f"{bundle}-{suffix}"), suffix
        for name in names:
            assert (
                crds.get("validatingadmissionpolicybinding", f"permafrost-policy-{name}-workloads")
                is None
            )
    for name in set(POLICIES) - set(CREATE_STAGE):
        assert compiled_condition(crds, name).get("reason") == "NoCreateStage", name
        assert "enforcedBy" not in policy_status(crds, name)

    # 2. The compiled policies alone: the operator stopped, its webhooks and fail-safe gone.
    stop_guarded(crds, op)
    operators.remove(op)
    alone = admission_verdicts(crds, documents, namespace)

    # 3. The webhook alone: compilation off (the compiled policies are deleted).
    op = start_guarded(
        crds, namespace, operator_namespace, tmp_path / "webhook.log", ["--no-compile-policies"]
    )
    operators.append(op)
    request.node.operator_log = op.log

    def none_compiled() -> bool:
        return all(
            compiled_condition(crds, n).get("reason") == "CompilationDisabled"
            and crds.get("validatingadmissionpolicy", f"permafrost-policy-{n}") is None
            for n in CREATE_STAGE
        ) and all(crds.get("validatingadmissionpolicy", b) is None for b in bundles)

    wait_for(none_compiled, timeout=60, interval=0.5, what="the compiled policies to go")
    webhook = admission_verdicts(crds, documents, namespace)
    offline = check_verdicts(crds, documents, namespace, tmp_path)

    disagreements = []
    for label, (ok, warned), (vap_ok, vap_warned, vap_said), (
        hook_ok,
        hook_warned,
        hook_said,
    ) in zip(labels, offline, alone, webhook, strict=True):
        # NB: warnings are compared where the object is admitted (a denied request may stop at
        # its first denial, before every warning is said).
        if not (ok == vap_ok == hook_ok) or (ok and not (warned == vap_warned == hook_warned)):
            disagreements.append(
                f"{label}: check {ok} {warned}; compiled alone {vap_ok} {vap_warned} "
                f"({vap_said[:300]}); webhook {hook_ok} {hook_warned} ({hook_said[:300]})"
            )
    assert disagreements == []
    # NB: a test that cannot fail is a defect: both outcomes occur, and every compiled policy
    # denied or warned something with the operator stopped.
    assert {ok for ok, _ in offline} == {True, False}
    said = "\n".join(s for _, _, s in alone)
    for name in CREATE_STAGE:
        assert f"{name}/" in said, f"{name} never judged with the operator down"
    assert "ValidatingAdmissionPolicy 'permafrost-policies-enforce'" in said


def test_what_the_apiserver_cannot_run_stays_on_the_webhook(
    crds: Cluster,
    namespace: str,
    operator_namespace: str,
    operators: list[Operator],
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
) -> None:
    names = {
        "clock": "vap-clock-test",
        "typed": "vap-typed-test",
        "fine": "vap-fine-test",
        "errs": "vap-priority-test",  # NB: after vap-fine-test: bundled second
    }
    rules = {
        # Permafrost's engine only: the apiserver's CEL has no clock.
        "clock": {"name": "r", "expression": "now > timestamp('2000-01-01T00:00:00Z') && "
                  "!(has(object.metadata.labels) && 'team' in object.metadata.labels)",
                  "message": "no team label"},
        # Runs in Permafrost's engine; the apiserver's type check warns (an int is no string).
        "typed": {"name": "r", "expression": "!has(object.spec.replicas) || "
                  "object.spec.replicas != 'three'", "message": "three"},
        "fine": {"name": "r", "expression": "has(object.metadata.labels) && "
                 "'team' in object.metadata.labels", "message": "label it with its team"},
        # Errors where the pod spec names no priority class (no has()): the rule fails.
        "errs": {"name": "r", "expression": "podSpec.priorityClassName != 'system-node-critical'",
                 "message": "not node-critical"},
    }  # fmt: skip
    try:
        for key, name in names.items():
            crds.apply(
                {
                    "apiVersion": "permafrost.dev/v1alpha1",
                    "kind": "GuardrailPolicy",
                    "metadata": {"name": name},
                    "spec": {
                        "stages": ["create"],
                        "match": {"kinds": ["Deployment"]},
                        "rules": [rules[key]],
                    },
                }
            )
        op = start_guarded(crds, namespace, operator_namespace, tmp_path / "operator.log")
        operators.append(op)
        request.node.operator_log = op.log

        def settled() -> dict[str, str]:
            reasons = {k: compiled_condition(crds, n).get("reason", "") for k, n in names.items()}
            return reasons if all(reasons.values()) else {}

        reasons = wait_for(settled, timeout=90, interval=0.5, what="the policies to compile")
        assert reasons == {
            "clock": "ReadsTheClock",
            "typed": "TypeCheckWarnings",
            "fine": "CompiledToAdmissionPolicy",
            "errs": "CompiledToAdmissionPolicy",
        }
        assert policy_status(crds, names["clock"])["enforcedBy"] == "webhook"
        assert crds.get("validatingadmissionpolicy", "permafrost-policy-vap-typed-test") is None
        fine = crds.get("validatingadmissionpolicybinding", "permafrost-policies-enforce-workloads")
        assert fine is not None
        assert fine["spec"]["validationActions"] == ["Deny", "Audit"]
        bundle = json.dumps(crds.get("validatingadmissionpolicy", "permafrost-policies-enforce"))
        assert "vap-fine-test/r: " in bundle
        assert "vap-typed-test/r: " not in bundle
        assert "vap-clock-test/r: " not in bundle

        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": f"reg/web{DIGEST}"}]},
                },
            },
        }
        proc = crds.kubectl(
            "create", "--dry-run=server", "-f", "-",
            namespace=namespace, stdin=to_yaml(deployment), check=False,
        )  # fmt: skip
        assert proc.returncode != 0
        # The compiled one denies from the apiserver, the others from the webhook.
        assert "ValidatingAdmissionPolicy 'permafrost-policies-enforce'" in proc.stderr
        assert "vap-fine-test/r: label it with its team" in proc.stderr

        # The erring rule alone refuses: it errs in the bundle's may-refuse condition, and the
        # request fails there as in the rule (docs/policies.md).
        labelled = {**deployment, "metadata": {"name": "web", "labels": {"team": "shop"}}}
        proc = crds.kubectl(
            "create", "--dry-run=server", "-f", "-",
            namespace=namespace, stdin=to_yaml(labelled), check=False,
        )  # fmt: skip
        assert proc.returncode != 0
        assert "ValidatingAdmissionPolicy 'permafrost-policies-enforce'" in proc.stderr
        assert "resulted in error" in proc.stderr, proc.stderr

        pod = {**deployment["spec"]["template"]["spec"], "priorityClassName": "batch"}
        named = {
            **labelled,
            "spec": {**deployment["spec"], "template": {**deployment["spec"]["template"],
                                                        "spec": pod}},
        }  # fmt: skip
        proc = crds.kubectl(
            "create", "--dry-run=server", "-f", "-",
            namespace=namespace, stdin=to_yaml(named), check=False,
        )  # fmt: skip
        assert proc.returncode != 0
        assert f"{names['clock']}/r: no team label" in proc.stderr, proc.stderr
        assert "permafrost-policies-enforce" not in proc.stderr

        # A change is compiled again; a deletion removes what was compiled.
        crds.kubectl(
            "patch", "guardrailpolicy", names["fine"], "--type=merge",
            "-p", json.dumps({"spec": {"enforcement": "Warn"}}),
        )  # fmt: skip

        def warns() -> bool:
            binding = crds.get(
                "validatingadmissionpolicybinding", "permafrost-policies-warn-workloads"
            )
            return (
                binding is not None
                and binding["spec"]["validationActions"] == ["Warn", "Audit"]
                and compiled_condition(crds, names["fine"]).get("status") == "True"
                and "vap-fine-test/r: " in bundled_rules(crds, "warn")
                and "vap-fine-test/r: " not in bundled_rules(crds, "enforce")
            )

        wait_for(warns, timeout=60, interval=0.5, what="the changed policy to be compiled")
        assert policy_status(crds, names["fine"])["admissionPolicy"] == "permafrost-policies-warn"
        crds.kubectl("delete", "guardrailpolicy", names["fine"])
        wait_for(
            lambda: (
                crds.get("validatingadmissionpolicy", "permafrost-policy-vap-fine-test") is None
                and "vap-fine-test/r: " not in bundled_rules(crds, "warn")
            ),
            timeout=60,
            interval=0.5,
            what="the compiled policy and its bundle to be deleted with its GuardrailPolicy",
        )
    finally:
        for name in names.values():
            crds.kubectl("delete", "guardrailpolicy", name, "--ignore-not-found", check=False)


def sent_to_the_enforced_webhook(port: int) -> float:
    """How many requests the operator's enforced frozen-object webhook decided (its metric)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("permafrost_admission_decisions_total{")
        and 'webhook="frozen-enforced"' in line
    )


def creation_kinds(cluster: Cluster) -> str | None:
    """The enforced webhook's match condition on creations (None: it is sent them all)."""
    config = cluster.get("validatingwebhookconfiguration", "permafrost-frozen-workloads") or {}
    for hook in config.get("webhooks") or []:
        if hook["name"] == "enforced.frozen.permafrost.dev":
            for condition in hook.get("matchConditions") or []:
                if condition["name"] == "could-be-refused-at-creation":
                    return str(condition["expression"])
    return None


def test_the_webhook_leaves_clean_creations_to_the_apiserver_while_it_judges_their_policies(
    crds: Cluster,
    namespace: str,
    operator_namespace: str,
    operators: list[Operator],
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
) -> None:
    """A policy compiled: the apiserver no longer sends the webhook the creations it judges
    (counted by the webhook's own decisions). Edited so that it stays on the webhook: they are
    sent again, and it judges them; deleted: left to the apiserver again."""
    name = "vap-follow-test"
    team = {
        "name": "r",
        "message": "label it with its team",
        "expression": "has(object.metadata.labels) && 'team' in object.metadata.labels",
    }
    clocked = {**team, "expression": "now > timestamp('2000-01-01T00:00:00Z') && "
               + team["expression"]}  # fmt: skip

    def apply(rule: dict[str, str]) -> None:
        crds.apply(
            {
                "apiVersion": "permafrost.dev/v1alpha1",
                "kind": "GuardrailPolicy",
                "metadata": {"name": name},
                "spec": {"stages": ["create"], "match": {"kinds": ["Deployment"]},
                         "rules": [rule]},
            }
        )  # fmt: skip

    def deployment(deployment_name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": deployment_name, "labels": labels},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": deployment_name}},
                "template": {
                    "metadata": {"labels": {"app": deployment_name}},
                    "spec": {"containers": [{"name": "web", "image": f"reg/web{DIGEST}"}]},
                },
            },
        }

    def create(body: dict[str, Any]) -> Any:
        return crds.kubectl(
            "create", "-f", "-", namespace=namespace, stdin=to_yaml(body), check=False
        )

    port = free_port()
    try:
        apply(team)
        op = start_guarded(
            crds, namespace, operator_namespace, tmp_path / "operator.log",
            ["--metrics-port", str(port)],
        )  # fmt: skip
        operators.append(op)
        request.node.operator_log = op.log
        wait_for(
            lambda: compiled_condition(crds, name).get("reason") == "CompiledToAdmissionPolicy",
            timeout=90, interval=0.5, what="the policy to be compiled",
        )  # fmt: skip
        # NB: the webhook is left the kinds of the policies it judges: here none.
        wait_for(
            lambda: (creation_kinds(crds) or "").find("request.kind.kind in []") >= 0,
            timeout=30, interval=0.5, what="the webhook to leave Deployments to the apiserver",
        )  # fmt: skip
        before = sent_to_the_enforced_webhook(port)
        assert create(deployment("clean", {"team": "shop"})).returncode == 0
        refused = create(deployment("unlabelled", {}))
        assert refused.returncode != 0
        assert "ValidatingAdmissionPolicy 'permafrost-policies-enforce'" in refused.stderr
        # NB: each kubectl returned after the apiserver's admission: the count is final.
        assert sent_to_the_enforced_webhook(port) == before

        # Edited to read the clock: the apiserver cannot judge it, the webhook does.
        apply(clocked)
        wait_for(
            lambda: compiled_condition(crds, name).get("reason") == "ReadsTheClock",
            timeout=60, interval=0.5, what="the policy to stay on the webhook",
        )  # fmt: skip
        assert '"Deployment"' in (creation_kinds(crds) or "")
        assert create(deployment("clean-again", {"team": "shop"})).returncode == 0
        refused = create(deployment("unlabelled", {}))
        assert refused.returncode != 0
        assert f"{name}/r: label it with its team" in refused.stderr
        assert "ValidatingAdmissionPolicy" not in refused.stderr
        assert sent_to_the_enforced_webhook(port) == before + 2

        crds.kubectl("delete", "guardrailpolicy", name)
        wait_for(
            lambda: (creation_kinds(crds) or "").find("request.kind.kind in []") >= 0,
            timeout=30, interval=0.5, what="the webhook to be left no policy",
        )  # fmt: skip
    finally:
        crds.kubectl("delete", "guardrailpolicy", name, "--ignore-not-found", check=False)
        for deployment_name in ("clean", "clean-again", "unlabelled"):
            crds.kubectl(
                "delete", "deployment", deployment_name, "--ignore-not-found",
                namespace=namespace, check=False,
            )  # fmt: skip
