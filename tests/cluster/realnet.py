"""The address plan of a test cluster's real nodes, and the bridge that carries it.

One bridge per cluster, ``dsabr<index>``, holds every address the nodes use, so pods and the
host talk at layer 2 and nothing needs ``ip_forward``, NAT, an iptables rule or a route:

    10.213.<index>.0/24   node network: node i has .(i+1); pods get host-local ranges from .16 on,
                          split between the nodes; .1 (node 0's address) is the pods' gateway
                          and CoreDNS's address
    10.214.<index>.0/24   the Service CIDR; its first address .1 (the ``kubernetes`` Service's
                          ClusterIP) is on the bridge too, and kube-apiserver listens there on 443,
                          so in-cluster clients reach the API server with no kube-proxy

Other ClusterIPs are not routed anywhere (the /24 is on the bridge, so traffic to them stays
on it and finds nobody). The index comes from DSA_CLUSTER_NET_INDEX, else the lowest free one
(1..200), chosen under a lock so that two clusters on one machine never share a bridge.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BRIDGE_PREFIX = "dsabr"
LOCK_DIR = Path("/run/lock/dsa-cluster")
MAX_INDEX = 200
POD_RANGE_START = 16  # .1-.15 are node addresses


class NetError(RuntimeError):
    pass


@dataclass(frozen=True)
class NetPlan:
    """Addresses of one cluster's real nodes (pure data, derived from the index)."""

    index: int
    nodes: int

    def __post_init__(self):
        if not 1 <= self.index <= MAX_INDEX:
            raise NetError(f"network index {self.index} is outside 1..{MAX_INDEX}")
        if not 1 <= self.nodes <= POD_RANGE_START - 1:
            raise NetError(f"real_nodes={self.nodes}: between 1 and {POD_RANGE_START - 1} fit one bridge")

    @property
    def bridge(self) -> str:
        return f"{BRIDGE_PREFIX}{self.index}"

    @property
    def node_subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(f"10.213.{self.index}.0/24")

    @property
    def service_cidr(self) -> str:
        return f"10.214.{self.index}.0/24"

    @property
    def api_ip(self) -> str:
        """First address of the Service CIDR: the ``kubernetes`` Service's ClusterIP."""
        return str(ipaddress.ip_network(self.service_cidr)[1])

    @property
    def gateway(self) -> str:
        return str(self.node_subnet[1])

    @property
    def dns_ip(self) -> str:
        return self.gateway

    def node_ip(self, i: int) -> str:
        return str(self.node_subnet[1 + i])

    def pod_range(self, i: int) -> tuple[str, str]:
        """Host-local range of node i: equal, non-overlapping slices of .16-.254."""
        size = (255 - POD_RANGE_START) // self.nodes
        start = POD_RANGE_START + i * size
        return str(self.node_subnet[start]), str(self.node_subnet[start + size - 1])

    @property
    def bridge_mac(self) -> str:
        """A fixed, locally administered MAC. Without one, Linux gives a bridge the lowest MAC of
        its ports, so it changes as pods come and go; pods then hold a stale ARP entry for the
        host (the API server, the kubelet's probes) and lose it for up to a minute."""
        return f"02:64:73:61:{self.index >> 8:02x}:{self.index & 0xFF:02x}"

    def bridge_addresses(self) -> list[str]:
        prefix = self.node_subnet.prefixlen
        svc_prefix = ipaddress.ip_network(self.service_cidr).prefixlen
        return [f"{self.node_ip(i)}/{prefix}" for i in range(self.nodes)] + [f"{self.api_ip}/{svc_prefix}"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode:
        raise NetError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def bridge_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


@contextlib.contextmanager
def _index_lock() -> Iterator[None]:
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_DIR / "net.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def create_bridge(nodes: int, index: int | None = None) -> NetPlan:
    """Pick an index (or take DSA_CLUSTER_NET_INDEX / the given one), create its bridge with the
    plan's addresses and bring it up. Raises NetError if the bridge exists already."""
    if index is None and os.environ.get("DSA_CLUSTER_NET_INDEX"):
        try:
            index = int(os.environ["DSA_CLUSTER_NET_INDEX"])
        except ValueError:
            raise NetError(
                f"DSA_CLUSTER_NET_INDEX={os.environ['DSA_CLUSTER_NET_INDEX']!r} is not a number"
            ) from None
    with _index_lock():
        if index is None:
            free = [i for i in range(1, MAX_INDEX + 1) if not bridge_exists(f"{BRIDGE_PREFIX}{i}")]
            if not free:
                raise NetError(f"all {MAX_INDEX} bridges {BRIDGE_PREFIX}N exist")
            index = free[0]
        plan = NetPlan(index, nodes)
        if bridge_exists(plan.bridge):
            raise NetError(
                f"bridge {plan.bridge} exists (another cluster, or a leftover: `ip link del {plan.bridge}`)"
            )
        _ip("link", "add", plan.bridge, "address", plan.bridge_mac, "type", "bridge")
        try:
            for addr in plan.bridge_addresses():
                _ip("addr", "add", addr, "dev", plan.bridge)
            _ip("link", "set", plan.bridge, "up")
        except NetError:
            delete_bridge(plan.bridge)
            raise
    return plan


def delete_bridge(name: str) -> None:
    if bridge_exists(name):
        _ip("link", "del", name, check=False)
