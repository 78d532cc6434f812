#!/usr/bin/env python3
"""`make demo`: a local control plane, the CRD, the operator, and a PD deployment, until Ready.

Leaves everything running; `make demo-down` stops the operator and the cluster.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".cluster"
KUBECONFIG = STATE / "kubeconfig"
KUBECTL = STATE / "bin" / "kubectl"
PID = STATE / "operator.pid"
LOG = STATE / "operator.log"
EXAMPLE = ROOT / "examples" / "12-pd.yaml"
MODEL = "dsv32-exp-pd"


def kubectl(*args: str, check: bool = True) -> str:
    r = subprocess.run([str(KUBECTL), f"--kubeconfig={KUBECONFIG}", *args], capture_output=True, text=True)
    if check and r.returncode:
        sys.exit(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def start_operator() -> None:
    if PID.exists():
        try:
            os.kill(int(PID.read_text()), 0)
            print(f"operator already running (pid {PID.read_text().strip()})")
            return
        except (OSError, ValueError):
            PID.unlink()
    env = dict(os.environ, KUBECONFIG=str(KUBECONFIG), PYTHONUNBUFFERED="1")
    with open(LOG, "ab") as log:
        p = subprocess.Popen(
            [sys.executable, "-m", "dsa_operator", "run", "--liveness=http://127.0.0.1:18080/healthz"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
    PID.write_text(str(p.pid))
    print(f"operator started (pid {p.pid}, log {LOG.relative_to(ROOT)})")


def wait_ready(timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    phase = None
    while time.monotonic() < end:
        out = kubectl("get", "dsamodel", MODEL, "-o", "jsonpath={.status.phase}", check=False)
        if out != phase:
            phase = out
            print(f"  phase: {phase or '(none yet)'}")
        if phase == "Ready":
            return
        time.sleep(0.5)
    sys.exit(f"{MODEL} did not become Ready in {timeout:.0f}s; see {LOG}")


def show() -> None:
    print("\n$ kubectl get dsamodels")
    print(kubectl("get", "dsamodels"))
    print(f"$ kubectl get statefulsets,deployments,services,configmaps,pods -l serving.dsa.dev/model={MODEL}")
    print(
        kubectl(
            "get", "statefulsets,deployments,services,configmaps,pods", "-l", f"serving.dsa.dev/model={MODEL}"
        )
    )
    print("The command each pod runs (from its plan ConfigMap):")
    pods = json.loads(kubectl("get", "pods", "-l", f"serving.dsa.dev/model={MODEL}", "-o", "json"))["items"]
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        cm = next(v["configMap"]["name"] for v in pod["spec"]["volumes"] if v["name"] == "plan")
        doc = json.loads(json.loads(kubectl("get", "configmap", cm, "-o", "json"))["data"]["plan.json"])
        lbl = pod["metadata"]["labels"]
        rank = int(lbl.get("apps.kubernetes.io/pod-index", "0"))
        role = lbl.get("serving.dsa.dev/role", "router")
        entry = next(e for e in doc["pods"] if e["role"] == role and e["rank"] == rank)
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in entry["env"].items())
        print(f"\n  {pod['metadata']['name']} ({role}, rank {rank}) on {pod['spec'].get('nodeName')}:")
        print(f"    {env + ' ' if env else ''}{shlex.join(entry['argv'])}")


def up() -> None:
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/dsamodels.serving.dsa.dev", "--timeout=30s")
    start_operator()
    print(f"$ kubectl apply -f {EXAMPLE.relative_to(ROOT)}")
    print(kubectl("apply", "-f", str(EXAMPLE)).strip())
    wait_ready()
    show()
    print(
        f"\nThe cluster and the operator keep running. kubectl: {KUBECTL.relative_to(ROOT)} "
        f"--kubeconfig {KUBECONFIG.relative_to(ROOT)}\nStop both with: make demo-down"
    )


def down() -> None:
    if PID.exists():
        try:
            os.killpg(int(PID.read_text()), signal.SIGTERM)
            print("operator stopped")
        except (OSError, ValueError):
            pass
        PID.unlink()


if __name__ == "__main__":
    {"up": up, "down": down}[sys.argv[1] if len(sys.argv) > 1 else "up"]()
