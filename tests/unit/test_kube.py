"""The Kubernetes adapter's reports of what the apiserver refused."""

from __future__ import annotations

import json

from kubernetes.client.exceptions import ApiException

from permafrost import kube


def _refusal(body: str | None) -> ApiException:
    exc = ApiException(status=403, reason="Forbidden")
    exc.body = body
    return exc


def test_a_refusal_is_reported_with_the_apiserver_s_message() -> None:
    message = (
        'events is forbidden: User "system:serviceaccount:permafrost-system:permafrost" '
        'cannot create resource "events" in API group "" in the namespace "shop"'
    )
    body = json.dumps({"kind": "Status", "reason": "Forbidden", "message": message})
    assert kube.status_message(_refusal(body)) == message


def test_a_refusal_without_a_usable_body_is_reported_with_its_http_reason() -> None:
    for body in (None, "", "not json", "[1, 2]", json.dumps({"kind": "Status"})):
        assert kube.status_message(_refusal(body)) == "Forbidden"


def test_a_namespace_being_deleted_is_told_apart_from_a_missing_permission() -> None:
    terminating = json.dumps(
        {
            "kind": "Status",
            "reason": "Forbidden",
            "message": 'deployments.apps "web-1" is forbidden: unable to create new content in '
            "namespace shop because it is being terminated",
            "details": {
                "name": "web-1",
                "kind": "deployments",
                "causes": [{"reason": "NamespaceTerminating", "message": "namespace shop is "
                            "being terminated", "field": "metadata.namespace"}],
            },
        }
    )  # fmt: skip
    assert kube.namespace_terminating(_refusal(terminating))
    rbac = json.dumps({"kind": "Status", "reason": "Forbidden", "message": "cannot create"})
    for body in (rbac, None, "", "not json", "[1, 2]", json.dumps({"details": {"causes": None}})):
        assert not kube.namespace_terminating(_refusal(body))
    not_forbidden = ApiException(status=409, reason="Conflict")
    not_forbidden.body = terminating
    assert not kube.namespace_terminating(not_forbidden)
    assert not kube.namespace_terminating(ValueError("not an API error"))
