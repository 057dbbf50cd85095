"""A simulated instrument's LAN port: newline-terminated SCPI over TCP on 127.0.0.1.

pyvisa-py reaches it as ``TCPIP::127.0.0.1::<port>::SOCKET``, exactly as it
reaches a real instrument's raw SCPI socket (port 5025 on most LAN
instruments).  The port is picked free by the OS; several clients may be
connected at once (the agent, ``rig instrument`` and a lab engineer's
pyvisa session), each on its own thread, all served by the one instrument.

``server.silent = True`` makes the instrument go quiet: it still accepts
connections and reads commands, but never answers (the fault of an
instrument that hangs; the agent must time out and put the bench safe).
"""

from __future__ import annotations

import logging
import socket
import threading

from .scpi import ScpiDevice

log = logging.getLogger(__name__)


class ScpiServer:
    """Serve one :class:`ScpiDevice` on a free TCP port of 127.0.0.1."""

    def __init__(self, device: ScpiDevice, name: str, host: str = "127.0.0.1", port: int = 0):
        self.device, self.name = device, name
        self.silent = False
        self._listener = socket.create_server((host, port))
        self.host, self.port = self._listener.getsockname()[:2]
        self._clients: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"scpi:{name}:{self.port}", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"TCPIP::{self.host}::{self.port}::SOCKET"

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _peer = self._listener.accept()
            except OSError:
                return  # listener closed
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._clients.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name=f"scpi:{self.name}:client",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
                while b"\n" in buffer:
                    raw, buffer = buffer.split(b"\n", 1)
                    line = raw.decode("ascii", errors="replace").strip()
                    if not line:
                        continue
                    answer = self.device.handle(line)
                    if answer is not None and not self.silent:
                        conn.sendall(answer.encode("ascii") + b"\n")
        except OSError:
            pass
        except Exception:  # noqa: BLE001 - a bug in one instrument must not kill the world
            log.exception("simulated %s failed on a command", self.name)
        finally:
            with self._lock:
                self._clients.discard(conn)
            conn.close()

    def stop(self) -> None:
        """Close the port and every client connection."""
        self._stopping.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            clients = list(self._clients)
        for conn in clients:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(2)
