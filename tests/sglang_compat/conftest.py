"""Fixtures for the real-parser tests: the cached SGLang / router environments.

The first use installs them (see envs.py; ~2.5 min cold, ~5.7 GiB, mostly PyTorch's CUDA
libraries); later sessions reuse ~/.cache/dsa-operator.  Deselect with ``-m "not sglang"``.
"""

from __future__ import annotations

import pytest

from tests.sglang_compat import envs


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "sglang: parses argvs with the real SGLang / router parsers (installs cached envs)",
    )


@pytest.fixture(scope="session")
def sglang_0_5_12():
    envs.ensure("0.5.12")
    return "0.5.12"


@pytest.fixture(scope="session")
def sglang_0_5_16():
    envs.ensure("0.5.16")
    return "0.5.16"


@pytest.fixture(scope="session")
def sglang_0_5_23():
    envs.ensure("0.5.23")
    return "0.5.23"


@pytest.fixture(scope="session")
def sglang_router_env():
    envs.ensure(envs.DEFAULT_ROUTER)
    return envs.DEFAULT_ROUTER


@pytest.fixture(scope="session")
def smg_env():
    envs.ensure("smg")
    return "smg"
