"""A TCP relay on loopback between a client and the API server that can drop its connections
silently: no FIN, no RST, the bytes just stop (a lost node, a NAT or load balancer that forgot
the flow). New connections still go through, as they would after a client reconnects.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class Blackhole:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._flows: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        self._stopped = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True, name="blackhole-accept")]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            dropped = threading.Event()
            with self._lock:
                self._flows.append((client, upstream, dropped))
            for a, b in ((client, upstream), (upstream, client)):
                t = threading.Thread(
                    target=self._pump, args=(a, b, dropped), daemon=True, name="blackhole-pump"
                )
                t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, dropped: threading.Event) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                if not dropped.is_set():  # a real close passes through, unless the flow is dropped
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                return
            if dropped.is_set():
                continue  # swallowed: the peer waits for an answer that never comes
            try:
                dst.sendall(data)
            except OSError:
                return

    def drop_all(self) -> int:
        """Silence every open connection; returns how many."""
        with self._lock:
            for _, _, dropped in self._flows:
                dropped.set()
            return sum(1 for _, _, d in self._flows if d.is_set())

    def close(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            for a, b, _ in self._flows:
                for s in (a, b):
                    with contextlib.suppress(OSError):
                        s.close()
            self._flows.clear()
