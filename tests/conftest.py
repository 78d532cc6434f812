"""Shared fixtures: the examples and a way to plan them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(params=EXAMPLES, ids=lambda p: p.stem)
def example(request) -> dict:
    return load(request.param)
