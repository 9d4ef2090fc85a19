"""The command line's contract: help, version, exit codes."""

from __future__ import annotations

import logging

import pytest

import permafrost
from permafrost import cli


def test_help_lists_the_program_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert "usage: permafrost" in capsys.readouterr().out


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert permafrost.__version__ in capsys.readouterr().out


def test_no_command_prints_help_and_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: permafrost" in capsys.readouterr().err


@pytest.mark.parametrize("verbose", [False, True])
def test_run_logs_served_admission_reviews_only_when_verbose(verbose: bool) -> None:
    access = logging.getLogger("aiohttp.access")
    before = access.level
    try:
        cli._configure_logging(verbose=verbose)
        assert access.isEnabledFor(logging.INFO) is verbose
        assert logging.getLogger("permafrost").isEnabledFor(logging.INFO)
    finally:
        access.setLevel(before)
