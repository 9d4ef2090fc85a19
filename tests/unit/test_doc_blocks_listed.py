"""The docs' shell blocks: each one run by the tests or listed with the reason it is not, one
command to install the CRDs, and one install order (CRDs, then policies, then the operator)."""

from __future__ import annotations

import pathlib
import shlex

import pytest

from doc_blocks import DOCS, INSTALL, NOT_RUN, ROOT, RUN, Block, all_blocks, blocks
from permafrost import cli, kube

BLOCKS = all_blocks()
POLICIES = "kubectl apply -f deploy/policies/"


def test_every_shell_block_is_run_or_listed_with_why_it_is_not() -> None:
    keys = [b.key for b in BLOCKS]
    assert len(keys) == len(set(keys))
    unlisted = [f"{b.path.name}:{b.line} {b.key}" for b in BLOCKS if b.key not in (*RUN, *NOT_RUN)]
    assert unlisted == [], (
        "run it in tests/integration/test_doc_commands.py, or say in NOT_RUN why it cannot run"
    )
    assert [k for k in (*RUN, *NOT_RUN) if k not in keys] == [], "listed, but no such block"
    assert not set(RUN) & set(NOT_RUN)
    assert all(reason.strip() for reason in NOT_RUN.values())


def test_the_lists_catch_a_new_block(tmp_path: pathlib.Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```sh\n# a comment\nkubectl get \\\n  pods  # trailing\n```\n")
    (block,) = blocks(page)
    assert block.commands == ("kubectl get pods",)
    transcript = tmp_path / "t.md"
    transcript.write_text("```\n$ permafrost status -A\nNAME ...\n```\n```\nA diagram\n```\n")
    assert [b.commands for b in blocks(transcript)] == [("permafrost status -A",)]


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:  # a transcript's line that is not a whole command
        return []


def _installs_crds(command: str) -> bool:
    words = _words(command)
    return words[:2] == ["kubectl", "apply"] and any("crds" in w for w in words)


def test_the_crds_are_installed_by_one_command_everywhere() -> None:
    found = [c for b in BLOCKS for c in b.commands if _installs_crds(c)]
    assert len(found) >= 4
    assert set(found) == {INSTALL}
    _, hint, _ = cli._explain(kube.ApiProblem(kube.ApiProblem.NOT_INSTALLED, "x"))
    assert INSTALL in hint


def _step(command: str) -> str | None:
    if command == INSTALL:
        return "crds"
    if command == POLICIES:
        return "policies"
    if command.startswith("kubectl apply --server-side -k deploy/") or (
        command.startswith("permafrost run") and "--help" not in command
    ):
        return "operator"
    return None


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_page_installs_in_one_order(path: pathlib.Path) -> None:
    """The CRDs before the policies, the policies before the operator, on every page."""
    steps = [s for b in blocks(path) for c in b.commands if (s := _step(c)) is not None]
    if "policies" in steps:
        assert "crds" in steps[: steps.index("policies")], "the policies before their CRD"
        if "operator" in steps:
            assert steps.index("policies") < steps.index("operator")


def _paths(block: Block) -> list[str]:
    """The repository files a block's kubectl/permafrost commands name (-f, -k, inputs)."""
    named = []
    for command in block.commands:
        words = _words(command)
        if not words or words[0] not in ("kubectl", "permafrost"):
            continue
        checked = words[:2] == ["permafrost", "check"]
        for i, word in enumerate(words[1:], start=1):
            option = words[i - 1] in ("-f", "-k", "--patch-file", "-p") and word != "-"
            if option or (checked and word.endswith((".yaml", ".yml"))):
                named.append(word)
    return named


def test_the_files_the_run_blocks_name_exist() -> None:
    run = [b for b in BLOCKS if b.key in RUN]
    named = [p for b in run for p in _paths(b)]
    assert "examples/checkout.yaml" in named
    assert [p for p in named if not (ROOT / p).exists()] == []
