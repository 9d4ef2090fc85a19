"""Revision identity: the content hash of a normalized pod template plus its config snapshot.

A revision is "what runs": the pod template and the data of the ConfigMaps/Secrets it references.
Two specs that differ only in field order or in values Kubernetes would default anyway hash the
same, so they make no new revision; any change in what runs hashes differently.

NB: the hash is an identity stored in the cluster (names, labels, status). Changing this
normalization would make every release roll out again on an operator upgrade (the complaint in
fluxcd/flagger#1673), so it is versioned by ``HASH_SCHEME`` and must only ever be extended for
fields that are new in Kubernetes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

HASH_SCHEME = "v1"
HASH_LENGTH = 10

# Values the apiserver fills in when they are absent: writing them explicitly changes nothing.
_POD_SPEC_DEFAULTS: Mapping[str, Any] = {
    "restartPolicy": "Always",
    "dnsPolicy": "ClusterFirst",
    "schedulerName": "default-scheduler",
    "terminationGracePeriodSeconds": 30,
    "enableServiceLinks": True,
}
_CONTAINER_DEFAULTS: Mapping[str, Any] = {
    "terminationMessagePath": "/dev/termination-log",
    "terminationMessagePolicy": "File",
}
_PROBE_DEFAULTS: Mapping[str, Any] = {
    "timeoutSeconds": 1,
    "periodSeconds": 10,
    "successThreshold": 1,
    "failureThreshold": 3,
}
_PORT_DEFAULTS: Mapping[str, Any] = {"protocol": "TCP"}
_HTTP_GET_DEFAULTS: Mapping[str, Any] = {"scheme": "HTTP"}
_FIELD_REF_DEFAULTS: Mapping[str, Any] = {"apiVersion": "v1"}
_VOLUME_MODE_DEFAULTS: Mapping[str, Any] = {"defaultMode": 420}  # 0644
_VOLUME_SOURCES_WITH_MODE = ("configMap", "secret", "projected", "downwardAPI")
_CONTAINER_LISTS = ("containers", "initContainers")
_PROBES = ("livenessProbe", "readinessProbe", "startupProbe")


def _prune(value: Any) -> Any:
    """Drop empty values (``None``, ``{}``, ``[]``, ``""``) recursively; keep list order."""
    if isinstance(value, Mapping):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, {}, [], "")}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def _without_defaults(obj: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if not (k in defaults and defaults[k] == v)}


def default_pull_policy(image: str) -> str:
    """Kubernetes' default ``imagePullPolicy``: Always for ``:latest`` or no tag nor digest."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = last.partition(":")[2] or None
    return "Always" if tag == "latest" or (tag is None and not digest) else "IfNotPresent"


def _normalize_probe(probe: Mapping[str, Any]) -> dict[str, Any]:
    result = _without_defaults(probe, _PROBE_DEFAULTS)
    if isinstance(result.get("httpGet"), Mapping):
        result["httpGet"] = _without_defaults(result["httpGet"], _HTTP_GET_DEFAULTS)
    return result


def _normalize_container(container: Mapping[str, Any]) -> dict[str, Any]:
    result = _without_defaults(container, _CONTAINER_DEFAULTS)
    if result.get("imagePullPolicy") == default_pull_policy(str(result.get("image", ""))):
        del result["imagePullPolicy"]
    if "ports" in result:
        result["ports"] = [_without_defaults(p, _PORT_DEFAULTS) for p in result["ports"]]
    for probe in _PROBES:
        if isinstance(result.get(probe), Mapping):
            result[probe] = _normalize_probe(result[probe])
    if "env" in result:
        result["env"] = [_normalize_env(e) for e in result["env"]]
    return result


def _normalize_env(env: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(env)
    source = result.get("valueFrom")
    if isinstance(source, Mapping) and isinstance(source.get("fieldRef"), Mapping):
        result["valueFrom"] = {
            **source,
            "fieldRef": _without_defaults(source["fieldRef"], _FIELD_REF_DEFAULTS),
        }
    return result


def _normalize_volume(volume: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(volume)
    for key in _VOLUME_SOURCES_WITH_MODE:
        if isinstance(result.get(key), Mapping):
            result[key] = _without_defaults(result[key], _VOLUME_MODE_DEFAULTS)
    return result


def normalize_template(template: Mapping[str, Any]) -> dict[str, Any]:
    """The pod template with defaulted and empty fields removed (key order is irrelevant)."""
    result = dict(template)
    spec = _without_defaults(dict(template.get("spec") or {}), _POD_SPEC_DEFAULTS)
    for key in _CONTAINER_LISTS:
        if key in spec:
            spec[key] = [_normalize_container(c) for c in spec[key]]
    if "volumes" in spec:
        spec["volumes"] = [_normalize_volume(v) for v in spec["volumes"]]
    result["spec"] = spec
    pruned: dict[str, Any] = _prune(result)
    return pruned


def revision_hash(*, template: Mapping[str, Any], config: Mapping[str, Mapping[str, Any]]) -> str:
    """The revision hash of a pod template and its config data.

    ``config`` maps ``"<Kind>/<name>"`` of every referenced ConfigMap/Secret to its contents
    (``data``, ``binaryData``, ``type``). The result is ``HASH_LENGTH`` lowercase hex characters.
    """
    document = {
        "scheme": HASH_SCHEME,
        "template": normalize_template(template),
        "config": {key: _prune(dict(value)) for key, value in sorted(config.items())},
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]


def short_digest(text: str, *, length: int = 8) -> str:
    """A short stable digest of a string, for bounding names (not an identity)."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def unscaled_spec_digest(spec: Mapping[str, Any]) -> str:
    """A digest of a GuardedRelease's spec (its JSON, camelCase) with ``replicas`` left out.

    Two specs that differ only in ``replicas`` (a scale: ``kubectl scale``, an autoscaler) have
    the same digest; any other change has another. Not stored as an identity anywhere but the
    release's own status, so it may change with the operator.
    """
    document = {k: v for k, v in spec.items() if k != "replicas"}
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]
