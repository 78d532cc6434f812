"""Leader election on a Lease, so that of several operator replicas only one acts."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

log = logging.getLogger(__name__)


LIVENESS_QUERY = "probe=liveness"


class _Healthz(BaseHTTPRequestHandler):
    """A standby is alive (`/healthz?probe=liveness`: 200) but not ready (`/healthz`: 503), so the
    webhook Service only sends admission requests to the leader."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/healthz":
            self.send_response(404)
        else:
            self.send_response(200 if LIVENESS_QUERY in url.query else 503)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def _standby_health(liveness_url: str | None) -> ThreadingHTTPServer | None:
    """A follower is alive too: answer the liveness probe until kopf takes the port over."""
    if not liveness_url:
        return None
    url = urlsplit(liveness_url)
    server = ThreadingHTTPServer((url.hostname or "0.0.0.0", url.port or 80), _Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run_as_leader(
    name: str, namespace: str, work: Callable[[], None], liveness_url: str | None = None
) -> None:
    """Block until this process holds the Lease, then run `work`; exit when the Lease is lost.

    Exiting (not pausing) on loss is deliberate: the pod restarts clean and campaigns again,
    and no half-done reconcile continues beside the new leader.
    """
    identity = f"{os.environ.get('POD_NAME') or socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    standby = _standby_health(liveness_url)

    def lead() -> None:
        if standby:
            standby.shutdown()
            standby.server_close()
        log.info("leading as %s", identity)
        work()

    def lost() -> None:
        log.error("lost the leader Lease %s/%s; exiting", namespace, name)
        sys.stdout.flush()
        os._exit(1)

    config = electionconfig.Config(
        LeaseLock(name, namespace, identity),
        lease_duration=15,
        renew_deadline=10,
        retry_period=2,
        onstarted_leading=lead,
        onstopped_leading=lost,
    )
    log.info("campaigning for the Lease %s/%s as %s", namespace, name, identity)
    leaderelection.LeaderElection(config).run()
