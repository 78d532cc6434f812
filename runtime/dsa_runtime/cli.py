"""`dsa-runtime`: the serving container's entrypoint (serve, route, preflight, fetch-model).

Every expected problem ends as one line on stderr, a distinct exit code (errors.ExitCode)
and the same line in the termination log; SGLang's own exit status is passed on unchanged.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from dsa_runtime import plan as P
from dsa_runtime.errors import EXIT_CODE_MEANINGS, ExitCode, RuntimeFailure
from dsa_runtime.termination import termination_log_path, write_termination

log = logging.getLogger("dsa_runtime")

app = typer.Typer(
    name="dsa-runtime",
    help="Serving runtime for DeepSeek Sparse Attention models on SGLang.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

PlanOpt = Annotated[str | None, typer.Option("--plan", envvar="DSA_PLAN_FILE", help="plan JSON path")]
TermOpt = Annotated[
    str | None,
    typer.Option("--termination-log", envvar="DSA_TERMINATION_LOG", help="failure message file"),
]
GraceOpt = Annotated[
    float,
    typer.Option(
        "--grace",
        envvar="DSA_DRAIN_GRACE_SECONDS",
        help="seconds SGLang may drain after SIGTERM before SIGKILL (keep it below the pod's "
        "terminationGracePeriodSeconds)",
    ),
]


@contextmanager
def reporting(termination_log: str | None) -> Iterator[None]:
    """Turn RuntimeFailure into one stderr line, the termination log and its exit code."""
    try:
        yield
    except RuntimeFailure as e:
        line = f"dsa-runtime: {e.code.name.lower().replace('_', '-')}: {e.message}"
        print(line, file=sys.stderr, flush=True)
        write_termination(line + "\n", termination_log_path(termination_log))
        raise typer.Exit(int(e.code)) from None


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("DSA_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s dsa-runtime %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _load(plan_file: str | None, default_role: str | None = None):
    path = P.plan_path(plan_file)
    plan = P.load_plan(path)
    who = P.identity_from_env(dict(os.environ), default_role=default_role)
    return path, plan, who


def _child_env(pod: P.PodPlan) -> dict[str, str]:
    return {**os.environ, **pod.env}


def _finish(status: int, who: P.Identity, termination_log: str | None) -> None:
    if status != 0:
        write_termination(
            f"sglang ({who}) exited with status {status}\n", termination_log_path(termination_log)
        )
    raise typer.Exit(status)


@app.command()
def serve(
    plan_file: PlanOpt = None,
    termination_log: TermOpt = None,
    dns_timeout: Annotated[
        float,
        typer.Option(
            "--dns-timeout",
            envvar="DSA_DNS_TIMEOUT_SECONDS",
            help="seconds to wait for the leader's DNS name",
        ),
    ] = 600.0,
    grace: GraceOpt = 60.0,
    skip_preflight: Annotated[bool, typer.Option("--skip-preflight", envvar="DSA_SKIP_PREFLIGHT")] = False,
    shape: Annotated[str, typer.Option(help="preflight problem size")] = "small",
) -> None:
    """Wait for the leader, check the node, then run this pod's SGLang engine."""
    _setup_logging()
    with reporting(termination_log):
        path, plan, who = _load(plan_file)
        if who.role == "router":
            raise RuntimeFailure(ExitCode.ROLE_MISMATCH, "DSA_ROLE=router: use `dsa-runtime route`")
        pod = P.pod_entry(plan, who)
        log.info("plan %s/%s, pod %s, SGLang %s", plan.namespace, plan.name, who, plan.sglang_version)
        leader = P.leader_address(pod.argv)
        if leader:
            from dsa_runtime.dns import wait_for_dns

            wait_for_dns(leader[0], leader[1], dns_timeout)
        if not skip_preflight:
            cmd = [sys.executable, "-m", "dsa_runtime", "preflight", "--plan", str(path), "--shape", shape]
            if termination_log:
                cmd += ["--termination-log", termination_log]
            # A separate process, so its CUDA context does not stay in PID 1 beside SGLang.
            rc = subprocess.run(cmd, check=False).returncode
            if rc != 0:
                raise typer.Exit(rc)
        holder: list[subprocess.Popen[bytes]] = []
        if who.rank > 0 and P.nnodes(pod.argv) > 1:
            from dsa_runtime.health import start_health_server

            port = P.serving_port(pod.argv)
            try:
                start_health_server(port, lambda: bool(holder) and holder[0].returncode is None)
            except OSError as e:
                raise RuntimeFailure(
                    ExitCode.EXEC_FAILED, f"cannot serve the stand-in /health on port {port}: {e}"
                ) from None
        from dsa_runtime.supervisor import supervise

        status = supervise(pod.argv, _child_env(pod), grace, on_start=holder.append)
    _finish(status, who, termination_log)


@app.command()
def route(plan_file: PlanOpt = None, termination_log: TermOpt = None, grace: GraceOpt = 30.0) -> None:
    """Run the SGLang router planned for this pod (role router)."""
    _setup_logging()
    with reporting(termination_log):
        _, plan, who = _load(plan_file, default_role="router")
        if who.role != "router":
            raise RuntimeFailure(ExitCode.ROLE_MISMATCH, f"DSA_ROLE={who.role}: use `dsa-runtime serve`")
        pod = P.pod_entry(plan, who)
        from dsa_runtime.supervisor import supervise

        status = supervise(pod.argv, _child_env(pod), grace)
    _finish(status, who, termination_log)


@app.command()
def preflight(
    plan_file: PlanOpt = None,
    termination_log: TermOpt = None,
    shape: Annotated[str, typer.Option(help="small | deepseek-v3.2")] = "small",
    iters: Annotated[int, typer.Option(help="timed kernel runs")] = 20,
    run_kernel: Annotated[
        bool, typer.Option("--run-kernel/--no-run-kernel", help="run the sparse kernel check")
    ] = True,
    shm_path: Annotated[str, typer.Option(envvar="DSA_SHM_PATH")] = "/dev/shm",
) -> None:
    """Check GPUs, /dev/shm, model path and kernels against the plan; print one JSON line."""
    _setup_logging()
    from dsa_runtime import preflight as PF

    with reporting(termination_log):
        _, plan, who = _load(plan_file)
        if shape not in ("small", "deepseek-v3.2"):
            raise typer.BadParameter(f"unknown shape {shape!r}", param_hint="--shape")
        P.pod_entry(plan, who)
        report = PF.preflight(
            plan, who.role, shm_path=shm_path, shape=shape, iters=iters, run_kernel=run_kernel
        )
        PF.emit(report)


@app.command("fetch-model")
def fetch_model(
    plan_file: PlanOpt = None,
    termination_log: TermOpt = None,
    revision: Annotated[str | None, typer.Option(help="hub revision")] = None,
    lock_timeout: Annotated[
        float, typer.Option(help="seconds to wait for another pod's download (-1: forever)")
    ] = -1,
) -> None:
    """Download the plan's hub model into the model volume once; print its local path."""
    _setup_logging()
    from dsa_runtime.fetch import fetch_model as fetch

    with reporting(termination_log):
        path = P.plan_path(plan_file)
        plan = P.load_plan(path)
        pod_env: dict[str, str] = {}
        if os.environ.get("DSA_ROLE"):
            pod_env = P.pod_entry(plan, P.identity_from_env(dict(os.environ))).env
        elif plan.pods:
            pod_env = next((p.env for p in plan.pods if p.role != "router"), plan.pods[0].env)
        local = fetch(plan, {**os.environ, **pod_env}, revision, lock_timeout)
        print(local, flush=True)


@app.command("exit-codes")
def exit_codes() -> None:
    """Print the table of exit codes."""
    for code in ExitCode:
        print(f"{int(code):>3}  {code.name:<18} {EXIT_CODE_MEANINGS[code]}")


def main() -> None:
    app(prog_name="dsa-runtime")


if __name__ == "__main__":
    main()
