"""Accelerator profiles: architecture, GPUs per node, and the node labels they carry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

AcceleratorName = Literal["h20", "h100", "h200", "b200", "b300", "gb200", "gb300", "mi300x", "mi355x"]
Arch = Literal["sm90", "sm100", "amd"]


@dataclass(frozen=True)
class Accelerator:
    name: str
    arch: Arch
    vendor: Literal["nvidia", "amd"]
    gpus_per_node: int  # the usual node; the spec may override it
    product: str  # the node label value GPU feature discovery sets
    resource: str  # the extended resource a pod requests
    product_label: str  # the node label holding `product`


def _nvidia(name: str, arch: Arch, product: str, per_node: int = 8) -> Accelerator:
    return Accelerator(name, arch, "nvidia", per_node, product, "nvidia.com/gpu", "nvidia.com/gpu.product")


def _amd(name: str, product: str) -> Accelerator:
    return Accelerator(name, "amd", "amd", 8, product, "amd.com/gpu", "amd.com/gpu.product-name")


ACCELERATORS: dict[str, Accelerator] = {
    a.name: a
    for a in (
        _nvidia("h20", "sm90", "NVIDIA-H20"),
        _nvidia("h100", "sm90", "NVIDIA-H100-80GB-HBM3"),
        _nvidia("h200", "sm90", "NVIDIA-H200"),
        _nvidia("b200", "sm100", "NVIDIA-B200"),
        _nvidia("b300", "sm100", "NVIDIA-B300"),
        _nvidia("gb200", "sm100", "NVIDIA-GB200", per_node=4),
        _nvidia("gb300", "sm100", "NVIDIA-GB300", per_node=4),
        _amd("mi300x", "AMD-Instinct-MI300X"),
        _amd("mi355x", "AMD-Instinct-MI355X"),
    )
}
