"""Termination message: Kubernetes keeps the file's text in the pod status after exit."""

from __future__ import annotations

import os

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
MAX_BYTES = 4096  # the kubelet's limit per container


def termination_log_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("DSA_TERMINATION_LOG") or DEFAULT_TERMINATION_LOG


def write_termination(message: str, path: str) -> None:
    """Best effort: a missing or read-only path must not mask the real failure."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(message.encode("utf-8")[:MAX_BYTES].decode("utf-8", "ignore"))
    except OSError:
        pass
