"""What this node has: GPUs (via nvidia-smi, else torch), /dev/shm, the model path."""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str  # "9.0"; "" where unknown (AMD)

    @property
    def arch(self) -> str:
        if not self.compute_capability:
            return "amd"
        major, _, minor = self.compute_capability.partition(".")
        return f"sm{major}{minor or '0'}"


def gpus_from_nvidia_smi_output(text: str) -> list[Gpu]:
    """Parse `nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader`."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, _, cap = line.rpartition(",")
        out.append(Gpu(name.strip(), cap.strip()))
    return out


def detect_gpus() -> list[Gpu] | None:
    """GPUs visible to this container, or None when no tool can tell."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            res = subprocess.run(
                [smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if res.returncode == 0:
                return gpus_from_nvidia_smi_output(res.stdout)
        except (OSError, subprocess.TimeoutExpired):
            pass
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # see rendezvous.join
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        cap = "" if getattr(torch.version, "hip", None) else f"{props.major}.{props.minor}"
        gpus.append(Gpu(props.name, cap))
    return gpus


def shm_size_bytes(path: str = "/dev/shm") -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_blocks * st.f_frsize


def model_present(path: str) -> bool:
    """A local model directory counts when it exists and is not empty."""
    p = Path(path)
    return (p.is_dir() and any(p.iterdir())) or p.is_file()
