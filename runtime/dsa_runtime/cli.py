"""`dsa-runtime`: the serving container's entrypoint (serve, route, preflight, rendezvous, fetch-model,
evaluate).

Every expected problem ends as one line on stderr, a distinct exit code (errors.ExitCode)
and the same line in the termination log; SGLang's own exit status is passed on unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import signal
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
STEP_GRACE_S = 10.0  # a preflight or rendezvous step has nothing to drain

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
EngineOpt = Annotated[
    str | None,
    typer.Option(
        "--engine",
        envvar="DSA_ENGINE",
        help="sglang | simulator (default: the plan's engine, spec.runtime.engine). The simulator "
        "loads no model; its answers are not model output.",
    ),
]
DnsOpt = Annotated[
    float,
    typer.Option(
        "--dns-timeout",
        envvar="DSA_DNS_TIMEOUT_SECONDS",
        help="seconds to wait for the leader's DNS name",
    ),
]
RendezvousOpt = Annotated[
    float,
    typer.Option(
        "--rendezvous-timeout",
        envvar="DSA_RENDEZVOUS_TIMEOUT_SECONDS",
        help="seconds the simulator's ranks may take to form their group (torch's init timeout)",
    ),
]
SGLANG_PROBE = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('sglang') else 3)"


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


def _engine(flag: str | None, plan: P.Plan) -> str:
    """The engine to run: the flag if given, else the plan's; never guessed from the node."""
    if flag is None:
        return plan.engine
    if flag not in ("sglang", "simulator"):
        raise typer.BadParameter(f"{flag!r} is not sglang or simulator", param_hint="--engine")
    return flag


def simulator_argv(argv: list[str]) -> list[str]:
    """The planned SGLang command line, run by the simulator instead of `sglang.launch_server`."""
    first_flag = next((i for i, a in enumerate(argv) if a.startswith("--")), len(argv))
    return [sys.executable, "-m", "dsa_runtime.simulator", *argv[first_flag:]]


def _check_sglang(argv: list[str], env: dict[str, str]) -> None:
    """`python3 -m sglang.…` without SGLang installed: say so, rather than a bare exit status 1."""
    if len(argv) < 3 or argv[1] != "-m" or not argv[2].startswith("sglang"):
        return
    try:
        rc = subprocess.run([argv[0], "-c", SGLANG_PROBE], env=env, check=False).returncode
    except OSError:
        return  # the supervisor reports a program that cannot start
    if rc == 3:
        raise RuntimeFailure(
            ExitCode.ENGINE_MISSING,
            f"SGLang is not installed here ({argv[0]} -m {argv[2]} cannot import sglang): run the "
            f"dsa-runtime image built on SGLang's; a cluster without GPUs can set "
            f"spec.runtime.engine: simulator (its answers are not model output)",
        )


def _exit_on_stop_signals() -> None:
    """The runtime is PID 1, and the kernel drops a signal PID 1 has no handler for: without this a
    pod deleted while it waits for its leader would sit out its whole grace period."""

    def stop(signum: int, _frame: object) -> None:
        log.info("%s before the engine started: exiting", signal.Signals(signum).name)
        raise SystemExit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, stop)


def _step(command: list[str], path: object, termination_log: str | None, env: dict[str, str]) -> None:
    """Run `dsa-runtime <command>` as a child; its failure (one line, its code) ends serve.

    Supervised like the engine, so a SIGTERM to PID 1 reaches it (a rendezvous blocked in torch
    would otherwise wait out its timeout)."""
    from dsa_runtime.supervisor import supervise

    cmd = [sys.executable, "-m", "dsa_runtime", *command, "--plan", str(path)]
    if termination_log:
        cmd += ["--termination-log", termination_log]
    rc = supervise(cmd, env, STEP_GRACE_S)
    if rc != 0:
        raise typer.Exit(rc)


def _finish(status: int, who: P.Identity, termination_log: str | None, engine: str = "sglang") -> None:
    if status != 0:
        write_termination(
            f"{engine} ({who}) exited with status {status}\n", termination_log_path(termination_log)
        )
    raise typer.Exit(status)


@app.command()
def serve(
    plan_file: PlanOpt = None,
    termination_log: TermOpt = None,
    engine: EngineOpt = None,
    dns_timeout: DnsOpt = 600.0,
    rendezvous_timeout: RendezvousOpt = 600.0,
    grace: GraceOpt = 60.0,
    skip_preflight: Annotated[bool, typer.Option("--skip-preflight", envvar="DSA_SKIP_PREFLIGHT")] = False,
    shape: Annotated[str, typer.Option(help="preflight problem size")] = "small",
) -> None:
    """Wait for the leader, check the node, then run this pod's engine (SGLang, or the simulator
    when the plan or --engine says so)."""
    _setup_logging()
    _exit_on_stop_signals()
    with reporting(termination_log):
        path, plan, who = _load(plan_file)
        if who.role == "router":
            raise RuntimeFailure(ExitCode.ROLE_MISMATCH, "DSA_ROLE=router: use `dsa-runtime route`")
        pod = P.pod_entry(plan, who)
        chosen = _engine(engine, plan)
        log.info(
            "plan %s/%s, pod %s, SGLang %s, engine %s",
            plan.namespace,
            plan.name,
            who,
            plan.sglang_version,
            chosen,
        )
        if chosen == "simulator":
            log.warning("engine simulator: not SGLang, no model is loaded; answers are not model output")
        leader = P.leader_address(pod.argv)
        if leader:
            from dsa_runtime.dns import wait_for_dns

            wait_for_dns(leader[0], leader[1], dns_timeout)
        if not skip_preflight:
            # A separate process, so its CUDA context does not stay in PID 1 beside SGLang.
            _step(
                ["preflight", "--shape", shape, "--engine", chosen], path, termination_log, dict(os.environ)
            )
        if chosen == "simulator":
            from dsa_runtime.rendezvous import group_from_argv

            if group_from_argv(pod.argv):
                # Its own process too: torch and the group's store do not stay beside the engine.
                step = ["rendezvous", "--dns-timeout", str(dns_timeout)]
                step += ["--rendezvous-timeout", str(rendezvous_timeout)]
                _step(step, path, termination_log, dict(os.environ))
            from dsa_runtime.supervisor import supervise

            status = supervise(simulator_argv(pod.argv), _child_env(pod), grace)
            _finish(status, who, termination_log, "simulator")
        _check_sglang(pod.argv, _child_env(pod))
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
    engine: EngineOpt = None,
) -> None:
    """Check GPUs, /dev/shm, model path and kernels against the plan; print one JSON line.

    For the simulator on a node without GPUs, the GPU and kernel checks are skipped (and said so)."""
    _setup_logging()
    from dsa_runtime import preflight as PF

    with reporting(termination_log):
        _, plan, who = _load(plan_file)
        if shape not in ("small", "deepseek-v3.2"):
            raise typer.BadParameter(f"unknown shape {shape!r}", param_hint="--shape")
        P.pod_entry(plan, who)
        report = PF.preflight(
            plan,
            who.role,
            shm_path=shm_path,
            shape=shape,
            iters=iters,
            run_kernel=run_kernel,
            engine=_engine(engine, plan),
        )
        PF.emit(report)


@app.command()
def rendezvous(
    plan_file: PlanOpt = None,
    termination_log: TermOpt = None,
    dns_timeout: DnsOpt = 600.0,
    rendezvous_timeout: RendezvousOpt = 600.0,
) -> None:
    """Join this pod's group at the planned --dist-init-addr as SGLang would (torch, gloo), with
    --nnodes and --node-rank; all-reduce and check the sum; print one JSON line."""
    _setup_logging()
    from dsa_runtime import rendezvous as R

    with reporting(termination_log):
        _, plan, who = _load(plan_file)
        pod = P.pod_entry(plan, who)
        group = R.group_from_argv(pod.argv)
        if group is None:
            print(json.dumps({"rendezvous": "none", "reason": "a single-node group"}), flush=True)
            return
        from dsa_runtime.dns import wait_for_dns

        wait_for_dns(group.host, group.port, dns_timeout)
        os.environ.update(pod.env)  # the plan's NCCL/GLOO settings, before torch reads them
        ifname, why = R.gloo_interface(dict(os.environ))
        if ifname:
            os.environ["GLOO_SOCKET_IFNAME"] = ifname
        log.info("gloo interface: %s (%s)", ifname or "torch's default", why)
        report = R.join(group, rendezvous_timeout)
        print(json.dumps({**report, "glooInterface": ifname}), flush=True)


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


@app.command()
def evaluate(
    suite: Annotated[str, typer.Option(help="gsm8k | gpqa-diamond | aime25")],
    host: Annotated[str, typer.Option(help="the model endpoint's host")],
    port: Annotated[int, typer.Option(help="the model endpoint's port")],
    model: Annotated[
        str | None, typer.Option(help="served model name (sgl-eval; default: /v1/models)")
    ] = None,
    num_shots: Annotated[int | None, typer.Option(help="few-shot examples (gsm8k)")] = None,
    num_questions: Annotated[int | None, typer.Option(help="questions (gsm8k) or examples")] = None,
    parallel: Annotated[int | None, typer.Option(help="concurrent requests")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="max new tokens per answer")] = None,
    repeats: Annotated[
        int | None, typer.Option(help="runs over the data set; the score is their mean")
    ] = None,
    thinking: Annotated[
        bool | None,
        typer.Option("--thinking/--no-thinking", help="chat_template_kwargs thinking (sgl-eval suites)"),
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="sampling temperature")] = None,
    top_p: Annotated[float | None, typer.Option(help="nucleus sampling (sgl-eval suites)")] = None,
    data_path: Annotated[
        str | None,
        typer.Option(
            help="data set file: gsm8k jsonl {question, answer}, or NS jsonl {problem, expected_answer}"
        ),
    ] = None,
    out_dir: Annotated[str, typer.Option(help="the harness's working and output folder")] = "/tmp/eval",
    termination_log: TermOpt = None,
    wait_ready: Annotated[float, typer.Option(help="seconds to wait for the endpoint's /health")] = 60.0,
) -> None:
    """Run the pinned SGLang's accuracy harness against an endpoint; the result (or the error) is
    one JSON line on stdout and in the termination log. Unset options are the suite's defaults."""
    _setup_logging()
    _exit_on_stop_signals()
    from dsa_runtime import evaluate as E

    if suite not in E.SUITES:
        raise typer.BadParameter(f"{suite!r} is not one of {', '.join(E.SUITES)}", param_hint="--suite")
    settings = E.resolve(
        suite,
        host,
        port,
        model=model,
        num_shots=num_shots,
        questions=num_questions,
        parallel=parallel,
        max_tokens=max_tokens,
        repeats=repeats,
        thinking=thinking,
        temperature=temperature,
        top_p=top_p,
        data_path=data_path,
    )
    path = termination_log_path(termination_log)
    try:
        E.wait_ready(E.base_url(host, port), wait_ready)
        line = E.compact(E.evaluate(settings, out_dir, dict(os.environ)))
    except E.EvalFailure as e:
        line = E.compact(E.error(e.reason, e.message))
        print(line, flush=True)
        write_termination(line + "\n", path)
        first = e.message.splitlines()[0] if e.message else e.reason
        print(f"dsa-runtime: {e.code.name.lower().replace('_', '-')}: {first}", file=sys.stderr, flush=True)
        raise typer.Exit(int(e.code)) from None
    print(line, flush=True)
    write_termination(line + "\n", path)


@app.command("exit-codes")
def exit_codes() -> None:
    """Print the table of exit codes."""
    for code in ExitCode:
        print(f"{int(code):>3}  {code.name:<18} {EXIT_CODE_MEANINGS[code]}")


def main() -> None:
    app(prog_name="dsa-runtime")


if __name__ == "__main__":
    main()
