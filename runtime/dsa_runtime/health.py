"""Stand-in /health and /ready for non-zero ranks of a multi-node group.

SGLang serves HTTP only on rank 0; the design probes every pod on --port, so ranks > 0
answer 200 while their SGLang process lives. The router selects rank-0 pods only, so these
never receive traffic.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("dsa_runtime.health")

# What kubelet probes. Not /health_generate: the router health-checks workers with it, so a
# rank > 0 pod that inherits an old leader's address fails the check and is dropped.
PATHS = frozenset({"/health", "/ready"})


def start_health_server(port: int, alive: Callable[[], bool], host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve in a daemon thread; 200 on PATHS while `alive()`, 503 after, 404 elsewhere."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path not in PATHS:
                code, text = 404, b"not found\n"
            elif alive():
                code, text = 200, b"ok\n"
            else:
                code, text = 503, b"sglang exited\n"
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            if body:
                self.wfile.write(text)

        def do_GET(self) -> None:
            self._answer(True)

        def do_HEAD(self) -> None:
            self._answer(False)

        def log_message(self, format: str, *args: object) -> None:  # probes are noise
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    log.info("stand-in health server on port %d (SGLang serves HTTP on rank 0 only)", port)
    return server
