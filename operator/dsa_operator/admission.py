"""All-or-nothing admission through Kueue, as the operator sees it. Pure.

A DSAModel with `spec.placement.queueName` labels each group's StatefulSet with Kueue's queue
label; Kueue's StatefulSet integration (on by default since Kueue v0.15; kueue
pkg/controller/jobs/statefulset) then makes the StatefulSet one pod group: a Workload with one pod
set of `replicas` pods, admitted whole or not at all. Until it is admitted, every pod of the group
carries Kueue's scheduling gate, so no pod holds a GPU alone. This module reads that state back,
to say in the DSAModel's status which groups wait and Kueue's own reason, and holds the one rule
Kueue imposes on what the operator may change in a queued group.
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]

# kueue pkg/controller/jobs/pod/constants: the gate Kueue puts on every pod it manages, lifted at
# admission; apis/kueue/v1beta2/topology_types.go: the gate held until topology-aware scheduling
# has assigned the pod its domain.
ADMISSION_GATE = "kueue.x-k8s.io/admission"
TOPOLOGY_GATE = "kueue.x-k8s.io/topology"
KUEUE_GATES = (ADMISSION_GATE, TOPOLOGY_GATE)
# Set on each pod of a StatefulSet's group by Kueue: the name of the group's Workload.
POD_GROUP = "kueue.x-k8s.io/pod-group-name"
KUEUE_API = ("kueue.x-k8s.io", "v1beta2")  # group, version
WORKLOADS = "workloads"


def gated(pod: Obj) -> bool:
    """The pod waits for Kueue: it cannot be scheduled until Kueue lifts its gate."""
    gates = (pod.get("spec") or {}).get("schedulingGates") or []
    return any(g.get("name") in KUEUE_GATES for g in gates)


def waiting_workloads(pods: list[Obj]) -> dict[str, list[str]]:
    """The Workloads that gated pods wait on, each with its pods' names (pods not yet labelled by
    Kueue are listed under "")."""
    out: dict[str, list[str]] = {}
    for p in pods:
        if gated(p) and not p["metadata"].get("deletionTimestamp"):
            name = (p["metadata"].get("labels") or {}).get(POD_GROUP, "")
            out.setdefault(name, []).append(p["metadata"]["name"])
    return out


def unmanaged(pods: list[Obj]) -> list[str]:
    """Live pods Kueue has never touched: no gate and no pod-group label. Kueue's pod webhook gates
    each pod of a queued StatefulSet at creation and its reconciler labels it, so such a pod of a
    queued group means Kueue is not there, not at that version, or not watching the namespace,
    and the group was scheduled pod by pod after all."""
    return sorted(
        p["metadata"]["name"]
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and not gated(p)
        and POD_GROUP not in (p["metadata"].get("labels") or {})
    )


def not_managed_reason(namespace: str, pods: list[str]) -> str:
    return (
        f"{', '.join(pods)}: created without Kueue's admission gate, so scheduled pod by pod: is "
        f"Kueue (v0.15 or newer, StatefulSet integration) installed, and does its "
        f"managedJobsNamespaceSelector cover namespace {namespace}?"
    )


def _condition(workload: Obj, ctype: str) -> Obj | None:
    for c in (workload.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def waiting_reason(workload_name: str, workload: Obj | None) -> str:
    """Why Kueue has not admitted the Workload yet, in Kueue's own words where it gave any."""
    if not workload_name or workload is None:
        return "Kueue has not created the group's Workload yet (is Kueue running, and the LocalQueue there?)"
    queue = (workload.get("spec") or {}).get("queueName", "")
    where = f"Workload {workload_name} in queue {queue}" if queue else f"Workload {workload_name}"
    admitted = _condition(workload, "Admitted")
    reserved = _condition(workload, "QuotaReserved")
    if admitted and admitted.get("status") == "True":
        return f"{where} is admitted; Kueue is lifting the pods' gates"
    for c in (reserved, _condition(workload, "Evicted"), admitted):
        if c and c.get("message"):
            return f"{where}: {c.get('reason', '')}: {c['message'].strip()}"
    return f"{where} waits for admission"


# kueue pkg/util/pod/pod.go SpecShape: the fields of a queued pod group's template that Kueue's
# StatefulSet webhook refuses to change (statefulset_webhook.go ValidateUpdate ->
# jobframework.ValidateImmutablePodGroupPodSpec).
_SHAPE_FIELDS = (
    "nodeSelector",
    "affinity",
    "tolerations",
    "runtimeClassName",
    "priority",
    "topologySpreadConstraints",
    "overhead",
    "resourceClaims",
)


def _containers_shape(containers: list[Obj] | None) -> list[Obj]:
    return [
        {
            "requests": (c.get("resources") or {}).get("requests") or {},
            # the API server defaults a port's protocol: compare as stored
            "ports": [{"protocol": "TCP", **p} for p in c.get("ports") or []],
        }
        for c in containers or []
    ]


def kueue_shape(pod_spec: Obj) -> Obj:
    """What Kueue holds fixed in a queued group's pod template: requests, ports and placement."""
    return {
        "initContainers": _containers_shape(pod_spec.get("initContainers")),
        "containers": _containers_shape(pod_spec.get("containers")),
        **{k: pod_spec.get(k) or None for k in _SHAPE_FIELDS},
    }


def queued(obj: Obj | None, queue_label: str) -> bool:
    return bool(((obj or {}).get("metadata") or {}).get("labels", {}).get(queue_label))


def needs_replacement(live: Obj | None, desired: Obj, queue_label: str) -> bool:
    """A queued group's StatefulSet whose new template changes what Kueue holds fixed cannot be
    updated in place (Kueue's webhook refuses it): it is replaced, and the group is queued anew
    as a whole. A change of queue is refused by Kueue just the same once pods run."""
    if live is None or not (queued(live, queue_label) or queued(desired, queue_label)):
        return False
    if (live["metadata"].get("labels") or {}).get(queue_label) != desired["metadata"]["labels"].get(
        queue_label
    ):
        return True
    old = (((live.get("spec") or {}).get("template") or {}).get("spec")) or {}
    new = desired["spec"]["template"]["spec"]
    return _normalise(kueue_shape(old)) != _normalise(kueue_shape(new))


def _normalise(value: Any) -> Any:
    """Quantities as the API server stores them may differ in spelling only from ours: compare the
    text, with empty values dropped (the API server drops them too)."""
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in sorted(value.items()) if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return str(value)
