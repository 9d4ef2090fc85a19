"""The registry adapter's pure parts: Docker config credentials, platforms of an index."""

from __future__ import annotations

import base64
import json
import pathlib

import pytest

from permafrost.artifacts import registry


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
