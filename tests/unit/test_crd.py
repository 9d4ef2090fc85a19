"""The committed CRDs agree with their generator, and with the pydantic models they mirror.

The model checks walk ``permafrost.models`` directly (field annotations and constraints), not
through the generator, so a bug in the generator's conversion shows up as a disagreement.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import importlib.util
import json
import os
import pathlib
import re
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any

import annotated_types
import cel
import pydantic
import pydantic_core
import pytest
import yaml

from permafrost import models

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "guardedrelease.yaml"
POLICY_CRD_PATH = ROOT / "crds" / "guardrailpolicy.yaml"
GO_SPEC = "k8s.io/kubernetes@v1.36.3/api/openapi-spec/v3/api__v1_openapi.json"
HEX64 = "0123456789abcdef" * 4
HEX128 = HEX64 * 2

Schema = dict[str, Any]


def _load_generator() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("gen_crd", ROOT / "hack" / "gen_crd.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_crd = _load_generator()
CRD_TEXT = CRD_PATH.read_text()
CRD: Schema = yaml.safe_load(CRD_TEXT)
VERSION: Schema = CRD["spec"]["versions"][0]
ROOT_SCHEMA: Schema = VERSION["schema"]["openAPIV3Schema"]
SPEC: Schema = ROOT_SCHEMA["properties"]["spec"]
STATUS: Schema = ROOT_SCHEMA["properties"]["status"]
TEMPLATE: Schema = SPEC["properties"]["template"]
POD_SPEC: Schema = TEMPLATE["properties"]["spec"]

POLICY_CRD_TEXT = POLICY_CRD_PATH.read_text()
POLICY_CRD: Schema = yaml.safe_load(POLICY_CRD_TEXT)
POLICY_VERSION: Schema = POLICY_CRD["spec"]["versions"][0]
POLICY_ROOT_SCHEMA: Schema = POLICY_VERSION["schema"]["openAPIV3Schema"]
POLICY_SPEC: Schema = POLICY_ROOT_SCHEMA["properties"]["spec"]
POLICY_STATUS: Schema = POLICY_ROOT_SCHEMA["properties"]["status"]


# --- the committed file is the generator's output ------------------------------------------------


def test_the_committed_crd_is_what_the_generator_makes() -> None:
    wanted = gen_crd.render_crd(gen_crd.load_pod_template_schema())
    assert wanted == CRD_TEXT, (
        "crds/guardedrelease.yaml is stale: run .venv/bin/python hack/gen_crd.py\n"
        + gen_crd._diff(CRD_PATH, CRD_TEXT, wanted)
    )


def test_the_committed_policy_crd_is_what_the_generator_makes() -> None:
    wanted = gen_crd.render_policy_crd()
    assert wanted == POLICY_CRD_TEXT, (
        "crds/guardrailpolicy.yaml is stale: run .venv/bin/python hack/gen_crd.py\n"
        + gen_crd._diff(POLICY_CRD_PATH, POLICY_CRD_TEXT, wanted)
    )


def test_check_passes_on_the_committed_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert gen_crd.main(["--check"]) == 0
    assert capsys.readouterr().out == ""


def test_check_exits_1_with_a_diff_and_writes_nothing_when_the_crd_is_stale(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "guardedrelease.yaml"
    stale.write_text(CRD_TEXT.replace("minimum: 0", "minimum: 5", 1))
    monkeypatch.setattr(gen_crd, "CRD_PATH", stale)

    assert gen_crd.main(["--check"]) == 1

    out = capsys.readouterr().out
    assert out.startswith(f"--- {stale} (committed)\n+++ {stale} (generated)\n")
    assert "-                minimum: 5\n" in out
    assert "+                minimum: 0\n" in out
    assert "minimum: 5" in stale.read_text()


@pytest.mark.parametrize("missing", [False, True], ids=["stale", "missing"])
def test_check_exits_1_with_a_diff_and_writes_nothing_when_the_policy_crd_is_stale(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    missing: bool,
) -> None:
    stale = tmp_path / "guardrailpolicy.yaml"
    if not missing:
        stale.write_text(POLICY_CRD_TEXT.replace("maxItems: 64", "maxItems: 65", 1))
    monkeypatch.setattr(gen_crd, "POLICY_CRD_PATH", stale)

    assert gen_crd.main(["--check"]) == 1

    out = capsys.readouterr().out
    assert out.startswith(f"--- {stale} (committed)\n+++ {stale} (generated)\n")
    if missing:
        assert not stale.exists()
        assert "+  name: guardrailpolicies.permafrost.dev\n" in out
    else:
        assert "-                maxItems: 65\n" in out
        assert "+                maxItems: 64\n" in out
        assert "maxItems: 65" in stale.read_text()


def test_the_generator_writes_both_crds_and_only_what_changed(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    release, policy = tmp_path / "crds" / "guardedrelease.yaml", tmp_path / "guardrailpolicy.yaml"
    release.parent.mkdir()
    release.write_text(CRD_TEXT)
    monkeypatch.setattr(gen_crd, "CRD_PATH", release)
    monkeypatch.setattr(gen_crd, "POLICY_CRD_PATH", policy)

    assert gen_crd.main([]) == 0

    assert capsys.readouterr().out == f"wrote {policy} ({len(POLICY_CRD_TEXT.encode())} bytes)\n"
    assert release.read_text() == CRD_TEXT
    assert policy.read_text() == POLICY_CRD_TEXT
    assert gen_crd.main(["--check"]) == 0


@pytest.mark.parametrize("text", [CRD_TEXT, POLICY_CRD_TEXT], ids=["release", "policy"])
def test_the_crd_file_says_it_is_generated_and_stays_well_under_one_mebibyte(text: str) -> None:
    assert text.startswith("# generated by hack/gen_crd.py; do not edit")
    assert len(text.encode()) < 512 * 1024


# --- names, subresources, printer columns ------------------------------------------------------


def test_the_crd_names_the_namespaced_guardedrelease_resource() -> None:
    assert CRD["metadata"]["name"] == "guardedreleases.permafrost.dev"
    assert CRD["spec"]["group"] == models.GROUP == "permafrost.dev"
    assert CRD["spec"]["scope"] == "Namespaced"
    assert CRD["spec"]["names"] == {
        "kind": "GuardedRelease",
        "listKind": "GuardedReleaseList",
        "plural": "guardedreleases",
        "singular": "guardedrelease",
        "shortNames": ["grel"],
        "categories": ["permafrost"],
    }
    assert [v["name"] for v in CRD["spec"]["versions"]] == [models.VERSION]
    assert VERSION["served"] is True
    assert VERSION["storage"] is True


def test_the_status_and_scale_subresources_are_enabled() -> None:
    assert VERSION["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }


def test_the_scale_subresource_paths_are_fields_of_the_right_types() -> None:
    # NB: the apiserver refuses a CRD whose scale paths are not in its schema; and an autoscaler
    # needs an integer and a selector string.
    assert SPEC["properties"]["replicas"]["type"] == "integer"
    assert STATUS["properties"]["replicas"]["type"] == "integer"
    assert STATUS["properties"]["selector"]["type"] == "string"


def test_the_printer_columns_show_revisions_phase_readiness_and_age() -> None:
    columns = [
        (c["name"].upper(), c["type"], c["jsonPath"]) for c in VERSION["additionalPrinterColumns"]
    ]
    assert columns == [
        ("DESIRED", "string", ".status.desiredRevision"),
        ("STABLE", "string", ".status.stableRevision"),
        ("PHASE", "string", ".status.phase"),
        ("READY", "string", ".status.readyReplicas"),
        ("AGE", "date", ".metadata.creationTimestamp"),
    ]


def test_spec_is_required_and_template_is_the_only_required_spec_field() -> None:
    assert ROOT_SCHEMA["required"] == ["spec"]
    assert SPEC["required"] == ["template"]


# --- spec and status mirror the models -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelField:
    """A field of a model, where its property should be in the CRD."""

    path: str  # e.g. "spec.rollout.minReadySeconds"
    model: type[pydantic.BaseModel]
    name: str
    info: pydantic.fields.FieldInfo
    crd_object: Schema | None  # the CRD schema of the object that should hold the property

    @property
    def alias(self) -> str:
        return self.info.alias or self.name

    @property
    def crd_property(self) -> Schema | None:
        prop: Schema | None = (self.crd_object or {}).get("properties", {}).get(self.alias)
        return prop


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else typing.Union[tuple(args)]  # noqa: UP007
    return annotation


def _nested_model(annotation: Any) -> tuple[type[pydantic.BaseModel] | None, bool]:
    """The model an annotation holds (``M``, ``M | None``, ``list[M]``), and whether in a list."""
    annotation = _without_none(annotation)
    in_list = typing.get_origin(annotation) is list
    if in_list:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation, in_list
    return None, False


def _fields(
    model: type[pydantic.BaseModel], crd_object: Schema | None, path: str
) -> Iterator[ModelField]:
    for name, info in model.model_fields.items():
        field = ModelField(f"{path}.{info.alias or name}", model, name, info, crd_object)
        yield field
        nested, in_list = _nested_model(info.annotation)
        if nested is not None:
            prop = field.crd_property
            sub = (prop or {}).get("items") if in_list else prop
            yield from _fields(nested, sub, field.path + ("[]" if in_list else ""))


def _crd_objects(
    model: type[pydantic.BaseModel], crd_object: Schema, path: str
) -> Iterator[tuple[str, type[pydantic.BaseModel], Schema]]:
    """Every CRD object schema that mirrors a model (nested ones too), with its path."""
    yield path, model, crd_object
    for name, info in model.model_fields.items():
        nested, in_list = _nested_model(info.annotation)
        prop = crd_object.get("properties", {}).get(info.alias or name)
        if nested is not None and prop is not None:
            sub = prop["items"] if in_list else prop
            yield from _crd_objects(nested, sub, f"{path}.{info.alias or name}")


SPEC_FIELDS = list(_fields(models.GuardedReleaseSpec, SPEC, "spec"))
STATUS_FIELDS = list(_fields(models.GuardedReleaseStatus, STATUS, "status"))
# NB: the GuardrailPolicy's paths start with its kind, so test ids stay unique.
POLICY_SPEC_FIELDS = list(_fields(models.GuardrailPolicySpec, POLICY_SPEC, "GuardrailPolicy.spec"))
ALL_FIELDS = SPEC_FIELDS + STATUS_FIELDS + POLICY_SPEC_FIELDS
CRD_OBJECTS = [
    *_crd_objects(models.GuardedReleaseSpec, SPEC, "spec"),
    *_crd_objects(models.GuardedReleaseStatus, STATUS, "status"),
    *_crd_objects(models.GuardrailPolicySpec, POLICY_SPEC, "GuardrailPolicy.spec"),
]


def _ids(fields: list[ModelField]) -> list[str]:
    return [f.path for f in fields]


def _expected_type(annotation: Any) -> Schema:
    """The CRD type keywords a field annotation calls for."""
    annotation = _without_none(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return {"type": "string", "enum": list(typing.get_args(annotation))}
    if origin in (typing.Union, types.UnionType) and set(typing.get_args(annotation)) == {int, str}:
        return {"x-kubernetes-int-or-string": True}
    if origin is list:
        return {"type": "array"}
    if origin is dict or (
        isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)
    ):
        return {"type": "object"}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"type": "string", "enum": [member.value for member in annotation]}
    simple = {bool: "boolean", int: "integer", str: "string"}
    assert annotation in simple, f"no CRD type known for {annotation!r}"
    return {"type": simple[annotation]}


def _expected_bounds(field: ModelField) -> Schema:
    """The CRD bounds a field's constraints (``ge``, ``max_length``...) call for."""
    in_list = typing.get_origin(_without_none(field.info.annotation)) is list
    length = ("minItems", "maxItems") if in_list else ("minLength", "maxLength")
    bounds: Schema = {}
    for constraint in field.info.metadata:
        if isinstance(constraint, annotated_types.Ge):
            bounds["minimum"] = constraint.ge
        elif isinstance(constraint, annotated_types.Gt):
            bounds.update(minimum=constraint.gt, exclusiveMinimum=True)
        elif isinstance(constraint, annotated_types.Le):
            bounds["maximum"] = constraint.le
        elif isinstance(constraint, annotated_types.Lt):
            bounds.update(maximum=constraint.lt, exclusiveMaximum=True)
        elif isinstance(constraint, annotated_types.MinLen):
            bounds[length[0]] = constraint.min_length
        elif isinstance(constraint, annotated_types.MaxLen):
            bounds[length[1]] = constraint.max_length
        elif getattr(constraint, "pattern", None) is not None:
            bounds["pattern"] = constraint.pattern
        else:
            raise AssertionError(f"{field.path}: no CRD form known for {constraint!r}")
    return bounds


BOUND_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
              "maxLength", "minItems", "maxItems", "pattern")  # fmt: skip


@pytest.mark.parametrize(
    "field", SPEC_FIELDS + POLICY_SPEC_FIELDS, ids=_ids(SPEC_FIELDS + POLICY_SPEC_FIELDS)
)
def test_every_spec_field_of_the_model_is_in_the_crd(field: ModelField) -> None:
    assert field.crd_property is not None, f"{field.path} is missing from the CRD"


@pytest.mark.parametrize("field", STATUS_FIELDS, ids=_ids(STATUS_FIELDS))
def test_every_status_field_of_the_model_is_in_the_crd(field: ModelField) -> None:
    assert field.crd_property is not None, f"{field.path} is missing from the CRD"


@pytest.mark.parametrize(
    ("path", "model", "crd_object"), CRD_OBJECTS, ids=[path for path, _, _ in CRD_OBJECTS]
)
def test_every_crd_property_of_spec_and_status_is_a_field_of_the_model(
    path: str, model: type[pydantic.BaseModel], crd_object: Schema
) -> None:
    aliases = {info.alias or name for name, info in model.model_fields.items()}
    extra = set(crd_object.get("properties", {})) - aliases
    assert not extra, f"{path} has CRD properties that {model.__name__} lacks: {sorted(extra)}"


@pytest.mark.parametrize("field", ALL_FIELDS, ids=_ids(ALL_FIELDS))
def test_each_field_has_the_models_type_in_the_crd(field: ModelField) -> None:
    prop = field.crd_property
    assert prop is not None
    expected = _expected_type(field.info.annotation)
    assert {k: prop.get(k) for k in expected} == expected
    if "x-kubernetes-int-or-string" in expected:
        assert "type" not in prop
    elif "enum" not in expected:
        assert "enum" not in prop, f"{field.path}: the CRD restricts values the model allows"


def _collection_item(annotation: Any) -> tuple[str, Any] | None:
    """``("items", X)`` for ``list[X]``, ``("additionalProperties", V)`` for ``dict[str, V]``."""
    annotation = _without_none(annotation)
    origin = typing.get_origin(annotation)
    if origin is list:
        return "items", typing.get_args(annotation)[0]
    if origin is dict:
        return "additionalProperties", typing.get_args(annotation)[1]
    return None


COLLECTION_FIELDS = [
    f for f in ALL_FIELDS if _collection_item(f.info.annotation) and f.path != "spec.template"
]


@pytest.mark.parametrize("field", COLLECTION_FIELDS, ids=_ids(COLLECTION_FIELDS))
def test_each_list_and_map_field_has_the_models_item_type_in_the_crd(field: ModelField) -> None:
    # NB: spec.template (dict[str, Any] in the model) is the full PodTemplateSpec in the CRD.
    prop = field.crd_property
    assert prop is not None
    where = _collection_item(field.info.annotation)
    assert where is not None
    key, item = where
    if item is Any:
        assert prop.get("x-kubernetes-preserve-unknown-fields") is True
        assert key not in prop
        return
    expected = _expected_type(item)
    assert {k: prop[key].get(k) for k in expected} == expected
    if "enum" not in expected:
        assert "enum" not in prop[key], f"{field.path}: the CRD restricts values the model allows"


@pytest.mark.parametrize("field", ALL_FIELDS, ids=_ids(ALL_FIELDS))
def test_each_field_has_the_models_bounds_in_the_crd(field: ModelField) -> None:
    prop = field.crd_property
    assert prop is not None
    actual = {k: prop[k] for k in BOUND_KEYS if k in prop}
    assert actual == _expected_bounds(field)


@pytest.mark.parametrize("field", ALL_FIELDS, ids=_ids(ALL_FIELDS))
def test_each_field_is_required_in_the_crd_exactly_when_the_model_requires_it(
    field: ModelField,
) -> None:
    required = (field.crd_object or {}).get("required", [])
    assert (field.alias in required) == field.info.is_required()


def test_no_status_field_is_required() -> None:
    assert "required" not in STATUS
    assert "required" not in POLICY_STATUS


@pytest.mark.parametrize("field", ALL_FIELDS, ids=_ids(ALL_FIELDS))
def test_each_static_default_in_the_crd_equals_the_models(field: ModelField) -> None:
    prop = field.crd_property
    assert prop is not None
    if field.info.default_factory is not None:
        return  # see test_the_crd_defaults_an_object_the_way_the_model_does
    default = field.info.default
    if default is pydantic_core.PydanticUndefined or default is None:
        assert "default" not in prop, f"{field.path}: the model has no default"
    else:
        assert prop.get("default") == (default.value if isinstance(default, enum.Enum) else default)


def _apply_crd_defaults(value: Any, schema: Schema) -> Any:
    """What the apiserver's structural defaulting makes of ``value`` (objects and lists)."""
    if isinstance(value, dict):
        out = dict(value)
        for name, prop in schema.get("properties", {}).items():
            if name not in out and "default" in prop:
                out[name] = copy.deepcopy(prop["default"])
            if name in out:
                out[name] = _apply_crd_defaults(out[name], prop)
        return out
    if isinstance(value, list) and "items" in schema:
        return [_apply_crd_defaults(item, schema["items"]) for item in value]
    return value


def _without_empty_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_empty_lists(v) for k, v in value.items() if v != []}
    if isinstance(value, list):
        return [_without_empty_lists(v) for v in value]
    return value


MINIMAL_TEMPLATE = {
    "spec": {"containers": [{"name": "web", "image": f"r.example/web@sha256:{HEX64}"}]}
}
MINIMAL_POLICY = {"stages": ["create"], "rules": [{"name": "pinned", "expression": "true"}]}


@pytest.mark.parametrize(
    ("model", "schema", "bare"),
    [
        (models.GuardedReleaseSpec, SPEC, {"template": MINIMAL_TEMPLATE}),
        (
            models.GuardedReleaseSpec,
            SPEC,
            {
                "template": MINIMAL_TEMPLATE,
                "service": {"name": "web", "ports": [{"port": 80}]},
                "rollout": {"minReadySeconds": 0},
                "configRefs": [{"kind": "ConfigMap", "name": "settings"}],
            },
        ),
        (models.GuardedReleaseStatus, STATUS, {}),
        (
            models.GuardedReleaseStatus,
            STATUS,
            {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "Stable",
                        "lastTransitionTime": "2025-01-01T00:00:00Z",
                    }
                ],
                "revisions": [
                    {
                        "name": "web-1",
                        "hash": "1",
                        "outcome": "Stable",
                        "createdAt": "2025-01-01T00:00:00Z",
                    }
                ],
            },
        ),
        (models.GuardrailPolicySpec, POLICY_SPEC, MINIMAL_POLICY),
        (
            models.GuardrailPolicySpec,
            POLICY_SPEC,
            {
                **MINIMAL_POLICY,
                "enforcement": "Warn",
                "match": {"objectSelector": {"matchLabels": {"app": "web"}}, "kinds": ["Pod"]},
                "rules": [{"name": "a", "expression": "true", "message": "no"}],
            },
        ),
    ],
    ids=[
        "spec-minimal",
        "spec-nested",
        "status-empty",
        "status-nested",
        "policy-minimal",
        "policy-nested",
    ],
)
def test_the_crd_defaults_an_object_the_way_the_model_does(
    model: type[models.Model], schema: Schema, bare: Mapping[str, Any]
) -> None:
    defaulted = _apply_crd_defaults(bare, schema)
    # NB: empty lists are not defaulted in the CRD; to the models absent and empty are the same.
    assert defaulted == _without_empty_lists(model.model_validate(bare).to_json())


def test_conditions_have_the_standard_list_map_shape() -> None:
    conditions = STATUS["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]


def test_the_status_keeps_fields_the_model_does_not_know_for_kopf() -> None:
    # The status model ignores Kopf's bookkeeping (handler results) instead of refusing it; the
    # apiserver must not prune it either, or Kopf re-patches it forever.
    assert STATUS["x-kubernetes-preserve-unknown-fields"] is True
    assert models.GuardedReleaseStatus.model_validate({"kopf": {"progress": {}}}).to_json() == {
        "conditions": [], "revisions": []}  # fmt: skip


# --- GuardrailPolicy: names, scope, columns, list types and the selector rule ------------------


def test_the_policy_crd_names_the_cluster_scoped_guardrailpolicy_resource() -> None:
    assert POLICY_CRD["metadata"]["name"] == "guardrailpolicies.permafrost.dev"
    assert POLICY_CRD["spec"]["group"] == models.GROUP
    assert POLICY_CRD["spec"]["scope"] == "Cluster"
    assert POLICY_CRD["spec"]["names"] == {
        "kind": models.POLICY_KIND,
        "listKind": "GuardrailPolicyList",
        "plural": models.POLICY_PLURAL,
        "singular": "guardrailpolicy",
        "shortNames": ["grp"],
        "categories": ["permafrost"],
    }
    assert [v["name"] for v in POLICY_CRD["spec"]["versions"]] == [models.VERSION]
    assert POLICY_VERSION["served"] is True
    assert POLICY_VERSION["storage"] is True


def test_the_policy_status_is_an_open_object_behind_the_status_subresource() -> None:
    assert POLICY_VERSION["subresources"] == {"status": {}}
    assert POLICY_STATUS["type"] == "object"
    assert POLICY_STATUS["x-kubernetes-preserve-unknown-fields"] is True
    assert "properties" not in POLICY_STATUS


def test_the_policy_printer_columns_show_stages_enforcement_where_enforced_and_age() -> None:
    columns = [
        (c["name"].upper(), c["type"], c["jsonPath"])
        for c in POLICY_VERSION["additionalPrinterColumns"]
    ]
    assert columns == [
        ("STAGES", "string", ".spec.stages"),
        ("ENFORCEMENT", "string", ".spec.enforcement"),
        ("ENFORCED BY", "string", ".status.enforcedBy"),
        ("AGE", "date", ".metadata.creationTimestamp"),
    ]


def test_policy_spec_is_required_and_needs_stages_and_rules_or_verify_images() -> None:
    assert POLICY_ROOT_SCHEMA["required"] == ["spec"]
    assert POLICY_SPEC["required"] == ["stages"]
    (rule,) = POLICY_SPEC["x-kubernetes-validations"]
    assert "size(self.rules) > 0" in rule["rule"]
    assert "size(self.verifyImages) > 0" in rule["rule"]
    with pytest.raises(pydantic.ValidationError, match="rules, verifyImages or both"):
        models.GuardrailPolicySpec.model_validate({"stages": ["create"]})


def _schema_nodes(schema: Schema, path: str) -> Iterator[tuple[str, Schema]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _schema_nodes(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _schema_nodes(schema[key], f"{path}{'[]' if key == 'items' else '{}'}")


POLICY_NODES = dict(_schema_nodes(POLICY_SPEC, "spec"))


def test_stages_are_a_set_and_rules_a_map_keyed_by_name_and_other_lists_are_atomic() -> None:
    list_types = {
        path: (node.get("x-kubernetes-list-type"), node.get("x-kubernetes-list-map-keys"))
        for path, node in POLICY_NODES.items()
        if node.get("type") == "array"
    }
    assert list_types == {
        "spec.stages": ("set", None),
        "spec.match.namespaceSelector.matchExpressions": (None, None),
        "spec.match.namespaceSelector.matchExpressions[].values": (None, None),
        "spec.match.objectSelector.matchExpressions": (None, None),
        "spec.match.objectSelector.matchExpressions[].values": (None, None),
        "spec.match.kinds": (None, None),
        "spec.rules": ("map", ["name"]),
        "spec.verifyImages": ("map", ["name"]),
        "spec.verifyImages[].images": (None, None),
        "spec.verifyImages[].keys": (None, None),
        "spec.verifyImages[].attestations": (None, None),
        "spec.verifyImages[].attestations[].keys": (None, None),
    }
    # The apiserver demands that a list-map key be required (or defaulted).
    assert "name" in POLICY_NODES["spec.rules[]"]["required"]
    assert "name" in POLICY_NODES["spec.verifyImages[]"]["required"]


def test_the_policy_schema_is_structural() -> None:
    for path, node in POLICY_NODES.items():
        assert not {"$ref", "allOf", "anyOf", "oneOf", "title"} & set(node), path
        assert "type" in node, path


def _requirement_rules() -> Iterator[tuple[str, Schema]]:
    for selector in ("namespaceSelector", "objectSelector"):
        item = POLICY_NODES[f"spec.match.{selector}.matchExpressions[]"]
        rules: list[Schema] = item["x-kubernetes-validations"]
        assert len(rules) == 1
        yield selector, rules[0]


def test_only_the_spec_and_the_selector_requirements_carry_cel_rules() -> None:
    with_rules = [p for p, node in POLICY_NODES.items() if "x-kubernetes-validations" in node]
    assert with_rules == [
        "spec",
        "spec.match.namespaceSelector.matchExpressions[]",
        "spec.match.objectSelector.matchExpressions[]",
    ]


def test_the_selector_rule_names_the_field() -> None:
    for selector, rule in _requirement_rules():
        assert rule["fieldPath"] == ".values"
        assert rule["reason"] == "FieldValueInvalid"
        assert rule["message"].startswith(f"spec.match.{selector}.matchExpressions[*].values ")
        assert "In or NotIn" in rule["message"]
        assert "Exists or DoesNotExist" in rule["message"]


@pytest.mark.parametrize(
    ("operator", "values", "verdict"),
    [
        pytest.param("In", ["a"], None, id="in-with-values"),
        pytest.param("NotIn", ["a", "b"], None, id="notin-with-values"),
        pytest.param("Exists", None, None, id="exists-without-values"),
        pytest.param("DoesNotExist", None, None, id="doesnotexist-without-values"),
        pytest.param("In", None, "a non-empty list when the operator is In", id="in-absent"),
        pytest.param("In", [], "a non-empty list when the operator is In", id="in-empty"),
        pytest.param("NotIn", None, "a non-empty list when the operator is NotIn", id="notin"),
        pytest.param("Exists", ["a"], "absent when the operator is Exists", id="exists-values"),
        pytest.param("Exists", [], "absent when the operator is Exists", id="exists-empty"),
        pytest.param(
            "DoesNotExist", ["a"], "absent when the operator is DoesNotExist", id="dne-values"
        ),
    ],
)
def test_the_selector_rule_wants_values_exactly_for_in_and_notin(
    operator: str, values: list[str] | None, verdict: str | None
) -> None:
    requirement: Schema = {"key": "tier", "operator": operator}
    if values is not None:
        requirement["values"] = values
    for selector, rule in _requirement_rules():
        # NB: the cel library evaluates the rule as the apiserver's CEL does (has, size, in).
        assert cel.evaluate(rule["rule"], {"self": requirement}) is (verdict is None)
        if verdict is not None:
            message = cel.evaluate(rule["messageExpression"], {"self": requirement})
            assert message == (
                f'spec.match.{selector}.matchExpressions[*].values must be {verdict} (key "tier")'
            )


# --- spec.template: the Kubernetes PodTemplateSpec, with Permafrost's rules ---------------------


def _strip_permafrost_rules(template: Schema) -> Schema:
    template = copy.deepcopy(template)
    del template["description"]
    assert template.pop("required") == ["spec"]
    pod_spec = template["properties"]["spec"]
    assert pod_spec["properties"]["containers"].pop("minItems") == 1
    for name in ("containers", "initContainers"):
        containers = pod_spec["properties"][name]
        assert containers.pop("maxItems") == 64
        item = containers["items"]
        assert item["properties"]["image"].pop("maxLength") == 1024
        assert len(item.pop("x-kubernetes-validations")) == 1
    return template


def test_the_template_is_the_full_pod_template_spec_plus_permafrosts_rules() -> None:
    assert _strip_permafrost_rules(TEMPLATE) == gen_crd.load_pod_template_schema()


def test_the_template_needs_a_pod_spec_with_one_to_64_containers() -> None:
    assert TEMPLATE["required"] == ["spec"]
    assert POD_SPEC["required"] == ["containers"]
    assert POD_SPEC["properties"]["containers"]["minItems"] == 1
    assert POD_SPEC["properties"]["containers"]["maxItems"] == 64
    assert POD_SPEC["properties"]["initContainers"]["maxItems"] == 64


def _image_rule(list_name: str) -> Schema:
    rules: list[Schema] = POD_SPEC["properties"][list_name]["items"]["x-kubernetes-validations"]
    assert len(rules) == 1
    return rules[0]


@pytest.mark.parametrize("list_name", ["containers", "initContainers"])
def test_the_image_rule_names_the_field_and_how_to_fix_it(list_name: str) -> None:
    rule = _image_rule(list_name)
    assert rule["fieldPath"] == ".image"
    assert rule["reason"] == "FieldValueInvalid"
    for message in (rule["message"], rule["messageExpression"]):
        assert f"spec.template.spec.{list_name}[" in message
        assert "sha256:<64 hex>" in message
        assert "crane digest" in message


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        pytest.param("nginx:1.27", False, id="tag-only"),
        pytest.param("nginx", False, id="bare-name"),
        pytest.param("nginx@sha256:abc123", False, id="short-digest"),
        pytest.param(f"nginx@sha256:{HEX64[:-1]}", False, id="63-hex"),
        pytest.param(f"nginx@sha256:{HEX64}0", False, id="65-hex"),
        pytest.param(f"nginx@sha256:{HEX64.upper()}", False, id="uppercase-hex"),
        pytest.param(f"nginx@sha512:{HEX64}", False, id="sha512-with-64-hex"),
        pytest.param(f"@sha256:{HEX64}", False, id="no-name"),
        pytest.param(f"nginx@sha256:{HEX64} ", False, id="trailing-space"),
        pytest.param(f"nginx@sha256:{HEX64}", True, id="sha256"),
        pytest.param(f"registry.example:5000/team/app@sha256:{HEX64}", True, id="registry-port"),
        pytest.param(f"reg.example/a:1.2@sha256:{HEX64}", True, id="tag-before-digest"),
        pytest.param(f"nginx@sha512:{HEX128}", True, id="sha512"),
    ],
)
def test_the_image_rule_accepts_exactly_images_pinned_by_digest(image: str, pinned: bool) -> None:
    for list_name in ("containers", "initContainers"):
        [pattern] = re.findall(r"matches\('([^']*)'\)", _image_rule(list_name)["rule"])
        # NB: CEL's matches() is RE2, which agrees with Python's re on this pattern.
        assert bool(re.search(pattern, image)) is pinned


def _nodes(schema: Schema, path: str = "template") -> Iterator[tuple[str, Schema]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _nodes(schema[key], f"{path}{'[]' if key == 'items' else '{}'}")


POD_TEMPLATE_NODES = list(_nodes(gen_crd.load_pod_template_schema()))


def test_the_pod_template_schema_is_structural() -> None:
    for path, node in POD_TEMPLATE_NODES:
        assert not {"$ref", "allOf", "oneOf", "description"} & set(node), path
        assert not any(k.startswith("x-kubernetes-patch") for k in node), path
        has_type = "type" in node or node.get("x-kubernetes-int-or-string")
        assert has_type or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert not isinstance(node.get("default"), dict | list), path


def test_every_list_map_key_in_the_pod_template_is_required_or_defaulted() -> None:
    for path, node in POD_TEMPLATE_NODES:
        for key in node.get("x-kubernetes-list-map-keys", []):
            item = node["items"]
            assert key in item.get("required", []) or "default" in item["properties"][key], (
                f"{path}: {key}"
            )


def test_the_pod_template_keeps_real_defaults_and_drops_zero_values() -> None:
    containers = dict(POD_TEMPLATE_NODES)["template.spec.containers"]
    assert containers["items"]["properties"]["ports"]["items"]["properties"]["protocol"] == {
        "type": "string", "default": "TCP"}  # fmt: skip
    assert "default" not in containers["items"]["properties"]["name"]
    image_pull_secret = dict(POD_TEMPLATE_NODES)["template.spec.imagePullSecrets[]"]
    assert image_pull_secret["properties"]["name"]["default"] == ""  # a list-map key


def test_the_pod_template_metadata_holds_only_what_a_template_means() -> None:
    metadata = TEMPLATE["properties"]["metadata"]
    assert set(metadata["properties"]) == {"labels", "annotations", "name", "namespace",
                                           "generateName"}  # fmt: skip
    assert metadata["properties"]["labels"] == {
        "type": "object", "additionalProperties": {"type": "string"}}  # fmt: skip


def test_quantities_and_int_or_strings_have_their_crd_forms() -> None:
    nodes = dict(POD_TEMPLATE_NODES)
    quantity = nodes["template.spec.containers[].resources.limits{}"]
    assert quantity["x-kubernetes-int-or-string"] is True
    assert quantity["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert re.fullmatch(quantity["pattern"], "500m")
    assert nodes["template.spec.containers[].livenessProbe.httpGet.port"] == {
        "x-kubernetes-int-or-string": True}  # fmt: skip


def _go_module_cache() -> pathlib.Path:
    if os.environ.get("GOMODCACHE"):
        return pathlib.Path(os.environ["GOMODCACHE"])
    gopath = os.environ.get("GOPATH", "").split(os.pathsep)[0] or str(pathlib.Path.home() / "go")
    return pathlib.Path(gopath) / "pkg" / "mod"


def test_the_pod_template_schema_file_is_what_the_extractor_makes_of_kubernetes_v1_36() -> None:
    source = _go_module_cache() / GO_SPEC
    if not source.exists():
        pytest.skip(f"the Kubernetes OpenAPI spec is not in the Go module cache ({source})")
    extracted = gen_crd.extract_pod_template_schema(json.loads(source.read_text()))
    assert (
        gen_crd.render_pod_template_schema(extracted)
        == gen_crd.POD_TEMPLATE_SCHEMA_PATH.read_text()
    )


# --- the extractor's contract, on a small OpenAPI document ---------------------------------------


def _openapi(**schemas: Schema) -> Schema:
    return {"components": {"schemas": {f"t.{name}": s for name, s in schemas.items()}}}


def _ref(name: str, **siblings: Any) -> Schema:
    return {"allOf": [{"$ref": f"#/components/schemas/t.{name}"}], **siblings}


def test_the_extractor_inlines_references_and_drops_what_crds_reject_or_do_not_need() -> None:
    doc = _openapi(
        Root={
            "type": "object",
            "description": "dropped",
            "x-kubernetes-unions": [{"discriminator": "kind"}],
            "properties": {
                "child": _ref("Child", default={}, description="dropped"),
                "count": {"type": "integer", "format": "int32", "default": 0},
                "mode": {"type": "string", "format": "k8s-unknown", "default": "Fast"},
                "items": {
                    "type": "array",
                    "items": _ref("Item", default={}),
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name", "port"],
                    "x-kubernetes-patch-strategy": "merge",
                },
            },
        },
        Child={
            "type": "object",
            "properties": {"name": {"type": "string", "default": ""}},
            "required": ["name"],
        },
        Item={
            "type": "object",
            "required": ["port"],
            "properties": {
                "name": {"type": "string", "default": ""},
                "port": {"type": "integer", "default": 0},
            },
        },
    )
    extractor = gen_crd._PodTemplateExtractor(doc)
    assert extractor.type_schema("t.Root") == {
        "type": "object",
        "properties": {
            "child": {"type": "object", "properties": {"name": {"type": "string"}},
                      "required": ["name"]},
            "count": {"type": "integer", "format": "int32"},
            "mode": {"type": "string", "default": "Fast"},
            "items": {
                "type": "array",
                "items": {"type": "object", "required": ["port"], "properties": {
                    "name": {"type": "string", "default": ""},  # a list-map key, not required
                    "port": {"type": "integer"}}},
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name", "port"],
            },
        },
    }  # fmt: skip


def test_the_extractor_cuts_recursion_with_preserve_unknown_fields() -> None:
    doc = _openapi(Node={"type": "object", "properties": {"next": _ref("Node")}})
    schema = gen_crd._PodTemplateExtractor(doc).type_schema("t.Node")
    assert schema["properties"]["next"] == {"x-kubernetes-preserve-unknown-fields": True}


def test_the_extractor_refuses_a_construct_it_has_no_rule_for() -> None:
    doc = _openapi(Odd={"type": "array", "items": {"type": "string"}, "uniqueItems": True})
    with pytest.raises(ValueError, match="uniqueItems"):
        gen_crd._PodTemplateExtractor(doc).type_schema("t.Odd")


# --- the model converter's contract, on small models ---------------------------------------------


class _Inner(models.Model):
    level: int = pydantic.Field(default=2, gt=0, lt=10)


class _Outer(models.Model):
    inner: _Inner = pydantic.Field(default_factory=_Inner)
    names: list[str] = pydantic.Field(default_factory=list, max_length=3)
    port: int | str | None = None


def test_the_model_converter_writes_exclusive_bounds_and_factory_defaults_the_crd_way() -> None:
    assert gen_crd.model_schema(_Outer) == {
        "type": "object",
        "properties": {
            "inner": {"type": "object", "default": {}, "properties": {
                "level": {"type": "integer", "default": 2, "minimum": 0, "exclusiveMinimum": True,
                          "maximum": 10, "exclusiveMaximum": True}}},
            "names": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            "port": {"x-kubernetes-int-or-string": True},
        },
    }  # fmt: skip
