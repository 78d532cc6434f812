"""Bounded wait for the group leader's DNS name.

Workers of a StatefulSet may start before the leader's pod (and so its headless-Service
record) exists; SGLang would fail at once on an unresolvable --dist-init-addr.
"""

from __future__ import annotations

import logging
import socket
import time

from dsa_runtime.errors import ExitCode, RuntimeFailure

log = logging.getLogger("dsa_runtime.dns")


def resolves(host: str, port: int) -> bool:
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        return False
    return True


def wait_for_dns(
    host: str, port: int, timeout_s: float, interval_s: float = 2.0, log_every_s: float = 10.0
) -> float:
    """Return seconds waited once `host` resolves; raise LEADER_UNRESOLVED after timeout."""
    start = time.monotonic()
    last_log = -log_every_s
    log.info("waiting up to %.0f s for the leader %s:%d to resolve", timeout_s, host, port)
    while True:
        if resolves(host, port):
            waited = time.monotonic() - start
            log.info("leader %s resolved after %.1f s", host, waited)
            return waited
        elapsed = time.monotonic() - start
        if elapsed >= timeout_s:
            raise RuntimeFailure(
                ExitCode.LEADER_UNRESOLVED,
                f"leader {host} did not resolve within {timeout_s:g} s: check that the "
                f"leader pod (rank 0) is scheduled and its headless Service exists",
            )
        if elapsed - last_log >= log_every_s:
            log.info("leader %s does not resolve yet (%.0f s of %.0f s)", host, elapsed, timeout_s)
            last_log = elapsed
        time.sleep(min(interval_s, max(0.0, timeout_s - elapsed)))
