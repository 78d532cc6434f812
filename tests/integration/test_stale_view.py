"""Never act on a stale view: the two effects seen at volume, first reproduced one at a time (a
reconcile handed an old copy of the DSAModel, as a watch can deliver it), then at volume with the
operator running (100 models created, Ready, deleted, twice).

1. A status write that changed only a condition's lastTransitionTime (the copy's conditions were
   older than the operator's own last write).
2. A StatefulSet re-created after its model was deleted (the copy still existed).
"""

from __future__ import annotations

import collections
import copy
import json
import os
import threading
import time

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from dsa_operator import GROUP, PLURAL, VERSION, labels
from dsa_operator.controller import Reconciler
from dsa_operator.kube import Kube
from tests.cluster import harness
from tests.integration.operator_proc import Operator, install_crd, wait_phase

pytestmark = pytest.mark.integration
VOLUME = 100
ROUNDS = int(os.environ.get("DSA_STALE_ROUNDS", "1"))  # the recorded figure: 2


def model(name: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DSAModel",
        "metadata": {"name": name},
        "spec": {
            "model": {"family": "deepseek-v3.2-exp"},
            "hardware": {"accelerator": "h200"},
            "serving": {"parallelism": {"tp": 8}},
        },
    }


@pytest.fixture(scope="module")
def cluster():
    # 100 one-node models of 8 GPUs each: 8 nodes of 104 GPUs (and 110 pods) hold them all.
    with harness.running(nodes=8, cpu_nodes=1, gpus_per_node=104, gpu_products=["NVIDIA-H200"]) as c:
        install_crd(c)
        yield c


@pytest.fixture(scope="module")
def api(cluster):
    kubeconfig = cluster.mint_user("stale-view-test", groups=["system:masters"])
    a = config.new_client_from_config(config_file=str(kubeconfig))
    yield a
    a.close()


def custom(api) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def children(cluster, ns: str, name: str) -> list[str]:
    items = cluster.kubectl_json(
        "get", "statefulsets,services,configmaps,deployments", "-n", ns, "-l", f"{labels.MODEL}={name}"
    )["items"]
    return [f"{o['kind']}/{o['metadata']['name']}" for o in items]


def test_a_stale_copy_of_a_deleted_model_creates_nothing(cluster, api, ns):
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(model("gone")))
    stale = cluster.kubectl_json("get", "dsamodel", "gone", "-n", ns)
    cluster.kubectl("delete", "dsamodel", "gone", "-n", ns, "--wait=true")
    assert Reconciler(Kube(api)).reconcile(stale) is None
    assert children(cluster, ns, "gone") == []


def test_a_model_being_deleted_gets_no_children(cluster, api, ns):
    m = model("deleting")
    m["metadata"]["finalizers"] = ["test.dsa.dev/hold"]
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(m))
    cluster.kubectl("delete", "dsamodel", "deleting", "-n", ns, "--wait=false")
    body = cluster.kubectl_json("get", "dsamodel", "deleting", "-n", ns)
    assert body["metadata"].get("deletionTimestamp")
    try:
        Reconciler(Kube(api)).reconcile(body)
        assert children(cluster, ns, "deleting") == []
        assert "status" not in cluster.kubectl_json("get", "dsamodel", "deleting", "-n", ns)
    finally:
        cluster.kubectl(
            "patch",
            "dsamodel",
            "deleting",
            "-n",
            ns,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
        )


def test_a_stale_copy_does_not_move_lasttransitiontime(cluster, api, ns):
    """Reconciled to Ready (by hand, no operator process), then handed the copy from before the
    Ready write: the stored status is already right, so nothing is written."""
    r = Reconciler(Kube(api))
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(model("m")))
    stale = cluster.kubectl_json("get", "dsamodel", "m", "-n", ns)
    r.reconcile(stale)  # creates the group; status Progressing

    def ready():
        r.reconcile(stale)
        obj = cluster.kubectl_json("get", "dsamodel", "m", "-n", ns)
        return obj if obj.get("status", {}).get("phase") == "Ready" else None

    before = cluster.wait_for(ready, timeout=60, interval=0.5, what="Ready")
    time.sleep(1.1)  # a new lastTransitionTime would differ from the stored one
    r.reconcile(copy.deepcopy(stale))
    after = cluster.kubectl_json("get", "dsamodel", "m", "-n", ns)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_status_is_written_only_onto_the_version_it_was_computed_from(cluster, api, ns):
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(model("v")))
    old = cluster.kubectl_json("get", "dsamodel", "v", "-n", ns)
    cluster.kubectl("label", "dsamodel", "v", "-n", ns, "touched=yes")  # a newer version exists
    with pytest.raises(ApiException) as e:
        Kube(api).patch_status(old, {"phase": "Ready"})
    assert e.value.status == 409
    assert "status" not in cluster.kubectl_json("get", "dsamodel", "v", "-n", ns)


def test_a_record_is_written_over_other_writes_but_never_over_a_newer_record(cluster, api, ns):
    """A group's record (an annotation) is a compare-and-swap on its own value: another client's
    write to the object in between (the StatefulSet controller writes status at every pod change)
    does not refuse it; a newer record does, with a 409, and leaves the newer one in place."""
    k, key = Kube(api), "serving.dsa.dev/group-state"
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "record", "namespace": ns}}
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(cm))

    def read() -> dict:
        return cluster.kubectl_json("get", "cm", "record", "-n", ns)

    first = read()
    cluster.kubectl("label", "cm", "record", "-n", ns, "other=write")
    with pytest.raises(ApiException) as e:  # none yet: JSON Patch cannot test for absence
        k.patch_annotation(first, key, "1")
    assert e.value.status == 409
    k.patch_annotation(read(), key, "1")

    seen = read()
    # a write to the object, not to the record: no conflict
    cluster.kubectl("label", "cm", "record", "-n", ns, "other=again", "--overwrite")
    k.patch_annotation(seen, key, "2")
    assert read()["metadata"]["annotations"][key] == "2"
    with pytest.raises(ApiException) as e:  # `seen` holds "1": the record changed since
        k.patch_annotation(seen, key, "3")
    assert e.value.status == 409
    assert read()["metadata"]["annotations"][key] == "2"


# ---- at volume, with the operator ---------------------------------------------------------------
class StatusLog:
    """Every status the API server stored for the models of one namespace, in order (a watch)."""

    def __init__(self, api, ns: str):
        self.api, self.ns = api, ns
        self.seen: dict[str, list[dict]] = collections.defaultdict(list)
        self._w = watch.Watch()
        self._stopped = threading.Event()
        self.fell_behind = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        """Watches from where it left off if the stream ends (a missed event would hide a write)."""
        rv = None
        while not self._stopped.is_set():
            try:
                for ev in self._w.stream(
                    custom(self.api).list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.ns,
                    PLURAL,
                    resource_version=rv,
                    timeout_seconds=5,
                ):
                    obj = ev["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    name = obj["metadata"]["name"]
                    status = obj.get("status") if ev["type"] != "DELETED" else None
                    if status and (not self.seen[name] or self.seen[name][-1] != status):
                        self.seen[name].append(status)
            except ApiException as e:  # 410: rv too old; events in between are lost, so say so
                if e.status == 410:
                    self.fell_behind = True
                    return
                time.sleep(0.1)
            except Exception:  # the stream broke (or the test is over): resume from rv
                time.sleep(0.1)

    def stop(self) -> None:
        self._stopped.set()
        self._w.stop()
        self._t.join(timeout=15)

    def transition_time_only_writes(self) -> dict[str, int]:
        """Per model, status changes after it was first Ready that changed nothing but a
        condition's lastTransitionTime."""
        out = {}
        for name, statuses in self.seen.items():
            first = next((i for i, s in enumerate(statuses) if s.get("phase") == "Ready"), None)
            if first is None:
                continue
            n = sum(
                1
                for a, b in zip(statuses[first:], statuses[first + 1 :], strict=False)
                if _without_times(a) == _without_times(b)
            )
            if n:
                out[name] = n
        return out


def _without_times(status: dict) -> dict:
    s = copy.deepcopy(status)
    for c in s.get("conditions") or []:
        c.pop("lastTransitionTime", None)
    return s


def test_at_volume_no_stale_writes(cluster, api, ns):
    """VOLUME models created at once, Ready, deleted at once; ROUNDS times. Then: no status write
    after Ready that only moved a lastTransitionTime, and no child created by the operator after
    its model was deleted (the audit log says what the operator wrote, and when)."""
    kubeconfig = cluster.mint_user("dsa-operator", groups=["system:masters"])
    op = Operator(cluster, kubeconfig, name="volume", webhook=False).start()
    log = StatusLog(api, ns)
    names = [f"v{i:03d}" for i in range(VOLUME)]
    try:
        op.wait_healthy()
        for _ in range(ROUNDS):
            items = [{**model(n), "metadata": {"name": n, "namespace": ns}} for n in names]
            cluster.apply(items)
            for n in names:
                wait_phase(cluster, n, ns, "Ready", timeout=180)
            time.sleep(5)  # any late write lands
            cluster.kubectl("delete", "dsamodels", "--all", "-n", ns, "--wait=true", "--timeout=180s")
            cluster.wait_for(
                lambda: not cluster.kubectl_json("get", "statefulsets", "-n", ns)["items"],
                timeout=120,
                what="garbage collection",
            )
        time.sleep(3)
    finally:
        log.stop()
        op.stop()
    assert not log.fell_behind, "the status watch missed events: the counts below would be wrong"
    only_times = log.transition_time_only_writes()
    late = _late_creates(cluster, ns)
    print(
        f"\nFIGURE stale views at volume ({VOLUME} models x {ROUNDS} rounds): "
        f"{sum(only_times.values())} lastTransitionTime-only status writes after Ready, "
        f"{len(late)} children created after their model's deletion"
    )
    assert only_times == {}
    assert late == []
    assert "Traceback" not in op.logs()


def _late_creates(cluster, ns: str) -> list[str]:
    """Children the operator created (HTTP 201) while their model did not exist: after the model's
    deletion and before its next creation, both as the API server's audit log timestamps them."""
    events = [json.loads(line) for line in cluster.audit_log.read_text().splitlines() if line.strip()]
    events = [e for e in events if (e.get("objectRef") or {}).get("namespace") == ns]
    events.sort(key=lambda e: e.get("stageTimestamp", ""))
    exists: dict[str, bool] = {}
    late = []
    for e in events:
        ref, code = e["objectRef"], (e.get("responseStatus") or {}).get("code")
        name = ref.get("name") or ""
        if ref.get("resource") == "dsamodels" and not ref.get("subresource"):
            if e["verb"] == "delete" and code == 200:
                exists[name] = False
            elif code == 201:
                exists[name] = True
        elif (
            e["user"]["username"] == "dsa-operator"
            and code == 201
            and ref.get("resource") != "events"
            and exists.get(name[:4]) is False  # v000-serving-0 belongs to v000
        ):
            late.append(f"{ref.get('resource')}/{name} at {e.get('stageTimestamp')}")
    return late
