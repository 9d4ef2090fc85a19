"""Permafrost's CRDs in the real apiserver: installed, and refusing what they must refuse.

The CRDs (GuardedRelease, GuardrailPolicy) are applied once per module and left installed: they
are cluster-wide, and deleting one would delete every object of its kind in the cluster.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from conftest import wait_established
from k8s_harness import ROOT, Cluster, to_yaml, wait_for
from permafrost import models

CRD_FILE = ROOT / "crds" / "guardedrelease.yaml"
CRD_NAME = f"{models.PLURAL}.{models.GROUP}"
POLICY_CRD_FILE = ROOT / "crds" / "guardrailpolicy.yaml"
POLICY_CRD_NAME = f"{models.POLICY_PLURAL}.{models.GROUP}"
HEX64 = "0123456789abcdef" * 4
PINNED = f"registry.example/web@sha256:{HEX64}"


def release(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


def template(*containers: dict[str, Any], **pod_spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": list(containers), **pod_spec},
    }


def container(image: str, name: str = "web") -> dict[str, Any]:
    return {"name": name, "image": image}


def patch_status(
    cluster: Cluster, namespace: str, name: str, status: dict[str, Any], *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """A merge patch of the status subresource, as the operator writes it."""
    patch = json.dumps({"status": status})
    return cluster.kubectl(
        "patch", "guardedrelease", name, "--subresource=status", "--type=merge", "-p", patch,
        namespace=namespace, check=check,
    )  # fmt: skip


@pytest.fixture(scope="module")
def served_crd(cluster: Cluster) -> Cluster:
    """The cluster with the committed CRD installed and its current rules in force."""
    # NB: --force-conflicts: another field manager may have applied an older version.
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    wait_established(cluster, f"crd/{CRD_NAME}")

    # NB: an updated CRD is Established at once, but the apiserver swaps in the new schema
    # asynchronously; wait until a release with an unpinned image is refused.
    def unpinned_refused() -> str | None:
        probe = release("probe", {"template": template(container("nginx:1.27"))})
        proc = cluster.kubectl(
            "create", "--dry-run=server", "-f", "-",
            namespace="default", stdin=to_yaml(probe), check=False,
        )  # fmt: skip
        return proc.stderr if "is not pinned by digest" in proc.stderr else None

    wait_for(unpinned_refused, timeout=30, interval=0.5, what="the CRD's rules to be served")
    return cluster


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        pytest.param(
            {"template": template(container("nginx:1.27"))},
            "spec.template.spec.containers[0].image",
            'spec.template.spec.containers[web].image "nginx:1.27" is not pinned by digest: '
            "use name@sha256:<64 hex>",
            id="image-pinned-by-tag-only",
        ),
        pytest.param(
            {"template": template(container("nginx@sha256:abc123"))},
            "spec.template.spec.containers[0].image",
            'spec.template.spec.containers[web].image "nginx@sha256:abc123" is not pinned',
            id="image-with-a-short-digest",
        ),
        pytest.param(
            {
                "template": template(
                    container(PINNED), initContainers=[container("busybox", "init")]
                )
            },
            "spec.template.spec.initContainers[0].image",
            'spec.template.spec.initContainers[init].image "busybox" is not pinned by digest',
            id="init-container-not-pinned",
        ),
        pytest.param(
            {"template": template()},
            "spec.template.spec.containers",
            "should have at least 1 items",
            id="no-containers",
        ),
        pytest.param(
            {"replicas": -1, "template": template(container(PINNED))},
            "spec.replicas",
            "should be greater than or equal to 0",
            id="negative-replicas",
        ),
    ],
)
def test_the_apiserver_rejects_an_invalid_release_naming_the_field(
    served_crd: Cluster, namespace: str, spec: dict[str, Any], field: str, message: str
) -> None:
    proc = served_crd.apply(release("bad", spec), namespace=namespace, check=False)

    assert proc.returncode != 0
    assert f"{field}: Invalid value" in proc.stderr
    assert message in proc.stderr
    assert served_crd.get("guardedrelease", "bad", namespace=namespace) is None


def test_strict_apply_rejects_an_unknown_spec_field(served_crd: Cluster, namespace: str) -> None:
    manifest = release("typo", {"replica": 3, "template": template(container(PINNED))})

    proc = served_crd.kubectl(
        "apply", "--validate=strict", "-f", "-",
        namespace=namespace, stdin=to_yaml(manifest), check=False,
    )  # fmt: skip

    assert proc.returncode != 0
    assert 'unknown field "spec.replica"' in proc.stderr
    assert served_crd.get("guardedrelease", "typo", namespace=namespace) is None


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(f"registry.example/web@sha512:{HEX64 * 2}", id="sha512-digest"),
        pytest.param(f"reg.example/a:1.2@sha256:{HEX64}", id="tag-before-the-digest"),
    ],
)
def test_the_apiserver_accepts_an_image_pinned_by_digest(
    served_crd: Cluster, namespace: str, image: str
) -> None:
    served_crd.apply(release("web", {"template": template(container(image))}), namespace=namespace)

    obj = served_crd.get("guardedrelease", "web", namespace=namespace)
    assert obj["spec"]["template"]["spec"]["containers"][0]["image"] == image


def test_the_apiserver_defaults_a_release_the_way_the_model_does(
    served_crd: Cluster, namespace: str
) -> None:
    spec = {
        "template": template(container(PINNED)),
        "service": {"name": "web", "ports": [{"port": 80, "targetPort": "http"}]},
    }
    served_crd.apply(release("web", spec), namespace=namespace)

    stored = served_crd.get("guardedrelease", "web", namespace=namespace)["spec"]
    expected = models.GuardedReleaseSpec.model_validate(spec).to_json()
    expected.pop("configRefs")  # NB: empty list: not defaulted by the CRD, the same to the model
    assert expected["rollout"].pop("gates") == []  # NB: the same
    assert stored == expected


def test_a_valid_release_is_listed_with_the_printer_columns(
    served_crd: Cluster, namespace: str
) -> None:
    spec = {"replicas": 3, "template": template(container(PINNED))}
    served_crd.apply(release("web", spec), namespace=namespace)
    status = {
        "observedGeneration": 1,
        "desiredRevision": "web-7f9c",
        "stableRevision": "web-1a2b",
        "phase": "Progressing",
        "readyReplicas": "2/3",
    }
    patch_status(served_crd, namespace, "web", status)

    lines = served_crd.kubectl("get", "grel", namespace=namespace).stdout.splitlines()

    assert lines[0].split() == ["NAME", "DESIRED", "STABLE", "PHASE", "READY", "AGE"]
    assert lines[1].split()[:5] == ["web", "web-7f9c", "web-1a2b", "Progressing", "2/3"]
    assert len(lines) == 2


def test_the_status_is_validated_and_keeps_kopfs_bookkeeping(
    served_crd: Cluster, namespace: str
) -> None:
    served_crd.apply(release("web", {"template": template(container(PINNED))}), namespace=namespace)
    revision = {
        "name": "web-1",
        "hash": "1",
        "outcome": "Vanished",
        "createdAt": "2025-01-01T00:00:00Z",
    }

    bad = patch_status(served_crd, namespace, "web", {"revisions": [revision]}, check=False)
    patch_status(served_crd, namespace, "web", {"phase": "Stable", "kopf": {"progress": {}}})

    assert bad.returncode != 0
    assert "status.revisions[0].outcome: Unsupported value" in bad.stderr
    status = served_crd.get("guardedrelease", "web", namespace=namespace)["status"]
    assert status == {"phase": "Stable", "kopf": {"progress": {}}}


def test_the_committed_crd_is_what_the_cluster_serves(served_crd: Cluster) -> None:
    served = served_crd.get("crd", CRD_NAME)
    committed = yaml.safe_load(CRD_FILE.read_text())
    served_version = served["spec"]["versions"][0]
    committed_version = committed["spec"]["versions"][0]
    assert served_version["schema"] == committed_version["schema"]
    assert served["spec"]["names"] == committed["spec"]["names"]


# --- GuardrailPolicy ---------------------------------------------------------------------------


def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.POLICY_KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


def requirement(operator: str, values: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"key": "tier", "operator": operator}
    if values is not None:
        out["values"] = values
    return out


RULE = {"name": "pinned", "expression": "true"}
VALID_POLICY = {
    "stages": ["build", "create"],
    "enforcement": "Warn",
    "match": {
        "namespaceSelector": {"matchLabels": {"team": "shop"}},
        "objectSelector": {"matchExpressions": [requirement("In", ["web"]), requirement("Exists")]},
        "kinds": ["GuardedRelease"],
    },
    "rules": [RULE, {"name": "small", "expression": "true", "messageExpression": "'too big'"}],
}


@pytest.fixture(scope="module")
def served_policy_crd(cluster: Cluster) -> Cluster:
    """The cluster with the committed GuardrailPolicy CRD installed and its rules in force."""
    # NB: not in conftest's crds fixture (yet); applied here, like served_crd above.
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(POLICY_CRD_FILE))
    wait_established(cluster, f"crd/{POLICY_CRD_NAME}")

    # NB: the schema is swapped in asynchronously; wait until the CEL rule on selectors answers.
    def selector_rule_served() -> str | None:
        probe = policy(
            "probe",
            {
                **VALID_POLICY,
                "match": {"objectSelector": {"matchExpressions": [requirement("In")]}},
            },
        )
        proc = cluster.kubectl(
            "create", "--dry-run=server", "-f", "-", stdin=to_yaml(probe), check=False
        )
        return proc.stderr if "must be a non-empty list" in proc.stderr else None

    wait_for(selector_rule_served, timeout=30, interval=0.5, what="the policy CRD to be served")
    return cluster


@pytest.fixture
def policy_name(served_policy_crd: Cluster) -> Iterator[str]:
    """A fresh policy name; the policy (cluster-scoped: no namespace cleans it up) is deleted."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    served_policy_crd.kubectl(
        "delete", "guardrailpolicy", name, "--ignore-not-found", "--wait=false", check=False
    )


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        pytest.param(
            {**VALID_POLICY, "stages": ["build", "deploy"]},
            'spec.stages[1]: Unsupported value: "deploy"',
            'supported values: "build", "promote", "create"',
            id="unknown-stage",
        ),
        pytest.param(
            {**VALID_POLICY, "stages": ["build", "build"]},
            'spec.stages[1]: Duplicate value: "build"',
            "",
            id="duplicate-stage",
        ),
        pytest.param(
            {**VALID_POLICY, "enforcement": "Block"},
            'spec.enforcement: Unsupported value: "Block"',
            'supported values: "Enforce", "Warn", "Audit"',
            id="unknown-enforcement",
        ),
        pytest.param(
            {**VALID_POLICY, "rules": [RULE, {**RULE, "expression": "false"}]},
            "spec.rules[1]: Duplicate value",
            '"name":"pinned"',
            id="duplicate-rule-name",
        ),
        pytest.param(
            {**VALID_POLICY, "rules": []},
            "spec: Required value",
            "a policy needs rules, verifyImages or both",
            id="no-rules",
        ),
        pytest.param(
            {key: value for key, value in VALID_POLICY.items() if key != "stages"},
            "spec.stages: Required value",
            "",
            id="no-stages",
        ),
        pytest.param(
            {**VALID_POLICY, "rules": [{**RULE, "name": "Pinned_Image"}]},
            "spec.rules[0].name: Invalid value",
            "should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
            id="rule-name-not-a-dns-label",
        ),
        pytest.param(
            {**VALID_POLICY, "match": {"objectSelector": {"matchExpressions": [
                requirement("Exists"), requirement("In")]}}},
            "spec.match.objectSelector.matchExpressions[1].values: Invalid value",
            "spec.match.objectSelector.matchExpressions[*].values must be a non-empty list when "
            'the operator is In (key "tier")',
            id="in-without-values",
        ),
        pytest.param(
            {**VALID_POLICY, "match": {"namespaceSelector": {"matchExpressions": [
                requirement("NotIn", [])]}}},
            "spec.match.namespaceSelector.matchExpressions[0].values: Invalid value",
            "spec.match.namespaceSelector.matchExpressions[*].values must be a non-empty list "
            "when the operator is NotIn",
            id="notin-with-empty-values",
        ),
        pytest.param(
            {**VALID_POLICY, "match": {"objectSelector": {"matchExpressions": [
                requirement("DoesNotExist", ["web"])]}}},
            "spec.match.objectSelector.matchExpressions[0].values: Invalid value",
            "spec.match.objectSelector.matchExpressions[*].values must be absent when the "
            "operator is DoesNotExist",
            id="doesnotexist-with-values",
        ),
        pytest.param(
            {**VALID_POLICY, "verifyImages": [{"name": "ci", "images": ["r.example/**"],
                "keys": ["k"], "attestations": [{"policy": "build", "policyDigest": "sha256:x"}]}]},
            "spec.verifyImages[0].attestations[0].policyDigest: Invalid value",
            "should match '^sha256:[a-f0-9]{64}$'",
            id="attestation-policy-digest-not-a-digest",
        ),
        pytest.param(
            {**VALID_POLICY, "verifyImages": [{"name": "ci", "images": ["r.example/**"],
                "keys": ["k"], "attestations": [{"keys": ["k"]}]}]},
            "spec.verifyImages[0].attestations[0].policy: Required value",
            "",
            id="attestation-without-policy",
        ),
    ],
)  # fmt: skip
def test_the_apiserver_rejects_an_invalid_policy_naming_the_field(
    served_policy_crd: Cluster, policy_name: str, spec: dict[str, Any], error: str, message: str
) -> None:
    proc = served_policy_crd.apply(policy(policy_name, spec), check=False)

    assert proc.returncode != 0
    assert error in proc.stderr
    assert message in proc.stderr
    assert served_policy_crd.get("guardrailpolicy", policy_name) is None


def test_a_valid_policy_is_accepted_and_listed_with_the_printer_columns(
    served_policy_crd: Cluster, policy_name: str
) -> None:
    served_policy_crd.apply(policy(policy_name, VALID_POLICY))

    lines = served_policy_crd.kubectl("get", "grp", policy_name).stdout.splitlines()

    assert lines[0].split() == ["NAME", "STAGES", "ENFORCEMENT", "ENFORCED", "BY", "AGE"]
    assert lines[1].split()[:3] == [policy_name, '["build","create"]', "Warn"]
    assert len(lines) == 2
    stored = served_policy_crd.get("guardrailpolicy", policy_name)["spec"]
    expected = models.GuardrailPolicySpec.model_validate(VALID_POLICY).to_json()
    assert expected.pop("verifyImages") == []  # NB: empty list: not defaulted by the CRD
    assert stored == expected


def test_the_apiserver_defaults_a_policy_the_way_the_model_does(
    served_policy_crd: Cluster, policy_name: str
) -> None:
    spec = {"stages": ["promote"], "rules": [RULE]}
    served_policy_crd.apply(policy(policy_name, spec))

    stored = served_policy_crd.get("guardrailpolicy", policy_name)["spec"]
    expected = models.GuardrailPolicySpec.model_validate(spec).to_json()
    assert expected.pop("verifyImages") == []  # NB: empty list: not defaulted by the CRD
    assert stored == expected
    assert stored["enforcement"] == "Enforce"
    assert stored["match"] == {}


def test_a_policy_is_cluster_scoped(
    served_policy_crd: Cluster, policy_name: str, namespace: str
) -> None:
    created = served_policy_crd.create(policy(policy_name, VALID_POLICY), namespace=namespace)

    assert created.returncode == 0
    obj = served_policy_crd.get("guardrailpolicy", policy_name)
    assert "namespace" not in obj["metadata"]
    lines = served_policy_crd.kubectl("get", "grp", "-A").stdout.splitlines()
    assert lines[0].split()[:2] == ["NAME", "STAGES"]  # no NAMESPACE column
    assert policy_name in {line.split()[0] for line in lines[1:]}
    crd = served_policy_crd.get("crd", POLICY_CRD_NAME)
    assert crd["spec"]["scope"] == "Cluster"


def test_the_policy_status_is_a_subresource_that_keeps_what_the_operator_writes(
    served_policy_crd: Cluster, policy_name: str
) -> None:
    served_policy_crd.apply(policy(policy_name, VALID_POLICY))
    status = {"compiled": True, "rules": [{"name": "pinned", "cost": 3}]}

    served_policy_crd.kubectl(
        "patch", "guardrailpolicy", policy_name, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip
    # NB: through the main resource, status is ignored (the subresource is enabled).
    served_policy_crd.kubectl(
        "patch", "guardrailpolicy", policy_name, "--type=merge",
        "-p", json.dumps({"status": {"compiled": False}}),
    )  # fmt: skip

    assert served_policy_crd.get("guardrailpolicy", policy_name)["status"] == status


def test_the_committed_policy_crd_is_what_the_cluster_serves(served_policy_crd: Cluster) -> None:
    served = served_policy_crd.get("crd", POLICY_CRD_NAME)
    committed = yaml.safe_load(POLICY_CRD_FILE.read_text())
    assert served["spec"]["versions"][0]["schema"] == committed["spec"]["versions"][0]["schema"]
    assert served["spec"]["names"] == committed["spec"]["names"]
    assert served["spec"]["scope"] == committed["spec"]["scope"] == "Cluster"
