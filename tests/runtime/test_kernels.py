import pytest

from dsa_runtime import kernels as K
from dsa_runtime.errors import ExitCode, RuntimeFailure


def test_table_as_documented():
    assert K.allowed("sm90", "nsa", "decode") == sorted(
        ["flashmla_sparse", "flashmla_kv", "flashmla_auto", "fa3", "tilelang"]
    )
    sm100 = set(K.allowed("sm100", "dsa", "decode"))
    assert {"trtllm", "flashmla_sparse_q8", "flashinfer_sparse_mla", "triton_sparse_mla"} <= sm100
    assert "flashmla_sparse_q8" not in K.allowed("sm100", "nsa", "decode")
    assert "triton" not in sm100  # SGLang 0.5.23: ROCm/HIP only
    assert "aiter" in K.allowed("amd", "dsa", "prefill")


def test_runtime_and_planner_agree_on_every_kernel():
    """A plan the planner accepts must not be refused by the pod on the same GPU, and the
    reverse: per version and GPU the same kernels, and the same defaults for `auto`."""
    from dsa_operator import dialects
    from dsa_operator import kernels as planner

    for version, name in (("0.5.12", "nsa"), ("0.5.16", "transitional"), ("0.5.23", "dsa")):
        d = dialects.dialect_for(version)
        for arch in ("sm90", "sm100", "amd"):
            want = sorted(k for k in d.kernels if planner.wrong_gpu(k, "decode", arch, d) is None)
            assert K.allowed(arch, name, "prefill") == want, (version, arch)
            assert K.allowed(arch, name, "decode") == want, (version, arch)
            for kv in ("bf16", "fp8_e4m3"):
                assert K.default_kernels(arch, kv, name) == planner.default_kernels(arch, kv, d)


@pytest.mark.parametrize(
    ("arch", "family"),
    [
        ("sm90", "sm90"),
        ("9.0", "sm90"),
        ("sm100", "sm100"),
        ("sm103", "sm100"),
        ("gfx942", "amd"),
        ("sm120", "sm120"),
    ],
)
def test_arch_family(arch, family):
    assert K.arch_family(arch) == family


def test_auto_resolves_to_seed_defaults():
    got = {c.slot: c.resolved for c in K.resolve("sm90", "auto", "auto", "auto", "dsa")}
    assert got == {"prefill": "flashmla_sparse", "decode": "fa3"}
    got = {c.slot: c.resolved for c in K.resolve("sm100", "auto", "auto", "auto", "dsa")}
    assert got == {"prefill": "trtllm", "decode": "trtllm"}  # fp8 KV by default on SM100
    got = {c.slot: c.resolved for c in K.resolve("sm90", "auto", "auto", "fp8_e4m3", "dsa")}
    assert got == {"prefill": "flashmla_kv", "decode": "flashmla_kv"}


def test_blackwell_kernel_on_hopper_names_the_fix():
    choices = K.resolve("sm90", "flashmla_sparse", "trtllm", "bf16", "dsa")
    with pytest.raises(RuntimeFailure) as e:
        K.check_compatible("sm90", choices, "dsa", "spec.serving")
    assert e.value.code == ExitCode.KERNEL_UNSUPPORTED
    assert "set spec.serving.kernels.decode to fa3 or auto" in e.value.message


def test_fa3_on_blackwell_fails():
    choices = K.resolve("sm100", "fa3", "trtllm", "bf16", "dsa")
    with pytest.raises(RuntimeFailure, match=r"spec\.decode\.kernels\.prefill to flashmla_sparse"):
        K.check_compatible("sm100", choices, "dsa", "spec.decode", "bf16")


def test_modules_needed():
    choices = K.resolve("sm90", "flashmla_sparse", "fa3", "bf16", "dsa")
    assert K.modules_needed(choices) == {"flash_mla": "flashmla_sparse", "sgl_kernel": "fa3"}
