"""Reproducible batches of generated DSAModels (`tests/strategies.py::sglang_manifests`)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.strategies import sglang_manifests


def generated(n: int, seed_value: int = 1, version: str | None = None) -> list[dict[str, Any]]:
    """`n` specs drawn from the strategy, the same ones for the same seed (no shrinking, no database)."""
    out: list[dict[str, Any]] = []

    @seed(seed_value)
    @settings(
        max_examples=n,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(sglang_manifests())
    def draw(m: dict[str, Any]) -> None:
        if version is not None:
            m["spec"].setdefault("runtime", {})["sglangVersion"] = version
        out.append(m)

    draw()
    return out
