"""``deploy/`` as ``kubectl kustomize`` renders it: what it installs, how, and with what rights.

The rendered manifests are checked, not the source files, so kustomize's patches and image
overrides are part of what is tested. The RBAC checks go both ways: every permission granted is
backed by a call in the code (Permafrost's or Kopf's), and every API call ``kube.py`` makes is
covered by a permission, so an unused rule and a missing one both fail here.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import re
import subprocess
import types
from collections.abc import Iterator, Mapping
from typing import Any

import kopf
import pytest
import yaml

import permafrost
from k8s_harness import bin_dirs
from permafrost import cli
from permafrost.guards import admission, webhooks

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NAMESPACE = "permafrost-system"
IMAGE = "ghcr.io/permafrost-dev/permafrost"
KUBECTL = bin_dirs()[0] / "kubectl"
CLUSTER_SCOPED = {
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding",
    "ClusterKopfPeering",
    "GuardrailPolicy",
}
WAVES = {
    "CustomResourceDefinition": "-2",
    "Namespace": "-1",
    "ServiceAccount": "-1",
    "ClusterRole": "-1",
    "ClusterRoleBinding": "-1",
    "Role": "-1",
    "RoleBinding": "-1",
    "ClusterKopfPeering": "0",
    "Deployment": "0",
    "PodDisruptionBudget": "0",
    "Service": "0",
    "NetworkPolicy": "0",
    "ValidatingAdmissionPolicy": "0",
    "ValidatingAdmissionPolicyBinding": "0",
    "MutatingAdmissionPolicy": "0",
    "MutatingAdmissionPolicyBinding": "0",
    "GuardrailPolicy": "1",
}

needs_kubectl = pytest.mark.skipif(
    not KUBECTL.exists(), reason=f"kubectl is not built yet ({KUBECTL}; make binaries)"
)
pytestmark = needs_kubectl


def _load_generator() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("gen_deploy", ROOT / "hack" / "gen_deploy.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_deploy = _load_generator()


@functools.cache
def _rendered() -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        [str(KUBECTL), "kustomize", str(DEPLOY)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


@pytest.fixture
def objects() -> list[dict[str, Any]]:
    return list(_rendered())


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: found {len(found)}"
    return found[0]


def _operator(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(objects, "Deployment", "permafrost")


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = _operator(objects)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return dict(containers[0])


# --- what is installed, and where -------------------------------------------------------------


def test_deploy_installs_every_piece_and_nothing_twice(objects: list[dict[str, Any]]) -> None:
    keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys))
    kinds = {kind for kind, _ in keys}
    assert kinds == set(WAVES)
    for kind, name in [
        ("Namespace", NAMESPACE),
        ("CustomResourceDefinition", "guardedreleases.permafrost.dev"),
        ("CustomResourceDefinition", "guardrailpolicies.permafrost.dev"),
        ("CustomResourceDefinition", "clusterkopfpeerings.kopf.dev"),
        ("CustomResourceDefinition", "kopfpeerings.kopf.dev"),
        ("ClusterKopfPeering", "permafrost"),
        ("ServiceAccount", "permafrost"),
        ("Deployment", "permafrost"),
        ("Service", "permafrost-webhook"),
        ("PodDisruptionBudget", "permafrost"),
        ("NetworkPolicy", "permafrost"),
        ("ValidatingAdmissionPolicy", webhooks.POLICY),
        ("ValidatingAdmissionPolicyBinding", f"{webhooks.POLICY}-managed"),
        ("ValidatingAdmissionPolicyBinding", f"{webhooks.POLICY}-enforced"),
        ("MutatingAdmissionPolicy", admission.SERVICE_GUARD),
        ("MutatingAdmissionPolicyBinding", admission.SERVICE_GUARD),
        ("MutatingAdmissionPolicy", admission.SERVICE_ROUTES),
        ("MutatingAdmissionPolicyBinding", admission.SERVICE_ROUTES),
        ("ValidatingAdmissionPolicy", admission.SERVICE_TYPE),
        ("ValidatingAdmissionPolicyBinding", admission.SERVICE_TYPE),
    ]:
        assert (kind, name) in keys


def test_every_namespaced_object_is_in_the_operator_namespace(
    objects: list[dict[str, Any]],
) -> None:
    for obj in objects:
        where = obj["metadata"].get("namespace")
        if obj["kind"] in CLUSTER_SCOPED:
            assert where is None, f"{obj['kind']} {obj['metadata']['name']} is cluster-scoped"
        else:
            assert where == NAMESPACE, f"{obj['kind']} {obj['metadata']['name']} is in {where}"


def test_every_object_carries_the_argo_cd_sync_wave_of_its_kind(
    objects: list[dict[str, Any]],
) -> None:
    for obj in objects:
        annotations = obj["metadata"].get("annotations") or {}
        assert annotations.get("argocd.argoproj.io/sync-wave") == WAVES[obj["kind"]], (
            f"{obj['kind']} {obj['metadata']['name']}"
        )


def test_objects_of_permafrost_s_own_crds_skip_argo_cd_s_dry_run_until_the_crds_exist(
    objects: list[dict[str, Any]],
) -> None:
    custom = [o for o in objects if o["kind"] in ("ClusterKopfPeering", "GuardrailPolicy")]
    assert len(custom) == 11
    for obj in custom:
        annotations = obj["metadata"]["annotations"]
        assert annotations["argocd.argoproj.io/sync-options"] == (
            "SkipDryRunOnMissingResource=true"
        )
    assert all(
        "argocd.argoproj.io/sync-options" not in (o["metadata"].get("annotations") or {})
        for o in objects
        if o not in custom
    )


def test_the_crds_come_from_crds_unchanged_but_for_the_wave_and_the_label(
    objects: list[dict[str, Any]],
) -> None:
    files = sorted(p for p in (ROOT / "crds").glob("*.yaml") if p.name != "kustomization.yaml")
    committed = [d for p in files for d in yaml.safe_load_all(p.read_text())]
    rendered = {
        o["metadata"]["name"]: o for o in objects if o["kind"] == "CustomResourceDefinition"
    }
    assert sorted(rendered) == sorted(d["metadata"]["name"] for d in committed)
    for crd in committed:
        got = rendered[crd["metadata"]["name"]]
        assert got["spec"] == crd["spec"]
    listed = yaml.safe_load((ROOT / "crds" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == [p.name for p in files]


def test_the_built_in_policies_are_all_installed_and_no_fixture_is(
    objects: list[dict[str, Any]],
) -> None:
    library = sorted(p.stem for p in (DEPLOY / "policies").glob("*.yaml"))
    assert len(library) == 10
    installed = sorted(o["metadata"]["name"] for o in objects if o["kind"] == "GuardrailPolicy")
    assert installed == library
    # NB: not kustomization.yaml, which `kubectl apply -f deploy/policies/` would try to apply.
    assert not (DEPLOY / "policies" / "kustomization.yaml").exists()


# --- RBAC: least privilege ----------------------------------------------------------------------


def _rules(objects: list[dict[str, Any]]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for obj in objects:
        if obj["kind"] in ("ClusterRole", "Role"):
            for rule in obj["rules"]:
                yield f"{obj['kind']} {obj['metadata']['name']}", rule


def test_no_rule_uses_a_wildcard(objects: list[dict[str, Any]]) -> None:
    rules = list(_rules(objects))
    assert rules
    for where, rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            for value in rule.get(field, []):
                assert "*" not in value, f"{where}: {field} {value!r}"
        assert "nonResourceURLs" not in rule, where
        assert rule["verbs"], where


def test_no_rule_grants_escalation_or_impersonation(objects: list[dict[str, Any]]) -> None:
    for where, rule in _rules(objects):
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])
        assert not {"roles", "clusterroles", "rolebindings", "clusterrolebindings"} & set(
            rule["resources"]
        ), where
        assert not {"pods/exec", "pods/attach", "serviceaccounts/token", "nodes/proxy"} & set(
            rule["resources"]
        ), where
        # NB: nodes are only ever listed (the registry check's platforms): no write, no proxy.
        if "nodes" in rule["resources"]:
            assert (rule["resources"], rule["verbs"]) == (["nodes"], ["list"]), where


def test_the_bindings_bind_only_the_operator_service_account(
    objects: list[dict[str, Any]],
) -> None:
    bindings = [o for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert sorted((b["kind"], b["roleRef"]["name"]) for b in bindings) == [
        ("ClusterRoleBinding", "permafrost"),
        ("ClusterRoleBinding", "permafrost-admission"),
        ("RoleBinding", "permafrost"),
    ]
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "permafrost", "namespace": NAMESPACE}
        ]
    assert _operator(objects)["spec"]["template"]["spec"]["serviceAccountName"] == "permafrost"


def test_names_are_pinned_where_the_api_allows(objects: list[dict[str, Any]]) -> None:
    role_admission = _one(objects, "ClusterRole", "permafrost-admission")
    # NB: the policies compiled from GuardrailPolicies are named after them: not pinnable
    # (deploy/operator-guard.yaml limits the operator to names permafrost-*).
    pinned = [r for r in role_admission["rules"] if "resourceNames" in r]
    assert [r for r in role_admission["rules"] if r not in pinned] == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["validatingadmissionpolicies"],
            "verbs": ["get", "create", "patch", "delete"],
        },
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["validatingadmissionpolicybindings"],
            "verbs": ["create", "patch", "delete"],
        },
    ]
    names = {n for rule in pinned for n in rule["resourceNames"]}
    bindings = {
        o["metadata"]["name"]
        for o in objects
        if o["kind"] == "ValidatingAdmissionPolicyBinding"
        and o["spec"]["policyName"] in (webhooks.POLICY, admission.EXEC_POLICY)
    }
    assert names == {
        webhooks.WEBHOOK_CONFIGURATION,
        webhooks.POLICY,
        admission.EXEC_POLICY,
        *bindings,
        admission.SERVICE_GUARD,
        admission.SERVICE_ROUTES,
        admission.SERVICE_TYPE,
    }
    role = _one(objects, "Role", "permafrost")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [webhooks.TLS_SECRET],
            "verbs": ["get", "update"],
        },
        # NB: create cannot name its object; deploy/operator-guard.yaml limits what it creates.
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    ]


def test_secrets_are_granted_only_where_a_namespace_binds_them(
    objects: list[dict[str, Any]],
) -> None:
    """No cluster-wide Secret list, watch or get: a compromised operator cannot read every
    Secret of the cluster (the tokens of kube-system among them)."""
    bound = {o["roleRef"]["name"] for o in objects if o["kind"] == "ClusterRoleBinding"}
    for name in bound:
        for rule in _one(objects, "ClusterRole", name)["rules"]:
            assert "secrets" not in rule["resources"], (name, rule)
    secrets = _one(objects, "ClusterRole", "permafrost-secrets")
    assert secrets["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]}
    ]


def test_the_registry_check_s_reads_are_granted_only_where_it_is_bound(
    objects: list[dict[str, Any]],
) -> None:
    """The ServiceAccounts and nodes the registry check reads are in a ClusterRole of their
    own, which nothing binds by default (the check is off by default): the operator as
    deployed reads neither. Pull secrets come only with permafrost-secrets (get, by name)."""
    role = _one(objects, "ClusterRole", "permafrost-registry-check")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
    ]
    bound = {
        o["roleRef"]["name"] for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")
    }
    assert "permafrost-registry-check" not in bound
    assert "--registry-check" not in " ".join(_container(objects).get("args") or [])


def test_the_operator_guard_names_the_operator_s_service_account(
    objects: list[dict[str, Any]],
) -> None:
    guard = _one(objects, "ValidatingAdmissionPolicy", "permafrost-operator-writes")
    (condition,) = guard["spec"]["matchConditions"]
    account = _one(objects, "ServiceAccount", "permafrost")["metadata"]
    expected = f"system:serviceaccount:{account['namespace']}:{account['name']}"
    assert condition["expression"] == f'request.userInfo.username == "{expected}"'
    binding = _one(objects, "ValidatingAdmissionPolicyBinding", "permafrost-operator-writes")
    assert binding["spec"]["validationActions"] == ["Deny"]
    peering = [
        r
        for r in _one(objects, "ClusterRole", "permafrost")["rules"]
        if "clusterkopfpeerings" in r["resources"] and "patch" in r["verbs"]
    ]
    assert peering == [
        {
            "apiGroups": ["kopf.dev"],
            "resources": ["clusterkopfpeerings"],
            "resourceNames": ["permafrost"],
            "verbs": ["patch"],
        }
    ]


def _source(path: str) -> str:
    if path.startswith("kopf/"):
        return (pathlib.Path(kopf.__file__).parent / path.removeprefix("kopf/")).read_text()
    return (pathlib.Path(permafrost.__file__).parent / path).read_text()


KOPF_WATCH = r"queueing\.watcher\("
# (apiGroup, resource, verb) -> where the code needs it: (file, regular expressions it contains).
# Kopf's watches are a list followed by a watch. A server-side apply that creates its object
# needs "create" as well as "patch".
USES: dict[tuple[str, str, str], tuple[str, tuple[str, ...]]] = {
    ("permafrost.dev", "guardedreleases", "get"): ("kube.py", (r"get_namespaced_custom_object,",)),
    ("permafrost.dev", "guardedreleases", "list"): (
        "handlers.py",
        (r"on\.event\(models\.GROUP, models\.VERSION, models\.PLURAL\)",),
    ),
    ("permafrost.dev", "guardedreleases", "watch"): (
        "handlers.py",
        (r"on\.event\(models\.GROUP, models\.VERSION, models\.PLURAL\)",),
    ),
    ("permafrost.dev", "guardedreleases/status", "patch"): (
        "kube.py",
        (r"patch_namespaced_custom_object_status",),
    ),
    ("permafrost.dev", "guardrailpolicies", "list"): ("kube.py", (r"list_cluster_custom_object",)),
    ("permafrost.dev", "guardrailpolicies/status", "patch"): (
        "kube.py",
        (r"patch_cluster_custom_object_status",),
    ),
    ("admissionregistration.k8s.io", "validatingadmissionpolicies", "get"): (
        "kube.py",
        (r"api\.read_validating_admission_policy,",),
    ),
    **{
        ("admissionregistration.k8s.io", plural, "delete"): (
            "kube.py",
            (rf'"{kind}": "{suffix}"', r'f"delete_\{suffix\}"'),
        )
        for plural, kind, suffix in (
            (
                "validatingadmissionpolicies",
                "ValidatingAdmissionPolicy",
                "validating_admission_policy",
            ),
            (
                "validatingadmissionpolicybindings",
                "ValidatingAdmissionPolicyBinding",
                "validating_admission_policy_binding",
            ),
        )
    },
    ("permafrost.dev", "guardrailpolicies", "watch"): (
        "handlers.py",
        (r"on\.event\(models\.GROUP, models\.VERSION, models\.POLICY_PLURAL\)",),
    ),
    ("apps", "deployments", "get"): ("kube.py", (r"apps\.read_namespaced_deployment,",)),
    ("apps", "deployments", "list"): ("kube.py", (r"apps\.list_namespaced_deployment,",)),
    ("apps", "deployments", "watch"): ("handlers.py", (r'on\.event\("apps", "v1", "deployments"',)),
    ("apps", "deployments", "create"): ("kube.py", (r"apps\.create_namespaced_deployment,",)),
    ("apps", "deployments", "patch"): (
        "kube.py",
        (r'"Deployment": "deployment"', r'f"patch_namespaced_\{suffix\}"'),
    ),
    ("apps", "deployments", "delete"): ("kube.py", (r"apps\.delete_namespaced_deployment,",)),
    ("apps", "deployments/scale", "patch"): ("kube.py", (r"patch_namespaced_deployment_scale,",)),
    **{
        ("apps", plural, verb): (
            "kube.py",
            (rf'"{kind}": "{suffix}"', rf'f"{verb_method}_namespaced_\{{suffix\}}"'),
        )
        for plural, kind, suffix in (
            ("statefulsets", "StatefulSet", "stateful_set"),
            ("daemonsets", "DaemonSet", "daemon_set"),
        )
        for verb, verb_method in (("get", "read"), ("list", "list"), ("patch", "patch"))
    },
    ("apps", "statefulsets", "watch"): (
        "handlers.py",
        (r'on\.event\("apps", "v1", "statefulsets"',),
    ),
    ("apps", "daemonsets", "watch"): ("handlers.py", (r'on\.event\("apps", "v1", "daemonsets"',)),
    ("apps", "replicasets", "list"): ("kube.py", (r"apps\.list_namespaced_replica_set\b",)),
    ("", "pods", "list"): ("kube.py", (r"core\.list_namespaced_pod\b",)),
    ("", "pods", "watch"): ("handlers.py", (r'on\.event\(\s*"",\s*"v1",\s*"pods",',)),
    ("", "pods", "patch"): ("kube.py", (r"core\.patch_namespaced_pod,",)),
    ("", "pods", "delete"): ("kube.py", (r"core\.delete_namespaced_pod,",)),
    ("", "configmaps", "get"): ("kube.py", (r"core\.read_namespaced_config_map",)),
    ("", "configmaps", "create"): ("kube.py", (r"core\.create_namespaced_config_map",)),
    ("", "secrets", "get"): ("kube.py", (r"core\.read_namespaced_secret",)),
    ("", "serviceaccounts", "get"): ("kube.py", (r"core\.read_namespaced_service_account,",)),
    ("", "nodes", "list"): ("kube.py", (r"core\.list_node\)",)),
    ("", "secrets", "create"): ("kube.py", (r"core\.create_namespaced_secret",)),
    ("", "secrets", "update"): ("kube.py", (r"core\.replace_namespaced_secret,",)),
    ("", "services", "list"): ("kube.py", (r"core\.list_namespaced_service,",)),
    ("", "services", "watch"): ("handlers.py", (r'on\.event\("", "v1", "services"\)',)),
    ("", "services", "create"): ("kube.py", (r"core\.create_namespaced_service,",)),
    ("", "services", "patch"): ("kube.py", (r"core\.patch_namespaced_service,",)),
    ("batch", "jobs", "get"): ("kube.py", (r"batch\.read_namespaced_job,",)),
    ("batch", "jobs", "create"): ("kube.py", (r"batch\.create_namespaced_job,",)),
    ("discovery.k8s.io", "endpointslices", "list"): (
        "kube.py",
        (r"discovery\.list_namespaced_endpoint_slice,",),
    ),
    ("", "namespaces", "list"): ("kube.py", (r"core\.list_namespace\)",)),
    ("authentication.k8s.io", "selfsubjectreviews", "create"): (
        "kube.py",
        (r"api\.create_self_subject_review,",),
    ),
    ("", "namespaces", "watch"): ("handlers.py", (r'on\.event\("", "v1", "namespaces"\)',)),
    ("", "events", "create"): ("kube.py", (r"core\.create_namespaced_event,",)),
    ("kopf.dev", "clusterkopfpeerings", "list"): (
        "kopf/_core/engines/peering.py",
        (r"references\.CLUSTER_PEERINGS_K",),
    ),
    ("kopf.dev", "clusterkopfpeerings", "watch"): (
        "kopf/_core/engines/peering.py",
        (r"references\.CLUSTER_PEERINGS_K",),
    ),
    ("kopf.dev", "clusterkopfpeerings", "patch"): (
        "kopf/_core/engines/peering.py",
        (r"patching\.patch_obj\(",),
    ),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"): (
        "kopf/_core/reactor/observation.py",
        (r"wait_for\(references\.CRDS\)", KOPF_WATCH),
    ),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"): (
        "kopf/_core/reactor/observation.py",
        (r"wait_for\(references\.CRDS\)", KOPF_WATCH),
    ),
    **{
        ("admissionregistration.k8s.io", plural, verb): (
            "kube.py",
            (rf'"{kind}": "{suffix}"', r"application/apply-patch\+yaml"),
        )
        for plural, kind, suffix in (
            (
                "validatingwebhookconfigurations",
                "ValidatingWebhookConfiguration",
                "validating_webhook_configuration",
            ),
            (
                "validatingadmissionpolicies",
                "ValidatingAdmissionPolicy",
                "validating_admission_policy",
            ),
            (
                "validatingadmissionpolicybindings",
                "ValidatingAdmissionPolicyBinding",
                "validating_admission_policy_binding",
            ),
            ("mutatingadmissionpolicies", "MutatingAdmissionPolicy", "mutating_admission_policy"),
            (
                "mutatingadmissionpolicybindings",
                "MutatingAdmissionPolicyBinding",
                "mutating_admission_policy_binding",
            ),
        )
        for verb in ("create", "patch")
    },
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "get"): (
        "kube.py",
        (r"api\.read_validating_webhook_configuration,",),
    ),
}


def _granted(objects: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for _, rule in _rules(objects)
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_every_permission_granted_is_used_by_the_code(objects: list[dict[str, Any]]) -> None:
    granted = _granted(objects)
    assert granted - set(USES) == set(), "granted, but no use is known: remove the rule"
    assert set(USES) - granted == set(), "used by the code, but not granted"
    for permission, (path, patterns) in USES.items():
        text = _source(path)
        for pattern in patterns:
            assert re.search(pattern, text), f"{permission}: {path} no longer has /{pattern}/"


def test_every_api_call_of_the_kube_adapter_is_covered_by_a_permission() -> None:
    text = _source("kube.py")
    calls = set(re.findall(r"\b(?:c|clients\(\))\.(?:core|apps|custom|batch)\.(\w+)", text))
    calls |= {f"{verb}_namespaced_{{suffix}}" for verb in re.findall(r'f"(\w+)_namespaced_', text)}
    assert calls
    covered = " ".join(p for _, patterns in USES.values() for p in patterns)
    # NB: the start-up check of `permafrost run` lists GuardedReleases (granted: list), in one
    # namespace with -n; the Events of a release are read only by `permafrost history`, which runs
    # with a person's credentials, never the operator's.
    covered += " list_namespaced_custom_object"
    calls -= {"list_namespaced_event"}
    for call in calls:
        assert re.escape(call).replace("\\", "") in covered.replace("\\", ""), (
            f"kube.py calls {call}: which permission does it need? (add it to rbac.yaml, "
            "USES here and docs/install.md)"
        )


def test_docs_install_explains_every_rule(objects: list[dict[str, Any]]) -> None:
    text = (ROOT / "docs" / "install.md").read_text()
    for group, resource, verb in sorted(_granted(objects)):
        rows = [
            line
            for line in text.splitlines()
            if line.startswith("|") and f"`{resource}`" in line and f"`{group or 'core'}`" in line
        ]
        assert rows, f"docs/install.md has no table row for {resource} ({group or 'core'})"
        assert any(re.search(rf"\b{verb}\b", line) for line in rows), (
            f"docs/install.md does not say why {verb} {resource} ({group or 'core'})"
        )


# --- the operator's Deployment ---------------------------------------------------------------


def test_the_operator_runs_two_replicas_spread_over_nodes(objects: list[dict[str, Any]]) -> None:
    deployment = _operator(objects)
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert (
        spread["kubernetes.io/hostname"]["labelSelector"]["matchLabels"]
        == (deployment["spec"]["selector"]["matchLabels"])
    )
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    pdb = _one(objects, "PodDisruptionBudget", "permafrost")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_the_operator_pod_is_locked_down(objects: list[dict[str, Any]]) -> None:
    pod = _operator(objects)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    container = _container(objects)
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert not security.get("privileged")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]  # the webhook's certificate files
    assert all("hostPath" not in v for v in volumes.values())
    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def test_the_operator_image_is_the_release_of_this_version(objects: list[dict[str, Any]]) -> None:
    assert _container(objects)["image"] == f"{IMAGE}:{permafrost.__version__}"
    images = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["images"]
    assert images == [{"name": IMAGE, "newTag": permafrost.__version__}]


def test_the_operator_flags_are_what_permafrost_run_accepts(objects: list[dict[str, Any]]) -> None:
    container = _container(objects)
    assert "command" not in container  # the image's ENTRYPOINT is permafrost
    args = cli._build_parser().parse_args(container["args"])
    assert args.command == "run"
    assert args.namespace == []
    assert args.peering == _one(objects, "ClusterKopfPeering", "permafrost")["metadata"]["name"]
    assert args.admission is True
    assert args.operator_namespace == NAMESPACE
    # NB: the defaults are what hack/gen_deploy.py assumes for the fail-safe policy.
    assert args.exempt_user is None
    assert args.break_glass_group is None
    assert args.tls_secret is None
    assert args.tls_dir is None
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.metrics_port == ports["metrics"]
    assert args.webhook_listen == f"0.0.0.0:{ports['webhook']}"
    assert args.liveness == f"http://0.0.0.0:{ports['health']}/healthz"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["tcpSocket"] == {"port": "webhook"}
    namespace, _, rest = args.webhook_service.partition("/")
    name, _, port = rest.partition(":")
    service = _one(objects, "Service", name)
    assert namespace == service["metadata"]["namespace"] == NAMESPACE
    assert service["spec"]["selector"] == _operator(objects)["spec"]["selector"]["matchLabels"]
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        (int(port), "webhook")
    ]


def test_the_network_policy_admits_only_the_served_ports_and_reaches_apiserver_and_dns(
    objects: list[dict[str, Any]],
) -> None:
    policy = _one(objects, "NetworkPolicy", "permafrost")
    assert (
        policy["spec"]["podSelector"]["matchLabels"]
        == (_operator(objects)["spec"]["selector"]["matchLabels"])
    )
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    ingress = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ingress == {p["name"] for p in _container(objects)["ports"]}
    egress = {
        (p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]
    }
    assert egress == {(443, "TCP"), (6443, "TCP"), (53, "UDP"), (53, "TCP")}


# --- the fail-safe policy is generated ------------------------------------------------------


def test_the_committed_admission_policy_is_what_the_generator_makes(
    objects: list[dict[str, Any]],
) -> None:
    text = (DEPLOY / "admission-policy.yaml").read_text()
    assert text == gen_deploy.render_policy(), "stale: run .venv/bin/python hack/gen_deploy.py"
    assert gen_deploy.main(["--check"]) == 0
    policy = _one(objects, "ValidatingAdmissionPolicy", webhooks.POLICY)
    exempt = policy["spec"]["matchConditions"][0]["expression"]
    account = _one(objects, "ServiceAccount", "permafrost")
    assert f"system:serviceaccount:{NAMESPACE}:{account['metadata']['name']}" in exempt


def test_check_exits_1_with_a_diff_and_writes_nothing_when_the_policy_is_stale(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "admission-policy.yaml"
    stale.write_text(
        gen_deploy.render_policy().replace("failurePolicy: Fail", "failurePolicy: Ignore")
    )
    monkeypatch.setattr(gen_deploy, "POLICY_PATH", stale)

    assert gen_deploy.main(["--check"]) == 1

    out = capsys.readouterr().out
    assert "-  failurePolicy: Ignore\n" in out
    assert "+  failurePolicy: Fail\n" in out
    assert "failurePolicy: Ignore" in stale.read_text()
    assert gen_deploy.main([]) == 0
    assert stale.read_text() == gen_deploy.render_policy()
