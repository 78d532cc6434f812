"""`render(plan, spec, owner) -> [objects]`: the Kubernetes objects of a planned DSAModel. Pure.

Per role and group: a headless Service and a StatefulSet (`podManagementPolicy: Parallel`,
`updateStrategy: OnDelete`: the operator restarts a group's ranks together, never one by
one), and an immutable ConfigMap holding the group's plan. The ConfigMap's name carries a
hash of its content and the pod template names it, so a changed plan is a new StatefulSet
revision: pods still running keep the plan they started with, and the rollout replaces
them group by group. Rank = pod ordinal, handed in through the downward API.

For a router: its ServiceAccount, a Role that reads pods (nothing else), the binding, the
Deployment and its plan. A Service named after the DSAModel is the endpoint. Where pods land
(tolerations, affinity, the group-key label, Kueue's queue label) comes from `placement`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from dsa_operator import GROUP, KIND, VERSION, labels, placement
from dsa_operator.api import DSAModelSpec, EngineSpec
from dsa_operator.plan import Plan, PodPlan, RolePlan

PLAN_MOUNT = "/etc/dsa"
PLAN_FILE = f"{PLAN_MOUNT}/plan.json"
APPLIED_HASH = f"{GROUP}/applied-hash"  # on every child: lets the operator skip unchanged applies
PLAN_HASH = f"{GROUP}/plan-hash"
ROUTER_UID = 65532
Obj = dict[str, Any]


def owner_reference(owner: Obj) -> Obj:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def content_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:10]


def _meta(name: str, plan: Plan, owner: Obj, lbls: Obj, annotations: Obj | None = None) -> Obj:
    meta: Obj = {
        "name": name,
        "namespace": plan.namespace,
        "labels": {labels.MODEL: plan.name, labels.MANAGED_BY: "dsa-operator", **lbls},
        "ownerReferences": [owner_reference(owner)],
    }
    if annotations:
        meta["annotations"] = annotations
    return meta


_GROUP_INDEPENDENT = ("warnings", "router", "endpoint")


def _plan_doc(plan: Plan, pods: list[PodPlan], role: str, group: int) -> Obj:
    """The plan as one group's pods see it: nothing another group's scaling can change."""
    doc = {k: v for k, v in plan.to_json_dict().items() if k not in _GROUP_INDEPENDENT}
    doc["roles"] = [
        {
            **{k: v for k, v in r.items() if k != "replicas"},
            "groups": [g for g in r["groups"] if g["group"] == group],
        }
        for r in doc["roles"]
        if r["role"] == role
    ]
    doc["pods"] = [p.model_dump(by_alias=True) for p in pods]
    return doc


def _plan_configmap(name: str, doc: Obj, plan: Plan, owner: Obj, lbls: Obj) -> Obj:
    data = {"plan.json": json.dumps(doc, indent=1, sort_keys=True)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(
            f"{name}-plan-{content_hash(data)}", plan, owner, {**lbls, labels.COMPONENT: "plan"}
        ),
        "immutable": True,
        "data": data,
    }


def _identity_env(role: str, group: int) -> list[Obj]:
    def field(path: str) -> Obj:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    return [
        {"name": "DSA_ROLE", "value": role},
        {"name": "DSA_GROUP", "value": str(group)},
        {"name": "DSA_RANK", **field(f"metadata.labels['{labels.POD_INDEX}']")},
        {"name": "DSA_PLAN_FILE", "value": PLAN_FILE},
        {"name": "POD_NAME", **field("metadata.name")},
        {"name": "POD_NAMESPACE", **field("metadata.namespace")},
        {"name": "POD_IP", **field("status.podIP")},
    ]


def _engine_resources(plan: Plan, spec: DSAModelSpec, role: EngineSpec) -> Obj:
    limits: Obj = {plan.hardware.resource: str(plan.hardware.gpus_per_node)}
    net = spec.hardware.network
    if net.rdma_resource:
        limits[net.rdma_resource] = str(net.rdma_count)
    requests: Obj = dict(limits)
    for key, value in (("cpu", role.resources.cpu), ("memory", role.resources.memory)):
        if value:
            limits[key] = requests[key] = value
    return {"limits": limits, "requests": requests}


def _probes(port: int, startup_timeout: int) -> Obj:
    def probe(period: int, failures: int, timeout: int = 5) -> Obj:
        return {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": timeout,
        }

    return {
        # SGLang answers /health only once the weights are loaded: allow the whole load.
        "startupProbe": probe(10, max(1, startup_timeout // 10)),
        "readinessProbe": probe(10, 3),
        "livenessProbe": probe(30, 5, timeout=20),
    }


def _engine_statefulset(
    plan: Plan, spec: DSAModelSpec, role: RolePlan, group: int, cm: Obj, owner: Obj
) -> Obj:
    es: EngineSpec = getattr(spec, role.role)
    sts = role.groups[group].stateful_set
    sel = {labels.MODEL: plan.name, labels.ROLE: role.role, labels.GROUP: str(group)}
    key = placement.group_key(plan.namespace, plan.name, role.role, group)
    pod_labels = {**sel, labels.COMPONENT: "engine", labels.MANAGED_BY: "dsa-operator", labels.GROUP_KEY: key}
    annotations = {
        PLAN_HASH: cm["metadata"]["name"].rsplit("-", 1)[1],
        **placement.queue_pod_annotations(spec.placement),
    }
    ports = [
        {"name": "http", "containerPort": role.port},
        {"name": "dist", "containerPort": es.dist_init_port},
    ]
    if role.role == "prefill":
        annotations[labels.BOOTSTRAP_PORT] = str(spec.disaggregation.bootstrap_port)
        ports.append({"name": "bootstrap", "containerPort": spec.disaggregation.bootstrap_port})
    mount = spec.storage.mount_path
    volume_mounts = [
        {"name": "plan", "mountPath": PLAN_MOUNT, "readOnly": True},
        {"name": "model", "mountPath": mount},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    caps: Obj = {"drop": ["ALL"]}
    if spec.hardware.network.rdma_resource:
        caps["add"] = ["IPC_LOCK", "SYS_RAWIO"]  # RDMA memory registration, as llm-d and KServe do
    container: Obj = {
        "name": "engine",
        "image": spec.runtime.image,
        "imagePullPolicy": spec.runtime.image_pull_policy,
        "args": ["serve"],
        "env": _identity_env(role.role, group),
        "ports": ports,
        "resources": _engine_resources(plan, spec, es),
        "volumeMounts": volume_mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": caps},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **_probes(role.port, es.startup_timeout_seconds),
    }
    init = []
    if plan.model.download and plan.engine != "simulator":  # the simulator loads no weights
        init.append(
            {
                "name": "fetch-model",
                "image": spec.runtime.image,
                "imagePullPolicy": spec.runtime.image_pull_policy,
                "args": ["fetch-model"],
                "env": _identity_env(role.role, group),
                "volumeMounts": volume_mounts[:2],
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }
        )
    node_selector = dict(spec.hardware.node_selector)
    if spec.hardware.select_by_product:
        node_selector.setdefault(plan.hardware.product_label, plan.hardware.product)
    pod_spec: Obj = {
        "containers": [container],
        "initContainers": init,
        "volumes": [
            {"name": "plan", "configMap": {"name": cm["metadata"]["name"]}},
            {"name": "model", **spec.storage.volume},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.storage.shm_size}},
        ],
        "nodeSelector": node_selector,
        "tolerations": placement.engine_tolerations(plan.hardware.resource, spec.hardware.tolerations),
        "terminationGracePeriodSeconds": es.termination_grace_period_seconds,
        "enableServiceLinks": False,
    }
    if not init:
        del pod_spec["initContainers"]
    affinity = placement.engine_affinity(
        spec.placement,
        model=plan.name,
        role=role.role,
        group=group,
        nodes=role.nodes_per_group,
        own_key=key,
    )
    if affinity:
        pod_spec["affinity"] = affinity
    sts_labels = {labels.ROLE: role.role, labels.GROUP: str(group), **placement.queue_labels(spec.placement)}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(sts, plan, owner, sts_labels),
        "spec": {
            "serviceName": sts,
            "replicas": role.nodes_per_group,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            "selector": {"matchLabels": sel},
            "template": {"metadata": {"labels": pod_labels, "annotations": annotations}, "spec": pod_spec},
        },
    }


def _headless_service(plan: Plan, role: RolePlan, group: int, owner: Obj, dist_port: int) -> Obj:
    sts = role.groups[group].stateful_set
    sel = {labels.MODEL: plan.name, labels.ROLE: role.role, labels.GROUP: str(group)}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(sts, plan, owner, {labels.ROLE: role.role, labels.GROUP: str(group)}),
        "spec": {
            "clusterIP": "None",
            # Workers must resolve the leader before it is Ready (it is not Ready until they join).
            "publishNotReadyAddresses": True,
            "selector": sel,
            "ports": [
                {"name": "http", "port": role.port, "targetPort": "http"},
                {"name": "dist", "port": dist_port, "targetPort": "dist"},
            ],
        },
    }


def _router_objects(plan: Plan, spec: DSAModelSpec, owner: Obj) -> list[Obj]:
    rt = plan.router
    assert rt is not None
    name = rt.deployment
    lbl = {labels.COMPONENT: "router"}
    router_pod = [p for p in plan.pods if p.role == "router"]
    cm = _plan_configmap(name, _plan_doc(plan, router_pod, "router", 0), plan, owner, lbl)
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, plan, owner, lbl)}
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(name, plan, owner, lbl),
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(name, plan, owner, lbl),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": plan.namespace}],
    }
    sel = {labels.MODEL: plan.name, labels.COMPONENT: "router"}

    def probe(path: str) -> Obj:
        return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": 5, "failureThreshold": 3}

    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, plan, owner, lbl),
        "spec": {
            "replicas": rt.replicas,
            "selector": {"matchLabels": sel},
            "template": {
                "metadata": {"labels": {**sel, labels.MANAGED_BY: "dsa-operator"}},
                "spec": {
                    "serviceAccountName": name,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": ROUTER_UID,
                        "runAsGroup": ROUTER_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "router",
                            "image": spec.runtime.image,
                            "imagePullPolicy": spec.runtime.image_pull_policy,
                            "args": ["route"],
                            "env": [
                                {"name": "DSA_ROLE", "value": "router"},
                                {"name": "DSA_GROUP", "value": "0"},
                                {"name": "DSA_RANK", "value": "0"},
                                {"name": "DSA_PLAN_FILE", "value": PLAN_FILE},
                            ],
                            "ports": [
                                {"name": "http", "containerPort": rt.port},
                                {"name": "metrics", "containerPort": spec.router.prometheus_port},
                            ],
                            "readinessProbe": probe("/readiness"),
                            "livenessProbe": probe("/liveness"),
                            "volumeMounts": [{"name": "plan", "mountPath": PLAN_MOUNT, "readOnly": True}],
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                    "volumes": [{"name": "plan", "configMap": {"name": cm["metadata"]["name"]}}],
                    **placement.router_scheduling(spec.router),
                },
            },
        },
    }
    return [cm, sa, role, binding, deployment]


def _endpoint_service(plan: Plan, owner: Obj) -> Obj:
    if plan.router:
        selector = {labels.MODEL: plan.name, labels.COMPONENT: "router"}
    else:
        selector = labels.rank0_selector(plan.name, "serving")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(plan.name, plan, owner, {labels.COMPONENT: "endpoint"}),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": plan.endpoint.port, "targetPort": "http"}],
        },
    }


def group_objects(plan: Plan, spec: DSAModelSpec, role: RolePlan, group: int, owner: Obj) -> list[Obj]:
    """A group's plan ConfigMap, headless Service and StatefulSet (in apply order)."""
    pods = [p for p in plan.pods if p.role == role.role and p.group == group]
    lbl = {labels.ROLE: role.role, labels.GROUP: str(group)}
    doc = _plan_doc(plan, pods, role.role, group)
    cm = _plan_configmap(role.groups[group].stateful_set, doc, plan, owner, lbl)
    es: EngineSpec = getattr(spec, role.role)
    return [
        cm,
        _headless_service(plan, role, group, owner, es.dist_init_port),
        _engine_statefulset(plan, spec, role, group, cm, owner),
    ]


def render(plan: Plan, spec: DSAModelSpec, owner: Obj) -> list[Obj]:
    """Every child object of the DSAModel, each carrying the hash of its own content."""
    objs: list[Obj] = []
    for role in plan.roles:
        for g in range(role.replicas):
            objs += group_objects(plan, spec, role, g, owner)
    if plan.router:
        objs += _router_objects(plan, spec, owner)
    objs.append(_endpoint_service(plan, owner))
    for o in objs:
        o["metadata"].setdefault("annotations", {})[APPLIED_HASH] = content_hash(o)
    return objs
