"""``permafrost pin`` against a real OCI registry (distribution, on loopback) holding images
pushed with crane: tags resolved to the digests the registry serves, the text kept, a tag
moved to other content, a digest that does not exist, an index without the wanted platform.

No cluster: the registry and crane are the binaries the real node uses (hack/build-binaries.sh
builds them with it); the tests skip, saying so, where they have not been built.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

from oci_registry import crane, push


def pin(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "permafrost", "pin", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def manifest(*images: str) -> str:
    containers = "".join(
        f"        - name: c{i}\n          image: {image}  # container {i}\n"
        for i, image in enumerate(images)
    )
    return (
        "# the shop\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: shop}\nspec:\n"
        "  template:\n    spec:\n      containers:\n" + containers
    )


def test_tags_are_resolved_to_the_registrys_digests_and_the_text_is_kept(
    registry_host: str, tmp_path: pathlib.Path
) -> None:
    app, proxy = f"{registry_host}/shop/app:v1", f"{registry_host}/shop/proxy:1.0"
    app_digest, proxy_digest = push(app, b"app v1"), push(proxy, b"proxy 1.0")
    text = manifest(app, f'"{proxy}"')
    printed = pin("-", stdin=text)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == text.replace(app, f"{app}@{app_digest}").replace(
        proxy, f"{proxy}@{proxy_digest}"
    )
    assert f"{app} -> {app_digest}" in printed.stderr
    # --write rewrites the file; a second run finds both pinned, checks they exist, changes
    # nothing.
    path = tmp_path / "shop.yaml"
    path.write_text(text)
    assert pin(str(path), "--write").returncode == 0
    assert path.read_text() == printed.stdout
    again = pin(str(path), "--write")
    assert again.returncode == 0, again.stderr
    assert "0 pinned, 2 already pinned" in again.stderr
    assert path.read_text() == printed.stdout


def test_a_tag_moved_to_other_content_the_pinned_digest_still_names_the_old(
    registry_host: str, tmp_path: pathlib.Path
) -> None:
    ref = f"{registry_host}/shop/moving:stable"
    first = push(ref, b"first build")
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(manifest(ref))
    assert pin(str(pinned), "--write").returncode == 0
    assert f"{ref}@{first}" in pinned.read_text()
    second = push(ref, b"second build, same tag")
    assert second != first
    # The pinned manifest still names the first build, which still exists.
    kept = pin(str(pinned))
    assert kept.returncode == 0, kept.stderr
    assert f"{ref}@{first}" in kept.stdout
    assert "already pinned" in kept.stderr
    # Pinned afresh, the tag resolves to the second build.
    fresh = pin("-", stdin=manifest(ref))
    assert fresh.returncode == 0, fresh.stderr
    assert f"{ref}@{second}" in fresh.stdout


def test_what_the_registry_does_not_hold_fails_and_nothing_is_written(
    registry_host: str, tmp_path: pathlib.Path
) -> None:
    good = f"{registry_host}/shop/app:v1"
    push(good, b"app v1")
    missing_tag = f"{registry_host}/shop/app:v404"
    missing_digest = f"{registry_host}/shop/app@sha256:{'0' * 64}"
    path = tmp_path / "shop.yaml"
    text = manifest(good, missing_tag, missing_digest)
    path.write_text(text)
    result = pin(str(path), "--write")
    assert result.returncode == 1
    assert f"{missing_tag}: the registry has no such image" in result.stderr
    assert f"{missing_digest}: the registry has no such image" in result.stderr
    assert "2 of 3 images not resolved; nothing written" in result.stderr
    assert path.read_text() == text
    # Unreachable: said per image, exit 1; unusable input: exit 2.
    closed = pin("-", stdin=manifest("127.0.0.1:9/shop/app:v1"))
    assert closed.returncode == 1
    assert "127.0.0.1:9 is unreachable" in closed.stderr
    bad = pin("-", stdin=manifest("${IMAGE}"))
    assert bad.returncode == 2
    assert "stdin:10:" in bad.stderr
    assert "not a repository name" in bad.stderr


def test_a_multi_platform_index_must_hold_the_wanted_platform(registry_host: str) -> None:
    amd = f"{registry_host}/shop/multi:amd64"
    push(amd, b"amd64 build", platform="linux/amd64")
    index = f"{registry_host}/shop/multi:v1"
    crane("index", "append", "-m", amd, "-t", index)
    digest = crane("digest", index)
    ok = pin("-", "--platform", "linux/amd64", stdin=manifest(index))
    assert ok.returncode == 0, ok.stderr
    assert f"{index}@{digest}" in ok.stdout
    arm = pin("-", "--platform", "linux/arm64", stdin=manifest(index))
    assert arm.returncode == 1
    assert "no image for linux/arm64 in its index (it has linux/amd64)" in arm.stderr
