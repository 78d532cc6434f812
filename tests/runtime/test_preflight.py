"""preflight against the plan, with a fake nvidia-smi standing in for the node's GPUs."""

from __future__ import annotations

import json

import pytest

from dsa_runtime.errors import ExitCode
from tests.runtime.conftest import dsa, make_plan, runtime_env
from tests.runtime.test_cli import _one_line_error


@pytest.fixture
def env_for(tmp_path, write_plan, fake_nvidia_smi):
    def make(plan: dict, gpus: int = 8, name: str = "NVIDIA H200", cap: str = "9.0", **kw):
        env = runtime_env(tmp_path, write_plan(plan), DSA_SHM_PATH=str(tmp_path), **kw)
        env["PATH"] = fake_nvidia_smi(gpus, name, cap)
        return env

    return make


def test_ok_prints_one_json_line(env_for):
    res = dsa(["preflight"], env_for(make_plan(["x"], roles=[])))
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip())
    assert report["preflight"] == "ok" and report["gpus"] == 8
    assert report["gpu"] == "NVIDIA H200" and report["computeCapability"] == "9.0"


def test_fewer_gpus_than_planned(env_for):
    res = dsa(["preflight"], env_for(make_plan(["x"]), gpus=4))
    _one_line_error(res, ExitCode.GPU_MISMATCH, "set spec.hardware.gpusPerNode to 4")


def test_wrong_architecture(env_for):
    res = dsa(["preflight"], env_for(make_plan(["x"]), name="NVIDIA B200", cap="10.0"))
    _one_line_error(res, ExitCode.GPU_MISMATCH, "plan is for h200 (sm90)")


def test_no_gpu(env_for):
    res = dsa(["preflight"], env_for(make_plan(["x"]), gpus=0))
    _one_line_error(res, ExitCode.GPU_MISMATCH, "request nvidia.com/gpu: 8")


def test_blackwell_kernel_on_hopper(env_for):
    plan = make_plan(["x"], role="decode")
    plan["roles"][0]["kernels"]["decode"] = "trtllm"
    res = dsa(["preflight"], env_for(plan, DSA_ROLE="decode"))
    _one_line_error(res, ExitCode.KERNEL_UNSUPPORTED, "set spec.decode.kernels.decode to fa3 or auto")


def test_kernel_module_missing(env_for):
    try:
        import flash_mla  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("flash_mla is installed here")
    res = dsa(["preflight"], env_for(make_plan(["x"])))
    _one_line_error(res, ExitCode.KERNEL_MISSING, "needs the Python module flash_mla")


def test_shm_too_small(env_for):
    plan = make_plan(["x"], roles=[], shmSizeBytes=2**62)
    _one_line_error(dsa(["preflight"], env_for(plan)), ExitCode.SHM_TOO_SMALL, "memory emptyDir")


def test_local_model_missing(env_for, tmp_path):
    plan = make_plan(["x"], roles=[])
    plan["model"]["localPath"] = str(tmp_path / "models" / "absent")
    _one_line_error(dsa(["preflight"], env_for(plan)), ExitCode.MODEL_MISSING, "absent")


def test_serve_runs_preflight_first_and_passes_its_code(env_for, script):
    plan = make_plan(script("raise SystemExit('must not start')"))
    res = dsa(["serve"], env_for(plan, gpus=2))
    _one_line_error(res, ExitCode.GPU_MISMATCH, "this node has 2")


def test_simulator_without_gpus_says_the_checks_were_skipped(tmp_path, write_plan):
    plan = make_plan(["x"], engine="simulator")
    plan["model"]["localPath"] = str(tmp_path / "absent")  # the simulator loads no model
    env = runtime_env(tmp_path, write_plan(plan), DSA_SHM_PATH=str(tmp_path), PATH="/usr/bin:/bin")
    res = dsa(["preflight"], env)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip())
    assert report["engine"] == "simulator" and report["gpus"] == 0
    assert report["kernelChecks"] == "skipped: no GPU present (engine simulator)"
    assert "no GPU present: GPU and kernel checks skipped" in res.stderr


def test_simulator_on_a_wrong_gpu_still_fails(env_for):
    plan = make_plan(["x"], engine="simulator")
    res = dsa(["preflight"], env_for(plan, name="NVIDIA B200", cap="10.0"))
    _one_line_error(res, ExitCode.GPU_MISMATCH, "plan is for h200 (sm90)")


def test_sglang_without_gpus_names_the_simulator_as_an_explicit_choice(env_for):
    res = dsa(["preflight"], env_for(make_plan(["x"]), gpus=0))
    _one_line_error(res, ExitCode.GPU_MISMATCH, "spec.runtime.engine: simulator")
