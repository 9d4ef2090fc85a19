"""Runs Permafrost's Argo CD health check (``deploy/argocd/guardedrelease-health.lua``) on an
object, in a real Lua 5.1 runtime (the version of gopher-lua, which Argo CD embeds).

Argo CD hands the script the object as the global ``obj`` (JSON converted to Lua tables: arrays
1-indexed, numbers as numbers) and reads ``status`` and ``message`` of the table it returns.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import lupa.lua51 as lua

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "argocd" / "guardedrelease-health.lua"
FIXTURES = ROOT / "tests" / "fixtures" / "argocd"
STATUSES = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")


def _table(runtime: Any, value: Any) -> Any:
    if isinstance(value, Mapping):
        return runtime.table_from({k: _table(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_table(runtime, v) for v in value])
    return value


def health(obj: Mapping[str, Any], *, script: str | None = None) -> tuple[str, str]:
    """(status, message) of the health check on ``obj``; raises ``lupa.LuaError`` if it fails."""
    runtime = lua.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = _table(runtime, obj)
    hs = runtime.execute(script if script is not None else SCRIPT.read_text())
    status, message = hs["status"], hs["message"]
    if status not in STATUSES:
        raise AssertionError(f"the health check returned {status!r}, not an Argo CD health status")
    return str(status), str(message) if message is not None else ""
