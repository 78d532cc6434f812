"""Scale benchmark: DSAModels against LeaderWorkerSets managing the same groups, in one run.

Not a test: it prints figures, and with --write-docs records them in docs/benchmarks.md. It runs
the project's own control plane (tests/cluster) with kwok nodes of each accelerator the examples
name (H200, B200, H20), the controller-manager's and scheduler's client QPS raised to what the
Kubernetes scale jobs run, and for each step N:

- ours: the operator (a local process, as in the integration tests, with its webhook) manages N
  DSAModels of a realistic mix: a third unified one-node models (H200 and B200 in turn), a third
  PP 2 + CP two-node groups (H20), a third PD (a two-node PP + CP prefill group, a decode group
  and a router on the CPU nodes);
- LWS: the LeaderWorkerSet controller (built from its module, tests/cluster) manages the same
  groups as LeaderWorkerSets: the pod templates our renderer makes, one LeaderWorkerSet per role
  (size = nodes per group), and the router as a plain Deployment.

Per controller and step: the models created all at once, then time to all Ready, per-model
create-to-Ready P50/P99, the lag from the last pod Ready to the controller's status saying Ready
(P99), a quiet minute's writes, one spec change rolled across every model, deletion of all; then
the same models created at a fixed rate. Requests by verb come from the API server's audit log
(its request metrics carry no user), CPU and peak RSS from /proc of the controller's process.

    make bench-scale                          # 50, 100, 250, 500; both controllers
    python -m benchmarks.scale --steps 50 --controllers ours
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import copy
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dsa_operator import labels  # noqa: E402
from dsa_operator.api import parse_spec  # noqa: E402
from dsa_operator.planner import plan as make_plan  # noqa: E402
from dsa_operator.render import render  # noqa: E402
from tests.cluster.harness import WRITE_VERBS, Cluster, install_signal_handlers  # noqa: E402
from tests.integration.operator_proc import Operator, install_crd  # noqa: E402

OPERATOR_USER = "dsa-operator"
LWS_USER = "lws-controller"
LWS_API = "leaderworkerset.x-k8s.io/v1"
LWS_NAME = "leaderworkerset.sigs.k8s.io/name"
# The pod-change probe: models probed, deletes a second, how long to wait for status and repair.
PROBES = 50
PROBE_RATE = 2.0
PROBE_TIMEOUT = 60.0
# Client QPS/burst of the controller-manager and scheduler: what the Kubernetes scale jobs run
# (test-infra's gce-scale jobs: CONTROLLER_MANAGER_TEST_ARGS=--kube-api-qps=100
# --kube-api-burst=100, SCHEDULER_TEST_ARGS=--kube-api-qps=100); the defaults (20/30 and 50/100)
# would make the controller-manager the bottleneck of every figure.
CONTROL_PLANE_QPS = 100
PRODUCTS = {"h200": "NVIDIA-H200", "b200": "NVIDIA-B200", "h20": "NVIDIA-H20"}
EXAMPLES = {
    "unified-h200": "03-pure-tp.yaml",
    "unified-b200": "11-nvfp4-blackwell.yaml",
    "pp-cp": "17-pp-cp.yaml",
    "pd": "19-pd-pp-cp.yaml",
}
BENCH_DOC = ROOT / "docs" / "benchmarks.md"
Obj = dict[str, Any]


def kind_of(i: int) -> str:
    """The mix: unified, PP + CP, PD in turn; the unified ones alternate H200 and B200."""
    return ("unified-h200" if (i // 3) % 2 == 0 else "unified-b200", "pp-cp", "pd")[i % 3]


def model_manifest(i: int, ns: str, revision: str | None = None) -> Obj:
    m = yaml.safe_load((ROOT / "examples" / EXAMPLES[kind_of(i)]).read_text())
    m["metadata"] = {"name": f"m{i:04d}", "namespace": ns}
    if revision:
        m["spec"].setdefault("runtime", {})["env"] = {"BENCH_REVISION": revision}
    return m


def pods_per_product(n: int) -> collections.Counter:
    out: collections.Counter = collections.Counter()
    for i in range(n):
        m = model_manifest(i, "x")
        p = make_plan(m)
        out[m["spec"]["hardware"]["accelerator"]] += sum(r.replicas * r.nodes_per_group for r in p.roles)
        out["cpu"] += 1 if p.router else 0
    return out


def lws_objects(i: int, ns: str) -> list[Obj]:
    """The same groups as LeaderWorkerSets: our rendered pod templates, one LeaderWorkerSet per
    role (replicas = its groups, size = nodes per group), the router as a Deployment."""
    m = model_manifest(i, ns)
    m["metadata"]["uid"] = "00000000-0000-0000-0000-000000000000"
    p = make_plan(m)
    objs = render(p, parse_spec(m["spec"]), m)
    out = []
    for role in p.roles:
        sts = next(
            o
            for o in objs
            if o["kind"] == "StatefulSet" and o["metadata"]["labels"].get(labels.ROLE) == role.role
        )
        tpl = _strip(sts["spec"]["template"])
        for key in (labels.GROUP, labels.GROUP_KEY, labels.MANAGED_BY):
            tpl["metadata"]["labels"].pop(key, None)
        out.append(
            {
                "apiVersion": LWS_API,
                "kind": "LeaderWorkerSet",
                "metadata": {
                    "name": f"{p.name}-{role.role}",
                    "namespace": ns,
                    "labels": {labels.MODEL: p.name},
                },
                "spec": {
                    "replicas": role.replicas,
                    "startupPolicy": "LeaderCreated",
                    "leaderWorkerTemplate": {"size": role.nodes_per_group, "workerTemplate": tpl},
                },
            }
        )
    for o in objs:
        if o["kind"] == "Deployment":
            d = copy.deepcopy(o)
            d["metadata"] = {"name": o["metadata"]["name"], "namespace": ns, "labels": {labels.MODEL: p.name}}
            d["spec"]["template"] = _strip(d["spec"]["template"])
            d["spec"]["template"]["metadata"]["labels"].pop(labels.MANAGED_BY, None)
            out.append(d)
    return out


def _strip(template: Obj) -> Obj:
    """A pod template without what ties it to the operator's own children (its ServiceAccount)."""
    t = copy.deepcopy(template)
    t["spec"].pop("serviceAccountName", None)
    t["spec"]["automountServiceAccountToken"] = False
    return t


# ---- observing ---------------------------------------------------------------------------------
class Watch:
    """`kubectl get -w` of one resource in one namespace, each event handed to `on_event` with the
    time it arrived: kubectl parses, this process only splits lines (it shares the 2 cores)."""

    def __init__(self, cluster: Cluster, resource: str, ns: str, fields: list[str], on_event):
        tpl = '{.type}{"|"}' + '{"|"}'.join(fields) + '{"\\n"}'
        self.proc = subprocess.Popen(
            [
                str(cluster.kubectl_path),
                f"--kubeconfig={cluster.kubeconfig}",
                "get",
                resource,
                "-n",
                ns,
                "-w",
                "--output-watch-events",
                "-o",
                f"jsonpath={tpl}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.thread = threading.Thread(target=self._read, args=(on_event,), daemon=True)
        self.thread.start()

    def _read(self, on_event) -> None:
        for line in self.proc.stdout:
            on_event(time.time(), line.rstrip("\n").split("|"))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


READY = '{.object.status.conditions[?(@.type=="Ready")].status}'
POD_FIELDS = [
    "{.object.metadata.name}",
    "{.object.metadata.uid}",
    "{.object.metadata.labels.serving\\.dsa\\.dev/model}",
    READY,
    "{.object.metadata.deletionTimestamp}",
]


@dataclass
class Observed:
    """What the watches saw: pods per model, and when each model's controller said Ready."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pods: dict[str, tuple[str, bool]] = field(default_factory=dict)  # name -> (model, ready)
    uids: dict[str, str] = field(default_factory=dict)  # pod name -> uid
    pod_ready_at: dict[str, float] = field(default_factory=dict)  # model -> last pod turning Ready
    status_ready: dict[str, bool] = field(default_factory=dict)  # model -> the controller says Ready
    ready_at: dict[str, float] = field(default_factory=dict)  # model -> first time seen Ready (phase)
    lags: list[float] = field(default_factory=list)  # last pod Ready -> status Ready, per transition
    unready_at: dict[str, float] = field(default_factory=dict)  # model -> last time status left Ready

    def on_pod(self, t: float, f: list[str]) -> None:
        typ, name, uid, model, ready, deleting = f[:6]
        if not model:
            return
        with self.lock:
            was = self.pods.get(name, ("", False))[1]
            if typ == "DELETED":
                self.pods.pop(name, None)
                self.uids.pop(name, None)
                return
            now = ready == "True" and not deleting
            self.pods[name] = (model, now)
            self.uids[name] = uid
            if now and not was:
                self.pod_ready_at[model] = t

    def set_status(self, t: float, model: str, ready: bool) -> None:
        with self.lock:
            before = self.status_ready.get(model, False)
            self.status_ready[model] = ready
            if before and not ready:
                self.unready_at[model] = t
            if ready and not before:
                self.ready_at.setdefault(model, t)
                if model in self.pod_ready_at:
                    self.lags.append(max(0.0, t - self.pod_ready_at[model]))

    def model_pods(self) -> dict[str, list[tuple[str, bool]]]:
        with self.lock:
            out = collections.defaultdict(list)
            for name, (model, ready) in self.pods.items():
                out[model].append((self.uids.get(name, ""), ready))
            return out


class OursStatus:
    FIELDS = (
        "{.object.metadata.name}",
        "{.object.metadata.generation}",
        "{.object.status.observedGeneration}",
        "{.object.status.phase}",
    )

    def __init__(self, obs: Observed):
        self.obs = obs

    def on_event(self, t: float, f: list[str]) -> None:
        typ, name, gen, observed, phase = f[:5]
        if typ == "DELETED":
            return
        self.obs.set_status(t, name, gen == observed and phase == "Ready")


class LwsStatus:
    """A model is Ready when each of its LeaderWorkerSets is Available with every replica ready
    and updated, and its router Deployment (PD) has its replica ready and updated."""

    LWS_FIELDS = (
        "{.object.metadata.name}",
        "{.object.metadata.labels.serving\\.dsa\\.dev/model}",
        "{.object.spec.replicas}",
        "{.object.status.readyReplicas}",
        "{.object.status.updatedReplicas}",
        '{.object.status.conditions[?(@.type=="Available")].status}',
        '{.object.status.conditions[?(@.type=="UpdateInProgress")].status}',
    )
    DEPLOY_FIELDS = (
        "{.object.metadata.name}",
        "{.object.metadata.labels.serving\\.dsa\\.dev/model}",
        "{.object.metadata.generation}",
        "{.object.status.observedGeneration}",
        "{.object.spec.replicas}",
        "{.object.status.readyReplicas}",
        "{.object.status.updatedReplicas}",
    )

    def __init__(self, obs: Observed, parts: dict[str, int]):
        self.obs, self.parts = obs, parts  # model -> how many objects it has
        self.ready: dict[str, dict[str, bool]] = collections.defaultdict(dict)
        self.lock = threading.Lock()

    def on_lws(self, t: float, f: list[str]) -> None:
        typ, name, model, replicas, ready, updated, available, updating = f[:8]
        ok = typ != "DELETED" and available == "True" and updating != "True" and ready == updated == replicas
        self._set(t, model, name, ok)

    def on_deploy(self, t: float, f: list[str]) -> None:
        typ, name, model, gen, observed, replicas, ready, updated = f[:8]
        ok = typ != "DELETED" and gen == observed and ready == updated == replicas
        self._set(t, model, name, ok)

    def _set(self, t: float, model: str, name: str, ok: bool) -> None:
        if not model:
            return
        with self.lock:
            self.ready[model][name] = ok
            all_ok = len(self.ready[model]) == self.parts.get(model, -1) and all(self.ready[model].values())
        self.obs.set_status(t, model, all_ok)


def cpu_seconds(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


# ---- one controller, one step ----------------------------------------------------------------
class Step:
    """One controller at one N: the phases, and the figures each printed and kept."""

    def __init__(self, bench: Bench, controller: str, n: int):
        self.b, self.controller, self.n = bench, controller, n
        self.c = bench.cluster
        self.figures: dict[str, Any] = {"controller": controller, "n": n}
        self.user = OPERATOR_USER if controller == "ours" else LWS_USER

    def say(self, msg: str) -> None:
        print(f"[{self.controller} N={self.n}] {msg}", flush=True)

    # -- the controller's process
    def start_controller(self) -> None:
        self.t0 = time.time()  # requests are counted from here: the controller's start included
        if self.controller == "ours":
            self.op = Operator(self.c, self.b.operator_kubeconfig).start()
            self.op.wait_webhook()
            self.op.wait_healthy()
            self.pid = self.op.proc.pid
        else:  # a fresh process per step: its peak RSS is this step's
            self.c.restart("lws")
            self.pid = self.c.process_pid("lws")
            self.c.wait_for(self.b.lws_serving, timeout=60, what="LWS webhook")
        self.cpu0 = cpu_seconds(self.pid)
        self.others0 = self.cluster_cpu()
        self.profiler = None
        if (
            self.b.args.profile and self.controller == "ours"
        ):  # py-spy samples every thread of the process (reconciles run in threads)
            out = self.b.args.profile / f"{self.controller}-{self.n}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            self.profiler = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(self.pid),
                    "--format",
                    "raw",
                    "--rate",
                    "50",
                    "-o",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def stop_controller(self) -> None:
        if self.profiler is not None:
            self.profiler.send_signal(2)  # py-spy writes its file on SIGINT
            self.profiler.wait(timeout=60)
        self.figures["cpu_s"] = round(cpu_seconds(self.pid) - self.cpu0, 1)
        others = self.cluster_cpu()
        self.figures["cluster_cpu_s"] = {k: round(v - self.others0.get(k, 0.0), 1) for k, v in others.items()}
        self.say(f"CPU seconds of the cluster's processes: {self.figures['cluster_cpu_s']}")
        self.figures["rss_mb"] = round(peak_rss_mb(self.pid), 0)
        reqs = self.c.audit_requests(self.user, since=self.t0)
        verbs = collections.Counter(e["verb"] for e in reqs)
        self.figures["requests"] = dict(sorted(verbs.items()))
        what = collections.Counter(
            "{} {}/{} {}".format(
                e["verb"],
                e.get("objectRef", {}).get("resource"),
                e.get("objectRef", {}).get("subresource") or "",
                e.get("responseStatus", {}).get("code"),
            )
            for e in reqs
        )
        self.say("requests: " + ", ".join(f"{k}: {v}" for k, v in what.most_common(12)))
        if self.b.args.keep_logs:  # kwok's log so far (it acts on every pod)
            shutil.copy(
                self.c.logs / "kwok.log", self.b.args.keep_logs / f"kwok-{self.controller}-{self.n}.log"
            )
        if self.controller == "ours":
            self.op.stop()
            if self.b.args.keep_logs:
                shutil.copy(self.op.log_file, self.b.args.keep_logs / f"operator-{self.n}.log")
            assert "Traceback" not in self.op.logs(), self.op.logs()[-4000:]

    def cluster_cpu(self) -> dict[str, float]:
        """CPU seconds so far of each control-plane process (kwok included), children counted."""
        out = {}
        for proc in self.c._procs:
            if proc.name in (
                "kube-apiserver",
                "etcd",
                "kube-controller-manager",
                "kube-scheduler",
                "kwok",
                "lws",
            ):
                with contextlib.suppress(OSError):
                    out[proc.name] = cpu_seconds(proc.popen.pid)
        return out

    # -- phases
    def run(self) -> dict[str, Any]:
        self.start_controller()
        try:
            ns = self.namespace("burst")
            obs = self.observe(ns)
            t = self.create(ns, rate=None)
            self.wait_all_ready(obs, t, "burst")
            self.quiet_minute()
            self.pod_change(ns, obs)
            self.rollout(ns, obs)
            self.delete(ns, "burst")
            self.stop_watches()
            if self.b.rate:
                ns = self.namespace("rate")
                obs = self.observe(ns)
                t = self.create(ns, rate=self.b.rate)
                self.wait_all_ready(obs, t, "rate")
                self.delete(ns, "rate")
                self.stop_watches()
        finally:
            self.stop_watches()
            self.stop_controller()
        self.say(json.dumps(self.figures))
        return self.figures

    def namespace(self, mode: str) -> str:
        ns = f"scale-{self.controller}-{self.n}-{mode}"
        self.c.kubectl("create", "namespace", ns)
        return ns

    def observe(self, ns: str) -> Observed:
        obs = Observed()
        self.watches = [Watch(self.c, "pods", ns, list(POD_FIELDS), obs.on_pod)]
        if self.controller == "ours":
            st = OursStatus(obs)
            self.watches.append(
                Watch(self.c, "dsamodels.serving.dsa.dev", ns, OursStatus.FIELDS, st.on_event)
            )
        else:
            parts = {f"m{i:04d}": len(lws_objects(i, ns)) for i in range(self.n)}
            st = LwsStatus(obs, parts)
            self.watches.append(Watch(self.c, "leaderworkersets", ns, LwsStatus.LWS_FIELDS, st.on_lws))
            self.watches.append(Watch(self.c, "deployments", ns, LwsStatus.DEPLOY_FIELDS, st.on_deploy))
        self.obs = obs
        return obs

    def stop_watches(self) -> None:
        for w in getattr(self, "watches", []):
            w.stop()
        self.watches = []

    def objects(self, i: int, ns: str, revision: str | None = None) -> list[Obj]:
        if self.controller == "ours":
            return [model_manifest(i, ns, revision)]
        return lws_objects(i, ns)

    def create(self, ns: str, rate: float | None) -> dict[str, float]:
        """Every model's objects created, all at once (16 clients) or `rate` models a second;
        returns when each model's create returned."""
        created: dict[str, float] = {}

        def one(i: int) -> None:
            for obj in self.objects(i, ns):
                self.b.create(obj)
            created[f"m{i:04d}"] = time.time()

        t0 = time.time()
        if rate is None:
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                list(pool.map(one, range(self.n)))
        else:
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                futures = []
                for i in range(self.n):
                    time.sleep(max(0.0, t0 + i / rate - time.time()))
                    futures.append(pool.submit(one, i))
                for f in futures:
                    f.result()
        how = "all at once" if rate is None else f"{rate}/s"
        self.say(f"created {self.n} models in {time.time() - t0:.1f} s ({how})")
        self.created_t0 = t0
        return created

    def wait_all_ready(self, obs: Observed, created: dict[str, float], mode: str) -> None:
        deadline = time.time() + self.b.timeout
        while time.time() < deadline:
            with obs.lock:
                done = sum(1 for m in created if obs.status_ready.get(m))
            if done == self.n:
                break
            time.sleep(0.2)
        else:
            raise TimeoutError(
                f"{self.controller} N={self.n}: {done}/{self.n} models Ready after {self.b.timeout} s"
            )
        per = [obs.ready_at[m] - created[m] for m in created]
        f = {
            "all_ready_s": round(max(obs.ready_at.values()) - self.created_t0, 1),
            "ready_p50_s": round(pct(per, 50), 1),
            "ready_p99_s": round(pct(per, 99), 1),
            "status_lag_p50_s": round(pct(obs.lags, 50), 2),
            "status_lag_p99_s": round(pct(obs.lags, 99), 2),
        }
        self.figures[mode] = f
        self.say(f"{mode}: {f}")

    def quiet_minute(self) -> None:
        t0 = time.time()
        time.sleep(self.b.quiet)
        writes = [e for e in self.c.audit_requests(self.user, since=t0) if e["verb"] in WRITE_VERBS]
        self.figures["quiet_writes"] = len(writes)
        self.figures["quiet_s"] = self.b.quiet
        if writes:
            self.say(
                "writes while quiet: "
                + ", ".join(sorted({f"{e['verb']} {e['objectRef'].get('resource')}" for e in writes}))
            )

    def pod_change(self, ns: str, obs: Observed) -> None:
        """A pod lost in a settled fleet: one engine pod deleted in each of up to PROBES models
        spread over the N, PROBE_RATE a second, every model Ready. Per delete, the time until the
        controller's status says the model is not Ready: how fast a user (or an alert) learns of a
        pod change at scale, outside the creation burst. Then the time until all are Ready again."""
        k = min(PROBES, self.n)
        picks = [f"m{i * self.n // k:04d}" for i in range(k)]
        with obs.lock:
            pods = {
                m: sorted(n for n, (mm, _) in obs.pods.items() if mm == m and "router" not in n)
                for m in picks
            }
            obs.unready_at.clear()
            obs.ready_at.clear()
        t0 = time.time()
        deleted: dict[str, float] = {}
        for j, m in enumerate(picks):
            time.sleep(max(0.0, t0 + j / PROBE_RATE - time.time()))
            deleted[m] = time.time()
            self.b.client.core.delete_namespaced_pod(pods[m][0], ns, grace_period_seconds=0)
        deadline = time.time() + PROBE_TIMEOUT
        while True:
            with obs.lock:
                seen = {m: obs.unready_at[m] for m in picks if obs.unready_at.get(m, 0) >= deleted[m]}
                back = {m: obs.ready_at[m] for m in seen if obs.ready_at.get(m, 0) > seen[m]}
            if (len(seen) == k and len(back) == k) or time.time() > deadline:
                break
            time.sleep(0.2)
        lags = [seen[m] - deleted[m] for m in seen]
        f = {
            "probes": k,
            "status_seen": len(seen),  # deletes the controller's status ever showed
            "status_p50_s": round(pct(lags, 50), 2) if lags else None,
            "status_p99_s": round(pct(lags, 99), 2) if lags else None,
            # until every model whose status showed the loss says Ready again
            "all_ready_again_s": round(max(back.values()) - t0, 1)
            if back and len(back) == len(seen)
            else None,
        }
        self.figures["pod_change"] = f
        self.say(f"pod change: {f}")

    def rollout(self, ns: str, obs: Observed) -> None:
        """One pod-template change on every model; done when each model's pods are all new and Ready
        and its controller says Ready."""
        before = obs.model_pods()
        old = {m: {u for u, _ in pods} for m, pods in before.items()}
        want = {m: len(pods) for m, pods in before.items()}
        with obs.lock:
            obs.status_ready.clear()
            obs.ready_at.clear()
            obs.lags.clear()
        t0 = time.time()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: self.b.change(self.controller, i, ns), range(self.n)))
        deadline = time.time() + self.b.rollout_timeout
        kwok0 = self.kwok_deletes()
        done_at: dict[str, float] = {}
        while len(done_at) < self.n and time.time() < deadline:
            now = obs.model_pods()
            with obs.lock:
                said = dict(obs.status_ready)
            for m in now:
                if m not in done_at and _rolled(m, now, said, want, old):
                    done_at[m] = time.time()
            time.sleep(0.5)
        # kwok's own pod deletes in the window: one per pod the controller deleted, unless kwok
        # deletes pods of its own accord (see docs/benchmarks.md, "kwok at scale")
        self.figures["rollout_kwok_pod_deletes"] = self.kwok_deletes() - kwok0
        self.figures["rollout_pods"] = sum(want.values())
        self.figures["rollout_done"] = f"{len(done_at)}/{self.n}"
        if len(done_at) < self.n:
            late = sorted(set(want) - set(done_at))[:3]
            self.say(f"rollout: {len(done_at)}/{self.n} rolled after {self.b.rollout_timeout} s; e.g. {late}")
            self.figures["rollout_s"] = None
            self.wait_rolled_out(obs, want, old)
        else:
            self.figures["rollout_s"] = round(max(done_at.values()) - t0, 1)
        self.say(
            f"rollout of {self.n} models: {self.figures['rollout_s']} s ({self.figures['rollout_done']}); "
            f"kwok deleted {self.figures['rollout_kwok_pod_deletes']} pods for {self.figures['rollout_pods']}"
        )

    def wait_rolled_out(self, obs: Observed, want: dict[str, int], old: dict[str, set[str]]) -> None:
        """Past the rollout's bound: wait (up to --timeout) until every model is rolled, so the
        deletion that follows starts from the same state for each controller."""
        deadline = time.time() + self.b.timeout
        while time.time() < deadline:
            now = obs.model_pods()
            with obs.lock:
                said = dict(obs.status_ready)
            if all(_rolled(m, now, said, want, old) for m in want):
                return
            time.sleep(1)

    def kwok_deletes(self) -> int:
        """Pod deletes kwok has made so far (its log says "Delete pod" for each)."""
        try:
            return (self.c.logs / "kwok.log").read_text(errors="replace").count('"msg":"Delete pod"')
        except OSError:
            return 0

    def delete(self, ns: str, mode: str) -> None:
        t0 = time.time()
        if self.controller == "ours":
            self.c.kubectl("delete", "dsamodels.serving.dsa.dev", "--all", "-n", ns, "--wait=false")
        else:
            self.c.kubectl("delete", "leaderworkersets", "--all", "-n", ns, "--wait=false")
            self.c.kubectl("delete", "deployments", "--all", "-n", ns, "--wait=false")
        kinds = "pods,statefulsets,deployments,services,configmaps,serviceaccounts,roles,rolebindings"

        def gone() -> bool:
            r = self.c.kubectl("get", kinds, "-n", ns, "-o", "name", check=False)
            left = [
                x
                for x in r.stdout.split()
                if x not in ("configmap/kube-root-ca.crt", "serviceaccount/default")
            ]
            return r.returncode == 0 and not left

        self.c.wait_for(gone, timeout=self.b.timeout, interval=1, what=f"every child in {ns} gone")
        self.figures[f"delete_{mode}_s"] = round(time.time() - t0, 1)
        self.say(f"deletion ({mode}): {self.figures[f'delete_{mode}_s']} s")
        self.c.kubectl("delete", "namespace", ns, "--wait=false")


def _rolled(
    m: str, pods: dict[str, list[tuple[str, bool]]], said: dict[str, bool], want: dict[str, int], old: dict
) -> bool:
    """Model `m` rolled: its controller says Ready, and all its pods are new and Ready."""
    now = pods.get(m, [])
    return (
        bool(said.get(m))
        and len(now) == want[m]
        and all(r for _, r in now)
        and not ({u for u, _ in now} & old[m])
    )


# ---- the run -------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rate = args.rate
        self.quiet = args.quiet
        self.timeout = args.timeout
        self.rollout_timeout = args.rollout_timeout
        self.steps = [int(s) for s in args.steps.split(",")]
        self.controllers = args.controllers.split(",")

    def run(self) -> list[dict]:
        biggest = max(self.steps)
        need = pods_per_product(biggest)
        # every group's pods at once, plus room to spare for pods being replaced (kwok frees a node
        # as soon as a pod is deleted, so a tenth is plenty)
        nodes = {k: math.ceil(v * 1.1) + 2 for k, v in need.items() if k != "cpu"}
        cpu_nodes = max(1, math.ceil(need["cpu"] / 100))
        print(f"[bench] nodes: {nodes}, CPU nodes: {cpu_nodes}", flush=True)
        cluster = Cluster(
            nodes=0,
            cpu_nodes=cpu_nodes,
            extra_resources={"rdma/ib": "8"},
            control_plane_qps=CONTROL_PLANE_QPS,
            audit_reads_of=(OPERATOR_USER, LWS_USER),
            node_lease_seconds=3600,
            **({"lws": True} if "lws" in self.controllers else {}),
        )
        # a ClusterIP per model (its endpoint Service): the harness's /24 runs out at 250 models
        cluster.service_cidr = "10.0.0.0/16"
        self.cluster = cluster
        results = []
        with cluster:
            self.add_gpu_nodes(nodes)
            self.operator_kubeconfig = cluster.mint_user(OPERATOR_USER, groups=["system:masters"])
            install_crd(cluster)
            self.client = _api(cluster.kubeconfig)
            for n in self.steps:
                for ctl in self.controllers:
                    results.append(Step(self, ctl, n).run())
        return results

    def add_gpu_nodes(self, nodes: dict[str, int]) -> None:
        c = self.cluster
        manifests, i = [], 0
        for acc, count in sorted(nodes.items()):
            for _ in range(count):
                node = c.node_manifest(i)
                node["metadata"]["labels"]["nvidia.com/gpu.product"] = PRODUCTS[acc]
                manifests.append(node)
                i += 1
        t0 = time.time()
        for k in range(0, len(manifests), 200):
            c.apply(manifests[k : k + 200])

        def ready() -> bool:
            r = c.kubectl("get", "nodes", "-o", "json")
            items = json.loads(r.stdout)["items"]
            ok = [
                n
                for n in items
                if any(
                    x["type"] == "Ready" and x["status"] == "True"
                    for x in n.get("status", {}).get("conditions", [])
                )
            ]
            return len(ok) >= len(manifests)

        c.wait_for(ready, timeout=600, interval=2, what="the GPU nodes Ready")
        print(f"[bench] {len(manifests)} GPU nodes Ready in {time.time() - t0:.1f} s", flush=True)

    def lws_serving(self) -> bool:
        r = self.cluster.kubectl("get", "--raw", "/apis/leaderworkerset.x-k8s.io/v1", check=False)
        return r.returncode == 0

    def create(self, obj: Obj) -> None:
        group, _, version = obj["apiVersion"].rpartition("/")
        plural = {"DSAModel": "dsamodels", "LeaderWorkerSet": "leaderworkersets"}.get(obj["kind"])
        ns = obj["metadata"]["namespace"]
        if plural:
            self.client.custom.create_namespaced_custom_object(group, version, ns, plural, obj)
        else:
            self.client.apps.create_namespaced_deployment(ns, obj)

    def change(self, controller: str, i: int, ns: str) -> None:
        """A change of every model's pod template: an environment variable (ours: spec.runtime.env;
        LWS: its worker template's containers)."""
        name = f"m{i:04d}"
        if controller == "ours":
            patch = {"spec": {"runtime": {"env": {"BENCH_REVISION": "2"}}}}
            self.client.custom.patch_namespaced_custom_object(
                "serving.dsa.dev", "v1alpha1", ns, "dsamodels", name, patch
            )
            return
        for obj in lws_objects(i, ns):
            if obj["kind"] == "Deployment":  # the router rolls too, as ours does
                ctrs = obj["spec"]["template"]["spec"]["containers"]
                env = [{"name": "BENCH_REVISION", "value": "2"}]
                patch = {
                    "spec": {
                        "template": {"spec": {"containers": [{"name": c["name"], "env": env} for c in ctrs]}}
                    }
                }
                self.client.apps.patch_namespaced_deployment(obj["metadata"]["name"], ns, patch)
                continue
            tpl = obj["spec"]["leaderWorkerTemplate"]["workerTemplate"]
            for ctr in tpl["spec"]["containers"]:
                ctr.setdefault("env", []).append({"name": "BENCH_REVISION", "value": "2"})
            self.client.custom.patch_namespaced_custom_object(
                "leaderworkerset.x-k8s.io",
                "v1",
                ns,
                "leaderworkersets",
                obj["metadata"]["name"],
                {"spec": {"leaderWorkerTemplate": {"workerTemplate": tpl}}},
            )


@dataclass
class _Clients:
    custom: Any
    apps: Any
    core: Any


def _api(kubeconfig: Path) -> _Clients:
    from kubernetes import client, config

    api = config.new_client_from_config(str(kubeconfig))
    api.configuration.connection_pool_maxsize = 32
    api = client.ApiClient(api.configuration)
    return _Clients(client.CustomObjectsApi(api), client.AppsV1Api(api), client.CoreV1Api(api))


# ---- report ----------------------------------------------------------------------------------------
def table(results: list[dict]) -> str:
    by = {(r["controller"], r["n"]): r for r in results}
    ns = sorted({r["n"] for r in results})
    rows = [
        ("all Ready, all at once (s)", lambda r: r["burst"]["all_ready_s"]),
        ("create → Ready P50 (s)", lambda r: r["burst"]["ready_p50_s"]),
        ("create → Ready P99 (s)", lambda r: r["burst"]["ready_p99_s"]),
        ("last pod Ready → status P99 (s)", lambda r: r["burst"]["status_lag_p99_s"]),
        ("all Ready, at a fixed rate (s)", lambda r: r.get("rate", {}).get("all_ready_s")),
        ("fixed rate: create → Ready P99 (s)", lambda r: r.get("rate", {}).get("ready_p99_s")),
        ("writes in a quiet minute", lambda r: r["quiet_writes"]),
        ("pod deleted → status not Ready P50 (s)", lambda r: r["pod_change"]["status_p50_s"]),
        ("pod deleted → status not Ready P99 (s)", lambda r: r["pod_change"]["status_p99_s"]),
        ("… seen of probes", lambda r: f"{r['pod_change']['status_seen']}/{r['pod_change']['probes']}"),
        ("… all Ready again (s)", lambda r: r["pod_change"]["all_ready_again_s"]),
        ("one change rolled across all (s)", lambda r: r["rollout_s"]),
        ("… models rolled within the bound", lambda r: r["rollout_done"]),
        (
            "… kwok pod deletes / pods rolled",
            lambda r: f"{r['rollout_kwok_pod_deletes']}/{r['rollout_pods']}",
        ),
        ("deletion, all children gone (s)", lambda r: r["delete_burst_s"]),
        ("controller CPU (s)", lambda r: r["cpu_s"]),
        ("controller peak RSS (MB)", lambda r: r["rss_mb"]),
        ("API requests (all verbs)", lambda r: sum(r["requests"].values())),
        ("… list", lambda r: r["requests"].get("list", 0)),
        ("… get", lambda r: r["requests"].get("get", 0)),
        ("… watch", lambda r: r["requests"].get("watch", 0)),
        (
            "… create / patch / update / delete",
            lambda r: "/".join(str(r["requests"].get(v, 0)) for v in ("create", "patch", "update", "delete")),
        ),
    ]
    head = "| figure | " + " | ".join(f"N={n} ours | N={n} LWS | ours/LWS" for n in ns) + " |"
    sep = "|---" * (1 + 3 * len(ns)) + "|"
    lines = [head, sep]
    for label, get in rows:
        cells = []
        for n in ns:
            a, b = by.get(("ours", n)), by.get(("lws", n))
            va = _safe(get, a)
            vb = _safe(get, b)
            ratio = (
                f"{va / vb:.2f}"
                if isinstance(va, int | float) and isinstance(vb, int | float) and vb
                else "-"
            )
            cells += [str(va if va is not None else "-"), str(vb if vb is not None else "-"), ratio]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _safe(get, r):
    if r is None:
        return None
    try:
        return get(r)
    except (KeyError, TypeError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", default="50,100,250,500", help="numbers of models, comma-separated")
    ap.add_argument("--controllers", default="ours,lws", help="ours, lws or both")
    ap.add_argument(
        "--rate", type=float, default=10.0, help="models a second for the fixed-rate create (0: skip)"
    )
    ap.add_argument("--quiet", type=float, default=60.0, help="seconds of the quiet window")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds any one phase may take")
    ap.add_argument(
        "--rollout-timeout", type=float, default=300.0, help="seconds the rollout is timed for (then noted)"
    )
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--keep-logs", type=Path, help="copy the operator's log into this folder")
    ap.add_argument("--profile", type=Path, help="py-spy (on PATH) samples our operator; folded stacks here")
    args = ap.parse_args(argv)
    install_signal_handlers()  # SIGTERM stops the operator and the cluster as Ctrl-C does
    t0 = time.time()
    results = Bench(args).run()
    out = table(results)
    print(out)
    print(f"[bench] whole run {time.time() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
