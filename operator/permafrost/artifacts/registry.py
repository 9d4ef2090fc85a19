"""The OCI registry adapter: what a registry serves for an image reference.

A small client of the OCI distribution API (``/v2/<name>/manifests/<reference>``) with the
two authentication schemes registries use: a bearer token from the registry's token service
(anonymous, or with the credentials of a Docker config), or HTTP basic. It is synchronous
(the standard library's ``urllib``): the CLI calls it directly, the operator from a thread.

Plain HTTP is used only for the hosts it is told are insecure, and for loopback registries
(as the container runtimes do); everything else is HTTPS with certificate checks.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import hashlib
import json
import pathlib
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from permafrost.artifacts import attestations, images, pulls, signatures

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
INDEXES = frozenset({OCI_INDEX, DOCKER_LIST})
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # what distribution itself accepts
DEFAULT_TIMEOUT = 10.0

# Reasons (messages, conditions).
NOT_FOUND = "NotFound"
UNAUTHORIZED = "Unauthorized"
UNREACHABLE = "Unreachable"
INVALID = "InvalidResponse"


class RegistryError(Exception):
    """A registry did not give what was asked; ``reason`` is one of the constants above."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a registry serves for a reference: the digest of the manifest (or index) and, for
    an index, the platforms it holds (``os/architecture[/variant]``)."""

    digest: str
    media_type: str
    platforms: tuple[str, ...] = ()

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEXES


def docker_credentials(path: pathlib.Path) -> dict[str, tuple[str, str]]:
    """``{registry host: (user, password)}`` from a Docker config (``auths``, ``auth`` or
    ``username``/``password``); credential helpers are not run. Raises ``ValueError`` with a
    message for a file that cannot be used."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable Docker config: {exc}") from None
    auths = config.get("auths") if isinstance(config, dict) else None
    return pulls.auths_credentials(auths, source=str(path))


def _loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name in ("localhost", "[::1]") or name.startswith("127.")


_MAYBE_BUNDLE = frozenset({signatures.BUNDLE, "application/vnd.oci.empty.v1+json", None, ""})
_SHA256 = re.compile(r"^sha256:[a-f0-9]{64}$")
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class Client:
    """A registry client; keyword-only settings, no state but the tokens it was given."""

    def __init__(
        self,
        *,
        credentials: Mapping[str, tuple[str, str]] | None = None,
        insecure: frozenset[str] = frozenset(),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.credentials = dict(credentials or {})
        self.insecure = insecure
        self.timeout = timeout
        self._tokens: dict[tuple[str, str], str] = {}

    def _url(self, host: str, path: str) -> str:
        scheme = "http" if host in self.insecure or _loopback(host) else "https"
        return f"{scheme}://{host}{path}"

    def manifest(self, ref: images.Reference) -> Manifest:
        """The manifest ``ref`` names now: by digest if it has one, else by tag (``latest``
        when it has neither, as the runtimes do). Raises :class:`RegistryError`."""
        target = ref.digest or ref.tag or "latest"
        path = f"/v2/{ref.repository}/manifests/{target}"
        status, headers, body = self._get(ref, path)
        if status == 404:
            raise RegistryError(NOT_FOUND, f"{ref.text}: the registry has no such image")
        if status != 200:
            raise RegistryError(INVALID, f"{ref.text}: the registry answered HTTP {status}")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if ref.digest and ref.digest.startswith("sha256:") and digest != ref.digest:
            # NB: content addressed: what was served must hash to what was asked for.
            raise RegistryError(INVALID, f"{ref.text}: the registry served other content")
        served = headers.get("docker-content-digest")
        if served and served != digest and not ref.digest:
            raise RegistryError(
                INVALID, f"{ref.text}: the registry's digest {served} is not its content's"
            )
        try:
            document = json.loads(body)
        except ValueError:
            raise RegistryError(INVALID, f"{ref.text}: the manifest is not JSON") from None
        media_type = str(document.get("mediaType") or headers.get("content-type", "").split(";")[0])
        platforms: tuple[str, ...] = ()
        if media_type in INDEXES:
            platforms = tuple(_platform(m.get("platform")) for m in document.get("manifests", []))
        return Manifest(digest=ref.digest or digest, media_type=media_type, platforms=platforms)

    def _get(self, ref: images.Reference, path: str) -> tuple[int, Mapping[str, str], bytes]:
        return self._call(ref, path)

    def _call(
        self,
        ref: images.Reference,
        path: str,
        *,
        method: str = "GET",
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One request to ``ref``'s registry (``path``, or a whole URL the registry gave),
        authorised as its challenge asks (once). Raises :class:`RegistryError` for refused
        credentials and an unreachable registry; other answers are returned."""
        host = ref.api_host
        url = path if path.startswith(("http://", "https://")) else self._url(host, path)
        sent = {"Accept": ACCEPT, **(headers or {})}
        token = self._tokens.get((host, ref.repository))
        if token:
            sent["Authorization"] = f"Bearer {token}"
        status, got, body = self._send(url, sent, what=ref.text, method=method, data=data)
        if status == 401:
            challenge = got.get("www-authenticate", "")
            sent["Authorization"] = self._authorize(ref, challenge)
            status, got, body = self._send(url, sent, what=ref.text, method=method, data=data)
            if status == 401:
                raise RegistryError(
                    UNAUTHORIZED,
                    f"{ref.text}: the registry refused the credentials"
                    + ("" if host in self.credentials else f" (none given for {host})"),
                )
        if status == 403:
            raise RegistryError(UNAUTHORIZED, f"{ref.text}: pulling is forbidden")
        return status, got, body

    def _authorize(self, ref: images.Reference, challenge: str) -> str:
        host = ref.api_host
        scheme = challenge.split(" ", 1)[0].lower()
        creds = self.credentials.get(host)
        basic = (
            "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            if creds
            else None
        )
        if scheme == "basic":
            if basic is None:
                raise RegistryError(UNAUTHORIZED, f"{ref.text}: {host} needs credentials")
            return basic
        if scheme != "bearer":
            raise RegistryError(UNAUTHORIZED, f"{ref.text}: {host} asks for {challenge!r}")
        params = dict(_CHALLENGE.findall(challenge))
        realm = params.get("realm")
        if not realm:
            raise RegistryError(INVALID, f"{ref.text}: {host}'s challenge has no realm")
        query = {"scope": params.get("scope") or f"repository:{ref.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        url = f"{realm}{'&' if '?' in realm else '?'}{urllib.parse.urlencode(query)}"
        status, _, body = self._send(url, {"Authorization": basic} if basic else {}, what=ref.text)
        if status != 200:
            raise RegistryError(
                UNAUTHORIZED, f"{ref.text}: the token service of {host} answered HTTP {status}"
            )
        try:
            answer = json.loads(body)
            token = str(answer.get("token") or answer.get("access_token") or "")
        except (ValueError, AttributeError):
            token = ""
        if not token:
            raise RegistryError(INVALID, f"{ref.text}: the token service of {host} gave no token")
        self._tokens[(host, ref.repository)] = token
        return f"Bearer {token}"

    def _send(
        self,
        url: str,
        headers: Mapping[str, str],
        *,
        what: str,
        method: str = "GET",
        data: bytes | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        request = urllib.request.Request(url, headers=dict(headers), method=method, data=data)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, _lower(response.headers), _bounded(response, what=what)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, _lower(exc.headers), b""
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            host = urllib.parse.urlsplit(url).netloc
            raise RegistryError(UNREACHABLE, f"{what}: {host} is unreachable: {reason}") from None

    # --- signatures (cosign's .sig tag layout) ---------------------------------------------

    def signature_layers(self, ref: images.Reference) -> list[signatures.Layer]:
        """The layers of the signature manifest of ``ref``'s digest (``sha256-<hex>.sig``), each
        with its blob if it is small enough to be a payload; ``[]`` if there is none. Raises
        :class:`RegistryError`: ``INVALID`` for a manifest that is not one, else why the
        registry could not be asked."""
        assert ref.digest is not None
        return self._layers(ref, signatures.signature_tag(ref.digest), what="signature")

    def attestation_layers(self, ref: images.Reference) -> list[signatures.Layer]:
        """The layers of the attestation manifest of ``ref``'s digest (``sha256-<hex>.att``,
        cosign's classic layout), as :meth:`signature_layers` reads signatures."""
        assert ref.digest is not None
        return self._layers(ref, attestations.attestation_tag(ref.digest), what="attestation")

    def _layers(self, ref: images.Reference, tag: str, *, what: str) -> list[signatures.Layer]:
        status, _, body = self._call(ref, f"/v2/{ref.repository}/manifests/{tag}")
        if status == 404:
            return []
        if status != 200:
            raise _answered(ref, status, f"its {what}s")
        try:
            descriptors = signatures.layers_of(json.loads(body))
        except ValueError as exc:
            raise RegistryError(INVALID, f"{ref.text}: its {what} manifest: {exc}") from None
        layers = []
        for d in descriptors:
            digest, size = str(d.get("digest") or ""), d.get("size")
            raw = d.get("annotations")
            annotations = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
            small = isinstance(size, int) and 0 <= size <= signatures.MAX_PAYLOAD_BYTES
            blob, problem = None, f"is larger than {signatures.MAX_PAYLOAD_BYTES} bytes"
            if not _SHA256.match(digest):
                problem = "has no sha256 digest"
            elif small:
                blob = self._blob(ref, digest)
                problem = "" if blob is not None else "is missing, or not the content of its digest"
            layers.append(
                signatures.Layer(
                    media_type=str(d.get("mediaType") or ""),
                    digest=digest,
                    annotations=annotations,
                    blob=blob,
                    problem=problem,
                )
            )
        return layers

    def signature_bundles(self, ref: images.Reference) -> list[bytes]:
        """The sigstore bundles among the OCI 1.1 referrers of ``ref``'s digest (the referrers
        API, else the referrers tag ``sha256-<hex>`` that registries without it hold): each
        bundle's bytes, ``b""`` for one that cannot be read. Raises :class:`RegistryError` as
        :meth:`signature_layers` does."""
        assert ref.digest is not None
        query = urllib.parse.urlencode({"artifactType": signatures.BUNDLE})
        status, _, body = self._call(ref, f"/v2/{ref.repository}/referrers/{ref.digest}?{query}")
        if status == 404:
            # NB: the referrers tag schema (OCI distribution 1.1), which cosign falls back to.
            tag = ref.digest.replace(":", "-")
            status, _, body = self._call(ref, f"/v2/{ref.repository}/manifests/{tag}")
            if status == 404:
                return []
        if status != 200:
            raise _answered(ref, status, "its referrers")
        try:
            index = json.loads(body)
            listed = index.get("manifests") if isinstance(index, dict) else None
            if not isinstance(listed, list):
                raise ValueError("no list of manifests")
        except ValueError as exc:
            raise RegistryError(INVALID, f"{ref.text}: its referrers: {exc}") from None
        found = []
        for d in listed[: signatures.MAX_SIGNATURES]:
            # NB: the referrers tag that cosign writes lists a bundle's artifactType as that of
            # its (empty) config: such entries are looked at too, and kept if they hold one.
            if not isinstance(d, dict) or d.get("artifactType") not in _MAYBE_BUNDLE:
                continue
            bundle = self._bundle(ref, str(d.get("digest") or ""))
            if bundle is not None:
                found.append(bundle)
        return found

    def _bundle(self, ref: images.Reference, digest: str) -> bytes | None:
        """A referrer's bundle (``b""``: one that cannot be read; None: not a bundle)."""
        if not _SHA256.match(digest):
            return b""
        status, _, body = self._call(ref, f"/v2/{ref.repository}/manifests/{digest}")
        if status != 200 or signatures.blob_digest(body) != digest:
            return b""
        try:
            manifest = json.loads(body)
            layers = manifest.get("layers") or []
            kind = manifest.get("artifactType") or (manifest.get("config") or {}).get(
                "artifactType"
            )
        except (ValueError, AttributeError):
            return b""
        if kind != signatures.BUNDLE:
            return None
        for layer in layers[:1]:
            size, blob = layer.get("size"), str(layer.get("digest") or "")
            if (
                str(layer.get("mediaType") or "").startswith("application/vnd.dev.sigstore.bundle")
                and isinstance(size, int)
                and 0 <= size <= signatures.MAX_PAYLOAD_BYTES
                and _SHA256.match(blob)
            ):
                return self._blob(ref, blob) or b""
        return b""

    def _blob(self, ref: images.Reference, digest: str) -> bytes | None:
        """A blob of ``ref``'s repository, checked against its digest (None: not there, or
        other content)."""
        status, _, body = self._call(ref, f"/v2/{ref.repository}/blobs/{digest}")
        if status >= 500:
            raise RegistryError(UNREACHABLE, f"{ref.text}: the registry answered HTTP {status}")
        if status != 200 or signatures.blob_digest(body) != digest:
            return None
        return body

    def push_signature(self, ref: images.Reference, *, data: bytes, signature: bytes) -> str:
        """Add a signature layer (payload ``data``) to the signature manifest of ``ref``'s
        digest, keeping the signatures it holds; return the tag. Raises
        :class:`RegistryError`."""
        assert ref.digest is not None
        tag = signatures.signature_tag(ref.digest)
        layer = signatures.signature_layer(data=data, signature=signature)
        return self._push_layer(ref, tag, data=data, layer=layer, what="signature")

    def push_attestation(
        self, ref: images.Reference, *, data: bytes, replacing: frozenset[str] = frozenset()
    ) -> str:
        """Add an attestation layer (the DSSE envelope ``data``) to the attestation manifest
        of ``ref``'s digest, keeping the layers it holds but those whose digests are in
        ``replacing``; return the tag. Raises :class:`RegistryError`."""
        assert ref.digest is not None
        tag = attestations.attestation_tag(ref.digest)
        layer = attestations.attestation_layer(data=data)
        return self._push_layer(
            ref, tag, data=data, layer=layer, what="attestation", replacing=replacing
        )

    def _push_layer(
        self,
        ref: images.Reference,
        tag: str,
        *,
        data: bytes,
        layer: Mapping[str, Any],
        what: str,
        replacing: frozenset[str] = frozenset(),
    ) -> str:
        status, _, body = self._call(ref, f"/v2/{ref.repository}/manifests/{tag}")
        existing: list[dict[str, Any]] = []
        if status == 200:
            try:
                existing = [dict(d) for d in signatures.layers_of(json.loads(body))]
            except ValueError as exc:
                raise RegistryError(INVALID, f"{ref.text}: its {what} manifest: {exc}") from None
        elif status != 404:
            raise RegistryError(INVALID, f"{ref.text}: the registry answered HTTP {status}")
        kept = [d for d in existing if d.get("digest") not in replacing]
        if len(kept) >= signatures.MAX_SIGNATURES:
            raise RegistryError(
                INVALID,
                f"{ref.text}: its {what} manifest {tag} holds {len(kept)} layers already "
                f"(at most {signatures.MAX_SIGNATURES} are read)",
            )
        layers = [*kept, dict(layer)]
        config, manifest = signatures.artifact(layers=layers)
        self._push_blob(ref, data)
        self._push_blob(ref, config)
        status, _, _ = self._call(
            ref,
            f"/v2/{ref.repository}/manifests/{tag}",
            method="PUT",
            data=manifest,
            headers={"Content-Type": signatures.OCI_MANIFEST},
        )
        if status not in (200, 201):
            raise RegistryError(INVALID, f"{ref.text}: pushing {tag} answered HTTP {status}")
        return tag

    def _push_blob(self, ref: images.Reference, data: bytes) -> None:
        digest = signatures.blob_digest(data)
        status, _, _ = self._call(ref, f"/v2/{ref.repository}/blobs/{digest}", method="HEAD")
        if status == 200:
            return
        status, got, _ = self._call(
            ref, f"/v2/{ref.repository}/blobs/uploads/", method="POST", data=b""
        )
        location = got.get("location")
        if status != 202 or not location:
            raise RegistryError(INVALID, f"{ref.text}: starting an upload answered HTTP {status}")
        url = urllib.parse.urljoin(self._url(ref.api_host, "/"), location)
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": digest})
        status, _, _ = self._call(
            ref,
            url,
            method="PUT",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        if status != 201:
            raise RegistryError(INVALID, f"{ref.text}: uploading a blob answered HTTP {status}")


def _lower(headers: Any) -> dict[str, str]:
    """Header names in lower case (HTTP's are case-insensitive)."""
    return {str(k).lower(): str(v) for k, v in headers.items()}


def _bounded(response: Any, *, what: str) -> bytes:
    body: bytes = response.read(MAX_MANIFEST_BYTES + 1)
    if len(body) > MAX_MANIFEST_BYTES:
        raise RegistryError(INVALID, f"{what}: the manifest is larger than 4 MiB")
    return body


def _platform(platform: Any) -> str:
    if not isinstance(platform, dict):
        return "unknown"
    parts = [str(platform.get("os") or "unknown"), str(platform.get("architecture") or "unknown")]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(parts)


def has_platform(manifest: Manifest, platform: str) -> bool:
    """Whether an image runs on ``platform`` (``os/arch[/variant]``): an index must list it; a
    single manifest is taken as is (its platform is in its config blob, not read here)."""
    return not manifest.is_index or any(pulls.matches(h, platform) for h in manifest.platforms)


# --- the caches -------------------------------------------------------------------------------

K = TypeVar("K")
V = TypeVar("V")


class Bounded(Generic[K, V]):
    """A cache bounded by entries *and* by bytes: the least recently used go first when either
    bound is passed (a read counts as a use: the digests of the releases that keep being
    reconciled stay, a burst of one-off lookups goes). ``size`` says how many bytes an entry
    holds (an estimate: the text it keeps plus a fixed overhead per entry); an entry larger
    than ``max_bytes`` alone is not kept.

    NB: an entries bound alone does not bound memory: what is kept holds text from outside
    (image references, which no schema bounds; messages quoting the registry), so one
    release with long references could hold much more than the typical entry.
    """

    def __init__(self, *, max_entries: int, max_bytes: int, size: Callable[[K, V], int]) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._size = size
        self._entries: collections.OrderedDict[K, tuple[V, int]] = collections.OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` as the newest entry, then drop the least recently used until both
        bounds hold."""
        self.pop(key)
        size = self._size(key, value)
        if size > self.max_bytes:
            return
        self._entries[key] = (value, size)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped

    def pop(self, key: K) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self.bytes -= found[1]


# What one cached entry costs besides its texts: the Python objects that hold them (the key
# tuple, the verdict, the ordered dict's node). NB: on the high side, with the texts counted
# twice where they are held once: bench/verification.py reports the estimate next to what
# tracemalloc measures the caches to hold.
ENTRY_OVERHEAD_BYTES = 768


def _text_bytes(*texts: str | None) -> int:
    """The bytes Python holds ``texts`` in (1, 2 or 4 a character, by the widest, and a
    header). NB: a text held twice (the image in the key and in the verdict) counts twice."""
    return sum(sys.getsizeof(t) for t in texts if t)


# --- the operator's check, cached (a shell around the client) ----------------------------------

# How long a verdict is kept. A digest's content never changes: found once, found. A tag may
# move, and what is missing may be pushed: looked at again soon. Unreachable: never kept.
FOUND_DIGEST_SECONDS = 24 * 3600.0
FOUND_TAG_SECONDS = 300.0
MISSING_SECONDS = 15.0
CONCURRENT_LOOKUPS = 4
MAX_VERDICTS = 4096
MAX_VERDICT_BYTES = 16 * 1024 * 1024
# NB: clients hold the bearer tokens their credentials earned; one per (host, credentials), so
# a token one namespace's pull secret earned is never sent for another's pulls.
MAX_CLIENTS = 256
# How long the list of nodes is kept. NB: a node added, gone or no longer Ready is seen this
# late; what it changes is only which platforms an index must hold, judged when a revision is
# about to be created.
NODES_SECONDS = 60.0

Nodes = Sequence[Mapping[str, Any]]
# (image, credentials scope: see permafrost.artifacts.pulls.scope)
VerdictKey = tuple[str, str]


class _Clients:
    """Registry clients by (host, credentials scope), the oldest dropped past
    :data:`MAX_CLIENTS`: each keeps the bearer tokens its own credentials earned.

    NB: used from the event loop only (a client is picked before its lookup goes to a thread).
    """

    def __init__(self) -> None:
        self._clients: collections.OrderedDict[tuple[str, str], Client] = collections.OrderedDict()

    def get(self, base: Client, host: str, credentials: pulls.Credentials) -> Client:
        """The client for ``host`` with ``credentials``' entry for it: ``base`` (the
        operator-wide one) when they agree, else one with that entry alone, made with
        ``base``'s settings."""
        wanted = pulls.scope(credentials, host)
        if wanted == pulls.scope(base.credentials, host):
            return base
        key = (host, wanted)
        found = self._clients.get(key)
        if found is None:
            found = Client(
                credentials={host: credentials[host]} if host in credentials else {},
                insecure=base.insecure,
                timeout=base.timeout,
            )
            self._clients[key] = found
            while len(self._clients) > MAX_CLIENTS:
                self._clients.popitem(last=False)
        self._clients.move_to_end(key)
        return found


@dataclasses.dataclass(frozen=True)
class _Verdict:
    check: images.Check
    platforms: tuple[str, ...] | None  # an index's platforms; None: a single manifest
    until: float


def _verdict_bytes(key: VerdictKey, verdict: _Verdict) -> int:
    return ENTRY_OVERHEAD_BYTES + _text_bytes(
        *key, verdict.check.image, verdict.check.message, *(verdict.platforms or ())
    )


class Checker:
    """Whether the images of a revision exist in their registries, and run on the nodes,
    before it is created.

    Lookups run in threads (the client is synchronous), at most :data:`CONCURRENT_LOOKUPS` at
    once, each bounded by the client's timeout. Each is made with the credentials the pods
    will pull with (given per call: the release's pull secrets merged over the operator-wide
    config), and its verdict cached by image *and* credentials scope, so one namespace's pull
    secret never answers for another's. What the registry said is cached, not the platform
    verdict: that is judged on every call against the platforms given then. Nothing here is on
    the admission path: the reconciler asks, before it creates a revision.
    """

    def __init__(
        self, *, client: Client, fail_open: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.client = client
        self.fail_open = fail_open
        self._clock = clock
        self._cache: Bounded[VerdictKey, _Verdict] = Bounded(
            max_entries=MAX_VERDICTS, max_bytes=MAX_VERDICT_BYTES, size=_verdict_bytes
        )
        self._clients = _Clients()
        self._nodes: tuple[float, Nodes] | None = None

    def _client_for(self, host: str, credentials: pulls.Credentials) -> Client:
        return self._clients.get(self.client, host, credentials)

    def _lookup(self, image: str, client: Client) -> _Verdict:
        try:
            ref = images.parse(image)
        except images.InvalidReference as exc:
            return self._verdict(images.Check(image, images.INVALID, str(exc)), None)
        try:
            manifest = client.manifest(ref)
        except RegistryError as exc:
            if exc.reason == NOT_FOUND:
                return self._verdict(images.Check(image, images.MISSING, str(exc)), None)
            # NB: refused credentials or a broken answer are not "missing": the image may be
            # there; like an unreachable registry, they hold unless the check fails open.
            outcome = images.UNAUTHORIZED if exc.reason == UNAUTHORIZED else images.UNREACHABLE
            return self._verdict(images.Check(image, outcome, str(exc)), None)
        platforms = manifest.platforms if manifest.is_index else None
        return self._verdict(images.Check(image, images.OK), platforms)

    def _verdict(self, check: images.Check, platforms: tuple[str, ...] | None) -> _Verdict:
        if check.outcome == images.OK:
            keep = FOUND_DIGEST_SECONDS if "@" in check.image else FOUND_TAG_SECONDS
        elif check.outcome in (images.MISSING, images.INVALID):
            keep = MISSING_SECONDS
        else:
            keep = 0.0
        return _Verdict(check, platforms, self._clock() + keep)

    async def check(
        self,
        wanted: tuple[str, ...],
        *,
        credentials: pulls.Credentials | None = None,
        platforms: tuple[str, ...] = (),
    ) -> tuple[images.Check, ...]:
        """A verdict per distinct image of ``wanted``, in order: looked up with
        ``credentials`` (default: the client's), and, for a multi-platform index, whether it
        holds one of ``platforms`` (``os/arch``; none: not judged)."""
        creds = self.client.credentials if credentials is None else credentials
        now = self._clock()
        keys = {image: (image, pulls.scope(creds, _host_of(image))) for image in wanted}
        fresh: dict[str, _Verdict] = {}
        for image, key in keys.items():
            hit = self._cache.get(key)
            if hit is not None and hit.until > now:
                fresh[image] = hit
        limit = asyncio.Semaphore(CONCURRENT_LOOKUPS)

        async def one(image: str) -> _Verdict:
            # NB: the client is picked here, on the event loop: the threads share no bookkeeping.
            client = self._client_for(_host_of(image), creds)
            async with limit:
                return await asyncio.to_thread(self._lookup, image, client)

        todo = [i for i in keys if i not in fresh]
        for image, verdict in zip(todo, await asyncio.gather(*(one(i) for i in todo)), strict=True):
            fresh[image] = verdict
            if verdict.until > self._clock():
                self._cache.put(keys[image], verdict)
        return tuple(_on_platforms(fresh[i], platforms) for i in keys)

    async def nodes(self, fetch: Callable[[], Awaitable[Nodes]]) -> Nodes:
        """The cluster's nodes, as ``fetch`` lists them, at most :data:`NODES_SECONDS` old."""
        now = self._clock()
        if self._nodes is None or self._nodes[0] <= now:
            self._nodes = (now + NODES_SECONDS, await fetch())
        return self._nodes[1]


def _host_of(image: str) -> str:
    try:
        return images.parse(image).api_host
    except images.InvalidReference:
        return ""


def _on_platforms(verdict: _Verdict, platforms: tuple[str, ...]) -> images.Check:
    """The verdict, with an index that holds none of ``platforms`` turned into a refusal."""
    check, held = verdict.check, verdict.platforms
    if check.outcome != images.OK or held is None or pulls.runs_on(held, platforms):
        return check
    return images.Check(
        check.image,
        images.PLATFORM_MISSING,
        f"{check.image}: the image is built for {', '.join(held) or 'no platform'}; the nodes "
        f"it may run on are {', '.join(platforms)}",
    )


# --- signatures, verified and cached (a shell around the client) -------------------------------

VERIFIED_SECONDS = 24 * 3600.0
UNVERIFIED_SECONDS = MISSING_SECONDS
MAX_VERIFICATIONS = 4096
MAX_VERIFICATION_BYTES = 16 * 1024 * 1024

# An image, the keys one of which must have signed it, and the attestations it must carry.
Wanted = tuple[str, tuple[signatures.PublicKey, ...], tuple[attestations.Requirement, ...]]
# (what was asked, credentials scope: see permafrost.artifacts.pulls.scope)
CachedKey = tuple[attestations.VerificationKey, str]


def _verification_bytes(key: CachedKey, kept: tuple[signatures.Verification, float]) -> int:
    (image, key_ids, required), scope = key
    verification = kept[0]
    return ENTRY_OVERHEAD_BYTES + _text_bytes(
        image,
        scope,
        *key_ids,
        *(t for policy, ids, digest in required for t in (policy, digest, *ids)),
        verification.image,
        verification.message,
        verification.key,
    )


class SignatureChecker:
    """Whether images are signed by one of a set of keys (cosign's ``.sig`` layout), and
    carry the guardrail attestations required of them (cosign's ``.att`` layout).

    The same client and rules as :class:`Checker`: lookups in threads, at most
    :data:`CONCURRENT_LOOKUPS` at once, each request bounded by the client's timeout, each
    made with the credentials the pods will pull with (given per call: the release's pull
    secrets merged over the operator-wide config; default: the client's). Verdicts are cached
    by image, key set, attestation requirements *and* credentials scope, so one namespace's
    pull secret never answers for another's: a verified digest for 24 hours (its content
    cannot change, and a signature or attestation that verified once still does), any other
    verdict for 15 seconds (a signature or attestation may be pushed), a registry that could
    not be asked (unreachable, or refusing the credentials) never. At most
    :data:`MAX_VERIFICATIONS` verdicts are kept, holding at most
    :data:`MAX_VERIFICATION_BYTES` (the least recently used go first).
    """

    def __init__(self, *, client: Client, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self._clock = clock
        self._cache: Bounded[CachedKey, tuple[signatures.Verification, float]] = Bounded(
            max_entries=MAX_VERIFICATIONS,
            max_bytes=MAX_VERIFICATION_BYTES,
            size=_verification_bytes,
        )
        self._clients = _Clients()

    def _lookup(
        self,
        image: str,
        keys: Sequence[signatures.PublicKey],
        required: Sequence[attestations.Requirement] = (),
        *,
        client: Client | None = None,
    ) -> signatures.Verification:
        """The signature first; then, once it verifies, every attestation required (the
        first that fails is the verdict); fetched with ``client`` (default: the
        operator-wide one)."""
        client = self.client if client is None else client
        try:
            ref = images.parse(image)
        except images.InvalidReference as exc:
            return signatures.Verification(image, signatures.INVALID, str(exc))
        if not ref.digest:
            return signatures.verify(image=image, ref=ref, layers=(), keys=keys)
        try:
            layers = client.signature_layers(ref)
            bundles = client.signature_bundles(ref)
            signed = signatures.verify(
                image=image, ref=ref, layers=layers, keys=keys, bundles=bundles
            )
            if not signed.verified or not required:
                return signed
            attested = client.attestation_layers(ref)
        except RegistryError as exc:
            return signatures.Verification(image, _not_fetched(exc), str(exc))
        said = [signed.message]
        for requirement in required:
            found = attestations.verify(
                image=image, ref=ref, layers=attested, requirement=requirement
            )
            if not found.verified:
                return found
            said.append(found.message.removeprefix(f"{image}: "))
        return signatures.Verification(image, signatures.VERIFIED, "; ".join(said), signed.key)

    def _key(
        self,
        image: str,
        keys: Sequence[signatures.PublicKey],
        required: Sequence[attestations.Requirement],
        credentials: pulls.Credentials,
    ) -> CachedKey:
        asked = attestations.verification_key(image, keys, required)
        return asked, pulls.scope(credentials, _host_of(image))

    def cached(
        self,
        image: str,
        keys: Sequence[signatures.PublicKey],
        required: Sequence[attestations.Requirement] = (),
        *,
        credentials: pulls.Credentials | None = None,
    ) -> signatures.Verification | None:
        """The verdict kept for these, asked with ``credentials`` (default: the client's)."""
        creds = self.client.credentials if credentials is None else credentials
        hit = self._cache.get(self._key(image, keys, required, creds))
        return hit[0] if hit is not None and hit[1] > self._clock() else None

    def _keep(self, verification: signatures.Verification, key: CachedKey) -> None:
        if verification.outcome in signatures.NOT_ASKED:
            return
        keep = VERIFIED_SECONDS if verification.verified else UNVERIFIED_SECONDS
        self._cache.put(key, (verification, self._clock() + keep))

    def verify_now(
        self,
        image: str,
        keys: Sequence[signatures.PublicKey],
        required: Sequence[attestations.Requirement] = (),
    ) -> signatures.Verification:
        """One verdict, in this thread (the CLI's), with the operator-wide credentials."""
        found = self.cached(image, keys, required)
        if found is None:
            found = self._lookup(image, keys, required)
            self._keep(found, self._key(image, keys, required, self.client.credentials))
        return found

    async def verify(
        self, wanted: Sequence[Wanted], *, credentials: pulls.Credentials | None = None
    ) -> dict[attestations.VerificationKey, signatures.Verification]:
        """A verdict per distinct (image, key set, attestation requirements) of ``wanted``,
        each fetched with ``credentials`` (default: the client's)."""
        creds = self.client.credentials if credentials is None else credentials
        found: dict[attestations.VerificationKey, signatures.Verification] = {}
        todo: dict[attestations.VerificationKey, Wanted] = {}
        for image, keys, required in wanted:
            key = attestations.verification_key(image, keys, required)
            hit = self.cached(image, keys, required, credentials=creds)
            if hit is not None:
                found[key] = hit
            else:
                todo[key] = (image, keys, required)
        limit = asyncio.Semaphore(CONCURRENT_LOOKUPS)

        async def one(
            image: str,
            keys: tuple[signatures.PublicKey, ...],
            required: tuple[attestations.Requirement, ...],
        ) -> signatures.Verification:
            # NB: the client is picked here, on the event loop: the threads share no bookkeeping.
            client = self._clients.get(self.client, _host_of(image), creds)
            async with limit:
                return await asyncio.to_thread(self._lookup, image, keys, required, client=client)

        results = await asyncio.gather(*(one(*w) for w in todo.values()))
        for (key, (image, keys, required)), result in zip(todo.items(), results, strict=True):
            self._keep(result, self._key(image, keys, required, creds))
            found[key] = result
        return found


def _not_fetched(exc: RegistryError) -> str:
    """The verdict's outcome for signatures or attestations that could not be fetched: a
    broken answer is invalid; refused credentials, like an unreachable registry, say nothing
    of the image (:data:`permafrost.artifacts.signatures.NOT_ASKED`)."""
    if exc.reason == INVALID:
        return signatures.INVALID
    return signatures.UNAUTHORIZED if exc.reason == UNAUTHORIZED else signatures.UNREACHABLE


def _answered(ref: images.Reference, status: int, what: str) -> RegistryError:
    """The error for an HTTP ``status`` other than 200 or 404 in answer to a request for
    ``what`` of ``ref``: the registry is unreachable on a 5xx, the answer invalid otherwise."""
    return RegistryError(
        UNREACHABLE if status >= 500 else INVALID,
        f"{ref.text}: the registry answered HTTP {status} for {what}",
    )
