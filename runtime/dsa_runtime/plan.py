"""The operator's plan as the runtime reads it, and this pod's entry in it.

Only the fields the runtime acts on are modelled; everything else in the plan is ignored so
that the operator can add fields without breaking running images.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dsa_runtime.errors import ExitCode, RuntimeFailure

DEFAULT_PLAN_FILE = "/etc/dsa/plan.json"
Role = Literal["serving", "prefill", "decode", "router"]
Engine = Literal["sglang", "simulator"]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Hardware(_Lenient):
    accelerator: str
    arch: str
    vendor: str = "nvidia"
    gpus_per_node: int = Field(alias="gpusPerNode", ge=1)


class Model(_Lenient):
    source: str
    local_path: str | None = Field(default=None, alias="localPath")
    mount_path: str = Field(default="/models", alias="mountPath")
    download: bool = True


class Kernels(_Lenient):
    prefill: str = "auto"
    decode: str = "auto"
    kv_cache_dtype: str = Field(default="auto", alias="kvCacheDtype")


class RolePlan(_Lenient):
    role: Role
    replicas: int = 1
    nodes_per_group: int = Field(default=1, alias="nodesPerGroup")
    kernels: Kernels | None = None


class PodPlan(_Lenient):
    role: Role
    group: int = Field(ge=0)
    rank: int = Field(ge=0)
    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)


class Plan(_Lenient):
    name: str
    namespace: str = "default"
    sglang_version: str = Field(alias="sglangVersion")
    dialect: str = "dsa"
    family: str = ""
    # spec.runtime.engine; plans from before the field run SGLang
    engine: Engine = "sglang"
    hardware: Hardware
    model: Model
    shm_size_bytes: int | None = Field(default=None, alias="shmSizeBytes")
    roles: list[RolePlan] = Field(default_factory=list)
    pods: list[PodPlan]

    def role(self, role: str) -> RolePlan | None:
        return next((r for r in self.roles if r.role == role), None)


@dataclass(frozen=True)
class Identity:
    """Who this pod is: set by the operator through env (rank via the downward API)."""

    role: str
    group: int
    rank: int

    def __str__(self) -> str:
        return f"role={self.role} group={self.group} rank={self.rank}"


def plan_path(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("DSA_PLAN_FILE") or DEFAULT_PLAN_FILE)


def load_plan(path: Path) -> Plan:
    """Read and validate the plan; every problem becomes one line naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RuntimeFailure(
            ExitCode.PLAN_MISSING,
            f"no plan at {path}: mount the plan ConfigMap there or set DSA_PLAN_FILE",
        ) from None
    except OSError as e:
        raise RuntimeFailure(ExitCode.PLAN_MISSING, f"cannot read plan {path}: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RuntimeFailure(
            ExitCode.PLAN_MALFORMED,
            f"plan {path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
        ) from None
    try:
        return Plan.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise RuntimeFailure(ExitCode.PLAN_MALFORMED, f"plan {path}: {where}: {first['msg']}{more}") from None


def _int_env(name: str, env: dict[str, str]) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise RuntimeFailure(
            ExitCode.IDENTITY_MISSING, f"{name}={raw!r} is not a non-negative integer"
        ) from None
    if value < 0:
        raise RuntimeFailure(ExitCode.IDENTITY_MISSING, f"{name}={raw!r} is negative")
    return value


def identity_from_env(env: dict[str, str], *, default_role: str | None = None) -> Identity:
    """DSA_ROLE/DSA_GROUP/DSA_RANK; the rank falls back to a StatefulSet pod name's ordinal.

    A router is a Deployment (no pod index), so with `default_role="router"` group and rank
    default to 0.
    """
    role = env.get("DSA_ROLE") or default_role
    if not role:
        raise RuntimeFailure(ExitCode.IDENTITY_MISSING, "DSA_ROLE is not set")
    if role not in ("serving", "prefill", "decode", "router"):
        raise RuntimeFailure(
            ExitCode.IDENTITY_MISSING,
            f"DSA_ROLE={role!r} is not one of serving, prefill, decode, router",
        )
    lenient = role == "router"
    group = _int_env("DSA_GROUP", env)
    rank = _int_env("DSA_RANK", env)
    if rank is None and (m := re.fullmatch(r".+-(\d+)", env.get("POD_NAME", ""))) and not lenient:
        rank = int(m.group(1))
    if group is None:
        if not lenient:
            raise RuntimeFailure(ExitCode.IDENTITY_MISSING, "DSA_GROUP is not set")
        group = 0
    if rank is None:
        if not lenient:
            raise RuntimeFailure(
                ExitCode.IDENTITY_MISSING,
                "DSA_RANK is not set (the operator sets it from the pod label apps.kubernetes.io/pod-index)",
            )
        rank = 0
    return Identity(role=role, group=group, rank=rank)


def pod_entry(plan: Plan, who: Identity) -> PodPlan:
    """This pod's planned argv and env; exactly one entry must match."""
    matches = [p for p in plan.pods if (p.role, p.group, p.rank) == (who.role, who.group, who.rank)]
    if not matches:
        have = sorted({f"{p.role}/{p.group}/{p.rank}" for p in plan.pods})
        raise RuntimeFailure(
            ExitCode.POD_NOT_IN_PLAN,
            f"plan {plan.name} has no pod {who}; it has role/group/rank {', '.join(have)}",
        )
    if len(matches) > 1:
        raise RuntimeFailure(
            ExitCode.PLAN_MALFORMED, f"plan {plan.name} has {len(matches)} entries for pod {who}"
        )
    return matches[0]


def flag_value(argv: list[str], flag: str) -> str | None:
    """Value of `--flag V` or `--flag=V` in argv (last one wins, like argparse)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
    return value


def leader_address(argv: list[str]) -> tuple[str, int] | None:
    """host and port of `--dist-init-addr`; None for single-node groups."""
    raw = flag_value(argv, "--dist-init-addr")
    if raw is None:
        return None
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RuntimeFailure(ExitCode.PLAN_MALFORMED, f"--dist-init-addr {raw!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def nnodes(argv: list[str]) -> int:
    raw = flag_value(argv, "--nnodes")
    return int(raw) if raw and raw.isdigit() else 1


def serving_port(argv: list[str], default: int = 30000) -> int:
    """SGLang's HTTP port (its default is 30000)."""
    raw = flag_value(argv, "--port")
    return int(raw) if raw and raw.isdigit() else default
