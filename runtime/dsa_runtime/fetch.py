"""Fetch the model's hub snapshot into the model volume, once per volume.

Many pods share one volume: a file lock on the volume makes one download and the others wait
for it; a marker file written after success lets later pods skip the hub entirely.
huggingface_hub resumes partial files itself.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from dsa_runtime.errors import ExitCode, RuntimeFailure
from dsa_runtime.node import model_present
from dsa_runtime.plan import Plan

log = logging.getLogger("dsa_runtime.fetch")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache_dir(plan: Plan, env: dict[str, str]) -> Path:
    """HF_HUB_CACHE, else HF_HOME/hub, else <mountPath>/huggingface/hub."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    home = env.get("HF_HOME") or os.path.join(plan.model.mount_path, "huggingface")
    return Path(home) / "hub"


def is_local_source(plan: Plan) -> bool:
    return bool(plan.model.local_path) or plan.model.source.startswith(("/", "./"))


def fetch_model(
    plan: Plan, env: dict[str, str], revision: str | None = None, lock_timeout_s: float = -1
) -> str:
    """Return the local path of the model, downloading it first when needed."""
    if is_local_source(plan):
        path = plan.model.local_path or plan.model.source
        if not model_present(path):
            raise RuntimeFailure(
                ExitCode.MODEL_MISSING,
                f"local model {path} is absent or empty: copy it into the model volume",
            )
        log.info("model is local at %s: nothing to fetch", path)
        return path
    # huggingface_hub reads its settings from the environment when first imported.
    for key, value in env.items():
        if key.startswith("HF_"):
            os.environ[key] = value
    from filelock import FileLock, Timeout
    from huggingface_hub import snapshot_download

    repo = plan.model.source
    cache = hub_cache_dir(plan, env)
    offline = _truthy(env.get("HF_HUB_OFFLINE"))
    safe = re.sub(r"[^A-Za-z0-9._-]+", "--", f"{repo}@{revision or 'default'}")
    marker = cache / f".dsa-complete-{safe}"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RuntimeFailure(ExitCode.FETCH_FAILED, f"cannot create {cache}: {e}") from None
    if offline or marker.exists():
        why = "HF_HUB_OFFLINE is set" if offline else "an earlier pod fetched it"
        log.info("using %s from the cache at %s (%s)", repo, cache, why)
        return _download(snapshot_download, repo, revision, cache, local_only=True)
    try:
        with FileLock(str(cache / f".dsa-fetch-{safe}.lock"), timeout=lock_timeout_s):
            if marker.exists():
                log.info("another pod fetched %s while this one waited", repo)
                return _download(snapshot_download, repo, revision, cache, local_only=True)
            log.info("fetching %s into %s (resumes partial downloads)", repo, cache)
            path = _download(snapshot_download, repo, revision, cache, local_only=False)
            marker.write_text(path + "\n", encoding="utf-8")
            log.info("fetched %s to %s", repo, path)
            return path
    except Timeout:
        raise RuntimeFailure(
            ExitCode.FETCH_FAILED, f"another pod holds the download lock for {repo} too long"
        ) from None


def _download(snapshot_download, repo: str, revision: str | None, cache: Path, local_only: bool):
    try:
        return snapshot_download(
            repo_id=repo, revision=revision, cache_dir=str(cache), local_files_only=local_only
        )
    except Exception as e:  # the hub's errors are many; each ends as one line
        first = (str(e).strip().splitlines() or [""])[0]
        where = "in the local cache (offline)" if local_only else "from the hub"
        raise RuntimeFailure(
            ExitCode.FETCH_FAILED,
            f"cannot get {repo} {where}: {type(e).__name__}: {first[:300]}",
        ) from None
