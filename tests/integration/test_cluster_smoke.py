"""Smoke tests of the local control plane (tests/cluster): scheduler, controllers, kwok, RBAC,
ServiceAccount tokens, CRD CEL validation, Helm, and kwok-driven container failures."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration

IMAGE = "registry.invalid/dsa/fake:1"  # never pulled: kwok has no container runtime


def gpu_statefulset(name: str, replicas: int, gpus: int, labels: dict | None = None) -> dict:
    pod_labels = {"app": name, **(labels or {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "containers": [
                        {
                            "name": "worker",
                            "image": IMAGE,
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ]
                },
            },
        },
    }


def pods(cluster, ns: str, selector: str) -> list[dict]:
    return cluster.kubectl_json("get", "pods", "-n", ns, "-l", selector)["items"]


def is_ready(pod: dict) -> bool:
    return pod.get("status", {}).get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
    )


def test_version_is_pinned(cluster):
    v = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert v["serverVersion"]["gitVersion"].startswith("v1.34.")
    assert (v["serverVersion"]["major"], v["serverVersion"]["minor"]) == ("1", "34")
    assert v["clientVersion"]["gitVersion"] == v["serverVersion"]["gitVersion"]


def test_fake_gpu_nodes(cluster):
    nodes = cluster.kubectl_json("get", "nodes")["items"]
    gpu = [n for n in nodes if n["metadata"]["name"] in cluster.node_names()]
    assert len(gpu) == cluster.nodes
    for n in gpu:
        assert n["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert n["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H200"
        assert "topology.kubernetes.io/zone" in n["metadata"]["labels"]


def test_cpu_nodes_carry_no_gpu(cluster):
    """Where routers and other GPU-free pods go: no GPU resource and no GPU label."""
    cpu = [
        n
        for n in cluster.kubectl_json("get", "nodes")["items"]
        if n["metadata"]["name"] in cluster.cpu_node_names()
    ]
    assert len(cpu) == cluster.cpu_nodes >= 1
    for n in cpu:
        assert "nvidia.com/gpu" not in n["status"]["allocatable"]
        assert not [k for k in n["metadata"]["labels"] if k.startswith("nvidia.com/")]


def test_gpu_statefulset_scheduled_running_ready_and_garbage_collected(cluster, namespace):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(gpu_statefulset("gpu", 2, 8)))

    def both_ready():
        ps = pods(cluster, namespace, "app=gpu")
        return ps if len(ps) == 2 and all(is_ready(p) for p in ps) else None

    ps = cluster.wait_for(both_ready, timeout=60, what="2 GPU pods Running and Ready")
    nodes = {p["spec"]["nodeName"] for p in ps}
    assert len(nodes) == 2, f"8-GPU pods must land on distinct nodes, got {nodes}"
    assert nodes <= set(cluster.node_names())
    assert all(p["status"].get("podIP") for p in ps)
    sts = cluster.kubectl_json("get", "statefulset", "gpu", "-n", namespace)
    cluster.wait_for(
        lambda: (
            cluster.kubectl_json("get", "statefulset", "gpu", "-n", namespace)["status"].get("readyReplicas")
            == 2
        ),
        timeout=30,
        what="readyReplicas=2",
    )
    assert sts["metadata"]["uid"]

    # Deleting the owner: the garbage collector removes the pods (kwok finishes their deletion).
    cluster.kubectl("delete", "statefulset", "gpu", "-n", namespace, "--cascade=background", "--wait=false")
    cluster.wait_for(
        lambda: not pods(cluster, namespace, "app=gpu"), timeout=60, what="pods garbage-collected"
    )


def test_unschedulable_pod_stays_pending_with_event(cluster, namespace):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "too-big"},
        "spec": {
            "containers": [{"name": "c", "image": IMAGE, "resources": {"limits": {"nvidia.com/gpu": "16"}}}]
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))

    def failed_event():
        ev = cluster.kubectl_json(
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            "involvedObject.name=too-big,reason=FailedScheduling",
        )["items"]
        return ev or None

    ev = cluster.wait_for(failed_event, timeout=60, what="FailedScheduling event")
    assert "nvidia.com/gpu" in ev[0]["message"]
    p = cluster.kubectl_json("get", "pod", "too-big", "-n", namespace)
    assert p["status"]["phase"] == "Pending"
    assert not p["spec"].get("nodeName")


def test_rbac_unprivileged_user_forbidden_then_allowed(cluster, namespace):
    alice = cluster.mint_user("alice", groups=["dsa-testers"])
    r = cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/pods", kubeconfig=alice, check=False)
    assert r.returncode != 0
    assert "Forbidden" in r.stderr or "forbidden" in r.stderr, r.stderr
    who = json.loads(cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=alice).stdout)
    assert who["status"]["userInfo"]["username"] == "alice"
    assert "dsa-testers" in who["status"]["userInfo"]["groups"]

    cluster.kubectl(
        "create", "role", "pod-reader", "-n", namespace, "--verb=get,list,watch", "--resource=pods"
    )
    cluster.kubectl(
        "create", "rolebinding", "alice-reads", "-n", namespace, "--role=pod-reader", "--user=alice"
    )
    cluster.wait_for(
        lambda: (
            cluster.kubectl("get", "pods", "-n", namespace, kubeconfig=alice, check=False).returncode == 0
        ),
        timeout=15,
        what="alice allowed after RoleBinding",
    )
    # still nothing outside the granted namespace / verbs
    r = cluster.kubectl("get", "pods", "-n", "kube-system", kubeconfig=alice, check=False)
    assert r.returncode != 0 and "forbidden" in r.stderr.lower()
    r = cluster.kubectl("create", "configmap", "nope", "-n", namespace, kubeconfig=alice, check=False)
    assert r.returncode != 0 and "forbidden" in r.stderr.lower(), r.stderr
    r = cluster.kubectl("auth", "can-i", "delete", "pods", "-n", namespace, kubeconfig=alice, check=False)
    assert r.stdout.strip() == "no"


def test_serviceaccount_token_works(cluster, namespace):
    cluster.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    cluster.kubectl(
        "create",
        "rolebinding",
        "reader-view",
        "-n",
        namespace,
        "--clusterrole=view",
        f"--serviceaccount={namespace}:reader",
    )
    kc = cluster.sa_kubeconfig(namespace, "reader", create=False)
    who = json.loads(cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=kc).stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:reader"
    cluster.wait_for(
        lambda: cluster.kubectl("get", "pods", "-n", namespace, kubeconfig=kc, check=False).returncode == 0,
        timeout=15,
        what="SA can list pods",
    )
    r = cluster.kubectl("get", "secrets", "-n", namespace, kubeconfig=kc, check=False)
    assert r.returncode != 0 and "forbidden" in r.stderr.lower()  # view excludes secrets


CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.dsa.test
spec:
  group: smoke.dsa.test
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [minReplicas, maxReplicas]
            x-kubernetes-validations:
            - rule: self.minReplicas <= self.maxReplicas
              message: minReplicas must not exceed maxReplicas
            properties:
              minReplicas: {type: integer}
              maxReplicas: {type: integer}
"""


def test_crd_cel_validation(cluster, namespace):
    cluster.apply(CRD)
    cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.smoke.dsa.test", "--timeout=30s")

    def widget(name, lo, hi):
        return json.dumps(
            {
                "apiVersion": "smoke.dsa.test/v1",
                "kind": "Widget",
                "metadata": {"name": name},
                "spec": {"minReplicas": lo, "maxReplicas": hi},
            }
        )

    # discovery of the new type can lag a moment behind Established
    cluster.wait_for(
        lambda: (
            cluster.kubectl(
                "apply", "-n", namespace, "-f", "-", input=widget("ok", 1, 2), check=False
            ).returncode
            == 0
        ),
        timeout=20,
        what="good Widget",
    )
    r = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=widget("bad", 3, 2), check=False)
    assert r.returncode != 0
    assert "minReplicas must not exceed maxReplicas" in r.stderr, r.stderr
    cluster.kubectl("delete", "crd", "widgets.smoke.dsa.test", "--wait=false", check=False)


def test_kwok_container_failure_and_crash_loop(cluster, namespace):
    failing = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "fails",
            "labels": {"pod-container-running-failed.stage.kwok.x-k8s.io": "true"},
            "annotations": {"pod-container-running-failed.stage.kwok.x-k8s.io/exit-code": "3"},
        },
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": IMAGE}]},
    }
    crashing = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "crashes", "labels": {"crash-loop.stage.dsa-operator.test": "true"}},
        "spec": {"containers": [{"name": "c", "image": IMAGE}]},
    }
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [failing, crashing]}),
    )

    def get(name):
        return cluster.kubectl_json("get", "pod", name, "-n", namespace)

    p = cluster.wait_for(
        lambda: (lambda p: p if p["status"].get("phase") == "Failed" else None)(get("fails")),
        timeout=30,
        what="pod Failed",
    )
    term = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3

    def restarted():
        p = get("crashes")
        cs = (p["status"].get("containerStatuses") or [{}])[0]
        return p if cs.get("restartCount", 0) >= 2 else None

    p = cluster.wait_for(restarted, timeout=30, what="crash-looping pod restarted twice")
    cs = p["status"]["containerStatuses"][0]
    assert cs["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff", cs
    assert "running" not in cs["state"], cs
    assert cs["lastState"]["terminated"]["exitCode"] == 1
    assert not is_ready(p)
    assert p["status"]["phase"] == "Running"

    # Or set the status directly, as a kubelet would report an OOM kill:
    cluster.kubectl("run", "oom", "-n", namespace, f"--image={IMAGE}", "--restart=Never")
    cluster.wait_for(lambda: is_ready(get("oom")), timeout=30, what="oom pod Ready")
    cluster.set_container_terminated(namespace, "oom", exit_code=137, reason="OOMKilled", restart_count=2)
    p = get("oom")
    cs = p["status"]["containerStatuses"][0]
    assert p["status"]["phase"] == "Failed"
    assert cs["state"]["terminated"]["reason"] == "OOMKilled" and cs["restartCount"] == 2


def test_helm_install(cluster, namespace, tmp_path):
    chart = tmp_path / "mini"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: mini\nversion: 0.1.0\nkubeVersion: '>=1.34.0-0'\n"
    )
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: mini\n"
        "data:\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )
    cluster.helm("install", "mini", str(chart), "-n", namespace, "--wait", "--timeout=60s")
    cm = cluster.kubectl_json("get", "configmap", "mini", "-n", namespace)
    assert cm["data"]["kube"].startswith("v1.34.")


def test_url_webhook_on_loopback(cluster, namespace):
    """The apiserver calls a validating webhook served on https://127.0.0.1 (url: + caBundle),
    as an out-of-cluster operator process will."""
    import http.server
    import ssl
    import threading

    crt, key = cluster.mint_serving_cert("smoke-webhook")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            req = review["request"]
            labels = (req.get("object") or {}).get("metadata", {}).get("labels") or {}
            allowed = labels.get("smoke-deny") != "true"
            body = json.dumps(
                {
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "response": {
                        "uid": req["uid"],
                        "allowed": allowed,
                        "status": {"code": 403, "message": "denied by smoke webhook"},
                    },
                }
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(crt), str(key))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    name = f"smoke-{namespace}"
    try:
        cluster.apply(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": name},
                "webhooks": [
                    {
                        "name": "smoke.dsa.test",
                        "admissionReviewVersions": ["v1"],
                        "sideEffects": "None",
                        "failurePolicy": "Fail",
                        "timeoutSeconds": 5,
                        "clientConfig": {
                            "url": f"https://127.0.0.1:{srv.server_address[1]}/validate",
                            "caBundle": cluster.ca_bundle_b64,
                        },
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
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

        def denied():
            r = cluster.kubectl(
                "apply",
                "-n",
                namespace,
                "-f",
                "-",
                check=False,
                input=json.dumps(
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": "bad", "labels": {"smoke-deny": "true"}},
                    }
                ),
            )
            return r if r.returncode != 0 and "denied by smoke webhook" in r.stderr else None

        cluster.wait_for(denied, timeout=20, what="webhook denial")
        cluster.kubectl("create", "configmap", "good", "-n", namespace)
    finally:
        cluster.kubectl("delete", "validatingwebhookconfiguration", name, check=False)
        srv.shutdown()
