"""The admission shell: validating handlers, their HTTPS server, TLS and registration.

The server (Kopf's, hardened) parses each AdmissionReview once and calls the handler of its
path (:data:`ROUTES`, :func:`answer`); the handler parses it into an :class:`admission.Request`,
asks the pure :func:`admission.review`, and answers. Nothing on this path waits on the
network: Events are posted by a background task after the answer. The server runs on an event
loop of its own, in a thread of its own (:class:`Server`): reconciles never delay an answer.

At start-up (only with ``permafrost run --admission``) the operator loads or creates its TLS
material in a Secret shared by all replicas, starts Kopf's webhook server with it, and applies
the ValidatingWebhookConfiguration and the fail-safe ValidatingAdmissionPolicy. A background
task renews the serving certificate before it expires and reloads it without a restart.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import dataclasses
import datetime
import json
import logging
import pathlib
import ssl
import tempfile
import threading
import urllib.parse
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any

import aiohttp.web
import kopf

from permafrost import kube, metrics, models
from permafrost.guards import admission, certs, sessions
from permafrost.policies import checking, compiler, policy, store
from permafrost.releases import conditions

logger = logging.getLogger(__name__)

WEBHOOK_CONFIGURATION = "permafrost-frozen-workloads"
POLICY = "permafrost-frozen-workloads"
TLS_SECRET = "permafrost-webhook-tls"
RENEWAL_CHECK = datetime.timedelta(hours=6)
# Reasons of the policies webhook's decisions (metrics).
POLICY_COMPILED = "PolicyCompiled"
POLICY_REFUSED = "PolicyDoesNotCompile"


@dataclasses.dataclass(frozen=True)
class Options:
    """How the operator serves admission; filled from ``permafrost run`` flags."""

    listen_host: str = "0.0.0.0"
    listen_port: int = 9443
    url: str | None = None  # e.g. https://127.0.0.1:9443 (local runs)
    service: str | None = None  # NAMESPACE/NAME[:PORT] of the webhook Service (in-cluster)
    namespace: str = "permafrost-system"  # where the TLS Secret lives; excluded from webhooks
    tls_secret: str | None = None  # a user-supplied Secret (cert-manager): tls.crt, tls.key, ca.crt
    tls_dir: str | None = None  # the same files, from a Secret mounted as a volume
    # Create-stage GuardrailPolicies compiled into ValidatingAdmissionPolicies (see
    # policies/compiler.py); off: the webhook judges them all.
    compile_policies: bool = True
    settings: admission.Settings = dataclasses.field(default_factory=admission.Settings)
    threaded: bool = True  # the server on a loop and thread of its own (see :class:`Server`)

    def hostnames(self) -> list[str]:
        names: list[str] = []
        if self.service:
            namespace, _, rest = self.service.partition("/")
            name = rest.partition(":")[0]
            names += [f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]
        if self.url:
            host = urllib.parse.urlsplit(self.url).hostname
            if host:
                names.append(host)
        return names or ["localhost"]

    def target(self) -> str:
        """Where the apiserver is sent: ``service NS/NAME:PORT`` or the URL (no path)."""
        return target_of(self.client_config(b""))

    def client_config(self, ca: bytes) -> dict[str, Any]:
        config: dict[str, Any] = {"caBundle": base64.b64encode(ca).decode()}
        if self.service:
            namespace, _, rest = self.service.partition("/")
            name, _, port = rest.partition(":")
            config["service"] = {"namespace": namespace, "name": name, "port": int(port or 443)}
        else:
            config["url"] = self.url or f"https://localhost:{self.listen_port}"
        return config


def target_of(client_config: Mapping[str, Any]) -> str:
    """The target of a webhook's ``clientConfig``, as :meth:`Options.target` writes it."""
    if service := client_config.get("service"):
        return (
            f"service {service.get('namespace')}/{service.get('name')}:{service.get('port', 443)}"
        )
    url = urllib.parse.urlsplit(str(client_config.get("url") or ""))
    return f"{url.scheme}://{url.netloc}"


def registered_target(configuration: Mapping[str, Any] | None) -> str | None:
    """Where an existing webhook configuration sends the apiserver (``None``: nowhere yet)."""
    hooks = (configuration or {}).get("webhooks") or []
    return target_of(hooks[0].get("clientConfig") or {}) if hooks else None


class Server(kopf.WebhookServer):
    """Kopf's webhook server, hardened against malformed and oversized reviews.

    An AdmissionReview carries the old and the new object (each up to 1.5 MiB in etcd), more
    than aiohttp's 1 MiB default body limit: a refused body would make the apiserver fail open.
    Bodies up to ``MAX_REVIEW_BYTES`` are read; malformed ones get HTTP 400 with a reason.
    Renewed certificate files are picked up by Kopf itself (it restarts the listener when they
    change).

    The reviews are answered by :func:`answer`, not by Kopf's generic admission dispatch: the
    webhooks only validate, and Kopf's dispatch (a memo, a diff and a deep copy of the body
    for a JSON patch that would always be empty) cost more than the decisions themselves.

    The listener, the reviews and their side effects (Events, break-glass records) run on an
    event loop of their own, in the thread :data:`THREAD_NAME` (``threaded=False``: on Kopf's
    loop, as Kopf does). Reconciles, watches and their handlers share Kopf's loop; a review
    waiting behind them would wait for as long as the longest of them keeps the loop, on a
    loaded core that is the apiserver's own timeout. What the reviews read from the rest of
    the operator is either immutable (the options) or replaced whole, never mutated in place
    (:class:`store.Store`); Prometheus' metrics are thread-safe.

    NB: overrides ``kopf.WebhookServer._serve`` (which Kopf calls as ``self._serve(fn,
    request)``) and ``__call__`` (Kopf's async generator of client configurations, run here in
    the server's thread); the Kopf version is pinned below 2 and the integration tests exercise
    it.
    """

    def __init__(self, *, threaded: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threaded = threaded
        # The server's own loop while it serves (``None``: not started, or not threaded).
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        """Serve (in the server's thread, unless not ``threaded``), and yield each client
        configuration of the listener to Kopf, as :class:`kopf.WebhookServer` does; stop serving
        when the generator is closed (Kopf closes it on leaving ``async with server``, when the
        operator stops)."""
        if not self.threaded:
            async for config in super().__call__(fn):
                yield config
            return
        outer = asyncio.get_running_loop()
        configs: asyncio.Queue[kopf.WebhookClientConfig | BaseException] = asyncio.Queue()
        started = threading.Event()
        stop: list[Callable[[], object]] = []

        async def serve() -> None:
            inner = asyncio.get_running_loop()
            task = asyncio.current_task()
            assert task is not None
            self.loop = inner

            def cancel() -> None:
                if not inner.is_closed():  # NB: it ends on its own when the listener fails
                    inner.call_soon_threadsafe(task.cancel)

            stop.append(cancel)
            started.set()
            try:
                # NB: Kopf's own generator, unwrapped: Kopf's wrapper would register it for
                # closing on leaving ``async with server``, from Kopf's loop, while it runs here.
                async for config in _KOPF_SERVE(self, fn):
                    outer.call_soon_threadsafe(configs.put_nowait, config)
            except asyncio.CancelledError:
                pass
            except BaseException as exc:  # NB: e.g. the port is taken: raised in Kopf's loop
                outer.call_soon_threadsafe(configs.put_nowait, exc)
            finally:
                self.loop = None
                await _cancel_pending()

        thread = threading.Thread(target=asyncio.run, args=(serve(),), name=THREAD_NAME)
        thread.daemon = True  # NB: never keeps a stopping process alive
        thread.start()
        try:
            while True:
                item = await configs.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            await asyncio.to_thread(started.wait, 10)
            for cancel in stop:
                cancel()
            await asyncio.to_thread(thread.join, 10)

    # The listener's TLS context, kept to swap its certificate in place (see :meth:`reload`).
    _context: ssl.SSLContext | None = None

    def _build_ssl(self) -> tuple[bytes | None, ssl.SSLContext | None]:
        """Kopf's TLS context, pinned to TLS 1.2 or newer whatever the Python defaults are."""
        cadata, context = super()._build_ssl()
        if context is not None:
            context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._context = context
        return cadata, context

    def reload(self, certfile: pathlib.Path, pkeyfile: pathlib.Path) -> None:
        """Serve the certificate and key in these files from the next handshake on.

        NB: Kopf would restart its listener when the files change: its port is closed for a
        moment, and the apiserver's calls meanwhile fail (1 in 168 during a rotation, seen).
        Loading them into the live context changes nothing for connections already made.
        """
        context, loop = self._context, self.loop
        if context is None:
            return
        if loop is None:
            context.load_cert_chain(certfile, pkeyfile)
            return
        # NB: OpenSSL's contexts are not to be changed while another thread handshakes with
        # them: the change is made on the server's loop, between two of its handshakes.
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def load() -> None:
            try:
                context.load_cert_chain(certfile, pkeyfile)
            except BaseException as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

        loop.call_soon_threadsafe(load)
        done.result(timeout=30)

    # What the webhooks decide with (set by :func:`setup`); none: nothing is ever denied.
    runtime: Runtime | None = None

    # NB: Kopf declares it static but calls it through the instance, which carries the runtime.
    async def _serve(  # type: ignore[override]
        self, fn: Any, request: aiohttp.web.Request
    ) -> aiohttp.web.Response:
        # NB: at most MAX_CONCURRENT_REVIEWS bodies are read and held at once; the others wait
        # their turn (bounded memory under a flood, whoever sends it).
        async with _concurrent_reviews():
            return await self._serve_one(request)

    async def _serve_one(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        declared = request.content_length
        if declared is not None and declared > MAX_REVIEW_BYTES:
            raise aiohttp.web.HTTPRequestEntityTooLarge(
                max_size=MAX_REVIEW_BYTES, actual_size=declared
            )
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.read(64 * 1024):  # NB: read() may return less
            size += len(chunk)
            if size > MAX_REVIEW_BYTES:
                raise aiohttp.web.HTTPRequestEntityTooLarge(
                    max_size=MAX_REVIEW_BYTES, actual_size=size
                )
            chunks.append(chunk)
        body = b"".join(chunks)
        try:
            review = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise aiohttp.web.HTTPBadRequest(reason=f"not JSON: {exc}") from None
        except RecursionError:
            # NB: the apiserver never nests this deep; a body that does is hostile, not a crash.
            raise aiohttp.web.HTTPBadRequest(reason="JSON nested too deeply") from None
        problem = malformed(review)
        if problem is not None:
            raise aiohttp.web.HTTPBadRequest(reason=problem)
        try:
            response = await answer(
                review, webhook=request.match_info.get("id") or "", runtime=self.runtime
            )
        except Exception as exc:  # NB: never crash or hang on hostile input; answer 400
            logger.warning("unusable admission review: %r", exc)
            raise aiohttp.web.HTTPBadRequest(reason="unusable admission review") from None
        return aiohttp.web.json_response(response)


THREAD_NAME = "permafrost-webhooks"
_KOPF_SERVE: Callable[
    [kopf.WebhookServer, kopf.WebhookFn], AsyncIterator[kopf.WebhookClientConfig]
] = getattr(kopf.WebhookServer.__call__, "__wrapped__", kopf.WebhookServer.__call__)


async def _cancel_pending() -> None:
    """Cancel and await the tasks left on the server's loop (the reviews' side effects)."""
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not current]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


MAX_REVIEW_BYTES = 8 * 1024 * 1024
MAX_CONCURRENT_REVIEWS = 32
_REVIEW_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _concurrent_reviews() -> asyncio.Semaphore:
    """The semaphore bounding the reviews served at once (one per event loop)."""
    loop = asyncio.get_running_loop()
    slots = _REVIEW_SLOTS.get(loop)
    if slots is None:
        slots = _REVIEW_SLOTS[loop] = asyncio.Semaphore(MAX_CONCURRENT_REVIEWS)
    return slots


def malformed(review: Any) -> str | None:
    """Why an AdmissionReview body cannot be served, or ``None`` if it is well-formed."""
    if not isinstance(review, dict):
        return "the body is not a JSON object"
    if review.get("kind") != "AdmissionReview":
        return "the body is not an AdmissionReview"
    request = review.get("request")
    if not isinstance(request, dict):
        return "the AdmissionReview has no request"
    if not isinstance(request.get("uid"), str):
        return "request.uid is missing"
    resource = request.get("resource")
    if not isinstance(resource, dict) or not all(
        isinstance(resource.get(k), str) for k in ("group", "version", "resource")
    ):
        return "request.resource is missing or incomplete"
    if not isinstance(request.get("userInfo"), dict):
        return "request.userInfo is missing"
    if not any(isinstance(request.get(k), dict) for k in ("object", "oldObject")):
        return "request.object and request.oldObject are both missing"
    return None


# --- runtime -----------------------------------------------------------------------------------


# NB: reviews are answered without waiting on the network, but their side effects (Events,
# break-glass confirmations) run afterwards in tasks: a flood of reviews must not become an
# unbounded number of tasks and requests.
MAX_BACKGROUND_TASKS = 256
# How long a break-glass change may take to appear in the cluster after it was admitted (the
# apiserver writes it after every webhook answered; a slow etcd may take a while).
CONFIRM_SECONDS = 15.0
CONFIRM_INTERVAL = 0.5


@dataclasses.dataclass
class Runtime:
    options: Options
    server: Server
    directory: pathlib.Path
    tasks: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)
    dropped: int = 0
    # NB: tasks are spawned on the server's loop (reviews) and on Kopf's (renewals).
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    # The TLS material the registered configuration trusts, and the workload kinds whose clean
    # creations it sends the enforced webhook (see :func:`follow_policies`).
    bundle: certs.Bundle | None = None
    policy_kinds: frozenset[str] | None = None
    # NB: registrations (renewals, policies) are made on Kopf's loop, one at a time.
    registering: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    # Policies are compiled one at a time (each rebuilds the bundles); the bundles as last
    # applied (None: deleted; absent: not known yet in this process).
    compiling: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    bundles: dict[str, list[dict[str, Any]] | None] = dataclasses.field(default_factory=dict)

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background on the running loop, unless
        :data:`MAX_BACKGROUND_TASKS` already run: then it is dropped (and counted, and logged
        once per burst)."""
        with self.lock:
            self._spawn(coro)

    def _spawn(self, coro: Any) -> None:
        if len(self.tasks) >= MAX_BACKGROUND_TASKS:
            coro.close()
            if not self.dropped:
                logger.warning(
                    "admission: %d background tasks are running; dropping the side effects of "
                    "further reviews (Events) until they finish",
                    len(self.tasks),
                )
            self.dropped += 1
            metrics.ADMISSION_SIDE_EFFECTS_DROPPED.inc()
            return
        self.dropped = 0
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        with self.lock:
            self.tasks.discard(task)


TLS_FILES = (certs.SECRET_CA_CERT, certs.SECRET_CERT, certs.SECRET_KEY)


def read_tls_dir(directory: pathlib.Path) -> dict[str, str]:
    """The files of a mounted TLS Secret, as a Secret's ``.data`` (base64 of each); absent files
    are left out, for :meth:`certs.Bundle.from_secret_data` to name.

    NB: the kubelet updates a mounted Secret by swapping the ``..data`` symlink to a new
    directory; reading through the resolved link gives the three files of one version, never a
    certificate of the new one with the key of the old.
    """
    snapshot = (directory / "..data").resolve() if (directory / "..data").exists() else directory
    data: dict[str, str] = {}
    for name in TLS_FILES:
        try:
            data[name] = base64.b64encode((snapshot / name).read_bytes()).decode()
        except FileNotFoundError:
            continue
    return data


async def user_tls_problem(options: Options) -> str | None:
    """Why the TLS material the user supplied (``--tls-dir``, ``--tls-secret``) cannot be used,
    in one line; ``None`` when it can, or when Permafrost makes its own."""
    if not (options.tls_dir or options.tls_secret):
        return None
    try:
        await _load_bundle(options, now=datetime.datetime.now(datetime.UTC))
    except kopf.PermanentError as exc:
        return str(exc)
    return None


async def _load_bundle(options: Options, *, now: datetime.datetime) -> certs.Bundle:
    """The TLS material: user-supplied (mounted files, or a Secret read by name), or
    Permafrost's own shared Secret (made or renewed)."""
    if options.tls_dir:
        try:
            data = await asyncio.to_thread(read_tls_dir, pathlib.Path(options.tls_dir))
        except OSError as exc:
            raise kopf.PermanentError(
                f"TLS files in {options.tls_dir} cannot be read: {exc.strerror or exc}"
            ) from None
        try:
            bundle = certs.Bundle.from_secret_data(data, require_ca_key=False)
        except certs.CertificateError as exc:
            said = str(exc).replace("the Secret data has no", "there is no")
            said = said.replace("the Secret data", "the file")
            raise kopf.PermanentError(
                f"TLS files in {options.tls_dir} cannot be used: {said} (expected the files "
                "tls.crt, tls.key and ca.crt, as a cert-manager Secret mounted as a volume "
                "holds them)"
            ) from None
        return bundle
    if options.tls_secret:
        secret = await kube.read_secret(namespace=options.namespace, name=options.tls_secret)
        if secret is None:
            raise kopf.PermanentError(
                f"TLS Secret {options.namespace}/{options.tls_secret} does not exist"
            )
        # NB: cert-manager writes no ca.key; the CA is only needed to renew, which it does.
        try:
            return certs.Bundle.from_secret_data(secret.get("data") or {}, require_ca_key=False)
        except certs.CertificateError as exc:
            raise kopf.PermanentError(
                f"TLS Secret {options.namespace}/{options.tls_secret} cannot be used: {exc} "
                "(expected the keys tls.crt, tls.key and ca.crt, as cert-manager writes them)"
            ) from None
    hostnames = options.hostnames()
    for _ in range(5):  # NB: replicas race to create or renew; the loser re-reads
        secret = await kube.read_secret(namespace=options.namespace, name=TLS_SECRET)
        if secret is None:
            bundle = certs.issue(hostnames=hostnames, now=now)
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {"name": TLS_SECRET, "namespace": options.namespace},
                "data": bundle.to_secret_data(),
            }
            if await kube.create_secret(namespace=options.namespace, body=body):
                logger.info("created webhook TLS Secret %s/%s", options.namespace, TLS_SECRET)
                return bundle
            continue
        bundle = certs.Bundle.from_secret_data(secret.get("data") or {})
        why = certs.needs_renewal(bundle, hostnames=hostnames, now=now)
        if why is None:
            return bundle
        renewed = certs.renew(bundle, hostnames=hostnames, now=now)
        secret["data"] = renewed.to_secret_data()
        if await kube.replace_secret(namespace=options.namespace, body=secret):
            logger.info("renewed the webhook certificate: %s", why)
            return renewed
    raise kopf.TemporaryError("could not settle the webhook TLS Secret", delay=5)


def _write(directory: pathlib.Path, bundle: certs.Bundle) -> tuple[pathlib.Path, pathlib.Path]:
    certfile, pkeyfile = directory / "tls.crt", directory / "tls.key"
    certfile.write_bytes(bundle.cert)
    pkeyfile.touch(mode=0o600)
    pkeyfile.write_bytes(bundle.key)
    return certfile, pkeyfile


def policy_kinds() -> frozenset[str]:
    """The workload kinds whose creation a GuardrailPolicy the webhook judges may match (the
    others' clean creations are left to the apiserver: :func:`admission.creation_matters`)."""
    return store.STORE.webhook_kinds(_POLICY_KINDS)


async def _register_webhooks(
    options: Options, bundle: certs.Bundle, *, kinds: frozenset[str] | None
) -> None:
    await kube.apply_cluster_object(
        admission.webhook_configuration(
            name=WEBHOOK_CONFIGURATION,
            client_config=options.client_config(bundle.ca_cert),
            settings=options.settings,
            policy_kinds=kinds,
        )
    )


async def _register(
    options: Options, bundle: certs.Bundle, *, kinds: frozenset[str] | None
) -> None:
    await _register_webhooks(options, bundle, kinds=kinds)
    # NB: the operator switches Services' selectors itself: the guard must not put them back.
    # In-cluster it runs as its exempt ServiceAccount; run elsewhere (a kubeconfig's user), that
    # user is exempt from the guard too, and only from the guard.
    me = await kube.whoami()
    guard = dataclasses.replace(
        options.settings, exempt_users=options.settings.exempt_users | ({me} if me else set())
    )
    for body in (
        *admission.policy_manifests(name=POLICY, settings=options.settings),
        *admission.exec_policy_manifests(name=admission.EXEC_POLICY, settings=options.settings),
        *admission.service_guard_manifests(name=admission.SERVICE_GUARD, settings=guard),
        *admission.service_route_manifests(name=admission.SERVICE_ROUTES, settings=guard),
        *admission.service_type_manifests(name=admission.SERVICE_TYPE, settings=guard),
    ):
        await kube.apply_cluster_object(body)


async def setup(options: Options, settings: kopf.OperatorSettings) -> Runtime:
    """Prepare TLS, the server and the registrations; called from the start-up handler, which
    keeps the result (in Kopf's memo) for :func:`teardown`."""
    now = datetime.datetime.now(datetime.UTC)
    bundle = await _load_bundle(options, now=now)
    directory = pathlib.Path(tempfile.mkdtemp(prefix="permafrost-webhook-"))
    certfile, pkeyfile = _write(directory, bundle)
    server = Server(
        addr=options.listen_host,
        port=options.listen_port,
        certfile=certfile,
        pkeyfile=pkeyfile,
        cadata=bundle.ca_cert,
        threaded=options.threaded,
        # NB: Kopf restarts its listener when these files change: they never do; renewed
        # material goes elsewhere and into the live context (:meth:`Server.reload`).
    )
    settings.admission.server = server
    # NB: the operator creates its revisions' Deployments, whose pods carry the revision labels.
    # In-cluster it is exempt; run elsewhere (a kubeconfig's user), that user may create them too.
    me = await kube.whoami()
    if me:
        options = dataclasses.replace(
            options,
            settings=dataclasses.replace(
                options.settings,
                controller_users=options.settings.controller_users | {me},
            ),
        )
    kinds = policy_kinds()
    await _register(options, bundle, kinds=kinds)
    runtime = Runtime(
        options=options, server=server, directory=directory, bundle=bundle, policy_kinds=kinds
    )
    server.runtime = runtime
    runtime.spawn(_keep_renewed(runtime, bundle))
    return runtime


# NB: an expired certificate its issuer has not renewed would otherwise be re-read every second.
MIN_CHECK = 10.0


def next_check(bundle: certs.Bundle, *, now: datetime.datetime) -> float:
    """Seconds until the TLS material is looked at again: every ``RENEWAL_CHECK``, or sooner for
    a short-lived certificate (a quarter of what is left of it, at least ``MIN_CHECK``).

    NB: a user-supplied certificate (cert-manager) may live for hours; waiting the full interval
    would serve it past its expiry after its issuer renewed it.
    """
    left = (certs.expires_at(bundle.cert) - now).total_seconds()
    return max(MIN_CHECK, min(RENEWAL_CHECK.total_seconds(), left / 4))


async def _keep_renewed(runtime: Runtime, bundle: certs.Bundle) -> None:
    while True:
        try:
            delay = next_check(bundle, now=datetime.datetime.now(datetime.UTC))
        except certs.CertificateError:
            delay = MIN_CHECK
        if runtime.options.tls_dir:
            # NB: local files are cheap to look at; the kubelet may swap them at any time.
            delay = MIN_CHECK
        await asyncio.sleep(delay)
        try:
            now = datetime.datetime.now(datetime.UTC)
            fresh = await _load_bundle(runtime.options, now=now)
            if fresh != bundle:
                renewed = runtime.directory / "renewed"
                renewed.mkdir(mode=0o700, exist_ok=True)
                runtime.server.reload(*_write(renewed, fresh))
                async with runtime.registering:
                    await _register(runtime.options, fresh, kinds=runtime.policy_kinds)
                    runtime.bundle = fresh
                bundle = fresh
        except (kopf.PermanentError, certs.CertificateError) as exc:
            # NB: a Secret spoilt after start-up: said in one line; the certificate in use is
            # kept until the Secret is usable again.
            logger.error("webhook certificate: %s; serving the current one, retrying later", exc)
        except Exception:
            logger.exception("webhook certificate renewal failed; retrying later")


async def follow_policies(runtime: Runtime) -> None:
    """Register the webhook configuration again when the kinds whose creations a policy on the
    webhook may judge changed (:func:`policy_kinds`).

    NB: called before and after each compilation, from the store as the policies' watch left
    it: a policy leaves the apiserver (edited, removed from it) the moment it changes, and its
    kinds are sent to the webhook again at once; they are left to the apiserver only once the
    policy's status says its compiled version judges them (its bindings settled).
    """
    async with runtime.registering:
        kinds = policy_kinds()
        if kinds == runtime.policy_kinds or runtime.bundle is None:
            return
        await _register_webhooks(runtime.options, runtime.bundle, kinds=kinds)
        logger.info(
            "the webhook is sent the clean creations of %s",
            ", ".join(sorted(kinds)) or "no workload kind (the apiserver judges every policy)",
        )
        runtime.policy_kinds = kinds


async def teardown(runtime: Runtime | None) -> None:
    """Stop what :func:`setup` started (nothing if admission was not served)."""
    if runtime is not None:
        runtime.server.runtime = None
        # NB: only the tasks of this loop: the server's thread cancels its own when it stops.
        loop = asyncio.get_running_loop()
        with runtime.lock:
            mine = [task for task in runtime.tasks if task.get_loop() is loop]
        for task in mine:
            task.cancel()
        await asyncio.gather(*mine, return_exceptions=True)


# --- handlers ----------------------------------------------------------------------------------


async def frozen_workload(**kwargs: Any) -> None:
    """Validate a request on a frozen workload (``param``: "managed" or "enforced")."""
    param = kwargs.get("param")
    scope: admission.Scope = param if param in ("enforced", "unenforced") else "managed"
    with metrics.time_admission(f"frozen-{scope}"):
        await _frozen_workload(scope, **kwargs)


async def _frozen_workload(scope: admission.Scope, **kwargs: Any) -> None:
    runtime: Runtime | None = kwargs.get("runtime")
    if runtime is None:  # admission disabled: never deny
        return
    body: kopf.Body = kwargs["body"]
    userinfo: Mapping[str, Any] = kwargs.get("userinfo") or {}
    dryrun = bool(kwargs.get("dryrun"))
    meta = body.get("metadata") or {}
    request = admission.Request(
        scope=scope,
        kind=str(body.get("kind") or ""),
        operation=str(kwargs.get("operation") or ""),
        subresource=kwargs.get("subresource") or None,
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        username=str(userinfo.get("username") or ""),
        groups=tuple(userinfo.get("groups") or ()),
        old=kwargs.get("old"),
        new=kwargs.get("new"),
        dry_run=dryrun,
    )
    decision = admission.review(request, runtime.options.settings)
    # Break-glass sessions (exec into frozen pods): opening one is decided here, first.
    session = sessions.review_session(
        request, runtime.options.settings, now=datetime.datetime.now(datetime.UTC)
    )
    if session is not None and (not session.allowed or decision.allowed):
        if session.allowed and session.reason != admission.EXEMPT:
            if not dryrun:
                runtime.spawn(_record_session(request, session, dict(body)))
            kwargs["warnings"].extend(session.warnings)
        elif not session.allowed:
            decision = session
    violations: tuple[policy.RuleResult, ...] = ()
    if (
        decision.allowed
        and request.operation == "CREATE"
        and request.scope == "enforced"
        and request.kind in _POLICY_KINDS
    ):
        decision, violations = _policies_at_create(
            dict(body), request.namespace, kwargs["warnings"]
        )
    kwargs["warnings"].extend(decision.warnings)
    if not dryrun:
        metrics.count_admission(
            webhook=f"frozen-{scope}",
            reason=decision.reason,
            allowed=decision.allowed,
            violations=violations,
        )
        if decision.reason == admission.BREAK_GLASS_REFUSED:
            metrics.BREAK_GLASS.labels(result="refused").inc()
    if decision.event_type is not None:
        _log_decision(
            webhook=f"frozen-{scope}",
            decision=decision,
            kind=request.kind,
            namespace=request.namespace,
            name=request.name,
            username=request.username,
            violations=violations,
        )
        if not dryrun and decision.reason == admission.BREAK_GLASS_USED:
            runtime.spawn(_record_break_glass(request, decision, dict(body)))
        elif not dryrun:
            runtime.spawn(
                kube.post_object_event(
                    involved=dict(body),
                    type_=decision.event_type,
                    reason=decision.reason,
                    message=decision.message,
                    now=datetime.datetime.now(datetime.UTC),
                )
            )
    if not decision.allowed:
        raise kopf.AdmissionError(decision.message, code=403)


async def _record_break_glass(
    request: admission.Request, decision: admission.Decision, body: Mapping[str, Any]
) -> None:
    """Record a break-glass use (Event, metric) once the change is seen in the cluster.

    NB: the webhook cannot tell a review the apiserver sent from one anybody posted: until the
    admitted change is there to see (:func:`admission.landed`), it is a claim, and a forged
    claim must not write Events in any namespace or move the break-glass counter.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + CONFIRM_SECONDS
    while True:
        try:
            live = await kube.find_frozen(
                namespace=request.namespace, kind=request.kind, name=request.name
            )
        except Exception as exc:
            logger.warning(
                "break-glass on %s %s/%s: could not look at it (%s); not recorded",
                request.kind,
                request.namespace,
                request.name,
                exc,
            )
            return
        if admission.landed(request.new, live):
            break
        if loop.time() >= give_up:
            logger.warning(
                "break-glass on %s %s/%s by %s was admitted, but the change never appeared in "
                "the cluster (refused later, or a review not sent by the apiserver): not recorded",
                request.kind,
                request.namespace,
                request.name,
                request.username,
            )
            return
        await asyncio.sleep(CONFIRM_INTERVAL)
    metrics.BREAK_GLASS.labels(result="used").inc()
    await kube.post_object_event(
        involved=body,
        type_=decision.event_type or "Warning",
        reason=decision.reason,
        message=decision.message,
        now=datetime.datetime.now(datetime.UTC),
        key=_occurrence(request, decision),
    )


# --- exec, attach, port-forward; break-glass sessions ----------------------------------------


async def pod_connect(**kwargs: Any) -> None:
    """Validate an exec, attach or port-forward into a pod (a CONNECT on its subresource)."""
    with metrics.time_admission("pods-connect"):
        await _pod_connect(**kwargs)


async def _pod_connect(**kwargs: Any) -> None:
    runtime: Runtime | None = kwargs.get("runtime")
    subresource = str(kwargs.get("subresource") or "")
    if runtime is None or subresource not in sessions.CONNECT_SUBRESOURCES:
        return
    settings = runtime.options.settings
    namespace, name = str(kwargs.get("namespace") or ""), str(kwargs.get("name") or "")
    if not namespace or not name or namespace in settings.excluded_namespaces:
        return
    userinfo: Mapping[str, Any] = kwargs.get("userinfo") or {}
    # NB: the options carry no labels: whether the pod is frozen is read from the pod itself
    # (a failed read fails this review, which denies: the operator is up and cannot tell).
    pod = await kube.find_frozen(namespace=namespace, kind="Pod", name=name)
    now = datetime.datetime.now(datetime.UTC)
    request = sessions.Connect(
        subresource=subresource,
        namespace=namespace,
        name=name,
        username=str(userinfo.get("username") or ""),
        groups=tuple(userinfo.get("groups") or ()),
        pod=pod,
        namespace_labels=store.STORE.namespace(namespace)["labels"],
        options=kwargs.get("new"),
    )
    decision = sessions.review_connect(request, settings, now=now)
    kwargs["warnings"].extend(decision.warnings)
    metrics.count_admission(
        webhook="pods-connect", reason=decision.reason, allowed=decision.allowed
    )
    if decision.event_type is not None and pod is not None:
        _log_decision(
            webhook="pods-connect",
            decision=decision,
            kind="Pod",
            namespace=namespace,
            name=name,
            username=request.username,
        )
        if decision.reason == sessions.BREAK_GLASS_EXEC:
            metrics.BREAK_GLASS.labels(result=subresource).inc()
            runtime.spawn(
                _record_connect(
                    pod,
                    decision,
                    taint=sessions.taint_of(subresource),
                    key=_connect_occurrence(request, decision, now=now),
                )
            )
        else:
            runtime.spawn(
                kube.post_object_event(
                    involved={"apiVersion": "v1", "kind": "Pod", **pod},
                    type_=decision.event_type,
                    reason=decision.reason,
                    message=decision.message,
                    now=now,
                    key=_connect_occurrence(request, decision, now=now),
                )
            )
    if not decision.allowed:
        raise kopf.AdmissionError(decision.message, code=403)


def _connect_occurrence(
    request: sessions.Connect, decision: admission.Decision, *, now: datetime.datetime
) -> str:
    """What makes one exec, attach or port-forward one occurrence: the pod, the user, the
    decision and its message (which holds the command), within a second.

    NB: kubectl tries a WebSocket first and, when that upgrade is refused, SPDY: one denied
    command reaches the webhook twice, and is recorded once.
    """
    uid = ((request.pod or {}).get("metadata") or {}).get("uid")
    return f"{uid}/{request.username}/{decision.reason}/{decision.message}/{now:%Y%m%dT%H%M%S}"


async def _record_connect(
    pod: Mapping[str, Any], decision: admission.Decision, *, taint: str | None, key: str
) -> None:
    """Mark a pod a session let an exec or attach into, and record it (on the pod and on its
    release, for ``permafrost history``).

    NB: a CONNECT leaves nothing to confirm in the cluster, unlike a break-glass change. The
    decision came from the pod as read from the cluster (its session, which only its user may
    write), so a forged review can at most mark a pod whose session's user could have.
    """
    meta = pod.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    if taint is not None:
        try:
            await kube.patch_pod_metadata(
                namespace=namespace, name=name, labels={sessions.LABEL_TAINTED: taint}
            )
        except Exception as exc:
            logger.warning("could not mark pod %s/%s tainted: %s", namespace, name, exc)
    await _post_session_event(pod, decision, key=key)


async def _record_session(
    request: admission.Request, decision: admission.Decision, body: Mapping[str, Any]
) -> None:
    """Record an opened break-glass session (Event on the pod and its release, metric) once the
    session is seen on the pod (a forged review records nothing)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + CONFIRM_SECONDS
    wanted = sessions.session_of(request.new)
    while True:
        try:
            live = await kube.find_frozen(
                namespace=request.namespace, kind="Pod", name=request.name
            )
        except Exception as exc:
            logger.warning(
                "break-glass session on pod %s/%s: %s; not recorded",
                request.namespace,
                request.name,
                exc,
            )
            return
        if (
            live is not None
            and sessions.session_of(live) == wanted
            and ((live.get("metadata") or {}).get("uid") == (body.get("metadata") or {}).get("uid"))
        ):
            break
        if loop.time() >= give_up:
            logger.warning(
                "break-glass session on pod %s/%s by %s was admitted but never appeared: "
                "not recorded",
                request.namespace,
                request.name,
                request.username,
            )
            return
        await asyncio.sleep(CONFIRM_INTERVAL)
    metrics.BREAK_GLASS.labels(result="session").inc()
    await _post_session_event(live, decision)


async def _post_session_event(
    pod: Mapping[str, Any], decision: admission.Decision, *, key: str | None = None
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    involved = {"apiVersion": "v1", "kind": "Pod", **pod}
    await kube.post_object_event(
        involved=involved,
        type_=decision.event_type or "Warning",
        reason=decision.reason,
        message=decision.message,
        now=now,
        key=key,
    )
    meta = pod.get("metadata") or {}
    release = ((meta.get("labels") or {}).get(models.LABEL_RELEASE)) or ""
    if release:
        body = await kube.read_release(namespace=str(meta.get("namespace")), name=str(release))
        if body is not None:
            await kube.post_object_event(
                involved={**body, "apiVersion": models.API_VERSION, "kind": models.KIND},
                type_=decision.event_type or "Warning",
                reason=decision.reason,
                message=decision.message,
                now=now,
                key=None if key is None else f"{key}/release",
            )


def settings_from(
    *,
    exempt_users: Sequence[str],
    break_glass_groups: Sequence[str],
    namespace: str,
    allow_port_forward: bool = False,
    controller_users: Sequence[str] = (),
) -> admission.Settings:
    return admission.Settings(
        exempt_users=frozenset(exempt_users),
        break_glass_groups=frozenset(break_glass_groups),
        excluded_namespaces=frozenset({"kube-system", namespace}),
        allow_port_forward=allow_port_forward,
        controller_users=frozenset(controller_users or admission.CONTROLLER_USERS),
    )


# --- policies at admission ----------------------------------------------------------------------


def _log_decision(
    *,
    webhook: str,
    decision: admission.Decision,
    kind: str,
    namespace: str,
    name: str,
    username: str,
    violations: Sequence[policy.RuleResult] = (),
) -> None:
    """Log an admission decision, with machine-readable fields (``--log-format json``)."""
    result = "allowed" if decision.allowed else "denied"
    logger.info(
        "admission %s %s %s/%s by %s: %s",
        decision.reason,
        kind,
        namespace,
        name,
        username,
        result,
        extra={
            "webhook": webhook,
            "reason": decision.reason,
            "result": result,
            "kind": kind,
            "namespace": namespace,
            "object": name,
            "user": username,
            **({"policy": violations[0].policy, "rule": violations[0].rule} if violations else {}),
            **({"release": name} if kind == models.KIND else {}),
        },
    )


def _policies_at_create(
    body: Mapping[str, Any], namespace: str, warnings: list[str]
) -> tuple[admission.Decision, tuple[policy.RuleResult, ...]]:
    """The create-stage GuardrailPolicies on an object being admitted (no network calls), and
    the violated rules."""
    subject = checking.subject_of(body, namespace=store.STORE.namespace(namespace))
    # NB: a policy compiled into a ValidatingAdmissionPolicy was judged by the apiserver
    # already (it runs policies before webhooks): judging it again here would only cost time.
    verdict = policy.evaluate(
        store.STORE.admission_policies(),
        stage="create",
        subject=subject,
        now=datetime.datetime.now(datetime.UTC),
    )
    warnings.extend(f"{r.policy}/{r.rule}: {r.message}" for r in verdict.warnings)
    metrics.count_policy_results(stage="create", results=verdict.results)
    for r in verdict.audits:
        logger.info(
            "audit: %s %s/%s: %s/%s: %s",
            body.get("kind"),
            namespace,
            (body.get("metadata") or {}).get("name"),
            r.policy,
            r.rule,
            r.message,
        )
    if verdict.allowed:
        return admission.Decision(True, admission.NOT_FROZEN), ()
    kind = body.get("kind")
    name = (body.get("metadata") or {}).get("name")
    return admission.Decision(
        False,
        conditions.POLICY_VIOLATION,
        f"{kind} {namespace}/{name} violates policy: {verdict.summary()}",
        event_type="Warning",
    ), verdict.violations


async def guarded_release(**kwargs: Any) -> None:
    """Create-stage policies on GuardedReleases as they are created or changed."""
    with metrics.time_admission("releases"):
        await _guarded_release(**kwargs)


async def _guarded_release(**kwargs: Any) -> None:
    runtime: Runtime | None = kwargs.get("runtime")
    if runtime is None:
        return
    body: kopf.Body = kwargs["body"]
    meta = body.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    if namespace in runtime.options.settings.excluded_namespaces:
        return
    decision, violations = _policies_at_create(dict(body), namespace, kwargs["warnings"])
    if not kwargs.get("dryrun"):
        metrics.count_admission(
            webhook="releases",
            reason=decision.reason,
            allowed=decision.allowed,
            violations=violations,
        )
    if not decision.allowed:
        userinfo: Mapping[str, Any] = kwargs.get("userinfo") or {}
        _log_decision(
            webhook="releases",
            decision=decision,
            kind=models.KIND,
            namespace=namespace,
            name=str(meta.get("name") or ""),
            username=str(userinfo.get("username") or ""),
            violations=violations,
        )
        if not kwargs.get("dryrun") and kwargs.get("operation") == "UPDATE":
            runtime.spawn(
                kube.post_object_event(
                    involved=dict(body),
                    type_="Warning",
                    reason=decision.reason,
                    message=decision.message,
                    now=datetime.datetime.now(datetime.UTC),
                )
            )
        raise kopf.AdmissionError(decision.message, code=403)


async def guardrail_policy(**kwargs: Any) -> None:
    """Refuse a GuardrailPolicy that does not compile, with the compiler's message."""
    with metrics.time_admission("policies"):
        body: kopf.Body = kwargs["body"]
        name = str((body.get("metadata") or {}).get("name") or "")
        try:
            spec = models.GuardrailPolicySpec.model_validate(dict(body.get("spec") or {}))
            policy.compile_policy(name, spec)
        except (ValueError, policy.PolicyError) as exc:
            if not kwargs.get("dryrun"):
                metrics.count_admission(webhook="policies", reason=POLICY_REFUSED, allowed=False)
            raise kopf.AdmissionError(
                f"GuardrailPolicy {name} is refused: {exc}", code=422
            ) from None
        if not kwargs.get("dryrun"):
            metrics.count_admission(webhook="policies", reason=POLICY_COMPILED, allowed=True)


# --- create-stage policies compiled into the apiserver -----------------------------------------

# How long the apiserver may take to type-check a compiled policy before the attempt is retried.
TYPE_CHECK_SECONDS = 15.0
TYPE_CHECK_INTERVAL = 0.2
# NB: the apiserver picks a new binding up from its informer: the status that lets the webhook
# skip the policy is written a moment later, so that the two never both leave it unjudged.
BINDING_SETTLE_SECONDS = 1.0


def compile_outcome(
    options: Options, body: Mapping[str, Any]
) -> compiler.Compiled | compiler.NotCompiled:
    """What the GuardrailPolicy ``body`` compiles to with these options (pure)."""
    meta = body.get("metadata") or {}
    name = str(meta.get("name") or "")
    try:
        spec = models.GuardrailPolicySpec.model_validate(dict(body.get("spec") or {}))
    except ValueError as exc:
        return compiler.NotCompiled(compiler.DOES_NOT_COMPILE, f"policy {name!r}: {exc}")
    outcome = compiler.compile_policy(name, spec, uid=str(meta.get("uid") or ""))
    if isinstance(outcome, compiler.Compiled) and not options.compile_policies:
        return compiler.NotCompiled(
            compiler.COMPILATION_DISABLED,
            "policy compilation is off (permafrost run --no-compile-policies): the webhook "
            "judges it",
        )
    return outcome


async def _unbind_own(name: str) -> None:
    """Delete the bindings of the policy ``name``'s own ValidatingAdmissionPolicy (earlier
    versions bound each policy alone; its rules are now bound in its mode's bundle)."""
    for binding in compiler.binding_names(compiler.policy_name(name)):
        await kube.delete_cluster_object(kind="ValidatingAdmissionPolicyBinding", name=binding)


async def _remove_compiled(name: str) -> None:
    """Delete the policy ``name``'s own ValidatingAdmissionPolicy (and any binding of it)."""
    await _unbind_own(name)
    await kube.delete_cluster_object(
        kind="ValidatingAdmissionPolicy", name=compiler.policy_name(name)
    )


async def _type_check(compiled: compiler.Compiled) -> compiler.Compiled | compiler.NotCompiled:
    """Apply the policy's own ValidatingAdmissionPolicy (bound to nothing) and read the
    apiserver's type check of it back: clean, it may join its mode's bundle."""
    refused = await kube.apply_or_refusal(compiled.policy)
    if refused is not None:
        return compiler.NotCompiled(
            compiler.REJECTED_BY_APISERVER, f"the apiserver refused {compiled.name}: {refused}"
        )
    loop = asyncio.get_running_loop()
    give_up = loop.time() + TYPE_CHECK_SECONDS
    while True:
        warnings = compiler.type_warnings(await kube.read_admission_policy(compiled.name))
        if warnings is not None:
            break
        if loop.time() >= give_up:
            raise kopf.TemporaryError(f"{compiled.name} was not type-checked in time", delay=5)
        await asyncio.sleep(TYPE_CHECK_INTERVAL)
    if warnings:
        return compiler.NotCompiled(
            compiler.TYPE_CHECK_WARNINGS,
            f"the apiserver's type check of {compiled.name} warns: " + "; ".join(warnings),
        )
    return compiled


async def _sync_bundles(runtime: Runtime) -> None:
    """Bind, for each mode, one ValidatingAdmissionPolicy holding the rules of every policy
    whose own ValidatingAdmissionPolicy the apiserver type-checked clean (read back, so that a
    restarted operator rebuilds the same bundles); delete a mode's bundle when it has none.

    NB: what was applied last is remembered, so an unchanged bundle costs reads only; after a
    change the bindings are given a moment to settle before any status says so.
    """
    options = runtime.options
    members: dict[str, list[dict[str, Any]]] = {e: [] for e in compiler.ENFORCEMENTS}
    for name in sorted({p.name for p in store.STORE.policies()}):
        vap = await kube.read_admission_policy(compiler.policy_name(name))
        labels = ((vap or {}).get("metadata") or {}).get("labels") or {}
        if compiler.clean(vap) and labels.get(compiler.LABEL_ENFORCEMENT) in members:
            assert vap is not None
            members[labels[compiler.LABEL_ENFORCEMENT]].append(vap)
    changed = False
    for enforcement, of_mode in members.items():
        name = compiler.bundle_name(enforcement)
        wanted = compiler.bundle(
            enforcement,
            of_mode,
            exempt_users=options.settings.exempt_users,
            excluded_namespaces=options.settings.excluded_namespaces,
        )
        manifests = wanted.manifests() if wanted is not None else None
        if name in runtime.bundles and runtime.bundles[name] == manifests:
            continue
        if wanted is None:
            for binding in compiler.binding_names(name):
                await kube.delete_cluster_object(
                    kind="ValidatingAdmissionPolicyBinding", name=binding
                )
            await kube.delete_cluster_object(kind="ValidatingAdmissionPolicy", name=name)
            logger.info("no compiled %s policy left: %s deleted", enforcement, name)
        else:
            refused = await kube.apply_or_refusal(wanted.policy)
            for manifest in wanted.bindings:
                refused = refused or await kube.apply_or_refusal(manifest)
            if refused is not None:
                # NB: each rule was accepted in its own policy; a refused bundle (its size?)
                # keeps the previous one, and the new policies stay on the webhook.
                runtime.bundles.pop(name, None)
                raise kopf.TemporaryError(f"the apiserver refused {name}: {refused}", delay=30)
            bound = {b["metadata"]["name"] for b in wanted.bindings}
            for binding in compiler.binding_names(name):
                if binding not in bound:
                    await kube.delete_cluster_object(
                        kind="ValidatingAdmissionPolicyBinding", name=binding
                    )
            logger.info(
                "%s judges the %s rules of %d policies",
                name,
                enforcement,
                len(of_mode),
            )
        runtime.bundles[name] = manifests
        changed = True
    if changed:
        await asyncio.sleep(BINDING_SETTLE_SECONDS)


async def sync_compiled_policy(
    runtime: Runtime, *, name: str, body: Mapping[str, Any] | None
) -> None:
    """Make the apiserver judge the GuardrailPolicy ``name`` (``body`` as last seen; ``None``:
    deleted) if it compiles, else remove what was compiled from it; then say so in its status.

    One policy at a time: its own ValidatingAdmissionPolicy is applied and type-checked (or
    deleted), then the bundles are rebuilt from every policy's (:func:`_sync_bundles`).

    NB: the compiled objects are owned by the policies (the garbage collector removes them
    too); they are changed here at once, so that a deleted policy stops judging immediately.
    """
    async with runtime.compiling:
        if body is None:
            await _remove_compiled(name)
            await _sync_bundles(runtime)
            return
        outcome = compile_outcome(runtime.options, body)
        if isinstance(outcome, compiler.Compiled):
            outcome = await _type_check(outcome)
        if not isinstance(outcome, compiler.Compiled):
            await _remove_compiled(name)
        await _sync_bundles(runtime)
        if isinstance(outcome, compiler.Compiled):
            await _unbind_own(name)
            logger.info("GuardrailPolicy %s is enforced by %s", name, compiler.enforced_by(outcome))
        elif outcome.reason not in (compiler.NO_CREATE_STAGE, compiler.NOT_ADMITTED):
            logger.info("GuardrailPolicy %s stays on the webhook: %s", name, outcome.message)
        current = body.get("status") or {}
        wanted = compiler.status(
            outcome=outcome,
            generation=(body.get("metadata") or {}).get("generation"),
            previous=current,
            now=datetime.datetime.now(datetime.UTC),
        )
        if not compiler.same_status(current, wanted):
            await kube.patch_policy_status(name=name, status=wanted)


def _occurrence(request: admission.Request, decision: admission.Decision) -> str | None:
    """What makes a break-glass use unique: the object and the reason given (one use each).

    NB: the apiserver re-runs admission when it retries a conflicting update, so the webhook
    may see one use twice; the Event is named after the use and recorded once.
    """
    if decision.reason != admission.BREAK_GLASS_USED:
        return None
    meta = (request.new or {}).get("metadata") or {}
    reason = ((meta.get("annotations") or {}).get(admission.ANNOTATION_BREAK_GLASS) or "").strip()
    return f"{meta.get('uid')}/{request.subresource or ''}/{reason}"


@dataclasses.dataclass(frozen=True)
class Route:
    """A webhook path: the handler that serves it and the resources it is registered for."""

    handler: Callable[..., Awaitable[None]]
    resources: frozenset[tuple[str, str, str]]  # (group, version, plural)
    param: str | None = None
    any_subresource: bool = False


_WORKLOADS = frozenset(
    {
        ("apps", "v1", "deployments"),
        ("apps", "v1", "statefulsets"),
        ("apps", "v1", "daemonsets"),
        ("apps", "v1", "replicasets"),
        ("", "v1", "pods"),
        ("", "v1", "replicationcontrollers"),
        ("batch", "v1", "jobs"),
        ("batch", "v1", "cronjobs"),
        ("discovery.k8s.io", "v1", "endpointslices"),
    }
)
# NB: the kinds create-stage GuardrailPolicies are asked about at admission.
_POLICY_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet"})
# NB: the webhook configuration routes each scope to the path /frozen-<scope> (see
# admission.webhook_configuration), releases to /releases and policies to /policies.
ROUTES: Mapping[str, Route] = {
    "frozen-managed": Route(frozen_workload, _WORKLOADS, param="managed", any_subresource=True),
    "frozen-enforced": Route(frozen_workload, _WORKLOADS, param="enforced", any_subresource=True),
    "pods-connect": Route(pod_connect, frozenset({("", "v1", "pods")}), any_subresource=True),
    "frozen-unenforced": Route(
        frozen_workload, _WORKLOADS, param="unenforced", any_subresource=True
    ),
    "releases": Route(guarded_release, frozenset({(models.GROUP, models.VERSION, models.PLURAL)})),
    "policies": Route(
        guardrail_policy, frozenset({(models.GROUP, models.VERSION, models.POLICY_PLURAL)})
    ),
}
_SERVED = frozenset(r for route in ROUTES.values() for r in route.resources)


class UnusableReview(Exception):
    """A review no handler is asked about: of a resource no path serves, or whose object has
    no usable metadata (the server answers 400, as it did when Kopf refused them)."""


def _unusable(body: Any) -> str | None:
    """Why the object under review cannot be handed to a handler, or ``None``."""
    if not isinstance(body, Mapping):
        return "the object is not a JSON object"
    meta = body.get("metadata", {})
    if not isinstance(meta, Mapping):
        return "the object's metadata is not a JSON object"
    if not isinstance(meta.get("uid") or "", Hashable):
        return "the object's metadata.uid is not a string"
    return None


async def answer(
    review: Mapping[str, Any], *, webhook: str, runtime: Runtime | None
) -> dict[str, Any]:
    """The AdmissionReview response to a well-formed review (see :func:`malformed`) sent to the
    path ``/<webhook>``, as Kopf's dispatch answered it: the handler of the path runs (given
    ``runtime``; without one it never denies) if the path is registered for the resource (and
    its subresource), and its :class:`kopf.AdmissionError` becomes the response status (any
    other error: code 500).

    Raises :class:`UnusableReview` for a review no handler can be asked about.
    """
    request: Mapping[str, Any] = review["request"]
    resource = request["resource"]
    key = (resource["group"], resource["version"], resource["resource"])
    if key not in _SERVED:
        raise UnusableReview(f"no webhook serves {key}")
    payload: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    response = {
        "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
        "kind": review["kind"],
        "response": payload,
    }
    route = ROUTES.get(webhook)
    subresource = request.get("subResource")
    if route is None or key not in route.resources:
        return response
    if subresource is not None and not route.any_subresource:
        return response
    old, new = request.get("oldObject"), request.get("object")
    problem = _unusable(new if new is not None else old)
    if problem is not None:
        raise UnusableReview(problem)
    warnings: list[str] = []
    try:
        await route.handler(
            body=new if new is not None else old,
            old=old,
            new=new,
            operation=request.get("operation"),
            subresource=subresource,
            # NB: a CONNECT's object (PodExecOptions) has no metadata: the pod is named here.
            name=request.get("name"),
            namespace=request.get("namespace"),
            userinfo=request["userInfo"],
            dryrun=bool(request.get("dryRun")),
            param=route.param,
            warnings=warnings,
            runtime=runtime,
        )
    except kopf.AdmissionError as exc:
        payload["allowed"] = False
        payload["status"] = {"message": str(exc) or repr(exc), "code": exc.code or 500}
    except Exception as exc:  # NB: a failing handler denies (fail closed), as Kopf's did
        logger.exception("webhook %s failed", webhook)
        payload["allowed"] = False
        payload["status"] = {"message": str(exc) or repr(exc), "code": 500}
    if warnings:
        payload["warnings"] = [str(w) for w in warnings]
        # NB: Kopf put the warnings before the status; the order is kept for the same bytes.
        if "status" in payload:
            payload["status"] = payload.pop("status")
    return response
