"""Bad input at volume: generated DSAModels (plausible, wrong-typed, unknown fields, huge numbers,
empty and junk specs) through the planner and through the API server with the operator's
admission webhook, plus malformed request bodies. No crash anywhere, every refusal names its
field paths, the webhook agrees with the planner, nothing is created for a refused object.

DSA_BAD_INPUT_N sets how many manifests (default 1000; the recorded figure used 10000).
"""

from __future__ import annotations

import collections
import json
import os
import time
import urllib.error
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from dsa_operator import GROUP, PLURAL, VERSION
from dsa_operator.errors import PlanError
from dsa_operator.planner import plan
from tests.cluster import harness
from tests.integration.operator_proc import Operator, install_crd
from tests.strategies import junk, manifests

pytestmark = pytest.mark.integration
N = int(os.environ.get("DSA_BAD_INPUT_N", "1000"))
NS = "bad-input"
STATS: collections.Counter = collections.Counter()
REAL_CREATE_EVERY = 25  # of the refused manifests, this share is also created for real (not dry run)


def huge(m: dict, value: int) -> dict:
    """The first integer field of an engine, replaced (sizes, ports, parallelism)."""
    m = json.loads(json.dumps(m))
    for role in ("serving", "prefill", "decode"):
        engine = m["spec"].get(role)
        if isinstance(engine, dict):
            for key in ("parallelism", None):
                target = engine.get(key) if key else engine
                if isinstance(target, dict):
                    for k, v in target.items():
                        if isinstance(v, int) and not isinstance(v, bool):
                            target[k] = value
                            return m
    m["spec"]["hugeField"] = value
    return m


def shell(spec) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DSAModel", "metadata": {"name": "m"}, "spec": spec}


documents = st.one_of(
    manifests(),
    st.tuples(manifests(), st.sampled_from([10**30, -(2**63), 2**31, 0, -1])).map(lambda t: huge(*t)),
    junk.map(shell),
    st.just(shell({})),
    st.just(shell(None)),
    manifests().map(
        lambda m: {**m, "spec": {**(m["spec"] if isinstance(m["spec"], dict) else {}), "x" * 300: 1}}
    ),
)


@pytest.fixture(scope="module")
def cluster():
    with harness.running(nodes=1, cpu_nodes=1) as c:
        install_crd(c)
        c.kubectl("create", "namespace", NS)
        yield c


@pytest.fixture(scope="module")
def api(cluster):
    kubeconfig = cluster.mint_user("dsa-operator", groups=["system:masters"])
    op = Operator(cluster, kubeconfig, name="bad-input").start()
    op.wait_webhook()
    user = config.new_client_from_config(
        config_file=str(cluster.mint_user("bad-input-user", ["system:masters"]))
    )
    try:
        yield client.CustomObjectsApi(user)
    finally:
        user.close()
        op.stop()
        assert "Traceback" not in op.logs(), op.logs()[-4000:]


def planner_verdict(m: dict) -> list[str] | None:
    """None when it plans; else the problems as the planner words them. Any other exception fails."""
    try:
        plan(m)
        return None
    except PlanError as e:
        assert e.problems, m
        for p in e.problems:
            assert p.path and (p.path.startswith("spec") or p.path.startswith("metadata")), p
            assert str(p).strip(), p
        return [p.path for p in e.problems]


@settings(
    max_examples=N,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(m=documents)
def test_generated_manifests(api, m):
    STATS["manifests"] += 1
    t0 = time.perf_counter()
    paths = planner_verdict({**m, "metadata": {"name": "m", "namespace": NS}})
    STATS["planner_s"] += time.perf_counter() - t0
    STATS["planned" if paths is None else "refused by the planner"] += 1
    name = f"b{STATS['manifests']}"
    body = {**m, "metadata": {"name": name}}
    try:
        # Strict, as kubectl sends it: an unknown field is refused, not silently dropped.
        api.create_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, body, dry_run="All", field_validation="Strict"
        )
        admitted, message = True, ""
    except ApiException as e:
        assert e.status < 500, (e.status, e.body, m)  # a crash or a timeout of the webhook is a 500
        admitted, message = False, e.body
    if admitted:
        STATS["admitted"] += 1
        assert paths is None, f"admitted what the planner refuses ({paths}): {m}"
        return
    webhook = "invalid DSAModel" in message
    STATS["refused by the webhook" if webhook else "refused by the schema"] += 1
    if webhook:  # the webhook quotes every problem with its field path
        assert paths is not None, f"webhook refused what the planner accepts: {message}"
        for p in paths:
            assert p in message, (p, message)
    else:  # the API server's own schema check, before the webhook: it names the field too
        assert "spec" in message or "metadata" in message, message
    if STATS["refused"] % REAL_CREATE_EVERY == 0:
        with pytest.raises(ApiException):
            api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body, field_validation="Strict")
        STATS["refused for real, checked absent"] += 1
        with pytest.raises(ApiException) as gone:
            api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
        assert gone.value.status == 404
    STATS["refused"] += 1


MALFORMED = [b"", b"{", b"[]", b"null", b'"x"', b"{}", b'{"kind": "DSAModel"}', b"\xff\xfe", b"{" * 10000]


def test_malformed_bodies_are_refused_cleanly(cluster):
    """Raw request bodies the client libraries would never send: 4xx, never 5xx, nothing stored."""
    ctx = cluster._ssl_ctx()
    crt, key = cluster.pki / "admin.crt", cluster.pki / "admin.key"
    ctx.load_cert_chain(str(crt), str(key))
    url = f"{cluster.api_url}/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}"
    codes = []
    for body in MALFORMED:
        req = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
                codes.append(r.status)
        except urllib.error.HTTPError as e:
            codes.append(e.code)
    assert all(400 <= c < 500 for c in codes), codes
    assert cluster.kubectl_json("get", "dsamodels", "-n", NS)["items"] == []


def test_bad_input_figures(cluster):
    """Runs after the generated manifests: prints what happened to them, and checks nothing stayed."""
    assert cluster.kubectl_json("get", "dsamodels", "-n", NS)["items"] == []
    if not STATS["manifests"]:
        pytest.skip("run with test_generated_manifests")
    per_ms = 1000 * STATS["planner_s"] / STATS["manifests"]
    print(
        f"\nFIGURE bad input: {STATS['manifests']} manifests, 0 crashes; planner: "
        f"{STATS['planned']} planned, {STATS['refused by the planner']} refused ({per_ms:.2f} ms each); "
        f"API: {STATS['admitted']} admitted, "
        f"{STATS['refused by the webhook']} refused by the webhook, {STATS['refused by the schema']} by the "
        f"CRD schema; {STATS['refused for real, checked absent']} "
        "refused for real and checked absent"
    )
