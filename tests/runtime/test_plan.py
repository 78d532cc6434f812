import json

import pytest

from dsa_runtime import plan as P
from dsa_runtime.errors import ExitCode, RuntimeFailure
from tests.runtime.conftest import make_plan


def _fail(fn, *a, **kw) -> RuntimeFailure:
    with pytest.raises(RuntimeFailure) as e:
        fn(*a, **kw)
    return e.value


def test_load_ok(write_plan):
    plan = P.load_plan(write_plan(make_plan(["x"])))
    assert plan.hardware.gpus_per_node == 8 and plan.pods[0].argv == ["x"]


def test_missing_and_malformed(tmp_path, write_plan):
    assert _fail(P.load_plan, tmp_path / "nope.json").code == ExitCode.PLAN_MISSING
    e = _fail(P.load_plan, write_plan("{not json"))
    assert e.code == ExitCode.PLAN_MALFORMED and "not valid JSON" in e.message
    bad = make_plan(["x"])
    del bad["hardware"]
    e = _fail(P.load_plan, write_plan(json.dumps(bad)))
    assert e.code == ExitCode.PLAN_MALFORMED and "hardware" in e.message
    empty_argv = make_plan([])
    assert _fail(P.load_plan, write_plan(empty_argv)).code == ExitCode.PLAN_MALFORMED


def test_plan_path_env(monkeypatch):
    monkeypatch.setenv("DSA_PLAN_FILE", "/x/p.json")
    assert str(P.plan_path()) == "/x/p.json"
    monkeypatch.delenv("DSA_PLAN_FILE")
    assert str(P.plan_path()) == P.DEFAULT_PLAN_FILE


def test_identity():
    who = P.identity_from_env({"DSA_ROLE": "prefill", "DSA_GROUP": "1", "DSA_RANK": "2"})
    assert (who.role, who.group, who.rank) == ("prefill", 1, 2)
    who = P.identity_from_env({"DSA_ROLE": "decode", "DSA_GROUP": "0", "POD_NAME": "m-d-0-3"})
    assert who.rank == 3
    assert P.identity_from_env({}, default_role="router") == P.Identity("router", 0, 0)
    for env in (
        {},
        {"DSA_ROLE": "x"},
        {"DSA_ROLE": "serving", "DSA_GROUP": "0"},
        {"DSA_ROLE": "serving", "DSA_GROUP": "a", "DSA_RANK": "0"},
        {"DSA_ROLE": "serving", "DSA_GROUP": "-1", "DSA_RANK": "0"},
    ):
        assert _fail(P.identity_from_env, env).code == ExitCode.IDENTITY_MISSING


def test_pod_entry(write_plan):
    plan = P.load_plan(write_plan(make_plan(["x"], role="prefill", rank=1)))
    assert P.pod_entry(plan, P.Identity("prefill", 0, 1)).argv == ["x"]
    e = _fail(P.pod_entry, plan, P.Identity("prefill", 0, 0))
    assert e.code == ExitCode.POD_NOT_IN_PLAN and "prefill/0/1" in e.message


def test_argv_helpers():
    argv = ["sglang", "--nnodes", "2", "--dist-init-addr", "m-p-0-0.m-p-0.ns.svc:20000", "--port=31000"]
    assert P.leader_address(argv) == ("m-p-0-0.m-p-0.ns.svc", 20000)
    assert P.nnodes(argv) == 2 and P.serving_port(argv) == 31000
    assert P.leader_address(["sglang"]) is None
    assert P.serving_port(["sglang"]) == 30000
    assert P.leader_address(["--dist-init-addr", "[::1]:5"]) == ("::1", 5)
    assert _fail(P.leader_address, ["--dist-init-addr", "host"]).code == ExitCode.PLAN_MALFORMED


def test_the_rendered_plan_configmap_names_the_engine():
    """What a pod mounts at /etc/dsa/plan.json, from the operator's own render."""
    from dsa_operator.api import parse_spec
    from dsa_operator.planner import plan as make
    from dsa_operator.render import render
    from tests.conftest import ROOT, load

    manifest = load(ROOT / "examples" / "19-pd-pp-cp.yaml")
    manifest["spec"].setdefault("runtime", {})["engine"] = "simulator"
    owner = {"metadata": {"name": "m", "uid": "u"}}
    objs = render(make(manifest), parse_spec(manifest["spec"]), owner)
    docs = [o["data"]["plan.json"] for o in objs if o["kind"] == "ConfigMap"]
    assert docs
    for text in docs:
        p = P.Plan.model_validate_json(text)
        assert p.engine == "simulator"
    older = {k: v for k, v in json.loads(docs[0]).items() if k != "engine"}
    assert P.Plan.model_validate(older).engine == "sglang"  # a plan from before the field
