"""fetch-model without network: local sources, an offline cache, an unreachable hub."""

from __future__ import annotations

from dsa_runtime.errors import ExitCode
from tests.runtime.conftest import dsa, free_port, make_plan, runtime_env
from tests.runtime.test_cli import _one_line_error

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(home, repo="deepseek-ai/DeepSeek-V3.2"):
    """The on-disk layout huggingface_hub writes: refs/main -> snapshots/<commit>/."""
    root = home / "hub" / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    return snap


def test_local_source_used_as_is(tmp_path, write_plan):
    model = tmp_path / "models" / "dsv32"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    plan = make_plan(["x"])
    plan["model"].update(source=str(model), localPath=str(model))
    res = dsa(["fetch-model"], runtime_env(tmp_path, write_plan(plan)))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(model)


def test_local_source_missing(tmp_path, write_plan):
    plan = make_plan(["x"])
    plan["model"]["localPath"] = str(tmp_path / "nothing")
    res = dsa(["fetch-model"], runtime_env(tmp_path, write_plan(plan)))
    _one_line_error(res, ExitCode.MODEL_MISSING, "absent or empty")


def test_offline_uses_the_cache(tmp_path, write_plan):
    home = tmp_path / "models" / "huggingface"
    snap = _hub_cache(home)
    plan = make_plan(["x"], env={"HF_HOME": str(home)})
    res = dsa(["fetch-model"], runtime_env(tmp_path, write_plan(plan), HF_HUB_OFFLINE="1"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(snap)


def test_offline_without_cache_is_a_clean_error(tmp_path, write_plan):
    plan = make_plan(["x"], env={"HF_HOME": str(tmp_path / "empty")})
    res = dsa(["fetch-model"], runtime_env(tmp_path, write_plan(plan), HF_HUB_OFFLINE="1"))
    _one_line_error(res, ExitCode.FETCH_FAILED, "in the local cache (offline)")


def test_unreachable_hub_is_a_clean_error(tmp_path, write_plan):
    plan = make_plan(["x"], env={"HF_HOME": str(tmp_path / "hf")})
    env = runtime_env(
        tmp_path,
        write_plan(plan),
        HF_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        HF_HUB_ETAG_TIMEOUT="2",
        HF_HUB_DOWNLOAD_TIMEOUT="2",
    )
    res = dsa(["fetch-model"], env, timeout=120)  # a hang fails here, whatever the machine's speed
    _one_line_error(res, ExitCode.FETCH_FAILED, "from the hub")
    assert not list((tmp_path / "hf" / "hub").glob(".dsa-complete-*"))


def test_marker_skips_the_hub(tmp_path, write_plan):
    """After one pod's download, others on the volume never ask the (unreachable) hub."""
    home = tmp_path / "models" / "huggingface"
    snap = _hub_cache(home)
    (home / "hub" / ".dsa-complete-deepseek-ai--DeepSeek-V3.2--default").write_text(str(snap))
    plan = make_plan(["x"], env={"HF_HOME": str(home)})
    env = runtime_env(tmp_path, write_plan(plan), HF_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    res = dsa(["fetch-model"], env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(snap)
    assert "an earlier pod fetched it" in res.stderr
