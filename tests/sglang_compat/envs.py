"""Real-parser environments for SGLang and its router, and the helpers the tests call.

Each environment is a ``pip install --no-deps --target`` directory under
``~/.cache/dsa-operator/`` (override with ``DSA_SGLANG_CACHE``), keyed by name and by a hash of
its exact package list, so a change to a list installs a fresh directory.  Every SGLang version
gets its own directory (their transformers/openai pins differ); PyTorch and its CUDA libraries
live in one shared directory that is put on ``PYTHONPATH`` after the version's own.

Nothing here imports sglang into the calling process: parsing runs in a subprocess
(``_worker.py``) with ``python -S`` and ``PYTHONPATH`` = the environment's directories only, so
the test venv's site-packages never mix in and two versions never meet in one interpreter.

CLI::

    python tests/sglang_compat/envs.py ensure 0.5.23        # or 0.5.12, 0.5.16, router, smg, all
    python tests/sglang_compat/envs.py ensure validate-0.5.23   # + what SGLang's validation imports
    python tests/sglang_compat/envs.py ensure eval          # the accuracy harness, as the image has it
    python tests/sglang_compat/envs.py parse 0.5.23 -- --model-path m --tp-size 8
    python tests/sglang_compat/envs.py describe 0.5.23      # every action of the parser, as JSON
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_worker.py"

# The wheels are cp311 builds: the interpreter that installs and runs the envs must be 3.11.
PYTHON = os.environ.get("DSA_SGLANG_PYTHON", sys.executable)

# --------------------------------------------------------------------------------------------
# Package lists.  Every version is exact.  Versions of the light packages are the newest on PyPI
# on 2026-12-01 that satisfy the pins of the sglang/transformers wheels that need them; they were
# found by importing sglang.srt.server_args until it stopped raising ModuleNotFoundError.
# --------------------------------------------------------------------------------------------

# PyTorch, shared by every SGLang env.  PyPI's Linux torch wheels are CUDA builds; they run on a
# CPU, but `import torch` dlopens the CUDA libraries (libcudart, libcublas, libcudnn, libnccl...,
# all DT_NEEDED by libtorch_cpu/_C), so `torch --no-deps` alone does not import: the nvidia-*
# wheels are required.  This is the full resolution of `torch==2.14.1 torchvision==0.29.1`
# (pip --dry-run --report), frozen.  ~5.5 GiB on disk, installed once for all versions.
TORCH_PACKAGES = [
    "torch==2.14.1",  # 0.5.23's pin; 0.5.12 pins 2.11.0 but parses fine with 2.14.1 (one install)
    "torchvision==0.29.1",  # matches torch 2.14.1; 0.5.12's import chain needs it to load
    "triton==3.8.0",  # torch 2.14.1 requires triton~=3.8.0
    # CUDA runtime libraries that torch 2.14.1 (cu130) pins or pulls through cuda-toolkit[...]:
    "cuda-toolkit==13.0.3.0",
    "cuda-bindings==13.5.0",
    "cuda-pathfinder==1.9.1",
    "nvidia-cudnn-cu13==9.24.0.43",
    "nvidia-cusparselt-cu13==0.8.1",
    "nvidia-nccl-cu13==2.30.7",
    "nvidia-nvshmem-cu13==3.4.5",
    "nvidia-cublas==13.1.1.3",
    "nvidia-cuda-cupti==13.0.85",
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cufft==12.0.0.61",
    "nvidia-cufile==1.15.1.6",
    "nvidia-curand==10.4.0.35",
    "nvidia-cusolver==12.0.4.66",
    "nvidia-cusparse==12.6.3.3",
    "nvidia-nvjitlink==13.5.37",
    "nvidia-nvtx==13.0.85",
    # torch's pure-Python requirements, as resolved:
    "filelock==4.3.1",
    "fsspec==2026.9.0",
    "Jinja2==3.1.6",
    "MarkupSafe==3.0.4",
    "networkx==3.6.1",
    "numpy==2.4.6",
    "pillow==13.0.0",  # torchvision
    "setuptools==84.2.1",
    "sympy==1.14.0",
    "mpmath==1.3.0",
    "typing_extensions==4.16.0",  # also pydantic (>=4.16.0)
]

# What `sglang.srt.server_args` (and its import chain: utils.common, configs, function_call,
# parser) imports at module level, in every version we test.
_LIGHT_COMMON = [
    # aiohttp and its dependencies (sglang.srt.utils.common)
    "aiohttp==3.14.5",
    "aiohappyeyeballs==2.7.1",
    "aiosignal==1.4.0",
    "attrs==26.1.0",
    "frozenlist==1.8.0",
    "multidict==7.2.1",
    "propcache==0.5.4",
    "yarl==1.25.1",
    "idna==3.20",
    # requests (sglang.srt.utils.common)
    "requests==2.34.2",
    "urllib3==2.8.0",
    "certifi==2026.10.19.post1",
    # openai client types (function_call / entrypoints protocol) and its dependencies
    "httpx==0.28.1",
    "httpcore==1.0.9",
    "h11==0.16.0",
    "anyio==4.16.0",
    "sniffio==1.3.1",
    "distro==1.9.0",
    # pydantic (protocol models); pydantic 2.14.4 pins pydantic-core==2.50.5
    "pydantic==2.14.4",
    "pydantic_core==2.50.5",
    "annotated_types==0.8.0",
    "typing_inspection==0.4.5",
    # misc module-level imports of sglang.srt.utils / server_args
    "orjson==3.13.0",
    "psutil==7.2.2",
    "pybase64==1.5.1",
    "pyzmq==27.3.0",
    "packaging==26.4",
    "tqdm==4.70.1",
    "starlette==1.10.0",
    "ipython==9.18.1",  # sglang.srt.utils.common imports IPython
    "traitlets==5.16.1",
    "pygments==2.21.0",
    "regex==2026.11.19",
    "pyyaml==6.0.4",
    "partial_json_parser==0.2.1.1.post7",  # function_call parsers
    "dill==0.4.1",
    "safetensors==0.8.0",
]

SGLANG_PACKAGES: dict[str, list[str]] = {
    # The seed's dialect ("nsa" flags).
    "0.5.12": [
        "sglang==0.5.12",
        "transformers==5.6.0",  # sglang 0.5.12's own pin; newer transformers clash with it
        "huggingface-hub==1.33.0",  # transformers 5.6.0 wants >=1.5.0,<2.0 (2.x: ImportError)
        "tokenizers==0.22.2",  # transformers 5.6.0 wants >=0.22.0,<=0.23.0
        "openai==2.6.1",  # sglang 0.5.12's pin
        "sentencepiece==0.2.3",  # newest; 0.5.12 does not pin it
        *_LIGHT_COMMON,
    ],
    # Transitional: nsa and dsa names both accepted.
    "0.5.16": [
        "sglang==0.5.16",
        "transformers==5.12.1",  # sglang 0.5.16's pin
        "huggingface-hub==1.33.0",  # transformers 5.12.1 wants <2.0
        "tokenizers==0.22.2",
        "openai==2.6.1",  # sglang 0.5.16's pin
        "sentencepiece==0.2.1",
        "msgspec==0.23.0",
        "xgrammar==0.2.1",  # sglang 0.5.16's pin; its server_args chain imports xgrammar
        "apache-tvm-ffi==0.1.11",  # sglang 0.5.16's pin; xgrammar 0.2.1 loads its lib with it
        *_LIGHT_COMMON,
    ],
    # The newest dialect ("dsa" flags).  Its server_args no longer imports transformers at
    # module level, but we keep the pinned one so the env matches the release's own pins.
    "0.5.23": [
        "sglang==0.5.23",
        "transformers==5.19.0",  # sglang 0.5.23's pin
        "tokenizers==0.23.2",  # sglang 0.5.23's pin
        "openai==2.8.0",  # sglang 0.5.23's pin
        "sentencepiece==0.2.1",  # sglang 0.5.23's pin
        "msgspec==0.23.0",  # server_args imports msgspec (ServerArgs is a msgspec Struct)
        *_LIGHT_COMMON,
    ],
}

# What SGLang's post-parse validation (ServerArgs.__post_init__ in 0.5.12, resolve_once in 0.5.23)
# imports beyond the parser: the model-config and quantization modules.  Found, like the lists
# above, by running validate.py until it stopped raising ModuleNotFoundError; newest on PyPI on
# 2026-12-03.  Kept apart from SGLANG_PACKAGES so the parser envs (and their hashes) stay as they are.
VALIDATION_PACKAGES: dict[str, list[str]] = {
    "0.5.12": [
        "einops==0.8.2",  # layers.moe.moe_runner.deep_gemm
        "compressed-tensors==0.20.1",  # layers.quantization.compressed_tensors
        "loguru==0.7.3",  # compressed-tensors
        "gguf==0.19.0",  # layers.quantization.gguf
    ],
    "0.5.23": [
        "einops==0.8.2",
        "compressed-tensors==0.20.1",
        "loguru==0.7.3",
        "gguf==0.19.0",
        "huggingface-hub==1.33.0",  # configs; 0.5.23's parser env has none (transformers wants <3.0)
    ],
}

# Routers.  Their router_args modules only import argparse/dataclasses and the package's own
# Rust extension (abi3 wheel, loads on any x86_64 glibc), so no other package is needed.
ROUTER_PACKAGES: dict[str, list[str]] = {
    # The last release that ships the `sglang_router` module (python -m sglang_router.launch_router).
    "sglang_router": ["sglang-router==0.3.2"],
    # Its successor (same authors, renamed): module `smg` (python -m smg.launch_router).
    "smg": ["smg==1.13.0"],
}

ROUTER_MODULES = {
    "sglang_router.launch_router": "sglang_router",
    "smg.launch_router": "smg",
}
SERVER_MODULES = {"sglang.launch_server"}

DEFAULT_ROUTER = "sglang_router"

# The accuracy harness (`dsa-runtime evaluate`): few_shot_gsm8k and sgl-eval, exactly the list the
# runtime image installs into its own --target dir (dsa_runtime.versions.EVAL_PACKAGES), with torch
# from the shared dir as the image's venv provides it. Put on the harness's PYTHONPATH through
# DSA_EVAL_PYTHONPATH.
EVAL_ENV = "eval"


# --------------------------------------------------------------------------------------------
# Installation
# --------------------------------------------------------------------------------------------


def cache_root() -> Path:
    return Path(os.environ.get("DSA_SGLANG_CACHE", Path.home() / ".cache" / "dsa-operator"))


def _key(packages: Sequence[str]) -> str:
    # The interpreter's version, not its path: a clone elsewhere (CI) reuses the same dirs.
    blob = json.dumps(sorted(packages)).encode() + sys.version.encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _env_dir(name: str, packages: Sequence[str]) -> Path:
    return cache_root() / f"{name}-{_key(packages)}"


def _log(msg: str) -> None:
    print(f"[sglang-envs] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _install(name: str, packages: Sequence[str]) -> Path:
    """Install ``packages`` (exact pins, --no-deps) into a cached target dir; return it."""
    target = _env_dir(name, packages)
    marker = target / ".dsa-complete.json"
    if marker.exists():
        return target
    with _locked(cache_root() / f".{name}.lock"):
        if marker.exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_root()))
        t0 = time.monotonic()
        _log(f"installing {name} ({len(packages)} packages) into {target}")
        cmd = [
            PYTHON,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-compile",
            "--disable-pip-version-check",
            "--target",
            str(tmp),
            *packages,
        ]
        try:
            subprocess.run(cmd, check=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / ".dsa-complete.json").write_text(
            json.dumps({"packages": list(packages), "seconds": round(time.monotonic() - t0, 1)})
        )
        if target.exists():  # a half-written leftover without marker
            shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        _log(f"installed {name} in {time.monotonic() - t0:.0f}s")
        # Drop older dirs of the same name (a changed package list).
        for old in cache_root().glob(f"{name}-*"):
            if old != target and old.is_dir() and len(old.name) == len(target.name):
                shutil.rmtree(old, ignore_errors=True)
    return target


def env_names() -> list[str]:
    return [*SGLANG_PACKAGES, *ROUTER_PACKAGES, *(f"validate-{v}" for v in VALIDATION_PACKAGES), EVAL_ENV]


def eval_packages() -> list[str]:
    from dsa_runtime.versions import EVAL_PACKAGES

    return list(EVAL_PACKAGES)


def torch_path() -> Path:
    """The PYTHONPATH dir holding torch 2.14.1 (the `simulator` extra's pin), installed on first use."""
    return _install("torch-2.14.1", TORCH_PACKAGES)


def ensure(name: str) -> list[Path]:
    """Install (first use) and return the PYTHONPATH dirs of env ``name`` (a version or router)."""
    if name in SGLANG_PACKAGES:
        own = _install(f"sglang-{name}", SGLANG_PACKAGES[name])
        torch = _install("torch-2.14.1", TORCH_PACKAGES)
        return [own, torch]
    if name in ROUTER_PACKAGES:
        return [_install(f"router-{name}", ROUTER_PACKAGES[name])]
    if name == EVAL_ENV:
        return [_install(EVAL_ENV, eval_packages()), torch_path()]
    if name.startswith("validate-") and name[len("validate-") :] in VALIDATION_PACKAGES:
        version = name[len("validate-") :]
        return [_install(name, VALIDATION_PACKAGES[version]), *ensure(version)]
    raise KeyError(f"unknown env {name!r}; known: {env_names()}")


# --------------------------------------------------------------------------------------------
# Parsing (in a subprocess)
# --------------------------------------------------------------------------------------------


class ParseError(Exception):
    """argparse rejected an argv; ``message`` is argparse's own text."""

    def __init__(self, message: str, argv: Sequence[str] | None = None):
        super().__init__(message)
        self.message = message
        self.argv = list(argv) if argv is not None else None


class EnvError(RuntimeError):
    """The worker itself failed (import error, crash)."""


def _run_worker(
    env: str, mode: str, payload: Any, timeout: float = 900, worker: Path = WORKER, request: Any = None
) -> Any:
    paths = ensure(env)
    with tempfile.TemporaryDirectory() as td:
        inp, out = Path(td) / "in.json", Path(td) / "out.json"
        inp.write_text(json.dumps(request if request is not None else {"mode": mode, "payload": payload}))
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONPATH": os.pathsep.join(str(p) for p in paths),
            "CUDA_VISIBLE_DEVICES": "",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        proc = subprocess.run(
            [PYTHON, "-S", str(worker), str(inp), str(out)],
            env=environ,
            cwd=td,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0 or not out.exists():
            raise EnvError(
                f"worker for {env} failed (rc={proc.returncode}):\n"
                f"{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}"
            )
        return json.loads(out.read_text())


def _results(raw: list[dict], argvs: Sequence[Sequence[str]]) -> list[dict | ParseError]:
    res: list[dict | ParseError] = []
    for r, argv in zip(raw, argvs, strict=True):
        res.append(r["args"] if r["ok"] else ParseError(r["error"], argv))
    return res


def parse_many(version: str, argvs: Sequence[Sequence[str]]) -> list[dict | ParseError]:
    """Parse many server argvs (without ``python3 -m sglang.launch_server``) in ONE subprocess.

    Returns, per argv, the parsed namespace as a JSON-able dict or a ``ParseError``."""
    if version not in SGLANG_PACKAGES:
        raise KeyError(f"no env for SGLang {version}; known: {list(SGLANG_PACKAGES)}")
    argvs = [list(map(str, a)) for a in argvs]
    return _results(_run_worker(version, "server", argvs), argvs)


def parse_server_argv(version: str, argv: Sequence[str]) -> dict:
    """Parse one server argv; raise ``ParseError`` with argparse's message if rejected."""
    (r,) = parse_many(version, [argv])
    if isinstance(r, ParseError):
        raise r
    return r


def parse_router_many(
    argvs: Sequence[Sequence[str]], router: str = DEFAULT_ROUTER
) -> list[dict | ParseError]:
    """Parse router argvs (without ``python3 -m <module>``), as ``launch_router`` does:
    ``RouterArgs.add_cli_args(parser, use_router_prefix=False)``, ``parse_args``, then
    ``RouterArgs.from_cli_args`` (which parses selectors and --prefill URL PORT pairs)."""
    if router not in ROUTER_PACKAGES:
        raise KeyError(f"unknown router {router!r}; known: {list(ROUTER_PACKAGES)}")
    argvs = [list(map(str, a)) for a in argvs]
    return _results(_run_worker(router, "router:" + router, argvs), argvs)


def parse_router_argv(argv: Sequence[str], router: str = DEFAULT_ROUTER) -> dict:
    (r,) = parse_router_many([argv], router)
    if isinstance(r, ParseError):
        raise r
    return r


def describe(env: str) -> list[dict]:
    """Every action of the env's parser: option_strings, dest, choices, nargs, default."""
    mode = "describe:server" if env in SGLANG_PACKAGES else "describe:router:" + env
    return _run_worker(env, mode, None)


def check_plan_pods(version: str, pods: Iterable[dict]) -> list[str]:
    """Parse every pod's argv of a ``dsa-operator plan -o json`` output; return error strings.

    ``argv[0:3]`` must be ``python3 -m <module>``; ``sglang.launch_server`` goes to the SGLang
    ``version`` parser, ``sglang_router.launch_router`` / ``smg.launch_router`` to that router's.
    All server argvs are parsed in one subprocess, all router argvs in one per router."""
    errors: list[str] = []
    server: list[tuple[str, list[str]]] = []
    routers: dict[str, list[tuple[str, list[str]]]] = {}
    for pod in pods:
        argv = [str(a) for a in pod.get("argv", [])]
        label = f"{pod.get('role')}/{pod.get('group')}/{pod.get('rank')}"
        if len(argv) < 3 or argv[1] != "-m" or not argv[0].startswith("python"):
            errors.append(f"{label}: argv does not start with 'python3 -m <module>': {argv[:3]}")
            continue
        module, rest = argv[2], argv[3:]
        if module in SERVER_MODULES:
            server.append((label, rest))
        elif module in ROUTER_MODULES:
            routers.setdefault(ROUTER_MODULES[module], []).append((label, rest))
        else:
            errors.append(f"{label}: unknown module {module!r}")
    batches: list[tuple[list[tuple[str, list[str]]], Any]] = []
    if server:
        batches.append((server, lambda a: parse_many(version, a)))
    for router, items in routers.items():
        batches.append((items, lambda a, r=router: parse_router_many(a, r)))
    for items, fn in batches:
        for (label, rest), res in zip(items, fn([a for _, a in items]), strict=True):
            if isinstance(res, ParseError):
                errors.append(f"{label}: {res.message} (argv: {' '.join(rest)})")
    return errors


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    cmd, args = argv[0], argv[1:]
    if cmd == "ensure":
        names = env_names() if args in ([], ["all"]) else args
        for name in names:
            t0 = time.monotonic()
            paths = ensure(name)
            for p in paths:
                print(f"{name}: {p} ({_du(p) / 2**30:.2f} GiB)")
            print(f"{name}: ready in {time.monotonic() - t0:.1f}s")
        return 0
    if cmd == "parse":
        env, rest = args[0], args[1:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        try:
            out = parse_server_argv(env, rest) if env in SGLANG_PACKAGES else parse_router_argv(rest, env)
        except ParseError as e:
            print(f"error: {e.message}", file=sys.stderr)
            return 2
        print(json.dumps(out, indent=1, sort_keys=True))
        return 0
    if cmd == "describe":
        print(json.dumps(describe(args[0]), indent=1))
        return 0
    print(f"unknown command {cmd!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
