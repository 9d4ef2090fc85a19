"""Revision identity: what changes the hash, and what must not.

The hash names Deployments and labels in running clusters, so a spurious change rolls every
release out again (and a missed change silently skips a rollout). The tables below pin both sides.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest

from permafrost.releases import hashing

WEB = "reg.example/shop/checkout@sha256:" + "a" * 64
MIGRATE = "reg.example/shop/migrate@sha256:" + "b" * 64
PROXY = "reg.example/infra/proxy@sha256:" + "c" * 64

Template = dict[str, Any]
Config = dict[str, dict[str, Any]]


def base_template() -> Template:
    return {
        "metadata": {"labels": {"app": "checkout"}, "annotations": {"team": "shop"}},
        "spec": {
            "initContainers": [{"name": "migrate", "image": MIGRATE}],
            "containers": [
                {
                    "name": "web",
                    "image": WEB,
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "env": [
                        {"name": "MODE", "value": "prod"},
                        {"name": "REGION", "value": "eu"},
                        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    ],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                    "livenessProbe": {"tcpSocket": {"port": 8080}},
                },
                {"name": "proxy", "image": PROXY},
            ],
            "volumes": [
                {"name": "config", "configMap": {"name": "checkout-config"}},
                {"name": "tls", "secret": {"secretName": "checkout-secret"}},
            ],
        },
    }


def base_config() -> Config:
    return {
        "ConfigMap/checkout-config": {"data": {"mode": "prod", "level": "info"}},
        "Secret/checkout-secret": {"data": {"token": "c2VjcmV0"}, "type": "Opaque"},
    }


def hash_of(template: Template, config: Config | None = None) -> str:
    return hashing.revision_hash(
        template=template, config=base_config() if config is None else config
    )


BASE = hash_of(base_template())


def web(t: Template) -> dict[str, Any]:
    return t["spec"]["containers"][0]


def reversed_keys(value: Any) -> Any:
    """The same JSON with every mapping's keys in reverse order (lists keep their order)."""
    if isinstance(value, dict):
        return {k: reversed_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_keys(v) for v in value]
    return value


# --- identity and format -----------------------------------------------------------------------


def test_the_hash_is_ten_lowercase_hex_characters() -> None:
    assert hashing.HASH_LENGTH == 10
    assert re.fullmatch(r"[0-9a-f]{10}", BASE)


def test_the_hash_of_the_same_inputs_is_the_same_every_time() -> None:
    assert hash_of(base_template()) == hash_of(base_template()) == BASE


def test_the_hash_of_a_known_template_never_changes_across_releases_of_permafrost() -> None:
    # NB: a changed value here means every existing release rolls out again on upgrade
    # (fluxcd/flagger#1673): bump HASH_SCHEME deliberately, never by accident.
    template = {"spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}
    assert hashing.HASH_SCHEME == "v1"
    assert hashing.revision_hash(template=template, config={}) == "adbb70911c"


def test_hashing_does_not_modify_its_inputs() -> None:
    template, config = base_template(), base_config()
    web(template)["imagePullPolicy"] = "IfNotPresent"
    template["spec"]["restartPolicy"] = "Always"
    config["ConfigMap/checkout-config"]["binaryData"] = {}
    before = (copy.deepcopy(template), copy.deepcopy(config))
    hashing.revision_hash(template=template, config=config)
    hashing.normalize_template(template)
    assert (template, config) == before


def test_normalizing_a_normalized_template_changes_nothing() -> None:
    template = base_template()
    web(template)["imagePullPolicy"] = "IfNotPresent"
    once = hashing.normalize_template(template)
    assert hashing.normalize_template(once) == once


def test_normalizing_keeps_the_template_metadata() -> None:
    normalized = hashing.normalize_template(base_template())
    assert normalized["metadata"] == {
        "labels": {"app": "checkout"},
        "annotations": {"team": "shop"},
    }


def test_a_short_digest_is_stable_and_as_long_as_asked() -> None:
    assert hashing.short_digest("checkout") == hashing.short_digest("checkout")
    assert len(hashing.short_digest("checkout")) == 8
    assert len(hashing.short_digest("checkout", length=12)) == 12
    assert hashing.short_digest("checkout") != hashing.short_digest("checkouts")


# --- what must not change the hash -------------------------------------------------------------


def test_the_order_of_fields_does_not_change_the_hash() -> None:
    template, config = reversed_keys(base_template()), reversed_keys(base_config())
    assert list(template) == ["spec", "metadata"]
    assert hash_of(template, config) == BASE


def test_the_order_of_config_sources_does_not_change_the_hash() -> None:
    config = dict(reversed(list(base_config().items())))
    assert hash_of(base_template(), config) == BASE


def _set(path: tuple[str | int, ...], value: Any) -> Callable[[Template], None]:
    def apply(t: Template) -> None:
        target: Any = t
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return apply


WEB_PATH = ("spec", "containers", 0)
INIT_PATH = ("spec", "initContainers", 0)

EXPLICIT_DEFAULTS = [
    pytest.param(
        _set((*WEB_PATH, "imagePullPolicy"), "IfNotPresent"),
        id="imagePullPolicy-IfNotPresent-on-a-container",
    ),
    pytest.param(
        _set((*INIT_PATH, "imagePullPolicy"), "IfNotPresent"),
        id="imagePullPolicy-IfNotPresent-on-an-init-container",
    ),
    pytest.param(
        _set((*WEB_PATH, "terminationMessagePath"), "/dev/termination-log"),
        id="terminationMessagePath-dev-termination-log",
    ),
    pytest.param(
        _set((*WEB_PATH, "terminationMessagePolicy"), "File"), id="terminationMessagePolicy-File"
    ),
    pytest.param(_set((*WEB_PATH, "ports", 0, "protocol"), "TCP"), id="a-port-protocol-TCP"),
    pytest.param(
        _set((*WEB_PATH, "readinessProbe", "timeoutSeconds"), 1), id="a-probe-timeoutSeconds-of-1"
    ),
    pytest.param(
        _set((*WEB_PATH, "readinessProbe", "periodSeconds"), 10), id="a-probe-periodSeconds-of-10"
    ),
    pytest.param(
        _set((*WEB_PATH, "livenessProbe", "successThreshold"), 1),
        id="a-probe-successThreshold-of-1",
    ),
    pytest.param(
        _set((*WEB_PATH, "livenessProbe", "failureThreshold"), 3),
        id="a-probe-failureThreshold-of-3",
    ),
    pytest.param(_set(("spec", "restartPolicy"), "Always"), id="the-pod-restartPolicy-Always"),
    pytest.param(_set(("spec", "dnsPolicy"), "ClusterFirst"), id="the-pod-dnsPolicy-ClusterFirst"),
    pytest.param(_set(("spec", "schedulerName"), "default-scheduler"), id="the-default-scheduler"),
    pytest.param(
        _set(("spec", "terminationGracePeriodSeconds"), 30), id="a-termination-grace-period-of-30s"
    ),
    pytest.param(_set(("spec", "enableServiceLinks"), True), id="service-links-enabled"),
    pytest.param(_set(("spec", "containers", 1, "env"), []), id="an-empty-env-list"),
    pytest.param(_set(("spec", "containers", 1, "args"), []), id="an-empty-args-list"),
    pytest.param(_set(("spec", "securityContext"), {}), id="an-empty-pod-securityContext"),
    pytest.param(_set(("spec", "nodeSelector"), {}), id="an-empty-nodeSelector-map"),
    pytest.param(
        _set((*WEB_PATH, "resources"), {"limits": {}}), id="resources-with-only-empty-maps"
    ),
    pytest.param(_set((*WEB_PATH, "workingDir"), ""), id="an-empty-workingDir-string"),
    pytest.param(_set(("spec", "hostname"), None), id="a-null-hostname"),
    pytest.param(_set(("metadata", "finalizers"), []), id="an-empty-list-in-the-metadata"),
]


@pytest.mark.parametrize("write_default", EXPLICIT_DEFAULTS)
def test_writing_a_default_explicitly_does_not_change_the_hash(
    write_default: Callable[[Template], None],
) -> None:
    template = base_template()
    write_default(template)
    assert hash_of(template) == BASE


def test_writing_every_default_at_once_does_not_change_the_hash() -> None:
    template = base_template()
    for param in EXPLICIT_DEFAULTS:
        param.values[0](template)  # type: ignore[operator]
    assert hash_of(template) == BASE


def test_probe_defaults_written_on_a_startup_probe_do_not_change_its_hash() -> None:
    implicit, explicit = base_template(), base_template()
    web(implicit)["startupProbe"] = {"tcpSocket": {"port": 8080}}
    web(explicit)["startupProbe"] = {
        "tcpSocket": {"port": 8080},
        "timeoutSeconds": 1,
        "periodSeconds": 10,
        "successThreshold": 1,
        "failureThreshold": 3,
    }
    assert hash_of(explicit) == hash_of(implicit) != BASE


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(
            {
                "ConfigMap/checkout-config": {
                    "data": {"mode": "prod", "level": "info"},
                    "binaryData": {},
                },
                "Secret/checkout-secret": {"data": {"token": "c2VjcmV0"}, "type": "Opaque"},
            },
            id="an-empty-binaryData-map",
        ),
        pytest.param(
            {
                "ConfigMap/checkout-config": {"data": {"level": "info", "mode": "prod"}},
                "Secret/checkout-secret": {"type": "Opaque", "data": {"token": "c2VjcmV0"}},
            },
            id="the-same-keys-in-another-order",
        ),
    ],
)
def test_config_that_only_looks_different_does_not_change_the_hash(config: Config) -> None:
    assert hash_of(base_template(), config) == BASE


# --- what must change the hash -----------------------------------------------------------------


def _swap_containers(t: Template) -> None:
    t["spec"]["containers"].reverse()


def _swap_env(t: Template) -> None:
    web(t)["env"].reverse()


def _add_env(t: Template) -> None:
    web(t)["env"].append({"name": "DEBUG", "value": "1"})


TEMPLATE_CHANGES = [
    pytest.param(
        _set((*WEB_PATH, "image"), WEB.replace("a" * 64, "d" * 64)), id="a-new-image-digest"
    ),
    pytest.param(_set((*INIT_PATH, "image"), PROXY), id="a-new-init-container-image"),
    pytest.param(_set((*WEB_PATH, "env", 0, "value"), "staging"), id="a-changed-env-value"),
    pytest.param(_add_env, id="an-added-env-var"),
    pytest.param(_swap_env, id="reordered-env-vars-which-matters-for-dependent-vars"),
    pytest.param(
        _set(("metadata", "annotations", "team"), "payments"), id="a-changed-template-annotation"
    ),
    pytest.param(
        _set(("metadata", "annotations", "restartedAt"), "2026"), id="an-added-template-annotation"
    ),
    pytest.param(_set(("metadata", "labels", "tier"), "web"), id="an-added-template-label"),
    pytest.param(_swap_containers, id="reordered-containers"),
    pytest.param(_set((*WEB_PATH, "imagePullPolicy"), "Always"), id="a-non-default-pull-policy"),
    pytest.param(
        _set((*WEB_PATH, "readinessProbe", "periodSeconds"), 5), id="a-non-default-probe-period"
    ),
    pytest.param(
        _set((*WEB_PATH, "ports", 0, "protocol"), "UDP"), id="a-non-default-port-protocol"
    ),
    pytest.param(_set(("spec", "restartPolicy"), "OnFailure"), id="a-non-default-restartPolicy"),
    pytest.param(_set(("spec", "dnsPolicy"), "Default"), id="a-non-default-dnsPolicy"),
    pytest.param(
        _set((*INIT_PATH, "restartPolicy"), "Always"),
        id="an-init-container-made-a-sidecar-by-restartPolicy-Always",
    ),
    pytest.param(_set(("spec", "enableServiceLinks"), False), id="service-links-disabled"),
    pytest.param(
        _set(("spec", "volumes", 0, "configMap", "name"), "other-config"),
        id="a-volume-pointed-at-another-configmap",
    ),
]


@pytest.mark.parametrize("change", TEMPLATE_CHANGES)
def test_a_change_in_what_runs_changes_the_hash(change: Callable[[Template], None]) -> None:
    template = base_template()
    change(template)
    assert hash_of(template) != BASE


def test_each_template_change_makes_a_distinct_revision() -> None:
    hashes = set()
    for param in TEMPLATE_CHANGES:
        template = base_template()
        param.values[0](template)  # type: ignore[operator]
        hashes.add(hash_of(template))
    assert len(hashes) == len(TEMPLATE_CHANGES)


def _config_change(change: Callable[[Config], None]) -> Config:
    config = base_config()
    change(config)
    return config


CONFIG_CHANGES = [
    pytest.param(
        _config_change(lambda c: c["ConfigMap/checkout-config"]["data"].update(mode="debug")),
        id="a-changed-configmap-value",
    ),
    pytest.param(
        _config_change(lambda c: c["ConfigMap/checkout-config"]["data"].update(extra="x")),
        id="an-added-configmap-key",
    ),
    pytest.param(
        _config_change(lambda c: c["ConfigMap/checkout-config"].update(binaryData={"b": "AA=="})),
        id="added-configmap-binaryData",
    ),
    pytest.param(
        _config_change(lambda c: c["Secret/checkout-secret"]["data"].update(token="b3RoZXI=")),
        id="a-changed-secret-value",
    ),
    pytest.param(
        _config_change(lambda c: c["Secret/checkout-secret"].update(type="kubernetes.io/tls")),
        id="a-changed-secret-type",
    ),
    pytest.param(
        _config_change(lambda c: c.update({"ConfigMap/extra": {"data": {"k": "v"}}})),
        id="an-added-config-source",
    ),
    pytest.param(
        _config_change(lambda c: c.pop("Secret/checkout-secret")), id="a-removed-config-source"
    ),
    pytest.param(
        {
            "ConfigMap/renamed-config": base_config()["ConfigMap/checkout-config"],
            "Secret/checkout-secret": base_config()["Secret/checkout-secret"],
        },
        id="a-renamed-config-source-with-the-same-data",
    ),
]


@pytest.mark.parametrize("config", CONFIG_CHANGES)
def test_a_change_in_referenced_config_changes_the_hash(config: Config) -> None:
    assert hash_of(base_template(), config) != BASE


# --- defaults that depend on the value or sit deeper in the template --------------------------


@pytest.mark.parametrize(
    ("image", "explicit", "same"),
    [
        pytest.param(
            "nginx:latest", "Always", True, id="a-latest-image-with-its-default-Always-written-out"
        ),
        pytest.param(
            "nginx", "Always", True, id="an-untagged-image-with-its-default-Always-written-out"
        ),
        pytest.param(
            "nginx:latest", "IfNotPresent", False, id="a-latest-image-switched-to-IfNotPresent"
        ),
    ],
)
def test_the_pull_policy_default_of_a_latest_or_untagged_image_is_always(
    image: str, explicit: str, same: bool
) -> None:
    implicit = {"spec": {"containers": [{"name": "web", "image": image}]}}
    written = copy.deepcopy(implicit)
    written["spec"]["containers"][0]["imagePullPolicy"] = explicit
    assert (hash_of(written, {}) == hash_of(implicit, {})) is same


@pytest.mark.parametrize(
    "write_default",
    [
        pytest.param(
            _set((*WEB_PATH, "readinessProbe", "httpGet", "scheme"), "HTTP"),
            id="an-httpGet-scheme-HTTP",
        ),
        pytest.param(
            _set(("spec", "volumes", 0, "configMap", "defaultMode"), 420),
            id="a-configMap-volume-defaultMode-0644",
        ),
        pytest.param(
            _set(("spec", "volumes", 1, "secret", "defaultMode"), 420),
            id="a-secret-volume-defaultMode-0644",
        ),
        pytest.param(
            _set((*WEB_PATH, "env", 2, "valueFrom", "fieldRef", "apiVersion"), "v1"),
            id="a-fieldRef-apiVersion-v1",
        ),
    ],
)
def test_writing_an_apiserver_default_explicitly_does_not_change_the_hash(
    write_default: Callable[[Template], None],
) -> None:
    template = base_template()
    write_default(template)
    assert hash_of(template) == BASE
