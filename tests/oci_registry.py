"""A real OCI registry (distribution) on a loopback port, and crane to push images to it: for
the tests of ``permafrost pin`` and of the operator's registry check (no cluster needed).

The launcher is shared with the benchmarks (``bench/oci_registry.py``); this wrapper only makes
the calling test skip, saying so, where the binaries have not been built.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator

import pytest
from bench import oci_registry
from bench.oci_registry import CRANE, REGISTRY, build, crane, push, push_tarball

__all__ = ["CRANE", "REGISTRY", "build", "crane", "push", "push_tarball", "serve"]


@contextlib.contextmanager
def serve(home: pathlib.Path, *, htpasswd: str | None = None) -> Iterator[str]:
    """:func:`bench.oci_registry.serve`: a registry on a free loopback port, its storage under
    ``home``; yields HOST:PORT. Skips the calling test where the binaries have not been
    built."""
    reason = oci_registry.missing()
    if reason is not None:
        pytest.skip(reason)
    with oci_registry.serve(home, htpasswd=htpasswd) as host:
        yield host
