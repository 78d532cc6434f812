"""preflight against the plan, with a fake nvidia-smi standing in for the node's GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from dsa_runtime import kernels as K
from dsa_runtime import preflight as PF
from dsa_runtime.errors import ExitCode, RuntimeFailure
from dsa_runtime.node import Gpu
from dsa_runtime.plan import Plan
from tests.runtime.conftest import REPO, dsa, make_plan, runtime_env
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


# --- which kernels preflight runs for the plan and the role (no GPU, no torch) ---------------


def _choices(prefill: str, decode: str, kv: str = "bf16", arch: str = "sm90"):
    return K.resolve(arch, prefill, decode, kv, "dsa")


def _summary(checks) -> list[tuple[str, bool, list[str], list[str]]]:
    return [(c.kernel, c.runnable, c.slots, c.planned) for c in checks]


def test_fp8_defaults_on_hopper_run_the_decode_kernel_for_both_slots():
    checks = PF.plan_checks(_choices("auto", "auto", "fp8_e4m3"), "serving", "sm90", "fp8_e4m3")
    assert _summary(checks) == [("flashmla_kv", True, ["prefill", "decode"], ["flashmla_kv"])]


def test_each_role_runs_its_own_slots():
    choices = _choices("flashmla_sparse", "flashmla_kv")
    assert _summary(PF.plan_checks(choices, "serving", "sm90", "bf16")) == [
        ("flashmla_sparse", True, ["prefill"], ["flashmla_sparse"]),
        ("flashmla_kv", True, ["decode"], ["flashmla_kv"]),
    ]
    assert [c.kernel for c in PF.plan_checks(choices, "prefill", "sm90", "bf16")] == ["flashmla_sparse"]
    assert [c.kernel for c in PF.plan_checks(choices, "decode", "sm90", "bf16")] == ["flashmla_kv"]


def test_a_kernel_without_a_run_check_is_import_checked_only():
    checks = PF.plan_checks(_choices("auto", "auto"), "decode", "sm90", "bf16")  # decode: fa3
    assert _summary(checks) == [("fa3", False, ["decode"], ["fa3"])]


@pytest.mark.parametrize(
    ("arch", "kv", "runs"),
    [
        ("sm90", "bf16", ("flashmla_sparse",)),
        ("sm90", "auto", ("flashmla_sparse",)),  # SGLang's auto is bf16 on Hopper
        ("sm90", "bfloat16", ("flashmla_sparse",)),
        ("sm90", "fp8_e4m3", ("flashmla_kv",)),
        ("sm100", "fp8_e4m3", ("flashmla_kv", "flashmla_sparse")),  # chosen per batch there
        ("sm100", "auto", ("flashmla_kv", "flashmla_sparse")),
    ],
)
def test_flashmla_auto_runs_what_sglang_resolves_it_to(arch, kv, runs):
    assert PF.runs_as("flashmla_auto", arch, kv) == runs
    checks = PF.plan_checks(
        _choices("flashmla_auto", "fa3" if arch == "sm90" else "trtllm", kv, arch), "prefill", arch, kv
    )
    assert [(c.kernel, c.planned) for c in checks] == [(k, ["flashmla_auto"]) for k in runs]


def test_flashmla_kv_on_a_bf16_cache_still_runs_the_fp8_kernel():
    """SGLang quantizes a bf16 cache for flashmla_kv: the kernel is the same."""
    assert PF.runs_as("flashmla_kv", "sm90", "bf16") == ("flashmla_kv",)
    assert PF.runs_as("fa3", "sm90", "bf16") == ()


@pytest.fixture
def h200_node(monkeypatch):
    monkeypatch.setattr(PF, "detect_gpus", lambda: [Gpu("NVIDIA H200", "9.0")] * 8)
    monkeypatch.setitem(sys.modules, "flash_mla", types.ModuleType("flash_mla"))
    monkeypatch.setitem(sys.modules, "sgl_kernel", types.ModuleType("sgl_kernel"))


def _plan(prefill: str, decode: str, kv: str, role: str = "serving") -> Plan:
    plan = make_plan(["x"], role=role)
    plan["roles"][0]["kernels"] = {"prefill": prefill, "decode": decode, "kvCacheDtype": kv}
    return Plan.model_validate(plan)


def _recording(results: dict[str, dict]):
    calls: list[tuple[str, str, str, int]] = []

    def runner(kernel):
        def run(arch, shape, iters):
            calls.append((kernel, arch, shape, iters))
            return dict(results[kernel])

        return run

    return calls, {k: runner(k) for k in results}


OK = {"ok": True, "relErr": 0.002, "tolerance": 0.01, "reason": "ok"}


def test_report_lists_every_kernel_check(h200_node, tmp_path):
    calls, runners = _recording({"flashmla_sparse": OK, "flashmla_kv": OK})
    plan = _plan("flashmla_sparse", "fa3", "bf16")
    report = PF.preflight(
        plan, "serving", shm_path=str(tmp_path), shape="deepseek-v3.2", iters=7, runners=runners
    )
    assert calls == [("flashmla_sparse", "sm90", "deepseek-v3.2", 7)]
    assert report["kernelChecks"] == [
        {"kernel": "flashmla_sparse", "slots": ["prefill"], "check": "ran", **OK,
         "function": "flash_mla_sparse_fwd (bf16 sparse prefill)"},
        {"kernel": "fa3", "slots": ["decode"], "check": "import-checked only",
         "why": "preflight has no run check for fa3; its module sgl_kernel imports"},
    ]  # fmt: skip
    json.dumps(report)


def test_auto_entry_names_what_was_planned(h200_node, tmp_path):
    calls, runners = _recording({"flashmla_sparse": OK, "flashmla_kv": OK})
    report = PF.preflight(
        _plan("flashmla_auto", "flashmla_kv", "fp8_e4m3"), "serving", shm_path=str(tmp_path), runners=runners
    )
    [entry] = report["kernelChecks"]
    assert (entry["kernel"], entry["slots"], entry["planned"]) == (
        "flashmla_kv",
        ["prefill", "decode"],
        ["flashmla_auto", "flashmla_kv"],
    )
    assert [c[0] for c in calls] == ["flashmla_kv"]


def test_no_run_kernel_runs_nothing_and_says_so(h200_node, tmp_path):
    calls, runners = _recording({"flashmla_kv": OK})
    report = PF.preflight(
        _plan("auto", "auto", "fp8_e4m3"),
        "serving",
        shm_path=str(tmp_path),
        run_kernel=False,
        runners=runners,
    )
    assert calls == []
    assert report["kernelChecks"][0]["check"] == "import-checked only"
    assert report["kernelChecks"][0]["why"] == "runs skipped (--no-run-kernel)"


def test_the_first_wrong_kernel_fails_preflight(h200_node, tmp_path, capsys):
    bad = {"ok": False, "relErr": 0.04, "tolerance": 0.01, "reason": "relative error 0.04 exceeds 0.01"}
    calls, runners = _recording({"flashmla_sparse": bad, "flashmla_kv": OK})
    with pytest.raises(RuntimeFailure) as e:
        PF.preflight(
            _plan("flashmla_sparse", "flashmla_kv", "bf16"),
            "serving",
            shm_path=str(tmp_path),
            runners=runners,
        )
    assert e.value.code == ExitCode.KERNEL_WRONG
    assert e.value.message.startswith("flash_mla_sparse_fwd is wrong on this GPU: relative error 0.04")
    assert "set spec.serving.kernels.prefill to another kernel" in e.value.message
    assert [c[0] for c in calls] == ["flashmla_sparse"]  # stops at the first
    report = json.loads(capsys.readouterr().out)
    assert report["preflight"] == "failed" and report["kernelChecks"][0]["ok"] is False


def test_a_kernel_that_raises_fails_like_a_wrong_one(h200_node, tmp_path, capsys):
    def boom(arch, shape, iters):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")

    with pytest.raises(RuntimeFailure) as e:
        PF.preflight(
            _plan("auto", "auto", "fp8_e4m3"),
            "serving",
            shm_path=str(tmp_path),
            runners={"flashmla_kv": boom},
        )
    assert e.value.code == ExitCode.KERNEL_WRONG
    assert "it raised RuntimeError: CUDA error: an illegal memory access was encountered:" in e.value.message
    assert "spec.serving.kernels.prefill and spec.serving.kernels.decode" in e.value.message
    assert json.loads(capsys.readouterr().out)["preflight"] == "failed"


SHIM = """
import sys
from dsa_runtime import preflight as PF
reason = "relative error 0.0401 exceeds 0.01"
PF.RUNNERS["flashmla_kv"] = lambda arch, shape, iters: {"ok": False, "relErr": 0.0401, "reason": reason}
from dsa_runtime.cli import main
sys.argv = ["dsa-runtime", *sys.argv[1:]]
main()
"""


def test_a_wrong_decode_kernel_exits_kernel_wrong_with_the_json_line(env_for, tmp_path):
    """The command as a pod runs it, with a wrong kernel planted in place of FlashMLA's."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "flash_mla.py").write_text("")
    (tmp_path / "shim.py").write_text(SHIM)
    plan = make_plan(["x"], role="decode")
    plan["roles"][0]["kernels"] = {"prefill": "auto", "decode": "auto", "kvCacheDtype": "fp8_e4m3"}
    env = env_for(plan, DSA_ROLE="decode")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "mods"), env.get("PYTHONPATH", "")])
    res = subprocess.run(
        [sys.executable, str(tmp_path / "shim.py"), "preflight"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    _one_line_error(
        res, ExitCode.KERNEL_WRONG, "flash_mla_with_kvcache is wrong on this GPU: relative error 0.0401"
    )
    report = json.loads(res.stdout.strip())
    assert report["preflight"] == "failed"
    assert report["kernelChecks"][0]["kernel"] == "flashmla_kv" and report["kernelChecks"][0]["slots"] == [
        "decode"
    ]
