"""What the cluster shows of each group, read from its StatefulSet and pods. Pure.

A group is *failed* when one of its pods restarted, failed, runs on a node that stopped
reporting (`lost_nodes`), or was replaced by a pod the operator did not ask for while its peers
live on (`torn`): those still wait in a broken NCCL world, so the whole group must go. A pod
deleted on a lost node stays (terminating) until the node comes back, is deleted, or is declared
out of service; until then its StatefulSet cannot replace it, and the group is *held*.
*Outdated* means a pod runs an older template than the StatefulSet's update revision (OnDelete
leaves it running until the operator rolls the group).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dsa_operator import labels

Obj = dict[str, Any]
REVISION = "controller-revision-hash"


@dataclass(frozen=True)
class Evidence:
    """Why a pod counts as failed: kept in an Event before the group is restarted."""

    pod: str
    reason: str
    exit_code: int | None = None
    message: str = ""

    def describe(self) -> str:
        code = f" exit code {self.exit_code}" if self.exit_code is not None else ""
        msg = f": {self.message.strip()[:500]}" if self.message.strip() else ""
        return f"pod {self.pod} {self.reason}{code}{msg}"


@dataclass(frozen=True)
class GroupView:
    role: str
    index: int
    exists: bool
    want_pods: int
    pods: tuple[str, ...]  # names
    uids: frozenset[str]
    ready: bool
    outdated: bool
    evidence: tuple[Evidence, ...] = ()
    unschedulable: tuple[str, ...] = ()  # "pod: scheduler message"
    terminating: bool = False
    held: tuple[str, ...] = ()  # pods kept by a lost node, with what would free them
    revision: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def torn(incarnation: frozenset[str], live: frozenset[str]) -> bool:
    """Some, not all, pods of the group's last whole incarnation are gone: the survivors
    formed their NCCL world with the lost peers and cannot take in a replacement, so the
    group must restart. When none survive (a one-pod group's pod replaced, or every pod
    deleted at once), what comes up is already a whole new incarnation: restarting it again
    would only repeat the model load."""
    return bool(incarnation - live) and bool(incarnation & live)


def _ready(pod: Obj) -> bool:
    for c in pod.get("status", {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def _evidence(pod: Obj) -> list[Evidence]:
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    out = []
    if status.get("phase") == "Failed":
        out.append(Evidence(name, "failed", None, status.get("message") or status.get("reason") or ""))
    for cs in status.get("containerStatuses") or []:
        if (cs.get("restartCount") or 0) > 0 or (cs.get("state") or {}).get("terminated"):
            term = (
                (cs.get("lastState") or {}).get("terminated")
                or (cs.get("state") or {}).get("terminated")
                or {}
            )
            if not term and not cs.get("restartCount"):
                continue
            out.append(
                Evidence(
                    name,
                    f"container {cs.get('name')} restarted ({cs.get('restartCount', 0)}x)"
                    if cs.get("restartCount")
                    else f"container {cs.get('name')} terminated",
                    term.get("exitCode"),
                    term.get("message") or term.get("reason") or "",
                )
            )
    return out


def _unschedulable(pod: Obj) -> str | None:
    for c in pod.get("status", {}).get("conditions") or []:
        if (
            c.get("type") == "PodScheduled"
            and c.get("status") == "False"
            and c.get("reason") == "Unschedulable"
        ):
            return f"{pod['metadata']['name']}: {c.get('message', '').strip()}"
    return None


# What frees a pod kept by a lost node (Kubernetes' non-graceful node shutdown, GA in 1.28):
# the pod garbage collector then deletes it, and its StatefulSet can create it elsewhere.
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute"


def lost_node(node: Obj | None) -> str | None:
    """Why a node counts as lost (its Ready condition not True: the kubelet stopped reporting, or
    reports NotReady), or None. A node that no longer exists is lost too."""
    if node is None:
        return "the node no longer exists"
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            if c.get("status") == "True":
                return None
            since = f" since {c['lastTransitionTime']}" if c.get("lastTransitionTime") else ""
            return f"Ready {c.get('status')}{since}: {(c.get('message') or c.get('reason') or '').strip()}"
    return "it reports no Ready condition"


def needs_node_check(pod: Obj) -> bool:
    """Only pods that are not ready, or are being deleted, send the operator to read their node:
    a healthy cluster costs no reads."""
    return bool((pod.get("spec") or {}).get("nodeName")) and (
        bool(pod["metadata"].get("deletionTimestamp")) or not _ready(pod)
    )


def view_group(
    role: str,
    index: int,
    sts: Obj | None,
    pods: list[Obj],
    want_pods: int,
    lost_nodes: dict[str, str] | None = None,
) -> GroupView:
    """The group's state; `pods` are those labelled with its role and group; `lost_nodes` maps
    the name of each lost node among theirs to why it counts as lost (``lost_node``)."""
    lost = lost_nodes or {}
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    revision = (sts or {}).get("status", {}).get("updateRevision")
    outdated = bool(revision) and any(p["metadata"].get("labels", {}).get(REVISION) != revision for p in live)
    on_lost = tuple(
        Evidence(p["metadata"]["name"], f"is on node {n}, which is lost", None, lost[n])
        for p in live
        if (n := (p.get("spec") or {}).get("nodeName")) in lost
    )
    evidence = tuple(e for p in live for e in _evidence(p)) + on_lost
    ready = bool(sts) and len(live) == want_pods and all(_ready(p) for p in live) and not outdated
    held = tuple(
        f"pod {p['metadata']['name']} stays terminating on node {n} ({lost[n]}); its StatefulSet "
        f"cannot replace it until the node is back, deleted (kubectl delete node {n}), or tainted "
        f"{OUT_OF_SERVICE}"
        for p in pods
        if p["metadata"].get("deletionTimestamp") and (n := (p.get("spec") or {}).get("nodeName")) in lost
    )
    return GroupView(
        role=role,
        index=index,
        exists=sts is not None,
        want_pods=want_pods,
        pods=tuple(sorted(p["metadata"]["name"] for p in live)),
        uids=frozenset(p["metadata"]["uid"] for p in live),
        ready=ready and not evidence,
        outdated=outdated,
        evidence=evidence,
        unschedulable=tuple(u for p in live if (u := _unschedulable(p))),
        terminating=len(live) < len(pods),
        held=held,
        revision=revision,
    )


def split_by_group(pods: list[Obj]) -> dict[tuple[str, int], list[Obj]]:
    out: dict[tuple[str, int], list[Obj]] = {}
    for p in pods:
        lbl = p["metadata"].get("labels", {})
        try:
            key = (lbl[labels.ROLE], int(lbl[labels.GROUP]))
        except (KeyError, ValueError):
            continue
        out.setdefault(key, []).append(p)
    return out
