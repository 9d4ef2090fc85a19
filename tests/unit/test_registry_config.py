"""The registry adapter's pure parts: Docker config credentials, platforms of an index."""

from __future__ import annotations

import base64
import json
import pathlib

import pytest

from permafrost.artifacts import images, registry


def test_credentials_come_from_auth_or_username_and_docker_hub_is_its_api_host(
    tmp_path: pathlib.Path,
) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {
                        "auth": base64.b64encode(b"hub:s3cret:with:colons").decode()
                    },
                    "ghcr.io": {"username": "me", "password": "tok"},
                    "registry.example:5000": {"auth": ""},
                },
                "credHelpers": {"gcr.io": "gcloud"},
            }
        )
    )
    assert registry.docker_credentials(config) == {
        "registry-1.docker.io": ("hub", "s3cret:with:colons"),
        "ghcr.io": ("me", "tok"),
    }


def test_an_unusable_docker_config_says_why(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "config.json"
    config.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable Docker config"):
        registry.docker_credentials(config)
    config.write_text(json.dumps({"auths": {"r.example": {"auth": "%%%"}}}))
    with pytest.raises(ValueError, match="not base64"):
        registry.docker_credentials(config)


def test_an_index_must_list_the_platform_and_a_single_manifest_is_taken_as_is() -> None:
    index = registry.Manifest(
        digest="sha256:" + "a" * 64,
        media_type=registry.OCI_INDEX,
        platforms=("linux/amd64", "linux/arm/v7"),
    )
    assert registry.has_platform(index, "linux/amd64")
    assert registry.has_platform(index, "linux/arm")
    assert registry.has_platform(index, "linux/arm/v7")
    assert not registry.has_platform(index, "linux/arm/v6")
    assert not registry.has_platform(index, "linux/arm64")
    single = registry.Manifest(digest=index.digest, media_type=registry.OCI_MANIFEST)
    assert registry.has_platform(single, "linux/arm64")


class _Registry:
    """Stands in for the registry client in the cache's tests: answers from a table, counts
    lookups (the client itself is tested against a real registry: test_pin.py and
    test_registry_check.py)."""

    credentials: dict[str, tuple[str, str]] = {}  # noqa: RUF012 (read only)

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers, self.asked = answers, []

    def manifest(self, ref: images.Reference) -> registry.Manifest:
        self.asked.append(ref.text)
        answer = self.answers[ref.text]
        if answer == "ok":
            return registry.Manifest(digest="sha256:" + "b" * 64, media_type=registry.OCI_MANIFEST)
        raise registry.RegistryError(answer, f"{ref.text}: {answer}")


async def test_verdicts_are_cached_by_reference_for_as_long_as_they_can_hold() -> None:
    pinned = "r.example/a@sha256:" + "a" * 64
    tag, missing, down = "r.example/b:1", "r.example/c:1", "r.example/d:1"
    fake = _Registry(
        {pinned: "ok", tag: "ok", missing: registry.NOT_FOUND, down: registry.UNREACHABLE}
    )
    now = [1000.0]
    checker = registry.Checker(client=fake, fail_open=False, clock=lambda: now[0])  # type: ignore[arg-type]
    checks = await checker.check((pinned, tag, missing, down, pinned, "Not/A:Ref"))
    assert [c.outcome for c in checks] == [
        images.OK,
        images.OK,
        images.MISSING,
        images.UNREACHABLE,
        images.INVALID,
    ]
    assert sorted(fake.asked) == sorted([pinned, tag, missing, down])
    # 20 s later: a missing image and an unreachable registry are asked again; found ones not.
    now[0] += 20
    fake.asked.clear()
    await checker.check((pinned, tag, missing, down))
    assert sorted(fake.asked) == sorted([missing, down])
    # 10 minutes later: a tag may have moved, a digest has not.
    now[0] += 600
    fake.asked.clear()
    await checker.check((pinned, tag))
    assert fake.asked == [tag]


async def test_the_verdicts_are_bounded_in_entries_and_bytes() -> None:
    """References are text from the spec, unbounded: the cache drops its oldest verdicts when
    their bytes, not only their number, pass the bound."""
    long = "r.example/" + "x" * 200_000
    wanted = tuple(f"{long}{n}@sha256:{'a' * 64}" for n in range(120))
    fake = _Registry(dict.fromkeys(wanted, "ok"))
    checker = registry.Checker(client=fake, fail_open=False)  # type: ignore[arg-type]
    for image in wanted:
        await checker.check((image,))
    assert checker._cache.bytes <= registry.MAX_VERDICT_BYTES
    assert 8 < len(checker._cache) < len(wanted)
    fake.asked.clear()
    await checker.check((wanted[-1], wanted[0]))
    assert fake.asked == [wanted[0]]  # the newest is kept, the oldest was dropped
