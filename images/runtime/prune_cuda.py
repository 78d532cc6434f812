"""Drop the CUDA libraries the simulator image never loads.

PyPI's Linux torch is a CUDA build: `import torch` links libtorch_cuda and, through it, a set of
nvidia-* libraries (cudart, cublas, nccl, ...), so those must stay even on a CPU. The nvidia
wheels also carry libraries that torch only dlopens when it uses a GPU (cuDNN's engine and
kernel libraries, cusolver, nvshmem's device side, ...), and triton, which only the compiler
stack imports. The simulator runs on nodes without GPUs, so this keeps exactly what the dynamic
linker resolves for torch's own extension modules (`ldd`, which follows their $ORIGIN run paths)
and removes every other shared library under site-packages/nvidia, and triton's package, about
half the image. Run with `python -P` after `pip install torch`; it checks `import torch` still works.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path


def linked(objects: list[Path]) -> set[Path]:
    """Every shared library the dynamic linker loads for these objects, resolved.

    A library ldd cannot find here is not ours to keep: libcuda.so.1 is the GPU driver's, which
    a GPU node provides; the import check at the end proves the rest is complete.
    """
    keep: set[Path] = set()
    for obj in objects:
        out = subprocess.run(["ldd", str(obj)], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            parts = line.split("=>")
            if len(parts) == 2 and parts[1].strip().startswith("/"):
                keep.add(Path(parts[1].split("(")[0].strip()).resolve())
    return keep


def main() -> None:
    site = Path(sysconfig.get_paths()["purelib"])
    torch_objs = [*site.glob("torch/_C*.so"), *site.glob("torch/lib/*.so*")]
    if not torch_objs:
        sys.exit(f"prune_cuda: no torch under {site}")
    keep = linked(torch_objs)
    freed = 0
    for lib in sorted((site / "nvidia").rglob("*.so*")):
        if lib.is_file() and lib.resolve() not in keep:
            freed += lib.stat().st_size
            lib.unlink()
    # triton's package goes, its metadata stays: a later `pip install` of the project's pinned
    # torch then finds torch's requirements met and does not bring the files back in a new
    # layer (the nvidia wheels' metadata stays for the same reason). torch looks triton up with
    # importlib.util.find_spec, so without the package it runs as on a machine without triton.
    triton = site / "triton"
    if triton.is_dir():
        freed += sum(f.stat().st_size for f in triton.rglob("*") if f.is_file())
        shutil.rmtree(triton)
    print(f"prune_cuda: kept {len(keep)} linked libraries, removed {freed / 1e9:.2f} GB")
    subprocess.run(
        [sys.executable, "-P", "-c", "import torch.distributed as d; assert d.is_gloo_available()"],
        check=True,
    )


if __name__ == "__main__":
    main()
