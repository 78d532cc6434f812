"""Helpers: plans on disk, fake SGLang scripts, and the CLI as a real subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def make_plan(
    argv: list[str],
    *,
    role: str = "serving",
    group: int = 0,
    rank: int = 0,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "name": "m",
        "namespace": "ns",
        "sglangVersion": "0.5.23",
        "dialect": "dsa",
        "family": "deepseek-v3.2",
        "hardware": {"accelerator": "h200", "arch": "sm90", "vendor": "nvidia", "gpusPerNode": 8},
        "model": {
            "source": "deepseek-ai/DeepSeek-V3.2",
            "localPath": None,
            "mountPath": "/models",
            "download": True,
        },
        "shmSizeBytes": 1024,
        "roles": [
            {
                "role": role,
                "replicas": 1,
                "nodesPerGroup": 1,
                "kernels": {"prefill": "flashmla_sparse", "decode": "fa3", "kvCacheDtype": "bf16"},
                "groups": [],
            }
        ],
        "pods": [{"role": role, "group": group, "rank": rank, "argv": argv, "env": env or {}}],
        "warnings": [],
    }
    plan.update(overrides)
    return plan


@pytest.fixture
def write_plan(tmp_path: Path):
    def write(plan: dict[str, Any] | str, name: str = "plan.json") -> Path:
        path = tmp_path / name
        path.write_text(plan if isinstance(plan, str) else json.dumps(plan))
        return path

    return write


@pytest.fixture
def script(tmp_path: Path):
    """Write a small Python program standing in for SGLang; returns its argv prefix."""

    def write(body: str, name: str = "fake_sglang.py") -> list[str]:
        path = tmp_path / name
        path.write_text(textwrap.dedent(body))
        return [sys.executable, str(path)]

    return write


def runtime_env(tmp_path: Path, plan: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSA_", "HF_"))}
    env.update(
        DSA_PLAN_FILE=str(plan),
        DSA_ROLE="serving",
        DSA_GROUP="0",
        DSA_RANK="0",
        DSA_TERMINATION_LOG=str(tmp_path / "termination-log"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def dsa(args: list[str], env: dict[str, str], timeout: float = 60, **kw: Any):
    return subprocess.run(
        [sys.executable, "-m", "dsa_runtime", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
        **kw,
    )


def dsa_popen(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dsa_runtime", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_nvidia_smi(tmp_path: Path):
    """A PATH entry whose nvidia-smi reports `count` GPUs of the given name and capability."""

    def make(count: int, name: str = "NVIDIA H200", cap: str = "9.0") -> str:
        bindir = tmp_path / "bin"
        bindir.mkdir(exist_ok=True)
        smi = bindir / "nvidia-smi"
        lines = "\n".join(f"echo '{name}, {cap}'" for _ in range(count))
        smi.write_text(f"#!/bin/sh\n{lines}\n")
        smi.chmod(0o755)
        return f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"

    return make
