"""Where pods land: GPU nodes for engines only, and `spec.placement` (one domain per group, Kueue).

Label selectors are checked by evaluating them against the pod labels the renderer gives other
groups, as the scheduler does, not only by their shape."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from dsa_operator import labels
from dsa_operator.api import parse_spec
from dsa_operator.crd import build_crd
from dsa_operator.errors import PlanError
from dsa_operator.evaluation_api import parse_evaluation
from dsa_operator.evaluation_job import Target, render_job
from dsa_operator.placement import away_from_gpu_nodes, group_key
from dsa_operator.planner import plan
from dsa_operator.render import render
from dsa_operator.suites import Settings, settings_for
from tests.conftest import ROOT, load

OWNER = {"metadata": {"name": "m", "uid": "0000-1111"}}
RACK = "topology.dsa-operator.io/rack"
GPU_LABELS = {"nvidia.com/gpu.product", "amd.com/gpu.product-name"}
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")  # apimachinery IsValidLabelValue
REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
PREFERRED = "preferredDuringSchedulingIgnoredDuringExecution"


def manifest(name: str = "19-pd-pp-cp", namespace: str | None = None, **placement) -> dict:
    m = load(ROOT / "examples" / f"{name}.yaml")
    if namespace:
        m["metadata"]["namespace"] = namespace
    if placement:
        m["spec"]["placement"] = placement
    return m


def objects(m: dict) -> list[dict]:
    return render(plan(m), parse_spec(m["spec"]), OWNER)


def kind(objs: list[dict], k: str) -> list[dict]:
    return [o for o in objs if o["kind"] == k]


def statefulsets(objs: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in kind(objs, "StatefulSet")}


def pod_spec(o: dict) -> dict:
    return o["spec"]["template"]["spec"]


def pod_labels(o: dict) -> dict:
    return o["spec"]["template"]["metadata"]["labels"]


def router(objs: list[dict]) -> dict:
    (dep,) = kind(objs, "Deployment")
    return pod_spec(dep)


def matches(selector: dict, pod: dict[str, str]) -> bool:
    """A metav1.LabelSelector against a pod's labels, as the scheduler evaluates it."""
    if any(pod.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {
            "In": key in pod and pod[key] in values,
            "NotIn": key not in pod or pod[key] not in values,
            "Exists": key in pod,
            "DoesNotExist": key not in pod,
        }[op]
        if not ok:
            return False
    return True


def problems(m: dict) -> dict[str, str]:
    with pytest.raises(PlanError) as e:
        plan(m)
    return {p.path: p.message for p in e.value.problems}


# ---- GPU nodes are for engines ----------------------------------------------------------------
@pytest.mark.parametrize(("accelerator", "resource"), [("h200", "nvidia.com/gpu"), ("mi300x", "amd.com/gpu")])
def test_engines_tolerate_their_gpu_taint_and_keep_the_users(accelerator, resource):
    m = manifest("03-pure-tp")
    m["spec"]["hardware"] = {
        "accelerator": accelerator,
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"},
            {"key": resource, "operator": "Exists", "effect": "NoSchedule"},  # the same: not repeated
        ],
    }
    if accelerator == "mi300x":
        m["spec"]["serving"]["kernels"] = {"prefill": "tilelang", "decode": "tilelang"}
    (sts,) = kind(objects(m), "StatefulSet")
    assert pod_spec(sts)["tolerations"] == [
        {"key": resource, "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"},
    ]


def test_every_engine_tolerates_the_gpu_taint_without_any_user_toleration():
    for sts in kind(objects(manifest()), "StatefulSet"):
        assert pod_spec(sts)["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]


def test_the_router_stays_off_gpu_nodes_and_tolerates_no_gpu_taint():
    spec = router(objects(manifest()))
    assert "tolerations" not in spec and "nodeSelector" not in spec
    (term,) = spec["affinity"]["nodeAffinity"][REQUIRED]["nodeSelectorTerms"]
    # One term: all of its expressions must hold, so a node with any GPU product label is out.
    assert {e["key"] for e in term["matchExpressions"]} == GPU_LABELS
    assert {e["operator"] for e in term["matchExpressions"]} == {"DoesNotExist"}
    assert not matches_node(term, {"nvidia.com/gpu.product": "NVIDIA-H200", "kubernetes.io/os": "linux"})
    assert not matches_node(term, {"amd.com/gpu.product-name": "AMD-Instinct-MI300X"})
    assert matches_node(term, {"kubernetes.io/os": "linux"})


def matches_node(term: dict, node_labels: dict[str, str]) -> bool:
    return matches({"matchExpressions": term["matchExpressions"]}, node_labels)


def test_every_accelerator_of_the_catalog_is_kept_away_from():
    from dsa_operator.hardware import ACCELERATORS

    (term,) = away_from_gpu_nodes()["nodeAffinity"][REQUIRED]["nodeSelectorTerms"]
    for a in ACCELERATORS.values():
        assert not matches_node(term, {a.product_label: a.product}), a.name


def test_router_affinity_empty_removes_it_and_a_custom_one_replaces_it():
    m = manifest()
    m["spec"]["router"] = {"affinity": {}}
    assert "affinity" not in router(objects(m))
    custom = {
        "nodeAffinity": {
            REQUIRED: {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["cpu"]}]}
                ]
            }
        }
    }
    m["spec"]["router"] = {
        "affinity": custom,
        "nodeSelector": {"pool": "cpu"},
        "tolerations": [{"key": "cpu-only", "operator": "Exists"}],
    }
    spec = router(objects(m))
    assert spec["affinity"] == custom
    assert spec["nodeSelector"] == {"pool": "cpu"}
    assert spec["tolerations"] == [{"key": "cpu-only", "operator": "Exists"}]


def test_router_settings_leave_engines_alone():
    m = manifest()
    base = statefulsets(objects(copy.deepcopy(m)))
    m["spec"]["router"] = {"affinity": {}, "nodeSelector": {"pool": "cpu"}}
    assert statefulsets(objects(m)) == base


def test_router_and_evaluation_jobs_and_the_chart_share_one_gpu_rule():
    """The operator's own pod (chart default), routers and evaluation Jobs: one definition."""
    values = yaml.safe_load((ROOT / "charts" / "dsa-operator" / "values.yaml").read_text())
    assert values["affinity"] == away_from_gpu_nodes()
    assert router(objects(manifest()))["affinity"] == away_from_gpu_nodes()
    spec = parse_evaluation({"model": "m", "suite": "gsm8k"})
    job = render_job(
        name="e",
        namespace="ns",
        owner={"apiVersion": "v1", "kind": "X", "metadata": {"name": "e", "uid": "u"}},
        job_labels={},
        annotations={},
        spec=spec,
        settings=settings_for("gsm8k", "deepseek-v3.2", Settings()),
        target=Target("h", 1, "endpoint"),
        image="i",
        pull_policy="IfNotPresent",
        timeout_seconds=60,
    )
    assert pod_spec(job)["affinity"] == away_from_gpu_nodes() and "tolerations" not in pod_spec(job)


# ---- one group, one domain --------------------------------------------------------------------
def test_without_placement_groups_have_no_topology_terms():
    sts = statefulsets(objects(manifest()))
    pre = pod_spec(sts["dsv32-pd-pp-cp-prefill-0"])["affinity"]
    assert set(pre) == {"podAntiAffinity"} and set(pre["podAntiAffinity"]) == {REQUIRED}
    (term,) = pre["podAntiAffinity"][REQUIRED]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert "affinity" not in pod_spec(sts["dsv32-pd-pp-cp-decode-0"])


def _two_prefill_groups(**placement) -> dict:
    m = manifest(namespace="llm", **placement)
    m["spec"]["prefill"]["replicas"] = 2
    m["spec"]["decode"]["replicas"] = 2
    return m


def test_topology_key_keeps_a_group_in_one_domain_and_spreads_groups():
    sts = statefulsets(objects(_two_prefill_groups(topologyKey=RACK)))
    pre0, pre1 = sts["dsv32-pd-pp-cp-prefill-0"], sts["dsv32-pd-pp-cp-prefill-1"]
    aff = pod_spec(pre0)["affinity"]
    # The group's ranks: one domain, still one rank per node.
    (together,) = aff["podAffinity"][REQUIRED]
    assert together["topologyKey"] == RACK
    assert matches(together["labelSelector"], pod_labels(pre0))
    assert not matches(together["labelSelector"], pod_labels(pre1))
    hosts = [t for t in aff["podAntiAffinity"][REQUIRED] if t["topologyKey"] == "kubernetes.io/hostname"]
    assert len(hosts) == 1 and matches(hosts[0]["labelSelector"], pod_labels(pre0))
    # Groups of the role: preferably apart (a preference: scheduling never waits on it).
    (spread,) = aff["podAntiAffinity"][PREFERRED]
    assert spread["weight"] == 100 and spread["podAffinityTerm"]["topologyKey"] == RACK
    sel = spread["podAffinityTerm"]["labelSelector"]
    assert matches(sel, pod_labels(pre1)) and not matches(sel, pod_labels(pre0))
    assert not matches(sel, pod_labels(sts["dsv32-pd-pp-cp-decode-0"]))  # another role may share
    assert "namespaceSelector" not in spread["podAffinityTerm"]  # the model's namespace only
    assert "namespaceSelector" not in together


def test_single_node_groups_spread_but_need_no_group_affinity():
    sts = statefulsets(objects(_two_prefill_groups(topologyKey=RACK)))
    dec0, dec1 = sts["dsv32-pd-pp-cp-decode-0"], sts["dsv32-pd-pp-cp-decode-1"]
    aff = pod_spec(dec0)["affinity"]
    assert "podAffinity" not in aff and REQUIRED not in aff["podAntiAffinity"]
    (spread,) = aff["podAntiAffinity"][PREFERRED]
    assert matches(spread["podAffinityTerm"]["labelSelector"], pod_labels(dec1))


def test_exclusive_keeps_every_other_group_of_any_model_out_of_the_domain():
    a = statefulsets(objects(_two_prefill_groups(topologyKey=RACK, exclusive=True)))
    other_ns = statefulsets(objects(manifest("03-pure-tp", namespace="team-b")))
    pre0 = a["dsv32-pd-pp-cp-prefill-0"]
    required = pod_spec(pre0)["affinity"]["podAntiAffinity"][REQUIRED]
    (excl,) = [t for t in required if t["topologyKey"] == RACK]
    assert excl["namespaceSelector"] == {}  # all namespaces
    sel = excl["labelSelector"]
    assert not matches(sel, pod_labels(pre0))  # its own pods
    for name, sts in [*a.items(), *other_ns.items()]:
        if name != "dsv32-pd-pp-cp-prefill-0":
            assert matches(sel, pod_labels(sts)), name
    assert not matches(sel, {labels.MODEL: "x", labels.COMPONENT: "router"})  # not a group's pod
    # The single-node groups are exclusive as well.
    dec = pod_spec(a["dsv32-pd-pp-cp-decode-0"])["affinity"]["podAntiAffinity"][REQUIRED]
    assert [t["topologyKey"] for t in dec] == [RACK]


def test_group_keys_are_unique_and_valid_label_values():
    keys = {
        group_key(ns, model, role, g)
        for ns in ("llm", "team-b")
        for model in ("dsv32", "dsv32-b")
        for role in ("serving", "prefill", "decode")
        for g in range(3)
    }
    assert len(keys) == 2 * 2 * 3 * 3
    assert group_key("llm", "dsv32", "prefill", 0) == "llm.dsv32.prefill.0"  # readable where it fits
    long_ns, long_model = "n" * 63, "m" * 40
    long_keys = {group_key(long_ns, long_model, "prefill", g) for g in range(12)}
    assert len(long_keys) == 12
    for k in keys | long_keys:
        assert len(k) <= 63 and LABEL_VALUE.match(k), k


def test_the_group_key_is_a_pod_label_outside_the_statefulset_selector():
    """Added to pods only: a StatefulSet's selector is immutable, so it must not change."""
    for sts in kind(objects(manifest(namespace="llm")), "StatefulSet"):
        g = sts["metadata"]["labels"][labels.GROUP]
        role = sts["metadata"]["labels"][labels.ROLE]
        assert pod_labels(sts)[labels.GROUP_KEY] == group_key("llm", "dsv32-pd-pp-cp", role, int(g))
        assert labels.GROUP_KEY not in sts["spec"]["selector"]["matchLabels"]


def test_scaling_a_role_leaves_other_groups_placement_untouched():
    before = statefulsets(objects(manifest(topologyKey=RACK, exclusive=True, queueName="gpu-queue")))
    m = _two_prefill_groups(topologyKey=RACK, exclusive=True, queueName="gpu-queue")
    del m["metadata"]["namespace"]
    after = statefulsets(objects(m))
    for name, sts in before.items():
        assert after[name] == sts, name


# ---- Kueue -------------------------------------------------------------------------------------
def test_queue_name_labels_engine_statefulsets_only():
    objs = objects(manifest(queueName="gpu-queue"))
    for sts in kind(objs, "StatefulSet"):
        assert sts["metadata"]["labels"][labels.QUEUE_NAME] == "gpu-queue"
        # No topologyKey: Kueue admits the group whole, wherever it fits.
        assert labels.REQUIRED_TOPOLOGY not in sts["spec"]["template"]["metadata"]["annotations"]
    for o in objs:
        if o["kind"] != "StatefulSet":
            assert labels.QUEUE_NAME not in o["metadata"]["labels"], o["metadata"]["name"]
            tmpl = o.get("spec", {}).get("template", {}).get("metadata", {})
            assert labels.QUEUE_NAME not in tmpl.get("labels", {}), o["metadata"]["name"]


def test_queue_name_with_topology_key_asks_kueue_for_one_domain():
    for sts in kind(objects(manifest(queueName="gpu-queue", topologyKey=RACK)), "StatefulSet"):
        assert sts["spec"]["template"]["metadata"]["annotations"][labels.REQUIRED_TOPOLOGY] == RACK
    # A topologyKey alone involves no Kueue.
    for sts in kind(objects(manifest(topologyKey=RACK)), "StatefulSet"):
        assert labels.QUEUE_NAME not in sts["metadata"]["labels"]
        assert labels.REQUIRED_TOPOLOGY not in sts["spec"]["template"]["metadata"]["annotations"]


def test_the_placement_example_is_queued_in_one_rack():
    objs = objects(load(ROOT / "examples" / "18-placement.yaml"))
    (sts,) = kind(objs, "StatefulSet")
    assert sts["spec"]["replicas"] == 2
    assert sts["metadata"]["labels"][labels.QUEUE_NAME] == "gpu-queue"
    assert sts["spec"]["template"]["metadata"]["annotations"][labels.REQUIRED_TOPOLOGY] == RACK
    (together,) = pod_spec(sts)["affinity"]["podAffinity"][REQUIRED]
    assert together["topologyKey"] == RACK


# ---- bad input ---------------------------------------------------------------------------------
def test_exclusive_without_topology_key_is_refused_naming_both_fields():
    found = problems(manifest(exclusive=True))
    assert "spec.placement.topologyKey" in found["spec.placement.exclusive"]


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("queueName", "GPU_Queue", "DNS-1123 label"),
        ("queueName", "q" * 64, "at most 63"),
        ("topologyKey", "rack/", "label key"),
        ("topologyKey", "Example.com/rack", "label key"),
        ("topologyKey", "example.com/" + "r" * 64, "label key"),
    ],
)
def test_invalid_queue_name_or_topology_key_is_refused_at_its_field(field, value, words):
    found = problems(manifest(**{field: value}))
    assert words in found[f"spec.placement.{field}"]


def test_crd_carries_the_exclusive_rule_at_its_field():
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    (rule,) = [r for r in spec["x-kubernetes-validations"] if r.get("fieldPath") == ".placement.exclusive"]
    assert "has(self.placement.topologyKey)" in rule["rule"] and "topologyKey" in rule["message"]
    placement = spec["properties"]["placement"]["properties"]
    assert re.match(placement["topologyKey"]["pattern"], RACK)
    assert not re.match(placement["queueName"]["pattern"], "Gpu-Queue")
    assert placement["queueName"]["maxLength"] == 63
    router = spec["properties"]["router"]["properties"]
    assert router["affinity"]["x-kubernetes-preserve-unknown-fields"] is True
