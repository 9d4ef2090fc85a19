"""Runs Permafrost's Argo CD health check (``deploy/argocd/guardedrelease-health.lua``) on an
object, in a real Lua 5.1 runtime (the version of gopher-lua, which Argo CD embeds) with exactly
the libraries Argo CD opens for it.

Argo CD (``util/lua/lua.go``, v3.6) creates its Lua state with ``SkipOpenLibs: !UseOpenLibs``
and then opens ``package``, the base library and ``table``, and its "safe" ``os`` (only
``time`` and ``date``) — which ``OpenSafeOs`` registers under the table library's name, already
taken, so gopher-lua (v1.1.2, ``RegisterModule``) adds nothing: the sandbox has no ``os`` global,
only ``require("os")`` loads the preloaded safe module. Everything else — ``string``
(and the string metatable, so ``s:gmatch`` fails as well), ``math``, ``io``, ``debug``,
``coroutine`` — is absent unless ``argocd-cm`` sets
``resource.customizations.useOpenLibs.<group>_<kind>: "true"``, which opens every library first.

Argo CD hands the script the object as the global ``obj`` (JSON converted to Lua tables: arrays
1-indexed, numbers as numbers) and reads ``status`` and ``message`` of the table it returns.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import lupa.lua51 as lua
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "argocd" / "guardedrelease-health.lua"
PATCH = ROOT / "deploy" / "argocd" / "argocd-cm-health.yaml"
FIXTURES = ROOT / "tests" / "fixtures" / "argocd"
STATUSES = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")
GROUP_KIND = "permafrost.dev_GuardedRelease"
HEALTH_KEY = f"resource.customizations.health.{GROUP_KIND}"
OPEN_LIBS_KEY = f"resource.customizations.useOpenLibs.{GROUP_KIND}"

# NB: what Argo CD's runLuaWithResourceActionParameters leaves in a state created with
# SkipOpenLibs: the base library's globals (Lua 5.1 spelling), package and table.
_SANDBOX = """
local keep = {}
for name in string.gmatch([[
  _G _VERSION assert collectgarbage dofile error gcinfo getfenv getmetatable ipairs load loadfile
  loadstring module newproxy next pairs pcall print rawequal rawget rawset require select setfenv
  setmetatable tonumber tostring type unpack xpcall package table
]], "%S+") do keep[name] = true end
local safe_os = {time = os.time, date = os.date}
-- the string metatable is set by the string library: without it, ("x"):gmatch fails too
debug.setmetatable("", nil)
for name in pairs(_G) do
  if not keep[name] then _G[name] = nil end
end
for name in pairs(package.loaded) do
  if not keep[name] and name ~= "_G" then package.loaded[name] = nil end
end
package.preload.os = function() return {time = safe_os.time, date = safe_os.date} end
"""


def _table(runtime: Any, value: Any) -> Any:
    if isinstance(value, Mapping):
        return runtime.table_from({k: _table(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_table(runtime, v) for v in value])
    return value


def shipped_open_libs() -> bool:
    """Whether the shipped ``argocd-cm`` patch tells Argo CD to open every library."""
    data = yaml.safe_load(PATCH.read_text())["data"]
    return str(data.get(OPEN_LIBS_KEY, "false")).lower() == "true"


def runtime(*, open_libs: bool) -> Any:
    """A Lua runtime with the globals Argo CD's health checks see (``open_libs``: useOpenLibs)."""
    rt = lua.LuaRuntime(unpack_returned_tuples=True, register_eval=False, register_builtins=False)
    if open_libs:
        # NB: useOpenLibs opens every library (os too, in full); only lupa's own global goes.
        rt.execute("python = nil")
    else:
        rt.execute(_SANDBOX)
    return rt


def health(
    obj: Mapping[str, Any], *, script: str | None = None, open_libs: bool | None = None
) -> tuple[str, str]:
    """(status, message) of the health check on ``obj``; raises ``lupa.LuaError`` if it fails.

    ``open_libs`` defaults to what the shipped ``argocd-cm`` patch configures.
    """
    rt = runtime(open_libs=shipped_open_libs() if open_libs is None else open_libs)
    rt.globals().obj = _table(rt, obj)
    hs = rt.execute(script if script is not None else SCRIPT.read_text())
    status, message = hs["status"], hs["message"]
    if status not in STATUSES:
        raise AssertionError(f"the health check returned {status!r}, not an Argo CD health status")
    return str(status), str(message) if message is not None else ""
