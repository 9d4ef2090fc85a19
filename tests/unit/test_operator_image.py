"""``hack/operator-image.sh pin``: deploy/ references the published image by the digest given,
and by nothing that is not a digest."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "operator-image.sh"
IMAGE = "ghcr.io/permafrost-dev/permafrost"


def pin(kustomization: pathlib.Path, digest: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "pin", digest],
        env={**os.environ, "KUSTOMIZATION": str(kustomization)},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def images(kustomization: pathlib.Path) -> list[dict[str, str]]:
    found: list[dict[str, str]] = yaml.safe_load(kustomization.read_text())["images"]
    return found


def test_pin_replaces_the_tag_by_the_digest_and_a_digest_by_the_next(
    tmp_path: pathlib.Path,
) -> None:
    copy = tmp_path / "kustomization.yaml"
    shutil.copy(ROOT / "deploy" / "kustomization.yaml", copy)
    first, second = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert pin(copy, first).returncode == 0
    assert images(copy) == [{"name": IMAGE, "digest": first}]
    assert pin(copy, second).returncode == 0
    assert images(copy) == [{"name": IMAGE, "digest": second}]
    # Everything else is as it was.
    original = yaml.safe_load((ROOT / "deploy" / "kustomization.yaml").read_text())
    pinned = yaml.safe_load(copy.read_text())
    assert {k: v for k, v in pinned.items() if k != "images"} == {
        k: v for k, v in original.items() if k != "images"
    }


def test_pin_refuses_what_is_not_a_digest_and_changes_nothing(tmp_path: pathlib.Path) -> None:
    copy = tmp_path / "kustomization.yaml"
    shutil.copy(ROOT / "deploy" / "kustomization.yaml", copy)
    before = copy.read_text()
    for wrong in ("0.1.0", "latest", "sha256:" + "a" * 63, "sha256:" + "A" * 64):
        proc = pin(copy, wrong)
        assert proc.returncode != 0
        assert "DIGEST must be sha256:<64 hex>" in proc.stderr
    assert copy.read_text() == before
