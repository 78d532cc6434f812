"""Where pods land: GPU nodes for engines only, one topology domain per group. Pure.

Each function builds one piece of a PodSpec (tolerations, affinity) or an engine pod's label,
and says which Kubernetes, LeaderWorkerSet or Kueue behaviour it mirrors. `render.py` (engines,
router) and `evaluation_job.py` (evaluation Jobs) call them; nothing else decides placement.
"""

from __future__ import annotations

import hashlib
from typing import Any

from dsa_operator import labels
from dsa_operator.api import PlacementSpec, RouterSpec
from dsa_operator.hardware import ACCELERATORS

Obj = dict[str, Any]
HOSTNAME = "kubernetes.io/hostname"
LABEL_VALUE_MAX = 63
SPREAD_WEIGHT = 100  # the largest weight a preferred term may carry


def gpu_product_labels() -> list[str]:
    """The node labels that mark a GPU node: each vendor's product label in the hardware catalog
    (NVIDIA GPU feature discovery's nvidia.com/gpu.product, AMD's device plugin labeller's
    amd.com/gpu.product-name), each once, in catalog order."""
    return list(dict.fromkeys(a.product_label for a in ACCELERATORS.values()))


def away_from_gpu_nodes() -> Obj:
    """Required node affinity that keeps a pod needing no GPU off GPU nodes.

    A node carrying a GPU product label is a GPU node. One node selector term whose expressions all
    say `DoesNotExist`: Kubernetes ANDs the expressions of a term ("Assigning Pods to Nodes", node
    affinity: a pod is scheduled onto a node only if all matchExpressions of one term are
    satisfied), so the pod fits only a node with none of those labels. GPU taints already repel
    such pods from nodes that are tainted; this also covers GPU nodes left untainted, where a CPU
    pod would take the CPU and memory an engine needs."""
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": k, "operator": "DoesNotExist"} for k in gpu_product_labels()
                        ]
                    }
                ]
            }
        }
    }


def gpu_toleration(resource: str) -> Obj:
    """Tolerates the taint GPU nodes carry, keyed by their GPU resource.

    The NVIDIA GPU operator and GKE taint GPU nodes `nvidia.com/gpu=present:NoSchedule`, and
    Kubernetes' ExtendedResourceToleration admission plugin adds exactly this toleration (key = the
    extended resource, operator Exists, effect NoSchedule) to pods requesting such a resource."""
    return {"key": resource, "operator": "Exists", "effect": "NoSchedule"}


def engine_tolerations(resource: str, user: list[Obj]) -> list[Obj]:
    """An engine pod's tolerations: its GPU resource's taint first, then the user's
    (spec.hardware.tolerations), without repeating one equal to the first."""
    own = gpu_toleration(resource)
    return [own, *(t for t in user if t != own)]


def router_scheduling(router: RouterSpec) -> Obj:
    """The router pod's nodeSelector, tolerations and affinity (PodSpec keys; empty ones left out).

    It needs no GPU: by default it stays off GPU nodes (`away_from_gpu_nodes`) and tolerates no GPU
    taint. `spec.router.affinity` replaces that default; `{}` drops it (the router may land anywhere)."""
    affinity = away_from_gpu_nodes() if router.affinity is None else router.affinity
    out: Obj = {
        "nodeSelector": dict(router.node_selector),
        "tolerations": list(router.tolerations),
        "affinity": affinity,
    }
    return {k: v for k, v in out.items() if v}


def group_key(namespace: str, model: str, role: str, group: int) -> str:
    """A label value naming one engine group uniquely in the cluster (`serving.dsa.dev/group-key`).

    `<namespace>.<model>.<role>.<group>` when it fits a label value (63 characters: apimachinery's
    IsValidLabelValue): namespace and DSAModel names are DNS labels, so they hold no `.` and the
    value is unambiguous. Longer: `sha256-` and the first 32 hex digits of the SHA-256 of that
    text, as LeaderWorkerSet's group-key label is a hash (no `.` in it, so no readable value can
    equal it)."""
    readable = f"{namespace}.{model}.{role}.{group}"
    if len(readable) <= LABEL_VALUE_MAX:
        return readable
    return "sha256-" + hashlib.sha256(readable.encode()).hexdigest()[:32]


def _one_rank_per_node(group_selector: dict[str, str]) -> Obj:
    """Ranks of one multi-node group on distinct nodes: SGLang's --nnodes counts hosts, each rank
    drives all of its node's GPUs, and two ranks on one node would contend for them. GPU capacity
    alone keeps them apart only where a node has exactly one rank's worth of GPUs."""
    return {"labelSelector": {"matchLabels": group_selector}, "topologyKey": HOSTNAME}


def _group_in_one_domain(group_selector: dict[str, str], topology_key: str) -> Obj:
    """All ranks of a multi-node group in one domain of `topology_key` (required pod affinity to the
    group's own pods).

    The first rank of a group finds no peer yet. kube-scheduler's InterPodAffinity filter lets it
    through ("this pod may be the first pod in a series that have affinity to themselves": no other
    pod matches the term, the pod's own labels do, and the node carries the topology label), and
    the other ranks then follow it into its domain. A node without the topology label never fits
    this term (the same filter: "all topology labels must exist on the node"); the Kubernetes docs
    ("Inter-pod affinity and anti-affinity") ask for every node to be labelled consistently."""
    return {"labelSelector": {"matchLabels": group_selector}, "topologyKey": topology_key}


def _spread_groups(role_selector: dict[str, str], group: int, topology_key: str) -> Obj:
    """Groups of one model and role prefer distinct domains (preferred pod anti-affinity against
    the role's other groups), so one domain's failure takes out as few groups as possible."""
    return {
        "weight": SPREAD_WEIGHT,
        "podAffinityTerm": {
            "labelSelector": {
                "matchLabels": role_selector,
                "matchExpressions": [{"key": labels.GROUP, "operator": "NotIn", "values": [str(group)]}],
            },
            "topologyKey": topology_key,
        },
    }


def _domain_to_itself(own_key: str, topology_key: str) -> Obj:
    """One group per domain (required pod anti-affinity against every other group's engine pods,
    of any DSAModel, in all namespaces: `namespaceSelector: {}` selects every namespace).

    LeaderWorkerSet's `leaderworkerset.sigs.k8s.io/exclusive-topology` does the same with its
    group-key label: anti-affinity to pods whose key Exists and is NotIn the group's own. Required
    anti-affinity is symmetric in the scheduler, so another group's pod is also kept out of a
    domain this group already holds."""
    return {
        "labelSelector": {
            "matchExpressions": [
                {"key": labels.GROUP_KEY, "operator": "Exists"},
                {"key": labels.GROUP_KEY, "operator": "NotIn", "values": [own_key]},
            ]
        },
        "namespaceSelector": {},
        "topologyKey": topology_key,
    }


def engine_affinity(
    placement: PlacementSpec, *, model: str, role: str, group: int, nodes: int, own_key: str
) -> Obj | None:
    """An engine group's pod affinity; None when it needs none (a single-node group without a
    topologyKey).

    Multi-node groups keep one rank per node. With `placement.topologyKey`: a multi-node group's
    ranks share one domain, and the role's groups spread over domains; with `exclusive` too, the
    domain is the group's alone."""
    group_sel = {labels.MODEL: model, labels.ROLE: role, labels.GROUP: str(group)}
    role_sel = {labels.MODEL: model, labels.ROLE: role}
    affinity_terms: list[Obj] = []
    anti_required: list[Obj] = []
    anti_preferred: list[Obj] = []
    if nodes > 1:
        anti_required.append(_one_rank_per_node(group_sel))
    key = placement.topology_key
    if key:
        if nodes > 1:
            affinity_terms.append(_group_in_one_domain(group_sel, key))
        anti_preferred.append(_spread_groups(role_sel, group, key))
        if placement.exclusive:
            anti_required.append(_domain_to_itself(own_key, key))
    out: Obj = {}
    if affinity_terms:
        out["podAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": affinity_terms}
    anti: Obj = {}
    if anti_required:
        anti["requiredDuringSchedulingIgnoredDuringExecution"] = anti_required
    if anti_preferred:
        anti["preferredDuringSchedulingIgnoredDuringExecution"] = anti_preferred
    if anti:
        out["podAntiAffinity"] = anti
    return out or None


def queue_labels(placement: PlacementSpec) -> dict[str, str]:
    """An engine StatefulSet's Kueue labels: the LocalQueue (`kueue.x-k8s.io/queue-name`).

    Kueue's StatefulSet integration (on by default since Kueue v0.15; docs: "Run StatefulSet")
    admits a StatefulSet labelled so as one pod group: its pods are gated until the whole group
    fits, then all start. Only engine StatefulSets carry it: the router is not gang-admitted and
    needs no GPU."""
    return {labels.QUEUE_NAME: placement.queue_name} if placement.queue_name else {}


def queue_pod_annotations(placement: PlacementSpec) -> dict[str, str]:
    """An engine pod template's Kueue topology annotation: with a queue and a topologyKey, Kueue's
    topology-aware scheduling (`kueue.x-k8s.io/podset-required-topology`) admits a group only into
    one domain of that node label with room for all of its pods, before any pod is ungated."""
    if placement.queue_name and placement.topology_key:
        return {labels.REQUIRED_TOPOLOGY: placement.topology_key}
    return {}
