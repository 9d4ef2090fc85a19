"""A TCP proxy on loopback that can make a healthy server look slow or dead.

It forwards bytes between clients and a target (here: the local apiserver) and, on request,
- **throttles** what the server sends (a slow network: the first bytes, with the headers, come
  at once, the rest trickles), or
- **black-holes** every connection open at that moment: they stay open and silent forever,
  as after a NAT or load-balancer drop (half-open), and new connections are accepted but
  silent until :meth:`Proxy.heal`. Killing the server resets connections; this does not, which
  is what request timeouts are for.

TLS passes through untouched (the client still talks to the apiserver's certificate).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Self

CHUNK = 16 * 1024


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._dead: set[socket.socket] = set()  # black-holed: never forwarded again
        self._blackhole = False
        self._throttle: tuple[int, float] | None = None  # (bytes at once, seconds between)
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def throttle(self, *, burst: int, every: float) -> None:
        """From now on, forward at most ``burst`` bytes of the server's answer per ``every``
        seconds (the first burst of a connection's answer goes at once)."""
        with self._lock:
            self._throttle = (burst, every)

    def blackhole(self) -> None:
        """Silence every open connection for good, and new ones until :meth:`heal`."""
        with self._lock:
            self._blackhole = True
            self._dead.update(self._sockets)

    def heal(self) -> None:
        """Forward new connections again; the black-holed ones stay silent."""
        with self._lock:
            self._blackhole = False

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
                if self._blackhole:
                    self._dead.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _silenced(self, source: socket.socket) -> bool:
        with self._lock:
            return source in self._dead

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        sent_at_once = 0
        try:
            while True:
                data = source.recv(CHUNK)
                if not data:
                    break
                while self._silenced(source):  # NB: hold the bytes, keep the socket open
                    if self._closed:
                        return
                    time.sleep(0.2)
                throttle = self._throttle if answers else None
                if throttle is None:
                    sink.sendall(data)
                    continue
                burst, every = throttle
                for start in range(0, len(data), burst):
                    if sent_at_once >= burst:
                        time.sleep(every)
                    sink.sendall(data[start : start + burst])
                    sent_at_once += len(data[start : start + burst])
        except OSError:
            pass
        finally:
            if not self._silenced(source):
                for sock in (source, sink):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
