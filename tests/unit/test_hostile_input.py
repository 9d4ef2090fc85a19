"""Hostile and malformed input, generated (``hypothesis``): names at the limits, unicode, bombs,
absurd nesting and CEL that tries to run away.

Each input either works — and everything Permafrost derives from it is valid Kubernetes — or is
refused with a clear error of the kind the caller handles; nothing raises anything else.
The hand-picked cases live next to the code they test (``test_manifests.py``,
``test_check_cli.py``, ``test_policy.py``); these explore around them.
``PERMAFROST_CHAOS=long`` runs many more examples (``make chaos``).
"""

from __future__ import annotations

import datetime
import json
import os
import re
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from permafrost import models
from permafrost.policies import documents, policy
from permafrost.releases import hashing, manifests

LONG = os.environ.get("PERMAFROST_CHAOS") == "long"
SETTINGS = hypothesis.settings(
    max_examples=2_000 if LONG else 200,
    deadline=None,
    derandomize=not LONG,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
IMAGE = "reg.example/shop/app@sha256:" + "a" * 64

# A DNS-1123 subdomain of 1..253 characters: what the apiserver accepts as an object name.
label_part = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
subdomains = (
    st.lists(label_part, min_size=1, max_size=8).map(".".join).filter(lambda n: len(n) <= 253)
    | st.integers(1, 253).map(lambda n: "a" * n)
    | st.integers(1, 253).map(lambda n: ("team-" * 60)[: n - 1].rstrip("-") + "x")
)
revision_hashes = st.from_regex(r"\A[0-9a-f]{10}\Z")
# Annotation values: any unicode, including what JSON and YAML find awkward.
unicode_text = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200
) | st.sampled_from(["🧊" * 50, "\u202e" + "evil", "a\x00b", "line\nbreak", "' OR 1=1 --", "${x}"])


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and LABEL_VALUE.fullmatch(value) is not None


def spec(name_refs: list[str], annotations: dict[str, str]) -> models.GuardedReleaseSpec:
    return models.GuardedReleaseSpec.model_validate(
        {
            "replicas": 1,
            "template": {
                "metadata": {"labels": {"app": "x"}, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": IMAGE}]},
            },
            "configRefs": [{"kind": "ConfigMap", "name": n} for n in name_refs],
            "service": {"name": "web"},
        }
    )


@SETTINGS
@hypothesis.given(
    release=subdomains,
    revision=revision_hashes,
    refs=st.lists(subdomains, max_size=3, unique=True),
    annotations=st.dictionaries(
        st.sampled_from(["a.example/note", "b.example/owner", "description"]), unicode_text
    ),
)
def test_every_derived_name_and_label_value_is_valid_for_any_release_name(
    release: str, revision: str, refs: list[str], annotations: dict[str, str]
) -> None:
    ref = manifests.ReleaseRef(name=release, namespace="shop", uid="uid-1")
    s = spec(refs, annotations)
    body = manifests.revision_deployment(release=ref, spec=s, revision=revision, replicas=1)
    name = body["metadata"]["name"]
    assert len(name) <= 63
    assert DNS_LABEL.fullmatch(name), name
    assert name.endswith(f"-{revision}")
    for labels in (
        body["metadata"]["labels"],
        body["spec"]["selector"]["matchLabels"],
        body["spec"]["template"]["metadata"]["labels"],
    ):
        assert all(is_label_value(v) for v in labels.values()), labels
    # Unicode annotations reach the revision unchanged, and survive JSON both ways.
    kept = body["spec"]["template"]["metadata"]["annotations"]
    assert {k: kept[k] for k in annotations} == annotations
    assert json.loads(json.dumps(body, ensure_ascii=False)) == body
    # Config snapshot names are DNS-1123 subdomains, distinct per source.
    snapshot_names = {manifests.snapshot_name(r, revision) for r in refs}
    assert len(snapshot_names) == len(refs)
    for snapshot in snapshot_names:
        assert len(snapshot) <= 253
        assert DNS_SUBDOMAIN.fullmatch(snapshot), snapshot
    service = manifests.service(release=ref, spec=s.service, revision=revision)  # type: ignore[arg-type]
    assert all(is_label_value(v) for v in service["metadata"]["labels"].values())
    assert all(is_label_value(v) for v in service["spec"]["selector"].values())
    # The revision hash of a template with unicode annotations is stable and hex.
    digest = hashing.revision_hash(template=s.template, config={})
    assert digest == hashing.revision_hash(template=s.template, config={})
    assert re.fullmatch(r"[0-9a-f]{10}", digest)


@SETTINGS
@hypothesis.given(st.lists(subdomains, min_size=2, max_size=2, unique=True), revision_hashes)
def test_distinct_release_names_never_share_a_revision_name(
    names: list[str], revision: str
) -> None:
    first, second = (manifests.revision_name(n, revision) for n in names)
    assert first != second


# --- documents for `permafrost check` ----------------------------------------------------------

yaml_scalars = st.one_of(st.integers(), st.booleans(), st.none(), unicode_text)
yaml_texts = st.one_of(
    st.text(max_size=400),
    st.recursive(
        st.dictionaries(st.text(max_size=8), yaml_scalars, max_size=4),
        lambda inner: st.dictionaries(st.text(max_size=8), inner | st.lists(inner), max_size=4),
        max_leaves=40,
    ).map(lambda d: json.dumps(d, ensure_ascii=False)),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
)


def load(text: str, source: str) -> tuple[list[documents.Document], str | None]:
    """The documents, or the message of the :class:`InputError` (any other exception escapes)."""
    try:
        return documents.load_all(text, source=source), None
    except documents.InputError as exc:
        return [], str(exc)


@SETTINGS
@hypothesis.given(yaml_texts)
def test_any_text_given_to_check_loads_or_is_refused_with_an_input_error(text: str) -> None:
    loaded, error = load(text, "input.yaml")
    if error is not None:
        assert error.startswith("input.yaml")
    else:
        assert all(isinstance(d.body, dict) for d in loaded)


@SETTINGS
@hypothesis.given(fan_out=st.integers(2, 12), levels=st.integers(2, 12))
def test_a_generated_alias_bomb_is_refused_whatever_its_shape(fan_out: int, levels: int) -> None:
    lines = [f"l0: &l0 [{', '.join(['lol'] * fan_out)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan_out)}]" for i in range(1, levels + 1)]
    text = "\n".join(lines) + "\n"
    leaves = fan_out ** (levels + 1)  # of the last line alone: a lower bound of the expansion
    loaded, error = load(text, "bomb.yaml")
    if error is not None:
        assert "YAML bomb" in error
    else:
        assert leaves <= documents.MAX_NODES
        assert fan_out * levels <= documents.MAX_ALIASES
        assert len(loaded[0].body[f"l{levels}"]) == fan_out


@hypothesis.settings(SETTINGS, max_examples=100 if LONG else 15)  # NB: up to 1s an example
@hypothesis.given(depth=st.integers(1, 3_000), flow=st.booleans())
def test_nesting_at_any_depth_is_loaded_or_refused_as_too_deep(depth: int, flow: bool) -> None:
    if flow:
        text = "a: " + "[" * depth + "]" * depth + "\n"
    else:
        depth = min(depth, 400)  # NB: block nesting is quadratic in text; 400 is well past the cap
        text = "".join(" " * i + f"k{i}:\n" for i in range(depth)) + " " * depth + "v\n"
    _, error = load(text, "deep.yaml")
    if error is not None:
        assert "nested" in error
        assert depth > documents.MAX_DEPTH - 2
    else:
        assert depth <= documents.MAX_DEPTH


# --- CEL that tries to run away ----------------------------------------------------------------

MACROS = ("map", "filter", "all", "exists")


@st.composite
def runaway_rules(draw: st.DrawFn) -> tuple[str, int]:
    """A rule of nested comprehensions over ``object.spec.items``, and its nesting depth."""
    depth = draw(st.integers(1, 6))
    body = "true"
    for level in reversed(range(depth)):
        macro = draw(st.sampled_from(MACROS))
        var = f"v{level}"
        if macro in ("all", "exists"):
            body = f"object.spec.items.{macro}({var}, {body})"
        elif macro == "filter":
            body = f"size(object.spec.items.filter({var}, {body})) >= 0"
        else:
            body = f"size(object.spec.items.map({var}, {body})) >= 0"
    return body, depth


@SETTINGS
@hypothesis.given(rule=runaway_rules(), items=st.integers(0, 60))
def test_a_comprehension_bomb_is_never_run_past_the_cost_budget(
    rule: tuple[str, int], items: int
) -> None:
    expression, depth = rule
    compiled = policy.compile_policy(
        "p",
        models.GuardrailPolicySpec.model_validate(
            {"stages": ["create"], "rules": [{"name": "r", "expression": expression}]}
        ),
    )
    obj: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x", "namespace": "shop"},
        "spec": {"items": list(range(items))},
    }
    verdict = policy.evaluate(
        [compiled],
        stage="create",
        subject=policy.Subject(object=obj, namespace=None),
        now=NOW,
    )
    [result] = verdict.results
    if items**depth > policy.DEFAULT_BUDGET:
        assert result.outcome == "Error", f"{items}**{depth} steps were run"
        assert "cost budget" in result.message
        assert not verdict.allowed
    else:
        assert result.outcome in ("Pass", "Fail", "Error")


@pytest.mark.parametrize(
    "text",
    [
        # An anchor in one branch, its alias in a later one (this raised a KeyError: a node
        # shared by two parents was summed before it was measured).
        "spec:\n  a:\n    - {image: &img 'r.example/a:1'}\n  b:\n    - {image: *img}\n",
        "defaults: &d {cpu: 1}\nx: [*d, {y: *d}]\nz: {w: *d}\n",
        "a: &a [1]\nb: {c: [*a, *a], d: *a}\n",
    ],
)
def test_ordinary_anchors_and_aliases_load(text: str) -> None:
    loaded, error = load(text, "anchors.yaml")
    assert error is None
    assert loaded
    assert isinstance(loaded[0].body, dict)
