"""Endpoint figures: how fast the real router picks up a Ready pod, and its throughput.

    .venv/bin/python tests/bench_endpoint.py [--requests 2000] [--concurrency 16]

Starts its own control plane (kwok, loopback pod IPs) and operator (a local process: kwok nodes run
no containers, see tests/integration/operator_proc.py), applies examples/12-pd.yaml,
puts the runtime's engine simulator (dsa_runtime.simulator) at every pod's IP and runs the real router as
the operator's Deployment would (tests/integration/endpoint_env.py). Then it prints:

- ready-to-routed: from the moment the API server shows a new decode group's rank-0 pod Ready
  (decode scaled 1 -> 2 -> 3) to the moment the router lists it as a healthy worker, in ms;
- requests per second of non-streaming chat completions through the router to the simulators
  (a bounded count, each client on its own keep-alive connection; loopback only).

The simulators answer at once (a decode one after one look-up at its prefill's bootstrap port),
so the throughput is the router's (plus this Python client's and the simulators' own cost on the
same cores), not an engine's. `run()` is what the test
imports, with a cluster and operator it already has and a tiny load.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # appended, so the stdlib `operator` stays first

from tests.integration.endpoint_env import RouterProc, SimulatorFleet, api_client, pod_url, wait  # noqa: E402
from tests.integration.operator_proc import Operator, install_crd, wait_phase  # noqa: E402

MODEL = "dsv32-exp-pd"
CHAT = json.dumps({"model": "simulated", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})


def _ready_seen(cluster: Any, ns: str, pod: str) -> float:
    """Poll the API (every 10 ms) until `pod` is Ready; the monotonic time it was first seen so."""
    api = api_client(cluster.kubeconfig)

    def ready() -> float | None:
        try:
            p = api.read_namespaced_pod(pod, ns)
        except Exception:
            return None
        conds = p.status.conditions or [] if p.status else []
        ok = p.status and p.status.pod_ip and any(c.type == "Ready" and c.status == "True" for c in conds)
        return time.monotonic() if ok else None

    return wait(ready, 60, f"{pod} Ready", interval=0.01)


def ready_to_routed_ms(cluster: Any, ns: str, router: RouterProc, replicas: int) -> float:
    """Scale decode to `replicas`; ms from the new leader pod Ready to the router's healthy worker."""
    pod = f"{MODEL}-decode-{replicas - 1}-0"
    patch = json.dumps({"spec": {"decode": {"replicas": replicas}}})
    cluster.kubectl("patch", "dsamodel", MODEL, "-n", ns, "--type=merge", "-p", patch)
    t_ready = _ready_seen(cluster, ns, pod)
    url = pod_url(cluster.kubectl_json("get", "pod", pod, "-n", ns))

    def routed() -> float | None:
        try:
            ws = router.workers()
        except (OSError, RuntimeError):
            return None
        return time.monotonic() if any(w["url"] == url and w.get("is_healthy") for w in ws) else None

    return (wait(routed, 60, f"{pod} in the router", router, interval=0.01) - t_ready) * 1000


def throughput(router: RouterProc, requests: int, concurrency: int) -> tuple[float, int, float]:
    """(requests/s, failures, worst latency s) for `requests` chats from `concurrency` clients."""
    left = [requests]
    lock = threading.Lock()
    failures = [0]
    worst = [0.0]

    def client() -> None:
        conn = http.client.HTTPConnection(router.host, router.port, timeout=10)
        while True:
            with lock:
                if left[0] == 0:
                    break
                left[0] -= 1
            t0 = time.monotonic()
            try:
                conn.request("POST", "/v1/chat/completions", CHAT, {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                bad = r.status != 200
            except OSError:
                bad = True
                conn.close()
                conn = http.client.HTTPConnection(router.host, router.port, timeout=10)
            dt = time.monotonic() - t0
            with lock:
                failures[0] += bad
                worst[0] = max(worst[0], dt)
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return requests / (time.monotonic() - t0), failures[0], worst[0]


def run(cluster: Any, ns: str, requests: int = 2000, concurrency: int = 16) -> dict[str, float]:
    """The figures for one namespace of `cluster` (an operator must be running); also printed."""
    cluster.kubectl("apply", "-n", ns, "-f", str(ROOT / "examples" / "12-pd.yaml"))
    wait_phase(cluster, MODEL, ns, "Ready", timeout=90)
    with SimulatorFleet(cluster.kubeconfig, ns, MODEL) as fleet:
        router = RouterProc(cluster, ns, MODEL).start()
        try:
            t0 = time.monotonic()
            router.wait_up()
            wait(router.ready, 60, "router /readiness", router, interval=0.01)
            start_ms = (time.monotonic() - t0) * 1000
            samples = [ready_to_routed_ms(cluster, ns, router, n) for n in (2, 3)]
            wait(lambda: len(router.worker_urls("decode")) == 3, 30, "3 decode workers", router)
            assert not [e for e in fleet.live() if e.rank > 0], "12-pd has single-node groups"
            throughput(router, min(50, requests), concurrency)  # warm-up: connections, pools
            rps, failures, worst = throughput(router, requests, concurrency)
        finally:
            router.stop()
    figures = {
        "router_start_to_ready_ms": start_ms,
        "ready_to_routed_ms_max": max(samples),
        "rps": rps,
        "failures": failures,
        "worst_latency_ms": worst * 1000,
    }
    print(f"router start to /readiness 200 (1 prefill + 1 decode worker): {start_ms:.0f} ms")
    print("last pod Ready to router serving it: " + ", ".join(f"{s:.0f} ms" for s in samples))
    print(
        f"requests per second through the router: {rps:.0f} ({requests} chat completions, "
        f"{concurrency} concurrent clients, {failures} failed, worst {worst * 1000:.0f} ms)"
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    from tests.cluster import harness

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args(argv)
    with harness.running(nodes=4, cpu_nodes=1, verbose=False) as cluster:
        install_crd(cluster)
        op = Operator(cluster, cluster.mint_user("dsa-operator", groups=["system:masters"]), webhook=False)
        op.start()
        try:
            ns = f"bench-{uuid.uuid4().hex[:6]}"
            cluster.kubectl("create", "namespace", ns)
            run(cluster, ns, args.requests, args.concurrency)
        finally:
            op.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
