#!/usr/bin/env python3
"""A real Kubernetes control plane for tests, from locally built binaries.

Starts etcd, kube-apiserver (TLS, RBAC, client-certificate users, ServiceAccount tokens),
kube-controller-manager, kube-scheduler and kwok (fake GPU nodes, pods become Running/Ready)
on free loopback ports under a temporary directory, and tears everything down again.
With ``real_nodes=N`` it also starts N real worker nodes (kubelet + containerd + runc, pods on
a bridge the harness creates, CoreDNS): see realnode.py, realnet.py and docs/cluster.md.

Library use::

    from tests.cluster.harness import Cluster
    with Cluster(nodes=4) as c:                              # kwok nodes only
        c.kubectl("get", "nodes")
    with Cluster(nodes=0, real_nodes=3) as c:                # real-gpu-0, real-gpu-1, real-cpu-0
        c.load_image(Path("image.tar"))                     # into every real node's containerd
        alice = c.mint_user("alice", groups=["dev"])        # kubeconfig path, no rights
        sa = c.sa_kubeconfig("default", "default")          # token kubeconfig

CLI (used by tests/cluster/cluster.mk)::

    python tests/cluster/harness.py up [--nodes N] [--real-nodes N]   # background; .cluster/kubeconfig
    python tests/cluster/harness.py status
    python tests/cluster/harness.py load-image FILE...    # into the running cluster's real nodes
    python tests/cluster/harness.py down

Binaries come from tests/cluster/build.sh (cached under ~/.cache/dsa-operator/bin);
DSA_CLUSTER_BIN_DIR overrides where they are looked up (files named without versions).
Certificates are made with the ``cryptography`` package when importable, else the openssl CLI.
Set DSA_CLUSTER_KEEP=1 to keep the work directory (logs, certs) after teardown.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if __name__ == "__main__" and str(ROOT) not in sys.path:  # run as a script: make `tests.cluster` importable
    sys.path.insert(0, str(ROOT))

from tests.cluster import oci, realnet, realnode  # noqa: E402

STATE_DIR = ROOT / ".cluster"
KWOK_STAGES = HERE / "kwok-stages.yaml"
CPU_NODE_PREFIX = "cpu-node"
UNSHARE_MOUNT = ("unshare", "--mount", "--propagation", "private", "--")
# Namespaces with this label set to "enabled" are the ones the test cluster's Kueue manages.
KUEUE_NAMESPACE_LABEL = "dsa-operator.test/kueue"
# Binaries the default build (CI) leaves out: build.sh makes them only when asked (DSA_BUILD_LWS=1),
# and a Cluster needs them only when it runs them (Cluster(lws=True)).
OPTIONAL_BINARIES = ("lws",)
# The LeaderWorkerSet controller's user (client certificate CN): its requests in the audit log.
LWS_USER = "lws-controller"
# The label LWS puts on every pod of a group; its pod webhooks only see pods that carry it.
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
BUILD_SH = HERE / "build.sh"

SERVICE_CIDR = "10.0.0.0/24"
# Pod and node IPs that kwok writes into status. They are loopback addresses on purpose: anything
# that ever dials a pod or node IP (the apiserver for logs/exec, an operator probing pods) stays on
# this machine instead of sending traffic to a private range. Override per Cluster if needed.
POD_CIDR = "127.128.0.1/16"
NODE_IP = "127.0.0.1"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "dsa-test-admin"
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")

DEFAULT_CONTROLLERS = (
    "statefulset-controller",
    "deployment-controller",
    "replicaset-controller",
    "job-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "pod-garbage-collector-controller",
    "root-ca-certificate-publisher-controller",  # kube-root-ca.crt ConfigMaps, as in a real cluster
    "clusterrole-aggregation-controller",  # fills the aggregated admin/edit/view ClusterRoles
)

K8S_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet")
CONTAINERD_COMPONENTS = ("containerd", "ctr", "containerd-shim-runc-v2")
NODE_BINARIES = ("kubelet", *CONTAINERD_COMPONENTS, "coredns")
# With real nodes the endpoints controllers run too: Services (headless ones for DNS) get endpoints.
# The node lifecycle controller marks a node whose kubelet stopped reporting Ready=Unknown (and its
# pods not ready), as in any cluster; kwok renews its own nodes' Leases, so they stay Ready.
REAL_NODE_CONTROLLERS = (
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "node-lifecycle-controller",
)
# How long a node may go without a heartbeat before it is Unknown: 20 s here, so that a test of a
# lost node waits less (Kubernetes' default is 50 s).
NODE_MONITOR_GRACE = "20s"


# --------------------------------------------------------------------------- versions/binaries
def versions() -> dict[str, str]:
    out = {}
    for line in (HERE / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def binary_paths() -> dict[str, Path]:
    """Where each component binary is expected (cache keyed by version, or DSA_CLUSTER_BIN_DIR)."""
    names = ("etcd", "kwok", "helm", *K8S_COMPONENTS, *CONTAINERD_COMPONENTS, "coredns", "kueue", "lws")
    override = os.environ.get("DSA_CLUSTER_BIN_DIR")
    if override:
        return {n: Path(override) / n for n in names}
    v = versions()
    ver = {"etcd": v["ETCD_VERSION"], "kwok": v["KWOK_VERSION"], "helm": v["HELM_VERSION"]}
    ver.update({n: v["K8S_VERSION"] for n in K8S_COMPONENTS})
    ver.update({n: v["CONTAINERD_VERSION"] for n in CONTAINERD_COMPONENTS})
    ver["coredns"] = v["COREDNS_VERSION"]
    ver["kueue"] = v["KUEUE_VERSION"]
    ver["lws"] = v["LWS_VERSION"]
    return {n: _bin_cache() / f"{n}-{ver[n]}" for n in names}


def kueue_manifests() -> Path:
    """Kueue's CRDs and webhook manifests, copied from its module by build.sh."""
    override = os.environ.get("DSA_CLUSTER_BIN_DIR")
    if override:
        return Path(override) / "kueue-manifests"
    return _bin_cache() / f"kueue-manifests-{versions()['KUEUE_VERSION']}"


def lws_manifests() -> Path:
    """LeaderWorkerSet's CRD and webhook manifests, copied from its module by build.sh (with
    DSA_BUILD_LWS=1)."""
    override = os.environ.get("DSA_CLUSTER_BIN_DIR")
    if override:
        return Path(override) / "lws-manifests"
    return _bin_cache() / f"lws-manifests-{versions()['LWS_VERSION']}"


def _bin_cache() -> Path:
    return Path(os.environ.get("DSA_CLUSTER_BIN_CACHE", Path.home() / ".cache/dsa-operator/bin"))


def pause_image() -> tuple[Path, str]:
    """The pause image archive build.sh makes, and the name it has in the nodes' containerd."""
    tag = versions()["PAUSE_VERSION"]
    override = os.environ.get("DSA_CLUSTER_BIN_DIR")
    path = Path(override) / "pause-image.tar" if override else _bin_cache() / f"pause-image-{tag}.tar"
    return path, f"localhost/dsa/pause:{tag}"


def ensure_binaries(quiet: bool = False, lws: bool = False) -> dict[str, Path]:
    """Build missing binaries with build.sh (a no-op, ~1 s, when all are cached). The optional
    ones (OPTIONAL_BINARIES: LeaderWorkerSet) only with lws=True."""
    paths = binary_paths()
    wanted = [p for n, p in paths.items() if lws or n not in OPTIONAL_BINARIES]
    if os.environ.get("DSA_CLUSTER_BIN_DIR"):
        missing = [n for n, p in paths.items() if p in wanted and not os.access(p, os.X_OK)]
        if missing:
            raise RuntimeError(f"DSA_CLUSTER_BIN_DIR lacks {missing}")
        return paths
    if (
        not all(os.access(p, os.X_OK) for p in wanted)
        or (lws and not (lws_manifests() / "webhook.yaml").is_file())
        or not pause_image()[0].is_file()
        or not (STATE_DIR / "bin").is_dir()
    ):
        subprocess.run(
            ["bash", str(BUILD_SH)],
            check=True,
            stdout=subprocess.DEVNULL if quiet else None,
            env={**os.environ, "DSA_BUILD_LWS": "1"} if lws else None,
        )
    return paths


@contextlib.contextmanager
def running(**cluster_args: Any) -> Iterator[Cluster]:
    """A started Cluster, stopped however the block ends: what every cluster fixture does.

    Binaries are built or reused first, unless DSA_CLUSTER_SKIP_BUILD=1; SIGTERM/SIGHUP become
    SystemExit so that the stop still runs when the test run is killed."""
    install_signal_handlers()
    if os.environ.get("DSA_CLUSTER_SKIP_BUILD") != "1":
        ensure_binaries(quiet=not cluster_args.get("verbose", True), lws=cluster_args.get("lws", False))
    with Cluster(**cluster_args) as c:
        yield c


# --------------------------------------------------------------------------- certificates
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class _CertMaker:
    """EC P-256 keys and X.509 certs: cryptography if importable, else the openssl CLI."""

    def __init__(self, dir: Path):
        self.dir = dir
        try:
            import cryptography  # noqa: F401

            self.backend = "cryptography"
        except ImportError:
            if not shutil.which("openssl"):
                raise RuntimeError("need the 'cryptography' package or the openssl CLI") from None
            self.backend = "openssl"

    # returns (cert_path, key_path)
    def ca(self, name: str, cn: str) -> tuple[Path, Path]:
        crt, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        if self.backend == "cryptography":
            self._crypto_cert(crt, key, cn, [], None, is_ca=True)
        else:
            self._ossl_key(key)
            self._ossl(
                [
                    "req",
                    "-x509",
                    "-new",
                    "-key",
                    key,
                    "-sha256",
                    "-days",
                    "3650",
                    "-subj",
                    f"/CN={cn}",
                    "-out",
                    crt,
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
                ]
            )
        return crt, key

    def leaf(
        self,
        name: str,
        cn: str,
        orgs: Sequence[str] = (),
        *,
        ca: tuple[Path, Path],
        server: bool = False,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
    ) -> tuple[Path, Path]:
        crt, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        if self.backend == "cryptography":
            self._crypto_cert(crt, key, cn, orgs, ca, server=server, dns=dns, ips=ips)
            return crt, key
        self._ossl_key(key)
        csr, ext = self.dir / f"{name}.csr", self.dir / f"{name}.ext"
        subj = f"/CN={cn}" + "".join(f"/O={o}" for o in orgs)
        self._ossl(["req", "-new", "-key", key, "-subj", subj, "-out", csr])
        lines = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=" + ("serverAuth,clientAuth" if server else "clientAuth"),
        ]
        sans = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        self._ossl(
            [
                "x509",
                "-req",
                "-in",
                csr,
                "-CA",
                ca[0],
                "-CAkey",
                ca[1],
                "-CAcreateserial",
                "-days",
                "3650",
                "-sha256",
                "-extfile",
                ext,
                "-out",
                crt,
            ]
        )
        csr.unlink()
        ext.unlink()
        return crt, key

    def _ossl_key(self, key: Path) -> None:
        self._ossl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key])

    @staticmethod
    def _ossl(args: list) -> None:
        r = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"openssl {args[0]} failed: {r.stderr.strip()}")

    @staticmethod
    def _crypto_cert(
        crt: Path, key: Path, cn: str, orgs: Sequence[str], ca, *, is_ca=False, server=False, dns=(), ips=()
    ) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        k = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
            + [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        )
        if ca is None:
            issuer, signer = name, k
        else:
            ca_cert = x509.load_pem_x509_certificate(Path(ca[0]).read_bytes())
            issuer = ca_cert.subject
            signer = serialization.load_pem_private_key(Path(ca[1]).read_bytes(), None)
        now = datetime.datetime.now(datetime.UTC)
        b = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        )
        if is_ca:
            b = b.add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            b = b.add_extension(
                x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True
            )
            usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
            b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            if sans:
                b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = b.sign(signer, hashes.SHA256())
        key.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


# --------------------------------------------------------------------------- processes
def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pdeathsig() -> None:  # runs in the child before exec: die with the parent (Linux)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    args: list | None = None
    env: dict | None = None


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class ClusterError(RuntimeError):
    pass


WORKDIR_PREFIX = "dsa-cluster-"


def _sweep_stale_workdirs() -> None:
    """Remove work directories of clusters whose owning process is gone (e.g. SIGKILLed), and
    what their real nodes left on the machine (shims, containers, cgroups, the bridge)."""
    for d in Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"):
        try:
            pid = int((d / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if not _alive(pid):
            rec = realnode.Record.load(d / REAL_NODES_RECORD)
            if rec:
                rec.pids = []  # its daemons died with it; the PIDs may belong to others now
                realnode.teardown(rec)
            shutil.rmtree(d, ignore_errors=True)


REAL_NODES_RECORD = "realnodes.json"


# --------------------------------------------------------------------------- the cluster
@dataclass
class Cluster:
    nodes: int = 4
    gpus_per_node: int = 8
    node_prefix: str = "gpu-node"
    zones: Sequence[str] = ("zone-a", "zone-b")
    nodes_per_rack: int = 2
    rack_label: str = "topology.dsa-operator.io/rack"
    gpu_product: str = "NVIDIA-H200"
    gpu_products: Sequence[str] = ()  # when set, node i carries gpu_products[i % len]
    extra_resources: dict = field(default_factory=dict)  # e.g. {"rdma/ib": "1"} on every node
    controllers: Sequence[str] = DEFAULT_CONTROLLERS
    pod_cidr: str = POD_CIDR
    node_ip: str = NODE_IP
    # Real worker nodes (kubelet + containerd): the last `real_cpu_nodes` of them are CPU nodes
    # (real-cpu-<i>), the others GPU-like (real-gpu-<i>: nvidia.com/gpu capacity, GPU labels and
    # the nvidia.com/gpu=present:NoSchedule taint). net_index picks the bridge dsabr<index>
    # (default: DSA_CLUSTER_NET_INDEX, else the lowest free one).
    real_nodes: int = 0
    real_cpu_nodes: int = 1
    # kwok nodes without GPUs (cpu-node-<i>): where routers and other GPU-free pods belong.
    cpu_nodes: int = 0
    # Run Kueue (built from its module, as a host process, webhooks on 127.0.0.1) once the nodes
    # are Ready. It manages only namespaces labelled KUEUE_NAMESPACE_LABEL=enabled, so the rest of
    # the cluster never waits on it.
    kueue: bool = False
    # Run the LeaderWorkerSet controller (built from its module with DSA_BUILD_LWS=1, as a host
    # process under its own user LWS_USER, webhooks on 127.0.0.1) once the nodes are Ready: for
    # benchmarks against it. Its pod webhooks see only pods with the LWS_NAME_LABEL label.
    lws: bool = False
    # Client QPS and burst of the controller-manager and the scheduler. None leaves their
    # defaults (20/30 and 50/100), which throttle them long before the API server is busy; a
    # scale benchmark sets what a large production cluster runs (see docs/benchmarks.md).
    control_plane_qps: int | None = None
    # Users whose reads (get, list, watch) are audited too, not only their writes: a benchmark
    # counts a controller's requests by verb from the audit log (the API server's request
    # metrics carry no user or user agent).
    audit_reads_of: Sequence[str] = ()
    # kwok renews each node's Lease every quarter of this; nothing here acts on lapsed leases
    # (no node-lifecycle controller with kwok nodes), so a benchmark with a thousand nodes can
    # lengthen it and spare the API server the renewals.
    node_lease_seconds: int = 40
    net_index: int | None = None
    workdir: Path | None = None
    keep: bool = field(default_factory=lambda: os.environ.get("DSA_CLUSTER_KEEP") == "1")
    verbose: bool = True

    def __post_init__(self):
        self._procs: list[_Proc] = []
        self._owns_workdir = self.workdir is None
        self._started = False
        self._lock = threading.Lock()
        self.startup_seconds: float | None = None
        self.real_nodes_seconds: float | None = None  # from the first node process to all Ready
        self.real_teardown_seconds: float | None = None
        self.teardown_problems: list[str] = []  # what stop() could not remove (real nodes)
        self.bins = binary_paths()
        self.net: realnet.NetPlan | None = None
        self.real: list[realnode.NodeSpec] = []
        self._real_record: realnode.Record | None = None
        self.service_cidr = SERVICE_CIDR
        self.api_ip = "127.0.0.1"
        self.lws_user = LWS_USER  # with lws=True: the LWS controller's user in the audit log

    # ---- public paths -----------------------------------------------------------------
    @property
    def kubectl_path(self) -> Path:
        return self.bins["kubectl"]

    @property
    def helm_path(self) -> Path:
        return self.bins["helm"]

    @property
    def ca_cert_path(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def ca_key_path(self) -> Path:
        return self.pki / "ca.key"

    @property
    def ca_bundle_b64(self) -> str:
        """base64 of the cluster CA, e.g. for a webhook's caBundle when its cert is from mint_serving_cert."""
        return _b64(self.ca_cert_path.read_bytes())

    # ---- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _say(self, msg: str) -> None:
        if self.verbose:
            print(f"[cluster] {msg}", file=sys.stderr, flush=True)

    def start(self, timeout: float = 90) -> Cluster:
        needed = [
            n
            for n in self.bins
            if (self.real_nodes or n not in NODE_BINARIES) and (self.lws or n not in OPTIONAL_BINARIES)
        ]
        missing = [n for n in needed if not os.access(self.bins[n], os.X_OK)]
        if self.real_nodes and not pause_image()[0].is_file():
            missing.append(str(pause_image()[0]))
        if self.lws and not (lws_manifests() / "webhook.yaml").is_file():
            missing.append(str(lws_manifests()))
        if missing:
            how = "DSA_BUILD_LWS=1 tests/cluster/build.sh" if self.lws else "tests/cluster/build.sh"
            raise ClusterError(f"missing binaries {missing}: run {how}")
        if self.real_nodes and (lacks := realnode.missing_prerequisites()):
            raise ClusterError("real nodes need: " + "; ".join(lacks))
        if self.real_nodes < 0 or self.real_cpu_nodes < 0:
            raise ClusterError(
                f"real_nodes={self.real_nodes}, real_cpu_nodes={self.real_cpu_nodes}: must not be negative"
            )
        t0 = time.monotonic()
        deadline = t0 + (max(timeout, 180) if self.real_nodes else timeout)
        if self.workdir is None:
            _sweep_stale_workdirs()
            self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        self.workdir = Path(self.workdir)
        (self.workdir / "owner.pid").write_text(str(os.getpid()))
        self.pki = self.workdir / "pki"
        self.logs = self.workdir / "logs"
        for d in (self.pki, self.logs, self.workdir / "kube-cache"):
            d.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        self._started = True
        try:
            if self.real_nodes:
                self._make_bridge()
            self._make_certs()
            (
                self.etcd_port,
                self.etcd_peer_port,
                self.api_port,
                self.kcm_port,
                self.sched_port,
                self.kwok_port,
            ) = _free_ports(6)
            if self.real_nodes:  # the kubernetes Service's ClusterIP, on the bridge: see realnet.py
                self.api_port = 443
            self.api_url = f"https://{self.api_ip}:{self.api_port}"
            self.kubeconfig = self.workdir / "admin.kubeconfig"
            self._write_cert_kubeconfig(
                self.kubeconfig, ADMIN_USER, self.pki / "admin.crt", self.pki / "admin.key"
            )
            for comp in ("kcm", "scheduler", "kwok"):
                self._write_cert_kubeconfig(
                    self.workdir / f"{comp}.kubeconfig",
                    comp,
                    self.pki / f"{comp}.crt",
                    self.pki / f"{comp}.key",
                )
            self._start_etcd()
            self._wait(lambda: self._http_ok(f"http://127.0.0.1:{self.etcd_port}/health"), "etcd", deadline)
            self._start_apiserver()
            self._wait(lambda: self._https_ok(f"{self.api_url}/readyz"), "kube-apiserver", deadline)
            self._start_kcm()
            self._start_scheduler()
            self._start_kwok()
            self._create_nodes()
            if self.real_nodes:
                self._start_real_nodes(deadline)
            self._wait(
                lambda: self._https_ok(f"https://127.0.0.1:{self.kcm_port}/healthz", insecure=True),
                "kube-controller-manager",
                deadline,
            )
            self._wait(
                lambda: self._https_ok(f"https://127.0.0.1:{self.sched_port}/healthz", insecure=True),
                "kube-scheduler",
                deadline,
            )
            self._wait(lambda: self._http_ok(f"http://127.0.0.1:{self.kwok_port}/healthz"), "kwok", deadline)
            self._wait(
                self._nodes_ready, f"{self.nodes + self.cpu_nodes + self.real_nodes} nodes Ready", deadline
            )
            if self.real_nodes:
                self.real_nodes_seconds = time.monotonic() - self._real_t0
            self._wait(
                lambda: (
                    self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode
                    == 0
                ),
                "default ServiceAccount",
                deadline,
            )
            if self.kueue:
                self._start_kueue(deadline)
            if self.lws:
                self._start_lws(deadline)
        except BaseException:
            self._dump_logs()
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        self._say(
            f"control plane ready in {self.startup_seconds:.1f}s at {self.api_url} "
            f"(kubeconfig {self.kubeconfig})"
        )
        return self

    def stop(self) -> None:
        with self._lock:
            if not self._started:
                return
            self._started = False
            procs, self._procs = self._procs[::-1], []
        t = time.monotonic()
        if self._real_record:  # kubelets, containers, shims, containerds, CoreDNS: by PID
            self.teardown_problems = realnode.end_processes(self._real_record)
        # SIGTERM all groups (reverse start order), then wait, then SIGKILL; etcd last, so that
        # the apiserver still has its storage while it shuts down.
        for batch in ([p for p in procs if p.name != "etcd"], [p for p in procs if p.name == "etcd"]):
            for p in batch:
                if p.popen.poll() is None:
                    _kill_group(p.popen.pid, signal.SIGTERM)
            end = time.monotonic() + 10
            for p in batch:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(timeout=max(0.1, end - time.monotonic()))
                _kill_group(p.popen.pid, signal.SIGKILL)  # also any stray children in the group
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(timeout=5)
        if self._real_record:  # cgroups, bridge, node directories: once the apiserver is gone
            self.teardown_problems += realnode.remove_state(self._real_record)
            self.real_teardown_seconds = time.monotonic() - t
            for problem in self.teardown_problems:
                self._say(f"teardown: {problem}")
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self.workdir and self._owns_workdir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif self.workdir:
            self._say(f"kept work directory {self.workdir}")

    @property
    def pids(self) -> list[int]:
        return [p.popen.pid for p in self._procs]

    def process_pid(self, name: str) -> int:
        """The PID of one of the cluster's processes by name (`lws`, `kueue`, `kube-apiserver`, ...),
        e.g. to read /proc/<pid>/stat and status. It is the program itself, not a wrapper:
        `unshare` and `sh -c 'exec ...'` replace themselves with it. A restart gives a new PID."""
        with self._lock:
            found = [p.popen.pid for p in self._procs if p.name == name]
        if not found:
            raise KeyError(f"no process {name!r}; running: {sorted(p.name for p in self._procs)}")
        return found[-1]

    # ---- helpers for tests ------------------------------------------------------------
    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | str | None = None,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess:
        """Run kubectl against this cluster (admin unless kubeconfig is given); text output."""
        cmd = [
            str(self.kubectl_path),
            f"--kubeconfig={kubeconfig or self.kubeconfig}",
            f"--cache-dir={self.workdir / 'kube-cache'}",
            *map(str, args),
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout)
        if check and r.returncode != 0:
            raise ClusterError(
                f"kubectl {' '.join(map(str, args))} failed ({r.returncode}): "
                f"{r.stderr.strip() or r.stdout.strip()}"
            )
        return r

    def kubectl_json(self, *args: str, **kw) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json", **kw).stdout)

    def apply(self, manifest: str | dict | list, **kw) -> subprocess.CompletedProcess:
        """kubectl apply -f - with YAML text, or a dict / list of dicts (sent as JSON)."""
        if not isinstance(manifest, str):
            if isinstance(manifest, list):
                manifest = {"apiVersion": "v1", "kind": "List", "items": manifest}
            manifest = json.dumps(manifest)
        return self.kubectl("apply", "-f", "-", input=manifest, **kw)

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        env = dict(
            os.environ,
            KUBECONFIG=str(self.kubeconfig),
            HELM_CACHE_HOME=str(self.workdir / "helm/cache"),
            HELM_CONFIG_HOME=str(self.workdir / "helm/config"),
            HELM_DATA_HOME=str(self.workdir / "helm/data"),
        )
        r = subprocess.run(
            [str(self.helm_path), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout
        )
        if check and r.returncode != 0:
            raise ClusterError(f"helm {' '.join(args)} failed: {r.stderr.strip()}")
        return r

    def mint_user(self, name: str, groups: Iterable[str] = ()) -> Path:
        """Client-cert user (CN=name, O=groups), no rights beyond RBAC defaults; returns its kubeconfig."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        crt, key = self._certs.leaf(f"user-{safe}", name, list(groups), ca=self._ca)
        path = self.workdir / f"user-{safe}.kubeconfig"
        self._write_cert_kubeconfig(path, name, crt, key)
        return path

    def create_token(
        self, namespace: str, serviceaccount: str, duration: str = "1h", audiences: Sequence[str] = ()
    ) -> str:
        args = ["create", "token", serviceaccount, "-n", namespace, f"--duration={duration}"]
        args += [f"--audience={a}" for a in audiences]
        return self.kubectl(*args).stdout.strip()

    def sa_kubeconfig(
        self, namespace: str, serviceaccount: str, duration: str = "1h", create: bool = True
    ) -> Path:
        """Kubeconfig for system:serviceaccount:<ns>:<sa>, with a `kubectl create token` token."""
        if create:
            self.kubectl("create", "serviceaccount", serviceaccount, "-n", namespace, check=False)
        token = self.create_token(namespace, serviceaccount, duration)
        path = self.workdir / f"sa-{namespace}-{serviceaccount}.kubeconfig"
        self._write_kubeconfig(path, f"system:serviceaccount:{namespace}:{serviceaccount}", {"token": token})
        return path

    def mint_cert_dir(self, name: str) -> Path:
        """A serving cert (mint_serving_cert) and a folder holding it as tls.crt and tls.key, the
        layout a controller-runtime webhook server reads from its certDir."""
        crt, key = self.mint_serving_cert(name)
        cert_dir = self.workdir / f"{name}-certs"
        cert_dir.mkdir(exist_ok=True)
        shutil.copy(crt, cert_dir / "tls.crt")
        shutil.copy(key, cert_dir / "tls.key")
        return cert_dir

    def mint_serving_cert(
        self, name: str, dns: Sequence[str] = ("localhost",), ips: Sequence[str] = ("127.0.0.1",)
    ) -> tuple[Path, Path]:
        """A TLS serving cert signed by the cluster CA (use caBundle=ca_bundle_b64), e.g. for a
        webhook on https://127.0.0.1:<port>/... that the apiserver calls through `url:`."""
        return self._certs.leaf(
            f"serving-{name}", dns[0] if dns else name, ca=self._ca, server=True, dns=dns, ips=ips
        )

    def wait_for(
        self, pred: Callable[[], object], timeout: float = 30, interval: float = 0.25, what: str = "condition"
    ):
        end = time.monotonic() + timeout
        last_exc = None
        while time.monotonic() < end:
            try:
                v = pred()
                if v:
                    return v
            except Exception as e:
                last_exc = e
            time.sleep(interval)
        raise TimeoutError(
            f"timed out after {timeout}s waiting for {what}"
            + (f" (last error: {last_exc})" if last_exc else "")
        )

    def set_container_terminated(
        self,
        namespace: str,
        pod: str,
        exit_code: int = 1,
        reason: str = "Error",
        phase: str | None = "Failed",
        restart_count: int | None = None,
    ) -> dict:
        """Patch pods/status so every container is terminated (what a kubelet would report).
        kwok leaves it as is (no stage matches a terminated pod). For a crash loop that keeps
        going, label the pod `crash-loop.stage.dsa-operator.test=true` instead."""
        p = self.kubectl_json("get", "pod", pod, "-n", namespace)
        old = {c["name"]: c for c in p.get("status", {}).get("containerStatuses") or []}
        statuses = []
        for c in p["spec"]["containers"]:
            rc = restart_count if restart_count is not None else old.get(c["name"], {}).get("restartCount", 0)
            statuses.append(
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": rc,
                    "state": {"terminated": {"exitCode": exit_code, "reason": reason}},
                }
            )
        patch: dict = {"status": {"containerStatuses": statuses}}
        if phase:
            patch["status"]["phase"] = phase
        self.kubectl("patch", "pod", pod, "-n", namespace, "--subresource=status", "-p", json.dumps(patch))
        return self.kubectl_json("get", "pod", pod, "-n", namespace)

    def wait_established(self, crd: str, timeout: float = 30) -> None:
        """Until the CRD is served. `kubectl wait` errors (rather than waits) while a new CRD has
        no conditions yet, so it is retried."""
        self.wait_for(
            lambda: (
                self.kubectl(
                    "wait", "--for=condition=Established", f"crd/{crd}", "--timeout=5s", check=False
                ).returncode
                == 0
            ),
            timeout=timeout,
            what=f"CRD {crd} Established",
        )

    def node_names(self) -> list[str]:
        """The kwok (fake) GPU nodes."""
        return [f"{self.node_prefix}-{i}" for i in range(self.nodes)]

    def cpu_node_names(self) -> list[str]:
        """The kwok (fake) nodes without GPUs."""
        return [f"{CPU_NODE_PREFIX}-{i}" for i in range(self.cpu_nodes)]

    def real_node_names(self, gpu: bool | None = None) -> list[str]:
        """The real nodes: all, or only the GPU-like (gpu=True) or CPU ones (gpu=False)."""
        return [n.name for n in self.real if gpu is None or n.gpu == gpu]

    def real_node(self, name: str) -> realnode.NodeSpec:
        """Name, ip, socket (containerd), cgroup_root, dir, gpu, labels, taints of a real node."""
        for n in self.real:
            if n.name == name:
                return n
        raise KeyError(f"no real node {name!r}; real nodes: {self.real_node_names()}")

    def load_image(self, archive: Path | str) -> list[str]:
        """Import an image archive (docker-archive or OCI layout tar) into every real node's
        containerd, skipping nodes that have its images already; returns the image names.
        Pods then use the image with imagePullPolicy Never or IfNotPresent (no registry)."""
        archive = Path(archive)
        if not self.real:
            raise ClusterError("load_image needs real nodes (Cluster(real_nodes=N))")
        names = oci.archive_image_names(archive)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(self.real)) as ex:
            list(ex.map(lambda n: realnode.import_image(self.bins["ctr"], n, archive, names), self.real))
        return names

    def real_nodes_info(self) -> list[dict]:
        return [
            {"name": n.name, "ip": n.ip, "gpu": n.gpu, "socket": str(n.socket), "cgroup_root": n.cgroup_root}
            for n in self.real
        ]

    def log_path(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    # ---- internals --------------------------------------------------------------------
    def _make_certs(self) -> None:
        self._certs = _CertMaker(self.pki)
        self._ca = self._certs.ca("ca", "dsa-test-ca")
        self._certs.leaf(
            "apiserver",
            "kube-apiserver",
            ca=self._ca,
            server=True,
            dns=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            ips=["127.0.0.1", str(ipaddress.ip_network(self.service_cidr)[1])],
        )
        self._certs.leaf("admin", ADMIN_USER, ["system:masters"], ca=self._ca)
        # Components get system:masters too: simplest, and RBAC for them is not under test.
        self._certs.leaf("kcm", "system:kube-controller-manager", ["system:masters"], ca=self._ca)
        self._certs.leaf("scheduler", "system:kube-scheduler", ["system:masters"], ca=self._ca)
        self._certs.leaf("kwok", "system:kwok-controller", ["system:masters"], ca=self._ca)
        if self.real_nodes:
            # The apiserver's client cert towards kubelets (logs/exec/port-forward), and CoreDNS.
            self._certs.leaf(
                "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ["system:masters"], ca=self._ca
            )
            self._certs.leaf("coredns", "system:coredns", ["system:masters"], ca=self._ca)
        # ServiceAccount token signing key (ES256); the public half is derived from it by the apiserver.
        sa = self.pki / "sa.key"
        pub = self.pki / "sa.pub"  # the apiserver's --service-account-key-file wants a public key
        if self._certs.backend == "openssl":
            self._certs._ossl_key(sa)
            self._certs._ossl(["pkey", "-in", sa, "-pubout", "-out", pub])
        else:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import ec

            k = ec.generate_private_key(ec.SECP256R1())
            sa.write_bytes(
                k.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            pub.write_bytes(
                k.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )

    def _write_kubeconfig(self, path: Path, user: str, creds: dict) -> None:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "dsa-test",
                    "cluster": {
                        "server": self.api_url,
                        "certificate-authority-data": _b64(self.ca_cert_path.read_bytes()),
                    },
                }
            ],
            "users": [{"name": user, "user": creds}],
            "contexts": [{"name": "dsa-test", "context": {"cluster": "dsa-test", "user": user}}],
            "current-context": "dsa-test",
        }
        path.write_text(json.dumps(cfg, indent=1))  # JSON is valid YAML
        path.chmod(0o600)

    def _write_cert_kubeconfig(self, path: Path, user: str, crt: Path, key: Path) -> None:
        self._write_kubeconfig(
            path,
            user,
            {"client-certificate-data": _b64(crt.read_bytes()), "client-key-data": _b64(key.read_bytes())},
        )

    def _spawn(self, name: str, args: list, env: dict | None = None) -> subprocess.Popen:
        log = self.logs / f"{name}.log"
        with open(log, "ab") as fh:
            p = subprocess.Popen(
                [str(a) for a in args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_pdeathsig,
                cwd=self.workdir,
                env=env,
            )
        self._procs.append(_Proc(name, p, log, args, env))
        return p

    def restart(
        self, name: str, sig: int = signal.SIGTERM, down_for: float = 0.0, timeout: float = 60
    ) -> float:
        """Stop one control-plane process (`etcd`, `kube-apiserver`, ...) with `sig`, keep it down
        `down_for` seconds, start it again with the same flags and data (etcd keeps its data
        directory) and wait until it answers; returns the seconds until it answered again."""
        t0 = time.monotonic()
        proc = self.stop_process(name, sig)
        time.sleep(down_for)
        self.start_process(proc)
        probe = {
            "etcd": lambda: self._http_ok(f"http://127.0.0.1:{self.etcd_port}/health"),
            "kube-apiserver": lambda: self._https_ok(f"{self.api_url}/readyz"),
            "lws": lambda: self._lws_ready(),
        }.get(name, lambda: True)
        self._wait(probe, name, time.monotonic() + timeout)
        return time.monotonic() - t0

    def stop_process(self, name: str, sig: int = signal.SIGTERM) -> _Proc:
        """Stop one of the cluster's processes (e.g. `kubelet-real-gpu-0`: its containers run on,
        as when a kubelet dies); `start_process` starts it again with the same flags."""
        with self._lock:
            (proc,) = [p for p in self._procs if p.name == name]
            self._procs.remove(proc)
        _kill_group(proc.popen.pid, sig)
        try:
            proc.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _kill_group(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(timeout=10)
        return proc

    def start_process(self, proc: _Proc) -> subprocess.Popen:
        popen = self._spawn(proc.name, proc.args, proc.env)
        if self._real_record and proc.name.startswith(("kubelet-", "containerd-")):
            self._real_record.pids.append(popen.pid)  # teardown ends it by PID like the first
            self._real_record.save(self.workdir / REAL_NODES_RECORD)
        return popen

    # ---- real nodes -------------------------------------------------------------------
    def _make_bridge(self) -> None:
        self.net = realnet.create_bridge(self.real_nodes, self.net_index)
        self.service_cidr = self.net.service_cidr
        self.api_ip = self.net.api_ip
        self._real_record = realnode.Record(
            bridge=self.net.bridge, node_dirs=[], sockets=[], cgroup_roots=[], pids=[], created_dirs=[]
        )
        self._real_record.save(self.workdir / REAL_NODES_RECORD)
        self._say(f"bridge {self.net.bridge}: nodes {self.net.node_subnet}, services {self.service_cidr}")

    def _start_real_nodes(self, deadline: float) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._real_t0 = time.monotonic()
        plan, rec = self.net, self._real_record
        assert plan and rec
        pause_path, pause_name = pause_image()
        shim_dir = self.workdir / "node-bin"  # containerd finds its shim by name in PATH
        shim_dir.mkdir(exist_ok=True)
        (shim_dir / "containerd-shim-runc-v2").symlink_to(self.bins["containerd-shim-runc-v2"])
        bins = realnode.NodeBins(
            self.bins["kubelet"], self.bins["containerd"], self.bins["ctr"], shim_dir, pause_path, pause_name
        )
        self.real = realnode.node_specs(
            plan,
            self.workdir / "nodes",
            self.real_cpu_nodes,
            gpus=self.gpus_per_node,
            gpu_product=self.gpu_product,
            zones=self.zones,
            rack_label=self.rack_label,
        )
        rec.node_dirs = [str(n.dir) for n in self.real]
        rec.sockets = [str(n.socket) for n in self.real]
        rec.cgroup_roots = [n.cgroup_root for n in self.real]
        rec.created_dirs = realnode.host_mount_points()
        rec.save(self.workdir / REAL_NODES_RECORD)

        self._start_coredns()
        env = dict(os.environ, PATH=f"{shim_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}")
        healthz = _free_ports(len(self.real))
        kubeconfigs = {}
        for n, port in zip(self.real, healthz, strict=True):
            realnode.prepare_node_dir(n, plan, pause_name)
            realnode.make_cgroup_root(n.cgroup_root)
            client = self._certs.leaf(
                f"kubelet-{n.name}", f"system:node:{n.name}", ["system:nodes"], ca=self._ca
            )
            serving = self._certs.leaf(
                f"kubelet-serving-{n.name}", n.name, ca=self._ca, server=True, dns=[n.name], ips=[n.ip]
            )
            kubeconfigs[n.name] = n.dir / "kubelet.kubeconfig"
            self._write_cert_kubeconfig(kubeconfigs[n.name], f"system:node:{n.name}", *client)
            cfg = realnode.kubelet_config(n, plan, self.ca_cert_path, serving, port)
            (n.dir / "kubelet.json").write_text(json.dumps(cfg, indent=1))
            rec.pids.append(
                self._spawn(f"containerd-{n.name}", realnode.containerd_argv(n, bins), env=env).pid
            )
        rec.save(self.workdir / REAL_NODES_RECORD)
        ctrd = {p.name: p.popen for p in self._procs}

        def containerd_ready(n: realnode.NodeSpec) -> None:
            popen = ctrd[f"containerd-{n.name}"]
            realnode.wait_containerd(
                bins, n, lambda: popen.poll() is None, max(1, deadline - time.monotonic())
            )
            realnode.import_image(bins.ctr, n, pause_path, [pause_name])

        with ThreadPoolExecutor(len(self.real)) as ex:
            list(ex.map(containerd_ready, self.real))
        for n in self.real:
            argv = realnode.kubelet_argv(n, ctrd[f"containerd-{n.name}"].pid, bins, kubeconfigs[n.name])
            rec.pids.append(self._spawn(f"kubelet-{n.name}", argv, env=env).pid)
        rec.save(self.workdir / REAL_NODES_RECORD)
        # GPU-like nodes: nvidia.com/gpu as an extended resource, patched into the status capacity
        # once the kubelet has registered the node (the kubelet derives allocatable from it).
        gpu_patch = json.dumps(
            [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": str(self.gpus_per_node)}]
        )
        for n in self.real:
            if not n.gpu:
                continue
            self._wait(
                lambda n=n: self.kubectl("get", "node", n.name, check=False).returncode == 0,
                f"node {n.name} registered",
                deadline,
            )
            self.kubectl("patch", "node", n.name, "--subresource=status", "--type=json", "-p", gpu_patch)

    def _start_coredns(self) -> None:
        assert self.net
        kc = self.workdir / "coredns.kubeconfig"
        self._write_cert_kubeconfig(kc, "system:coredns", self.pki / "coredns.crt", self.pki / "coredns.key")
        health, ready = _free_ports(2)
        corefile = self.workdir / "Corefile"
        corefile.write_text(realnode.corefile(self.net, kc, health, ready))
        self._coredns_ready_url = f"http://127.0.0.1:{ready}/ready"
        p = self._spawn("coredns", [self.bins["coredns"], "-conf", corefile, "-dns.port", "53"])
        assert self._real_record
        self._real_record.pids.append(p.pid)

    def _start_etcd(self) -> None:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        client = f"http://127.0.0.1:{self.etcd_port}"
        self._spawn(
            "etcd",
            [
                self.bins["etcd"],
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

    @property
    def audit_log(self) -> Path:
        """JSON lines, one per write request (create/update/patch/delete) the API server served."""
        return self.logs / "audit.log"

    def audit_writes(self, user: str) -> list[dict]:
        """The write requests made by `user` so far."""
        return [e for e in self.audit_requests(user) if e.get("verb") in WRITE_VERBS]

    def audit_requests(self, user: str, since: float = 0.0) -> list[dict]:
        """Every audited request of `user` (reads too, for users in audit_reads_of) received at or
        after `since` (epoch seconds), once each: a watch is logged when it starts and again when
        it ends, and counts once."""
        # The API server rotates its audit log at 100 MB (lumberjack's default size): the older
        # files sit beside it as audit-<time>.log, and a benchmark's step outgrows one file.
        files = [*sorted(self.audit_log.parent.glob(f"{self.audit_log.stem}-*.log")), self.audit_log]
        out: dict[str, dict] = {}
        for path in files:
            if not path.exists():
                continue
            with path.open() as f:
                for line in f:
                    if f'"{user}"' not in line:
                        continue
                    e = json.loads(line)
                    if e.get("user", {}).get("username") != user or e["auditID"] in out:
                        continue
                    received = datetime.datetime.fromisoformat(
                        e["requestReceivedTimestamp"].replace("Z", "+00:00")
                    )
                    if received.timestamp() >= since:
                        out[e["auditID"]] = e
        return list(out.values())

    def _write_audit_policy(self) -> Path:
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(
            json.dumps(
                {
                    "apiVersion": "audit.k8s.io/v1",
                    "kind": "Policy",
                    "omitStages": ["RequestReceived"],
                    "rules": [
                        *(
                            [{"level": "Metadata", "users": list(self.audit_reads_of)}]
                            if self.audit_reads_of
                            else []
                        ),
                        {"level": "Metadata", "verbs": list(WRITE_VERBS)},
                        {"level": "None"},
                    ],
                }
            )
        )
        return policy

    def _start_apiserver(self) -> None:
        p = self.pki
        audit = [
            f"--audit-policy-file={self._write_audit_policy()}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
        ]
        if self.real_nodes:
            nodes = [
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction,ExtendedResourceToleration",
                f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={p / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP",
                # Webhook and aggregated-API Services are reached at their endpoints (pod IPs on the
                # bridge): ClusterIPs are not routed, there is no kube-proxy.
                "--enable-aggregator-routing=true",
                # In-cluster clients dial the ClusterIP, which is this apiserver's own address, so
                # the Service needs no endpoints; and the lease reconciler's removal of them on
                # SIGTERM blocks the apiserver's exit for its full 20 s timeout here.
                "--endpoint-reconciler-type=none",
            ]
        else:
            nodes = [
                "--authorization-mode=RBAC",
                # No kubelet/endpoints: do not try to publish 127.0.0.1 as the kubernetes Service endpoint.
                "--endpoint-reconciler-type=none",
            ]
        self._spawn(
            "kube-apiserver",
            [
                self.bins["kube-apiserver"],
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                f"--bind-address={self.api_ip}",
                f"--advertise-address={self.api_ip}",
                f"--secure-port={self.api_port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                f"--service-cluster-ip-range={self.service_cidr}",
                "--allow-privileged=true",
                *nodes,
                f"--service-account-issuer={SA_ISSUER}",
                f"--api-audiences={SA_ISSUER}",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                # TaintNodesByCondition puts node.kubernetes.io/not-ready:NoSchedule on every new Node and
                # only node-lifecycle-controller (not run: no kubelets) would lift it.
                "--disable-admission-plugins=TaintNodesByCondition",
                *audit,
                "--profiling=false",
            ],
        )

    def _start_kcm(self) -> None:
        kc = self.workdir / "kcm.kubeconfig"
        self._spawn(
            "kube-controller-manager",
            [
                self.bins["kube-controller-manager"],
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--controllers="
                + ",".join([*self.controllers, *(REAL_NODE_CONTROLLERS if self.real_nodes else ())]),
                "--leader-elect=false",
                *([f"--node-monitor-grace-period={NODE_MONITOR_GRACE}"] if self.real_nodes else []),
                "--use-service-account-credentials=false",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                f"--root-ca-file={self.pki / 'ca.crt'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.kcm_port}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                *self._qps_flags(),
            ],
        )

    def _start_scheduler(self) -> None:
        kc = self.workdir / "scheduler.kubeconfig"
        self._spawn(
            "kube-scheduler",
            [
                self.bins["kube-scheduler"],
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.sched_port}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                *self._qps_flags(),
            ],
        )

    def _qps_flags(self) -> list[str]:
        q = self.control_plane_qps
        return [f"--kube-api-qps={q}", f"--kube-api-burst={q}"] if q else []

    def _start_kwok(self) -> None:
        self._spawn(
            "kwok",
            [
                self.bins["kwok"],
                f"--kubeconfig={self.workdir / 'kwok.kubeconfig'}",
                f"--config={KWOK_STAGES}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--cidr={self.pod_cidr}",
                f"--node-ip={self.node_ip}",
                f"--server-address=127.0.0.1:{self.kwok_port}",
                f"--node-lease-duration-seconds={self.node_lease_seconds}",
            ],
        )

    # ---- Kueue ------------------------------------------------------------------------
    def _kueue_webhooks(self, url: str) -> list[dict]:
        """Kueue's own webhook configurations, served at `url` instead of a Service: only those
        for its API and for pods and StatefulSets (the integration in use; a webhook for another
        framework would refuse, say, every batch Job, since nothing serves it here), and those for
        pods and StatefulSets only in namespaces labelled for Kueue."""
        import yaml

        docs = list(yaml.safe_load_all((kueue_manifests() / "webhook.yaml").read_text()))
        only = {"matchLabels": {KUEUE_NAMESPACE_LABEL: "enabled"}}
        for doc in docs:
            kept = []
            for hook in doc["webhooks"]:
                groups = {g for r in hook.get("rules", []) for g in r.get("apiGroups", [])}
                resources = {x for r in hook.get("rules", []) for x in r.get("resources", [])}
                if groups == {"kueue.x-k8s.io"} or resources in ({"pods"}, {"statefulsets"}):
                    path = hook["clientConfig"]["service"]["path"]
                    hook["clientConfig"] = {"url": f"{url}{path}", "caBundle": self.ca_bundle_b64}
                    if groups != {"kueue.x-k8s.io"}:
                        hook["namespaceSelector"] = only
                    kept.append(hook)
            doc["webhooks"] = kept
            doc["metadata"] = {"name": f"kueue-{doc['metadata']['name']}"}
        return docs

    def _start_kueue(self, deadline: float) -> None:
        """Kueue's CRDs, its webhooks, then the manager itself, with a configuration that enables
        the StatefulSet integration and leaves leader election and certificate management out."""
        import yaml

        crds = sorted(kueue_manifests().glob("kueue.x-k8s.io_*.yaml"))
        self.kubectl("apply", "--server-side", *(a for c in crds for a in ("-f", str(c))))
        for c in crds:
            self.wait_established(c.stem.split("_", 1)[1] + ".kueue.x-k8s.io")
        self.kubectl("create", "namespace", "kueue-system")
        webhook_port, health_port, metrics_port, visibility_port = _free_ports(4)
        self.kueue_metrics_port = metrics_port
        cert_dir = self.mint_cert_dir("kueue")
        managed = {"matchLabels": {KUEUE_NAMESPACE_LABEL: "enabled"}}
        config = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": "kueue-system",
            "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
            "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
            "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "manageJobsWithoutQueueName": False,
            "managedJobsNamespaceSelector": managed,
            "clientConnection": {"qps": 50, "burst": 100},
            "integrations": {"frameworks": ["statefulset"]},
        }
        cfg = self.workdir / "kueue-config.yaml"
        cfg.write_text(yaml.safe_dump(config))
        # With its own certificate management off, Kueue reads the metrics certificate from the
        # fixed path /etc/kueue/metrics/certs (cmd/kueue/main.go), where its pod would mount a
        # Secret. Here a private mount namespace lays an overlay on /etc holding it: the host's
        # /etc is not touched, and the mount ends with the process.
        over = self.workdir / "kueue-etc"
        for d in ("upper/kueue/metrics/certs", "work"):
            (over / d).mkdir(parents=True, exist_ok=True)
        shutil.copy(cert_dir / "tls.crt", over / "upper/kueue/metrics/certs/tls.crt")
        shutil.copy(cert_dir / "tls.key", over / "upper/kueue/metrics/certs/tls.key")
        argv = [
            str(self.bins["kueue"]),
            f"--config={cfg}",
            f"--visibility-server-port={visibility_port}",
            "--feature-gates=VisibilityOnDemand=false",
        ]
        mount = f"mount -t overlay overlay -o lowerdir=/etc,upperdir={over}/upper,workdir={over}/work /etc"
        self._spawn(
            "kueue",
            [*UNSHARE_MOUNT, "sh", "-c", f'{mount} && exec "$@"', "sh", *argv],
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
        )
        self._wait(lambda: self._http_ok(f"http://127.0.0.1:{health_port}/readyz"), "kueue", deadline)
        self.apply(self._kueue_webhooks(f"https://127.0.0.1:{webhook_port}"))

    # ---- LeaderWorkerSet -----------------------------------------------------------------
    def _lws_webhooks(self, url: str) -> list[dict]:
        """LWS's webhook configurations (controller-gen's config/webhook/manifests.yaml), served at
        `url` instead of its Service. There its pod webhooks have no selector: upstream's kustomize
        patch and Helm chart add an objectSelector on LWS_NAME_LABEL, and so does this, so that no
        other pod in the cluster (the operator's) is ever sent to LWS."""
        import yaml

        docs = [d for d in yaml.safe_load_all((lws_manifests() / "webhook.yaml").read_text()) if d]
        only_lws = {"matchExpressions": [{"key": LWS_NAME_LABEL, "operator": "Exists"}]}
        for doc in docs:
            for hook in doc["webhooks"]:
                resources = {x for r in hook.get("rules", []) for x in r.get("resources", [])}
                if resources == {"pods"}:
                    hook["objectSelector"] = only_lws
                elif resources != {"leaderworkersets"}:
                    raise ClusterError(f"LWS webhook {hook['name']} for {resources}: not expected")
                path = hook["clientConfig"]["service"]["path"]
                hook["clientConfig"] = {"url": f"{url}{path}", "caBundle": self.ca_bundle_b64}
            doc["metadata"] = {"name": f"lws-{doc['metadata']['name']}"}
        return docs

    def _lws_ready(self) -> bool:
        """Its readyz, and its webhooks: readyz is a mere ping, and the webhook handlers are
        registered only once the manager runs (cmd/main.go, setupControllers), the webhook server
        answering 404 until then. /validate--v1-pod is the last one registered: it must admit a
        pod (one without the LWS label, which it lets through untouched)."""
        if not self._http_ok(self._lws_readyz):
            return False
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "dsa-test-probe",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE",
                "namespace": "default",
                "name": "probe",
                "userInfo": {"username": ADMIN_USER},
                "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"}},
            },
        }
        req = urllib.request.Request(
            f"https://127.0.0.1:{self._lws_webhook_port}/validate--v1-pod",
            data=json.dumps(review).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=2, context=self._ssl_ctx()) as r:
                return json.load(r)["response"]["allowed"] is True
        except Exception:
            return False

    def _start_lws(self, deadline: float) -> None:
        """LWS's CRD, the controller under its own user (LWS_USER) with a configuration that
        leaves leader election and certificate management out, then its webhooks."""
        import yaml

        crds = sorted(lws_manifests().glob("leaderworkerset.x-k8s.io_*.yaml"))
        self.kubectl("apply", "--server-side", *(a for c in crds for a in ("-f", str(c))))
        for c in crds:
            self.wait_established(c.stem.split("_", 1)[1] + ".leaderworkerset.x-k8s.io")
        # Its own namespace (utils.GetOperatorNamespace: lws-system outside a pod), where its
        # leader-election Lease and certificate Secret would be (both off here).
        self.kubectl("create", "namespace", "lws-system")
        webhook_port, health_port, metrics_port = _free_ports(3)
        self._lws_webhook_port = webhook_port
        self._lws_readyz = f"http://127.0.0.1:{health_port}/readyz"
        self.lws_metrics_port = metrics_port  # https, self-signed, authn/authz by the API server
        cert_dir = self.mint_cert_dir("lws")
        config = {
            "apiVersion": "config.lws.x-k8s.io/v1alpha1",
            "kind": "Configuration",
            "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
            "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
            "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            # LWS's own defaults, as a real install runs it: 500 QPS, burst 500
            # (api/config/v1alpha1/defaults.go, DefaultClientConnectionQPS/Burst; cmd/main.go's
            # --kube-api-qps/--kube-api-burst also default to 500 and apply only when given; its
            # Deployment and Helm chart set neither). Written out so that the figure is visible.
            "clientConnection": {"qps": 500, "burst": 500},
        }
        cfg = self.workdir / "lws-config.yaml"
        cfg.write_text(yaml.safe_dump(config))
        # No certificate from a fixed path (unlike Kueue): the webhook's comes from certDir and
        # the metrics server, without a cert dir, makes itself a self-signed one in memory.
        kubeconfig = self.mint_user(LWS_USER, groups=["system:masters"])
        self._spawn(
            "lws",
            [self.bins["lws"], f"--config={cfg}"],
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        )
        self._wait(self._lws_ready, "lws", deadline)
        self.apply(self._lws_webhooks(f"https://127.0.0.1:{webhook_port}"))

    def node_manifest(self, i: int) -> dict:
        name = f"{self.node_prefix}-{i}"
        res = {
            "cpu": "128",
            "memory": "2Ti",
            "pods": "110",
            "ephemeral-storage": "10Ti",
            "nvidia.com/gpu": str(self.gpus_per_node),
            **self.extra_resources,
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    realnode.NODE_KIND_LABEL: "kwok",
                    "topology.kubernetes.io/zone": self.zones[
                        (i // max(1, self.nodes_per_rack)) % len(self.zones)
                    ]
                    if self.zones
                    else "zone-a",
                    self.rack_label: f"rack-{i // max(1, self.nodes_per_rack)}",
                    "nvidia.com/gpu.product": (
                        self.gpu_products[i % len(self.gpu_products)]
                        if self.gpu_products
                        else self.gpu_product
                    ),
                    "nvidia.com/gpu.count": str(self.gpus_per_node),
                },
            },
            "spec": {},
            # kwok's node-initialize stage fills nodeInfo, addresses and conditions.
            "status": {"capacity": res, "allocatable": dict(res), "phase": "Running"},
        }

    def cpu_node_manifest(self, i: int) -> dict:
        """A kwok node with no GPU: no GPU resource, product label or taint."""
        node = self.node_manifest(i)
        name = f"{CPU_NODE_PREFIX}-{i}"
        node["metadata"]["name"] = name
        lbl = node["metadata"]["labels"]
        for key in [k for k in lbl if k.startswith("nvidia.com/") or k == self.rack_label]:
            del lbl[key]
        lbl["kubernetes.io/hostname"] = name
        for res in (node["status"]["capacity"], node["status"]["allocatable"]):
            del res["nvidia.com/gpu"]
        return node

    def _create_nodes(self) -> None:
        nodes = [self.node_manifest(i) for i in range(self.nodes)]
        nodes += [self.cpu_node_manifest(i) for i in range(self.cpu_nodes)]
        if nodes:
            self.apply(nodes)

    def _nodes_ready(self) -> bool:
        items = self.kubectl_json("get", "nodes").get("items", [])
        ready = {
            n["metadata"]["name"]
            for n in items
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
            and (
                n["metadata"]["name"] not in self.real_node_names(gpu=True)
                or n["status"].get("allocatable", {}).get("nvidia.com/gpu") == str(self.gpus_per_node)
            )
        }
        if not set(self.node_names() + self.cpu_node_names() + self.real_node_names()) <= ready:
            return False
        return not self.real or self._http_ok(self._coredns_ready_url)

    def _ssl_ctx(self, insecure: bool = False) -> ssl.SSLContext:
        if insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context(cafile=str(self.ca_cert_path))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def _https_ok(self, url: str, insecure: bool = False) -> bool:
        return self._http_ok(url, self._ssl_ctx(insecure))

    def _http_ok(self, url: str, ctx: ssl.SSLContext | None = None) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
                return r.status == 200
        except Exception:
            return False

    def _wait(self, pred: Callable[[], bool], what: str, deadline: float) -> None:
        while True:
            for p in self._procs:
                if p.popen.poll() is not None:
                    raise ClusterError(
                        f"{p.name} exited with {p.popen.returncode} while waiting for "
                        f"{what}; log: {p.log}\n{self._tail(p.log)}"
                    )
            try:
                if pred():
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out waiting for {what}")
            time.sleep(0.1)

    @staticmethod
    def _tail(path: Path, n: int = 30) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def _dump_logs(self) -> None:
        for p in self._procs:
            print(f"----- {p.name} ({p.log}) -----\n{self._tail(p.log)}", file=sys.stderr)


# --------------------------------------------------------------------------- signal handling
def install_signal_handlers() -> None:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt (main thread only), so pytest stops the session
    as for Ctrl-C and fixture finalizers and atexit hooks still run. SIGKILL cannot be caught:
    children die with their parent through PR_SET_PDEATHSIG, and the next start() removes the
    work directory left behind."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(s) in (signal.SIG_DFL, None):
            signal.signal(s, handler)


# --------------------------------------------------------------------------- CLI
def _state_file() -> Path:
    return STATE_DIR / "state.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie counts as dead
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            return False
    return True


def _read_state() -> dict | None:
    try:
        return json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None


def cmd_supervise(args) -> int:
    """Foreground: start the cluster, publish .cluster/{kubeconfig,state.json}, wait for SIGTERM."""
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, lambda *_: stop.set())
    c = Cluster(nodes=args.nodes, real_nodes=args.real_nodes, gpus_per_node=args.gpus_per_node)
    try:
        c.start()
        STATE_DIR.mkdir(exist_ok=True)
        shutil.copy(c.kubeconfig, STATE_DIR / "kubeconfig")
        (STATE_DIR / "kubeconfig").chmod(0o600)
        shutil.copy(c.ca_cert_path, STATE_DIR / "ca.crt")
        state = {
            "pid": os.getpid(),
            "workdir": str(c.workdir),
            "api_url": c.api_url,
            "kubeconfig": str(STATE_DIR / "kubeconfig"),
            "ca": str(STATE_DIR / "ca.crt"),
            "pgids": c.pids,
            "startup_seconds": round(c.startup_seconds, 2),
            "nodes": c.node_names(),
            "real_nodes": c.real_nodes_info(),
            "real_nodes_seconds": round(c.real_nodes_seconds, 2) if c.real_nodes_seconds else None,
            "bridge": c.net.bridge if c.net else None,
        }
        tmp = _state_file().with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(_state_file())
        while not stop.wait(1):
            dead = [p.name for p in c._procs if p.popen.poll() is not None]
            if dead:
                print(f"[cluster] component(s) exited: {dead}; shutting down", file=sys.stderr)
                return 1
        return 0
    finally:
        c.stop()
        for f in ("state.json", "kubeconfig", "ca.crt"):
            with contextlib.suppress(OSError):
                (STATE_DIR / f).unlink()


def cmd_up(args) -> int:
    st = _read_state()
    if st and _alive(st["pid"]):
        print(f"cluster already up: {st['api_url']}  kubeconfig={st['kubeconfig']}")
        return 0
    ensure_binaries()
    STATE_DIR.mkdir(exist_ok=True)
    with contextlib.suppress(OSError):
        _state_file().unlink()
    log = STATE_DIR / "harness.log"
    with open(log, "wb") as fh:
        p = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "_supervise",
                f"--nodes={args.nodes}",
                f"--real-nodes={args.real_nodes}",
                f"--gpus-per-node={args.gpus_per_node}",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=ROOT,
        )
    end = time.monotonic() + args.timeout
    while time.monotonic() < end:
        st = _read_state()
        if st and st["pid"] == p.pid:
            real = ", ".join(f"{n['name']} {n['ip']}" for n in st.get("real_nodes") or []) or "none"
            print(
                f"cluster up in {st['startup_seconds']}s: {st['api_url']}\n"
                f"  real nodes: {real}\n"
                f"  kubeconfig: {st['kubeconfig']}\n  kubectl/helm: {STATE_DIR / 'bin'}\n"
                f"  logs: {st['workdir']}/logs (until `down`)"
            )
            return 0
        if p.poll() is not None:
            print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
            print(f"cluster failed to start (exit {p.returncode}); see {log}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGTERM)
    print(f"cluster did not become ready in {args.timeout}s; see {log}", file=sys.stderr)
    return 1


def cmd_down(args) -> int:
    st = _read_state()
    if not st:
        print("no cluster state (.cluster/state.json); nothing to do")
        return 0
    pid = st["pid"]
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < end:
            time.sleep(0.1)
    for pg in [pid, *st.get("pgids", [])]:  # leave nothing behind, whatever happened
        _kill_group(pg, signal.SIGKILL)
    wd = st.get("workdir")
    rec = realnode.Record.load(Path(wd) / REAL_NODES_RECORD) if wd else None
    if rec:  # a no-op when the supervisor's own stop() removed everything
        rec.pids = []  # its daemons are gone with it (PR_SET_PDEATHSIG); the PIDs may be reused
        for problem in realnode.teardown(rec):
            print(f"teardown: {problem}", file=sys.stderr)
    for f in ("state.json", "kubeconfig", "ca.crt"):
        with contextlib.suppress(OSError):
            (STATE_DIR / f).unlink()
    if wd and os.environ.get("DSA_CLUSTER_KEEP") != "1":
        shutil.rmtree(wd, ignore_errors=True)
    print("cluster down")
    return 0


def cmd_status(args) -> int:
    st = _read_state()
    if not st or not _alive(st["pid"]):
        print("cluster: down")
        return 1
    r = subprocess.run(
        [str(binary_paths()["kubectl"]), f"--kubeconfig={st['kubeconfig']}", "get", "--raw=/readyz"],
        capture_output=True,
        text=True,
    )
    print(
        f"cluster: up ({st['api_url']}, readyz={r.stdout.strip() or r.stderr.strip()})\n"
        f"  kubeconfig: {st['kubeconfig']}\n  supervisor pid: {st['pid']}"
    )
    return 0 if r.returncode == 0 else 1


def cmd_load_image(args) -> int:
    """Import image archives into every real node of the running cluster (skips present ones)."""
    st = _read_state()
    if not st or not _alive(st["pid"]):
        print("cluster: down (make cluster-up first)", file=sys.stderr)
        return 1
    nodes = st.get("real_nodes") or []
    if not nodes:
        print("the running cluster has no real nodes (REAL_NODES=0?)", file=sys.stderr)
        return 1
    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        print(f"no such file: {', '.join(missing)}", file=sys.stderr)
        return 1
    ctr = binary_paths()["ctr"]

    def load(f: str, names: list[str], n: dict) -> bool:
        sock = Path(n["socket"])
        r = realnode.ctr(ctr, sock, "images", "list", "--quiet")
        if r.returncode == 0 and set(names) <= set(r.stdout.split()):
            print(f"{n['name']}: {', '.join(names)} already present", flush=True)
            return True
        r = realnode.ctr(ctr, sock, "images", "import", f)
        if r.returncode:
            print(f"{n['name']}: import of {f} failed: {r.stderr.strip()}", file=sys.stderr)
            return False
        print(f"{n['name']}: imported {', '.join(names)}", flush=True)
        return True

    from concurrent.futures import ThreadPoolExecutor

    for f in args.files:
        try:
            names = oci.archive_image_names(Path(f))
        except (ValueError, OSError, tarfile.TarError) as e:
            print(f"{f}: not an image archive ({e})", file=sys.stderr)
            return 1
        with ThreadPoolExecutor(len(nodes)) as ex:  # one containerd per node: import side by side
            if not all(ex.map(lambda n, f=f, names=names: load(f, names, n), nodes)):
                return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up")
    up.add_argument("--nodes", type=int, default=int(os.environ.get("DSA_CLUSTER_NODES", 4)))
    up.add_argument("--real-nodes", type=int, default=int(os.environ.get("DSA_CLUSTER_REAL_NODES", 3)))
    up.add_argument("--timeout", type=float, default=240)
    up.add_argument("--gpus-per-node", type=int, default=int(os.environ.get("DSA_CLUSTER_GPUS_PER_NODE", 8)))
    sv = sub.add_parser("_supervise")
    sv.add_argument("--nodes", type=int, default=4)
    sv.add_argument("--real-nodes", type=int, default=0)
    sv.add_argument("--gpus-per-node", type=int, default=8)
    sub.add_parser("down")
    sub.add_parser("status")
    li = sub.add_parser("load-image", help="import image archives into every real node")
    li.add_argument("files", nargs="+")
    a = ap.parse_args(argv)
    cmds = {
        "up": cmd_up,
        "down": cmd_down,
        "status": cmd_status,
        "load-image": cmd_load_image,
        "_supervise": cmd_supervise,
    }
    return cmds[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
