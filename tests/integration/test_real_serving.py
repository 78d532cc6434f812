"""The main job on real nodes: the operator installed by its chart, in-cluster with its webhook, a
PD DSAModel on the engine simulator whose prefill is a 2-node PP + CP group, real containers on
real kubelets, ranks wired over the bridge, and the request path through the endpoint.

The cluster is the session's `real_cluster` (tests/conftest.py): real-gpu-0 and real-gpu-1
(GPU-like: nvidia.com/gpu capacity, the GPU taint), real-cpu-0, and one kwok node, which this
module cordons so that nothing of it lands where no container runs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from dsa_operator import labels
from tests import images
from tests.integration.operator_proc import ROOT

pytestmark = pytest.mark.integration
EXAMPLE = ROOT / "examples" / "simulator" / "pd-pp-cp.yaml"
INVALID = ROOT / "examples" / "invalid" / "cp-on-decode.yaml"
CHART = ROOT / "charts" / "dsa-operator"
RELEASE, OPERATOR_NS = "dsa-operator", "dsa-system"
KILL_ENGINE = (
    "import os, signal\n"
    "for p in filter(str.isdigit, os.listdir('/proc')):\n"
    "    try: cmd = open(f'/proc/{p}/cmdline', 'rb').read()\n"
    "    except OSError: continue\n"
    "    if b'dsa_runtime.simulator' in cmd and int(p) != os.getpid():  # not this script\n"
    "        print('killed', p, flush=True); os.kill(int(p), signal.SIGKILL)\n"
)


@pytest.fixture(scope="module")
def refs(real_cluster) -> dict[str, str]:
    """The images, built from the repo's Dockerfiles, imported into every real node."""
    built = images.ensure_images()
    for _ref, archive in built.values():
        real_cluster.load_image(archive)
    return {name: ref for name, (ref, _archive) in built.items()}


@pytest.fixture(scope="module")
def chart(real_cluster, refs):
    """The operator as users install it: `helm install` of the chart, its webhook on."""
    kwok = [n for n in real_cluster.kubectl_json("get", "nodes")["items"] if n["metadata"]["name"] not in
            real_cluster.real_node_names()]  # fmt: skip
    for n in kwok:
        real_cluster.kubectl("cordon", n["metadata"]["name"])
    repo, tag = refs["operator"].rsplit(":", 1)
    real_cluster.helm(
        "install", RELEASE, str(CHART), "-n", OPERATOR_NS, "--create-namespace",
        "--set", f"image.repository={repo}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
        "--wait", "--timeout=5m", timeout=330,
    )  # fmt: skip
    try:
        yield
    finally:
        logs = real_cluster.kubectl(
            "logs", "-n", OPERATOR_NS, f"deployment/{RELEASE}", "--tail=-1", check=False
        ).stdout
        real_cluster.helm("uninstall", RELEASE, "-n", OPERATOR_NS, "--wait", check=False)
        for n in kwok:
            real_cluster.kubectl("uncordon", n["metadata"]["name"], check=False)
        assert "Traceback" not in logs, logs[-4000:]


@pytest.fixture
def ns(real_cluster, chart):
    name = f"r-{uuid.uuid4().hex[:6]}"
    real_cluster.kubectl("create", "namespace", name)
    yield name
    real_cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s", check=False)


def manifest(ns: str, runtime_ref: str, name: str = "dsv32-demo", decode_replicas: int = 1) -> dict:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"].update(name=name, namespace=ns)
    doc["spec"]["runtime"]["image"] = runtime_ref
    doc["spec"]["decode"]["replicas"] = decode_replicas
    return doc


def status(cluster, ns: str, name: str) -> dict:
    """The DSAModel's status: `phase`, `readyGroups` ("ready/desired"), `roles`, `conditions`."""
    return cluster.kubectl_json("get", "dsamodel", name, "-n", ns).get("status", {})


def wait_ready(cluster, ns: str, name: str, timeout: float = 400) -> dict:
    def ready():
        s = status(cluster, ns, name)
        ready, _, wanted = (s.get("readyGroups") or "/").partition("/")
        return s if s.get("phase") == "Ready" and ready == wanted else None

    try:
        return cluster.wait_for(ready, timeout=timeout, interval=1, what=f"{ns}/{name} Ready")
    except TimeoutError:
        print(cluster.kubectl("get", "dsamodel", name, "-n", ns, "-o", "yaml", check=False).stdout)
        print(cluster.kubectl("get", "pods", "-n", ns, "-o", "wide", check=False).stdout)
        print(cluster.kubectl("get", "events", "-n", ns, check=False).stdout[-6000:])
        for pod in pods(cluster, ns, name):
            logs = cluster.kubectl("logs", "-n", ns, pod["metadata"]["name"], "--tail=15", check=False)
            print(f"--- {pod['metadata']['name']}\n{logs.stdout}{logs.stderr}")
        print(
            cluster.kubectl(
                "logs", "-n", OPERATOR_NS, f"deployment/{RELEASE}", "--tail=40", check=False
            ).stdout
        )
        raise


def pods(cluster, ns: str, name: str, **extra: str) -> list[dict]:
    sel = ",".join(f"{k}={v}" for k, v in {labels.MODEL: name, **extra}.items())
    items = cluster.kubectl_json("get", "pods", "-n", ns, "-l", sel)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def rank(pod: dict) -> int:
    return int(pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"])


class PortForward:
    """`kubectl port-forward service/NAME` to a free local port, through the kubelet."""

    def __init__(self, cluster, ns: str, service: str, port: int):
        from tests.cluster.harness import _free_ports

        (self.local,) = _free_ports(1)
        self.proc = subprocess.Popen(
            [str(cluster.kubectl_path), f"--kubeconfig={cluster.kubeconfig}", "-n", ns, "port-forward",
             f"service/{service}", f"{self.local}:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def __enter__(self) -> PortForward:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "Forwarding from" in line, line
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def chat(self, text: str, attempts: int = 60) -> dict:
        body = {"model": "deepseek-v32", "messages": [{"role": "user", "content": text}], "max_tokens": 16}
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.local}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        for attempt in range(attempts):  # the router registers workers shortly after they are Ready
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return json.loads(resp.read())
            except OSError:
                if attempt == attempts - 1:
                    raise
                time.sleep(1)
        raise AssertionError("unreachable")


def test_invalid_model_is_refused_by_the_in_cluster_webhook(real_cluster, ns) -> None:
    r = real_cluster.kubectl("apply", "-n", ns, "-f", str(INVALID), check=False)
    assert r.returncode != 0
    assert "denied the request" in r.stderr, r.stderr
    assert "spec.decode.parallelism.contextParallel.mode" in r.stderr, r.stderr
    assert real_cluster.kubectl_json("get", "dsamodels", "-n", ns)["items"] == []


def test_pd_model_answers_through_the_endpoint_on_real_nodes(real_cluster, refs, ns) -> None:
    m = manifest(ns, refs["runtime"])
    name = m["metadata"]["name"]
    real_cluster.apply(m)
    wait_ready(real_cluster, ns, name)

    prefill = sorted(pods(real_cluster, ns, name, **{labels.ROLE: "prefill"}), key=rank)
    # The 2-node group spans both GPU-like nodes, and its ranks met at the planned address.
    assert len(prefill) == 2
    assert {p["spec"]["nodeName"] for p in prefill} == set(real_cluster.real_node_names(gpu=True))
    for p in prefill:
        log = real_cluster.kubectl("logs", "-n", ns, p["metadata"]["name"]).stdout
        assert '"rendezvous": "ok"' in log, log[-2000:]
    decode = pods(real_cluster, ns, name, **{labels.ROLE: "decode"})
    router = pods(real_cluster, ns, name, **{labels.COMPONENT: "router"})
    assert router and all(p["spec"]["nodeName"] in real_cluster.real_node_names(gpu=False) for p in router)

    with PortForward(real_cluster, ns, name, 8000) as pf:
        replies = [pf.chat(f"hello {i}") for i in range(4)]
    leader, decode_leader = prefill[0]["metadata"]["name"], decode[0]["metadata"]["name"]
    for r in replies:
        pre, dec = r["simulator"]["served_by"]
        assert (pre["pod"], pre["role"], pre["rank"]) == (leader, "prefill", 0), r["simulator"]
        assert (dec["pod"], dec["role"], dec["rank"]) == (decode_leader, "decode", 0), r["simulator"]
    assert all(r["choices"][0]["message"]["content"] for r in replies)


def test_a_killed_rank1_engine_restarts_the_whole_group(real_cluster, refs, ns) -> None:
    m = manifest(ns, refs["runtime"])
    name = m["metadata"]["name"]
    real_cluster.apply(m)
    wait_ready(real_cluster, ns, name)
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods(real_cluster, ns, name,
              **{labels.ROLE: "prefill"})}  # fmt: skip
    rank1 = f"{name}-prefill-0-1"
    out = real_cluster.kubectl("exec", "-n", ns, rank1, "--", "python", "-P", "-c", KILL_ENGINE).stdout
    assert "killed" in out, out

    def group_failed():
        ev = real_cluster.kubectl_json("get", "events", "-n", ns, "--field-selector", "reason=GroupFailed")
        return [e["message"] for e in ev["items"]]

    (message, *_) = real_cluster.wait_for(group_failed, timeout=120, interval=1, what="a GroupFailed Event")
    # The kubelet's real exit code of the engine container, as the operator recorded it.
    assert rank1 in message and "exit code" in message, message

    def whole_group_replaced():
        now = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods(real_cluster, ns, name,
               **{labels.ROLE: "prefill"})}  # fmt: skip
        return len(now) == 2 and not set(now.values()) & set(before.values())

    real_cluster.wait_for(whole_group_replaced, timeout=180, interval=1, what="both prefill pods replaced")
    wait_ready(real_cluster, ns, name)


def test_scaling_decode_adds_a_group_the_router_serves(real_cluster, refs, ns) -> None:
    m = manifest(ns, refs["runtime"])
    name = m["metadata"]["name"]
    real_cluster.apply(m)
    wait_ready(real_cluster, ns, name)
    real_cluster.apply(manifest(ns, refs["runtime"], decode_replicas=2))
    real_cluster.wait_for(
        lambda: (status(real_cluster, ns, name).get("readyGroups") or "").endswith("/3"), timeout=60
    )
    wait_ready(real_cluster, ns, name)
    decode = {p["metadata"]["name"] for p in pods(real_cluster, ns, name, **{labels.ROLE: "decode"})}
    assert len(decode) == 2
    with PortForward(real_cluster, ns, name, 8000) as pf:
        seen: set[str] = set()
        deadline = time.monotonic() + 120
        while seen != decode and time.monotonic() < deadline:
            seen.add(pf.chat("which decode?")["simulator"]["served_by"][-1]["pod"])
    assert seen == decode


def test_a_rollout_waits_for_real_readiness_group_by_group(real_cluster, refs, ns) -> None:
    m = manifest(ns, refs["runtime"])
    name = m["metadata"]["name"]
    real_cluster.apply(m)
    wait_ready(real_cluster, ns, name)
    old = {p["metadata"]["uid"] for p in pods(real_cluster, ns, name)}
    m["spec"]["runtime"]["env"] = {"DEMO_REVISION": "2"}
    real_cluster.apply(m)

    # Sample the groups while they roll: never more than one group of new pods not yet Ready
    # while another group is also down (maxUnavailableGroups 1), read from the kubelet's status.
    def groups_down() -> int:
        down = set()
        for p in pods(real_cluster, ns, name):
            if p["metadata"]["labels"].get(labels.COMPONENT) != "engine":
                continue
            ready = any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions", [])
            )
            if not ready:
                lbl = p["metadata"]["labels"]
                down.add((lbl[labels.ROLE], lbl[labels.GROUP]))
        return len(down)

    most_down = 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        most_down = max(most_down, groups_down())
        now = pods(real_cluster, ns, name, **{labels.COMPONENT: "engine"})
        if len(now) == 3 and not {p["metadata"]["uid"] for p in now} & old and groups_down() == 0:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the rollout did not finish")
    assert most_down == 1
    events = real_cluster.kubectl_json("get", "events", "-n", ns, "--field-selector", "reason=RollingGroup")
    assert len(events["items"]) >= 2
    wait_ready(real_cluster, ns, name)


def test_deleting_the_model_removes_every_container_from_the_nodes(real_cluster, refs, ns) -> None:
    m = manifest(ns, refs["runtime"])
    name = m["metadata"]["name"]
    real_cluster.apply(m)
    wait_ready(real_cluster, ns, name)
    assert containers_of(real_cluster, ns)
    real_cluster.kubectl("delete", "dsamodel", name, "-n", ns, "--wait=true", "--timeout=60s")
    real_cluster.wait_for(lambda: not containers_of(real_cluster, ns), timeout=180, interval=2,
                          what=f"no container of namespace {ns} on any node")  # fmt: skip


def containers_of(cluster, ns: str) -> list[str]:
    """Containers (and sandboxes) of pods in `ns`, as each real node's containerd lists them."""
    found = []
    for node in cluster.real_node_names():
        spec = cluster.real_node(node)
        out = subprocess.run(
            [str(Path(cluster.bins["ctr"])), "--address", str(spec.socket), "-n", "k8s.io", "containers",
             "list", "-q", f'labels."io.kubernetes.pod.namespace"=={ns}'],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        found += [f"{node}/{c}" for c in out]
    return found


def test_a_lost_node_is_reported_then_its_group_runs_elsewhere(real_cluster, refs, ns) -> None:
    """The kubelet of the node under a one-node group dies (SIGKILL; its containers run on). Once
    the node lifecycle controller calls the node lost, the operator restarts the group, and since
    the pod on the lost node cannot go until the node is fenced, the DSAModel says so and how. The
    admin's answer (the out-of-service taint) lets Kubernetes delete the pod, and the group comes
    up on the other GPU node."""
    doc = manifest(ns, refs["runtime"], name="lost")
    for key in ("prefill", "decode", "router"):
        doc["spec"].pop(key, None)
    doc["spec"]["serving"] = {"parallelism": {"tp": 8}}
    real_cluster.apply(doc)
    wait_ready(real_cluster, ns, "lost")
    (pod,) = pods(real_cluster, ns, "lost", **{labels.COMPONENT: "engine"})
    node = pod["spec"]["nodeName"]
    t0 = time.monotonic()
    kubelet = real_cluster.stop_process(f"kubelet-{node}", signal.SIGKILL)
    tainted = False
    try:

        def says_why():
            s = status(real_cluster, ns, "lost")
            c = next((c for c in s.get("conditions", []) if c["type"] == "Degraded"), {})
            return s if c.get("reason") == "NodeLost" and node in c.get("message", "") else None

        s = real_cluster.wait_for(
            says_why, timeout=180, interval=1, what="the DSAModel to say the node is lost"
        )
        reported = time.monotonic() - t0
        message = next(c for c in s["conditions"] if c["type"] == "Degraded")["message"]
        assert "node.kubernetes.io/out-of-service" in message and s["phase"] == "Degraded", message
        (group,) = s["groups"]
        assert group["restarts"] == 1 and "which is lost" in group["lastFailure"]["reason"], group
        real_cluster.kubectl(
            "taint", "node", node, "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute"
        )
        tainted = True
        t1 = time.monotonic()
        wait_ready(real_cluster, ns, "lost", timeout=300)
        (moved,) = pods(real_cluster, ns, "lost", **{labels.COMPONENT: "engine"})
        assert moved["spec"]["nodeName"] != node
        print(
            f"\nFIGURE node lost (kubelet SIGKILLed, node-monitor-grace-period 20 s): the DSAModel said "
            f"why {reported:.0f} s later; Ready on another node {time.monotonic() - t1:.0f} s after "
            "the out-of-service taint"
        )
    finally:
        if tainted:
            real_cluster.kubectl("taint", "node", node, "node.kubernetes.io/out-of-service-", check=False)
        real_cluster.start_process(kubelet)

        def node_ready():
            n = real_cluster.kubectl_json("get", "node", node)
            return any(
                c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", [])
            )

        real_cluster.wait_for(node_ready, timeout=120, interval=1, what=f"{node} Ready again")
