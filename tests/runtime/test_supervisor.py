import sys

import pytest

from dsa_runtime.errors import ExitCode, RuntimeFailure
from dsa_runtime.supervisor import exit_status, supervise


def test_exit_status():
    assert exit_status(0) == 0 and exit_status(7) == 7 and exit_status(-15) == 143


def test_supervise_passes_code_and_env():
    code = supervise(
        [sys.executable, "-c", "import os, sys; sys.exit(int(os.environ['X']))"],
        {"X": "9"},
        grace_s=1,
    )
    assert code == 9


def test_missing_program():
    with pytest.raises(RuntimeFailure) as e:
        supervise(["/no/such/program"], {}, grace_s=1)
    assert e.value.code == ExitCode.EXEC_FAILED
