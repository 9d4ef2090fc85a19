"""The Kubernetes adapter: the only module that talks to the API server.

It uses the official synchronous client, always through :func:`asyncio.to_thread`, so the
operator's event loop never blocks on the network. Reads return raw JSON (``dict``) exactly as
the apiserver sent it; writes take manifests built by the pure core. Every write is idempotent:
"already exists" on create and "not found" on delete are success, so a plan can be re-applied
after a crash at any point.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

import kubernetes
import urllib3
import yaml
from kubernetes.client.exceptions import ApiException

from permafrost import models
from permafrost.releases import hashing, manifests, planner

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Clients:
    """The API groups Permafrost uses, sharing one connection pool."""

    def __init__(self, api_client: Any) -> None:
        self.api = api_client
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.discovery = kubernetes.client.DiscoveryV1Api(api_client)
        self.batch = kubernetes.client.BatchV1Api(api_client)


@functools.cache
def clients() -> Clients:
    """Clients for the in-cluster service account, or else the local kubeconfig."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    # NB: the client's default pool (4) throttles parallel reads of many releases.
    configuration.connection_pool_maxsize = 32
    return Clients(kubernetes.client.ApiClient(configuration))


# NB: every request is bounded: without a timeout, a half-open connection (a peer gone without a
# reset: a NAT or load-balancer drop, a stalled apiserver) hangs the calling thread for ever,
# and with it the reconcile that waits for it. The operator and the command line each set it.
_REQUEST_TIMEOUT: float | None = None
CONNECT_TIMEOUT = 10.0


def bound_requests(*, seconds: float | None) -> None:
    """Give up on any request that connects in no more than :data:`CONNECT_TIMEOUT` or then
    sends nothing for ``seconds`` (``None``: wait for ever; only for tests of this module)."""
    global _REQUEST_TIMEOUT
    _REQUEST_TIMEOUT = seconds


async def _call(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    if _REQUEST_TIMEOUT is not None:
        kwargs.setdefault(
            "_request_timeout", (min(CONNECT_TIMEOUT, _REQUEST_TIMEOUT), _REQUEST_TIMEOUT)
        )
    return await asyncio.to_thread(fn, *args, **kwargs)


def _read_json(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call a client method and read, parse and release its response (in the calling thread).

    NB: with ``_preload_content=False`` the client returns as soon as the headers arrive; the
    body is still on the socket. Reading it is network I/O and parsing it is CPU: both belong
    in the worker thread, never on the event loop. The connection goes back to the pool only
    once the body is read, so it is always read, whatever the caller needs of it.
    """
    response = fn(*args, _preload_content=False, **kwargs)
    try:
        data = response.data
    finally:
        response.release_conn()
    return json.loads(data) if data else None


async def _raw(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call a client method in a thread and return the response body as raw JSON."""
    return await _call(_read_json, fn, *args, **kwargs)


async def _get_or_none(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    try:
        return await _raw(fn, *args, **kwargs)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


# --- reads -------------------------------------------------------------------------------------


async def read_release(*, namespace: str, name: str) -> dict[str, Any] | None:
    c = clients()
    result: dict[str, Any] | None = await _get_or_none(
        c.custom.get_namespaced_custom_object,
        models.GROUP,
        models.VERSION,
        namespace,
        models.PLURAL,
        name,
    )
    return result


async def list_revision_deployments(*, namespace: str, release: str) -> list[dict[str, Any]]:
    c = clients()
    selector = f"{models.LABEL_RELEASE}={manifests.release_label(release)}"
    body = await _raw(c.apps.list_namespaced_deployment, namespace, label_selector=selector)
    return [d for d in body.get("items", []) if _owned_by(d, release)]


async def list_revision_pods(*, namespace: str, release: str) -> list[dict[str, Any]]:
    c = clients()
    selector = f"{models.LABEL_RELEASE}={manifests.release_label(release)}"
    body = await _raw(c.core.list_namespaced_pod, namespace, label_selector=selector)
    items: list[dict[str, Any]] = body.get("items", [])
    return items


def _owned_by(obj: Mapping[str, Any], release: str) -> bool:
    # NB: the label value is bounded (63 chars), so two long release names could share it;
    # the ownerReference says which release a revision Deployment really belongs to.
    return any(
        ref.get("kind") == models.KIND and ref.get("name") == release
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or []
    )


class ConfigForbidden(Exception):
    """The operator may not read an object a release names (HTTP 403): a referenced
    ConfigMap/Secret, an image pull Secret, its pods' ServiceAccount (or the nodes)."""

    def __init__(self, kind: str, name: str, detail: str) -> None:
        super().__init__(f"{kind} {name}: {detail}")
        self.kind, self.name, self.detail = kind, name, detail


async def read_config(*, namespace: str, ref: models.ConfigRef) -> dict[str, Any] | None:
    """A referenced ConfigMap/Secret; ``None`` if it does not exist.

    Raises :class:`ConfigForbidden` if the operator may not read it (Secrets are granted per
    namespace).
    """
    c = clients()
    read = (
        c.core.read_namespaced_config_map
        if ref.kind == "ConfigMap"
        else (c.core.read_namespaced_secret)
    )
    return await _read_named(read, kind=ref.kind, namespace=namespace, name=ref.name)


async def _read_named(
    read: Callable[..., Any], *, kind: str, namespace: str, name: str
) -> dict[str, Any] | None:
    """One object read by name; ``None`` if it does not exist; :class:`ConfigForbidden` if the
    operator may not read it (a 403: not a bug, a grant missing in that namespace)."""
    try:
        result: dict[str, Any] | None = await _get_or_none(read, name, namespace)
    except ApiException as exc:
        if exc.status == 403:
            raise ConfigForbidden(kind, name, status_message(exc)) from None
        raise
    return result


async def read_pull_secret(*, namespace: str, name: str) -> dict[str, Any] | None:
    """An image pull Secret a release's pods name, read by name (never listed or watched);
    ``None`` if it does not exist. Raises :class:`ConfigForbidden` if the operator may not read
    it (Secrets are granted per namespace: the ClusterRole permafrost-secrets)."""
    return await _read_named(
        clients().core.read_namespaced_secret, kind="Secret", namespace=namespace, name=name
    )


async def read_service_account(*, namespace: str, name: str) -> dict[str, Any] | None:
    """The ServiceAccount a release's pods run as (for its imagePullSecrets); ``None`` if it
    does not exist. Raises :class:`ConfigForbidden` if the operator may not read it."""
    return await _read_named(
        clients().core.read_namespaced_service_account,
        kind="ServiceAccount",
        namespace=namespace,
        name=name,
    )


async def list_nodes() -> list[dict[str, Any]]:
    """Every node (for the platforms the registry check wants). Raises
    :class:`ConfigForbidden` if the operator may not list them."""
    try:
        body = await _raw(clients().core.list_node)
    except ApiException as exc:
        if exc.status == 403:
            raise ConfigForbidden("Node", "", status_message(exc)) from None
        raise
    return list(body.get("items") or [])


async def list_services(namespace: str) -> list[dict[str, Any]]:
    """Every Service of the namespace (a release's Service, and others that may select its pods)."""
    body = await _raw(clients().core.list_namespaced_service, namespace)
    return list(body.get("items") or [])


async def list_endpoint_slices(*, namespace: str, service: str) -> list[dict[str, Any]]:
    """The EndpointSlices of a Service: the endpoints kube-proxy routes its requests to."""
    body = await _raw(
        clients().discovery.list_namespaced_endpoint_slice,
        namespace,
        label_selector=f"kubernetes.io/service-name={service}",
    )
    return list(body.get("items") or [])


class ApiProblem(Exception):
    """The API could not be used, in words for people: ``kind`` is one of the constants below."""

    KUBECONFIG = "kubeconfig"  # no kubeconfig, or one that cannot be used
    UNREACHABLE = "unreachable"  # no answer from the API server
    FORBIDDEN = "forbidden"  # the API server refused who we are (401/403)
    NOT_INSTALLED = "not-installed"  # Permafrost's CRDs are not installed
    REFUSED = "refused"  # any other error the API server answered with

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def problem_of(exc: BaseException) -> ApiProblem | None:
    """What ``exc``, raised by a call into this module, means for a person; ``None``: a bug."""
    if isinstance(exc, ApiProblem):
        return exc
    if isinstance(exc, kubernetes.config.ConfigException | yaml.YAMLError):
        return ApiProblem(ApiProblem.KUBECONFIG, "; ".join(str(exc).split("\n")))
    if isinstance(exc, ApiException):
        if exc.status in (401, 403):
            return ApiProblem(ApiProblem.FORBIDDEN, _api_message(exc))
        if exc.status == 0 or exc.status is None:
            return ApiProblem(ApiProblem.UNREACHABLE, str(exc.reason))
        return ApiProblem(ApiProblem.REFUSED, f"{exc.status} {_api_message(exc)}")
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        reason = getattr(exc, "reason", None) or exc
        return ApiProblem(ApiProblem.UNREACHABLE, str(reason))
    return None


def _api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)


def default_namespace() -> str:
    """The namespace kubectl would use: the current kubeconfig context's, else ``default``."""
    try:
        _, active = kubernetes.config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
    except (kubernetes.config.ConfigException, yaml.YAMLError, OSError):
        return "default"
    return str(((active or {}).get("context") or {}).get("namespace") or "default")


def server_address() -> str:
    """Where the API server is, as the configuration says."""
    return str(clients().api.configuration.host)


# --- reads for the command line ----------------------------------------------------------------


async def list_releases(namespace: str | None) -> list[dict[str, Any]]:
    """The GuardedReleases of ``namespace`` (``None``: every namespace), sorted by name.

    Raises :class:`ApiProblem` (``NOT_INSTALLED``) if the CRD is not installed.
    """
    c = clients()
    if namespace is None:
        body = await _get_or_none(
            c.custom.list_cluster_custom_object, models.GROUP, models.VERSION, models.PLURAL
        )
    else:
        body = await _get_or_none(
            c.custom.list_namespaced_custom_object,
            models.GROUP,
            models.VERSION,
            namespace,
            models.PLURAL,
        )
    if body is None:
        raise ApiProblem(ApiProblem.NOT_INSTALLED, f"{models.PLURAL}.{models.GROUP}")
    items: list[dict[str, Any]] = body.get("items", [])
    return sorted(items, key=lambda r: (r["metadata"]["namespace"], r["metadata"]["name"]))


async def find_release(*, namespace: str, name: str) -> dict[str, Any] | None:
    """The GuardedRelease, or ``None`` if there is none of that name.

    Raises :class:`ApiProblem` (``NOT_INSTALLED``) if the CRD is not installed: the apiserver
    answers 404 for both, and only a list tells them apart.
    """
    body = await read_release(namespace=namespace, name=name)
    if body is None:
        await list_releases(namespace)
    return body


async def list_events(namespace: str, *, kind: str, names: Collection[str]) -> list[dict[str, Any]]:
    """The Events about objects of ``kind`` named one of ``names`` in ``namespace``."""
    if not names:
        return []
    c = clients()
    selector = f"involvedObject.kind={kind}"
    if len(names) == 1:
        selector += f",involvedObject.name={next(iter(names))}"
    body = await _raw(c.core.list_namespaced_event, namespace, field_selector=selector)
    wanted = set(names)
    return [
        e for e in body.get("items", []) if (e.get("involvedObject") or {}).get("name") in wanted
    ]


# --- writes ------------------------------------------------------------------------------------


async def _create(*, fn: Callable[..., Any], namespace: str, body: Mapping[str, Any]) -> Any:
    try:
        return await _raw(fn, namespace, dict(body))
    except ApiException as exc:
        if exc.status == 409:
            return None
        raise


async def create_revision(*, namespace: str, action: planner.CreateRevision) -> None:
    """Create the Deployment (unless ``action.resume``: it exists), then its snapshots owned by
    it (so they go when it goes); what exists already is left alone."""
    c = clients()
    name = action.deployment["metadata"]["name"]
    created = (
        None
        if action.resume
        else await _create(
            fn=c.apps.create_namespaced_deployment, namespace=namespace, body=action.deployment
        )
    )
    deployment = created or await _raw(c.apps.read_namespaced_deployment, name, namespace)
    owner = manifests.owner_reference(
        api_version="apps/v1", kind="Deployment", name=name, uid=deployment["metadata"]["uid"]
    )
    for snapshot in action.snapshots:
        body = {**snapshot, "metadata": {**snapshot["metadata"], "ownerReferences": [owner]}}
        create = (
            c.core.create_namespaced_config_map
            if snapshot["kind"] == "ConfigMap"
            else (c.core.create_namespaced_secret)
        )
        await _create(fn=create, namespace=namespace, body=body)


class JobRefused(Exception):
    """The apiserver refused a gate's Job (invalid, or denied by admission): the gate is wrong."""


async def run_gate_job(*, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The Job of one measurement of a job gate as it is now, created first if it does not
    exist. Raises :class:`JobRefused` with the apiserver's message on a 400, 403 or 422."""
    c = clients()
    name = body["metadata"]["name"]
    job = await _get_or_none(c.batch.read_namespaced_job, name, namespace)
    if job is not None:
        return dict(job)
    try:
        created = await _create(fn=c.batch.create_namespaced_job, namespace=namespace, body=body)
    except ApiException as exc:
        if exc.status in (400, 403, 422):
            raise JobRefused(f"{exc.status} {_api_message(exc)}") from None
        raise
    # NB: None: it was created meanwhile (409), by another look at the same measurement.
    return dict(created or await _raw(c.batch.read_namespaced_job, name, namespace))


async def scale(*, namespace: str, name: str, replicas: int) -> None:
    """Change only the replica count, through the scale subresource."""
    await _call(
        clients().apps.patch_namespaced_deployment_scale,
        name,
        namespace,
        {"spec": {"replicas": replicas}},
    )


async def route_service(*, namespace: str, action: planner.RouteService) -> None:
    c = clients()
    if action.create is not None:
        created = await _create(
            fn=c.core.create_namespaced_service, namespace=namespace, body=action.create
        )
        if created is not None:
            return
    # NB: a merge patch would merge the old selector's keys into the new one; replace it whole.
    patch = [{"op": "replace", "path": "/spec/selector", "value": dict(action.selector)}]
    try:
        await _call(c.core.patch_namespaced_service, action.name, namespace, patch)
    except ApiException as exc:
        if exc.status != 422:
            raise
        # The Service has no selector at all: "replace" needs a path that exists.
        patch = [{"op": "add", "path": "/spec/selector", "value": dict(action.selector)}]
        await _call(c.core.patch_namespaced_service, action.name, namespace, patch)


async def delete_revision(*, namespace: str, name: str) -> None:
    try:
        await _call(
            clients().apps.delete_namespaced_deployment,
            name,
            namespace,
            propagation_policy="Background",
        )
    except ApiException as exc:
        if exc.status != 404:
            raise


async def apply(*, namespace: str, action: planner.Action) -> None:
    """Carry out one planned action."""
    match action:
        case planner.CreateRevision():
            await create_revision(namespace=namespace, action=action)
        case planner.Scale(name=name, replicas=replicas):
            await scale(namespace=namespace, name=name, replicas=replicas)
        case planner.RouteService():
            await route_service(namespace=namespace, action=action)
        case planner.Annotate(name=name, annotations=annotations):
            await patch_workload_metadata(
                namespace=namespace, kind="Deployment", name=name, annotations=annotations
            )
        case planner.DeleteRevision(name=name):
            await delete_revision(namespace=namespace, name=name)
        case planner.Measure():
            # NB: no API call: the reconciler takes measurements (permafrost.gates.probes).
            raise ValueError(f"not a Kubernetes action: {action}")


async def patch_status(
    namespace: str,
    name: str,
    status: models.GuardedReleaseStatus,
    *,
    resource_version: str | None = None,
) -> None:
    """Write the whole status with one merge patch (top-level fields set to null are cleared).

    With ``resource_version``, only if the release is still at that version (else the apiserver
    answers 409 Conflict): a status planned from an older release is never written.
    """
    body = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    for field in models.GuardedReleaseStatus.model_fields.values():
        body.setdefault(field.alias or "", None)
    body.pop("", None)
    patch: dict[str, Any] = {"status": body}
    if resource_version is not None:
        patch["metadata"] = {"resourceVersion": resource_version}
    try:
        await _call(
            clients().custom.patch_namespaced_custom_object_status,
            models.GROUP,
            models.VERSION,
            namespace,
            models.PLURAL,
            name,
            patch,
        )
    except ApiException as exc:
        if exc.status == 409:
            raise Conflict(status_message(exc)) from None
        raise


class Conflict(Exception):
    """The object changed since it was read (HTTP 409 on a write with a resourceVersion)."""


async def patch_release_annotations(
    namespace: str, name: str, annotations: Mapping[str, str | None], *, manager: str
) -> None:
    """Merge-patch annotations of a release, recorded in managedFields as written by ``manager``."""
    await _call(
        clients().custom.patch_namespaced_custom_object,
        models.GROUP,
        models.VERSION,
        namespace,
        models.PLURAL,
        name,
        {"metadata": {"annotations": dict(annotations)}},
        field_manager=manager,
    )


async def post_event(
    *,
    release: manifests.ReleaseRef,
    type_: str,
    reason: str,
    message: str,
    now: datetime.datetime,
) -> None:
    """Record an Event on the GuardedRelease (``kubectl describe grel`` shows it)."""
    involved = {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": release.name, "namespace": release.namespace, "uid": release.uid},
    }
    await post_object_event(involved=involved, type_=type_, reason=reason, message=message, now=now)


# --- admission and drift -----------------------------------------------------------------------


async def read_secret(*, namespace: str, name: str) -> dict[str, Any] | None:
    result: dict[str, Any] | None = await _get_or_none(
        clients().core.read_namespaced_secret, name, namespace
    )
    return result


async def create_secret(*, namespace: str, body: Mapping[str, Any]) -> bool:
    """Create a Secret; ``False`` if one of that name already exists (someone was first)."""
    created = await _create(
        fn=clients().core.create_namespaced_secret, namespace=namespace, body=body
    )
    return created is not None


async def replace_secret(*, namespace: str, body: Mapping[str, Any]) -> bool:
    """Replace a Secret at the resourceVersion in ``body``; ``False`` on a conflict."""
    try:
        await _raw(
            clients().core.replace_namespaced_secret,
            body["metadata"]["name"],
            namespace,
            dict(body),
        )
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True


def _admission_patch(kind: str) -> Callable[..., Any]:
    """The patch method of an admissionregistration.k8s.io/v1 kind."""
    api = kubernetes.client.AdmissionregistrationV1Api(clients().api)
    suffix = {
        "ValidatingWebhookConfiguration": "validating_webhook_configuration",
        "ValidatingAdmissionPolicy": "validating_admission_policy",
        "ValidatingAdmissionPolicyBinding": "validating_admission_policy_binding",
        "MutatingAdmissionPolicy": "mutating_admission_policy",
        "MutatingAdmissionPolicyBinding": "mutating_admission_policy_binding",
    }[kind]
    patch: Callable[..., Any] = getattr(api, f"patch_{suffix}")
    return patch


async def namespace_exists(name: str) -> bool:
    # NB: listed by name, not read: the operator may list namespaces, not get them.
    body = await _raw(clients().core.list_namespace, field_selector=f"metadata.name={name}")
    return bool(body.get("items"))


async def read_webhook_configuration(name: str) -> dict[str, Any] | None:
    """A ValidatingWebhookConfiguration, or ``None`` if there is none of that name."""
    api = kubernetes.client.AdmissionregistrationV1Api(clients().api)
    result: dict[str, Any] | None = await _get_or_none(
        api.read_validating_webhook_configuration, name
    )
    return result


async def whoami() -> str | None:
    """The username the operator's requests are made as (a SelfSubjectReview), if it is told."""
    api = kubernetes.client.AuthenticationV1Api(clients().api)
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    body = await _raw(api.create_self_subject_review, review)
    username = ((body.get("status") or {}).get("userInfo") or {}).get("username")
    return str(username) if username else None


async def apply_cluster_object(body: Mapping[str, Any]) -> None:
    """Server-side apply of an admissionregistration.k8s.io/v1 object Permafrost owns."""
    patch = _admission_patch(body["kind"])
    await _raw(
        patch,
        body["metadata"]["name"],
        dict(body),
        field_manager=models.MANAGER,
        force=True,
        _content_type="application/apply-patch+yaml",
    )


async def apply_or_refusal(body: Mapping[str, Any]) -> str | None:
    """:func:`apply_cluster_object`; what the apiserver said if it refused the object as
    invalid (400, 422), else ``None`` (other errors raise)."""
    try:
        await apply_cluster_object(body)
    except ApiException as exc:
        if exc.status in (400, 422):
            return status_message(exc)
        raise
    return None


async def read_admission_policy(name: str) -> dict[str, Any] | None:
    """A ValidatingAdmissionPolicy (with its ``status.typeChecking``), or ``None``."""
    api = kubernetes.client.AdmissionregistrationV1Api(clients().api)
    result: dict[str, Any] | None = await _get_or_none(api.read_validating_admission_policy, name)
    return result


async def delete_cluster_object(*, kind: str, name: str) -> None:
    """Delete an admissionregistration.k8s.io/v1 object Permafrost owns (none: nothing to do)."""
    api = kubernetes.client.AdmissionregistrationV1Api(clients().api)
    suffix = {
        "ValidatingAdmissionPolicy": "validating_admission_policy",
        "ValidatingAdmissionPolicyBinding": "validating_admission_policy_binding",
    }[kind]
    try:
        await _raw(getattr(api, f"delete_{suffix}"), name)
    except ApiException as exc:
        if exc.status != 404:
            raise


async def patch_policy_status(*, name: str, status: Mapping[str, Any]) -> None:
    """Merge-patch Permafrost's fields of a GuardrailPolicy's status (``None`` clears one)."""
    await _call(
        clients().custom.patch_cluster_custom_object_status,
        models.GROUP,
        models.VERSION,
        models.POLICY_PLURAL,
        name,
        {"status": dict(status)},
    )


def _workload_methods(
    kind: str,
) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """(read, list, patch) of a namespaced apps/v1 workload kind."""
    apps = clients().apps
    suffix = {"Deployment": "deployment", "StatefulSet": "stateful_set", "DaemonSet": "daemon_set"}[
        kind
    ]
    return (
        getattr(apps, f"read_namespaced_{suffix}"),
        getattr(apps, f"list_namespaced_{suffix}"),
        getattr(apps, f"patch_namespaced_{suffix}"),
    )


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


async def find_frozen(*, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    """A frozen object (a workload, a ReplicaSet or a Pod) as the cluster holds it now.

    NB: listed by name rather than read: the operator lists these kinds (it watches them) and
    needs no ``get`` on Pods and ReplicaSets for this.
    """
    c = clients()
    if kind in WORKLOAD_KINDS:
        _, list_, _ = _workload_methods(kind)
    elif kind == "ReplicaSet":
        list_ = c.apps.list_namespaced_replica_set
    elif kind == "Pod":
        list_ = c.core.list_namespaced_pod
    else:
        return None
    body = await _raw(list_, namespace, field_selector=f"metadata.name={name}")
    items = [i for i in (body or {}).get("items", []) if isinstance(i, dict)]
    return items[0] if items else None


async def read_workload(*, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    read, _, _ = _workload_methods(kind)
    result: dict[str, Any] | None = await _get_or_none(read, name, namespace)
    return result


async def list_workloads(namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for kind in WORKLOAD_KINDS:
        _, list_, _ = _workload_methods(kind)
        body = await _raw(list_, namespace)
        items += [{**item, "kind": kind} for item in body.get("items", [])]
    return items


async def patch_workload_metadata(
    *,
    namespace: str,
    kind: str,
    name: str,
    annotations: Mapping[str, str | None] | None = None,
    labels: Mapping[str, str | None] | None = None,
) -> None:
    """Merge-patch only ``metadata`` of a workload (never what runs)."""
    metadata: dict[str, Any] = {}
    if annotations:
        metadata["annotations"] = dict(annotations)
    if labels:
        metadata["labels"] = dict(labels)
    _, _, patch = _workload_methods(kind)
    await _raw(
        patch,
        name,
        namespace,
        {"metadata": metadata},
        _content_type="application/merge-patch+json",
    )


async def patch_pod_metadata(
    *,
    namespace: str,
    name: str,
    labels: Mapping[str, str | None] | None = None,
    annotations: Mapping[str, str | None] | None = None,
) -> None:
    """Merge-patch only ``metadata`` of a pod (a mark, a session; never what runs); a ``None``
    value removes its key."""
    metadata: dict[str, Any] = {}
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    await _raw(
        clients().core.patch_namespaced_pod,
        name,
        namespace,
        {"metadata": metadata},
        _content_type="application/merge-patch+json",
    )


async def delete_pod(*, namespace: str, name: str, uid: str | None = None) -> None:
    """Delete a pod (its ReplicaSet makes a fresh one); with ``uid``, only that very pod.

    NB: the precondition keeps a plan made from an old read from deleting the pod that took
    the name meanwhile (StatefulSets reuse names)."""
    body = {"preconditions": {"uid": uid}} if uid else None
    try:
        await _raw(clients().core.delete_namespaced_pod, name, namespace, body=body)
    except ApiException as exc:
        if exc.status not in (404, 409):
            raise


async def list_policies() -> list[dict[str, Any]]:
    """Every GuardrailPolicy; none if their CRD is not installed (policies are optional)."""
    body = await _get_or_none(
        clients().custom.list_cluster_custom_object,
        models.GROUP,
        models.VERSION,
        models.POLICY_PLURAL,
    )
    items: list[dict[str, Any]] = (body or {}).get("items", [])
    return items


async def read_peering(*, namespace: str | None, name: str) -> dict[str, Any] | None:
    """Kopf's peering object ``name`` (KopfPeering in ``namespace``, or ClusterKopfPeering).

    NB: listed by name, not read: replicas are granted list and watch on the peering kinds (as
    Kopf needs), not get.
    """
    custom, selector = clients().custom, f"metadata.name={name}"
    if namespace is None:
        body = await _raw(
            custom.list_cluster_custom_object,
            "kopf.dev",
            "v1",
            "clusterkopfpeerings",
            field_selector=selector,
        )
    else:
        body = await _raw(
            custom.list_namespaced_custom_object,
            "kopf.dev",
            "v1",
            namespace,
            "kopfpeerings",
            field_selector=selector,
        )
    items = [i for i in (body or {}).get("items", []) if isinstance(i, dict)]
    return items[0] if items else None


async def list_namespace_labels() -> dict[str, dict[str, str]]:
    body = await _raw(clients().core.list_namespace)
    return {
        item["metadata"]["name"]: dict(item["metadata"].get("labels") or {})
        for item in body.get("items", [])
    }


async def post_object_event(
    *,
    involved: Mapping[str, Any],
    type_: str,
    reason: str,
    message: str,
    now: datetime.datetime,
    key: str | None = None,
) -> None:
    """Record an Event on any namespaced object (``apiVersion``/``kind``/``metadata``).

    With ``key``, the Event's name is derived from it, so posting the same occurrence twice
    records it once (the apiserver may call a webhook again when it retries an update).

    NB: an Event is a report, not state: failing to post one must not fail the caller.
    """
    meta = involved.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    prefix = f"{str(meta.get('name', 'object'))[:200]}."
    naming = (
        {"name": prefix + hashing.short_digest(key, length=16)}
        if key is not None
        else {"generateName": prefix}
    )
    body = {
        "metadata": {**naming, "namespace": namespace},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": meta.get("name"),
            "namespace": namespace,
            "uid": meta.get("uid"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": type_,
        "source": {"component": models.MANAGER},
        "reportingComponent": models.MANAGER,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    try:
        await _call(clients().core.create_namespaced_event, namespace, body)
    except ApiException as exc:
        if exc.status == 409 and key is not None:
            return  # this occurrence is already recorded
        if namespace_terminating(exc):
            return  # the namespace is being deleted, and its Events with it
        logger.warning(
            "could not post event %s on %s %s/%s: %s",
            reason,
            involved.get("kind"),
            namespace,
            meta.get("name"),
            status_message(exc),
        )


def refusal(exc: BaseException) -> str | None:
    """What the apiserver said when it refused a write outright — 400, 403 (RBAC or an
    admission webhook or policy), 422 (invalid) — as ``"<code> <message>"``; None for anything
    else (a conflict, an outage: worth a retry, not a person's attention)."""
    if not isinstance(exc, ApiException) or exc.status not in (400, 403, 422):
        return None
    return f"{exc.status} {status_message(exc)}"


def namespace_terminating(exc: BaseException) -> bool:
    """Whether ``exc`` is the apiserver refusing to create something in a namespace that is
    being deleted (403, cause ``NamespaceTerminating``): not a missing permission."""
    if not isinstance(exc, ApiException) or exc.status != 403:
        return False
    try:
        details = json.loads(exc.body or "{}").get("details") or {}
    except (ValueError, AttributeError):
        return False
    return any(c.get("reason") == "NamespaceTerminating" for c in details.get("causes") or [])


def status_message(exc: ApiException) -> str:
    """What the apiserver said: its Status ``message`` (e.g. which permission is missing, or
    that the namespace is being deleted), else the HTTP reason."""
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.reason)
