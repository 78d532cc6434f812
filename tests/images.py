"""The project's images, built from its own Dockerfiles with buildah, without a registry.

Users build ``Dockerfile`` and ``images/runtime/Dockerfile`` with BuildKit on the official
bases; here the same files are built with Debian's buildah (chroot isolation: no network
namespace, so no NAT or iptables rule) on a base made locally with mmdebstrap, because no
registry is reachable. Only the base differs (the ``BASE`` build argument).

Builds are keyed by a hash of their inputs (Dockerfile, pyproject.toml, README.md, the
packages' files, build arguments, the base recipe): the tag is that hash, and an unchanged tree
neither rebuilds nor re-exports. Archives (docker-archive, what ``ctr images import`` and
``Cluster.load_image`` take) live in ``~/.cache/dsa-operator/images/`` (``DSA_IMAGES_CACHE``);
``.images/index.json`` in the repository names the current refs and archives::

    {"base": "localhost/dsa-base:<hash>",
     "images": {"operator": {"ref": "localhost/dsa-operator:<hash>", "archive": "/…/x.tar"},
                "runtime":  {"ref": "localhost/dsa-runtime:<hash>-simulator", "archive": "…"}}}

CLI (``make images``)::

    python -m tests.images build     # build what changed, export, write the index, print it
    python -m tests.images index     # print the index of the current tree (builds nothing)

Needs ``buildah`` and ``mmdebstrap`` (Debian packages; images/install-deps.sh) and root.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("DSA_IMAGES_CACHE", Path.home() / ".cache" / "dsa-operator" / "images"))
INDEX = REPO / ".images" / "index.json"
KEEP_ARCHIVES = 2  # per image name (the current and one more); older archives and their tags go


# The stand-in for python:3.11-slim-bookworm: Debian bookworm's own Python 3.11, with a venv at
# /usr/local so that `python` and `pip` are on the default PATH as in the official image
# (Debian's /usr/bin/python3 refuses a plain `pip install`). The runtime Dockerfile needs only
# apt-get, which any Debian base has. PIP_CERT points Debian's pip 23 (which ignores the system
# store) at the CA bundle; the host's bundle is mounted over it for builds only.
@dataclasses.dataclass(frozen=True)
class BaseRecipe:
    """How the local base is made (its hash names it)."""

    suite: str = "bookworm"
    variant: str = "minbase"
    mirror: str = "http://deb.debian.org/debian"
    include: tuple[str, ...] = ("python3", "python3-venv", "ca-certificates")
    hook: str = 'chroot "$1" python3 -m venv /usr/local'
    env: tuple[tuple[str, str], ...] = (
        ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        ("LANG", "C.UTF-8"),
        ("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt"),
    )


BASE = BaseRecipe()
FORMAT = "docker"  # image format, as `docker build` writes it: OCI's config has no SHELL
CERTS = "/etc/ssl/certs"  # mounted read-only into build steps, never copied into an image
SOURCES = [
    "pyproject.toml",
    "README.md",
    ".dockerignore",
    "operator",
    "runtime",
    "images/runtime/prune_cuda.py",
]
IGNORED_PARTS = {"__pycache__"}
IGNORED_SUFFIXES = (".pyc", ".egg-info")


@dataclasses.dataclass(frozen=True)
class Spec:
    """One image: which Dockerfile, which build arguments, how its tag ends."""

    key: str  # name in the index ("operator", "runtime")
    name: str  # image name under localhost/
    dockerfile: str
    args: dict[str, str]
    suffix: str = ""


SPECS = [
    Spec("operator", "dsa-operator", "Dockerfile", {}),
    Spec("runtime", "dsa-runtime", "images/runtime/Dockerfile", {"ENGINE": "simulator"}, "-simulator"),
]


# --------------------------------------------------------------------------------------------
# Pure: what to build, named by what goes in
# --------------------------------------------------------------------------------------------


def _ignored(rel: Path) -> bool:
    return any(p in IGNORED_PARTS or p.endswith(IGNORED_SUFFIXES) for p in rel.parts)


def input_files(repo: Path, dockerfile: str) -> list[Path]:
    """Every file a build of ``dockerfile`` reads from the context, sorted, relative to ``repo``."""
    found = [Path(dockerfile)]
    for src in SOURCES:
        top = repo / src
        if top.is_file():
            found.append(Path(src))
        for path in sorted(top.rglob("*")) if top.is_dir() else []:
            rel = path.relative_to(repo)
            if path.is_file() and not _ignored(rel):
                found.append(rel)
    return sorted(set(found))


def digest(parts: list[tuple[str, bytes]]) -> str:
    """A short hash of named parts; a rename changes it as a content change does."""
    h = hashlib.sha256()
    for name, data in parts:
        h.update(len(name).to_bytes(4, "big") + name.encode())
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:12]


def base_ref() -> str:
    return "localhost/dsa-base:" + digest([("recipe", json.dumps(dataclasses.asdict(BASE)).encode())])


def image_tag(repo: Path, spec: Spec, base: str) -> str:
    parts = [(str(rel), (repo / rel).read_bytes()) for rel in input_files(repo, spec.dockerfile)]
    parts += [("arg:" + k, v.encode()) for k, v in sorted(spec.args.items())] + [("base", base.encode())]
    parts += [("format", FORMAT.encode())]
    return digest(parts) + spec.suffix


def archive_path(cache: Path, name: str, tag: str) -> Path:
    return cache / f"{name}-{tag}.tar"


def build_argv(spec: Spec, ref: str, base: str, repo: Path) -> list[str]:
    args = {"BASE": base, **spec.args}
    argv = [
        "buildah",
        "bud",
        "--pull=never",
        "--format",
        FORMAT,
        "--isolation",
        "chroot",
        "--layers",
        "-v",
        f"{CERTS}:{CERTS}:ro",
    ]
    for k, v in args.items():
        argv += ["--build-arg", f"{k}={v}"]
    return [*argv, "-t", ref, "-f", str(repo / spec.dockerfile), str(repo)]


def plan(repo: Path, cache: Path) -> dict[str, Any]:
    """The index of the current tree: refs and archive paths (whether built yet or not)."""
    base = base_ref()
    images = {}
    for spec in SPECS:
        tag = image_tag(repo, spec, base)
        images[spec.key] = {
            "ref": f"localhost/{spec.name}:{tag}",
            "archive": str(archive_path(cache, spec.name, tag)),
        }
    return {"base": base, "images": images}


# --------------------------------------------------------------------------------------------
# Shell: buildah, mmdebstrap, files
# --------------------------------------------------------------------------------------------


def missing_tools() -> list[str]:
    return [t for t in ("buildah", "mmdebstrap") if shutil.which(t) is None]


def _run(argv: list[str], *, log: bool, retry_memfd: bool = False) -> None:
    """Run ``argv``, streaming its output when ``log``; one retry for buildah's memfd glitch."""
    for attempt in (1, 2):
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            if log:
                sys.stderr.write(line)
            tail = [*tail[-199:], line]
        if proc.wait() == 0:
            return
        out = "".join(tail)
        # Seen once right after installing buildah: "Close_Fd sealing memfd copy: Device or
        # resource busy" on a first step; the same build then passes.
        if retry_memfd and attempt == 1 and "memfd" in out:
            print("buildah: memfd glitch, retrying once", file=sys.stderr)
            continue
        raise RuntimeError(f"{' '.join(argv[:3])} … failed (exit {proc.returncode}):\n{out}")


def has_image(ref: str) -> bool:
    res = subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True, check=False)
    return res.returncode == 0


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One build at a time per machine (buildah storage and the archives are shared)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def ensure_base(ref: str, cache: Path, *, log: bool) -> None:
    """The local base in buildah's storage: mmdebstrap rootfs, imported and committed."""
    if has_image(ref):
        return
    r = BASE
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        tar = Path(tmp) / "base.tar"
        _run(
            [
                "mmdebstrap",
                f"--variant={r.variant}",
                "--include=" + ",".join(r.include),
                f"--customize-hook={r.hook}",
                r.suite,
                str(tar),
                r.mirror,
            ],
            log=log,
        )
        ctr = subprocess.run(
            ["buildah", "from", "scratch"], capture_output=True, text=True, check=True
        ).stdout.strip()
        try:
            _run(["buildah", "add", ctr, str(tar), "/"], log=log)
            env = [a for k, v in r.env for a in ("--env", f"{k}={v}")]
            _run(["buildah", "config", *env, "--cmd", "python3", ctr], log=log)
            _run(["buildah", "commit", "--rm", ctr, ref], log=log)
        except BaseException:
            subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False)
            raise


def _export(ref: str, archive: Path, *, log: bool) -> None:
    part = archive.with_suffix(".part")
    part.unlink(missing_ok=True)
    _run(["buildah", "push", "--quiet", ref, f"docker-archive:{part}:{ref}"], log=log)
    part.rename(archive)


def _prune(cache: Path, name: str, keep: Path) -> None:
    """Keep the newest archives of ``name``; drop older ones and their tags from storage."""
    old = sorted(cache.glob(f"{name}-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in [p for p in old if p != keep][KEEP_ARCHIVES - 1 :]:
        tag = path.name.removeprefix(f"{name}-").removesuffix(".tar")
        subprocess.run(["buildah", "rmi", f"localhost/{name}:{tag}"], capture_output=True, check=False)
        path.unlink(missing_ok=True)


def write_index(index: dict[str, Any], path: Path = INDEX) -> None:
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    tmp.rename(path)


def ensure_images(repo: Path = REPO, cache: Path = CACHE, *, log: bool = False) -> dict[str, tuple[str, str]]:
    """Build and export what the tree needs; return {"operator"|"runtime": (ref, archive)}."""
    missing = missing_tools()
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not installed: run images/install-deps.sh (as root)")
    if os.geteuid() != 0:
        raise RuntimeError("image builds need root (buildah's storage, mmdebstrap's chroot)")
    index = plan(repo, cache)
    with _locked(cache):
        ensure_base(index["base"], cache, log=log)
        for spec in SPECS:
            entry = index["images"][spec.key]
            ref, archive = entry["ref"], Path(entry["archive"])
            if archive.exists():
                continue
            started = time.monotonic()
            if not has_image(ref):
                _run(build_argv(spec, ref, index["base"], repo), log=log, retry_memfd=True)
            built = time.monotonic()
            _export(ref, archive, log=log)
            print(
                f"{ref}: built in {built - started:.0f} s, exported in {time.monotonic() - built:.0f} s "
                f"({archive.stat().st_size / 1e6:.0f} MB)",
                file=sys.stderr,
            )
            _prune(cache, spec.name, archive)
    write_index(index, repo / ".images" / "index.json")
    return {k: (v["ref"], v["archive"]) for k, v in index["images"].items()}


def load_into_cluster(repo: Path, archives: list[str]) -> None:
    """Import the archives into a running test cluster's nodes (the harness does the loading)."""
    if not (repo / ".cluster" / "state.json").exists():
        print("no test cluster running (.cluster/state.json); images built, not loaded", file=sys.stderr)
        return
    harness = repo / "tests" / "cluster" / "harness.py"
    for archive in archives:
        res = subprocess.run([sys.executable, str(harness), "load-image", archive], check=False)
        if res.returncode != 0:
            raise RuntimeError(f"harness.py load-image {archive} failed (exit {res.returncode})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.images", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build and export what changed; load into a running test cluster")
    b.add_argument("--no-load", action="store_true", help="do not load into a running test cluster")
    sub.add_parser("index", help="print the refs and archives of the current tree")
    args = ap.parse_args(argv)
    if args.cmd == "index":
        print(json.dumps(plan(REPO, CACHE), indent=2))
        return 0
    try:
        images = ensure_images(log=True)
        if not args.no_load:
            load_into_cluster(REPO, [archive for _, archive in images.values()])
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"images: {e}", file=sys.stderr)
        return 1
    print((REPO / ".images" / "index.json").read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
