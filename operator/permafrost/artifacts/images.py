"""Image references, and pinning them by digest in manifests' text. Pure.

``permafrost pin`` is the build stage's answer to "the cluster refuses my tag": it resolves
each image tag of a manifest to the digest the registry serves for it *now*, and writes
``name:tag@sha256:…`` back into the text, so people still read the tag while everything
that runs the manifest gets exactly the image that was resolved. It edits the files, never
objects in a cluster: a GitOps controller sees the pinned manifest in Git, not a drift.

This module parses references and finds and rewrites the ``image`` fields; the registry
adapter (:mod:`permafrost.artifacts.registry`) does the resolving.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence

import yaml

from permafrost.policies import documents

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
CONTAINER_LISTS = frozenset({"containers", "initContainers", "ephemeralContainers"})

# The grammar of github.com/distribution/reference, the one every registry and runtime uses.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
_HOST = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$"
)


class InvalidReference(ValueError):
    """Text that is not an image reference; the message says what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class Reference:
    """An image reference, normalised as the container runtimes normalise it.

    ``text`` is the reference as written (``nginx:1.27``), ``registry`` and ``repository``
    where it lives (``docker.io``, ``library/nginx``).
    """

    text: str
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def api_host(self) -> str:
        """The host that serves the registry's API (Docker Hub's is not its name)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def pinned(self) -> bool:
        return self.digest is not None

    def with_digest(self, digest: str) -> str:
        """The reference as written, with ``digest`` appended: the tag stays for people."""
        if not _DIGEST.match(digest):
            raise InvalidReference(f"{digest!r} is not a digest (sha256:<64 hex>)")
        return f"{self.text.partition('@')[0]}@{digest}"


def parse(text: str) -> Reference:
    """Parse ``[registry/]repository[:tag][@digest]``; raise :class:`InvalidReference`.

    A first component with a ``.`` or a ``:``, or ``localhost``, is a registry; without one,
    the registry is Docker Hub, and a one-component name is in its ``library/``.
    """
    if not text or text != text.strip():
        raise InvalidReference(f"{text!r}: an image reference cannot be empty or padded")
    name, at, digest = text.partition("@")
    if at and not _DIGEST.match(digest):
        raise InvalidReference(f"{text!r}: {digest!r} is not a digest (sha256:<64 hex>)")
    registry = DOCKER_HUB
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if not _HOST.match(first):
            raise InvalidReference(f"{text!r}: {first!r} is not a registry host")
        registry, name = first, rest
    path, colon, tag = name.rpartition(":") if ":" in name else (name, "", "")
    if colon and not _TAG.match(tag):
        raise InvalidReference(f"{text!r}: {tag!r} is not a tag")
    if not _REPOSITORY.match(path):
        raise InvalidReference(
            f"{text!r}: {path!r} is not a repository name (lower case letters, digits and "
            "separators)"
        )
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return Reference(
        text=text,
        registry=registry,
        repository=path,
        tag=tag if colon else None,
        digest=digest if at else None,
    )


@dataclasses.dataclass(frozen=True)
class Field:
    """An ``image`` field of a container in a manifest's text: where its value is."""

    source: str
    line: int  # 1-based, for messages
    start: int  # offsets of the value in the text
    end: int
    value: str
    style: str | None  # YAML's scalar style: None (plain), "'" or '"'


def locate(text: str, *, source: str) -> list[Field]:
    """Every ``image`` of a container (in ``containers``, ``initContainers`` or
    ``ephemeralContainers``, at any depth: Pods, workloads, CronJobs, GuardedReleases…).

    Raises :class:`documents.InputError` for unusable text (the same bounds as
    ``permafrost check``).
    """
    found: dict[int, Field] = {}
    for node in documents.compose_all(text, source=source):
        # NB: a value reached through an alias is the anchor's node: one field, found twice.
        found.update((f.start, f) for f in _fields(node, source=source, in_containers=False))
    return sorted(found.values(), key=lambda f: f.start)


def _fields(
    node: yaml.Node, *, source: str, in_containers: bool, depth: int = 1
) -> Iterator[Field]:
    if depth > documents.MAX_DEPTH:
        raise documents.InputError(f"{source}: nested deeper than {documents.MAX_DEPTH} levels")
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            if in_containers and isinstance(item, yaml.MappingNode):
                for key, value in item.value:
                    if (
                        isinstance(key, yaml.ScalarNode)
                        and key.value == "image"
                        and isinstance(value, yaml.ScalarNode)
                        and value.tag == "tag:yaml.org,2002:str"
                    ):
                        if value.style not in (None, "'", '"'):
                            raise documents.InputError(
                                f"{source}:{value.start_mark.line + 1}: an image written as a "
                                "block scalar (| or >) cannot be pinned in place"
                            )
                        yield Field(
                            source=source,
                            line=value.start_mark.line + 1,
                            start=value.start_mark.index,
                            end=value.end_mark.index,
                            value=value.value,
                            style=value.style,
                        )
            yield from _fields(item, source=source, in_containers=False, depth=depth + 1)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            containers = isinstance(key, yaml.ScalarNode) and key.value in CONTAINER_LISTS
            yield from _fields(value, source=source, in_containers=containers, depth=depth + 1)


def rewrite(text: str, fields: list[Field], pinned: Mapping[str, str]) -> str:
    """``text`` with each field whose value is in ``pinned`` replaced by its pinned reference,
    written in the field's own quoting; every other character is kept as it was."""
    out: list[str] = []
    at = 0
    for field in sorted(fields, key=lambda f: f.start):
        new = pinned.get(field.value)
        if new is None or new == field.value:
            continue
        out.append(text[at : field.start])
        out.append(_quoted(new, field.style))
        at = field.end
    out.append(text[at:])
    return "".join(out)


def _quoted(value: str, style: str | None) -> str:
    if style == '"':
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if style == "'":
        return "'" + value.replace("'", "''") + "'"
    # NB: a reference is a safe plain scalar: no leading indicator, no ": " or " #" inside.
    return value


# --- what the registry said about a release's images (the operator's check) --------------------

OK = "Ok"
MISSING = "ImageNotFound"
UNREACHABLE = "RegistryUnreachable"
INVALID = "InvalidImage"
# The registry refused the credentials the pods pull with (or asked for some, and none were
# given). NB: like an unreachable registry, it holds unless the check fails open: the nodes
# may pull with credentials of their own that the operator does not have.
UNAUTHORIZED = "RegistryUnauthorized"
# The outcomes that hold only while the check fails closed.
FAIL_OPEN = frozenset({UNREACHABLE, UNAUTHORIZED})
# A multi-platform index that holds none of the platforms of the nodes the pods may run on.
PLATFORM_MISSING = "ImagePlatformMissing"
# The credentials the pods pull with (their imagePullSecrets, or their ServiceAccount's) could
# not be had: a Secret that does not exist, one that is not a usable Docker config, or one (or
# the ServiceAccount, or the nodes) the operator may not read.
PULL_SECRET_MISSING = "PullSecretMissing"
PULL_SECRET_INVALID = "PullSecretInvalid"
PULL_SECRET_FORBIDDEN = "PullSecretForbidden"
REGISTRY_CHECK_FORBIDDEN = "RegistryCheckForbidden"
# The outcomes that say the pods' credentials could not be had (nothing was asked of a
# registry): they hold the registry check, and the verification of signatures too.
CREDENTIALS_UNUSABLE = frozenset(
    {PULL_SECRET_MISSING, PULL_SECRET_INVALID, PULL_SECRET_FORBIDDEN, REGISTRY_CHECK_FORBIDDEN}
)
# What holds, first to last (the first found is the reason), and what the hold waits for.
_HOLDS = (
    (INVALID, "every image of the revision is a valid reference"),
    (PULL_SECRET_FORBIDDEN, "the operator may read the pull secrets"),
    (PULL_SECRET_MISSING, "the pull secrets exist"),
    (PULL_SECRET_INVALID, "the pull secrets are usable Docker configs"),
    (REGISTRY_CHECK_FORBIDDEN, "the operator may read what the check needs"),
    (MISSING, "the registry holds every image of the revision"),
    (PLATFORM_MISSING, "every image runs on a node's platform"),
    (UNAUTHORIZED, "the registry lets the pods' credentials pull every image"),
    (UNREACHABLE, "the registry holds every image of the revision"),
)


@dataclasses.dataclass(frozen=True)
class Check:
    """What the registry check said about one image of a revision about to be created (or,
    for a pull secret, ServiceAccount or node list that could not be used, about that: then
    ``image`` names it, e.g. ``Secret shop/regcred``)."""

    image: str
    outcome: str  # one of the constants above
    message: str = ""


def hold_of(checks: Sequence[Check], *, fail_open: bool) -> tuple[str, str] | None:
    """Why a revision with these images must not be created yet, as ``(reason, message)``;
    None when it may be. An image that is not in its registry, not a reference, or not built
    for a node's platform, and pull secrets that cannot be used, always hold; an unreachable
    registry, or one that refuses the credentials, holds unless ``fail_open``."""
    found = first_problem(checks, fail_open=fail_open)
    if found is None:
        return None
    outcome, bad = found
    until = dict(_HOLDS)[outcome]
    return outcome, "; ".join(c.message for c in bad) + f" (nothing is created until {until})"


def first_problem(
    checks: Sequence[Check], *, fail_open: bool = False
) -> tuple[str, tuple[Check, ...]] | None:
    """The outcome that comes first in the order holds are ranked (see :func:`hold_of`), with
    the checks that have it; None when none holds (the fail-open outcomes skipped when
    ``fail_open``)."""
    for outcome, _ in _HOLDS:
        if outcome in FAIL_OPEN and fail_open:
            continue
        bad = tuple(c for c in checks if c.outcome == outcome)
        if bad:
            return outcome, bad
    return None
