"""The rendered objects: what the cluster will run for a plan."""

from __future__ import annotations

import copy
import json

from dsa_operator import labels
from dsa_operator.api import parse_spec
from dsa_operator.planner import plan
from dsa_operator.render import APPLIED_HASH, render
from tests.conftest import ROOT, load

OWNER = {"metadata": {"name": "m", "uid": "0000-1111"}}


def objects(name: str, mutate=None) -> list[dict]:
    m = load(ROOT / "examples" / f"{name}.yaml")
    if mutate:
        mutate(m)
    return render(plan(m), parse_spec(m["spec"]), OWNER)


def by_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def test_pp_cp_group_statefulset():
    objs = objects("19-pd-pp-cp")
    sts = {o["metadata"]["name"]: o for o in by_kind(objs, "StatefulSet")}
    pre = sts["dsv32-pd-pp-cp-prefill-0"]["spec"]
    assert pre["replicas"] == 2
    assert pre["podManagementPolicy"] == "Parallel" and pre["updateStrategy"] == {"type": "OnDelete"}
    assert pre["serviceName"] == "dsv32-pd-pp-cp-prefill-0"
    pod = pre["template"]
    assert pod["metadata"]["annotations"][labels.BOOTSTRAP_PORT] == "8998"
    c = pod["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert (
        env["DSA_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8" and c["resources"]["limits"]["rdma/ib"] == "1"
    assert "IPC_LOCK" in c["securityContext"]["capabilities"]["add"]
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 3600
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["shm"]["emptyDir"]["medium"] == "Memory"
    assert pod["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-H20"
    assert "decode" not in json.dumps(pod["metadata"]["annotations"])
    dec = sts["dsv32-pd-pp-cp-decode-0"]["spec"]["template"]["metadata"]
    assert labels.BOOTSTRAP_PORT not in dec.get("annotations", {})


def test_group_configmap_holds_exactly_its_pods():
    objs = objects("19-pd-pp-cp")
    cm = next(o for o in by_kind(objs, "ConfigMap") if "prefill-0" in o["metadata"]["name"])
    assert cm["immutable"] is True
    doc = json.loads(cm["data"]["plan.json"])
    assert [(p["role"], p["group"], p["rank"]) for p in doc["pods"]] == [("prefill", 0, 0), ("prefill", 0, 1)]
    sts = next(o for o in by_kind(objs, "StatefulSet") if o["metadata"]["name"].endswith("prefill-0"))
    vol = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "plan")
    assert vol["configMap"]["name"] == cm["metadata"]["name"]


def test_scaling_decode_leaves_other_groups_untouched():
    before = {o["metadata"]["name"]: o for o in objects("19-pd-pp-cp")}

    def more(m):
        m["spec"]["decode"]["replicas"] = 2

    after = {o["metadata"]["name"]: o for o in objects("19-pd-pp-cp", more)}
    for name in ("dsv32-pd-pp-cp-prefill-0", "dsv32-pd-pp-cp-decode-0"):
        assert by_kind([before[name]], "Service") == by_kind([after[name]], "Service")
    sts_b = [o for o in before.values() if o["kind"] == "StatefulSet"]
    sts_a = {o["metadata"]["name"]: o for o in after.values() if o["kind"] == "StatefulSet"}
    for o in sts_b:
        assert o == sts_a[o["metadata"]["name"]]
    assert "dsv32-pd-pp-cp-decode-1" in sts_a


def test_spec_change_makes_a_new_template_revision():
    a = objects("03-pure-tp")

    def tweak(m):
        m["spec"]["serving"]["maxRunningRequests"] = 64

    b = objects("03-pure-tp", tweak)
    sa, sb = by_kind(a, "StatefulSet")[0], by_kind(b, "StatefulSet")[0]
    assert sa["spec"]["template"] != sb["spec"]["template"]
    assert sa["metadata"]["annotations"][APPLIED_HASH] != sb["metadata"]["annotations"][APPLIED_HASH]


def test_router_least_privilege_and_rank0_endpoint():
    objs = objects("12-pd")
    role = by_kind(objs, "Role")[0]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    binding = by_kind(objs, "RoleBinding")[0]
    assert binding["subjects"][0]["name"] == by_kind(objs, "ServiceAccount")[0]["metadata"]["name"]
    dep = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]
    assert dep["securityContext"]["runAsNonRoot"] is True
    assert dep["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    svc = next(o for o in by_kind(objs, "Service") if o["metadata"]["name"] == "dsv32-exp-pd")
    assert svc["spec"]["selector"][labels.COMPONENT] == "router"


def test_unified_endpoint_selects_rank0_pods():
    objs = objects("17-pp-cp")
    assert not by_kind(objs, "Deployment")
    svc = next(o for o in by_kind(objs, "Service") if o["metadata"]["name"] == "dsv32-pp-cp")
    assert svc["spec"]["selector"][labels.POD_INDEX] == "0"
    headless = next(o for o in by_kind(objs, "Service") if o["metadata"]["name"] == "dsv32-pp-cp-serving-0")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True


def test_every_child_is_owned(example):
    m = copy.deepcopy(example)
    for o in render(plan(m), parse_spec(m["spec"]), OWNER):
        ref = o["metadata"]["ownerReferences"][0]
        assert ref["uid"] == "0000-1111" and ref["controller"] is True and ref["kind"] == "DSAModel"
        assert o["metadata"]["labels"][labels.MODEL] == m["metadata"]["name"]


def test_simulator_engine_skips_the_weights_download_only():
    def simulate(m):
        m["spec"].setdefault("runtime", {})["engine"] = "simulator"

    real, sim = objects("12-pd"), objects("12-pd", simulate)
    real_sts = {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in by_kind(real, "StatefulSet")}
    sim_sts = {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in by_kind(sim, "StatefulSet")}
    assert real_sts.keys() == sim_sts.keys()
    for name, spec in sim_sts.items():
        assert "initContainers" in real_sts[name] and "initContainers" not in spec  # no weights to fetch
        assert spec["containers"] == real_sts[name]["containers"]  # same image, args, GPUs, probes
        assert spec["nodeSelector"] == real_sts[name]["nodeSelector"]
    plans = [json.loads(o["data"]["plan.json"]) for o in by_kind(sim, "ConfigMap")]
    assert {p["engine"] for p in plans} == {"simulator"}


def test_ranks_of_a_multi_node_group_never_share_a_node():
    sts = {o["metadata"]["name"]: o for o in by_kind(objects("19-pd-pp-cp"), "StatefulSet")}
    pre = sts["dsv32-pd-pp-cp-prefill-0"]["spec"]
    (term,) = pre["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    # Exactly this group's pods: another group of the model may share the node.
    assert term["labelSelector"]["matchLabels"] == pre["selector"]["matchLabels"]
    one_node = sts["dsv32-pd-pp-cp-decode-0"]["spec"]["template"]["spec"]
    assert "affinity" not in one_node
