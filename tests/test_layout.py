"""The repository root is a safe place to start Python: no top-level folder shadows the stdlib."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_operator_at_the_root_is_the_standard_library() -> None:
    # Before the packages moved inside their folders, operator/ at the root was imported instead
    # of the standard library's operator, and `python -m venv` or `python -c` broke there.
    out = subprocess.run(
        [sys.executable, "-c", "import operator; operator.add; print(operator.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert not out.startswith(str(ROOT)), out


def test_packages_live_inside_their_folders() -> None:
    import dsa_operator
    import dsa_runtime

    assert Path(dsa_operator.__file__).parent == ROOT / "operator" / "dsa_operator"
    assert Path(dsa_runtime.__file__).parent == ROOT / "runtime" / "dsa_runtime"
