"""The real webhook server under generated AdmissionReview bodies (property-based, ``hypothesis``).

Bodies are posted over HTTPS on loopback to the operator's own server (``permafrost run
--admission``), on every path it serves. Whatever the body — arbitrary JSON, reviews with
fields of the wrong type, objects of any shape and depth, unknown resources, unicode everywhere —
the answer is HTTP 400 or a well-formed AdmissionReview for the request's uid whose denials are
Permafrost's own (403 frozen, 403/422 policy), never a handler crash (500); and the operator
survives. ``PERMAFROST_CHAOS=long`` posts many more (``make chaos``).

The hand-picked malformed and oversized reviews are in ``test_admission_vectors.py``.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import uuid
from typing import Any

import hypothesis
from hypothesis import strategies as st
from test_admission_vectors import _wait_until_serving, webhook_port

from conftest import Operator
from k8s_harness import Cluster

LONG = os.environ.get("PERMAFROST_CHAOS") == "long"
EXAMPLES = 1_500 if LONG else 150
PATHS = ("/frozen-enforced", "/frozen-managed", "/releases", "/policies", "/unknown")
RESOURCES = [
    {"group": "apps", "version": "v1", "resource": "deployments"},
    {"group": "apps", "version": "v1", "resource": "statefulsets"},
    {"group": "apps", "version": "v1", "resource": "daemonsets"},
    {"group": "apps", "version": "v1", "resource": "replicasets"},
    {"group": "", "version": "v1", "resource": "pods"},
    {"group": "permafrost.dev", "version": "v1alpha1", "resource": "guardedreleases"},
    {"group": "permafrost.dev", "version": "v1alpha1", "resource": "guardrailpolicies"},
    {"group": "example.com", "version": "v9", "resource": "widgets"},
]
OWN_DENIALS = {403, 422}

text = st.text(max_size=30) | st.sampled_from(["", "🧊", "\u202e", "a\x00b", "../../etc"])
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=30,
)


@st.composite
def workloads(draw: st.DrawFn) -> dict[str, Any]:
    """Objects shaped like workloads, with any field possibly of the wrong type."""
    image = draw(
        st.sampled_from(["reg.example/app@sha256:" + "a" * 64, "reg.example/app:latest", ""]) | text
    )
    container: Any = draw(
        st.sampled_from([{"name": "app", "image": image}, {"image": image}, image, None])
        | json_values
    )
    spec: Any = {
        "replicas": draw(st.integers(-1, 5) | text),
        "template": draw(
            st.sampled_from(
                [
                    {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [container]}},
                    {"spec": {"containers": container}},
                    None,
                ]
            )
            | json_values
        ),
    }
    meta: Any = {
        "name": draw(text),
        "namespace": draw(text),
        "uid": draw(text),
        "labels": draw(
            st.dictionaries(
                st.sampled_from(["permafrost.dev/release", "permafrost.dev/revision", "app"]),
                text,
            )
            | json_values
        ),
        "annotations": draw(
            st.dictionaries(
                st.sampled_from(
                    [
                        "permafrost.dev/break-glass",
                        "permafrost.dev/template-fingerprint",
                        "permafrost.dev/drift-detected-at",
                    ]
                ),
                text,
            )
            | json_values
        ),
    }
    return {
        "apiVersion": draw(st.sampled_from(["apps/v1", "v1", "permafrost.dev/v1alpha1"])),
        "kind": draw(
            st.sampled_from(["Deployment", "Pod", "GuardedRelease", "GuardrailPolicy"]) | text
        ),
        "metadata": draw(st.just(meta) | json_values),
        "spec": draw(st.just(spec) | json_values),
    }


@st.composite
def reviews(draw: st.DrawFn) -> tuple[str, bytes, str | None]:
    """(path, body, the uid when the body carries a string uid)."""
    path = draw(st.sampled_from(PATHS))
    shape = draw(st.integers(0, 9))
    if shape == 0:
        return path, draw(st.binary(max_size=200)), None
    if shape == 1:
        return path, json.dumps(draw(json_values)).encode(), None
    if shape == 2:
        # Nesting deeper than any parser's recursion: the object of a review, 1k to 100k deep.
        depth = draw(st.integers(1_000, 100_000))
        nested = b"[" * depth + b"]" * depth
        return (
            path,
            b'{"kind":"AdmissionReview","request":{"uid":"u","object":' + nested + b"}}",
            None,
        )
    uid = str(uuid.uuid4())
    request: dict[str, Any] = {
        "uid": uid,
        "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
        "resource": draw(st.sampled_from(RESOURCES)),
        "subResource": draw(st.sampled_from([None, "scale", "status", "ephemeralcontainers"])),
        "name": draw(text),
        "namespace": draw(text),
        "operation": draw(st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"])),
        "userInfo": {
            "username": draw(text),
            "groups": draw(
                st.lists(
                    st.sampled_from(["permafrost:break-glass", "system:masters"]) | text,
                    max_size=3,
                )
            ),
        },
        "object": draw(workloads()),
        "oldObject": draw(workloads() | st.none()),
        "dryRun": True,  # NB: nothing generated here is ever recorded as an Event
    }
    # Then break up to two fields: deleted, or replaced by any JSON value.
    for key in draw(st.sets(st.sampled_from(sorted(request)), max_size=2)):
        if key != "dryRun" and draw(st.booleans()):
            request[key] = draw(json_values)
        elif key != "dryRun":
            del request[key]
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    raw_uid = request.get("uid")
    return path, json.dumps(review).encode(), raw_uid if isinstance(raw_uid, str) else None


def post(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_the_webhook_answers_every_generated_review_with_a_review_or_a_400(
    crds: Cluster, namespace: str, guarded_operator: Operator
) -> None:
    port = webhook_port(guarded_operator)
    _wait_until_serving(port, namespace)
    tried: list[int] = []

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=not LONG,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(reviews())
    def answered(case: tuple[str, bytes, str | None]) -> None:
        path, body, uid = case
        status, answer = post(port, path, body)
        tried.append(status)
        if path == "/unknown" or status != 200:
            # Kopf answers a path it does not serve like a review of no handler; otherwise 400.
            assert status in (200, 400), f"HTTP {status} for {body[:300]!r}: {answer[:300]!r}"
        if status == 200:
            review = json.loads(answer)
            assert review["kind"] == "AdmissionReview"
            response = review["response"]
            assert isinstance(response["allowed"], bool)
            if uid is not None:
                assert response["uid"] == uid
            if not response["allowed"]:
                assert response["status"]["code"] in OWN_DENIALS, (
                    f"a handler failed on {body[:500]!r}: {response['status']}"
                )
        assert guarded_operator.proc is not None
        assert guarded_operator.proc.poll() is None, "the operator died"

    answered()
    assert len(tried) >= EXAMPLES
    log = guarded_operator.log.read_text(errors="replace")
    assert "Traceback" not in log
    print(f"webhook fuzz: {len(tried)} reviews posted, {tried.count(400)} answered 400")
