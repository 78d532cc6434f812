import pytest

from dsa_runtime.dns import resolves, wait_for_dns
from dsa_runtime.errors import ExitCode, RuntimeFailure


def test_localhost_resolves():
    assert resolves("localhost", 80)
    waited = wait_for_dns("localhost", 80, timeout_s=1)
    assert 0 <= waited < float("inf")


def test_invalid_name_times_out_within_bound():
    assert not resolves("nobody.dsa-test.invalid", 80)
    with pytest.raises(RuntimeFailure) as e:
        wait_for_dns("nobody.dsa-test.invalid", 80, timeout_s=0.5, interval_s=0.1)
    assert e.value.code == ExitCode.LEADER_UNRESOLVED
    assert "within 0.5 s" in str(e.value)
