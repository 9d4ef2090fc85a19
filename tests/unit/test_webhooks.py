"""The admission shell, without a server: which review bodies are refused before Kopf sees them,
where the apiserver is told to call, who is spared, and how the frozen-workload handler answers.

No network: the handler tests install a runtime whose Event poster is a recorder.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import pathlib
import ssl
from collections.abc import Callable
from typing import Any

import kopf
import prometheus_client
import pytest
from cryptography import x509

from permafrost import kube, metrics, models
from permafrost.guards import admission, certs, sessions, webhooks
from permafrost.policies import store

UID = "705ab4f5-6393-11e8-b7cc-42010a800002"
NS = "shop"
CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
CA_BUNDLE = base64.b64encode(CA).decode()
SERVICE = "permafrost-system/permafrost-webhook"
NOW = datetime.datetime(2025, 3, 1, tzinfo=datetime.UTC)


def deployment(image: str = "registry.example/web@sha256:" + "a" * 64) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": NS,
            "uid": "6a0c3f5e-0000-4000-8000-000000000001",
            "labels": {models.LABEL_RELEASE: "web"},
        },
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
        },
    }


GOOD: dict[str, Any] = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": UID,
        "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
        "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
        "requestKind": {"group": "apps", "version": "v1", "kind": "Deployment"},
        "requestResource": {"group": "apps", "version": "v1", "resource": "deployments"},
        "name": "web",
        "namespace": NS,
        "operation": "UPDATE",
        "userInfo": {"username": "bob", "groups": ["system:authenticated"]},
        "object": deployment("registry.example/web@sha256:" + "b" * 64),
        "oldObject": deployment(),
        "dryRun": False,
        "options": {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"},
    },
}


def review(*edits: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    body = copy.deepcopy(GOOD)
    for edit in edits:
        edit(body)
    return body


def without(*path: str) -> Callable[[dict[str, Any]], None]:
    def edit(body: dict[str, Any]) -> None:
        for key in path[:-1]:
            body = body[key]
        del body[path[-1]]

    return edit


def put(*path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(body: dict[str, Any]) -> None:
        for key in path[:-1]:
            body = body[key]
        body[path[-1]] = value

    return edit


NOT_AN_OBJECT = "the body is not a JSON object"
NOT_A_REVIEW = "the body is not an AdmissionReview"
NO_REQUEST = "the AdmissionReview has no request"
NO_UID = "request.uid is missing"
NO_RESOURCE = "request.resource is missing or incomplete"
NO_USER = "request.userInfo is missing"
NO_OBJECT = "request.object and request.oldObject are both missing"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        pytest.param(None, NOT_AN_OBJECT, id="null"),
        pytest.param([GOOD], NOT_AN_OBJECT, id="a-list"),
        pytest.param("AdmissionReview", NOT_AN_OBJECT, id="a-string"),
        pytest.param(42, NOT_AN_OBJECT, id="a-number"),
        pytest.param(True, NOT_AN_OBJECT, id="a-boolean"),
        pytest.param({}, NOT_A_REVIEW, id="an-empty-object"),
        pytest.param(review(without("kind")), NOT_A_REVIEW, id="no-kind"),
        pytest.param(review(put("kind", value="ConversionReview")), NOT_A_REVIEW, id="wrong-kind"),
        pytest.param(
            review(put("kind", value="admissionreview")), NOT_A_REVIEW, id="a-kind-in-lower-case"
        ),
        pytest.param(review(put("kind", value=None)), NOT_A_REVIEW, id="a-null-kind"),
        pytest.param(review(without("request")), NO_REQUEST, id="no-request"),
        pytest.param(review(put("request", value=None)), NO_REQUEST, id="a-null-request"),
        pytest.param(review(put("request", value=[GOOD["request"]])), NO_REQUEST, id="a-list"),
        pytest.param(review(put("request", value="x")), NO_REQUEST, id="a-string-request"),
        pytest.param(review(without("request", "uid")), NO_UID, id="no-uid"),
        pytest.param(review(put("request", "uid", value=None)), NO_UID, id="a-null-uid"),
        pytest.param(review(put("request", "uid", value=42)), NO_UID, id="a-numeric-uid"),
        pytest.param(review(without("request", "resource")), NO_RESOURCE, id="no-resource"),
        pytest.param(
            review(put("request", "resource", value="deployments")),
            NO_RESOURCE,
            id="a-string-resource",
        ),
        *[
            pytest.param(
                review(without("request", "resource", field)),
                NO_RESOURCE,
                id=f"a-resource-without-{field}",
            )
            for field in ("group", "version", "resource")
        ],
        pytest.param(
            review(put("request", "resource", "version", value=1)),
            NO_RESOURCE,
            id="a-numeric-resource-version",
        ),
        pytest.param(
            review(put("request", "resource", "group", value=None)),
            NO_RESOURCE,
            id="a-null-resource-group",
        ),
        pytest.param(review(without("request", "userInfo")), NO_USER, id="no-user-info"),
        pytest.param(review(put("request", "userInfo", value=None)), NO_USER, id="null-user-info"),
        pytest.param(review(put("request", "userInfo", value="bob")), NO_USER, id="a-user-name"),
        pytest.param(
            review(without("request", "object"), without("request", "oldObject")),
            NO_OBJECT,
            id="neither-object-nor-old-object",
        ),
        pytest.param(
            review(put("request", "object", value=None), put("request", "oldObject", value=None)),
            NO_OBJECT,
            id="both-objects-null",
        ),
        pytest.param(
            review(put("request", "object", value=[]), put("request", "oldObject", value="x")),
            NO_OBJECT,
            id="neither-object-is-an-object",
        ),
        pytest.param(
            review(without("request", "uid"), without("request", "userInfo")),
            NO_UID,
            id="the-first-problem-is-named",
        ),
        # --- well-formed ---
        pytest.param(GOOD, None, id="an-update"),
        pytest.param(
            review(without("request", "oldObject"), put("request", "operation", value="CREATE")),
            None,
            id="a-create-has-no-old-object",
        ),
        pytest.param(
            review(
                put("request", "object", value=None), put("request", "operation", value="DELETE")
            ),
            None,
            id="a-delete-has-a-null-object",
        ),
        pytest.param(
            review(
                put("request", "resource", value={"group": "", "version": "v1", "resource": "pods"})
            ),
            None,
            id="the-core-group-is-the-empty-string",
        ),
        pytest.param(
            review(put("request", "userInfo", value={})),
            None,
            id="an-anonymous-user-info-is-still-user-info",
        ),
        pytest.param(
            review(put("apiVersion", value="admission.k8s.io/v1beta1")),
            None,
            id="the-api-version-is-not-checked",
        ),
    ],
)
def test_each_malformed_review_is_refused_with_its_first_problem(
    body: Any, problem: str | None
) -> None:
    before = copy.deepcopy(body)
    assert webhooks.malformed(body) == problem
    assert body == before


# --- Options: hostnames and client config -----------------------------------------------------


@pytest.mark.parametrize(
    ("options", "hostnames"),
    [
        pytest.param(webhooks.Options(), ["localhost"], id="nothing-given-is-localhost"),
        pytest.param(webhooks.Options(url="https://127.0.0.1:9443"), ["127.0.0.1"], id="ipv4-port"),
        pytest.param(webhooks.Options(url="https://127.0.0.1"), ["127.0.0.1"], id="ipv4"),
        pytest.param(
            webhooks.Options(url="https://127.0.0.1:9443/admission/"),
            ["127.0.0.1"],
            id="ipv4-port-and-path",
        ),
        pytest.param(
            webhooks.Options(url="https://127.0.0.1/admission"), ["127.0.0.1"], id="ipv4-and-path"
        ),
        pytest.param(webhooks.Options(url="https://[::1]:9443"), ["::1"], id="ipv6-port"),
        pytest.param(
            webhooks.Options(url="https://[fd00:10::20]:9443/admission"),
            ["fd00:10::20"],
            id="ipv6-port-and-path",
        ),
        pytest.param(webhooks.Options(url="https://[::1]"), ["::1"], id="ipv6-alone"),
        pytest.param(
            webhooks.Options(url="https://[fd00:10::20]/admission"),
            ["fd00:10::20"],
            id="ipv6-and-path",
        ),
        pytest.param(
            webhooks.Options(url="https://webhook.example.com"),
            ["webhook.example.com"],
            id="a-hostname",
        ),
        pytest.param(
            webhooks.Options(url="https://webhook.example.com:8443/hooks"),
            ["webhook.example.com"],
            id="a-hostname-port-and-path",
        ),
        pytest.param(
            webhooks.Options(service=SERVICE),
            [
                "permafrost-webhook.permafrost-system.svc",
                "permafrost-webhook.permafrost-system.svc.cluster.local",
            ],
            id="a-service",
        ),
        pytest.param(
            webhooks.Options(service=SERVICE + ":8443"),
            [
                "permafrost-webhook.permafrost-system.svc",
                "permafrost-webhook.permafrost-system.svc.cluster.local",
            ],
            id="a-service-and-port",
        ),
        pytest.param(
            webhooks.Options(service=SERVICE, url="https://10.0.0.7:9443"),
            [
                "permafrost-webhook.permafrost-system.svc",
                "permafrost-webhook.permafrost-system.svc.cluster.local",
                "10.0.0.7",
            ],
            id="a-service-and-a-url",
        ),
    ],
)
def test_the_certificate_names_every_host_the_apiserver_may_call(
    options: webhooks.Options, hostnames: list[str]
) -> None:
    assert options.hostnames() == hostnames
    certs.issue(hostnames=options.hostnames(), now=NOW)  # names the issuer accepts


@pytest.mark.parametrize(
    ("options", "where"),
    [
        pytest.param(
            webhooks.Options(), {"url": "https://localhost:9443"}, id="nothing-given-is-localhost"
        ),
        pytest.param(
            webhooks.Options(listen_port=8443),
            {"url": "https://localhost:8443"},
            id="localhost-on-the-listening-port",
        ),
        *[
            pytest.param(webhooks.Options(url=url), {"url": url}, id=f"the-url-{label}")
            for label, url in [
                ("ipv4", "https://127.0.0.1:9443"),
                ("ipv6", "https://[::1]:9443"),
                ("hostname-and-path", "https://webhook.example.com/hooks/"),
            ]
        ],
        pytest.param(
            webhooks.Options(service=SERVICE),
            {
                "service": {
                    "namespace": "permafrost-system",
                    "name": "permafrost-webhook",
                    "port": 443,
                }
            },
            id="a-service-on-443-by-default",
        ),
        pytest.param(
            webhooks.Options(service=SERVICE + ":8443"),
            {
                "service": {
                    "namespace": "permafrost-system",
                    "name": "permafrost-webhook",
                    "port": 8443,
                }
            },
            id="a-service-on-its-port",
        ),
        pytest.param(
            webhooks.Options(service=SERVICE, url="https://10.0.0.7:9443"),
            {
                "service": {
                    "namespace": "permafrost-system",
                    "name": "permafrost-webhook",
                    "port": 443,
                }
            },
            id="a-service-wins-over-a-url",
        ),
    ],
)
def test_the_client_config_says_where_to_call_and_which_ca_to_trust(
    options: webhooks.Options, where: dict[str, Any]
) -> None:
    assert options.client_config(CA) == {"caBundle": CA_BUNDLE, **where}
    assert base64.b64decode(options.client_config(CA)["caBundle"]) == CA


@pytest.mark.parametrize(
    ("options", "managed", "enforced"),
    [
        pytest.param(
            webhooks.Options(url="https://127.0.0.1:9443"),
            {"url": "https://127.0.0.1:9443/frozen-managed"},
            {"url": "https://127.0.0.1:9443/frozen-enforced"},
            id="a-url",
        ),
        pytest.param(
            webhooks.Options(service=SERVICE + ":8443"),
            {
                "service": {
                    "namespace": "permafrost-system",
                    "name": "permafrost-webhook",
                    "port": 8443,
                    "path": "/frozen-managed",
                }
            },
            {
                "service": {
                    "namespace": "permafrost-system",
                    "name": "permafrost-webhook",
                    "port": 8443,
                    "path": "/frozen-enforced",
                }
            },
            id="a-service",
        ),
    ],
)
def test_the_registered_webhooks_reach_the_handlers_by_their_ids(
    options: webhooks.Options, managed: dict[str, Any], enforced: dict[str, Any]
) -> None:
    config = admission.webhook_configuration(
        name=webhooks.WEBHOOK_CONFIGURATION,
        client_config=options.client_config(CA),
        settings=options.settings,
    )
    hooks = {h["name"]: h["clientConfig"] for h in config["webhooks"]}
    assert hooks["managed.frozen.permafrost.dev"] == {"caBundle": CA_BUNDLE, **managed}
    assert hooks["enforced.frozen.permafrost.dev"] == {"caBundle": CA_BUNDLE, **enforced}


# --- settings_from -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("namespace", "excluded"),
    [
        pytest.param("permafrost-system", {"kube-system", "permafrost-system"}, id="the-default"),
        pytest.param("ops", {"kube-system", "ops"}, id="another-operator-namespace"),
        pytest.param("kube-system", {"kube-system"}, id="an-operator-in-kube-system"),
    ],
)
def test_settings_exclude_kube_system_and_the_operator_namespace(
    namespace: str, excluded: set[str]
) -> None:
    settings = webhooks.settings_from(
        exempt_users=["system:serviceaccount:ops:permafrost", "admin", "admin"],
        break_glass_groups=["sre", "permafrost:break-glass", "sre"],
        namespace=namespace,
    )
    assert settings == admission.Settings(
        exempt_users=frozenset({"system:serviceaccount:ops:permafrost", "admin"}),
        break_glass_groups=frozenset({"sre", "permafrost:break-glass"}),
        excluded_namespaces=frozenset(excluded),
    )


def test_settings_may_name_no_exempt_user_and_no_break_glass_group() -> None:
    settings = webhooks.settings_from(exempt_users=[], break_glass_groups=[], namespace="ops")
    assert settings.exempt_users == frozenset()
    assert settings.break_glass_groups == frozenset()


def test_default_options_serve_on_9443_with_the_default_settings() -> None:
    options = webhooks.Options()
    assert (options.listen_host, options.listen_port) == ("0.0.0.0", 9443)
    assert options.namespace == "permafrost-system"
    assert options.settings == admission.Settings()


# --- the frozen-workload handler -------------------------------------------------------------

OPERATOR = "system:serviceaccount:permafrost-system:permafrost"


@pytest.fixture
def posted(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The Events the webhooks' side effects post, recorded instead of posted."""
    events: list[dict[str, Any]] = []

    async def record(**kwargs: Any) -> None:
        events.append(kwargs)

    monkeypatch.setattr(kube, "post_object_event", record)
    monkeypatch.setattr(store, "STORE", store.Store())
    monkeypatch.setattr(webhooks, "CONFIRM_SECONDS", 0.2)
    monkeypatch.setattr(webhooks, "CONFIRM_INTERVAL", 0.05)
    return events


@pytest.fixture
def runtime(tmp_path: pathlib.Path) -> webhooks.Runtime:
    """What the webhooks decide with, as :func:`webhooks.setup` makes it (no server started)."""
    options = webhooks.Options(
        url="https://127.0.0.1:9443",
        settings=webhooks.settings_from(
            exempt_users=[OPERATOR],
            break_glass_groups=["permafrost:break-glass"],
            namespace="permafrost-system",
        ),
    )
    server = webhooks.Server()
    server.runtime = webhooks.Runtime(options=options, server=server, directory=tmp_path)
    return server.runtime


# What the cluster holds, by name, as the break-glass confirmation reads it (the adapter's
# find_frozen): a change the webhook admitted is there only if the test puts it there.
Holds = dict[str, dict[str, Any]]


@pytest.fixture
def holds(monkeypatch: pytest.MonkeyPatch) -> Holds:
    objects: Holds = {}

    async def find_frozen(namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        return objects.get(name)

    monkeypatch.setattr(kube, "find_frozen", find_frozen)
    return objects


def handler_kwargs(
    new: dict[str, Any] | None,
    old: dict[str, Any] | None,
    *,
    operation: str = "UPDATE",
    user: str = "bob",
    groups: tuple[str, ...] = ("system:authenticated",),
    param: str = "managed",
    subresource: str | None = None,
    dryrun: bool = False,
) -> dict[str, Any]:
    return {
        "body": kopf.Body(copy.deepcopy(new if new is not None else old)),
        "old": old,
        "new": new,
        "operation": operation,
        "subresource": subresource,
        "userinfo": {"username": user, "groups": list(groups)},
        "dryrun": dryrun,
        "param": param,
        "warnings": [],
    }


async def settle(runtime: webhooks.Runtime) -> None:
    for task in list(runtime.tasks):
        await task


SET_IMAGE = deployment("registry.example/web@sha256:" + "b" * 64)


async def test_without_admission_enabled_the_handler_never_denies() -> None:
    kwargs = handler_kwargs(SET_IMAGE, deployment())
    assert await webhooks.frozen_workload(runtime=None, **kwargs) is None


async def test_a_frozen_change_is_refused_with_403_and_recorded_as_a_warning_event(
    posted: list[dict[str, Any]],
    runtime: webhooks.Runtime,
) -> None:
    with pytest.raises(kopf.AdmissionError) as refused:
        await webhooks.frozen_workload(runtime=runtime, **handler_kwargs(SET_IMAGE, deployment()))
    await settle(runtime)
    assert refused.value.code == 403
    assert "Deployment shop/web is frozen by Permafrost" in str(refused.value)
    (event,) = posted
    assert (event["type_"], event["reason"]) == ("Warning", admission.TEMPLATE_FROZEN)
    assert event["involved"]["metadata"]["name"] == "web"


async def test_a_dry_run_is_refused_alike_but_records_no_event(
    posted: list[dict[str, Any]],
    runtime: webhooks.Runtime,
) -> None:
    with pytest.raises(kopf.AdmissionError):
        await webhooks.frozen_workload(
            runtime=runtime, **handler_kwargs(SET_IMAGE, deployment(), dryrun=True)
        )
    await settle(runtime)
    assert posted == []


async def test_break_glass_is_let_through_with_a_warning_to_the_client_and_an_event(
    posted: list[dict[str, Any]], runtime: webhooks.Runtime, holds: Holds
) -> None:
    new = copy.deepcopy(SET_IMAGE)
    new["metadata"]["annotations"] = {models.ANNOTATION_BREAK_GLASS: "INC-42"}
    kwargs = handler_kwargs(new, deployment(), user="alice", groups=("permafrost:break-glass",))
    assert await webhooks.frozen_workload(runtime=runtime, **kwargs) is None
    holds["web"] = copy.deepcopy(new)  # the apiserver wrote what was admitted
    await settle(runtime)
    (warning,) = kwargs["warnings"]
    assert "break-glass" in warning
    assert "INC-42" in warning
    assert [(e["type_"], e["reason"]) for e in posted] == [("Warning", admission.BREAK_GLASS_USED)]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(handler_kwargs(SET_IMAGE, deployment(), user=OPERATOR), id="the-operator"),
        pytest.param(handler_kwargs(None, deployment(), operation="DELETE"), id="a-deletion"),
        pytest.param(
            handler_kwargs(
                {**deployment(), "spec": {**deployment()["spec"], "replicas": 5}}, deployment()
            ),
            id="scaling",
        ),
        pytest.param(
            handler_kwargs(deployment("nginx:1.25"), None, operation="CREATE"),
            id="creating-in-the-managed-scope",
        ),
    ],
)
async def test_what_is_not_frozen_passes_quietly(
    posted: list[dict[str, Any]], runtime: webhooks.Runtime, kwargs: dict[str, Any]
) -> None:
    assert await webhooks.frozen_workload(runtime=runtime, **kwargs) is None
    await settle(runtime)
    assert posted == []
    assert kwargs["warnings"] == []


async def test_the_enforced_scope_refuses_an_unpinned_image_at_creation(
    posted: list[dict[str, Any]],
    runtime: webhooks.Runtime,
) -> None:
    kwargs = handler_kwargs(deployment("nginx:1.25"), None, operation="CREATE", param="enforced")
    with pytest.raises(kopf.AdmissionError) as refused:
        await webhooks.frozen_workload(runtime=runtime, **kwargs)
    await settle(runtime)
    assert "'nginx:1.25' is not pinned by digest" in str(refused.value)
    assert [e["reason"] for e in posted] == [admission.UNPINNED_IMAGE]


async def test_the_enforced_scope_admits_a_pinned_image_when_no_policy_objects(
    posted: list[dict[str, Any]],
    runtime: webhooks.Runtime,
) -> None:
    kwargs = handler_kwargs(deployment(), None, operation="CREATE", param="enforced")
    assert await webhooks.frozen_workload(runtime=runtime, **kwargs) is None
    await settle(runtime)
    assert posted == []


# --- metrics ---------------------------------------------------------------------------------


def counter(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return value or 0.0


@pytest.mark.parametrize(
    "cluster_holds",
    [
        pytest.param(None, id="no-such-object"),
        pytest.param(deployment(), id="the-object-unchanged"),
        pytest.param(
            {**deployment(), "metadata": {**deployment()["metadata"], "uid": "other"}},
            id="another-object-of-that-name",
        ),
    ],
)
async def test_a_break_glass_review_whose_change_never_lands_is_not_recorded(
    posted: list[dict[str, Any]],
    runtime: webhooks.Runtime,
    holds: Holds,
    cluster_holds: dict[str, Any] | None,
) -> None:
    """A forged review (posted to the webhook by anyone but the apiserver), or a change refused
    after this webhook admitted it: no Event, no break-glass count."""
    if cluster_holds is not None:
        holds["web"] = cluster_holds
    used = counter("permafrost_break_glass_total", result="used")
    new = copy.deepcopy(SET_IMAGE)
    new["metadata"]["annotations"] = {models.ANNOTATION_BREAK_GLASS: "INC-666"}
    kwargs = handler_kwargs(new, deployment(), user="mallory", groups=("permafrost:break-glass",))
    assert await webhooks.frozen_workload(runtime=runtime, **kwargs) is None
    await settle(runtime)
    assert posted == []
    assert counter("permafrost_break_glass_total", result="used") == used


async def test_side_effects_beyond_the_bound_are_dropped_and_counted(
    posted: list[dict[str, Any]], runtime: webhooks.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks, "MAX_BACKGROUND_TASKS", 3)
    dropped = counter("permafrost_admission_side_effects_dropped_total")
    for _ in range(5):
        with pytest.raises(kopf.AdmissionError):
            await webhooks.frozen_workload(
                runtime=runtime, **handler_kwargs(SET_IMAGE, deployment())
            )
    await settle(runtime)
    assert len(posted) == 3
    assert counter("permafrost_admission_side_effects_dropped_total") == dropped + 2


async def test_decisions_and_break_glass_uses_are_counted(
    posted: list[dict[str, Any]], runtime: webhooks.Runtime, holds: Holds
) -> None:
    decision = {
        "webhook": "frozen-managed",
        "reason": admission.TEMPLATE_FROZEN,
        "result": "denied",
        "policy": "",
        "rule": "",
    }
    denied = counter("permafrost_admission_decisions_total", **decision)
    used = counter("permafrost_break_glass_total", result="used")
    with pytest.raises(kopf.AdmissionError):
        await webhooks.frozen_workload(runtime=runtime, **handler_kwargs(SET_IMAGE, deployment()))
    new = copy.deepcopy(SET_IMAGE)
    new["metadata"]["annotations"] = {models.ANNOTATION_BREAK_GLASS: "INC-43"}
    await webhooks.frozen_workload(
        runtime=runtime,
        **handler_kwargs(new, deployment(), user="alice", groups=("permafrost:break-glass",)),
    )
    holds["web"] = copy.deepcopy(new)
    with pytest.raises(kopf.AdmissionError):  # dry runs are not counted
        await webhooks.frozen_workload(
            runtime=runtime, **handler_kwargs(SET_IMAGE, deployment(), dryrun=True)
        )
    await settle(runtime)
    assert counter("permafrost_admission_decisions_total", **decision) == denied + 1
    assert counter("permafrost_break_glass_total", result="used") == used + 1
    exposition = prometheus_client.generate_latest(metrics.REGISTRY).decode()
    assert "permafrost_break_glass_total" in exposition


# --- the served responses -----------------------------------------------------------------------


async def test_a_refused_review_is_answered_with_the_handlers_status_and_code(
    posted: list[dict[str, Any]],
    runtime: webhooks.Runtime,
) -> None:
    response = await webhooks.answer(review(), webhook="frozen-managed", runtime=runtime)
    await settle(runtime)
    assert set(response) == {"apiVersion", "kind", "response"}
    assert (response["apiVersion"], response["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
    payload = response["response"]
    assert (payload["uid"], payload["allowed"]) == (UID, False)
    assert payload["status"]["code"] == 403
    assert "Deployment shop/web is frozen by Permafrost" in payload["status"]["message"]
    assert "warnings" not in payload
    assert [e["reason"] for e in posted] == [admission.TEMPLATE_FROZEN]


async def test_an_allowed_review_carries_the_warnings_and_no_status(
    posted: list[dict[str, Any]],
    runtime: webhooks.Runtime,
) -> None:
    def break_glass(body: dict[str, Any]) -> None:
        body["request"]["object"]["metadata"]["annotations"] = {
            models.ANNOTATION_BREAK_GLASS: "INC-44"
        }
        body["request"]["userInfo"] = {"username": "alice", "groups": ["permafrost:break-glass"]}

    response = await webhooks.answer(review(break_glass), webhook="frozen-managed", runtime=runtime)
    await settle(runtime)
    payload = response["response"]
    assert list(payload) == ["uid", "allowed", "warnings"]
    assert payload["allowed"] is True
    (warning,) = payload["warnings"]
    assert "INC-44" in warning


async def test_a_path_that_does_not_serve_the_resource_allows_without_a_decision(
    posted: list[dict[str, Any]],
    runtime: webhooks.Runtime,
) -> None:
    for webhook in ("policies", "releases", "no-such-path"):
        response = await webhooks.answer(review(), webhook=webhook, runtime=runtime)
        assert response["response"] == {"uid": UID, "allowed": True}
    await settle(runtime)
    assert posted == []


async def test_a_review_of_a_resource_no_path_serves_is_unusable(
    posted: list[dict[str, Any]],
    runtime: webhooks.Runtime,
) -> None:
    def configmap(body: dict[str, Any]) -> None:
        body["request"]["resource"] = {"group": "", "version": "v1", "resource": "configmaps"}

    with pytest.raises(webhooks.UnusableReview):
        await webhooks.answer(review(configmap), webhook="frozen-managed", runtime=runtime)


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param(True, id="not-a-mapping"),
        pytest.param(None, id="null"),
        pytest.param({"name": "web", "uid": ["x"]}, id="a-uid-that-is-a-list"),
    ],
)
async def test_a_review_whose_object_has_unusable_metadata_is_unusable(
    posted: list[dict[str, Any]], runtime: webhooks.Runtime, metadata: Any
) -> None:
    def bad(body: dict[str, Any]) -> None:
        body["request"]["object"]["metadata"] = metadata

    with pytest.raises(webhooks.UnusableReview):
        await webhooks.answer(review(bad), webhook="frozen-managed", runtime=runtime)
    await settle(runtime)
    assert posted == []


async def test_a_policy_that_does_not_compile_is_answered_with_422(
    posted: list[dict[str, Any]],
    runtime: webhooks.Runtime,
) -> None:
    broken = {
        "apiVersion": f"{models.GROUP}/{models.VERSION}",
        "kind": models.POLICY_KIND,
        "metadata": {"name": "broken"},
        "spec": {
            "stages": ["create"],
            "rules": [{"name": "r", "expression": "object.(", "message": "m"}],
        },
    }

    def policy_review(body: dict[str, Any]) -> None:
        body["request"].update(
            resource={
                "group": models.GROUP,
                "version": models.VERSION,
                "resource": "guardrailpolicies",
            },
            operation="CREATE",
            object=broken,
            oldObject=None,
        )

    response = await webhooks.answer(review(policy_review), webhook="policies", runtime=runtime)
    payload = response["response"]
    assert (payload["allowed"], payload["status"]["code"]) == (False, 422)
    assert payload["status"]["message"].startswith("GuardrailPolicy broken is refused: ")


def test_the_registered_target_is_compared_without_paths_or_ca() -> None:
    local = webhooks.Options(listen_port=9443)
    assert local.target() == "https://localhost:9443"
    by_url = webhooks.Options(url="https://127.0.0.1:9555")
    in_cluster = webhooks.Options(service="permafrost-system/permafrost-webhook:443")
    assert in_cluster.target() == "service permafrost-system/permafrost-webhook:443"
    configuration = admission.webhook_configuration(
        name="permafrost-frozen-workloads",
        client_config=by_url.client_config(b"ca"),
        settings=by_url.settings,
    )
    assert webhooks.registered_target(configuration) == by_url.target()
    assert webhooks.registered_target(configuration) != local.target()
    assert webhooks.registered_target(None) is None


@pytest.mark.parametrize(
    ("data", "said"),
    [
        pytest.param({}, "has no 'ca.crt', 'tls.crt', 'tls.key'", id="no-keys"),
        pytest.param(
            {"ca.crt": "bm90IGEgY2VydA==", "tls.crt": "x", "tls.key": "x"},
            "'ca.crt'",
            id="not-a-certificate",
        ),
        pytest.param({"certificate": "x", "key": "y"}, "has no", id="the-wrong-key-names"),
    ],
)
async def test_a_user_tls_secret_that_cannot_be_used_is_said_in_one_line(
    monkeypatch: pytest.MonkeyPatch, data: dict[str, str], said: str
) -> None:
    """``--tls-secret`` naming a Secret with wrong or broken keys: a permanent error (the
    operator stops with that one line), naming the Secret, what is wrong and what is expected."""

    async def read_secret(namespace: str, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": namespace}, "data": data}

    monkeypatch.setattr(kube, "read_secret", read_secret)
    options = webhooks.Options(tls_secret="webhook-cert", namespace="permafrost-system")
    with pytest.raises(kopf.PermanentError) as refused:
        await webhooks._load_bundle(options, now=datetime.datetime.now(datetime.UTC))
    message = str(refused.value)
    assert message.startswith("TLS Secret permafrost-system/webhook-cert cannot be used: ")
    assert said in message
    assert "tls.crt, tls.key and ca.crt" in message
    assert "\n" not in message


def mount(directory: pathlib.Path, version: str, files: dict[str, bytes]) -> None:
    """Write ``files`` as the kubelet writes a Secret volume: in a timestamped directory that the
    ``..data`` symlink points at (swapped atomically on an update), with a symlink per file."""
    directory.mkdir(exist_ok=True)
    (directory / version).mkdir()
    for name, content in files.items():
        (directory / version / name).write_bytes(content)
    link = directory / "..data_tmp"
    link.symlink_to(version)
    link.replace(directory / "..data")
    for name in files:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")


def pem_files(bundle: certs.Bundle) -> dict[str, bytes]:
    return {"ca.crt": bundle.ca_cert, "tls.crt": bundle.cert, "tls.key": bundle.key}


async def test_a_mounted_tls_secret_is_read_one_version_at_a_time(tmp_path: pathlib.Path) -> None:
    """``--tls-dir``: the files of a mounted Secret are served, with no ``ca.key`` needed; when
    the kubelet swaps in a new version, the new certificate and key are read together."""
    now = datetime.datetime.now(datetime.UTC)
    ca = certs.new_ca(now=now)
    first = certs.issue(hostnames=["localhost"], now=now, ca=ca)
    second = certs.issue(hostnames=["localhost"], now=now, ca=ca)
    directory = tmp_path / "tls"
    mount(directory, "..2026_12_01_10_00_00.1", pem_files(first))
    options = webhooks.Options(tls_dir=str(directory))
    loaded = await webhooks._load_bundle(options, now=now)
    assert (loaded.cert, loaded.key, loaded.ca_cert, loaded.ca_key) == (
        first.cert,
        first.key,
        first.ca_cert,
        b"",
    )
    mount(directory, "..2026_12_01_11_00_00.2", pem_files(second))
    loaded = await webhooks._load_bundle(options, now=now)
    assert (loaded.cert, loaded.key) == (second.cert, second.key)


async def test_plain_files_serve_too(tmp_path: pathlib.Path) -> None:
    """A directory of plain files (no kubelet symlinks) is read as it is."""
    now = datetime.datetime.now(datetime.UTC)
    bundle = certs.issue(hostnames=["localhost"], now=now)
    for name, content in pem_files(bundle).items():
        (tmp_path / name).write_bytes(content)
    loaded = await webhooks._load_bundle(webhooks.Options(tls_dir=str(tmp_path)), now=now)
    assert loaded.cert == bundle.cert


@pytest.mark.parametrize(
    ("files", "said"),
    [
        pytest.param({}, "there is no 'ca.crt', 'tls.crt', 'tls.key'", id="empty"),
        pytest.param(
            {"cert.pem": b"x", "key.pem": b"y"}, "there is no 'ca.crt'", id="the-wrong-file-names"
        ),
        pytest.param(
            {"ca.crt": b"not a certificate", "tls.crt": b"x", "tls.key": b"x"},
            "the file 'ca.crt'",
            id="not-a-certificate",
        ),
    ],
)
async def test_mounted_tls_files_that_cannot_be_used_are_said_in_one_line(
    tmp_path: pathlib.Path, files: dict[str, bytes], said: str
) -> None:
    """``--tls-dir`` with wrong or broken files: a permanent error (the operator stops with that
    one line), naming the directory, what is wrong and what is expected."""
    directory = tmp_path / "tls"
    mount(directory, "..2026_12_01_10_00_00.1", files)
    options = webhooks.Options(tls_dir=str(directory))
    with pytest.raises(kopf.PermanentError) as refused:
        await webhooks._load_bundle(options, now=datetime.datetime.now(datetime.UTC))
    message = str(refused.value)
    assert message.startswith(f"TLS files in {directory} cannot be used: ")
    assert said in message
    assert "Secret data" not in message
    assert "tls.crt, tls.key and ca.crt" in message
    assert "\n" not in message


async def test_an_unreadable_tls_dir_is_said_in_one_line(tmp_path: pathlib.Path) -> None:
    """A ``--tls-dir`` that is not a directory (a mount that is missing): one line."""
    (tmp_path / "file").write_text("")
    options = webhooks.Options(tls_dir=str(tmp_path / "file"))
    with pytest.raises(kopf.PermanentError) as refused:
        await webhooks._load_bundle(options, now=datetime.datetime.now(datetime.UTC))
    assert str(refused.value).startswith(f"TLS files in {tmp_path / 'file'} cannot be ")


async def test_a_renewed_certificate_is_served_by_the_same_listener(tmp_path: pathlib.Path) -> None:
    """:meth:`webhooks.Server.reload`: the next handshake gets the new certificate, on the very
    socket that served the old one (the listener is never closed, so no call fails meanwhile)."""
    now = datetime.datetime.now(datetime.UTC)
    ca = certs.new_ca(now=now)
    first = certs.issue(hostnames=["localhost"], now=now, ca=ca)
    second = certs.issue(hostnames=["localhost"], now=now, ca=ca)
    certfile, pkeyfile = webhooks._write(tmp_path, first)
    server = webhooks.Server(certfile=certfile, pkeyfile=pkeyfile)
    _, context = server._build_ssl()
    assert context is not None

    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    listener = await asyncio.start_server(close, "127.0.0.1", 0, ssl=context)
    port = listener.sockets[0].getsockname()[1]
    client = ssl.create_default_context(cadata=first.ca_cert.decode())

    async def served() -> int:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="localhost"
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return x509.load_der_x509_certificate(der).serial_number

    try:
        assert await served() == x509.load_pem_x509_certificate(first.cert).serial_number
        renewed = tmp_path / "renewed"
        renewed.mkdir()
        server.reload(*webhooks._write(renewed, second))
        assert await served() == x509.load_pem_x509_certificate(second.cert).serial_number
        assert listener.is_serving()
        assert certfile.read_bytes() == first.cert  # what Kopf watches never changes
    finally:
        listener.close()
        await listener.wait_closed()


# --- the server's own loop and thread ------------------------------------------------------------

# How long Kopf's loop is kept busy (a reconcile that holds it, on a loaded core).
BLOCK_SECONDS = 2.0


async def _no_kopf_dispatch(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("reviews are answered by webhooks.answer, never by Kopf's dispatch")


class Serving:
    """A :class:`webhooks.Server` listening on loopback with its own CA, for real HTTPS calls."""

    def __init__(self, tmp_path: pathlib.Path, runtime: webhooks.Runtime, *, threaded: bool):
        now = datetime.datetime.now(datetime.UTC)
        self.ca = certs.new_ca(now=now)
        first = certs.issue(hostnames=["localhost"], now=now, ca=self.ca)
        self.ca_pem = first.ca_cert.decode()
        certfile, pkeyfile = webhooks._write(tmp_path, first)
        self.server = webhooks.Server(
            addr="127.0.0.1", host="localhost", certfile=certfile, pkeyfile=pkeyfile,
            threaded=threaded,
        )  # fmt: skip
        self.server.runtime = runtime
        self.configs = self.server(_no_kopf_dispatch)
        self.url = ""

    async def start(self) -> None:
        # NB: as Kopf does: ``async with server``, whose exit closes the serving generator.
        await self.server.__aenter__()
        config = await anext(self.configs)
        self.url = str(config["url"]).rstrip("/")

    def post(self, body: dict[str, Any], *, path: str = "frozen-managed") -> dict[str, Any]:
        """POST a review as the apiserver does (blocking: run it in a thread)."""
        import json
        import urllib.request

        context = ssl.create_default_context(cadata=self.ca_pem)
        request = urllib.request.Request(
            f"{self.url}/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def served_serial(self) -> int:
        import socket

        context = ssl.create_default_context(cadata=self.ca_pem)
        port = int(self.url.rpartition(":")[2])
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    async def stop(self) -> None:
        await self.server.__aexit__(None, None, None)


async def _answer_while_the_loop_is_blocked(serving: Serving) -> tuple[dict[str, Any], float]:
    """Post a review from another thread while Kopf's loop (this one) is blocked; returns the
    answer and how long after the block ended it came (negative: before)."""
    import concurrent.futures
    import time

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answered_at: list[float] = []

        def call() -> dict[str, Any]:
            answer = serving.post(review())
            answered_at.append(time.monotonic())
            return answer

        future = pool.submit(call)
        time.sleep(BLOCK_SECONDS)  # noqa: ASYNC251  (the point: this loop is blocked)
        unblocked_at = time.monotonic()
        answer = await asyncio.wrap_future(future)
    return answer, answered_at[0] - unblocked_at


async def test_reviews_are_answered_while_kopfs_loop_is_blocked(
    tmp_path: pathlib.Path, posted: list[dict[str, Any]], runtime: webhooks.Runtime
) -> None:
    """The server runs on a loop and thread of its own: a review is answered, and its side
    effect (the Event) posted, while the operator's loop cannot run at all."""
    import threading

    serving = Serving(tmp_path, runtime, threaded=True)
    await serving.start()
    try:
        answer, lateness = await _answer_while_the_loop_is_blocked(serving)
        assert answer["response"]["allowed"] is False
        assert answer["response"]["status"]["code"] == 403
        assert lateness < -BLOCK_SECONDS / 2, f"answered {lateness:.2f} s after the block"
        for _ in range(100):  # the Event is posted by a task of the server's loop
            if posted:
                break
            await asyncio.sleep(0.02)
        assert [e["reason"] for e in posted] == [admission.TEMPLATE_FROZEN]
        names = {thread.name for thread in threading.enumerate()}
        assert webhooks.THREAD_NAME in names
    finally:
        await serving.stop()
    assert webhooks.THREAD_NAME not in {thread.name for thread in threading.enumerate()}
    with pytest.raises(ConnectionRefusedError):  # the listener is closed with its thread
        serving.served_serial()


async def test_on_kopfs_loop_a_review_waits_for_the_loop(
    tmp_path: pathlib.Path, posted: list[dict[str, Any]], runtime: webhooks.Runtime
) -> None:
    """The same call with the server on Kopf's loop (``--no-webhook-thread``) is answered only
    once the loop is free again: what the thread is for."""
    serving = Serving(tmp_path, runtime, threaded=False)
    await serving.start()
    try:
        answer, lateness = await _answer_while_the_loop_is_blocked(serving)
        assert answer["response"]["allowed"] is False
        assert lateness >= 0
    finally:
        await serving.stop()


async def test_a_renewed_certificate_is_served_by_the_threaded_listener(
    tmp_path: pathlib.Path, runtime: webhooks.Runtime
) -> None:
    """:meth:`webhooks.Server.reload` from the operator's loop changes the certificate on the
    server's loop, between its handshakes; the listener is never closed."""
    serving = Serving(tmp_path, runtime, threaded=True)
    await serving.start()
    try:
        before = await asyncio.to_thread(serving.served_serial)
        second = certs.issue(
            hostnames=["localhost"], now=datetime.datetime.now(datetime.UTC), ca=serving.ca
        )
        renewed = tmp_path / "renewed"
        renewed.mkdir()
        await asyncio.to_thread(serving.server.reload, *webhooks._write(renewed, second))
        after = await asyncio.to_thread(serving.served_serial)
        assert before != after
        assert after == x509.load_pem_x509_certificate(second.cert).serial_number
    finally:
        await serving.stop()


async def test_a_port_already_taken_is_raised_on_kopfs_loop(
    tmp_path: pathlib.Path, runtime: webhooks.Runtime
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        serving = Serving(tmp_path, runtime, threaded=True)
        serving.server.port = taken.getsockname()[1]
        # NB: Kopf's listener sets SO_REUSEPORT: only a socket without it keeps the port.
        with pytest.raises(OSError, match="address already in use"):
            await serving.start()
        await serving.stop()


# --- exec, attach, port-forward (CONNECT) -------------------------------------------------------


def connect_review(subresource: str, *, user: str, groups: list[str]) -> dict[str, Any]:
    """An AdmissionReview of ``kubectl exec`` as the apiserver sends it: the object is the
    options, with no metadata; the pod is only named."""
    kind = {"exec": "PodExecOptions", "attach": "PodAttachOptions"}.get(
        subresource, "PodPortForwardOptions"
    )
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "subResource": subresource,
            "name": "web-1",
            "namespace": NS,
            "operation": "CONNECT",
            "userInfo": {"username": user, "groups": groups},
            "object": {"kind": kind, "apiVersion": "v1", "command": ["sh"], "container": "web"},
            "oldObject": None,
            "dryRun": False,
        },
    }


def managed_pod(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-1",
            "namespace": NS,
            "uid": "6a0c3f5e-0000-4000-8000-0000000000aa",
            "labels": {models.LABEL_RELEASE: "web", models.LABEL_REVISION: "abc"},
            "annotations": annotations or {},
        },
    }


async def test_an_exec_into_a_frozen_pod_is_denied_and_recorded_once_per_occurrence(
    posted: list[dict[str, Any]], runtime: webhooks.Runtime, holds: Holds
) -> None:
    holds["web-1"] = managed_pod()
    body = connect_review("exec", user="bob", groups=["system:authenticated"])
    assert webhooks.malformed(body) is None
    first = await webhooks.answer(body, webhook="pods-connect", runtime=runtime)
    again = await webhooks.answer(body, webhook="pods-connect", runtime=runtime)
    await settle(runtime)
    for response in (first, again):
        payload = response["response"]
        assert payload["allowed"] is False
        assert payload["status"]["code"] == 403
        assert f"exec into Pod {NS}/web-1 is denied" in payload["status"]["message"]
    assert [e["reason"] for e in posted] == ["ExecDenied", "ExecDenied"]
    assert posted[0]["key"] == posted[1]["key"]  # one Event: the second post is a 409


async def test_an_exec_under_a_session_is_let_through_and_marks_the_pod(
    posted: list[dict[str, Any]],
    runtime: webhooks.Runtime,
    holds: Holds,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    session = sessions.open_session(
        user="alice", reason="INC-7", duration=datetime.timedelta(minutes=5), now=now
    )
    holds["web-1"] = managed_pod(session.annotations())
    marked: list[tuple[str, str, Any]] = []

    async def patch_pod_metadata(namespace: str, name: str, **kwargs: Any) -> None:
        marked.append((namespace, name, kwargs))

    async def read_release(namespace: str, name: str) -> dict[str, Any] | None:
        return {"metadata": {"name": name, "namespace": namespace, "uid": "r-1"}}

    monkeypatch.setattr(kube, "patch_pod_metadata", patch_pod_metadata)
    monkeypatch.setattr(kube, "read_release", read_release)
    body = connect_review("exec", user="alice", groups=["permafrost:break-glass"])
    response = await webhooks.answer(body, webhook="pods-connect", runtime=runtime)
    await settle(runtime)
    assert response["response"]["allowed"] is True
    assert "is recorded" in response["response"]["warnings"][0]
    assert marked == [(NS, "web-1", {"labels": {sessions.LABEL_TAINTED: "exec"}})]
    assert [(e["reason"], e["involved"]["kind"]) for e in posted] == [
        ("BreakGlassExec", "Pod"),
        ("BreakGlassExec", models.KIND),
    ]
    assert "alice ran exec ['sh']" in posted[0]["message"]
    # Port-forward under the same session does not mark the pod.
    marked.clear()
    body = connect_review("portforward", user="alice", groups=["permafrost:break-glass"])
    response = await webhooks.answer(body, webhook="pods-connect", runtime=runtime)
    await settle(runtime)
    assert response["response"]["allowed"] is True
    assert marked == []
