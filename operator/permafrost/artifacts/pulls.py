"""What a node would pull an image with: credentials and platforms. Pure.

The operator's registry check (``permafrost run --registry-check``) asks a registry what the
kubelet will ask it, so its verdict is the one the pods will meet:

- **Credentials** are those of the pod template's ``imagePullSecrets`` or, when it names none,
  of its ServiceAccount's (the ServiceAccount admission plugin copies them into every pod that
  names none), merged over the operator-wide ``--registry-config`` (which stands for what the
  nodes themselves are configured with). Secrets of type ``kubernetes.io/dockerconfigjson``
  and the legacy ``kubernetes.io/dockercfg`` are understood, as the kubelet understands them.
- **Platforms** are those of the Ready nodes the pods may be scheduled on: their
  ``status.nodeInfo``, narrowed by the template's ``nodeSelector`` on ``kubernetes.io/os`` and
  ``kubernetes.io/arch``. A multi-platform index must hold one of them.

This module reads nothing: the reconciler reads the Secrets, the ServiceAccount and the nodes
through the kube adapter and hands them here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from permafrost.artifacts import images

DOCKER_CONFIG_JSON = "kubernetes.io/dockerconfigjson"
DOCKER_CFG = "kubernetes.io/dockercfg"
# The key each type keeps its config under (the apiserver validates both on write).
SECRET_KEYS = {DOCKER_CONFIG_JSON: ".dockerconfigjson", DOCKER_CFG: ".dockercfg"}
OS_LABEL = "kubernetes.io/os"
ARCH_LABEL = "kubernetes.io/arch"

# {registry API host: (user, password)}
Credentials = Mapping[str, tuple[str, str]]


def auths_credentials(auths: object, *, source: str) -> dict[str, tuple[str, str]]:
    """``{registry API host: (user, password)}`` of a Docker config's ``auths`` map (each entry
    ``auth``: base64 ``user:password``, or ``username``/``password``). Keys may be URLs
    (``https://index.docker.io/v1/``) or ``host[:port][/path]``; Docker Hub's names become its
    API host. Entries without a user are skipped (credential helpers are not run). Raises
    ``ValueError`` naming ``source`` for an entry that cannot be read."""
    if auths is None:
        return {}
    if not isinstance(auths, dict):
        raise ValueError(f"{source}: its auths are not a map of registries")
    credentials: dict[str, tuple[str, str]] = {}
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            continue
        key = str(key)
        host = urllib.parse.urlsplit(key).netloc if "://" in key else key.split("/")[0]
        if host in ("index.docker.io", images.DOCKER_HUB):
            host = images.DOCKER_HUB_API
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raise ValueError(f"{source}: the auth of {key!r} is not base64 user:pass") from None
            user, _, password = decoded.partition(":")
        else:
            user, password = str(entry.get("username") or ""), str(entry.get("password") or "")
        if user and host not in credentials:
            # NB: the first entry for a host wins, as the kubelet tries them in order.
            credentials[host] = (user, password)
    return credentials


def secret_credentials(secret: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """The credentials of an image pull Secret (an object as the API serves it). Raises
    ``ValueError`` saying what is wrong: another type, its key missing, not base64, not JSON,
    an entry that cannot be read."""
    meta = secret.get("metadata") or {}
    source = f"Secret {meta.get('namespace', '')}/{meta.get('name', '')}".replace(" /", " ")
    type_ = str(secret.get("type") or "")
    key = SECRET_KEYS.get(type_)
    if key is None:
        raise ValueError(
            f"{source} is of type {type_ or 'Opaque'!r}, not {DOCKER_CONFIG_JSON} "
            f"(or the legacy {DOCKER_CFG})"
        )
    encoded = (secret.get("data") or {}).get(key)
    if not encoded:
        raise ValueError(f"{source} has no {key}")
    try:
        config = json.loads(base64.b64decode(str(encoded), validate=True))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValueError(f"{source}: its {key} is not base64 of JSON") from None
    if not isinstance(config, dict):
        raise ValueError(f"{source}: its {key} is not a JSON object")
    # NB: .dockercfg is the auths map itself; .dockerconfigjson wraps it in {"auths": ...}.
    auths = config.get("auths") if type_ == DOCKER_CONFIG_JSON else config
    return auths_credentials(auths, source=source)


def merged(base: Credentials, secrets: Sequence[Credentials]) -> dict[str, tuple[str, str]]:
    """The credentials a pull uses, per registry host: the first of ``secrets`` (in the
    template's order) that has the host, else ``base`` (the operator-wide config)."""
    result = dict(base)
    for found in reversed(secrets):
        result.update(found)
    return result


def pull_secret_names(pod_spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The names of a pod spec's (or a ServiceAccount's) ``imagePullSecrets``, in order."""
    listed = pod_spec.get("imagePullSecrets") or []
    names = (str(s.get("name") or "") for s in listed if isinstance(s, dict))
    return tuple(dict.fromkeys(n for n in names if n))


def service_account_of(pod_spec: Mapping[str, Any]) -> str:
    """The ServiceAccount the pods run as (``default`` when the template names none)."""
    return str(pod_spec.get("serviceAccountName") or pod_spec.get("serviceAccount") or "default")


def scope(credentials: Credentials, host: str) -> str:
    """Which credentials a lookup of ``host`` is made with, as a short digest (``""``:
    anonymous). Verdicts are cached under it: a verdict given to one set of credentials never
    answers for another (one namespace's pull secret cannot vouch for another's pulls), while
    namespaces that use the same credentials share it. NB: a digest, so the cache keys do not
    hold the password."""
    found = credentials.get(host)
    if found is None:
        return ""
    return hashlib.sha256(f"{host}\0{found[0]}\0{found[1]}".encode()).hexdigest()[:32]


# --- platforms ---------------------------------------------------------------------------------


def _ready(node: Mapping[str, Any]) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def node_platforms(
    nodes: Iterable[Mapping[str, Any]], *, node_selector: Mapping[str, str] | None
) -> tuple[str, ...]:
    """The distinct ``os/architecture`` of the Ready, schedulable nodes, as their
    ``status.nodeInfo`` reports them, narrowed by ``node_selector``'s ``kubernetes.io/os`` and
    ``kubernetes.io/arch`` (its other keys are not the platform's and are left to the
    scheduler); sorted."""
    selector = node_selector or {}
    found = set()
    for node in nodes:
        if not _ready(node) or (node.get("spec") or {}).get("unschedulable"):
            continue
        info = (node.get("status") or {}).get("nodeInfo") or {}
        os_, arch = str(info.get("operatingSystem") or ""), str(info.get("architecture") or "")
        if not os_ or not arch:
            continue
        if selector.get(OS_LABEL, os_) != os_ or selector.get(ARCH_LABEL, arch) != arch:
            continue
        found.add(f"{os_}/{arch}")
    return tuple(sorted(found))


def matches(have: str, wanted: str) -> bool:
    """Whether an index entry's platform (``os/arch[/variant]``) serves ``wanted``; a wanted
    platform without a variant takes any variant (nodes do not report theirs)."""
    parts, want = have.split("/"), wanted.split("/")
    return parts[:2] == want[:2] and (len(want) < 3 or parts[2:3] == want[2:3])


def runs_on(index_platforms: Sequence[str], wanted: Sequence[str]) -> bool:
    """Whether an index holds an image for at least one of the ``wanted`` platforms (nothing
    wanted: no node to judge by, so nothing to refuse)."""
    return not wanted or any(matches(h, w) for w in wanted for h in index_platforms)
