"""The ``permafrost`` command line: the operator itself and tools for people.

Each subcommand is a thin shell: it parses arguments, calls into the package, and turns the
outcome into an exit code. Exit codes: 0 success, 1 the action failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import permafrost


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="permafrost",
        description=(
            "Permafrost makes workload rollouts immutable and guarded: every change is a new "
            "revision that takes traffic only once it is proven healthy."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"permafrost {permafrost.__version__}"
    )
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return 0
