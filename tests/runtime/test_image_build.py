"""The images built from the repo's own Dockerfiles start, as uid 65532, and are cached.

The build tests need buildah and mmdebstrap (Debian packages: images/install-deps.sh) and root
(buildah's storage and mmdebstrap's chroot); where they are missing, those tests are skipped
and the hash tests below still run. The first build downloads the simulator's torch (~4 GB of
wheels); later runs reuse the archives in ~/.cache/dsa-operator/images.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import images

NEEDS_BUILDAH = pytest.mark.skipif(
    bool(images.missing_tools()) or os.geteuid() != 0,
    reason="image builds need root and buildah + mmdebstrap (bash images/install-deps.sh)",
)
# A cold build (base, torch's ~4 GB of wheels, export) took 10 min on a busy 2-core machine;
# pytest-timeout counts the fixture's build against the first test that uses it.
BUILD_TIMEOUT = pytest.mark.timeout(1800)


def _tree(tmp_path: Path) -> Path:
    """A copy of the build context's inputs, to change without touching the repo."""
    for rel in [*images.input_files(images.REPO, "Dockerfile"), Path("images/runtime/Dockerfile")]:
        dest = tmp_path / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(images.REPO / rel, dest)
    return tmp_path


def test_tag_follows_code_not_bytecode(tmp_path):
    """A rollout needs a new tag for new code; a stray __pycache__ must not cause one."""
    repo = _tree(tmp_path)
    before = images.plan(repo, tmp_path)
    cache = repo / "runtime" / "dsa_runtime" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "cli.cpython-311.pyc").write_bytes(b"\0")
    assert images.plan(repo, tmp_path) == before
    cli = repo / "runtime" / "dsa_runtime" / "cli.py"
    cli.write_text(cli.read_text() + "\n# changed\n")
    after = images.plan(repo, tmp_path)
    for key in ("operator", "runtime"):
        assert after["images"][key]["ref"] != before["images"][key]["ref"]
    assert after["base"] == before["base"]


def test_refs_are_local_and_the_runtime_variant_is_named():
    index = images.plan(images.REPO, Path("/cache"))
    op, rt = index["images"]["operator"], index["images"]["runtime"]
    assert op["ref"].startswith("localhost/dsa-operator:")  # a short name would mean docker.io
    assert rt["ref"].startswith("localhost/dsa-runtime:") and rt["ref"].endswith("-simulator")
    assert rt["archive"].startswith("/cache/dsa-runtime-") and rt["archive"].endswith(".tar")


def test_build_mounts_certificates_and_never_uses_a_network_namespace():
    """--isolation oci would add iptables rules and turn on ip_forward on the host."""
    spec = images.SPECS[1]
    argv = images.build_argv(spec, "localhost/x:y", "localhost/dsa-base:z", images.REPO)
    assert argv[argv.index("--isolation") + 1] == "chroot"
    assert "/etc/ssl/certs:/etc/ssl/certs:ro" in argv
    assert "BASE=localhost/dsa-base:z" in argv and "ENGINE=simulator" in argv


@pytest.fixture(scope="module")
def built() -> dict[str, tuple[str, str]]:
    return images.ensure_images()


def _run_in(ref: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a container of ``ref`` as its configured user (chroot isolation)."""
    ctr = subprocess.run(
        ["buildah", "from", "--pull=never", ref], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        return subprocess.run(
            ["buildah", "run", "--isolation", "chroot", ctr, "--", *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False)


@NEEDS_BUILDAH
@BUILD_TIMEOUT
def test_operator_image_starts_as_non_root(built):
    ref, archive = built["operator"]
    assert Path(archive).stat().st_size > 0
    res = _run_in(ref, "dsa-operator", "--help")
    assert res.returncode == 0 and "run" in res.stdout, res.stdout + res.stderr
    assert _run_in(ref, "id", "-u").stdout.strip() == "65532"


@NEEDS_BUILDAH
@BUILD_TIMEOUT
def test_runtime_simulator_image_starts_as_non_root(built):
    ref, _ = built["runtime"]
    res = _run_in(ref, "dsa-runtime", "--help")
    assert res.returncode == 0 and "serve" in res.stdout, res.stdout + res.stderr
    assert _run_in(ref, "id", "-u").stdout.strip() == "65532"
    gloo = _run_in(ref, "python", "-c", "import torch.distributed as d; print(d.is_gloo_available())")
    assert gloo.stdout.strip() == "True", gloo.stdout + gloo.stderr
    router = _run_in(ref, "python", "-c", "import sglang_router")
    assert router.returncode == 0, router.stderr


@NEEDS_BUILDAH
@BUILD_TIMEOUT
def test_unchanged_tree_neither_rebuilds_nor_reexports(built):
    archives = [Path(a) for _, a in built.values()]
    stamps = [a.stat().st_mtime_ns for a in archives]
    assert images.ensure_images() == built
    assert [a.stat().st_mtime_ns for a in archives] == stamps
    index = json.loads((images.REPO / ".images" / "index.json").read_text())
    assert {k: (v["ref"], v["archive"]) for k, v in index["images"].items()} == built


@NEEDS_BUILDAH
@BUILD_TIMEOUT
def test_host_certificates_are_not_baked_in(built):
    """The host's CAs are mounted for the build steps only; an image ships its distribution's."""
    local = [p.read_text().strip() for p in Path("/usr/local/share/ca-certificates").glob("*.crt")]
    if not local:
        pytest.skip("this host trusts no local CA to look for")
    for ref, _ in built.values():
        bundle = _run_in(ref, "cat", "/etc/ssl/certs/ca-certificates.crt")
        assert bundle.returncode == 0 and "BEGIN CERTIFICATE" in bundle.stdout
        assert not any(pem in bundle.stdout for pem in local), ref
