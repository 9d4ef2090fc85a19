"""The Argo CD harness's pure parts: where it cannot run it says why in one line, and the Git
repository it serves Argo CD from commits, deletes and reverts as Argo CD will read it."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

import argocd_harness
from argocd_harness import AppState, GitRepo, binaries


def test_without_the_built_argocd_the_reason_says_what_to_run(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(argocd_harness, "cache_root", lambda: tmp_path)
    reason = binaries()
    assert isinstance(reason, str)
    assert reason.startswith("Argo CD v")
    assert "make binaries" in reason
    assert "\n" not in reason


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_repository_serves_each_commit_and_the_revert(tmp_path: pathlib.Path) -> None:
    repo = GitRepo(tmp_path, "git")
    first = repo.commit("v1", {"app/a.yaml": "a: 1\n", "app/b.yaml": "b: 1\n"})
    second = repo.commit("v2", {"app/a.yaml": "a: 2\n", "app/b.yaml": None})
    reverted = repo.revert(second)
    assert len({first, second, reverted}) == 3
    assert repo.url.startswith("file://")

    def show(rev: str, path: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo.bare), "show", f"{rev}:{path}"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip

    assert show("main", "app/a.yaml") == "a: 1\n"
    assert show("main", "app/b.yaml") == "b: 1\n"
    assert show(second, "app/a.yaml") == "a: 2\n"
    assert show(second, "app/b.yaml") == ""


def test_the_application_state_reads_what_the_controller_writes() -> None:
    state = AppState.of(
        {
            "status": {
                "sync": {"status": "Synced", "revision": "abc"},
                "health": {"status": "Degraded", "message": "Caused by x"},
                "operationState": {"phase": "Succeeded"},
                "history": [{"id": 0}, {"id": 1}],
                "resources": [
                    {
                        "kind": "GuardedRelease",
                        "name": "checkout",
                        "status": "Synced",
                        "health": {"status": "Degraded", "message": "Rolled back (CrashLoop): r"},
                    }
                ],
            }
        }
    )
    assert (state.sync, state.revision, state.health, state.operation, state.syncs) == (
        "Synced", "abc", "Degraded", "Succeeded", 2,
    )  # fmt: skip
    assert state.health_of("GuardedRelease", "checkout") == (
        "Degraded",
        "Rolled back (CrashLoop): r",
    )
    assert state.health_of("GuardedRelease", "other") == ("", "")
    assert AppState.of({}).syncs == 0
