#!/usr/bin/env python3
"""A small Debian image with python3 for tests on the real nodes, made without a registry:
Debian's ``mmdebstrap`` builds a bookworm rootfs from the Debian mirror, oci.py wraps it as an
OCI archive. Cached by its recipe in ~/.cache/dsa-operator/images/, so it is built once.

    python tests/cluster/debimage.py            # prints the archive path (builds if missing)

Python's standard library gives the tests an HTTP server, DNS lookups and an HTTPS client,
so one image serves the logs/exec/port-forward, DNS and in-cluster API checks.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__" and str(Path(__file__).resolve().parents[2]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.cluster import oci

SUITE = "bookworm"
PACKAGES = ("python3",)
NAME = "localhost/dsa/debian-python:bookworm"
EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")


def cache_dir() -> Path:
    return Path(os.environ.get("DSA_IMAGE_CACHE", Path.home() / ".cache/dsa-operator/images"))


def recipe() -> list[str]:
    """The mmdebstrap command line (less the output path): also the cache key."""
    return [
        "mmdebstrap",
        "--variant=essential",
        "--mode=root",
        "--include=" + ",".join(PACKAGES),
        *(f"--dpkgopt=path-exclude={p}" for p in EXCLUDES),
        '--aptopt=Acquire::Check-Valid-Until "false"',
        SUITE,
    ]


def archive_path() -> Path:
    key = hashlib.sha256("\0".join([*recipe(), NAME]).encode()).hexdigest()[:12]
    return cache_dir() / f"debian-python-{key}.tar"


def ensure() -> Path:
    """The archive, built first when missing (about a minute: Debian downloads + unpacking)."""
    out = archive_path()
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".debimage.") as td:
        rootfs = Path(td) / "rootfs.tar"
        r = subprocess.run([*recipe(), str(rootfs)], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"mmdebstrap failed ({r.returncode}):\n{r.stderr[-3000:]}")
        oci.write_archive(out, NAME, [rootfs], cmd=["python3"])
    return out


if __name__ == "__main__":
    print(ensure())
