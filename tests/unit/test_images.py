"""Image references and pinning them in manifests' text (permafrost.artifacts.images): pure."""

from __future__ import annotations

import pytest

from permafrost.artifacts import images
from permafrost.policies import documents

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("nginx", "docker.io", "library/nginx", None, None),
        ("nginx:1.27", "docker.io", "library/nginx", "1.27", None),
        ("bitnami/redis:7", "docker.io", "bitnami/redis", "7", None),
        ("ghcr.io/org/app:v1", "ghcr.io", "org/app", "v1", None),
        ("localhost/app", "localhost", "app", None, None),
        ("127.0.0.1:5000/shop/app:v2", "127.0.0.1:5000", "shop/app", "v2", None),
        (f"ghcr.io/org/app:v1@{D}", "ghcr.io", "org/app", "v1", D),
        (f"ghcr.io/org/app@{D}", "ghcr.io", "org/app", None, D),
        ("[::1]:5000/app:x", "[::1]:5000", "app", "x", None),
        ("registry.example/a/b/c:1.0-rc_1", "registry.example", "a/b/c", "1.0-rc_1", None),
    ],
)
def test_references_are_normalised_as_the_runtimes_do(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = images.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert ref.text == text


def test_docker_hub_is_reached_at_its_api_host() -> None:
    assert images.parse("nginx").api_host == "registry-1.docker.io"
    assert images.parse("ghcr.io/a/b").api_host == "ghcr.io"


@pytest.mark.parametrize(
    "text",
    [
        "",
        " nginx",
        "Nginx:1",  # upper case repository
        "nginx:",  # empty tag
        "nginx@sha256:abc",  # short digest
        "nginx@md5:" + "a" * 32,
        "${IMAGE}",  # a template placeholder, not an image
        "ghcr.io/org/app:v1:v2",
        "exa_mple.com/app:1",  # an underscore in a host
    ],
)
def test_what_is_not_a_reference_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(images.InvalidReference, match=r"\S"):
        images.parse(text)


def test_a_digest_is_appended_and_the_tag_kept() -> None:
    assert images.parse("nginx:1.27").with_digest(D) == f"nginx:1.27@{D}"
    assert images.parse("nginx").with_digest(D) == f"nginx@{D}"
    with pytest.raises(images.InvalidReference):
        images.parse("nginx").with_digest("latest")


MANIFEST = f"""\
# The shop, as Git has it.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop  # image: not-this
spec:
  template:
    spec:
      initContainers:
        - name: migrate
          image: "registry.example/shop/migrate:v3"   # quoted
      containers:
        - name: app
          image: registry.example/shop/app:v2
        - name: sidecar
          image: 'registry.example/shop/proxy:1.0'
        - name: pinned
          image: registry.example/shop/app:v1@{D}
      volumes:
        - name: image
          configMap: {{name: image}}
---
apiVersion: batch/v1
kind: CronJob
metadata: {{name: nightly}}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers: [{{name: job, image: registry.example/shop/job:v1}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: notes}}
data:
  image: registry.example/not/an:image
"""


def test_every_container_image_is_found_and_nothing_else() -> None:
    fields = images.locate(MANIFEST, source="shop.yaml")
    assert [f.value for f in fields] == [
        "registry.example/shop/migrate:v3",
        "registry.example/shop/app:v2",
        "registry.example/shop/proxy:1.0",
        f"registry.example/shop/app:v1@{D}",
        "registry.example/shop/job:v1",
    ]
    assert [f.line for f in fields] == [11, 14, 16, 18, 31]
    assert [f.style for f in fields][:3] == ['"', None, "'"]


def test_rewriting_changes_only_the_resolved_values_in_their_own_quoting() -> None:
    fields = images.locate(MANIFEST, source="shop.yaml")
    e = "sha256:" + "e" * 64
    pinned = {
        "registry.example/shop/migrate:v3": f"registry.example/shop/migrate:v3@{e}",
        "registry.example/shop/proxy:1.0": f"registry.example/shop/proxy:1.0@{e}",
        "registry.example/shop/job:v1": f"registry.example/shop/job:v1@{e}",
    }
    out = images.rewrite(MANIFEST, fields, pinned)
    assert f'image: "registry.example/shop/migrate:v3@{e}"   # quoted' in out
    assert f"image: 'registry.example/shop/proxy:1.0@{e}'" in out
    assert f"image: registry.example/shop/job:v1@{e}}}]" in out
    assert "image: registry.example/shop/app:v2\n" in out  # not resolved: left alone
    # Everything else, comments and the ConfigMap's "image" key included, is unchanged.
    assert out.replace(f"@{e}", "") == MANIFEST
    again = images.locate(out, source="shop.yaml")
    assert {f.value for f in again} >= set(pinned.values())


def test_an_anchor_used_twice_is_one_field() -> None:
    text = (
        "spec:\n  containers:\n    - {name: a, image: &img 'r.example/a:1'}\n"
        "  initContainers:\n    - {name: b, image: *img}\n"
    )
    assert [f.value for f in images.locate(text, source="t")] == ["r.example/a:1"]


def test_block_scalars_and_bombs_are_unusable_input() -> None:
    block = "spec:\n  containers:\n    - name: a\n      image: >\n        r.example/a:1\n"
    with pytest.raises(documents.InputError, match="block scalar"):
        images.locate(block, source="t")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    with pytest.raises(documents.InputError, match="YAML"):
        images.locate(bomb, source="t")
    deep = "x: " + "[" * 150 + "]" * 150 + "\n"
    with pytest.raises(documents.InputError):
        images.locate(deep, source="t")
