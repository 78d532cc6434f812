#!/usr/bin/env python3
"""OCI image archives (image-layout tarballs) made from local files, without a registry or
a container engine: what the real nodes' containerd imports with ``ctr images import``.

    python tests/cluster/oci.py OUT.tar --name localhost/dsa/pause:3.10.1 \\
        --file /pause=path/to/pause:0755 --entrypoint /pause --user 65535:65535
    python tests/cluster/oci.py OUT.tar --name localhost/dsa/x:1 --layer rootfs.tar --cmd python3

Layers are uncompressed tars (mediaType ``...layer.v1.tar``), so a layer's digest is its
diff_id. Output is deterministic (fixed mtimes and owners), so an unchanged input gives the
same image digest and an import of it is a no-op.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
ANN_REF = "org.opencontainers.image.ref.name"
ANN_CONTAINERD_NAME = "io.containerd.image.name"  # the full name `ctr images import` gives the image


@dataclass(frozen=True)
class FileSpec:
    """One file of a layer: where it goes in the image, where it comes from, its mode."""

    dest: str
    src: Path
    mode: int = 0o755


def parse_file_spec(text: str) -> FileSpec:
    """``/dest=src[:mode]`` (mode in octal)."""
    dest, sep, rest = text.partition("=")
    if not sep or not dest.startswith("/") or not rest:
        raise ValueError(f"--file {text!r}: expected /dest=src[:octal-mode]")
    src, _, mode = rest.partition(":")
    return FileSpec(dest, Path(src), int(mode, 8) if mode else 0o755)


def layer_from_files(files: Sequence[FileSpec]) -> bytes:
    """A layer tar holding the files (and their parent directories), owned by root, mtime 0."""
    buf = io.BytesIO()
    seen: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for f in sorted(files, key=lambda f: f.dest):
            parts = f.dest.strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in seen:
                    seen.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            data = f.src.read_bytes()
            info = tarfile.TarInfo("/".join(parts))
            info.size, info.mode = len(data), f.mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image_config(diff_ids: Iterable[str], *, entrypoint=(), cmd=(), user="", env=(), workdir="") -> dict:
    cfg: dict = {"Env": list(env) or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
    if entrypoint:
        cfg["Entrypoint"] = list(entrypoint)
    if cmd:
        cfg["Cmd"] = list(cmd)
    if user:
        cfg["User"] = user
    if workdir:
        cfg["WorkingDir"] = workdir
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def write_archive(out: Path, name: str, layers: Sequence[Path], **config) -> str:
    """Write an OCI image-layout tar of `layers` (uncompressed tar files) named `name`
    (e.g. ``localhost/dsa/pause:3.10.1``); returns the manifest digest."""
    descs = []
    for layer in layers:
        digest, size = _sha256_file(layer)
        descs.append({"mediaType": MT_LAYER, "digest": digest, "size": size})
    cfg = json.dumps(image_config([d["digest"] for d in descs], **config), sort_keys=True).encode()
    cfg_desc = {
        "mediaType": MT_CONFIG,
        "digest": "sha256:" + hashlib.sha256(cfg).hexdigest(),
        "size": len(cfg),
    }
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": cfg_desc, "layers": descs}, sort_keys=True
    ).encode()
    man_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MT_MANIFEST,
                "digest": man_digest,
                "size": len(manifest),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {ANN_CONTAINERD_NAME: name, ANN_REF: tag},
            }
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")[1])
    try:
        with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            _add(tar, "index.json", json.dumps(index, sort_keys=True).encode())
            _add(tar, f"blobs/sha256/{man_digest[7:]}", manifest)
            _add(tar, f"blobs/sha256/{cfg_desc['digest'][7:]}", cfg)
            for layer, d in zip(layers, descs, strict=True):
                info = tarfile.TarInfo(f"blobs/sha256/{d['digest'][7:]}")
                info.size, info.mode = d["size"], 0o644
                with open(layer, "rb") as fh:
                    tar.addfile(info, fh)
        tmp.chmod(0o644)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return man_digest


def normalize_ref(name: str) -> str:
    """The full name containerd stores for a short Docker-style reference
    (``busybox:1`` -> ``docker.io/library/busybox:1``, ``a/b:1`` -> ``docker.io/a/b:1``)."""
    first, sep, _ = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return name
    return f"docker.io/{name}" if sep else f"docker.io/library/{name}"


def archive_image_names(archive: Path) -> list[str]:
    """The image names an archive will get in containerd: OCI index annotations, or a
    docker-archive's RepoTags."""
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        if "index.json" in names:
            index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
            return [
                m.get("annotations", {}).get(ANN_CONTAINERD_NAME) or m.get("annotations", {}).get(ANN_REF, "")
                for m in index.get("manifests", [])
            ]
        if "manifest.json" in names:
            manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
            return [normalize_ref(t) for m in manifest for t in m.get("RepoTags") or []]
    raise ValueError(
        f"{archive}: neither an OCI image layout (index.json) nor a docker archive (manifest.json)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--name", required=True, help="full image name, e.g. localhost/dsa/pause:3.10.1")
    ap.add_argument("--file", action="append", default=[], help="/dest=src[:mode]: a file of one extra layer")
    ap.add_argument("--layer", action="append", default=[], type=Path, help="an uncompressed layer tar")
    ap.add_argument("--entrypoint", nargs="*", default=[])
    ap.add_argument("--cmd", nargs="*", default=[])
    ap.add_argument("--user", default="")
    a = ap.parse_args(argv)
    try:
        files = [parse_file_spec(f) for f in a.file]
    except ValueError as e:
        print(f"oci.py: {e}", file=sys.stderr)
        return 2
    missing = [str(f.src) for f in files if not f.src.is_file()] + [
        str(p) for p in a.layer if not p.is_file()
    ]
    if missing:
        print(f"oci.py: missing input files: {', '.join(missing)}", file=sys.stderr)
        return 2
    layers = list(a.layer)
    with tempfile.TemporaryDirectory() as td:
        if files:
            extra = Path(td) / "files.tar"
            extra.write_bytes(layer_from_files(files))
            layers.append(extra)
        digest = write_archive(a.out, a.name, layers, entrypoint=a.entrypoint, cmd=a.cmd, user=a.user)
    print(f"{a.out}: {a.name} {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
