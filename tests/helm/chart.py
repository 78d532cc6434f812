"""Helpers for the chart tests: find helm, render the chart, split manifests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "dsa-operator"
DEPLOY = ROOT / "deploy"
RENDER = ROOT / "charts" / "render-deploy.sh"
Obj = dict[str, Any]


def helm_path() -> Path | None:
    for candidate in (os.environ.get("HELM"), ROOT / ".cluster/bin/helm", shutil.which("helm")):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    try:
        from tests.cluster.harness import binary_paths

        p = binary_paths()["helm"]
        return p if os.access(p, os.X_OK) else None
    except Exception:
        return None


def run_helm(
    *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    helm = helm_path()
    assert helm, "helm not found"
    r = subprocess.run([str(helm), *args], capture_output=True, text=True, env=env, timeout=120)
    if check and r.returncode:
        raise AssertionError(f"helm {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r


def template(
    *sets: str, release: str = "dsa-operator", namespace: str = "dsa-system", extra: tuple[str, ...] = ()
) -> str:
    args = ["template", release, str(CHART), "--namespace", namespace, *extra]
    for s in sets:
        args += ["--set", s]
    return run_helm(*args).stdout


def objects(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(*sets: str, **kw: Any) -> list[Obj]:
    return objects(template(*sets, **kw))


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def container(objs: list[Obj]) -> Obj:
    return one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
