import urllib.error
import urllib.request

import pytest

from dsa_runtime.health import start_health_server
from tests.runtime.conftest import free_port


def _get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_answers_while_alive_then_503():
    alive = [True]
    port = free_port()
    server = start_health_server(port, lambda: alive[0], host="127.0.0.1")
    try:
        assert _get(port, "/health") == 200 and _get(port, "/ready?x=1") == 200
        assert _get(port, "/generate") == 404
        alive[0] = False
        assert _get(port, "/health") == 503
    finally:
        server.shutdown()


def test_port_in_use_raises():
    port = free_port()
    server = start_health_server(port, lambda: True, host="127.0.0.1")
    try:
        with pytest.raises(OSError):
            start_health_server(port, lambda: True, host="127.0.0.1")
    finally:
        server.shutdown()
