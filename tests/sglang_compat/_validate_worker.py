"""Subprocess side of validate.py: run SGLang's own post-parse validation on a CPU.

Run as ``python -S _validate_worker.py IN.json OUT.json`` with PYTHONPATH = one SGLang env plus
its validation extras.  For each case (an argv, the plan's environment, the planned accelerator):

- 0.5.12: ``prepare_server_args``' parser, ``ServerArgs.from_cli_args`` (which runs
  ``__post_init__``: every ``_handle_*`` step) and ``check_server_args`` (run by the engine at
  launch).
- 0.5.23: ``prepare_server_args``, ``resolve_once`` (the argument-group hooks in
  ``sglang/srt/arg_groups/``) and ``check_server_args`` (``validation_hook``).

What is not the real thing, and why:
- The model is a local directory holding a ``config.json`` (written here, no hub download): the
  published architecture, layer count and DSA indexer fields, and the checkpoint's quantization
  config.  No weights: validation reads only the config.
- Device queries answer for the planned accelerator (SGLang's own ``override_platform`` in 0.5.23;
  the ``utils.common`` probes SGLang calls in 0.5.12; ``torch.cuda.get_device_capability`` in both),
  and the node's RDMA NICs (``/sys/class/infiniband``) are those the spec names.  On AMD, the build
  is SGLang's ROCm image (aiter with Triton >= 3.5: ``aiter_can_use_preshuffle_paged_mqa``).
- GPU kernel packages (sgl_kernel, flashinfer, deep_gemm, flash_mla, tilelang, aiter, tvm_ffi)
  cannot load on a CPU; validation imports modules that import them but never calls a kernel, so
  they import as empty modules whose members raise if called.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import io
import json
import logging
import os
import sys
import tempfile
import traceback
import types
from typing import ClassVar

GPU_ONLY = ("sgl_kernel", "flashinfer", "deep_gemm", "flash_mla", "tilelang", "aiter", "tvm_ffi")


class _Kernel:
    """A member of a GPU kernel package: can be named, subclassed and imported, never run."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} is a GPU kernel; validation does not run kernels")

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Kernel(f"{self._name}.{name}")

    def __mro_entries__(self, bases):
        return (object,)


class _KernelPackage(types.ModuleType):
    __path__: ClassVar[list[str]] = []

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Kernel(f"{self.__name__}.{name}")


class _KernelFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in GPU_ONLY:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _KernelPackage(spec.name)

    def exec_module(self, module):
        pass


# The published checkpoints' config.json, reduced to what SGLang's argument resolution reads.
DEEPSEEK_V32 = {
    "architectures": ["DeepseekV32ForCausalLM"],
    "model_type": "deepseek_v32",
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 61,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "num_experts_per_tok": 8,
    "first_k_dense_replace": 3,
    "kv_lora_rank": 512,
    "q_lora_rank": 1536,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "vocab_size": 129280,
    "max_position_embeddings": 163840,
    "index_topk": 2048,
    "index_n_heads": 64,
    "index_head_dim": 128,
    "num_nextn_predict_layers": 1,
    "rope_theta": 10000,
    "rms_norm_eps": 1e-06,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "topk_method": "noaux_tc",
    "n_group": 8,
    "topk_group": 4,
    "routed_scaling_factor": 2.5,
    "norm_topk_prob": True,
    "scoring_func": "sigmoid",
    "moe_layer_freq": 1,
    "torch_dtype": "bfloat16",
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 40,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
}
GLM5 = {
    "architectures": ["GlmMoeDsaForCausalLM"],
    "model_type": "glm_moe_dsa",
    "hidden_size": 6144,
    "intermediate_size": 12288,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 78,
    "num_attention_heads": 64,
    "num_key_value_heads": 64,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "num_experts_per_tok": 8,
    "first_k_dense_replace": 3,
    "kv_lora_rank": 512,
    "q_lora_rank": 2048,
    "qk_nope_head_dim": 192,
    "qk_rope_head_dim": 64,
    "v_head_dim": 256,
    "vocab_size": 154880,
    "max_position_embeddings": 202752,
    "index_topk": 2048,
    "index_n_heads": 32,
    "index_head_dim": 128,
    "num_nextn_predict_layers": 1,
    "rms_norm_eps": 1e-05,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "n_group": 1,
    "topk_group": 1,
    "routed_scaling_factor": 2.5,
    "norm_topk_prob": True,
    "torch_dtype": "bfloat16",
}
ARCHITECTURE_CONFIG = {"DeepseekV32ForCausalLM": DEEPSEEK_V32, "GlmMoeDsaForCausalLM": GLM5}
QUANTIZATION_CONFIG = {
    "fp8": {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": [128, 128],
    },
    "nvfp4": {
        "quant_method": "modelopt",
        "quant_algo": "NVFP4",
        "group_size": 16,
        "kv_cache_quant_algo": None,
        "exclude_modules": ["lm_head"],
    },
    "mxfp4": {
        "quant_method": "quark",
        "export": {"kv_cache_group": [], "pack_method": "reorder"},
        "global_quant_config": {
            "input_tensors": {
                "dtype": "fp4",
                "qscheme": "per_group",
                "group_size": 32,
                "is_dynamic": True,
                "scale_format": "e8m0",
                "symmetric": None,
                "ch_axis": -1,
                "round_method": "half_even",
                "scale_type": "float",
                "observer_cls": "PerBlockMXObserver",
                "scale_calculation_mode": "even",
            },
            "weight": {
                "dtype": "fp4",
                "qscheme": "per_group",
                "group_size": 32,
                "is_dynamic": False,
                "scale_format": "e8m0",
                "symmetric": None,
                "ch_axis": -1,
                "round_method": "half_even",
                "scale_type": "float",
                "observer_cls": "PerBlockMXObserver",
                "scale_calculation_mode": "even",
            },
            "output_tensors": None,
            "bias": None,
            "target_device": None,
        },
        "exclude": ["lm_head"],
        "layer_quant_config": {},
        "layer_type_quant_config": {},
        "algo_config": None,
        "quant_mode": "eager_mode",
        "version": "0.10",
    },
}


def write_models(root: str) -> dict[tuple[str, str], str]:
    """One model directory per (architecture, quantization)."""
    dirs = {}
    for arch, config in ARCHITECTURE_CONFIG.items():
        for quant, qconfig in QUANTIZATION_CONFIG.items():
            d = os.path.join(root, f"{arch}-{quant}")
            os.makedirs(d)
            with open(os.path.join(d, "config.json"), "w") as fh:
                json.dump({**config, "quantization_config": qconfig}, fh)
            dirs[(arch, quant)] = d
    return dirs


# Device facts per architecture: CUDA capability (major, minor) and HIP's gfx9 numbering.
CAPABILITY = {"sm90": (9, 0), "sm100": (10, 0), "amd": (9, 4)}


class Device:
    """The planned accelerator, answering every device query SGLang makes while validating."""

    arch = "sm90"
    memory_mib = 141 * 1024
    name = "NVIDIA H200"
    ib_devices: tuple[str, ...] = ()  # the RDMA NICs of the node: those the spec names

    @classmethod
    def probes(cls) -> dict:
        hip = lambda: cls.arch == "amd"  # noqa: E731
        major = lambda: CAPABILITY[cls.arch][0]  # noqa: E731
        return {
            "get_device": lambda *a, **k: "cuda",
            "get_device_memory_capacity": lambda *a, **k: cls.memory_mib,
            "get_device_sm": lambda *a, **k: major() * 10 + CAPABILITY[cls.arch][1],
            "get_device_capability": lambda *a, **k: CAPABILITY[cls.arch],
            "get_device_name": lambda *a, **k: cls.name,
            "get_nvidia_driver_version": lambda *a, **k: (580, 95),
            "is_hip": hip,
            "is_cuda": lambda: not hip(),
            "is_cuda_alike": lambda: True,
            "is_npu": lambda: False,
            "is_xpu": lambda: False,
            "is_musa": lambda: False,
            "is_mps": lambda: False,
            "is_cpu": lambda: False,
            "is_hpu": lambda: False,
            "is_blackwell": lambda: cls.arch == "sm100",
            "is_blackwell_supported": lambda: cls.arch == "sm100",
            "is_sm100_supported": lambda *a: cls.arch == "sm100",
            "is_sm100_or_sm110_supported": lambda *a: cls.arch == "sm100",
            "is_sm110_supported": lambda *a: False,
            "is_sm90_supported": lambda *a: cls.arch == "sm90",
            "is_sm120_supported": lambda *a: False,
            "is_hopper_with_cuda_12_3": lambda *a: cls.arch == "sm90",
            "is_flashinfer_available": lambda: not hip(),
        }


IB_SYSFS = "/sys/class/infiniband"


def _stub_ib_sysfs() -> None:
    """SGLang lists /sys/class/infiniband to check --disaggregation-ib-device: answer for the node."""
    isdir, listdir = os.path.isdir, os.listdir

    def _isdir(path):
        return bool(Device.ib_devices) if str(path).rstrip("/") == IB_SYSFS else isdir(path)

    def _listdir(path="."):
        return list(Device.ib_devices) if str(path).rstrip("/") == IB_SYSFS else listdir(path)

    os.path.isdir, os.listdir = _isdir, _listdir


def _patch_probes(modules) -> None:
    probes = Device.probes()
    for mod in modules:
        for name, fn in probes.items():
            if hasattr(mod, name):
                setattr(mod, name, fn)


def _setup(version: str):
    """Import SGLang once with the probes answering for `Device`; return validate(argv)."""
    sys.meta_path.insert(0, _KernelFinder())
    _stub_ib_sysfs()
    import argparse

    import torch

    torch.cuda.get_device_capability = lambda *a, **k: CAPABILITY[Device.arch]
    torch.cuda.is_available = lambda: True
    torch.cuda.get_device_name = lambda *a, **k: Device.name
    torch.cuda.device_count = lambda: 8
    from sglang.srt import server_args as S
    from sglang.srt.utils import common as C

    # SGLang's ROCm images run aiter (SGLANG_USE_AITER=1) with Triton >= 3.5: the preshuffled
    # paged-MQA path, page size 64. On other GPUs the question does not arise.
    for name in ("sglang.srt.layers.attention.nsa.utils", "sglang.srt.layers.attention.dsa.utils"):
        with contextlib.suppress(ImportError):
            mod = importlib.import_module(name)
            mod.aiter_can_use_preshuffle_paged_mqa = lambda: Device.arch == "amd"

    modules = [S, C]
    if version == "0.5.12":
        _patch_probes(modules)

        def validate(argv):
            parser = argparse.ArgumentParser(prog="sglang serve")
            S.ServerArgs.add_cli_args(parser)
            args = S.ServerArgs.from_cli_args(parser.parse_args(argv))  # runs __post_init__
            args.check_server_args()

        return validate

    import pkgutil

    import sglang.srt.arg_groups as groups
    from sglang.srt.runtime_context import override_platform

    for info in pkgutil.iter_modules(groups.__path__):
        with contextlib.suppress(Exception):
            modules.append(importlib.import_module(f"sglang.srt.arg_groups.{info.name}"))
    _patch_probes(modules)

    def validate(argv):
        hip = Device.arch == "amd"
        facts = dict(
            is_cuda=not hip,
            is_hip=hip,
            is_npu=False,
            is_xpu=False,
            is_musa=False,
            is_mps=False,
            is_sm90=Device.arch == "sm90",
            is_sm100=Device.arch == "sm100",
            is_sm100_or_sm110=Device.arch == "sm100",
            is_sm110=False,
            is_sm120=False,
            is_blackwell=Device.arch == "sm100",
            is_hopper_with_cuda_12_3=Device.arch == "sm90",
            has_amx=False,
            has_flashinfer=not hip,
            device_sm=CAPABILITY[Device.arch][0] * 10 + CAPABILITY[Device.arch][1],
            device_capability=CAPABILITY[Device.arch],
        )
        with override_platform(**facts):
            args = S.prepare_server_args(argv)
            args.resolve_once()
            args.check_server_args()

    return validate


def _message(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    where = traceback.extract_tb(e.__traceback__)
    site = next((f for f in reversed(where) if "/sglang/" in f.filename), where[-1] if where else None)
    loc = f" [{site.filename.split('/sglang/', 1)[-1]}:{site.name}]" if site else ""
    return f"{type(e).__name__}: {text.splitlines()[0][:400]}{loc}"


def main(inp: str, outp: str) -> None:
    with open(inp) as fh:
        req = json.load(fh)
    version, cases = req["version"], req["cases"]
    real_stdout = sys.stdout
    sys.stdout = io.StringIO()
    logging.disable(logging.CRITICAL)
    results = []
    try:
        validate = _setup(version)
        with tempfile.TemporaryDirectory() as td:
            models = write_models(td)
            base_env = dict(os.environ)
            for case in cases:
                Device.arch = case["arch"]
                Device.memory_mib = case["memory_mib"]
                Device.name = case["device_name"]
                argv = list(case["argv"])
                argv[argv.index("--model-path") + 1] = models[(case["architecture"], case["quantization"])]
                ib = (
                    argv[argv.index("--disaggregation-ib-device") + 1]
                    if "--disaggregation-ib-device" in argv
                    else ""
                )
                Device.ib_devices = tuple(d.strip() for d in ib.split(",") if d.strip())
                os.environ.clear()
                os.environ.update(base_env)
                os.environ.update(case.get("env", {}))
                try:
                    validate(argv)
                    results.append({"ok": True})
                except SystemExit as e:  # argparse
                    results.append({"ok": False, "error": f"SystemExit: {e.code}"})
                except Exception as e:
                    results.append({"ok": False, "error": _message(e)})
            os.environ.clear()
            os.environ.update(base_env)
    finally:
        sys.stdout = real_stdout
    with open(outp, "w") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2])
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
    os._exit(0)
