"""Run SGLang as a child so signals reach it and its exit code becomes ours.

The runtime is PID 1 in the container. On SIGTERM (pod deletion) it forwards the signal so
SGLang can finish in-flight requests, waits up to a grace period, then SIGKILLs the child's
whole process group. As PID 1 it also reaps orphaned grandchildren.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable

from dsa_runtime.errors import ExitCode, RuntimeFailure

log = logging.getLogger("dsa_runtime.supervisor")

FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
DRAINING = (signal.SIGTERM, signal.SIGINT)


def exit_status(code: int) -> int:
    """Popen-style code (negative = killed by signal) as a shell exit status."""
    return 128 - code if code < 0 else code


def supervise(
    argv: list[str],
    env: dict[str, str],
    grace_s: float,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
    poll_s: float = 0.05,
) -> int:
    """Start argv, forward signals, drain on SIGTERM, return the child's exit status."""
    try:
        proc = subprocess.Popen(argv, env=env, start_new_session=True)
    except OSError as e:
        raise RuntimeFailure(ExitCode.EXEC_FAILED, f"cannot start {argv[0]}: {e.strerror or e}") from None
    log.info("started %s (pid %d)", " ".join(argv[:4]), proc.pid)
    deadline: list[float] = []

    def forward(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if signum in DRAINING and not deadline:
            deadline.append(time.monotonic() + grace_s)
            log.info("%s: forwarding to pid %d, draining for up to %g s", name, proc.pid, grace_s)
        else:
            log.info("%s: forwarding to pid %d", name, proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        if on_start:
            on_start(proc)
        code = _wait(proc, deadline, poll_s)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        # leftovers in SGLang's process group (scheduler, detokenizer workers)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    status = exit_status(code)
    log.info("pid %d exited with status %d", proc.pid, status)
    return status


def _wait(proc: subprocess.Popen[bytes], deadline: list[float], poll_s: float) -> int:
    reap_all = os.getpid() == 1
    killed = False
    while True:
        try:
            pid, status = os.waitpid(-1 if reap_all else proc.pid, os.WNOHANG)
        except ChildProcessError:  # already reaped elsewhere
            return proc.returncode if proc.returncode is not None else 1
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode
        if pid != 0:
            continue  # an orphan reaped as PID 1
        if deadline and not killed and time.monotonic() >= deadline[0]:
            log.warning("pid %d still running after the grace period: SIGKILL", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            killed = True
        time.sleep(poll_s)
