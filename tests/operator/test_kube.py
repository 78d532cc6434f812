"""The Kube door's connection policy: no request may wait forever on a connection that went quiet."""

from __future__ import annotations

import socket

import pytest
import urllib3

from dsa_operator import kube


def test_a_request_the_server_never_answers_fails_instead_of_hanging(monkeypatch):
    """The Kubernetes client passes timeout=None; the pool bounds it anyway, and does not retry the
    read on another connection."""
    monkeypatch.setattr(kube, "READ_TIMEOUT", 0.2)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog), never answers
        pool = kube._BoundedPool()
        with pytest.raises(urllib3.exceptions.MaxRetryError) as e:
            pool.request("GET", f"http://127.0.0.1:{silent.getsockname()[1]}/", timeout=None)
        assert isinstance(e.value.reason, urllib3.exceptions.ReadTimeoutError)
