"""Real worker nodes for the test cluster: a kubelet and a containerd per node, on one machine.

What several kubelets on one machine take (see docs/cluster.md): per node its own containerd
(root, state, socket, runc root, CNI config), its own cgroup root (cgroup v1,
``/dsa-<net>-<node>``, cpuset copied from the root), its own private mount namespace in which
``/var/lib/kubelet``, ``/var/log/containers`` and ``/run/containerd`` are per-node directories
and the ``/proc/sys`` files the kubelet would write are covered by files holding its values
(the host's sysctls are never written), its own address on the cluster's bridge (realnet.py).

The module is split as functional core / imperative shell: ``*_config`` functions render
configuration from a ``NodeSpec``; ``start_node`` / ``teardown`` act on the machine.
Teardown works from a JSON record written at start (``record()``), so a later run can clean
up after a harness that was SIGKILLed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.cluster import realnet

CGROUP_FS = Path("/sys/fs/cgroup")
CNI_BIN_DIR = "/usr/lib/cni"
RUNC = "/usr/sbin/runc"
GPU_TAINT = "nvidia.com/gpu=present:NoSchedule"
NODE_KIND_LABEL = "dsa.dev/node-kind"  # "real" here, "kwok" on the fake nodes

# /proc/sys files the kubelet sets at start (container_manager_linux.go setupKernelTunables),
# with the values it wants: bind-mounted over in the node's mount namespace so it finds them
# already set and the machine's values stay as they are. ip_forward is covered too, as a guard:
# nothing in the node may turn forwarding on.
SYSCTL_GUARDS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
    "net/ipv4/ip_forward": "0",
}
# Host paths the kubelet or containerd hard-code, made per-node inside the node's namespace.
PRIVATE_DIRS = {
    "/var/lib/kubelet": "var-lib-kubelet",
    "/var/log/containers": "var-log-containers",
    "/run/containerd": "run-containerd",
}


@dataclass(frozen=True)
class NodeSpec:
    """Everything that differs between the real nodes of a cluster (pure data)."""

    name: str
    index: int
    ip: str
    dir: Path
    cgroup_root: str  # e.g. /dsa-1-0
    pod_range: tuple[str, str]
    gpu: bool
    labels: dict = field(default_factory=dict)
    taints: tuple[str, ...] = ()

    @property
    def socket(self) -> Path:
        return self.dir / "containerd.sock"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"


# --------------------------------------------------------------------------- configuration
def containerd_config(node: NodeSpec, plan: realnet.NetPlan, sandbox_image: str) -> str:
    """containerd 2.x config (version 3): everything under the node's directory."""
    d = node.dir
    return f"""version = 3
root = "{d / "containerd/root"}"
state = "{d / "containerd/state"}"
oom_score = 0
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{node.socket}"
[ttrpc]
  address = "{node.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "containerd/opt"}"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{sandbox_image}"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{d / "containerd/certs.d"}"

[plugins."io.containerd.cri.v1.runtime"]
  # No CAP_SYS_RESOURCE here: runc may not set a negative oom_score_adj, so clamp it.
  restrict_oom_score_adj = true
  # Pod network namespaces under the state dir, not /run/netns.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  enable_cdi = false
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        Root = "{d / "runc"}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{d / "cni-conf"}"
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def cni_config(node: NodeSpec, plan: realnet.NetPlan) -> dict:
    """Bridge plugin on the cluster's bridge: no gateway address, no masquerade, host-local
    addresses from this node's slice, default route via the bridge's .1 (the host)."""
    start, end = node.pod_range
    return {
        "cniVersion": "1.0.0",
        "name": "dsa-test",
        "plugins": [
            {
                "type": "bridge",
                "bridge": plan.bridge,
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": False,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(node.dir / "cni-ipam"),
                    "ranges": [
                        [
                            {
                                "subnet": str(plan.node_subnet),
                                "rangeStart": start,
                                "rangeEnd": end,
                                "gateway": plan.gateway,
                            }
                        ]
                    ],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }
        ],
    }


def kubelet_config(
    node: NodeSpec, plan: realnet.NetPlan, ca: Path, serving: tuple[Path, Path], healthz_port: int
) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(serving[0]),
        "tlsPrivateKeyFile": str(serving[1]),
        "authentication": {
            "x509": {"clientCAFile": str(ca)},
            "webhook": {"enabled": True},
            "anonymous": {"enabled": False},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": node.endpoint,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "failCgroupV1": False,
        "failSwapOn": False,
        "makeIPTablesUtilChains": False,
        "oomScoreAdj": 0,  # its default -999 needs CAP_SYS_RESOURCE
        "clusterDomain": "cluster.local",
        "clusterDNS": [plan.dns_ip],
        "resolvConf": str(node.dir / "resolv.conf"),
        "podLogsDir": str(node.dir / "pod-logs"),
        "volumePluginDir": str(node.dir / "volume-plugins"),
        "serializeImagePulls": False,
        # Images are imported, never pulled: keep them, whatever the disk usage.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "maxPods": 110,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "protectKernelDefaults": False,
        "nodeStatusUpdateFrequency": "5s",
        "shutdownGracePeriod": "0s",
    }


def corefile(plan: realnet.NetPlan, kubeconfig: Path, health_port: int, ready_port: int) -> str:
    """CoreDNS on the bridge's .1: cluster.local from the API, nothing forwarded anywhere."""
    return f""".:53 {{
    bind {plan.dns_ip}
    errors
    health 127.0.0.1:{health_port}
    ready 127.0.0.1:{ready_port}
    kubernetes cluster.local in-addr.arpa {{
        kubeconfig {kubeconfig} dsa-test
        pods insecure
    }}
    cache 5
}}
whoami:53 {{
    bind {plan.dns_ip}
    whoami
}}
"""


def namespace_script(node: NodeSpec) -> str:
    """Shell run by ``unshare -m`` (private propagation) before exec'ing containerd: the node's
    private directories and sysctl guards, visible only inside its mount namespace."""
    lines = ["set -e"]
    for host, local in PRIVATE_DIRS.items():
        lines.append(f"mount --bind {node.dir / local} {host}")
    for rel in SYSCTL_GUARDS:
        lines.append(f"mount --bind {node.dir / 'sysctl' / rel.replace('/', '.')} /proc/sys/{rel}")
    lines.append('exec "$@"')
    return "\n".join(lines)


# --------------------------------------------------------------------------- cgroups
def cgroup_hierarchies() -> list[Path]:
    """Mount points of the cgroup v1 hierarchies and of a hybrid cgroup2 (runc uses both)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fstype = post.split(" ", 1)[0]
        if fstype in ("cgroup", "cgroup2"):
            out.append(Path(pre.split()[4]))
    return out


def make_cgroup_root(root: str) -> None:
    """Create ``root`` in every hierarchy the kubelet checks; cpuset needs cpus/mems first."""
    for h in cgroup_hierarchies():
        d = h / root.lstrip("/")
        d.mkdir(exist_ok=True)
        if (h / "cpuset.cpus").exists():
            for f in ("cpuset.cpus", "cpuset.mems"):
                (d / f).write_text((h / f).read_text())


def cgroup_pids(root: str) -> set[int]:
    pids: set[int] = set()
    for h in cgroup_hierarchies():
        base = h / root.lstrip("/")
        if not base.is_dir():
            continue
        for procs in base.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def remove_cgroup_root(root: str) -> list[str]:
    """rmdir the tree under ``root`` in every hierarchy, deepest first; returns what is left."""
    left = []
    for h in cgroup_hierarchies():
        base = h / root.lstrip("/")
        if not base.is_dir():
            continue
        dirs = sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, base]:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                left.append(str(d))
    return left


# --------------------------------------------------------------------------- processes
def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.rsplit(") ", 1)[1].startswith("Z")


def shim_pids(sockets: Iterable[Path | str]) -> set[int]:
    """containerd-shim-runc-v2 processes started for these containerd sockets (shims detach
    from containerd and outlive it: found by their ``-address`` argument)."""
    wanted = {str(s) for s in sockets}
    found = set()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # containerd runs the shim by its resolved path: here containerd-shim-runc-v2-<version>
        if not argv or not os.path.basename(argv[0]).startswith(b"containerd-shim-runc-v2"):
            continue
        args = [a.decode(errors="replace") for a in argv]
        for i, a in enumerate(args[:-1]):
            if a in ("-address", "--address") and args[i + 1] in wanted:
                found.add(int(p.name))
    return found


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(pids: Callable[[], set[int]], timeout: float) -> set[int]:
    end = time.monotonic() + timeout
    while True:
        left = {p for p in pids() if _alive(p)}
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.1)


def mounts_under(paths: Sequence[Path | str]) -> list[str]:
    """Mount points in this (the host's) mount namespace at or below any of `paths`."""
    prefixes = [str(p).rstrip("/") for p in paths]
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if any(mp == p or mp.startswith(p + "/") for p in prefixes):
            out.append(mp)
    return out


# --------------------------------------------------------------------------- record / teardown
@dataclass
class Record:
    """What a cluster's real nodes put on the machine, for teardown (also after a SIGKILL)."""

    bridge: str
    node_dirs: list[str]
    sockets: list[str]
    cgroup_roots: list[str]
    pids: list[int]  # kubelet, containerd, coredns
    created_dirs: list[str]  # host mount points this cluster created (removed if empty)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Record | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def teardown(rec: Record, grace: float = 3) -> list[str]:
    """end_processes, then remove_state: what a harness that died left behind, or all of it."""
    return end_processes(rec, grace) + remove_state(rec)


def end_processes(rec: Record, grace: float = 3) -> list[str]:
    """End every process the nodes started, by PID. Returns those still alive (none, normally).

    ``rec.pids`` (kubelets, containerds, CoreDNS) get SIGTERM and `grace` seconds; then every
    process in the nodes' cgroups (the containers), every shim of their containerd sockets
    and whatever daemon is left get SIGKILL. A harness that died leaves ``pids`` empty in the
    record it hands here (those PIDs may be reused; its daemons died with it, PR_SET_PDEATHSIG)."""
    kill_pids(rec.pids, signal.SIGTERM)
    _wait_gone(lambda: set(rec.pids), grace)

    def everything() -> set[int]:
        pids = set(rec.pids) | shim_pids(rec.sockets)
        for root in rec.cgroup_roots:
            pids |= cgroup_pids(root)
        return {p for p in pids if _alive(p)}

    end = time.monotonic() + 15
    while (left := everything()) and time.monotonic() < end:
        kill_pids(left)
        _wait_gone(lambda left=left: left, 1)
    return [f"process {p} still alive" for p in everything()]


def remove_state(rec: Record) -> list[str]:
    """Remove cgroups, host mounts (none expected: the nodes' mounts lived in their own
    namespaces, which ended with their last process), the bridge and the node directories.
    Call it once nothing uses the bridge any more: the apiserver listens on an address of it,
    and traffic to that address must never find another route. Returns what is left."""
    problems: list[str] = []
    for root in rec.cgroup_roots:
        problems += [f"cgroup {d} not removed" for d in remove_cgroup_root(root)]
    for mp in sorted(mounts_under(rec.node_dirs), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)
    realnet.delete_bridge(rec.bridge)
    if realnet.bridge_exists(rec.bridge):
        problems.append(f"bridge {rec.bridge} not removed")
    for d in rec.node_dirs:
        _rmtree(Path(d))
        if Path(d).exists():
            problems.append(f"directory {d} not removed")
    # Host mount points this cluster created: removed only while no other cluster with real nodes
    # runs (removing a directory that is a mount point in another namespace detaches that mount).
    if not any(Path("/sys/class/net").glob(realnet.BRIDGE_PREFIX + "*")):
        for d in rec.created_dirs:
            with contextlib.suppress(OSError):
                Path(d).rmdir()
    return problems


def _rmtree(path: Path) -> None:
    # overlay snapshot dirs may hold read-only directories; `rm -rf` as root handles all of it.
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True)


# --------------------------------------------------------------------------- images
def ctr(
    bin_ctr: Path, node: NodeSpec | Path, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess:
    sock = node.socket if isinstance(node, NodeSpec) else node
    return subprocess.run(
        [str(bin_ctr), "--address", str(sock), "--namespace", "k8s.io", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def image_names(bin_ctr: Path, node: NodeSpec) -> set[str]:
    r = ctr(bin_ctr, node, "images", "list", "--quiet")
    if r.returncode:
        raise RuntimeError(f"ctr images list on {node.name}: {r.stderr.strip()}")
    return set(r.stdout.split())


def import_image(bin_ctr: Path, node: NodeSpec, archive: Path, names: Sequence[str]) -> bool:
    """Import `archive` into the node's containerd unless every name in it is there already;
    returns whether it imported."""
    if names and set(names) <= image_names(bin_ctr, node):
        return False
    r = ctr(bin_ctr, node, "images", "import", str(archive))
    if r.returncode:
        raise RuntimeError(
            f"ctr images import {archive} on {node.name}: {r.stderr.strip() or r.stdout.strip()}"
        )
    return True


# --------------------------------------------------------------------------- the nodes
@dataclass
class NodeBins:
    kubelet: Path
    containerd: Path
    ctr: Path
    shim_dir: Path  # holds containerd-shim-runc-v2 under that exact name (containerd looks in PATH)
    pause_image: Path
    pause_image_name: str


def node_specs(
    plan: realnet.NetPlan,
    base: Path,
    cpu_nodes: int,
    *,
    gpus: int,
    gpu_product: str,
    zones: Sequence[str],
    rack_label: str,
) -> list[NodeSpec]:
    """Names, addresses, labels and taints: GPU-like nodes first (``real-gpu-<i>``), then CPU
    nodes (``real-cpu-<i>``). GPU-like nodes carry the labels and the taint of a GPU node."""
    n_cpu = min(cpu_nodes, plan.nodes)
    n_gpu = plan.nodes - n_cpu
    specs = []
    for i in range(plan.nodes):
        gpu = i < n_gpu
        name = f"real-gpu-{i}" if gpu else f"real-cpu-{i - n_gpu}"
        labels = {
            NODE_KIND_LABEL: "real",
            "topology.kubernetes.io/zone": zones[i % len(zones)] if zones else "zone-a",
        }
        if gpu:
            labels |= {
                "nvidia.com/gpu.product": gpu_product,
                "nvidia.com/gpu.count": str(gpus),
                rack_label: f"real-rack-{i}",
            }
        specs.append(
            NodeSpec(
                name=name,
                index=i,
                ip=plan.node_ip(i),
                dir=base / name,
                cgroup_root=f"/dsa-{plan.index}-{i}",
                pod_range=plan.pod_range(i),
                gpu=gpu,
                labels=labels,
                taints=(GPU_TAINT,) if gpu else (),
            )
        )
    return specs


def prepare_node_dir(node: NodeSpec, plan: realnet.NetPlan, sandbox_image: str) -> None:
    d = node.dir
    for sub in (
        "containerd/root",
        "containerd/state",
        "runc",
        "cni-conf",
        "cni-ipam",
        "pod-logs",
        "volume-plugins",
        "sysctl",
        *PRIVATE_DIRS.values(),
    ):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for rel, value in SYSCTL_GUARDS.items():
        (d / "sysctl" / rel.replace("/", ".")).write_text(value + "\n")
    (d / "containerd.toml").write_text(containerd_config(node, plan, sandbox_image))
    (d / "cni-conf" / "10-dsa-test.conflist").write_text(json.dumps(cni_config(node, plan), indent=1))
    (d / "resolv.conf").write_text(f"nameserver {plan.dns_ip}\n")
    (d / "ns.sh").write_text(namespace_script(node))


def missing_prerequisites() -> list[str]:
    """What this machine lacks for real nodes, each with its fix (empty when ready)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (kubelet and containerd run as root)")
    for path in (RUNC, f"{CNI_BIN_DIR}/bridge", f"{CNI_BIN_DIR}/host-local"):
        if not os.access(path, os.X_OK):
            missing.append(f"{path} (bash tests/cluster/install-deps.sh)")
    for tool in ("unshare", "nsenter", "mount", "ip"):
        if not shutil.which(tool, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])):
            missing.append(f"{tool} (bash tests/cluster/install-deps.sh)")
    if not any((h / "cpuset.cpus").exists() for h in cgroup_hierarchies()):
        missing.append("cgroup v1 hierarchies (a cpuset hierarchy under /sys/fs/cgroup)")
    return missing


def host_mount_points() -> list[str]:
    """Create the host directories the node namespaces bind over; returns the ones created."""
    created = []
    for host in PRIVATE_DIRS:
        p = Path(host)
        if not p.exists():
            p.mkdir(parents=True)
            created.append(host)
    for rel in SYSCTL_GUARDS:
        if not Path("/proc/sys", rel).exists():
            raise RuntimeError(f"/proc/sys/{rel} does not exist: cannot guard it")
    return created


def containerd_argv(node: NodeSpec, bins: NodeBins) -> list[str]:
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        str(node.dir / "ns.sh"),  # mounts, then exec "$@"
        str(bins.containerd),
        "--config",
        str(node.dir / "containerd.toml"),
        "--log-level",
        "warn",
    ]


def kubelet_argv(node: NodeSpec, containerd_pid: int, bins: NodeBins, kubeconfig: Path) -> list[str]:
    labels = ",".join(f"{k}={v}" for k, v in sorted(node.labels.items()))
    argv = [
        "nsenter",
        f"--mount=/proc/{containerd_pid}/ns/mnt",
        "--",
        str(bins.kubelet),
        f"--config={node.dir / 'kubelet.json'}",
        f"--kubeconfig={kubeconfig}",
        "--root-dir=/var/lib/kubelet",  # the node's own directory, bind-mounted in its namespace
        f"--hostname-override={node.name}",
        f"--node-ip={node.ip}",
        f"--node-labels={labels}",
        "--v=1",
    ]
    if node.taints:
        argv.append(f"--register-with-taints={','.join(node.taints)}")
    return argv


def wait_containerd(bins: NodeBins, node: NodeSpec, alive: Callable[[], bool], timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not alive():
            raise RuntimeError(f"containerd of {node.name} exited (see its log)")
        if node.socket.exists() and ctr(bins.ctr, node, "version", timeout=10).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"containerd of {node.name} did not answer on {node.socket} in {timeout}s")
