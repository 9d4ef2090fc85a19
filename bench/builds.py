"""Where the project's binaries are built to, and which versions: shared by the benchmarks and
the tests (``hack/versions.env`` pins them; ``hack/build-binaries.sh`` caches them outside the
repository)."""

from __future__ import annotations

import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def versions() -> dict[str, str]:
    """The pinned versions of ``hack/versions.env`` (``NAME=VALUE`` lines, comments skipped)."""
    pairs = {}
    for line in (ROOT / "hack" / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def cache_root() -> pathlib.Path:
    """The cache of built binaries: ``$XDG_CACHE_HOME/permafrost`` (default ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
    return pathlib.Path(base) / "permafrost"
