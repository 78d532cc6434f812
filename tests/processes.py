"""Process helpers shared by the tests that run the operator, the router or the cluster."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, grace: float = 20) -> None:
    """Stop a process started with `start_new_session=True` and all its children: `sig`, then
    SIGKILL after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
