"""The Kubernetes adapter's reports of what the apiserver refused."""

from __future__ import annotations

import json
import threading

import pytest
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


class _Response:
    """What the client returns with ``_preload_content=False``: the body is still unread."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.read_in: str | None = None
        self.released = False

    @property
    def data(self) -> bytes:
        self.read_in = threading.current_thread().name
        return self._body

    def release_conn(self) -> None:
        self.released = True


async def test_a_response_body_is_read_and_parsed_off_the_event_loop() -> None:
    responses: list[_Response] = []

    def call(*_: object, **kwargs: object) -> _Response:
        assert kwargs["_preload_content"] is False
        responses.append(_Response(b'{"kind": "ConfigMap"}'))
        return responses[-1]

    loop_thread = threading.current_thread().name
    assert await kube._raw(call) == {"kind": "ConfigMap"}
    (response,) = responses
    assert response.read_in is not None
    assert response.read_in != loop_thread
    assert response.released


async def test_a_response_is_released_to_the_pool_even_when_its_body_is_not_json() -> None:
    responses: list[_Response] = []

    def call(*_: object, **__: object) -> _Response:
        responses.append(_Response(b"<html>proxy error</html>"))
        return responses[-1]

    with pytest.raises(json.JSONDecodeError):
        await kube._raw(call)
    assert responses[0].released


async def test_an_empty_response_body_is_none() -> None:
    assert await kube._raw(lambda *_, **__: _Response(b"")) is None


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


def test_a_refusal_says_what_the_apiserver_said_and_nothing_else_is_one() -> None:
    denied = json.dumps(
        {
            "kind": "Status",
            "message": 'deployments.apps "web-1" is forbidden: ValidatingAdmissionPolicy '
            "'permafrost-frozen-workloads' denied request: frozen",
        }
    )
    assert kube.refusal(_refusal(denied)) == (
        '403 deployments.apps "web-1" is forbidden: ValidatingAdmissionPolicy '
        "'permafrost-frozen-workloads' denied request: frozen"
    )
    for status in (400, 422):
        invalid = ApiException(status=status, reason="Invalid")
        invalid.body = json.dumps({"message": "spec.replicas: Invalid value"})
        assert kube.refusal(invalid) == f"{status} spec.replicas: Invalid value"
    for status in (404, 409, 429, 500, 503):
        assert kube.refusal(ApiException(status=status, reason="x")) is None
    assert kube.refusal(ValueError("not an API error")) is None
