"""The planner's output: every pod's command line and environment, and what was resolved.

`Plan.model_dump(by_alias=True)` is the `dsa-operator plan -o json` contract: its `pods`
list holds one `{role, group, rank, argv, env}` per pod. The runtime reads it too.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class _Out(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class PodPlan(_Out):
    role: str
    group: int
    rank: int
    argv: list[str]
    env: dict[str, str]


class Kernels(_Out):
    prefill: str
    decode: str
    kv_cache_dtype: str


class GroupPlan(_Out):
    group: int
    stateful_set: str
    headless_service: str
    leader_address: str | None  # host:port of --dist-init-addr; None on one node


class RolePlan(_Out):
    role: str
    replicas: int
    nodes_per_group: int
    gpus_per_node: int
    world_size: int
    attention: str
    context_parallel: str
    pp_layer_partition: list[int] | None
    kernels: Kernels
    port: int
    groups: list[GroupPlan]


class RouterPlan(_Out):
    deployment: str
    replicas: int
    port: int
    discovery: str
    argv: list[str]
    selectors: dict[str, dict[str, str]]


class HardwarePlan(_Out):
    accelerator: str
    arch: str
    vendor: str
    gpus_per_node: int
    resource: str
    product: str
    product_label: str  # the node label that carries `product`


class ModelPlan(_Out):
    family: str
    source: str
    local_path: str | None
    mount_path: str
    download: bool


class EndpointPlan(_Out):
    service: str
    port: int
    url: str


class Plan(_Out):
    name: str
    namespace: str
    sglang_version: str
    dialect: str
    family: str
    engine: str  # spec.runtime.engine: sglang | simulator (which runs the same argv)
    hardware: HardwarePlan
    model: ModelPlan
    shm_size_bytes: int
    roles: list[RolePlan]
    router: RouterPlan | None
    endpoint: EndpointPlan
    pods: list[PodPlan]
    warnings: list[str]

    def to_json_dict(self) -> dict:
        return self.model_dump(by_alias=True, mode="json")

    def role(self, name: str) -> RolePlan:
        return next(r for r in self.roles if r.role == name)
