"""Fault injection: the operator killed at random points, a leader failover, the API server and
etcd restarted, a watch dropped silently. Each test asserts the outcome a user relies on
(converged, nothing duplicated or orphaned, no healthy group restarted, backoff kept) and
prints its figures (`FIGURE ...`): `make chaos` runs this module alone, with the output shown.

The operator runs as a local process against the real control plane with kwok GPU nodes
(tests/integration/operator_proc.py says why). DSA_CHAOS_SEED picks the random kill points
(default 14); DSA_CHAOS_RUNS how many kill runs (default 20).
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import random
import signal
import time
import uuid

import pytest
import yaml

from dsa_operator import labels
from dsa_operator.api import parse_spec
from dsa_operator.handlers import WATCH_INACTIVITY_SECONDS
from dsa_operator.kube import READ_TIMEOUT
from dsa_operator.planner import plan
from dsa_operator.render import render
from tests.chaos.blackhole import Blackhole
from tests.cluster import harness
from tests.integration.operator_proc import Operator, install_crd

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
SEED = int(os.environ.get("DSA_CHAOS_SEED", "14"))
RUNS = int(os.environ.get("DSA_CHAOS_RUNS", "20"))
NAME = "chaos"
KINDS = "statefulsets,deployments,services,configmaps,serviceaccounts,roles,rolebindings"


def model(replicas: int = 2, mem: float = 0.8) -> dict:
    """Two-node groups (PP 2, 8 GPUs a node): a group's pods share one NCCL world."""
    return {
        "apiVersion": "serving.dsa.dev/v1alpha1",
        "kind": "DSAModel",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"family": "deepseek-v3.2"},
            "hardware": {"accelerator": "h200"},
            "serving": {"replicas": replicas, "parallelism": {"tp": 8, "pp": 2}, "memFractionStatic": mem},
        },
    }


@pytest.fixture(scope="module")
def cluster():
    with harness.running(nodes=8, cpu_nodes=1, gpu_products=["NVIDIA-H200"]) as c:
        install_crd(c)
        yield c


@pytest.fixture(scope="module")
def kubeconfig(cluster):
    return cluster.mint_user("dsa-operator", groups=["system:masters"])


@pytest.fixture
def ns(cluster):
    name = f"c-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=90s", check=False)


def start(cluster, kubeconfig, name: str, *extra: str) -> Operator:
    o = Operator(cluster, kubeconfig, name=name, webhook=False, extra=extra)
    o.start()
    return o


def apply(cluster, ns: str, m: dict) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(m))


def get(cluster, ns: str) -> dict:
    return cluster.kubectl_json("get", "dsamodel", NAME, "-n", ns)


def converged(cluster, ns: str, timeout: float = 90, scenario: str = "") -> dict:
    """Ready at the current generation: the operator has seen the last spec and it is served (and,
    after a failure, the group was restarted)."""

    def check():
        obj = get(cluster, ns)
        return obj if is_converged(obj, scenario) else None

    try:
        return cluster.wait_for(check, timeout=timeout, interval=0.2, what=f"{ns}/{NAME} Ready")
    except TimeoutError:
        raise TimeoutError(yaml.safe_dump(get(cluster, ns).get("status"))) from None


def is_converged(obj: dict, scenario: str = "") -> bool:
    """Ready at the current generation and, after a failure, the group restarted once. Asked right
    after the kill too: a change already complete then tested only the restart, not an interrupted
    reconcile (the figure says how many were interrupted)."""
    st = obj.get("status") or {}
    done = st.get("observedGeneration") == obj["metadata"]["generation"] and st.get("phase") == "Ready"
    if scenario == "group-restart":
        done = done and groups_status(obj).get("serving-0", {}).get("restarts") == 1
    return done


def pods(cluster, ns: str) -> list[dict]:
    sel = f"{labels.MODEL}={NAME},{labels.COMPONENT}=engine"
    items = cluster.kubectl_json("get", "pods", "-n", ns, "-l", sel)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def by_group(cluster, ns: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = collections.defaultdict(set)
    for p in pods(cluster, ns):
        lbl = p["metadata"]["labels"]
        out[f"{lbl[labels.ROLE]}-{lbl[labels.GROUP]}"].add(p["metadata"]["uid"])
    return dict(out)


def events(cluster, ns: str, reason: str) -> list[str]:
    items = cluster.kubectl_json("get", "events", "-n", ns, "--field-selector", f"reason={reason}")["items"]
    return [e["message"] for e in items]


def inventory(cluster, ns: str) -> tuple[collections.Counter, set, collections.Counter, dict]:
    owner = get(cluster, ns)
    m = {**owner, "metadata": {**owner["metadata"], "namespace": ns}}
    want = {(o["kind"], o["metadata"]["name"]) for o in render(plan(m), parse_spec(m["spec"]), owner)}
    items = cluster.kubectl_json("get", KINDS, "-n", ns, "-l", f"{labels.MODEL}={NAME}")["items"]
    have = collections.Counter((o["kind"], o["metadata"]["name"]) for o in items)
    ranks = collections.Counter(
        (p["metadata"]["labels"][labels.GROUP], p["metadata"]["labels"][labels.POD_INDEX])
        for p in pods(cluster, ns)
    )
    replicas = m["spec"]["serving"]["replicas"]
    return have, want, ranks, {(str(g), str(r)): 1 for g in range(replicas) for r in range(2)}


def assert_inventory(cluster, ns: str) -> None:
    """Exactly the objects the spec renders (no orphan, no leftover group), and exactly one pod per
    (group, rank): nothing duplicated. Once Ready, the old plan's ConfigMaps go when the last pod
    that mounts one is gone (a later reconcile): waited for, then asserted."""

    def exact():
        have, want, ranks, wanted_ranks = inventory(cluster, ns)
        return set(have) == want and max(have.values()) == 1 and ranks == wanted_ranks

    try:
        cluster.wait_for(exact, timeout=30, interval=0.5, what="the exact inventory")
    except TimeoutError:
        have, want, ranks, wanted_ranks = inventory(cluster, ns)
        assert set(have) == want and max(have.values()) == 1, (sorted(have), sorted(want))
        assert ranks == wanted_ranks, ranks


def fail_rank1(cluster, ns: str, group: int) -> None:
    """Rank 1's engine crash-loops (kwok's stage, tests/cluster/kwok-stages.yaml): its restart count
    grows every second, as a kubelet reports a crashing container, until the pod is deleted."""
    cluster.kubectl(
        "label", "pod", f"{NAME}-serving-{group}-1", "-n", ns, "crash-loop.stage.dsa-operator.test=true"
    )


def groups_status(obj: dict) -> dict[str, dict]:
    return {g["name"]: g for g in (obj.get("status") or {}).get("groups") or []}


def ts(s: str) -> float:
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()


# ---- the operator SIGKILLed at random points ----------------------------------------------------
SCENARIOS = ("create", "scale", "rollout", "group-restart")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_operator_killed_at_random_points_converges(cluster, kubeconfig, scenario):
    """RUNS // 4 runs of the scenario; in each, the operator is SIGKILLed a random time after the
    change (0-0.8 s: on kwok nodes most changes take the operator about a second), and a fresh one
    must finish the job exactly once."""
    rng = random.Random(f"{SEED}-{scenario}")
    runs = RUNS // len(SCENARIOS)
    results = []
    for run in range(runs):
        delay = rng.uniform(0.0, 0.8)
        ns = f"k-{scenario[:5]}-{run}-{uuid.uuid4().hex[:4]}"
        cluster.kubectl("create", "namespace", ns)
        op = start(cluster, kubeconfig, f"kill-{ns}-a")
        try:
            if scenario != "create":
                apply(cluster, ns, model())
                converged(cluster, ns)
            before = by_group(cluster, ns)
            if scenario == "create":
                apply(cluster, ns, model())
            elif scenario == "scale":
                apply(cluster, ns, model(replicas=3 if run % 2 == 0 else 1))
            elif scenario == "rollout":
                apply(cluster, ns, model(mem=0.75))
            else:
                fail_rank1(cluster, ns, group=0)
            time.sleep(delay)
            op.stop(signal.SIGKILL)
            t0 = time.monotonic()
            midway = not is_converged(get(cluster, ns), scenario)
            again = start(cluster, kubeconfig, f"kill-{ns}-b")
            try:
                obj = converged(cluster, ns, scenario=scenario)
                took = time.monotonic() - t0
                assert_inventory(cluster, ns)
                after = by_group(cluster, ns)
                restarted = {g for g in before if g in after and not (before[g] & after[g])}
                kept = {g for g in before if g in after and before[g] == after[g]}
                rolled = events(cluster, ns, "RollingGroup")
                failed = events(cluster, ns, "GroupFailed")
                if scenario == "rollout":  # every group once, none twice
                    assert restarted == set(before), (before, after)
                    assert all(sum(g in e for e in rolled) <= 1 for g in before), rolled
                elif scenario == "group-restart":
                    assert restarted == {"serving-0"} and kept == set(before) - {"serving-0"}
                    assert groups_status(obj)["serving-0"]["restarts"] == 1, obj["status"]["groups"]
                    assert len(failed) <= 1, failed
                else:  # create, scale: no group restarted
                    assert kept == set(before) & set(after) and not failed and not rolled
                assert "Traceback" not in op.logs() + again.logs()
                results.append((delay, took, midway))
            finally:
                again.stop()
        finally:
            op.stop()
            cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=60s", check=False)
    took = sorted(t for _, t, _ in results)
    midway = sum(1 for *_, m in results if m)
    print(
        f"\nFIGURE operator SIGKILLed during {scenario} at random points (seed {SEED}): "
        f"{len(results)}/{runs} "
        f"converged, {took[0]:.1f}-{took[-1]:.1f} s after the restart; kill delays "
        + ", ".join(f"{d:.2f}" for d, *_ in results)
        + f"; {midway} of them killed before the change was done"
    )
    assert len(results) == runs


# ---- backoff and leadership survive the leader's death ----------------------------------------
def test_backoff_is_kept_across_a_leader_failover(cluster, kubeconfig, ns):
    """A group fails, is restarted (failures 1), fails again at once: the next restart is due 30 s
    after the first. The leader is SIGKILLed during that backoff; the standby takes over and
    restarts the group no sooner than due, and restarts nothing else."""
    lease = ("--leader-elect", f"--leader-namespace={ns}")
    a = start(cluster, kubeconfig, "ha-a", *lease)
    b = start(cluster, kubeconfig, "ha-b", *lease)
    try:
        apply(cluster, ns, model(replicas=2))
        converged(cluster, ns)
        leader = cluster.wait_for(
            lambda: next((o for o in (a, b) if "leading as" in o.logs()), None), what="a leader"
        )
        standby = b if leader is a else a
        other = by_group(cluster, ns)["serving-1"]
        fail_rank1(cluster, ns, group=0)
        first = cluster.wait_for(
            lambda: groups_status(get(cluster, ns)).get("serving-0", {}).get("lastRestartTime"),
            what="the first restart",
        )
        converged(cluster, ns)
        fail_rank1(cluster, ns, group=0)
        waiting = cluster.wait_for(
            lambda: groups_status(get(cluster, ns))["serving-0"].get("nextRestartAfter"),
            what="the backoff to show in status",
        )
        assert ts(waiting) - ts(first) == pytest.approx(30, abs=1)
        killed = time.time()
        leader.stop(signal.SIGKILL)
        took_over = cluster.wait_for(lambda: "leading as" in standby.logs(), timeout=60, what="the standby")
        assert took_over
        acted = time.time()
        obj = converged(cluster, ns, timeout=120)
        g = groups_status(obj)["serving-0"]
        assert g["restarts"] == 2 and g["failuresInARow"] == 2
        assert ts(g["lastRestartTime"]) >= ts(first) + 30 - 1, (first, g)  # (status times: whole seconds)
        assert by_group(cluster, ns)["serving-1"] == other  # the healthy group untouched
        print(f"\nFIGURE leader failover: the standby led {acted - killed:.1f} s after the leader's SIGKILL")
        print(
            "FIGURE backoff across the failover: second restart "
            f"{ts(g['lastRestartTime']) - ts(first):.0f} s after the first (due: 30 s)"
        )
    finally:
        a.stop()
        b.stop()


# ---- the control plane restarted -----------------------------------------------------------------
def test_apiserver_and_etcd_restarts_mid_rollout(cluster, kubeconfig, ns):
    op = start(cluster, kubeconfig, "cp-restarts")
    try:
        apply(cluster, ns, model(replicas=3))
        converged(cluster, ns)
        apply(cluster, ns, model(replicas=3, mem=0.75))
        cluster.wait_for(lambda: events(cluster, ns, "RollingGroup"), what="the rollout to start")
        down = cluster.restart("kube-apiserver", signal.SIGKILL, down_for=3)  # a crash, not a drain
        t0 = time.monotonic()
        converged(cluster, ns, timeout=180)
        api = time.monotonic() - t0
        assert_inventory(cluster, ns)

        apply(cluster, ns, model(replicas=3, mem=0.7))
        cluster.wait_for(lambda: len(events(cluster, ns, "RollingGroup")) > 3, what="the next rollout")
        etcd_down = cluster.restart("etcd", signal.SIGKILL, down_for=3)
        t0 = time.monotonic()
        converged(cluster, ns, timeout=180)
        etcd = time.monotonic() - t0
        assert_inventory(cluster, ns)
        assert op.alive() and "Traceback" not in op.logs()
        print(
            f"\nFIGURE kube-apiserver SIGKILLed mid-rollout, restarted (down {down:.1f} s): rollout finished "
            f"{api:.1f} s after it answered again"
        )
        print(
            f"FIGURE etcd SIGKILLed mid-rollout, restarted with its data (down {etcd_down:.1f} s): "
            f"finished {etcd:.1f} s after"
        )
    finally:
        op.stop()


# ---- a watch dropped silently ---------------------------------------------------------------------
# The watch's inactivity bound, then a reconcile whose pooled connection is dead too (its read
# timeout), then a retry and the reconcile itself.
WATCH_BOUND = WATCH_INACTIVITY_SECONDS + READ_TIMEOUT + 10


def test_a_silently_dropped_connection_is_detected_and_resumed(cluster, kubeconfig, ns):
    """Every connection of the operator goes quiet (no FIN, no RST); a pod of a group is then lost.
    The operator notices within WATCH_BOUND seconds, restarts the group and reports it."""
    proxy = Blackhole(cluster.api_ip, cluster.api_port)
    cfg = yaml.safe_load(kubeconfig.read_text())
    for c in cfg["clusters"]:
        c["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    relayed = kubeconfig.with_name("operator-via-blackhole.kubeconfig")
    relayed.write_text(yaml.safe_dump(cfg))
    op = start(cluster, relayed, "blackholed")
    try:
        apply(cluster, ns, model(replicas=1))
        converged(cluster, ns)
        time.sleep(2)
        dropped = proxy.drop_all()
        t0 = time.monotonic()
        cluster.kubectl("delete", "pod", f"{NAME}-serving-0-1", "-n", ns, "--wait=false")
        cluster.wait_for(
            lambda: events(cluster, ns, "GroupFailed"),
            timeout=WATCH_BOUND + 60,
            interval=1,
            what="the restart",
        )
        took = time.monotonic() - t0
        converged(cluster, ns)
        print(
            f"\nFIGURE {dropped} connections dropped silently: the lost pod's group restarted "
            f"after {took:.1f} s (bound {WATCH_BOUND:.0f} s)"
        )
        assert took < WATCH_BOUND, took
    finally:
        op.stop()
        proxy.close()
