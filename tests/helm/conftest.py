"""Chart tests reuse the integration fixtures: one real control plane per session."""

from tests.integration.conftest import cluster, namespace, pytest_configure  # noqa: F401
