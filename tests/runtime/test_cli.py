"""The entrypoint as a real subprocess, with a small Python program in SGLang's place."""

from __future__ import annotations

import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dsa_runtime.errors import ExitCode
from tests.runtime.conftest import dsa, dsa_popen, free_port, make_plan, runtime_env

SERVE = ["serve", "--skip-preflight"]

DRAINING_SERVER = """
import os, signal, sys, time
from pathlib import Path
state = Path(sys.argv[1])
inflight = []
def term(signum, frame):
    (state / "got-sigterm").write_text(str(len(inflight)))
    time.sleep(0.5)                      # finish the in-flight request
    (state / "drained").write_text("1")
    sys.exit(int(os.environ.get("EXIT_AFTER_DRAIN", "0")))
signal.signal(signal.SIGTERM, term)
inflight.append("request-1")
(state / "ready").write_text(os.environ.get("FROM_PLAN", ""))
while True:
    time.sleep(0.05)
"""


def _wait_for(path: Path, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


def _one_line_error(res, code: ExitCode, needle: str) -> None:
    assert res.returncode == int(code), (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("dsa-runtime: ")]
    assert len(lines) == 1 and needle in lines[0], res.stderr


def test_sigterm_is_forwarded_and_drained(tmp_path, write_plan, script):
    argv = [*script(DRAINING_SERVER), str(tmp_path)]
    plan = write_plan(make_plan(argv, env={"FROM_PLAN": "yes", "EXIT_AFTER_DRAIN": "3"}))
    proc = dsa_popen(SERVE, runtime_env(tmp_path, plan))
    _wait_for(tmp_path / "ready")
    assert (tmp_path / "ready").read_text() == "yes"  # plan env merged over os.environ
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert (tmp_path / "got-sigterm").read_text() == "1"
    assert (tmp_path / "drained").exists()
    assert proc.returncode == 3, err  # SGLang's exit code passed on
    assert "draining" in err
    assert "exited with status 3" in (tmp_path / "termination-log").read_text()


def test_clean_drain_exits_zero_without_termination_log(tmp_path, write_plan, script):
    plan = write_plan(make_plan([*script(DRAINING_SERVER), str(tmp_path)]))
    proc = dsa_popen(SERVE, runtime_env(tmp_path, plan))
    _wait_for(tmp_path / "ready")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert not (tmp_path / "termination-log").exists()


def test_sigkill_after_grace(tmp_path, write_plan, script):
    stubborn = script(
        """
        import signal, sys, time
        from pathlib import Path
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        Path(sys.argv[1], "ready").write_text("")
        time.sleep(60)
        """
    )
    plan = write_plan(make_plan([*stubborn, str(tmp_path)]))
    proc = dsa_popen([*SERVE, "--grace", "1"], runtime_env(tmp_path, plan))
    _wait_for(tmp_path / "ready")
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGKILL
    assert time.monotonic() - start < 10
    assert "SIGKILL" in err


@pytest.mark.parametrize("code", [0, 1, 42])
def test_exit_code_passed_on(tmp_path, write_plan, script, code):
    plan = write_plan(make_plan(script(f"import sys; sys.exit({code})")))
    res = dsa(SERVE, runtime_env(tmp_path, plan))
    assert res.returncode == code, res.stderr


def test_child_killed_by_signal(tmp_path, write_plan, script):
    plan = write_plan(make_plan(script("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")))
    assert dsa(SERVE, runtime_env(tmp_path, plan)).returncode == 128 + signal.SIGSEGV


def test_dns_wait_succeeds_for_localhost(tmp_path, write_plan, script):
    argv = [*script("pass"), "--nnodes", "2", "--node-rank", "0", "--dist-init-addr", "localhost:20000"]
    res = dsa([*SERVE, "--dns-timeout", "5"], runtime_env(tmp_path, write_plan(make_plan(argv))))
    assert res.returncode == 0, res.stderr
    assert "leader localhost resolved" in res.stderr


def test_dns_wait_times_out(tmp_path, write_plan, script):
    argv = [
        *script("raise SystemExit('must not start')"),
        "--dist-init-addr",
        "leader.dsa-test.invalid:20000",
    ]
    env = runtime_env(tmp_path, write_plan(make_plan(argv)), DSA_DNS_TIMEOUT_SECONDS="1")
    start = time.monotonic()
    res = dsa(SERVE, env)
    assert time.monotonic() - start < 30
    _one_line_error(res, ExitCode.LEADER_UNRESOLVED, "leader.dsa-test.invalid did not resolve")
    assert "did not resolve" in (tmp_path / "termination-log").read_text()


def test_rank_above_zero_serves_stand_in_health(tmp_path, write_plan, script):
    port = free_port()
    argv = [
        *script(DRAINING_SERVER),
        str(tmp_path),
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--dist-init-addr",
        "localhost:20000",
        "--port",
        str(port),
    ]
    plan = write_plan(make_plan(argv, rank=1))
    proc = dsa_popen(SERVE, runtime_env(tmp_path, plan, DSA_RANK="1"))
    try:
        _wait_for(tmp_path / "ready")
        for path in ("/health", "/ready"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5)
        assert e.value.code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_rank_zero_has_no_stand_in(tmp_path, write_plan, script):
    port = free_port()
    argv = [
        *script("import time; time.sleep(1)"),
        "--nnodes",
        "2",
        "--dist-init-addr",
        "localhost:20000",
        "--port",
        str(port),
    ]
    proc = dsa_popen(SERVE, runtime_env(tmp_path, write_plan(make_plan(argv))))
    time.sleep(0.5)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
    proc.communicate(timeout=30)


def test_route_runs_router(tmp_path, write_plan, script):
    plan = write_plan(make_plan(script("import sys; sys.exit(5)"), role="router"))
    env = runtime_env(tmp_path, plan)
    for key in ("DSA_GROUP", "DSA_RANK"):
        env.pop(key)  # a Deployment has no pod index
    env["DSA_ROLE"] = "router"
    assert dsa(["route"], env).returncode == 5


# -- bad input: one line, its own code, no traceback -------------------------------------


def test_no_plan(tmp_path):
    res = dsa(SERVE, runtime_env(tmp_path, tmp_path / "absent.json"))
    _one_line_error(res, ExitCode.PLAN_MISSING, "no plan at")
    assert "no plan at" in (tmp_path / "termination-log").read_text()


def test_malformed_json(tmp_path, write_plan):
    res = dsa(SERVE, runtime_env(tmp_path, write_plan('{"name": ')))
    _one_line_error(res, ExitCode.PLAN_MALFORMED, "not valid JSON")


def test_plan_missing_fields(tmp_path, write_plan):
    res = dsa(SERVE, runtime_env(tmp_path, write_plan('{"name": "m", "pods": []}')))
    _one_line_error(res, ExitCode.PLAN_MALFORMED, "sglangVersion")


def test_no_entry_for_this_pod(tmp_path, write_plan):
    plan = write_plan(make_plan(["x"]))
    res = dsa(SERVE, runtime_env(tmp_path, plan, DSA_GROUP="3"))
    _one_line_error(res, ExitCode.POD_NOT_IN_PLAN, "no pod role=serving group=3 rank=0")


def test_identity_missing(tmp_path, write_plan):
    env = runtime_env(tmp_path, write_plan(make_plan(["x"])))
    env.pop("DSA_RANK")
    _one_line_error(dsa(SERVE, env), ExitCode.IDENTITY_MISSING, "DSA_RANK is not set")


def test_role_mismatch(tmp_path, write_plan):
    plan = write_plan(make_plan(["x"], role="router"))
    res = dsa(SERVE, runtime_env(tmp_path, plan, DSA_ROLE="router"))
    _one_line_error(res, ExitCode.ROLE_MISMATCH, "dsa-runtime route")
    res = dsa(["route"], runtime_env(tmp_path, plan))
    _one_line_error(res, ExitCode.ROLE_MISMATCH, "dsa-runtime serve")


def test_program_not_found(tmp_path, write_plan):
    plan = write_plan(make_plan(["/nonexistent/sglang-binary"]))
    _one_line_error(dsa(SERVE, runtime_env(tmp_path, plan)), ExitCode.EXEC_FAILED, "cannot start")


def test_python_m_and_exit_codes_table(tmp_path):
    res = dsa(["exit-codes"], runtime_env(tmp_path, tmp_path / "p.json"))
    assert res.returncode == 0
    assert "LEADER_UNRESOLVED" in res.stdout and " 69 " in f" {res.stdout}"


def test_sglang_not_installed_is_said_not_substituted(tmp_path, write_plan):
    """The plan says SGLang (the default): without it the runtime fails, it never simulates."""
    argv = [sys.executable, "-m", "sglang.launch_server", "--model-path", "m", "--port", str(free_port())]
    res = dsa(SERVE, runtime_env(tmp_path, write_plan(make_plan(argv))))
    _one_line_error(res, ExitCode.ENGINE_MISSING, "SGLang is not installed here")
    assert "SIMULATOR" not in res.stderr


def test_engine_flag_must_name_an_engine(tmp_path, write_plan):
    res = dsa([*SERVE, "--engine", "vllm"], runtime_env(tmp_path, write_plan(make_plan(["x"]))))
    assert res.returncode == 2 and "sglang or simulator" in res.stderr


def test_simulator_single_node_serves_the_planned_port(tmp_path, write_plan):
    port = free_port()
    argv = ["python3", "-m", "sglang.launch_server", "--model-path", "m", "--host", "127.0.0.1"]
    plan = write_plan(make_plan([*argv, "--port", str(port)], engine="simulator"))
    proc = dsa_popen(SERVE, runtime_env(tmp_path, plan, POD_NAME="m-serving-0-0"))
    try:
        end = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health_generate", timeout=5) as r:
                    assert r.status == 200 and r.headers["X-DSA-Simulator"].startswith("true")
                    break
            except urllib.error.URLError:
                assert proc.poll() is None and time.monotonic() < end, proc.communicate()
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "engine simulator: not SGLang" in err and "SIMULATOR m-serving-0-0" in err
