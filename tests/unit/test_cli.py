"""The command line's contract: help, version, exit codes."""

from __future__ import annotations

import argparse
import logging
import pathlib

import pytest

import permafrost
from permafrost import cli, kube


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


# --- every `permafrost run` option from the environment ------------------------------------------


def run_args(argv: list[str], environ: dict[str, str]) -> argparse.Namespace:
    args = cli._build_parser().parse_args(["run", *argv])
    args.environment.apply(args, environ)
    return args


def run_parser() -> argparse.ArgumentParser:
    args = cli._build_parser().parse_args(["run"])
    parser: argparse.ArgumentParser = args.environment.parser
    return parser


def test_every_run_option_is_named_in_help_with_its_environment_variable() -> None:
    parser = run_parser()
    options = [
        a
        for a in parser._actions
        if any(o.startswith("--") for o in a.option_strings) and a.dest != "help"
    ]
    assert len(options) >= 14
    for action in options:
        long = next(o for o in action.option_strings if o.startswith("--"))
        variable = "PERMAFROST_" + long[2:].upper().replace("-", "_")
        assert f"[env {variable}]" in (action.help or ""), long
    assert "PERMAFROST_METRICS_PORT=9090" in parser.format_help()


def test_an_option_added_later_gets_its_environment_variable_too() -> None:
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--log-format", choices=["text", "json"], default="text", help="how")
    cli._settable_from_environment(parser)
    args = parser.parse_args([])
    args.environment.apply(args, {"PERMAFROST_LOG_FORMAT": "json"})
    assert args.log_format == "json"
    assert "[env PERMAFROST_LOG_FORMAT]" in parser.format_help()


def test_environment_sets_typed_values_switches_and_lists() -> None:
    args = run_args(
        [],
        {
            "PERMAFROST_METRICS_PORT": "9090",
            "PERMAFROST_ADMISSION": "true",
            "PERMAFROST_NAMESPACE": "shop, web",
            "PERMAFROST_WEBHOOK_URL": "https://127.0.0.1:9443",
        },
    )
    assert args.metrics_port == 9090
    assert args.admission is True
    assert args.namespace == ["shop", "web"]
    assert args.webhook_url == "https://127.0.0.1:9443"


def test_the_command_line_wins_over_the_environment() -> None:
    args = run_args(
        ["--metrics-port", "8000", "-n", "cli"],
        {"PERMAFROST_METRICS_PORT": "9090", "PERMAFROST_NAMESPACE": "env"},
    )
    assert args.metrics_port == 8000
    assert args.namespace == ["cli"]


def test_a_choice_on_the_command_line_silences_its_exclusive_rival_from_the_environment() -> None:
    args = run_args(
        ["--webhook-service", "permafrost-system/permafrost"],
        {"PERMAFROST_WEBHOOK_URL": "https://127.0.0.1:9443"},
    )
    assert args.webhook_service == "permafrost-system/permafrost"
    assert args.webhook_url is None
    args = run_args(["-A"], {"PERMAFROST_NAMESPACE": "shop"})
    assert args.namespace == []


@pytest.mark.parametrize(
    ("environ", "said"),
    [
        (
            {"PERMAFROST_METRICS_PORT": "ninety"},
            "PERMAFROST_METRICS_PORT='ninety': not a valid PORT",
        ),
        ({"PERMAFROST_ADMISSION": "maybe"}, "PERMAFROST_ADMISSION='maybe': expected true or false"),
        (
            {"PERMAFROST_WEBHOOK_URL": "https://x", "PERMAFROST_WEBHOOK_SERVICE": "a/b"},
            "cannot both be set",
        ),
        ({"PERMAFROST_TLS_DIR": "/tls", "PERMAFROST_TLS_SECRET": "cert"}, "cannot both be set"),
    ],
)
def test_an_unusable_environment_is_a_usage_error(
    environ: dict[str, str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        run_args([], environ)
    assert exc.value.code == 2
    assert said in capsys.readouterr().err


def test_empty_variables_are_ignored() -> None:
    assert run_args([], {"PERMAFROST_METRICS_PORT": ""}).metrics_port is None


# --- usage errors of the commands for people --------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["status", "checkout", "-A"], "drop -A or the NAME"),
        (["status", "--watch", "-o", "json"], "drop -o"),
        (["history"], "the following arguments are required: name"),
        (["status", "-n", "a", "-A"], "not allowed with argument"),
    ],
)
def test_commands_for_people_refuse_contradictions_as_usage_errors(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert said in capsys.readouterr().err


def test_run_help_shows_the_defaults_of_the_operator_namespace_and_the_webhook_url() -> None:
    text = " ".join(run_parser().format_help().split())
    assert "(default: permafrost-system)" in text
    assert "(default: https://localhost:PORT, the port of --webhook-listen)" in text
    assert "--webhook-takeover" in text


def test_a_kubeconfig_that_does_not_exist_is_called_missing_not_invalid(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    problem = kube.ApiProblem(kube.ApiProblem.KUBECONFIG, "Invalid kube-config file.")
    message, hint, code = cli._explain(problem)
    assert message == f"no kubeconfig: {tmp_path / 'missing'} does not exist"
    assert code == 3
    assert hint.startswith("Point KUBECONFIG at your cluster's kubeconfig")
    (tmp_path / "broken").write_text("clusters: [\n")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "broken"))
    message, _, _ = cli._explain(problem)
    assert message == f"no usable kubeconfig ({tmp_path / 'broken'}): Invalid kube-config file"
