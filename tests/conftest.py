"""Shared fixtures: the examples, and one real control plane per test session.

The control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok with fake GPU
nodes) is built from Go modules by tests/cluster/build.sh:

    @pytest.mark.integration
    def test_x(cluster):
        cluster.kubectl("get", "nodes")            # admin (system:masters)
        cluster.kubeconfig                         # admin kubeconfig path (for an operator process)
        cluster.mint_user("alice", ["devs"])       # kubeconfig of an unprivileged cert user
        cluster.sa_kubeconfig("ns", "sa")          # kubeconfig with a `kubectl create token` token
        cluster.mint_serving_cert("webhook")       # (crt, key) signed by the cluster CA
        cluster.ca_bundle_b64                      # caBundle for url: webhooks on 127.0.0.1

Real worker nodes (kubelet + containerd, pods really run) are in a second session cluster,
`real_cluster`: one kwok node beside three real ones (real-gpu-0, real-gpu-1, real-cpu-0), the
Debian python test image (tests/cluster/debimage.py) loaded; `real_cluster.load_image(tar)` adds
more (see docs/cluster.md).

Environment: DSA_CLUSTER_NODES (default 4), DSA_CLUSTER_KEEP=1 (keep logs/certs),
DSA_CLUSTER_SKIP_BUILD=1 (do not run build.sh; fail if binaries are missing),
DSA_CLUSTER_BIN_DIR (use binaries from there).
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest
import yaml

from tests.cluster import harness

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(params=EXAMPLES, ids=lambda p: p.stem)
def example(request) -> dict:
    return load(request.param)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "integration: needs the local control plane (tests/cluster); slow to build once"
    )
    config.addinivalue_line(
        "markers", "chaos: fault injection with figures (tests/chaos; `make chaos` runs it alone)"
    )


@pytest.fixture(autouse=True)
def no_leftover_threads():
    """A test may not leave a non-daemon thread running: the interpreter waits for those at
    exit, so one left polling by a failed test keeps the whole run from ending."""
    before = set(threading.enumerate())
    yield
    left = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    for t in left:
        t.join(5)
    left = [t.name for t in left if t.is_alive()]
    assert not left, f"the test left non-daemon threads running: {left}"


@pytest.fixture(scope="session")
def cluster():
    with harness.running(nodes=int(os.environ.get("DSA_CLUSTER_NODES", "4")), cpu_nodes=1) as c:
        print(f"\n[cluster] start-to-ready {c.startup_seconds:.1f}s")
        yield c


@pytest.fixture(scope="session")
def real_cluster():
    from tests.cluster import debimage

    image = debimage.ensure()
    # 16 GPUs per GPU-like node: a 2-node prefill group (one rank per node, by anti-affinity)
    # and two 8-GPU decode groups fit on the two nodes (tests/integration/test_real_serving.py).
    with harness.running(nodes=1, real_nodes=3, gpus_per_node=16, verbose=False) as c:
        c.load_image(image)
        print(f"\n[cluster] real nodes Ready {c.real_nodes_seconds:.1f}s after their start")
        yield c


@pytest.fixture
def namespace(cluster):
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    cluster.wait_for(
        lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        timeout=30,
        what=f"default ServiceAccount in {name}",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
