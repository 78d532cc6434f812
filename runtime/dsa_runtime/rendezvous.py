"""Rank wiring of a multi-node group, proven the way SGLang wires it, before a simulator reports ready.

SGLang's ranks meet in `torch.distributed.init_process_group(init_method="tcp://<--dist-init-addr>",
world_size, rank)`: rank 0 hosts the store at that address, the others connect to it. A wrong
leader address, two pods with one rank, or a wrong world size leave the group unable to form,
and SGLang then hangs or dies deep in NCCL. The simulator runs the same rendezvous (backend
gloo, on CPU) with the planned `--dist-init-addr`, world size `--nnodes` and rank
`--node-rank`, then an all-reduce whose sum it checks; a failure becomes RENDEZVOUS_FAILED
within the timeout given to torch, on every rank that notices it.

One process per pod joins (SGLang runs one per GPU, with rank `node_rank * gpus + local`; the
address, the leader and the node ranks are the same). torch is the optional extra `simulator`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import logging
import socket
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from dsa_runtime.errors import ExitCode, RuntimeFailure
from dsa_runtime.plan import flag_value, leader_address, nnodes

log = logging.getLogger("dsa_runtime.rendezvous")

HINT = (
    "check that --dist-init-addr names rank 0's pod (the group's headless Service), that every pod "
    "of the group has its own --node-rank and the same --nnodes, and that the dist port is reachable"
)


@dataclass(frozen=True)
class Group:
    """Where this rank meets its group, as planned."""

    host: str
    port: int
    world_size: int
    rank: int

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def init_method(self) -> str:
        return f"tcp://{self.address}"

    def contribution(self) -> list[float]:
        """What this rank adds to the all-reduce: one member, its rank, its idea of the size."""
        return [1.0, float(self.rank), float(self.world_size)]

    def expected(self) -> list[float]:
        n = self.world_size
        return [float(n), float(n * (n - 1) // 2), float(n * n)]


def group_from_argv(argv: list[str]) -> Group | None:
    """The planned group of a command line; None for a single-node engine."""
    leader = leader_address(argv)
    world = nnodes(argv)
    if leader is None or world < 2:
        return None
    raw = flag_value(argv, "--node-rank") or "0"
    if not raw.isdigit():
        raise RuntimeFailure(ExitCode.PLAN_MALFORMED, f"--node-rank {raw!r} is not a non-negative integer")
    rank = int(raw)
    if rank >= world:
        raise RuntimeFailure(
            ExitCode.RENDEZVOUS_FAILED, f"--node-rank {rank} is outside a group of --nnodes {world}: {HINT}"
        )
    return Group(host=leader[0], port=leader[1], world_size=world, rank=rank)


def verdict(result: list[float], group: Group) -> str | None:
    """None when the all-reduce sum is what a correctly wired group gives, else what is wrong."""
    want = group.expected()
    if result == want:
        return None
    members, ranks, sizes = result
    return (
        f"the all-reduce across the group gave {members:g} members, rank sum {ranks:g} and size sum "
        f"{sizes:g}; a group of {group.world_size} with ranks 0..{group.world_size - 1} gives "
        f"{want[0]:g}, {want[1]:g}, {want[2]:g}"
    )


# ---- the interface gloo uses ------------------------------------------------------------------
def interface_for(ip: str, addresses: list[tuple[str, str]]) -> str | None:
    """The interface holding `ip` among (interface, address) pairs."""
    try:
        want = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    for name, addr in addresses:
        try:
            if ipaddress.ip_address(addr.split("%", 1)[0]) == want:
                return name
        except ValueError:
            continue
    return None


class _Ifaddrs(ctypes.Structure):
    pass


_Ifaddrs._fields_ = [
    ("next", ctypes.POINTER(_Ifaddrs)),
    ("name", ctypes.c_char_p),
    ("flags", ctypes.c_uint),
    ("addr", ctypes.c_void_p),  # struct sockaddr *: family (2 bytes), then the address
    ("netmask", ctypes.c_void_p),
    ("ifu", ctypes.c_void_p),
    ("data", ctypes.c_void_p),
]


def local_addresses() -> list[tuple[str, str]]:
    """(interface, address) for every IPv4/IPv6 address here, via libc getifaddrs (Linux)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    head = ctypes.POINTER(_Ifaddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        return []
    out = []
    try:
        node = head
        while node:
            ifa = node.contents
            if ifa.addr and ifa.name:
                family = ctypes.c_ushort.from_address(ifa.addr).value
                if family == socket.AF_INET:  # sockaddr_in: family, port, 4-byte address
                    raw = ctypes.string_at(ifa.addr, 8)
                    out.append((ifa.name.decode(), socket.inet_ntop(socket.AF_INET, raw[4:8])))
                elif family == socket.AF_INET6:  # sockaddr_in6: family, port, flowinfo, 16 bytes
                    raw = ctypes.string_at(ifa.addr, 24)
                    out.append((ifa.name.decode(), socket.inet_ntop(socket.AF_INET6, raw[8:24])))
            node = ifa.next
    finally:
        libc.freeifaddrs(head)
    return out


def gloo_interface(env: Mapping[str, str]) -> tuple[str | None, str]:
    """GLOO_SOCKET_IFNAME: the plan's network setting, else the interface holding POD_IP."""
    if env.get("GLOO_SOCKET_IFNAME"):
        return env["GLOO_SOCKET_IFNAME"], "set by the plan (spec.hardware.network.glooSocketIfname)"
    pod_ip = env.get("POD_IP")
    if not pod_ip:
        return None, "POD_IP is not set: gloo picks the interface of this host's name"
    name = interface_for(pod_ip, local_addresses())
    if name is None:
        return None, f"no interface holds POD_IP {pod_ip}: gloo picks the interface of this host's name"
    return name, f"the interface holding POD_IP {pod_ip}"


# ---- the rendezvous itself --------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())  # torch's messages span lines
    return f"{type(e).__name__}: {text[:400]}"


def join(group: Group, timeout_s: float) -> dict[str, Any]:
    """Join the group, all-reduce, check the sum; RuntimeFailure(RENDEZVOUS_FAILED) otherwise."""
    # The simulator image carries no NumPy (the all-reduce needs none); without this filter torch
    # warns about it on import, in every rank's log.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    try:
        import torch
        import torch.distributed as dist
    except ImportError as e:
        raise RuntimeFailure(
            ExitCode.ENGINE_MISSING,
            f"torch does not import here ({e}): the simulator's multi-node rendezvous needs the "
            f"`simulator` extra (pip install 'dsa-operator[simulator]'); the dsa-runtime image has it",
        ) from None
    timeout = timedelta(seconds=timeout_s)
    where = f"rank {group.rank} of {group.world_size} at {group.init_method}"
    start = time.monotonic()
    log.info("joining the group's rendezvous as %s (timeout %g s)", where, timeout_s)
    try:
        dist.init_process_group(
            "gloo",
            init_method=group.init_method,
            world_size=group.world_size,
            rank=group.rank,
            timeout=timeout,
        )
    except Exception as e:  # DistStoreError, DistNetworkError, gloo's RuntimeError...
        raise RuntimeFailure(
            ExitCode.RENDEZVOUS_FAILED,
            f"{where}: the group did not form within {timeout_s:g} s ({_first_line(e)}): {HINT}",
        ) from None
    joined = time.monotonic() - start
    try:
        tensor = torch.tensor(group.contribution(), dtype=torch.float64)
        dist.all_reduce(tensor)
        result = [float(x) for x in tensor.tolist()]
        problem = verdict(result, group)
        if problem:
            raise RuntimeFailure(ExitCode.RENDEZVOUS_FAILED, f"{where}: {problem}: {HINT}")
        # Rank 0 hosts the store: it leaves only after every rank has its result.
        store = dist.distributed_c10d._get_default_store()
        if group.rank:
            store.set(f"dsa/checked/{group.rank}", "1")
        else:
            store.wait([f"dsa/checked/{r}" for r in range(1, group.world_size)], timeout)
    except RuntimeFailure:
        raise
    except Exception as e:
        raise RuntimeFailure(
            ExitCode.RENDEZVOUS_FAILED,
            f"{where}: the all-reduce across the group failed within {timeout_s:g} s ({_first_line(e)}): "
            f"{HINT}",
        ) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    report = {
        "rendezvous": "ok",
        "address": group.address,
        "worldSize": group.world_size,
        "rank": group.rank,
        "allReduce": result,
        "joinSeconds": round(joined, 3),
        "seconds": round(time.monotonic() - start, 3),
    }
    log.info("group formed: %s, all-reduce %s as expected", where, result)
    return report
