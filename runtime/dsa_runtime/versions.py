"""Pins of the serving image, in one place.

`images/runtime/Dockerfile` repeats these as ARG defaults (Docker cannot import Python);
`tests/runtime/test_images.py` fails when the two drift apart.
"""

from __future__ import annotations

SGLANG_VERSION = "0.5.23"
"""SGLang release the image ships by default; the plan's `sglangVersion` should match it."""

SGLANG_KERNEL_VERSION = "0.4.10"
"""`sglang-kernel` as sglang 0.5.23 pins it (Requires-Dist of its wheel)."""

FLASHINFER_VERSION = "0.7.2"
"""`flashinfer-python[cu13]` as sglang 0.5.23 pins it."""

FLASH_MLA_VERSION = "1.0.0"
"""`sgl-flash-mla`: FlashMLA as SGLang ships it; preflight's sparse kernel comes from it."""

ROUTER_PACKAGE = "sglang-router"
ROUTER_VERSION = "0.3.2"
"""The router; may become `smg` (one ARG pair in the Dockerfile to change)."""

CUDA_BASE_IMAGE = "nvidia/cuda:13.0.1-devel-ubuntu24.04"
"""CUDA 13 to match flashinfer's cu13 build and torch 2.14's default wheels."""

PYTHON_BASE_IMAGE = "python:3.11.14-slim-bookworm"
"""Base of the operator image (root Dockerfile)."""

SGL_EVAL_VERSION = "0.1.3"
"""`sgl-eval`: SGLang's accuracy harness for GPQA and AIME (0.5.23's run_eval hands them to it)."""

EVAL_TARGET = "/opt/eval"
"""Where the image installs the harness (`pip --target`), apart from the venv: sgl-eval's
`datasets<5` needs huggingface-hub<2, the runtime's fetch-model pins 2.4.0. `dsa-runtime evaluate`
puts it first on the harness's PYTHONPATH (DSA_EVAL_PYTHONPATH); torch comes from the venv."""

# The harness, installed with --no-deps, every version exact: `sglang.test.few_shot_gsm8k` (gsm8k)
# and `sgl-eval` (gpqa-diamond, aime25). The sgl-eval part is pip's resolution of sgl-eval
# 0.1.3 with Python 3.11 on 2026-12-05 (newest allowed), constrained to SGLang 0.5.23's own pins
# (openai, python-dateutil<3) and to pyproject's (pydantic, pyyaml, filelock). The rest is what
# few_shot_gsm8k's import chain loads at module level, found by importing it with `python -S` from
# this list alone until nothing was missing (torch excepted: the image's venv has it).
# tests/sglang_compat/envs.py installs the same list for the tests (env `eval`).
EVAL_PACKAGES: list[str] = [
    f"sglang=={SGLANG_VERSION}",  # few_shot_gsm8k itself; --no-deps: none of its GPU stack
    f"sgl-eval=={SGL_EVAL_VERSION}",
    # few_shot_gsm8k's import chain (sglang.lang, sglang.utils, sglang.srt.utils), beyond sgl-eval's:
    "msgspec==0.23.0",
    "orjson==3.13.0",
    "psutil==7.2.2",
    "pybase64==1.5.1",
    "pyzmq==27.3.0",
    "starlette==1.10.0",
    "ipython==9.18.1",  # sglang.utils imports IPython.display; it needs traitlets and pygments only
    "traitlets==5.16.1",
    "pygments==2.21.0",
    # sgl-eval's requirements and theirs:
    "openai==2.8.0",  # SGLang 0.5.23's pin; sgl-eval allows >=1,<3
    "httpx==0.29.0",
    "httpcore==1.0.9",
    "h11==0.16.0",
    "anyio==4.16.0",
    "sniffio==1.3.1",
    "distro==1.9.0",
    "jiter==0.19.0",
    "pydantic==2.14.3",  # pyproject's pin
    "pydantic_core==2.50.4",  # pydantic 2.14.3's
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing_extensions==4.16.0",
    "tqdm==4.70.1",
    "PyYAML==6.0.3",  # pyproject's pin
    "math-verify==0.9.0",  # the AIME grader (sgl-eval asks for its antlr4_9_3 extra)
    "latex2sympy2_extended==1.11.0",  # math-verify 0.9.0's pin
    "antlr4-python3-runtime==4.9.3",  # the antlr4_9_3 extra: the LaTeX grammar was built with it
    "sympy==1.14.0",
    "mpmath==1.3.0",
    "numpy==2.4.6",
    "pandas==2.3.3",  # sgl-eval wants <3
    "python-dateutil==2.9.0.post0",  # SGLang 0.5.23 wants <3
    "six==1.17.0",
    "pytz==2026.6",
    "tzdata==2026.6",
    "datasets==4.8.5",  # sgl-eval wants <5; GPQA's preparation downloads through it
    "huggingface_hub==1.33.0",  # datasets 4.8.5 wants <2.0 (hence the separate target)
    "hf-xet==1.8.0",
    "click==8.5.1",
    "filelock==4.2.11",  # pyproject's pin
    "fsspec==2026.2.0",  # datasets 4.8.5 wants <=2026.2.0
    "pyarrow==26.0.1",
    "dill==0.4.1",  # datasets wants <0.4.2
    "multiprocess==0.70.19",  # datasets wants <0.70.20
    "xxhash==4.1.0",
    "aiohttp==3.14.5",  # fsspec[http]; also sglang.lang's endpoint
    "aiohappyeyeballs==2.7.1",
    "aiosignal==1.4.0",
    "attrs==26.1.0",
    "frozenlist==1.8.0",
    "multidict==7.2.1",
    "propcache==0.5.4",
    "yarl==1.25.1",
    "idna==3.20",
    "requests==2.34.2",
    "urllib3==2.8.0",
    "certifi==2026.10.19.post1",
    "charset-normalizer==3.5.3",
    "packaging==26.4",
    "pillow==11.3.0",  # sgl-eval wants <12
    "editdistance==0.8.1",
]

PINS: dict[str, str] = {
    "SGLANG_VERSION": SGLANG_VERSION,
    "SGLANG_KERNEL_VERSION": SGLANG_KERNEL_VERSION,
    "FLASHINFER_VERSION": FLASHINFER_VERSION,
    "FLASH_MLA_VERSION": FLASH_MLA_VERSION,
    "ROUTER_PACKAGE": ROUTER_PACKAGE,
    "ROUTER_VERSION": ROUTER_VERSION,
    "CUDA_BASE_IMAGE": CUDA_BASE_IMAGE,
    "SGLEVAL_VERSION": SGL_EVAL_VERSION,  # not SGL_…: SGLang warns about SGL_* variables
}
"""Dockerfile ARG name -> value, for the drift test."""


if __name__ == "__main__":  # the image's harness layer: `python -P versions.py` prints EVAL_PACKAGES
    print("\n".join(EVAL_PACKAGES))
