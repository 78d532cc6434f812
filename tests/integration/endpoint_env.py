"""Helpers for the endpoint tests: the runtime's engine simulator at the pods' addresses, and the
real router.

Why this works without containers: kwok gives every Running pod an IP from the cluster's pod
CIDR, which the harness sets to loopback (127.128.0.0/16). On Linux all of 127.0.0.0/8 is
local, so a simulator bound to a pod's IP on this machine *is* that pod's address, and the real
router, discovering pods through the API server, dials exactly what it would in a cluster. No
traffic leaves loopback.

- `SimulatorFleet` watches a model's engine pods and keeps one `EngineSimulator`
  (dsa_runtime.simulator) per pod that has an IP, configured from the pod's planned SGLang
  command line (read from the plan ConfigMap the pod mounts), bound to the pod's IP instead of
  the planned 0.0.0.0; it stops a simulator when its pod goes.
- `RouterProc` runs the router as the operator's Deployment would: the planned argv from the
  router's plan ConfigMap, run by `dsa-runtime route`, with the router ServiceAccount's token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

from dsa_operator import labels
from dsa_runtime.simulator import EngineSimulator, config_from_argv
from tests.cluster.harness import _free_ports
from tests.processes import stop_group
from tests.sglang_compat import envs

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# sglang-router's Python wrapper imports these at start (launch_router -> mini_lb), although the
# Rust router serves the traffic; envs installs the router itself with --no-deps. Pinned to
# versions that need nothing beyond what the project's venv has (aiohttp, pydantic).
ROUTER_RUNTIME_DEPS = [
    "setproctitle==1.3.8",
    "orjson==3.13.0",
    "uvicorn==0.34.0",
    "fastapi==0.115.12",
    "starlette==0.46.2",
]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def router_pythonpath() -> list[Path]:
    """PYTHONPATH dirs with which `python3 -m sglang_router.launch_router` starts."""
    return [*envs.ensure("sglang_router"), envs._install("router-runtime-deps", ROUTER_RUNTIME_DEPS)]


def http(
    method: str, url: str, body: dict | None = None, timeout: float = 10
) -> tuple[int, dict[str, Any] | str]:
    """One request without any proxy; (status, JSON or text). Connection errors raise OSError."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    text = raw.decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def healthy(url: str) -> bool:
    """Whether `url`/health answers 200 (False while nothing listens there yet)."""
    with contextlib.suppress(OSError):
        return http("GET", f"{url}/health", timeout=2)[0] == 200
    return False


def api_client(kubeconfig: Path) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(k8s_config.new_client_from_config(str(kubeconfig)))


# --------------------------------------------------------------------------- simulators
class SimulatorFleet:
    """One engine simulator per engine pod of `model` in `ns`, following the pods through a watch."""

    def __init__(self, kubeconfig: Path, ns: str, model: str, delay_s: float = 0.0):
        self.ns, self.model, self.delay_s = ns, model, delay_s
        self.api = api_client(kubeconfig)
        self.selector = f"{labels.MODEL}={model},{labels.COMPONENT}=engine"
        self.engines: dict[str, EngineSimulator] = {}  # by pod UID
        self.retired: list[EngineSimulator] = []  # stopped ones, still readable by tests
        self._plans: dict[str, dict[str, Any]] = {}  # plan ConfigMap name -> plan (immutable)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fleet-{model}", daemon=True)

    def __enter__(self) -> SimulatorFleet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            for e in self.engines.values():
                e.stop()
                self.retired.append(e)
            self.engines.clear()

    def by_pod(self, name: str) -> EngineSimulator | None:
        with self._lock:
            return next((e for e in self.engines.values() if e.pod == name), None)

    def all_engines(self) -> list[EngineSimulator]:
        """Live and stopped simulators (a restarted pod's old simulator keeps what it saw)."""
        with self._lock:
            return [*self.retired, *self.engines.values()]

    def live(self) -> list[EngineSimulator]:
        with self._lock:
            return list(self.engines.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                listed = self.api.list_namespaced_pod(self.ns, label_selector=self.selector)
                self._reconcile(listed.items)
                w = k8s_watch.Watch()
                for ev in w.stream(
                    self.api.list_namespaced_pod,
                    self.ns,
                    label_selector=self.selector,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=5,
                ):
                    if self._stop.is_set():
                        w.stop()
                        break
                    self._event(ev["type"], ev["object"])
            except Exception as e:  # a broken watch: list again
                if not self._stop.is_set():
                    print(f"[fleet] watch restarted: {e}", file=sys.stderr)
                    time.sleep(0.2)

    def _reconcile(self, pods: list[Any]) -> None:
        uids = {p.metadata.uid for p in pods}
        with self._lock:
            for uid in [u for u in self.engines if u not in uids]:
                self._retire(uid)
        for p in pods:
            self._event("MODIFIED", p)

    def _planned_argv(self, pod: Any, role: str, group: int, rank: int) -> list[str]:
        """This pod's argv in the plan it mounts, as `dsa-runtime serve` would read it."""
        cm = next(v.config_map.name for v in pod.spec.volumes if v.name == "plan")
        if cm not in self._plans:
            data = self.api.read_namespaced_config_map(cm, self.ns).data["plan.json"]
            self._plans[cm] = json.loads(data)
        return next(
            p["argv"]
            for p in self._plans[cm]["pods"]
            if (p["role"], p["group"], p["rank"]) == (role, group, rank)
        )

    def _event(self, kind: str, pod: Any) -> None:
        uid = pod.metadata.uid
        gone = kind == "DELETED" or pod.metadata.deletion_timestamp is not None
        ip = pod.status.pod_ip if pod.status else None
        if gone or not ip or pod.status.phase != "Running":
            if gone:
                with self._lock:
                    if uid in self.engines:
                        self._retire(uid)
            return
        with self._lock:
            if uid in self.engines:
                return
        lbl = pod.metadata.labels or {}
        role, group, rank = lbl.get(labels.ROLE, "?"), int(lbl[labels.GROUP]), int(lbl[labels.POD_INDEX])
        env = {"DSA_ROLE": role, "DSA_GROUP": str(group), "POD_NAME": pod.metadata.name}
        config = config_from_argv(self._planned_argv(pod, role, group, rank), env)
        config = dataclasses.replace(config, host=ip, delay_s=self.delay_s)  # the pod's IP, not 0.0.0.0
        with self._lock:
            if uid in self.engines:
                return
            for other in [u for u, e in self.engines.items() if e.host == ip]:
                self._retire(other)  # an IP handed on before we saw the old pod go
            try:
                self.engines[uid] = EngineSimulator(config).start()
            except OSError as e:
                print(f"[fleet] cannot serve {pod.metadata.name} at {ip}:{config.port}: {e}", file=sys.stderr)

    def _retire(self, uid: str) -> None:
        e = self.engines.pop(uid)
        e.stop()
        self.retired.append(e)


# --------------------------------------------------------------------------- the router
def router_plan(cluster: Any, ns: str, model: str) -> dict[str, Any]:
    """The plan document the operator's router Deployment mounts (from its ConfigMap)."""
    dep = cluster.kubectl_json("get", "deployment", f"{model}-router", "-n", ns)
    vols = dep["spec"]["template"]["spec"]["volumes"]
    cm = next(v["configMap"]["name"] for v in vols if v["name"] == "plan")
    return json.loads(cluster.kubectl_json("get", "configmap", cm, "-n", ns)["data"]["plan.json"])


def _set_flag(argv: list[str], flag: str, value: str) -> list[str]:
    i = argv.index(flag)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


class RouterProc:
    """The real sglang-router, started as the router Deployment's container starts it.

    The only changes to the planned argv: `--host 0.0.0.0` becomes 127.0.0.1 and the ports
    (8000 and 29000 in the plan) become free ones, so that tests running side by side on one
    machine do not collide and nothing listens beyond loopback. Everything else, discovery
    flags and selectors included, is the operator's.
    """

    def __init__(self, cluster: Any, ns: str, model: str, extra: tuple[str, ...] = ()):
        self.cluster, self.ns, self.model, self.extra = cluster, ns, model, extra
        self.port, self.metrics_port = _free_ports(2)
        self.host = "127.0.0.1"
        self.log_file = cluster.workdir / f"router-{ns}-{model}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.planned_argv: list[str] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> RouterProc:
        doc = router_plan(self.cluster, self.ns, self.model)
        entry = next(p for p in doc["pods"] if p["role"] == "router")
        self.planned_argv = list(entry["argv"])
        argv = _set_flag(self.planned_argv, "--host", self.host)
        argv = _set_flag(argv, "--port", str(self.port))
        argv = _set_flag(argv, "--prometheus-port", str(self.metrics_port))
        entry["argv"] = [*argv, *self.extra]
        plan_file = self.cluster.workdir / f"router-{self.ns}-{self.model}-plan.json"
        plan_file.write_text(json.dumps(doc))
        kubeconfig = self.cluster.sa_kubeconfig(self.ns, f"{self.model}-router", create=False)
        env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
        env.update(
            DSA_PLAN_FILE=str(plan_file),
            DSA_ROLE="router",
            DSA_GROUP="0",
            DSA_RANK="0",
            DSA_TERMINATION_LOG=str(self.cluster.workdir / f"router-{self.ns}-{self.model}.termination"),
            KUBECONFIG=str(kubeconfig),
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # `python3` = the venv's 3.11
            PYTHONPATH=os.pathsep.join(map(str, router_pythonpath())),
            NO_PROXY="*",
            RUST_LOG=env.get("RUST_LOG", "info"),
        )
        self._out = open(self.log_file, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "dsa-runtime"), "route"],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.cluster.workdir,
            start_new_session=True,
        )
        return self

    def router_pid(self) -> int | None:
        """PID of the router process itself (the child `dsa-runtime route` supervises)."""
        if not self.proc:
            return None
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        return int(kids[0]) if kids else None

    def wait_up(self, timeout: float = 60) -> None:
        def up() -> bool:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"router exited {self.proc.returncode}:\n{self.logs()[-3000:]}")
            with contextlib.suppress(OSError):
                return http("GET", f"{self.url}/liveness", timeout=2)[0] == 200
            return False

        wait(up, timeout, "the router's /liveness", self)

    def workers(self) -> list[dict[str, Any]]:
        status, body = http("GET", f"{self.url}/workers", timeout=5)
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"/workers answered {status}: {body}")
        return list(body.get("workers", []))

    def worker_urls(self, kind: str | None = None) -> set[str]:
        return {w["url"] for w in self.workers() if kind is None or w.get("worker_type") == kind}

    def ready(self) -> bool:
        with contextlib.suppress(OSError):
            return http("GET", f"{self.url}/readiness", timeout=2)[0] == 200
        return False

    def logs(self) -> str:
        """The router's output without the colour codes its tracing logger writes."""
        raw = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return ANSI.sub("", raw)

    def events(self) -> str:
        """The log without the per-request lines (tests poll /workers many times a second)."""
        return "\n".join(line for line in self.logs().splitlines() if "http_request{" not in line)

    def added(self, pod: str) -> int:
        """How often discovery registered `pod` (its log line: `Adding pod: NAME | type: ...`)."""
        return len(re.findall(rf"Adding pod: {re.escape(pod)} \|", self.logs()))

    def removed(self, pod: str) -> int:
        return len(re.findall(rf"Removing pod: {re.escape(pod)} \|", self.logs()))

    def worker_ids(self) -> dict[str, str]:
        """URL -> the router's worker id (a new id means the worker was registered anew)."""
        return {w["url"]: w["id"] for w in self.workers()}

    def stop(self) -> None:
        stop_group(self.proc)
        if self.proc:
            self._out.close()


def wait(
    pred: Any,
    timeout: float,
    what: str,
    router: RouterProc | None = None,
    interval: float = 0.05,
    show: Any = None,
):
    """Poll `pred` until truthy; on timeout say what, what `show()` sees then, and the router's
    log tail."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    seen = f"\nseen: {show()}" if show else ""
    tail = f"\nrouter log (requests left out):\n{router.events()[-6000:]}" if router else ""
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}{seen}{tail}")


def engine_pods(cluster: Any, ns: str, model: str, **extra: str) -> list[dict[str, Any]]:
    sel = ",".join(f"{k}={v}" for k, v in {labels.MODEL: model, labels.COMPONENT: "engine", **extra}.items())
    return cluster.kubectl_json("get", "pods", "-n", ns, "-l", sel)["items"]


def pod_url(pod: dict[str, Any]) -> str:
    port = next(
        p["containerPort"]
        for c in pod["spec"]["containers"]
        for p in c.get("ports", [])
        if p["name"] == "http"
    )
    return f"http://{pod['status']['podIP']}:{port}"
