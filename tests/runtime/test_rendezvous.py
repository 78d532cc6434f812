"""Rank wiring: real `dsa-runtime rendezvous` processes on loopback forming (or failing to form)
a torch.distributed gloo group, and the simulated group served end to end by `dsa-runtime serve`.

torch is the optional `simulator` extra; here it comes from the cached torch 2.14.1 of the SGLang
parser envs (tests/sglang_compat/envs.py), put on the ranks' PYTHONPATH. Every failure case is
bounded by the torch timeout the runtime sets (--rendezvous-timeout); nothing here times anything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dsa_runtime import rendezvous as R
from dsa_runtime.errors import ExitCode, RuntimeFailure
from tests.runtime.conftest import dsa_popen, free_port, make_plan, runtime_env
from tests.sglang_compat import envs

FAIL_TIMEOUT = "10"  # torch's init timeout where the group cannot form: what bounds those cases
OK_TIMEOUT = "600"  # where it can: generous, as ranks start (import torch) at their own pace
SGLANG = ["python3", "-m", "sglang.launch_server", "--model-path", "org/m", "--host", "127.0.0.1"]


def group_argv(rank: int, nnodes: int, addr: str, port: int | None = None) -> list[str]:
    argv = [*SGLANG, "--nnodes", str(nnodes), "--node-rank", str(rank), "--dist-init-addr", addr]
    return argv + (["--port", str(port)] if port else [])


# ---- the pure parts ---------------------------------------------------------------------------
def test_group_from_planned_argv():
    g = R.group_from_argv(group_argv(1, 2, "m-prefill-0-0.m-prefill-0.ns.svc:20000"))
    assert g == R.Group("m-prefill-0-0.m-prefill-0.ns.svc", 20000, 2, 1)
    assert g.init_method == "tcp://m-prefill-0-0.m-prefill-0.ns.svc:20000"
    assert R.group_from_argv(SGLANG) is None  # a single-node group has nothing to join
    assert R.Group("fd00::1", 20000, 2, 0).init_method == "tcp://[fd00::1]:20000"


def test_rank_outside_the_group_is_refused_before_joining():
    with pytest.raises(RuntimeFailure) as e:
        R.group_from_argv(group_argv(2, 2, "leader:20000"))
    assert e.value.code == ExitCode.RENDEZVOUS_FAILED and "outside a group of --nnodes 2" in e.value.message


def test_all_reduce_verdict():
    g = R.Group("h", 1, 2, 0)
    assert R.verdict([2.0, 1.0, 4.0], g) is None
    assert "rank sum 0" in R.verdict([2.0, 0.0, 4.0], g)  # two pods with rank 0
    assert "size sum 5" in R.verdict([2.0, 1.0, 5.0], g)  # one pod believes in 3 ranks


def test_gloo_interface_is_the_one_holding_the_pod_ip():
    assert R.interface_for("10.0.0.7", [("lo", "127.0.0.1"), ("eth0", "10.0.0.7")]) == "eth0"
    assert R.interface_for("fd00::7", [("eth0", "10.0.0.7"), ("net1", "fd00:0::7")]) == "net1"
    assert R.interface_for("10.0.0.8", [("eth0", "10.0.0.7")]) is None
    assert ("lo", "127.0.0.1") in R.local_addresses()
    assert R.gloo_interface({"POD_IP": "127.0.0.1"})[0] == "lo"
    assert R.gloo_interface({"POD_IP": "127.0.0.1", "GLOO_SOCKET_IFNAME": "net1"})[0] == "net1"
    assert R.gloo_interface({})[0] is None


# ---- real ranks on loopback -------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch_path() -> str:
    return str(envs.torch_path())


def rank_env(
    tmp_path: Path, plan: dict[str, Any], rank: int, torch_path: str, **extra: str
) -> dict[str, str]:
    d = tmp_path / f"rank{rank}-{len(list(tmp_path.glob('rank*')))}"
    d.mkdir()
    (d / "plan.json").write_text(json.dumps(plan))
    env = runtime_env(d, d / "plan.json", DSA_RANK=str(rank), POD_IP="127.0.0.1", PYTHONPATH=torch_path)
    env.update(extra)
    return env


def run_ranks(
    tmp_path: Path,
    argvs: list[list[str]],
    torch_path: str,
    ranks: list[int] | None = None,
    timeout: str = FAIL_TIMEOUT,
):
    """Start one `dsa-runtime rendezvous` per argv (DSA_RANK from `ranks`), wait for all."""
    procs = []
    for i, argv in enumerate(argvs):
        rank = ranks[i] if ranks else i
        env = rank_env(tmp_path, make_plan(argv, rank=rank), rank, torch_path)
        procs.append(dsa_popen(["rendezvous", "--rendezvous-timeout", timeout, "--dns-timeout", "10"], env))
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=480)
        out.append((p.returncode, stdout, stderr))
    return out


def assert_failed_visibly(result: tuple[int, str, str], needle: str) -> None:
    rc, _, err = result
    assert rc == int(ExitCode.RENDEZVOUS_FAILED), err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("dsa-runtime: rendezvous-failed: ")]
    assert len(lines) == 1 and needle in lines[0], err


def test_two_ranks_form_the_group_and_all_reduce(tmp_path, torch_path):
    addr = f"localhost:{free_port()}"
    argvs = [group_argv(0, 2, addr), group_argv(1, 2, addr)]
    for rank, (rc, out, err) in enumerate(run_ranks(tmp_path, argvs, torch_path, timeout=OK_TIMEOUT)):
        assert rc == 0, err
        report = json.loads(out.strip().splitlines()[-1])
        assert report["rendezvous"] == "ok" and report["rank"] == rank and report["worldSize"] == 2
        assert report["allReduce"] == [2.0, 1.0, 4.0]  # members, sum of ranks, sum of sizes
        assert report["address"] == addr and report["glooInterface"] == "lo"
        assert "leader localhost resolved" in err


def test_wrong_address_fails_both_ranks(tmp_path, torch_path):
    right, wrong = f"localhost:{free_port()}", f"127.0.0.1:{free_port()}"
    leader, worker = run_ranks(tmp_path, [group_argv(0, 2, right), group_argv(1, 2, wrong)], torch_path)
    assert_failed_visibly(leader, f"rank 0 of 2 at tcp://{right}: the group did not form")
    assert_failed_visibly(worker, f"rank 1 of 2 at tcp://{wrong}: the group did not form")
    assert "rendezvous-failed" in (tmp_path / "rank1-1" / "termination-log").read_text()


def test_every_pod_rank_zero_fails(tmp_path, torch_path):
    """Both pods planned as --node-rank 0 (the classic wiring mistake). On one host the second
    cannot even listen; on two pods each would wait alone for the other: both fail either way."""
    addr = f"localhost:{free_port()}"
    results = run_ranks(tmp_path, [group_argv(0, 2, addr), group_argv(0, 2, addr)], torch_path, ranks=[0, 1])
    for result in results:
        assert_failed_visibly(result, f"rank 0 of 2 at tcp://{addr}")


def test_wrong_world_size_fails_both_ranks(tmp_path, torch_path):
    addr = f"localhost:{free_port()}"
    leader, worker = run_ranks(tmp_path, [group_argv(0, 2, addr), group_argv(1, 3, addr)], torch_path)
    assert_failed_visibly(leader, "rank 0 of 2")
    assert_failed_visibly(worker, "rank 1 of 3")


def test_without_torch_the_simulator_says_what_to_install(tmp_path):
    env = rank_env(tmp_path, make_plan(group_argv(1, 2, f"localhost:{free_port()}"), rank=1), 1, "")
    has_torch = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
    if subprocess.run([sys.executable, "-c", has_torch], env=env, check=False).returncode:
        pytest.skip("torch is installed in the test venv")
    proc = dsa_popen(["rendezvous", "--rendezvous-timeout", "5"], env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == int(ExitCode.ENGINE_MISSING), err
    assert "dsa-operator[simulator]" in err and "Traceback" not in err


# ---- a simulated 2-node group through `dsa-runtime serve` -------------------------------------
def get(url: str) -> tuple[int, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_status(url: str, proc: subprocess.Popen[str], want: int = 200, timeout: float = 480) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            if get(url)[0] == want:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered {want}")


def test_serve_runs_a_simulated_two_node_group(tmp_path, torch_path):
    """The engine pods' path: plan, preflight (no GPU here: said and skipped), rendezvous,
    supervisor, simulator; rank 0 serves the API, rank 1 the probes only."""
    addr = f"localhost:{free_port()}"
    ports = [free_port(), free_port()]  # one host here; in a cluster both pods use the planned port
    procs = []
    for rank in (0, 1):
        plan = make_plan(group_argv(rank, 2, addr, ports[rank]), rank=rank, engine="simulator")
        env = rank_env(tmp_path, plan, rank, torch_path, POD_NAME=f"m-serving-0-{rank}", DSA_SHM_PATH="/tmp")
        env["PATH"] = "/usr/bin:/bin"  # no nvidia-smi: a node without GPUs
        procs.append(dsa_popen(["serve", "--rendezvous-timeout", OK_TIMEOUT, "--grace", "5"], env))
    try:
        for rank, proc in enumerate(procs):
            wait_status(f"http://127.0.0.1:{ports[rank]}/health", proc)
        status, ready = get(f"http://127.0.0.1:{ports[1]}/ready")
        assert status == 200 and ready["simulator"]["rank"] == 1
        assert get(f"http://127.0.0.1:{ports[1]}/v1/models")[0] == 404  # rank 1: probes only
        status, models = get(f"http://127.0.0.1:{ports[0]}/v1/models")
        assert status == 200 and models["data"][0]["id"] == "org/m"
        assert models["simulator"]["pod"] == "m-serving-0-0"
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=60) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        preflight = next(json.loads(ln) for ln in out.splitlines() if '"preflight"' in ln)
        assert preflight["engine"] == "simulator" and preflight["gpus"] == 0
        assert preflight["kernelChecks"] == "skipped: no GPU present (engine simulator)"
        assert "no GPU present: GPU and kernel checks skipped (engine simulator)" in err
        assert "group formed" in err and "SIMULATOR" in err and "not model output" in err


def test_a_deleted_pod_leaves_while_its_rank_waits_for_the_group(tmp_path, torch_path):
    """`serve` as PID 1 (as in a container, where the kernel drops signals PID 1 has no handler
    for), rank 1 waiting in torch for a leader that never comes: SIGTERM (pod deletion) ends it
    with 143 instead of leaving the pod Terminating until the rendezvous timeout (600 s here)."""
    plan = make_plan(group_argv(1, 2, f"localhost:{free_port()}"), rank=1, engine="simulator")
    env = rank_env(tmp_path, plan, 1, torch_path, DSA_SHM_PATH="/tmp")
    env["PATH"] = "/usr/bin:/bin"
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m", "dsa_runtime", "serve",
         "--rendezvous-timeout", OK_TIMEOUT],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # until rank 1 is inside torch's rendezvous
            seen.append(line)
            if "joining the group's rendezvous" in line:
                break
        else:
            pytest.fail("serve ended before joining:\n" + "".join(seen))
        (pid1,) = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        nspid = Path(f"/proc/{pid1}/status").read_text().split("NSpid:")[1].splitlines()[0].split()
        assert nspid[-1] == "1"  # PID 1 in its own namespace
        os.kill(int(pid1), signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM: forwarding" in err
