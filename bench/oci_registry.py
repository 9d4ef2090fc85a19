"""A real OCI registry (distribution) on a loopback port, and crane to push images to it.

Shared by the benchmarks (``bench/verification.py``) and the tests (``tests/oci_registry.py``,
a thin pytest wrapper that skips where the binaries are missing): nothing here imports pytest.
The binaries are the real node's (``hack/build-binaries.sh`` builds them with it, into the
cache); :func:`serve` raises :class:`Missing`, saying which, where they have not been built.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from bench import builds

V = builds.versions()
REGISTRY = builds.cache_root() / f"registry-{V['REGISTRY_VERSION']}" / "bin" / "registry"
CRANE = builds.cache_root() / f"crane-{V['CRANE_VERSION']}" / "bin" / "crane"


class Missing(RuntimeError):
    """The registry or crane binary has not been built; the message says which."""


def missing() -> str | None:
    """Why :func:`serve` cannot run here (None: it can)."""
    absent = [str(p) for p in (REGISTRY, CRANE) if not p.exists()]
    if not absent:
        return None
    return (
        f"needs the registry and crane binaries (built with the real node by "
        f"hack/build-binaries.sh): {', '.join(absent)} not found"
    )


@contextlib.contextmanager
def serve(home: pathlib.Path, *, htpasswd: str | None = None) -> Iterator[str]:
    """A registry on a free loopback port, its storage under ``home``; yields HOST:PORT.
    With ``htpasswd`` (lines ``user:bcrypt-hash``), every request needs one of those users
    (HTTP basic, as distribution's htpasswd auth serves it). Raises :class:`Missing` where the
    binaries have not been built, ``TimeoutError`` if the registry does not answer in 20 s."""
    reason = missing()
    if reason is not None:
        raise Missing(reason)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = home / "config.yml"
    auth = ""
    if htpasswd is not None:
        (home / "htpasswd").write_text(htpasswd)
        auth = f"auth: {{htpasswd: {{realm: test, path: {home / 'htpasswd'}}}}}\n"
    config.write_text(
        "version: 0.1\nlog: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {home / 'store'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n" + auth
    )
    log = (home / "registry.log").open("w")
    proc = subprocess.Popen(
        [str(REGISTRY), "serve", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={"OTEL_TRACES_EXPORTER": "none", "PATH": "/usr/bin:/bin"},
    )
    host = f"127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://{host}/v2/", timeout=1) as r:
                return bool(r.status == 200)
        except urllib.error.HTTPError as exc:
            # NB: one that asks for credentials answers too.
            return exc.code == 401 and htpasswd is not None
        except OSError:
            return False

    try:
        deadline = time.monotonic() + 20
        while not answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(
                    f"the registry did not answer on {host} (see {home / 'registry.log'})"
                )
            time.sleep(0.2)
        yield host
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def crane(*args: str) -> str:
    out = subprocess.run(
        [str(CRANE), *args, "--insecure"], capture_output=True, text=True, check=True, timeout=60
    )
    return out.stdout.strip()


def _append(ref: str, content: bytes, *more: str) -> None:
    """``crane append`` of one layer holding ``content`` onto an empty image, as ``ref``."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("content")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    with tempfile.NamedTemporaryFile(suffix=".tar") as path:
        path.write(layer.getvalue())
        path.flush()
        crane("append", "-f", path.name, "-t", ref, *more)


def push(ref: str, content: bytes, *, platform: str | None = None) -> str:
    """An image of one layer holding ``content``, pushed as ``ref``; its digest."""
    _append(ref, content)
    if platform:
        crane("mutate", "--set-platform", platform, ref, "-t", ref)
    return crane("digest", ref)


def build(ref: str, content: bytes, *, into: pathlib.Path) -> str:
    """An image of one layer holding ``content``, written to the tarball ``into`` (not pushed:
    see :func:`push_tarball`); its digest once pushed as ``ref``."""
    _append(ref, content, "-o", str(into))
    return crane("digest", "--tarball", str(into))


def push_tarball(tarball: pathlib.Path, ref: str) -> str:
    crane("push", str(tarball), ref)
    return crane("digest", ref)
