"""Fixtures for the end-to-end tests (the cluster itself comes from tests/conftest.py)."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def ns(cluster):
    """A fresh namespace, deleted afterwards and waited for: its pods hold fake GPUs the next
    test needs."""
    name = f"t-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=60s", check=False)
