"""Every command the project shows or runs to install CRDs waits for them as docs/install.md does.

`kubectl wait --for=condition=Established` alone fails at once on a CRD just created, whose
``.status.conditions`` is still null (tests/integration/test_crd_wait.py shows it on the real
apiserver); the project's wait is two commands, the first until the conditions exist:

    kubectl wait --for=jsonpath='{.status.conditions[0]}' --timeout=60s crd/...
    kubectl wait --for=condition=Established --timeout=60s crd/...
"""

from __future__ import annotations

import pathlib
import re
import shlex

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONDITIONS_EXIST = "--for=jsonpath={.status.conditions[0]}"  # as the shell passes it on
ESTABLISHED = "--for=condition=Established"
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
SCRIPTS = sorted((ROOT / "hack").glob("*.sh"))
PYTHON = sorted(
    [
        *(ROOT / "operator" / "permafrost").rglob("*.py"),
        *(ROOT / "bench").rglob("*.py"),
        *(ROOT / "hack").glob("*.py"),
        *(ROOT / "tests" / "integration").glob("*.py"),
    ]
)
# NB: the one place that waits with the condition alone on purpose: to show that it fails.
SHOWS_THE_FAILURE = ROOT / "tests" / "integration" / "test_crd_wait.py"


def shell_lines(text: str) -> list[str]:
    """The shell command lines of a script, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = (re.sub(r"(^|\s)#.*$", "", line).strip() for line in joined.splitlines())
    return [line for line in lines if line]


def markdown_commands(text: str) -> list[str]:
    """The commands in a Markdown file's code blocks (not YAML or JSON); in a transcript (lines
    starting with ``$``), only the lines after the prompt."""
    commands: list[str] = []
    block: list[str] | None = None
    language = ""
    for line in text.splitlines():
        if line.startswith("```"):
            if block is None:
                block, language = [], line[3:].strip()
                continue
            if language not in ("yaml", "json"):
                lines = shell_lines("\n".join(block) + "\n")
                prompted = [line[2:] for line in lines if line.startswith("$ ")]
                commands += prompted if any(x.startswith("$ ") for x in block) else lines
            block = None
        elif block is not None:
            block.append(line)
    return commands


def kubectl(command: str) -> list[str]:
    """The words of a ``kubectl`` command (up to a pipe or redirection), else ``[]``."""
    try:
        words = shlex.split(command)
    except ValueError:
        return []
    if not words or words[0] != "kubectl":
        return []
    for i, word in enumerate(words):
        if word in ("|", "&&", "||", ";") or word.startswith((">", "2>")):
            return words[:i]
    return words


def crds(words: list[str]) -> list[str]:
    return [word for word in words if word.startswith("crd/")]


def installs_crds(words: list[str]) -> bool:
    return "apply" in words and any("crds/" in word for word in words)


def problems(commands: list[str]) -> list[str]:
    """What is wrong with how these commands, in order, wait for CRDs."""
    found = []
    waits = [kubectl(command) for command in commands]
    for i, words in enumerate(waits):
        if ESTABLISHED in words:
            before = waits[i - 1] if i else []
            if CONDITIONS_EXIST not in before or crds(before) != crds(words):
                found.append(f"{commands[i]!r} is not right after the wait until conditions exist")
        if installs_crds(words):
            after = [*waits[i + 1 : i + 3], [], []][:2]
            if CONDITIONS_EXIST not in after[0] or ESTABLISHED not in after[1]:
                found.append(f"{commands[i]!r} is not followed by the two waits")
    return found


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_docs_wait_for_crds_they_install(path: pathlib.Path) -> None:
    assert problems(markdown_commands(path.read_text())) == []


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_scripts_wait_for_crds_they_install(path: pathlib.Path) -> None:
    assert problems(shell_lines(path.read_text())) == []


@pytest.mark.parametrize("path", PYTHON, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_python_never_waits_for_the_condition_alone(path: pathlib.Path) -> None:
    text = path.read_text()
    if path == SHOWS_THE_FAILURE or ESTABLISHED not in text:
        return
    assert CONDITIONS_EXIST in text, f"{path.name} waits for {ESTABLISHED} alone"


def test_the_docs_and_the_demo_do_install_and_wait() -> None:
    """The checks above check something: the install guide and the demo are found to install the
    CRDs and to wait for them."""
    for commands in (
        markdown_commands((ROOT / "docs" / "install.md").read_text()),
        shell_lines((ROOT / "hack" / "demo.sh").read_text()),
    ):
        words = [kubectl(command) for command in commands]
        assert any(installs_crds(w) for w in words)
        assert any(CONDITIONS_EXIST in w for w in words)
        assert any(ESTABLISHED in w for w in words)


@pytest.mark.parametrize(
    ("commands", "wrong"),
    [
        (["kubectl apply -k crds/", "kubectl wait --for=condition=Established crd/a"], 2),
        (["kubectl apply -k crds/", "kubectl apply -k deploy/"], 1),
        (
            [
                "kubectl wait --for=jsonpath='{.status.conditions[0]}' crd/a",
                "kubectl wait --for=condition=Established crd/a crd/b",
            ],
            1,
        ),
        (
            [
                "kubectl apply -k crds/",
                "kubectl wait --for=jsonpath='{.status.conditions[0]}' --timeout=60s crd/a crd/b",
                "kubectl wait --for=condition=Established --timeout=60s crd/a crd/b >/dev/null",
            ],
            0,
        ),
    ],
)
def test_what_the_checks_catch(commands: list[str], wrong: int) -> None:
    assert len(problems(commands)) == wrong
