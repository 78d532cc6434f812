#!/usr/bin/env python3
"""`make demo`: the README's main job, end to end, on real nodes.

What it does, each step printed with the command a user would type:
1. the images, built from the repo's own Dockerfiles (`make images`), loaded into the real
   nodes' containerd (the control plane and nodes come from `make cluster-up`);
2. the operator installed by the Helm chart, in-cluster, with its admission webhook;
3. an invalid DSAModel refused by `kubectl apply` (the webhook names the field);
4. a PD DSAModel whose prefill is a 2-node PP + CP group, on the engine simulator (the cluster
   has no GPUs), applied and waited for until Ready;
5. an OpenAI chat completion sent to the endpoint Service through `kubectl port-forward`, and
   its reply printed.

Everything keeps running afterwards; `make demo-down` stops it all.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import images  # noqa: E402  (the repo root is not a package path for scripts)

STATE = ROOT / ".cluster"
KUBECONFIG = STATE / "kubeconfig"
BIN = STATE / "bin"
DEMO_DIR = STATE / "demo"
EXAMPLE = ROOT / "examples" / "simulator" / "pd-pp-cp.yaml"
INVALID = ROOT / "examples" / "invalid" / "cp-on-decode.yaml"
CHART = ROOT / "charts" / "dsa-operator"
RELEASE, OPERATOR_NS = "dsa-operator", "dsa-system"
LOCAL_PORT = 18000


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def run(tool: str, *args: str, check: bool = True, show: bool = True, stdin: str | None = None) -> str:
    """Run kubectl or helm against the demo cluster; print the command as a user would type it."""
    if show:
        print(f"\n$ {tool} {shlex.join(args)}", flush=True)
    r = subprocess.run(
        [str(BIN / tool), f"--kubeconfig={KUBECONFIG}", *args],
        capture_output=True,
        text=True,
        input=stdin,
    )
    if check and r.returncode:
        sys.exit(f"{tool} {' '.join(args)} failed ({r.returncode}):\n{r.stderr.strip()}")
    return r.stdout if r.returncode == 0 else r.stderr


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def wait(what: str, check, timeout: float, every: float = 1.0):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        ok, seen = check()
        if seen != last:
            print(f"  {what}: {seen}", flush=True)
            last = seen
        if ok:
            return seen
        time.sleep(every)
    sys.exit(f"timed out after {timeout:.0f}s waiting for {what} (last seen: {last})")


def load_images() -> dict[str, str]:
    step("Images: built from Dockerfile and images/runtime/Dockerfile, loaded into the nodes")
    built = images.ensure_images()
    refs = {name: ref for name, (ref, _archive) in built.items()}
    archives = [str(archive) for _ref, archive in built.values()]
    print(f"$ make images   # {', '.join(refs.values())}", flush=True)
    subprocess.run(
        [sys.executable, str(ROOT / "tests/cluster/harness.py"), "load-image", *archives], check=True
    )
    return refs


def install_operator(operator_ref: str) -> None:
    step("The operator, installed by its Helm chart (in-cluster, admission webhook on)")
    repo, tag = operator_ref.rsplit(":", 1)
    installed = run("helm", "status", RELEASE, "-n", OPERATOR_NS, check=False, show=False)
    verb = "upgrade" if "STATUS: deployed" in installed else "install"
    run(
        "helm", verb, RELEASE, rel(CHART), "-n", OPERATOR_NS, "--create-namespace",
        "--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
        "--set", "image.pullPolicy=Never", "--wait", "--timeout=5m",
    )  # fmt: skip
    print(run("kubectl", "-n", OPERATOR_NS, "get", "pods", "-o", "wide"))


def refuse_invalid() -> None:
    step("An invalid DSAModel is refused at admission, with the field path")
    out = run("kubectl", "apply", "-f", rel(INVALID), check=False)
    if "denied the request" not in out:
        sys.exit(f"expected the webhook to refuse {rel(INVALID)}, got:\n{out}")
    print(out.strip())


def apply_model(runtime_ref: str) -> str:
    step("A PD DSAModel: prefill is a 2-node PP + CP group; engines are the simulator (no GPUs here)")
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["runtime"]["image"] = runtime_ref
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    manifest = DEMO_DIR / EXAMPLE.name
    manifest.write_text(
        f"# {rel(EXAMPLE)} with the runtime image built here ({runtime_ref}).\n"
        + yaml.safe_dump(doc, sort_keys=False)
    )
    print(f"({rel(manifest)} is {rel(EXAMPLE)} with spec.runtime.image: {runtime_ref})")
    print(run("kubectl", "apply", "-f", rel(manifest)).strip())
    name = doc["metadata"]["name"]

    def ready():
        out = run("kubectl", "get", "dsamodel", name, "-o", "json", check=False, show=False)
        try:
            status = json.loads(out).get("status", {})
        except json.JSONDecodeError:
            return False, "(not yet)"
        phase = status.get("phase")
        return phase == "Ready", f"{phase} {status.get('readyGroups', '')}"

    wait(f"dsamodel/{name} phase", ready, timeout=600, every=2)
    print(run("kubectl", "get", "dsamodels"))
    print(run("kubectl", "get", "pods", "-l", f"serving.dsa.dev/model={name}", "-o", "wide"))
    for pod in (f"{name}-prefill-0-0", f"{name}-prefill-0-1"):  # the 2-node group's ranks met
        print(f"\n$ kubectl logs {pod} | grep -E '\"(preflight|rendezvous)\"'")
        logs = run("kubectl", "logs", pod, check=False, show=False)
        wanted = ('{"preflight"', '{"rendezvous"')
        print("\n".join(line for line in logs.splitlines() if line.startswith(wanted)))
    return name


def ask(name: str) -> None:
    step("A chat completion through the endpoint Service (router -> prefill rank 0 -> decode rank 0)")
    svc = json.loads(run("kubectl", "get", "service", name, "-o", "json", show=False))
    port = svc["spec"]["ports"][0]["port"]
    args = ["port-forward", f"service/{name}", f"{LOCAL_PORT}:{port}"]
    print(f"\n$ kubectl {shlex.join(args)} &", flush=True)
    pf = subprocess.Popen(
        [str(BIN / "kubectl"), f"--kubeconfig={KUBECONFIG}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert pf.stdout is not None
        first = pf.stdout.readline()
        if "Forwarding from" not in first:
            sys.exit(f"kubectl port-forward: {first.strip()}")
        body = {
            "model": "deepseek-v32",
            "messages": [{"role": "user", "content": "Say hello from the demo."}],
            "max_tokens": 32,
        }
        url = f"http://127.0.0.1:{LOCAL_PORT}/v1/chat/completions"
        print(f"$ curl -s {url} -H 'Content-Type: application/json' -d '{json.dumps(body)}'", flush=True)
        req = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        for attempt in range(30):  # the router may still be registering the workers
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    reply = json.loads(resp.read())
                break
            except OSError as e:
                if attempt == 29:
                    sys.exit(f"no answer from {url}: {e}")
                time.sleep(1)
        print(json.dumps(reply, indent=2))
        print(f"\nReply: {reply['choices'][0]['message']['content']!r}")
    finally:
        pf.terminate()
        pf.wait(timeout=10)


def up() -> None:
    if not KUBECONFIG.exists():
        sys.exit("no cluster: run `make demo` (or `make cluster-up REAL_NODES=4 CLUSTER_NODES=0`) first")
    refs = load_images()
    install_operator(refs["operator"])
    refuse_invalid()
    name = apply_model(refs["runtime"])
    ask(name)
    k = f"{rel(BIN / 'kubectl')} --kubeconfig {rel(KUBECONFIG)}"
    print(
        f"\nEverything keeps running. Try it yourself:\n"
        f"  {k} get dsamodels,pods -o wide\n"
        f"  {k} port-forward service/{name} {LOCAL_PORT}:8000 &\n"
        f"  curl -s http://127.0.0.1:{LOCAL_PORT}/v1/chat/completions -H 'Content-Type: application/json' "
        f"""-d '{{"model": "deepseek-v32", "messages": [{{"role": "user", "content": "hi"}}]}}'\n"""
        f"Stop everything with: make demo-down"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["up"], nargs="?", default="up")
    p.parse_args()
    up()


if __name__ == "__main__":
    main()
