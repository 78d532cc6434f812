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

PINS: dict[str, str] = {
    "SGLANG_VERSION": SGLANG_VERSION,
    "SGLANG_KERNEL_VERSION": SGLANG_KERNEL_VERSION,
    "FLASHINFER_VERSION": FLASHINFER_VERSION,
    "FLASH_MLA_VERSION": FLASH_MLA_VERSION,
    "ROUTER_PACKAGE": ROUTER_PACKAGE,
    "ROUTER_VERSION": ROUTER_VERSION,
    "CUDA_BASE_IMAGE": CUDA_BASE_IMAGE,
}
"""Dockerfile ARG name -> value, for the drift test."""
