"""What Permafrost creates: bounded names, revision Deployments, config snapshots, Services."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from permafrost import models
from permafrost.releases import manifests

RELEASE = manifests.ReleaseRef(name="checkout", namespace="shop", uid="5d1f3c2e-uid")
HASH = "7f3c9a1e00"
OTHER_HASH = "2b81d0c4ff"
IMAGE = "reg.example/shop/checkout@sha256:" + "a" * 64
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and LABEL_VALUE.fullmatch(value) is not None


def spec(**changes: Any) -> models.GuardedReleaseSpec:
    fields: dict[str, Any] = {
        "replicas": 3,
        "template": {
            "metadata": {"labels": {"app": "checkout"}},
            "spec": {"containers": [{"name": "web", "image": IMAGE}]},
        },
        "rollout": models.RolloutSpec(progress_deadline_seconds=90),
    }
    return models.GuardedReleaseSpec(**{**fields, **changes})


def deployment(**changes: Any) -> dict[str, Any]:
    return manifests.revision_deployment(
        release=RELEASE, spec=spec(**changes), revision=HASH, replicas=3
    )


LONG_NAMES = [
    pytest.param("checkout", id="a-short-name"),
    pytest.param("a" * 52, id="a-name-that-just-fits-with-the-hash"),
    pytest.param("a" * 53, id="a-name-one-character-too-long"),
    pytest.param("b" * 63, id="a-name-of-63-characters"),
    pytest.param("c" * 253, id="a-name-of-253-characters"),
    pytest.param("x" * 42 + "-" + "y" * 60, id="a-name-whose-cut-lands-on-a-dash"),
    pytest.param("team-" * 50 + "checkout", id="a-name-of-many-dashed-words"),
    pytest.param("shop.checkout", id="a-dotted-name"),
]


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("release", LONG_NAMES)
def test_a_revision_name_is_a_dns_label_ending_in_its_hash(release: str) -> None:
    name = manifests.revision_name(release, HASH)
    assert len(name) <= 63
    assert DNS_LABEL.fullmatch(name)
    assert name.endswith(f"-{HASH}")
    assert "--" not in name.removesuffix(f"-{HASH}")[-10:]


@pytest.mark.parametrize("release", LONG_NAMES)
def test_a_revision_name_is_unique_per_hash(release: str) -> None:
    assert manifests.revision_name(release, HASH) != manifests.revision_name(release, OTHER_HASH)


@pytest.mark.parametrize(
    "release",
    [p for p in LONG_NAMES if len(p.values[0]) > 52],  # type: ignore[arg-type]
)
def test_long_release_names_with_a_common_prefix_get_distinct_revision_names(
    release: str,
) -> None:
    sibling = release[:-1] + ("z" if release[-1] != "z" else "q")
    assert manifests.revision_name(release, HASH) != manifests.revision_name(sibling, HASH)
    assert manifests.release_label(release) != manifests.release_label(sibling)


def test_a_dotted_release_name_and_its_dashed_twin_get_distinct_revision_names() -> None:
    dotted, dashed = (manifests.revision_name(n, HASH) for n in ("shop.checkout", "shop-checkout"))
    assert dotted != dashed
    assert DNS_LABEL.fullmatch(dotted)
    assert dashed == f"shop-checkout-{HASH}"


def test_a_short_release_name_is_used_as_is() -> None:
    assert manifests.revision_name("checkout", HASH) == f"checkout-{HASH}"
    assert manifests.release_label("checkout") == "checkout"
    assert manifests.bounded("checkout") == "checkout"


@pytest.mark.parametrize(
    "release", [*LONG_NAMES, pytest.param("shop.checkout." * 20, id="a-long-dotted-name")]
)
def test_the_release_label_is_a_valid_label_value(release: str) -> None:
    assert is_label_value(manifests.release_label(release))


@pytest.mark.parametrize(
    ("source", "limit"),
    [
        pytest.param("checkout-config", 253, id="a-short-source"),
        pytest.param("c" * 253, 253, id="a-source-of-the-longest-allowed-name"),
    ],
)
def test_a_snapshot_name_is_the_source_name_and_the_hash_within_253_characters(
    source: str, limit: int
) -> None:
    name = manifests.snapshot_name(source, HASH)
    assert len(name) <= limit
    assert name.endswith(f"-{HASH}")
    assert manifests.snapshot_name(source, HASH) != manifests.snapshot_name(source, OTHER_HASH)


def test_a_short_snapshot_name_is_the_source_dash_hash() -> None:
    assert manifests.snapshot_name("checkout-config", HASH) == f"checkout-config-{HASH}"


@pytest.mark.parametrize("release", LONG_NAMES)
def test_the_selector_of_a_revision_is_its_release_and_revision_labels(release: str) -> None:
    selector = manifests.selector(release, HASH)
    assert selector == {
        "permafrost.dev/release": manifests.release_label(release),
        "permafrost.dev/revision": HASH,
    }
    assert all(is_label_value(v) for v in selector.values())


# --- the revision Deployment -------------------------------------------------------------------


def test_a_revision_deployment_is_named_and_placed_for_its_release() -> None:
    body = deployment()
    assert (body["apiVersion"], body["kind"]) == ("apps/v1", "Deployment")
    assert body["metadata"]["name"] == f"checkout-{HASH}"
    assert body["metadata"]["namespace"] == "shop"


def test_a_revision_deployment_is_controlled_by_its_release() -> None:
    assert deployment()["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "permafrost.dev/v1alpha1",
            "kind": "GuardedRelease",
            "name": "checkout",
            "uid": "5d1f3c2e-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_a_revision_deployment_carries_the_release_revision_and_manager_labels() -> None:
    assert deployment()["metadata"]["labels"] == {
        "permafrost.dev/release": "checkout",
        "permafrost.dev/revision": HASH,
        "app.kubernetes.io/managed-by": "permafrost",
    }


def test_a_revision_deployment_is_annotated_with_its_template_hash() -> None:
    assert deployment()["metadata"]["annotations"] == {"permafrost.dev/template-hash": HASH}


def test_a_revision_deployment_selects_exactly_its_own_pods() -> None:
    body = deployment()
    selector = {"permafrost.dev/release": "checkout", "permafrost.dev/revision": HASH}
    assert body["spec"]["selector"] == {"matchLabels": selector}
    pod_labels = body["spec"]["template"]["metadata"]["labels"]
    assert pod_labels == {"app": "checkout", **selector}


def test_the_pod_labels_of_a_revision_win_over_user_labels_of_the_same_key() -> None:
    template = {
        "metadata": {"labels": {"permafrost.dev/revision": "forged", "app": "checkout"}},
        "spec": {"containers": [{"name": "web", "image": IMAGE}]},
    }
    labels = deployment(template=template)["spec"]["template"]["metadata"]["labels"]
    assert labels["permafrost.dev/revision"] == HASH


def test_a_template_without_metadata_still_gets_the_selector_labels() -> None:
    template = {"spec": {"containers": [{"name": "web", "image": IMAGE}]}}
    labels = deployment(template=template)["spec"]["template"]["metadata"]["labels"]
    assert labels == manifests.selector("checkout", HASH)


def test_a_revision_deployment_has_its_replicas_deadline_and_one_replicaset() -> None:
    body = deployment()
    assert body["spec"]["replicas"] == 3
    assert body["spec"]["progressDeadlineSeconds"] == 90
    assert body["spec"]["revisionHistoryLimit"] == 0


def test_a_revision_deployment_can_start_at_any_replica_count() -> None:
    body = manifests.revision_deployment(release=RELEASE, spec=spec(), revision=HASH, replicas=0)
    assert body["spec"]["replicas"] == 0


@pytest.mark.parametrize("release", LONG_NAMES)
def test_every_label_of_a_revision_deployment_is_valid_for_any_release_name(
    release: str,
) -> None:
    ref = manifests.ReleaseRef(name=release, namespace="shop", uid="u")
    body = manifests.revision_deployment(release=ref, spec=spec(), revision=HASH, replicas=1)
    labels = {
        **body["metadata"]["labels"],
        **body["spec"]["selector"]["matchLabels"],
        **body["spec"]["template"]["metadata"]["labels"],
    }
    assert all(is_label_value(v) for v in labels.values())
    assert len(body["metadata"]["name"]) <= 63


def test_building_a_revision_deployment_leaves_the_spec_untouched() -> None:
    original = spec(config_refs=[models.ConfigRef(kind="ConfigMap", name="app-config")])
    original.template["spec"]["volumes"] = [{"name": "c", "configMap": {"name": "app-config"}}]
    before = copy.deepcopy(original.template)
    manifests.revision_deployment(release=RELEASE, spec=original, revision=HASH, replicas=3)
    assert original.template == before


# --- config references rewritten to snapshots --------------------------------------------------


def referencing_template() -> dict[str, Any]:
    """A template that references app-config (ConfigMap) and app-secret (Secret) everywhere."""
    return {
        "spec": {
            "initContainers": [
                {
                    "name": "migrate",
                    "image": IMAGE,
                    "envFrom": [{"configMapRef": {"name": "app-config"}}],
                    "env": [
                        {
                            "name": "TOKEN",
                            "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "t"}},
                        }
                    ],
                }
            ],
            "containers": [
                {
                    "name": "web",
                    "image": IMAGE,
                    "envFrom": [
                        {"configMapRef": {"name": "app-config"}},
                        {"secretRef": {"name": "app-secret"}},
                        {"configMapRef": {"name": "app-secret"}},
                        {"prefix": "X_", "configMapRef": {"name": "other-config"}},
                    ],
                    "env": [
                        {
                            "name": "MODE",
                            "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "m"}},
                        },
                        {
                            "name": "TOKEN",
                            "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "t"}},
                        },
                        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "PLAIN", "value": "app-config"},
                    ],
                }
            ],
            "volumes": [
                {"name": "v0", "configMap": {"name": "app-config"}},
                {"name": "v1", "secret": {"secretName": "app-secret"}},
                {
                    "name": "v2",
                    "projected": {
                        "sources": [
                            {"configMap": {"name": "app-config"}},
                            {"secret": {"name": "app-secret"}},
                            {"downwardAPI": {"items": []}},
                        ]
                    },
                },
                {"name": "v3", "configMap": {"name": "other-config"}},
                {"name": "v4", "secret": {"secretName": "app-config"}},
                {"name": "v5", "emptyDir": {}},
            ],
        }
    }


CONFIG = f"app-config-{HASH}"
SECRET = f"app-secret-{HASH}"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param(("volumes", 0, "configMap", "name"), CONFIG, id="a-configMap-volume"),
        pytest.param(("volumes", 1, "secret", "secretName"), SECRET, id="a-secret-volume"),
        pytest.param(
            ("volumes", 2, "projected", "sources", 0, "configMap", "name"),
            CONFIG,
            id="a-projected-configMap",
        ),
        pytest.param(
            ("volumes", 2, "projected", "sources", 1, "secret", "name"),
            SECRET,
            id="a-projected-secret",
        ),
        pytest.param(
            ("containers", 0, "envFrom", 0, "configMapRef", "name"),
            CONFIG,
            id="an-envFrom-configMapRef",
        ),
        pytest.param(
            ("containers", 0, "envFrom", 1, "secretRef", "name"), SECRET, id="an-envFrom-secretRef"
        ),
        pytest.param(
            ("containers", 0, "env", 0, "valueFrom", "configMapKeyRef", "name"),
            CONFIG,
            id="an-env-configMapKeyRef",
        ),
        pytest.param(
            ("containers", 0, "env", 1, "valueFrom", "secretKeyRef", "name"),
            SECRET,
            id="an-env-secretKeyRef",
        ),
        pytest.param(
            ("initContainers", 0, "envFrom", 0, "configMapRef", "name"),
            CONFIG,
            id="an-init-container-envFrom",
        ),
        pytest.param(
            ("initContainers", 0, "env", 0, "valueFrom", "secretKeyRef", "name"),
            SECRET,
            id="an-init-container-env-secretKeyRef",
        ),
        pytest.param(
            ("volumes", 3, "configMap", "name"),
            "other-config",
            id="an-unlisted-configMap-is-left-alone",
        ),
        pytest.param(
            ("containers", 0, "envFrom", 3, "configMapRef", "name"),
            "other-config",
            id="an-unlisted-envFrom-is-left-alone",
        ),
        pytest.param(
            ("containers", 0, "envFrom", 2, "configMapRef", "name"),
            "app-secret",
            id="a-configMap-named-like-a-listed-secret-is-left-alone",
        ),
        pytest.param(
            ("volumes", 4, "secret", "secretName"),
            "app-config",
            id="a-secret-named-like-a-listed-configMap-is-left-alone",
        ),
        pytest.param(
            ("containers", 0, "env", 3, "value"), "app-config", id="a-plain-env-value-is-left-alone"
        ),
    ],
)
def test_listed_config_references_point_at_their_snapshots(
    path: tuple[str | int, ...], expected: str
) -> None:
    refs = [
        models.ConfigRef(kind="ConfigMap", name="app-config"),
        models.ConfigRef(kind="Secret", name="app-secret"),
    ]
    body = deployment(template=referencing_template(), config_refs=refs)
    value: Any = body["spec"]["template"]["spec"]
    for key in path:
        value = value[key]
    assert value == expected


def test_without_config_refs_no_reference_is_rewritten() -> None:
    body = deployment(template=referencing_template())
    rewritten = body["spec"]["template"]
    rewritten["metadata"].pop("labels")
    assert rewritten == {**referencing_template(), "metadata": {}}


def test_the_rest_of_the_template_is_carried_over_unchanged() -> None:
    refs = [models.ConfigRef(kind="ConfigMap", name="app-config")]
    body = deployment(template=referencing_template(), config_refs=refs)
    volumes = body["spec"]["template"]["spec"]["volumes"]
    assert volumes[5] == {"name": "v5", "emptyDir": {}}
    assert volumes[2]["projected"]["sources"][2] == {"downwardAPI": {"items": []}}
    web = body["spec"]["template"]["spec"]["containers"][0]
    assert web["env"][2] == {
        "name": "POD",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }


# --- config snapshots --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "source", "copied"),
    [
        pytest.param(
            "ConfigMap",
            {"data": {"mode": "prod"}, "binaryData": {"blob": "AAE="}, "metadata": {"uid": "x"}},
            {"data": {"mode": "prod"}, "binaryData": {"blob": "AAE="}},
            id="a-configmap-with-data-and-binaryData",
        ),
        pytest.param(
            "Secret",
            {"data": {"tls.crt": "Y2VydA=="}, "type": "kubernetes.io/tls"},
            {"data": {"tls.crt": "Y2VydA=="}, "type": "kubernetes.io/tls"},
            id="a-secret-with-its-type",
        ),
        pytest.param(
            "ConfigMap", {"data": {}, "binaryData": {}}, {}, id="an-empty-configmap-copies-nothing"
        ),
    ],
)
def test_a_snapshot_is_an_immutable_copy_of_its_source_data(
    kind: str, source: dict[str, Any], copied: dict[str, Any]
) -> None:
    ref = models.ConfigRef(kind=kind, name="app-config")  # type: ignore[arg-type]
    body = manifests.snapshot(release=RELEASE, revision=HASH, ref=ref, source=source)
    assert body["apiVersion"] == "v1"
    assert body["kind"] == kind
    assert body["immutable"] is True
    assert {k: body[k] for k in ("data", "binaryData", "type") if k in body} == copied


def test_a_snapshot_is_named_for_its_source_and_revision_and_labelled_for_both() -> None:
    ref = models.ConfigRef(kind="ConfigMap", name="app-config")
    body = manifests.snapshot(release=RELEASE, revision=HASH, ref=ref, source={})
    assert body["metadata"]["name"] == f"app-config-{HASH}"
    assert body["metadata"]["namespace"] == "shop"
    assert body["metadata"]["labels"] == {
        "permafrost.dev/release": "checkout",
        "permafrost.dev/revision": HASH,
        "app.kubernetes.io/managed-by": "permafrost",
        "permafrost.dev/snapshot-of": "app-config",
    }


def test_the_snapshot_name_matches_the_reference_rewritten_in_the_deployment() -> None:
    ref = models.ConfigRef(kind="Secret", name="app-secret")
    body = deployment(template=referencing_template(), config_refs=[ref])
    snap = manifests.snapshot(release=RELEASE, revision=HASH, ref=ref, source={})
    volume = body["spec"]["template"]["spec"]["volumes"][1]
    assert volume["secret"]["secretName"] == snap["metadata"]["name"]


def test_a_snapshot_of_a_long_named_source_has_valid_labels() -> None:
    ref = models.ConfigRef(kind="ConfigMap", name="c" * 253)
    body = manifests.snapshot(release=RELEASE, revision=HASH, ref=ref, source={})
    assert all(is_label_value(v) for v in body["metadata"]["labels"].values())
    assert len(body["metadata"]["name"]) <= 253


# --- the Service -------------------------------------------------------------------------------


def test_a_created_service_selects_the_revision_and_is_owned_by_the_release() -> None:
    body = manifests.service(release=RELEASE, spec=models.ServiceSpec(name="web"), revision=HASH)
    assert (body["apiVersion"], body["kind"]) == ("v1", "Service")
    assert body["metadata"]["name"] == "web"
    assert body["metadata"]["namespace"] == "shop"
    assert body["metadata"]["labels"] == {
        "permafrost.dev/release": "checkout",
        "app.kubernetes.io/managed-by": "permafrost",
    }
    assert body["metadata"]["ownerReferences"] == [manifests.release_owner(RELEASE)]
    assert body["spec"]["selector"] == manifests.selector("checkout", HASH)


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        pytest.param(
            None,
            [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            id="no-ports-default-to-80-to-8080",
        ),
        pytest.param(
            [
                models.ServicePort(name="grpc", port=9090, target_port="grpc"),
                models.ServicePort(port=53, protocol="UDP"),
            ],
            [
                {"name": "grpc", "port": 9090, "targetPort": "grpc", "protocol": "TCP"},
                {"port": 53, "protocol": "UDP"},
            ],
            id="given-ports-in-camel-case-without-nulls",
        ),
    ],
)
def test_a_created_service_exposes_its_ports(
    ports: list[models.ServicePort] | None, expected: list[dict[str, Any]]
) -> None:
    body = manifests.service(
        release=RELEASE, spec=models.ServiceSpec(name="web", ports=ports), revision=HASH
    )
    assert body["spec"]["ports"] == expected


# --- images ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "images"),
    [
        pytest.param(
            {
                "spec": {
                    "containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}],
                    "initContainers": [{"name": "i", "image": "i:1"}],
                }
            },
            ["i:1", "a:1", "b:1"],
            id="init-containers-first-then-containers-in-order",
        ),
        pytest.param({}, [], id="a-template-without-a-spec-has-none"),
    ],
)
def test_the_images_of_a_template_are_listed_in_start_order(
    template: dict[str, Any], images: list[str]
) -> None:
    assert manifests.images(template) == images
