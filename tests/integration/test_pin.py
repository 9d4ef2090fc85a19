"""``permafrost pin`` against a real OCI registry (distribution, on loopback) holding images
pushed with crane: tags resolved to the digests the registry serves, the text kept, a tag
moved to other content, a digest that does not exist, an index without the wanted platform.

No cluster: the registry and crane are the binaries the real node uses (hack/build-binaries.sh
builds them with it); the tests skip, saying so, where they have not been built.
"""

from __future__ import annotations

import io
import pathlib
import socket
import subprocess
import sys
import tarfile
import urllib.request
from collections.abc import Iterator

import pytest

from k8s_harness import _versions, cache_root, wait_for

V = _versions()
REGISTRY = cache_root() / f"registry-{V['REGISTRY_VERSION']}" / "bin" / "registry"
CRANE = cache_root() / f"crane-{V['CRANE_VERSION']}" / "bin" / "crane"


@pytest.fixture(scope="module")
def registry_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A registry on a free loopback port, its storage in a temporary directory."""
    missing = [str(p) for p in (REGISTRY, CRANE) if not p.exists()]
    if missing:
        pytest.skip(
            f"needs the registry and crane binaries (built with the real node by "
            f"hack/build-binaries.sh): {', '.join(missing)} not found"
        )
    home = tmp_path_factory.mktemp("registry")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = home / "config.yml"
    config.write_text(
        "version: 0.1\nlog: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {home / 'store'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    log = (home / "registry.log").open("w")
    proc = subprocess.Popen(
        [str(REGISTRY), "serve", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={"OTEL_TRACES_EXPORTER": "none", "PATH": "/usr/bin:/bin"},
    )
    host = f"127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://{host}/v2/", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    try:
        wait_for(answers, timeout=20, interval=0.2, what="the registry to answer")
        yield host
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def crane(*args: str) -> str:
    out = subprocess.run(
        [str(CRANE), *args, "--insecure"], capture_output=True, text=True, check=True, timeout=60
    )
    return out.stdout.strip()


def push(ref: str, content: bytes, *, platform: str | None = None) -> str:
    """An image of one layer holding ``content``, pushed as ``ref``; its digest."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("content")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    path = pathlib.Path(f"/tmp/permafrost-pin-{abs(hash(content))}.tar")
    path.write_bytes(layer.getvalue())
    try:
        crane("append", "-f", str(path), "-t", ref)
    finally:
        path.unlink()
    if platform:
        crane("mutate", "--set-platform", platform, ref, "-t", ref)
    return crane("digest", ref)


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
