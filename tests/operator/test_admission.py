"""Kueue admission as the operator reads it: which groups wait, Kueue's reason, and which spec
changes Kueue lets a queued group take in place."""

from __future__ import annotations

import copy

from dsa_operator import admission

QUEUE = "kueue.x-k8s.io/queue-name"


def pod(name: str, gates=(), group: str | None = "wl-1", deleting: bool = False) -> dict:
    meta: dict = {"name": name, "labels": {admission.POD_GROUP: group} if group else {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-04T00:00:00Z"
    return {"metadata": meta, "spec": {"schedulingGates": [{"name": g} for g in gates]}}


def test_only_pods_gated_by_kueue_wait():
    pods = [
        pod("a-0", [admission.ADMISSION_GATE]),
        pod("a-1", [admission.TOPOLOGY_GATE]),
        pod("b-0", ["example.com/other-gate"], group="wl-2"),
        pod("c-0", [], group="wl-3"),
        pod("d-0", [admission.ADMISSION_GATE], group=None),
        pod("e-0", [admission.ADMISSION_GATE], group="wl-4", deleting=True),
    ]
    assert admission.waiting_workloads(pods) == {"wl-1": ["a-0", "a-1"], "": ["d-0"]}


def workload(*conditions: dict) -> dict:
    return {"spec": {"queueName": "gpu-queue"}, "status": {"conditions": list(conditions)}}


def test_the_reason_is_kueues_own_message():
    wl = workload(
        {
            "type": "QuotaReserved",
            "status": "False",
            "reason": "Pending",
            "message": "couldn't assign flavors to pod set main: "
            'topology "racks" doesn\'t allow to fit any of 2 pod(s)',
        }
    )
    why = admission.waiting_reason("wl-1", wl)
    assert why.startswith("Workload wl-1 in queue gpu-queue: Pending: couldn't assign flavors")
    assert "doesn't allow to fit any of 2 pod(s)" in why


def test_a_missing_workload_says_what_to_check():
    assert "Kueue has not created" in admission.waiting_reason("", None)
    assert "LocalQueue" in admission.waiting_reason("wl-1", None)


def test_an_admitted_workload_says_the_gates_are_being_lifted():
    wl = workload(
        {"type": "Admitted", "status": "True", "reason": "Admitted", "message": "The workload is admitted"}
    )
    assert "is admitted" in admission.waiting_reason("wl-1", wl)


def sts(queue: str | None = "gpu-queue", tolerations=None, gpus: str = "8", image: str = "img:1") -> dict:
    return {
        "metadata": {"name": "m-serving-0", "labels": {QUEUE: queue} if queue else {}},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "engine",
                            "image": image,
                            "args": ["serve"],
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "resources": {"requests": {"nvidia.com/gpu": gpus}},
                        }
                    ],
                    "tolerations": tolerations or [],
                }
            }
        },
    }


def as_stored(obj: dict) -> dict:
    """What the API server gives back: defaults filled in (a port's protocol)."""
    out = copy.deepcopy(obj)
    for c in out["spec"]["template"]["spec"]["containers"]:
        for p in c["ports"]:
            p.setdefault("protocol", "TCP")
    return out


def test_an_image_or_argument_change_is_applied_in_place():
    assert not admission.needs_replacement(as_stored(sts()), sts(image="img:2"), QUEUE)


def test_a_change_kueue_holds_fixed_replaces_the_group():
    live = as_stored(sts())
    assert admission.needs_replacement(live, sts(gpus="4"), QUEUE)
    assert admission.needs_replacement(live, sts(tolerations=[{"key": "k", "operator": "Exists"}]), QUEUE)
    assert admission.needs_replacement(live, sts(queue="other"), QUEUE)
    assert admission.needs_replacement(live, sts(queue=None), QUEUE)


def test_groups_outside_kueue_are_never_replaced():
    assert not admission.needs_replacement(as_stored(sts(queue=None)), sts(queue=None, gpus="4"), QUEUE)
    assert not admission.needs_replacement(None, sts(), QUEUE)


def test_pods_kueue_never_touched_are_unmanaged():
    pods = [
        pod("gated-0", [admission.ADMISSION_GATE], group=None),  # just created: gated, not labelled
        pod("admitted-0", [], group="wl-1"),  # admitted: gate lifted, labelled
        pod("outside-0", [], group=None),  # no gate, no label: Kueue never saw it
        pod("outside-1", [], group=None, deleting=True),
    ]
    assert admission.unmanaged(pods) == ["outside-0"]
    why = admission.not_managed_reason("models", ["outside-0"])
    assert "outside-0" in why and "managedJobsNamespaceSelector" in why and "models" in why
