"""Real worker nodes (kubelet + containerd + runc) in the test cluster: pods really run, and
what users rely on works on them: scheduling onto GPU-like and CPU nodes, logs, exec,
port-forward, pod DNS through a headless Service, the API server from inside a pod; and
teardown leaves nothing on the machine."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.cluster import debimage, harness, realnet, realnode

pytestmark = pytest.mark.integration

IMAGE = debimage.NAME


@pytest.fixture
def rc(real_cluster):
    """One kwok node beside the default three real nodes, the Debian python image loaded."""
    return real_cluster


@pytest.fixture
def rns(rc):
    name = f"r-{uuid.uuid4().hex[:6]}"
    rc.kubectl("create", "namespace", name)
    rc.wait_for(
        lambda: rc.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        timeout=30,
        what=f"default ServiceAccount in {name}",
    )
    yield name
    rc.kubectl("delete", "namespace", name, "--wait=false", check=False)


def pod(name: str, command: list[str], *, node_selector=None, gpus: int = 0, **spec) -> dict:
    container = {
        "name": "main",
        "image": IMAGE,
        "imagePullPolicy": "Never",
        "command": command,
    }
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": spec.pop("labels", {"app": name})},
        "spec": {
            "containers": [container],
            "terminationGracePeriodSeconds": 1,
            "nodeSelector": node_selector or {realnode.NODE_KIND_LABEL: "real"},
            **spec,
        },
    }


SERVE = [
    "python3",
    "-u",
    "-c",
    "import http.server as h; print('serving', flush=True); "
    "h.ThreadingHTTPServer(('', 8080), h.SimpleHTTPRequestHandler).serve_forever()",
]


def running(rc, ns: str, name: str, timeout: float = 90) -> dict:
    def ready():
        p = rc.kubectl_json("get", "pod", name, "-n", ns)
        conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
        if p["status"].get("phase") == "Running" and conds.get("Ready") == "True":
            return p
        return None

    return rc.wait_for(ready, timeout=timeout, what=f"pod {ns}/{name} Running and Ready")


def test_real_nodes_ready_beside_kwok_with_gpu_capacity_labels_and_taints(rc):
    nodes = {n["metadata"]["name"]: n for n in rc.kubectl_json("get", "nodes")["items"]}
    real = {k: v for k, v in nodes.items() if v["metadata"]["labels"].get(realnode.NODE_KIND_LABEL) == "real"}
    kwok = {k: v for k, v in nodes.items() if v["metadata"]["labels"].get(realnode.NODE_KIND_LABEL) == "kwok"}
    assert sorted(real) == sorted(rc.real_node_names()) == ["real-cpu-0", "real-gpu-0", "real-gpu-1"]
    assert sorted(kwok) == rc.node_names()
    for name, n in real.items():
        spec = rc.real_node(name)
        info = n["status"]["nodeInfo"]
        assert info["kubeletVersion"] == harness.versions()["K8S_VERSION"]
        containerd = harness.versions()["CONTAINERD_VERSION"].lstrip("v")
        assert info["containerRuntimeVersion"] == f"containerd://{containerd}"
        addrs = {a["type"]: a["address"] for a in n["status"]["addresses"]}
        assert addrs["InternalIP"] == spec.ip
        taints = [f"{t['key']}={t.get('value', '')}:{t['effect']}" for t in n["spec"].get("taints", [])]
        if spec.gpu:
            assert n["status"]["allocatable"]["nvidia.com/gpu"] == str(rc.gpus_per_node)
            assert n["metadata"]["labels"]["nvidia.com/gpu.product"] == rc.gpu_product
            assert taints == [realnode.GPU_TAINT]
        else:
            assert "nvidia.com/gpu" not in n["status"]["allocatable"]
            assert taints == []
    assert rc.kubectl_json("get", "service", "kubernetes")["spec"]["clusterIP"] == rc.api_ip
    assert rc.api_url == f"https://{rc.api_ip}:443"


def _apply(rc, ns: str, *objs: dict) -> None:
    items = {"apiVersion": "v1", "kind": "List", "items": list(objs)}
    rc.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(items))


def sleeper(text: str) -> list[str]:
    return ["python3", "-u", "-c", f"print({text!r}); import time; time.sleep(3600)"]


def test_pods_run_on_gpu_and_cpu_nodes_with_logs_and_exec(rc, rns):
    _apply(
        rc,
        rns,
        # Requests a GPU: ExtendedResourceToleration lets it onto a tainted GPU-like node.
        pod("gpu", sleeper("hello from a gpu pod"), gpus=1),
        pod("cpu", sleeper("hello from a cpu pod"), node_selector={"kubernetes.io/hostname": "real-cpu-0"}),
        # No GPU request, no toleration: of the real nodes only the untainted CPU node fits.
        pod("plain", ["sleep", "3600"]),
    )
    gpu, cpu, plain = (running(rc, rns, n) for n in ("gpu", "cpu", "plain"))
    assert gpu["spec"]["nodeName"] in rc.real_node_names(gpu=True)
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["spec"][
        "tolerations"
    ]
    assert cpu["spec"]["nodeName"] == "real-cpu-0"
    assert plain["spec"]["nodeName"] == "real-cpu-0"
    for p in (gpu, cpu):  # pod IPs from the node's own host-local range on the bridge
        lo, hi = rc.real_node(p["spec"]["nodeName"]).pod_range
        assert _ipnum(lo) <= _ipnum(p["status"]["podIP"]) <= _ipnum(hi)

    rc.wait_for(
        lambda: "hello from a gpu pod" in rc.kubectl("logs", "gpu", "-n", rns).stdout,
        timeout=30,
        what="gpu logs",
    )
    assert "hello from a cpu pod" in rc.kubectl("logs", "cpu", "-n", rns).stdout
    r = rc.kubectl("exec", "gpu", "-n", rns, "--", "cat", "/etc/debian_version")
    assert r.stdout.strip().startswith("12.")
    r = rc.kubectl("exec", "cpu", "-n", rns, "--", "sh", "-c", "echo $HOSTNAME; exit 3", check=False)
    assert (r.returncode, r.stdout.strip()) == (3, "cpu")


def _ipnum(ip: str) -> int:
    import ipaddress

    return int(ipaddress.ip_address(ip))


def test_port_forward_and_pod_ip_from_the_host(rc, rns):
    _apply(
        rc,
        rns,
        pod(
            "web",
            SERVE,
            node_selector={"kubernetes.io/hostname": "real-gpu-0"},
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}],
        ),
    )
    p = running(rc, rns, "web")
    # The host reaches the pod directly on the cluster's bridge.
    url = f"http://{p['status']['podIP']}:8080/etc/hostname"
    body = rc.wait_for(lambda: urllib.request.urlopen(url, timeout=5).read(), timeout=30, what=url)
    assert body.decode().strip() == "web"
    # The bridge keeps its own MAC with pods attached (else pods lose the host on every pod churn).
    mac = Path(f"/sys/class/net/{rc.net.bridge}/address").read_text().strip()
    assert mac == rc.net.bridge_mac, mac
    # kubectl port-forward: apiserver -> kubelet (its serving cert, the node IP) -> containerd.
    pf = subprocess.Popen(
        [
            str(rc.kubectl_path),
            f"--kubeconfig={rc.kubeconfig}",
            "port-forward",
            "-n",
            rns,
            "pod/web",
            ":8080",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = pf.stdout.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert m, line
        with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/etc/hostname", timeout=10) as r:
            assert r.read().decode().strip() == "web"
    finally:
        pf.terminate()
        pf.wait(10)


def test_headless_service_resolves_pods_by_dns(rc, rns):
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "peers"},
        "spec": {"clusterIP": "None", "selector": {"app": "peer"}, "ports": [{"port": 8080}]},
    }
    server = pod(
        "a",
        SERVE,
        labels={"app": "peer"},
        hostname="a",
        subdomain="peers",
        node_selector={"kubernetes.io/hostname": "real-gpu-1"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}],
    )
    client = pod("b", ["sleep", "3600"], node_selector={"kubernetes.io/hostname": "real-cpu-0"})
    _apply(rc, rns, svc, server, client)
    a, _ = running(rc, rns, "a"), running(rc, rns, "b")
    fqdn = f"a.peers.{rns}.svc.cluster.local"
    script = (
        "import socket, urllib.request as u; "
        f"print(socket.gethostbyname({fqdn!r})); "
        "print(sorted({i[4][0] for i in socket.getaddrinfo('peers', 8080)})); "
        "print(u.urlopen('http://a.peers:8080/etc/hostname', timeout=5).read().decode().strip())"
    )

    def resolved():
        r = rc.kubectl("exec", "b", "-n", rns, "--", "python3", "-c", script, check=False)
        return r.stdout.split("\n") if r.returncode == 0 else None

    out = rc.wait_for(resolved, timeout=60, what=f"{fqdn} resolving in pod b")
    ip = a["status"]["podIP"]
    assert out[0] == ip  # the pod's own name (hostname.subdomain)
    assert out[1] == str([ip])  # the Service name (search path <ns>.svc.cluster.local)
    assert out[2] == "a"  # and pod-to-pod across nodes, no NAT
    # Names outside the cluster get no answer: CoreDNS forwards nothing off the machine.
    r = rc.kubectl(
        "exec",
        "b",
        "-n",
        rns,
        "--",
        "python3",
        "-c",
        "import socket; socket.gethostbyname('example.com')",
        check=False,
    )
    assert r.returncode != 0


def test_in_cluster_client_reaches_the_api_server(rc, rns):
    """As the operator and router will: KUBERNETES_SERVICE_HOST/PORT and the ServiceAccount token."""
    script = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
req = urllib.request.Request(
    f"https://{host}:{port}/apis/authentication.k8s.io/v1/selfsubjectreviews",
    data=json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode(),
    headers={"Authorization": "Bearer " + open(sa + "/token").read(), "Content-Type": "application/json"},
)
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
r = json.load(urllib.request.urlopen(req, context=ctx, timeout=10))
print(host, port, r["status"]["userInfo"]["username"])
"""
    _apply(rc, rns, pod("client", ["python3", "-c", script], restartPolicy="Never"))

    def done():
        p = rc.kubectl_json("get", "pod", "client", "-n", rns)
        return p if p["status"].get("phase") in ("Succeeded", "Failed") else None

    p = rc.wait_for(done, timeout=90, what="in-cluster client finished")
    log = rc.kubectl("logs", "client", "-n", rns).stdout.strip()
    assert p["status"]["phase"] == "Succeeded", log
    assert log == f"{rc.api_ip} 443 system:serviceaccount:{rns}:default"


def test_teardown_leaves_nothing(tmp_path):
    """A second cluster (beside the module's, on its own bridge) with a running pod; after
    stop(): no process, shim, cgroup, mount, bridge or directory of it is left."""
    c = harness.Cluster(nodes=0, real_nodes=1, verbose=False)
    try:
        c.start()
        node = c.real[0]
        _, pause_name = harness.pause_image()
        c.kubectl("run", "p", f"--image={pause_name}", "--image-pull-policy=Never", "--restart=Never")
        running(c, "default", "p")
        pids = set(c.pids) | realnode.shim_pids([node.socket]) | realnode.cgroup_pids(node.cgroup_root)
        assert realnode.shim_pids([node.socket]) and realnode.cgroup_pids(node.cgroup_root)
        bridge, workdir = c.net.bridge, c.workdir
        assert realnet.bridge_exists(bridge)
    finally:
        t = time.monotonic()
        c.stop()
        print(f"\n[real-nodes] teardown of 1 node with a pod: {time.monotonic() - t:.1f}s")
    assert c.teardown_problems == []
    assert not [p for p in pids if realnode._alive(p)]
    assert not realnode.shim_pids([node.socket])
    assert not realnet.bridge_exists(bridge)
    assert not [h for h in realnode.cgroup_hierarchies() if (h / node.cgroup_root.lstrip("/")).exists()]
    assert not realnode.mounts_under([workdir])
    assert not Path(workdir).exists()


WEBHOOK = """
import http.server, json, ssl
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["request"]
        labels = (req.get("object") or {}).get("metadata", {}).get("labels") or {}
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {
            "uid": req["uid"], "allowed": labels.get("deny") != "true",
            "status": {"code": 403, "message": "denied by the in-cluster webhook"}}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
srv = http.server.ThreadingHTTPServer(("", 8443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("/tls/tls.crt", "/tls/tls.key")
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"""


def test_apiserver_calls_an_in_cluster_webhook_service(rc, rns):
    """A webhook Service (no ClusterIP routing here) is reached at its endpoint, the pod IP on
    the bridge (--enable-aggregator-routing), as the operator's in-cluster webhook will be."""
    crt, key = rc.mint_serving_cert(f"hook-{rns}", dns=(f"hook.{rns}.svc",), ips=())
    rc.kubectl("create", "secret", "tls", "hook-tls", "-n", rns, f"--cert={crt}", f"--key={key}")
    server = pod(
        "hook",
        ["python3", "-u", "-c", WEBHOOK],
        labels={"app": "hook"},
        node_selector={"kubernetes.io/hostname": "real-cpu-0"},
        volumes=[{"name": "tls", "secret": {"secretName": "hook-tls"}}],
    )
    server["spec"]["containers"][0]["volumeMounts"] = [{"name": "tls", "mountPath": "/tls"}]
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "hook"},
        "spec": {"selector": {"app": "hook"}, "ports": [{"port": 443, "targetPort": 8443}]},
    }
    _apply(rc, rns, server, svc)
    running(rc, rns, "hook")
    name = f"hook-{rns}"
    rc.apply(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "hook.dsa.test",
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 5,
                    "clientConfig": {
                        "service": {"namespace": rns, "name": "hook", "port": 443, "path": "/validate"},
                        "caBundle": rc.ca_bundle_b64,
                    },
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": rns}},
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["configmaps"],
                        }
                    ],
                }
            ],
        }
    )
    try:

        def denied():
            r = rc.kubectl(
                "apply",
                "-n",
                rns,
                "-f",
                "-",
                check=False,
                input=json.dumps(
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": "bad", "labels": {"deny": "true"}},
                    }
                ),
            )
            return r if r.returncode != 0 and "denied by the in-cluster webhook" in r.stderr else None

        rc.wait_for(denied, timeout=30, what="denial by the in-cluster webhook")
        rc.kubectl("create", "configmap", "good", "-n", rns)
    finally:
        rc.kubectl("delete", "validatingwebhookconfiguration", name, check=False)
