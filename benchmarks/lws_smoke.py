"""Smoke run of the test cluster's LeaderWorkerSet controller (Cluster(lws=True)): not a test.

Starts the control plane with 4 kwok GPU nodes and LWS (built from its module: `make lws-bin`),
then one LeaderWorkerSet (2 groups of 2 pods, 8 GPUs each) through its whole life: Available with
4 pods Running and Ready, a pod-template change rolled out, deletion. Along the way it checks that
LWS's pod webhook labelled the group pods, that a pod without the LWS label is never sent to it,
and that its requests carry its own user. Prints the time of each phase; exits non-zero on failure.

    make lws-bin && .venv/bin/python benchmarks/lws_smoke.py
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster import harness  # noqa: E402

NS = "default"
NAME = "smoke"
NAME_LABEL = harness.LWS_NAME_LABEL
REVISION = "leaderworkerset.sigs.k8s.io/template-revision-hash"
IMAGE = "registry.k8s.io/pause:3.10.1"  # never pulled: kwok nodes have no container runtime
METRICS_SA = "lws-smoke-metrics"


def lws_manifest() -> dict:
    container = {
        "name": "worker",
        "image": IMAGE,
        "resources": {"requests": {"nvidia.com/gpu": "8"}, "limits": {"nvidia.com/gpu": "8"}},
    }
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "replicas": 2,
            "leaderWorkerTemplate": {
                "size": 2,
                "workerTemplate": {
                    "spec": {
                        "containers": [container],
                        "tolerations": [
                            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                        ],
                    }
                },
            },
        },
    }


def running_ready(pod: dict) -> bool:
    return (
        pod["status"].get("phase") == "Running"
        and not pod["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))
    )


def condition(lws: dict, kind: str) -> str | None:
    for c in lws.get("status", {}).get("conditions", []):
        if c["type"] == kind:
            return c["status"]
    return None


class Smoke:
    def __init__(self, c: harness.Cluster):
        self.c = c
        self.times: dict[str, float] = {}

    def pods(self) -> list[dict]:
        return self.c.kubectl_json("get", "pods", "-n", NS, "-l", f"{NAME_LABEL}={NAME}")["items"]

    def lws(self) -> dict:
        return self.c.kubectl_json("get", "leaderworkerset", NAME, "-n", NS)

    def phase(self, name: str, pred, timeout: float = 60) -> None:
        t0 = time.monotonic()
        self.c.wait_for(pred, timeout=timeout, interval=0.2, what=name)
        self.times[name] = time.monotonic() - t0
        print(f"[smoke] {name}: {self.times[name]:.1f} s", flush=True)

    def settled(self, revision_other_than: str | None = None) -> bool:
        """Available True, no update in progress, 2 groups ready and updated, and exactly the 4
        pods of the current revision Running and Ready (none terminating)."""
        lws = self.lws()
        st = lws.get("status", {})
        if not (
            condition(lws, "Available") == "True"
            and condition(lws, "UpdateInProgress") != "True"
            and st.get("readyReplicas") == 2
            and st.get("updatedReplicas") == 2
        ):
            return False
        pods = self.pods()
        revs = {p["metadata"]["labels"].get(REVISION) for p in pods}
        return (
            len(pods) == 4
            and all(running_ready(p) for p in pods)
            and len(revs) == 1
            and (revision_other_than is None or revision_other_than not in revs)
        )

    # ---- what the webhooks and the controller's identity show
    def metrics_token(self) -> str:
        """A token allowed to GET /metrics: LWS's metrics server checks it with a TokenReview and
        a SubjectAccessReview (controller-runtime's WithAuthenticationAndAuthorization)."""
        self.c.kubectl("create", "serviceaccount", METRICS_SA, "-n", NS)
        self.c.apply(
            [
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "metadata": {"name": METRICS_SA},
                    "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}],
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": METRICS_SA},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": METRICS_SA,
                    },
                    "subjects": [{"kind": "ServiceAccount", "name": METRICS_SA, "namespace": NS}],
                },
            ]
        )
        return self.c.create_token(NS, METRICS_SA)

    def webhook_calls(self, token: str) -> dict[str, float]:
        """controller_runtime_webhook_requests_total by webhook path, from LWS's metrics."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # its metrics certificate is self-signed, made at start
        req = urllib.request.Request(
            f"https://127.0.0.1:{self.c.lws_metrics_port}/metrics",
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("controller_runtime_webhook_requests_total{"):
                labels, value = line.rsplit(" ", 1)
                path = labels.split('webhook="', 1)[1].split('"', 1)[0]
                out[path] = out.get(path, 0.0) + float(value)
        return out

    def run(self) -> None:
        c = self.c
        pid = c.process_pid("lws")
        print(f"[smoke] cluster up in {c.startup_seconds:.1f} s; lws PID {pid}", flush=True)
        hooks = c.kubectl_json("get", "mutatingwebhookconfiguration", "lws-mutating-webhook-configuration")
        for h in hooks["webhooks"]:
            sel = h.get("objectSelector")
            print(f"[smoke] webhook {h['name']}: {h['clientConfig']['url']} objectSelector={sel}")

        token = self.metrics_token()
        before = self.webhook_calls(token)
        plain = {"name": "c", "image": IMAGE}
        c.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "plain", "namespace": NS},
                "spec": {"containers": [plain]},
            }
        )
        after = self.webhook_calls(token)
        pod_calls = {k: after.get(k, 0) - before.get(k, 0) for k in ("/mutate--v1-pod", "/validate--v1-pod")}
        assert not any(pod_calls.values()), f"a pod without {NAME_LABEL} went to LWS: {pod_calls}"
        print(f"[smoke] a pod without the LWS label: not sent to LWS ({pod_calls})", flush=True)
        c.kubectl("delete", "pod", "plain", "-n", NS, "--wait=false")

        t_start = time.time()
        c.apply(lws_manifest())
        self.phase("created -> Available, 4 pods Running+Ready", self.settled)
        pods = self.pods()
        leaders = [
            p for p in pods if p["metadata"]["labels"].get("leaderworkerset.sigs.k8s.io/worker-index") == "0"
        ]
        assert len(leaders) == 2 and all(
            "leaderworkerset.sigs.k8s.io/group-index" in p["metadata"]["labels"] for p in leaders
        ), "leader pods lack the group-index label that LWS's pod webhook sets"
        env = {e["name"] for e in pods[0]["spec"]["containers"][0].get("env", [])}
        assert "LWS_LEADER_ADDRESS" in env, f"no LWS_LEADER_ADDRESS from the pod webhook: {env}"
        print(
            "[smoke] pods "
            + ", ".join(f"{p['metadata']['name']}@{p['spec'].get('nodeName')}" for p in pods)
            + f"; webhook env {sorted(env)}",
            flush=True,
        )
        rev0 = pods[0]["metadata"]["labels"][REVISION]
        lws_calls = {k: v - after.get(k, 0) for k, v in self.webhook_calls(token).items()}
        assert lws_calls.get("/mutate--v1-pod", 0) >= 4, (
            f"LWS's pods did not go to its pod webhook: {lws_calls}"
        )
        print(f"[smoke] webhook calls for the LeaderWorkerSet and its pods: {lws_calls}", flush=True)

        patch = {
            "spec": {
                "leaderWorkerTemplate": {"workerTemplate": {"metadata": {"annotations": {"smoke/rev": "2"}}}}
            }
        }
        c.kubectl("patch", "leaderworkerset", NAME, "-n", NS, "--type=merge", "-p", json.dumps(patch))
        seen_update = []

        def rolled() -> bool:
            if condition(self.lws(), "UpdateInProgress") == "True":
                seen_update.append(True)
            return self.settled(revision_other_than=rev0)

        self.phase("template patched -> rolled out (new revision, Available, 4 Ready)", rolled, timeout=120)
        print(f"[smoke] UpdateInProgress=True observed while rolling: {bool(seen_update)}", flush=True)

        c.kubectl("delete", "leaderworkerset", NAME, "-n", NS, "--wait=false")
        self.phase("deleted -> pods and StatefulSets gone", self.gone)
        # The first deletion waits on kube-controller-manager's garbage collector: it learns a new
        # CRD's REST mapping only at its discovery resync (every 30 s), and until then cannot
        # delete what the LeaderWorkerSet owns (a real cluster right after installing LWS does the
        # same). Once more, now that it knows the CRD: what a benchmark sees later on.
        c.apply(lws_manifest())
        self.phase("re-created -> Available, 4 pods Running+Ready", self.settled)
        c.kubectl("delete", "leaderworkerset", NAME, "-n", NS, "--wait=false")
        self.phase("deleted again -> pods and StatefulSets gone", self.gone)

        writes = c.audit_writes(c.lws_user)
        agents = {e.get("userAgent", "").split(" ")[0] for e in writes}
        by: dict[str, int] = {}
        for e in writes:
            ref = e.get("objectRef", {})
            key = f"{e['verb']} {ref.get('resource')}" + (
                f"/{ref['subresource']}" if ref.get("subresource") else ""
            )
            by[key] = by.get(key, 0) + 1
        assert writes, f"no write requests by {c.lws_user} in the audit log"
        print(
            f"[smoke] {len(writes)} writes by {c.lws_user} (user agents {sorted(agents)}): {by}", flush=True
        )
        st = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        rss = next(ln.split(":", 1)[1].strip() for ln in status if ln.startswith("VmHWM"))
        print(
            f"[smoke] lws process: {cpu:.2f} s CPU, peak RSS {rss}; "
            f"{time.time() - t_start:.1f} s from create to gone",
            flush=True,
        )

    def statefulsets(self) -> list[dict]:
        return self.c.kubectl_json("get", "statefulsets", "-n", NS, "-l", f"{NAME_LABEL}={NAME}")["items"]

    def gone(self) -> bool:
        return not self.pods() and not self.statefulsets()


def main() -> int:
    t0 = time.monotonic()
    with harness.running(nodes=4, cpu_nodes=0, lws=True) as c:
        Smoke(c).run()
        t_stop = time.monotonic()
    print(
        f"[smoke] cluster stopped in {time.monotonic() - t_stop:.1f} s; total {time.monotonic() - t0:.1f} s"
    )
    print("[smoke] OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
