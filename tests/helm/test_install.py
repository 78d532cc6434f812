"""The chart on the real control plane: server-side validation, install, upgrade, uninstall, and the
operator running with exactly the chart's rights (its ServiceAccount's token).

The operator runs as a local process, not as the chart's pod: the nodes are kwok's, which run no
containers (tests/integration/operator_proc.py says more); point_webhook sends the chart's webhook
to it. The chart in-cluster, on real nodes, is tests/integration/test_real_serving.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
import yaml

from tests.helm.chart import CHART, ROOT, objects, template
from tests.integration.operator_proc import Operator

pytestmark = pytest.mark.integration
EXAMPLES = ROOT / "examples"
CRD = "dsamodels.serving.dsa.dev"


def ensure_ns(cluster, name: str) -> None:
    cluster.kubectl("create", "namespace", name, check=False)


def wait_phase(cluster, ns: str, name: str, phase: str, timeout: float = 120) -> dict:
    def check():
        obj = cluster.kubectl_json("get", "dsamodel", name, "-n", ns)
        return obj if obj.get("status", {}).get("phase") == phase else None

    try:
        return cluster.wait_for(check, timeout=timeout, interval=0.5, what=f"{ns}/{name} phase {phase}")
    except TimeoutError:
        r = cluster.kubectl("get", "dsamodel", name, "-n", ns, "-o", "yaml", check=False)
        raise TimeoutError(f"{ns}/{name} never reached {phase}:\n{r.stdout}") from None


def point_webhook(cluster, vwc: str, op: Operator) -> None:
    """The API server cannot reach pods of kwok nodes: send the chart's webhook to the local operator
    (same rules, path and failure policy; only the address and CA differ)."""
    path = cluster.kubectl_json("get", "validatingwebhookconfiguration", vwc)["webhooks"][0]["clientConfig"]
    url = (
        f"https://127.0.0.1:{op.webhook_port}{path['service']['path']}" if "service" in path else path["url"]
    )
    patch = [
        {
            "op": "replace",
            "path": "/webhooks/0/clientConfig",
            "value": {"url": url, "caBundle": cluster.ca_bundle_b64},
        }
    ]
    cluster.kubectl("patch", "validatingwebhookconfiguration", vwc, "--type=json", "-p", json.dumps(patch))


def repoint_webhook(cluster, vwc: str, op: Operator) -> None:
    hook = cluster.kubectl_json("get", "validatingwebhookconfiguration", vwc)["webhooks"][0]
    url = hook["clientConfig"]["url"].rsplit("/", 1)[1]
    patch = [
        {
            "op": "replace",
            "path": "/webhooks/0/clientConfig/url",
            "value": f"https://127.0.0.1:{op.webhook_port}/{url}",
        }
    ]
    cluster.kubectl("patch", "validatingwebhookconfiguration", vwc, "--type=json", "-p", json.dumps(patch))


MODEL_NAMESPACES: list[str] = []


def model_ns(cluster) -> str:
    name = f"m-{uuid.uuid4().hex[:6]}"
    ensure_ns(cluster, name)
    MODEL_NAMESPACES.append(name)
    return name


@pytest.fixture(autouse=True, scope="module")
def free_gpus(cluster):
    """Delete the models' namespaces after the module: 4 fake nodes hold only a few models."""
    yield
    while MODEL_NAMESPACES:
        cluster.kubectl(
            "delete", "namespace", MODEL_NAMESPACES.pop(), "--wait=true", "--timeout=60s", check=False
        )


# ---------------------------------------------------------------------------------------------
def test_templates_validate_on_the_api_server(cluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    for ns in ("dry-system", "dry-a", "dry-b"):
        ensure_ns(cluster, ns)
    for sets in (
        [],
        ["replicas=2", "watchNamespaces={dry-a,dry-b}"],
        ["webhook.enabled=false"],
        ["webhook.tlsSource=operator", "watchNamespaces={dry-a}"],
    ):
        text = template(*sets, release="dry", namespace="dry-system", extra=("--skip-tests",))
        r = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=text, check=False)
        assert r.returncode == 0, f"{sets}: {r.stderr}"
        assert len(r.stdout.strip().splitlines()) == len(objects(text)), r.stdout
    # The `helm test` hook: its Pod needs its ServiceAccount to exist, even in a dry run.
    hooks = objects(
        template(
            release="dry", namespace="dry-system", extra=("--show-only", "templates/tests/test-api.yaml")
        )
    )
    cluster.apply([o for o in hooks if o["kind"] == "ServiceAccount"])
    r = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": hooks}),
        check=False,
    )
    assert r.returncode == 0, r.stderr
    r = cluster.kubectl("apply", "--dry-run=server", "-f", str(ROOT / "deploy/crds.yaml"), check=False)
    assert r.returncode == 0, r.stderr


def _by_instance(cluster, release: str, ns: str) -> dict[str, list[str]]:
    sel = f"app.kubernetes.io/instance={release}"
    found = {}
    for kinds, scope in (
        ("deployment,serviceaccount,service,secret,role,rolebinding,pod", ["-n", ns]),
        ("clusterrole,clusterrolebinding,validatingwebhookconfiguration", []),
    ):
        out = cluster.kubectl("get", kinds, *scope, "-l", sel, "-o", "name").stdout.split()
        found.update({n: [] for n in out})
    return found


def test_install_upgrade_uninstall(cluster) -> None:
    rel, ns = "lc", "lc-system"
    r = cluster.helm("install", rel, str(CHART), "-n", ns, "--create-namespace")
    try:
        assert "port-forward svc/dsv32-exp-tp 8000" in r.stdout and "/v1/models" in r.stdout, r.stdout
        cluster.wait_established(CRD)
        names = set(_by_instance(cluster, rel, ns))
        for want in (
            "deployment.apps/lc-dsa-operator",
            "serviceaccount/lc-dsa-operator",
            "service/lc-dsa-operator-webhook",
            "secret/lc-dsa-operator-webhook-tls",
            "clusterrole.rbac.authorization.k8s.io/lc-dsa-operator",
            "clusterrolebinding.rbac.authorization.k8s.io/lc-dsa-operator",
            "validatingwebhookconfiguration.admissionregistration.k8s.io/lc-dsa-operator",
        ):
            assert want in names, names
        cluster.kubectl("rollout", "status", "deployment/lc-dsa-operator", "-n", ns, "--timeout=60s")
        secret = cluster.kubectl_json("get", "secret", "lc-dsa-operator-webhook-tls", "-n", ns)["data"]
        hook = cluster.kubectl_json("get", "validatingwebhookconfiguration", "lc-dsa-operator")["webhooks"][0]
        assert hook["clientConfig"]["caBundle"] == secret["ca.crt"]
        dep = cluster.kubectl_json("get", "deployment", "lc-dsa-operator", "-n", ns)
        c = dep["spec"]["template"]["spec"]["containers"][0]
        assert "--leader-elect" not in c["args"] and dep["spec"]["replicas"] == 1

        cluster.helm(
            "upgrade",
            rel,
            str(CHART),
            "-n",
            ns,
            "--set",
            "replicas=2",
            "--set",
            "resources.requests.cpu=250m",
            "--set",
            "resources.limits.memory=1Gi",
        )
        dep = cluster.kubectl_json("get", "deployment", "lc-dsa-operator", "-n", ns)
        c = dep["spec"]["template"]["spec"]["containers"][0]
        assert dep["spec"]["replicas"] == 2
        assert {"--leader-elect", "--leader-namespace=lc-system", "--leader-lease=dsa-operator"} <= set(
            c["args"]
        )
        assert c["resources"]["requests"]["cpu"] == "250m" and c["resources"]["limits"]["memory"] == "1Gi"
        assert "livenessProbe" in c and "readinessProbe" in c
        cluster.kubectl("get", "role,rolebinding", "lc-dsa-operator-leader-election", "-n", ns)
        assert (
            cluster.kubectl(
                "auth",
                "can-i",
                "update",
                "leases/dsa-operator",
                "-n",
                ns,
                "--as=system:serviceaccount:lc-system:lc-dsa-operator",
                check=False,
            ).stdout.strip()
            == "yes"
        )
        # The TLS is reused on upgrade (lookup), so the CA bundle stays valid.
        assert (
            cluster.kubectl_json("get", "secret", "lc-dsa-operator-webhook-tls", "-n", ns)["data"] == secret
        )
        hook = cluster.kubectl_json("get", "validatingwebhookconfiguration", "lc-dsa-operator")["webhooks"][0]
        assert hook["clientConfig"]["caBundle"] == secret["ca.crt"]
    finally:
        cluster.helm("uninstall", rel, "-n", ns, "--wait", check=False)
    cluster.wait_for(
        lambda: not _by_instance(cluster, rel, ns), timeout=60, what="the release's objects gone"
    )
    cluster.kubectl("get", "crd", CRD)  # CRDs stay (helm never deletes crds/)


# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ops(cluster):
    """Release `ops` installed; the operator runs locally with the chart ServiceAccount's token and
    serves the webhook the chart registers."""
    rel, ns = "ops", "ops-system"
    cluster.helm("install", rel, str(CHART), "-n", ns, "--create-namespace")
    kubeconfig = cluster.sa_kubeconfig(ns, "ops-dsa-operator", create=False)
    op = Operator(cluster, kubeconfig, "ops-operator", webhook=True, managed=False).start()
    try:
        op.wait_healthy()
        point_webhook(cluster, "ops-dsa-operator", op)
        yield op
    finally:
        op.stop()
        cluster.helm("uninstall", rel, "-n", ns, "--wait", check=False)


def test_chart_webhook_refuses_invalid_model(cluster, ops) -> None:
    ns = model_ns(cluster)
    bad = {
        "apiVersion": "serving.dsa.dev/v1alpha1",
        "kind": "DSAModel",
        "metadata": {"name": "bad", "namespace": ns},
        "spec": {
            "model": {"family": "deepseek-v3.2-exp"},
            "hardware": {"accelerator": "h200"},
            "serving": {
                "parallelism": {
                    "tp": 8,
                    "dp": 8,
                    "attention": "dp",
                    "contextParallel": {"mode": "in-seq-split"},
                }
            },
        },
    }
    r = cluster.apply(bad, check=False)
    assert r.returncode != 0 and "invalid DSAModel" in r.stderr, r.stderr
    assert "spec.serving.parallelism.contextParallel.mode" in r.stderr


def test_api_server_and_webhook_refuse_an_invalid_evaluation(cluster, ops) -> None:
    """The CRD's rules refuse a bad DSAEvaluation at the field's own path before anything is stored:
    a setting its suite does not take (CEL, naming the suite given), a score out of range."""
    ns = model_ns(cluster)
    bad = {
        "apiVersion": "serving.dsa.dev/v1alpha1",
        "kind": "DSAEvaluation",
        "metadata": {"name": "bad", "namespace": ns},
        "spec": {"model": "m", "suite": "aime25", "settings": {"numShots": 8}},
    }
    r = cluster.apply(bad, check=False)
    assert r.returncode != 0, r.stdout
    assert "spec.settings.numShots" in r.stderr and "applies to gsm8k only, not aime25" in r.stderr, r.stderr
    bad["spec"] = {"model": "m", "suite": "gsm8k", "expected": {"score": 1.5}}
    r = cluster.apply(bad, check=False)
    assert r.returncode != 0 and "spec.expected.score" in r.stderr, r.stderr
    assert cluster.kubectl_json("get", "dsaevaluations", "-n", ns)["items"] == []


def test_operator_with_chart_rights_reconciles_to_ready(cluster, ops) -> None:
    ns = model_ns(cluster)
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "03-pure-tp.yaml"))
    obj = wait_phase(cluster, ns, "dsv32-exp-tp", "Ready")
    assert obj["status"].get("endpoint")
    logs = ops.logs()
    assert "API error 403" not in logs and "Forbidden" not in logs and "Traceback" not in logs, logs[-4000:]


def pd_model_with_router(cluster) -> tuple[str, str]:
    """The PD example in a fresh namespace, once the operator made its router's RoleBinding:
    (namespace, the router's ServiceAccount)."""
    ns = model_ns(cluster)
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "12-pd.yaml"))
    router = "dsv32-exp-pd-router"
    cluster.wait_for(
        lambda: cluster.kubectl("get", "rolebinding", router, "-n", ns, check=False).returncode == 0,
        timeout=60,
        what="the router's RoleBinding",
    )
    return ns, router


def test_router_runs_with_the_rights_the_operator_gives_it(cluster, ops) -> None:
    """The router's Role (pods get/list/watch in its namespace, nothing else: the least-privilege
    matrix below) is enough for the model to become Ready."""
    ns, _ = pd_model_with_router(cluster)
    wait_phase(cluster, ns, "dsv32-exp-pd", "Ready")


def test_helm_test_script_passes(cluster, ops) -> None:
    """The `helm test` Pod's script, run here (kwok runs no containers) under the hook's ServiceAccount."""
    text = template(
        release="ops", namespace="ops-system", extra=("--show-only", "templates/tests/test-api.yaml")
    )
    cluster.apply([o for o in objects(text) if o["kind"] != "Pod"])
    kubeconfig = cluster.sa_kubeconfig("ops-system", "ops-dsa-operator-test", create=False)
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), TEST_NAMESPACE="ops-system", WEBHOOK_ENABLED="true")
    r = subprocess.run(
        [sys.executable, str(CHART / "files/smoke_test.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "refuses an invalid DSAModel" in r.stdout


# ---- least privilege, shown -------------------------------------------------------------------
# (verb, resource, where, expected): where is "model" (a namespace holding DSAModels), "release"
# (the chart's namespace), "all" (--all-namespaces) or "cluster" (cluster-scoped); resource/NAME
# names one object, resource#SUB a subresource.
OPERATOR_MATRIX = [
    *[(v, "dsamodels.serving.dsa.dev", "all", "yes") for v in ("get", "list", "watch")],
    ("patch", "dsamodels.serving.dsa.dev#status", "model", "yes"),
    *[(v, "dsamodels.serving.dsa.dev", "model", "no") for v in ("create", "update", "patch", "delete")],
    *[(v, "pods", "model", "yes") for v in ("list", "watch", "delete", "deletecollection")],
    *[(v, "pods", "model", "no") for v in ("create", "update", "patch")],
    ("create", "pods#exec", "model", "no"),
    ("get", "pods#log", "model", "yes"),  # an evaluation's progress line
    *[(v, "dsaevaluations.serving.dsa.dev", "all", "yes") for v in ("get", "list", "watch")],
    ("patch", "dsaevaluations.serving.dsa.dev#status", "model", "yes"),
    *[(v, "dsaevaluations.serving.dsa.dev", "model", "no") for v in ("create", "patch", "delete")],
    *[(v, "jobs.batch", "model", "yes") for v in ("create", "patch", "delete", "list", "watch")],
    ("update", "jobs.batch", "model", "no"),
    ("create", "cronjobs.batch", "model", "no"),
    *[(v, r, "model", "yes") for r in ("statefulsets.apps", "deployments.apps") for v in ("create", "patch")],
    *[(v, "secrets", w, "no") for v in ("get", "list", "watch", "create") for w in ("model", "all")],
    # webhook.tlsSource=helm (the default): the kubelet mounts the TLS Secret; the operator reads none.
    ("get", "secrets/ops-dsa-operator-webhook-tls", "release", "no"),
    ("list", "secrets", "release", "no"),
    ("create", "events", "model", "yes"),
    ("delete", "namespaces", "cluster", "no"),
    ("get", "nodes", "cluster", "yes"),
    *[(v, "nodes", "cluster", "no") for v in ("list", "watch", "patch", "delete")],
    ("create", "clusterroles.rbac.authorization.k8s.io", "cluster", "no"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", "cluster", "no"),
    ("escalate", "roles.rbac.authorization.k8s.io", "model", "no"),
    ("bind", "roles.rbac.authorization.k8s.io", "model", "no"),
    ("patch", "validatingwebhookconfigurations/ops-dsa-operator", "cluster", "no"),
    ("create", "validatingwebhookconfigurations", "cluster", "no"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", "cluster", "no"),
]
ROUTER_MATRIX = [
    *[(v, "pods", "model", "yes") for v in ("get", "list", "watch")],
    ("list", "pods", "all", "no"),
    ("list", "pods", "release", "no"),
    *[(v, "pods", "model", "no") for v in ("create", "delete", "patch")],
    *[
        (v, r, "model", "no")
        for r in ("secrets", "configmaps", "services", "endpoints")
        for v in ("get", "list")
    ],
    *[(v, "dsamodels.serving.dsa.dev", "model", "no") for v in ("get", "list", "patch")],
    ("create", "events", "model", "no"),
    ("list", "nodes", "cluster", "no"),
]


def test_least_privilege_matrix(cluster, ops) -> None:
    """What the operator's ServiceAccount (as the chart installs it) and a router's (as the operator
    creates it) may and may not do: `kubectl auth can-i`, row by row."""
    ns, router = pd_model_with_router(cluster)
    where = {
        "model": ("-n", ns),
        "release": ("-n", "ops-system"),
        "all": ("--all-namespaces",),
        "cluster": (),
    }
    wrong, lines = [], []
    for who, matrix in (
        ("system:serviceaccount:ops-system:ops-dsa-operator", OPERATOR_MATRIX),
        (f"system:serviceaccount:{ns}:{router}", ROUTER_MATRIX),
    ):
        for verb, resource, scope, want in matrix:
            res, _, sub = resource.partition("#")
            extra = (f"--subresource={sub}",) if sub else ()
            got = cluster.kubectl(
                "auth", "can-i", verb, res, *extra, *where[scope], f"--as={who}", check=False
            )
            answer = got.stdout.strip() or got.stderr.strip()
            lines.append(f"{who.rsplit(':', 1)[1]:<22} {verb:<17} {resource:<52} {scope:<8} {answer}")
            if answer != want:
                wrong.append((who, verb, resource, scope, want, answer))
    print("\nFIGURE least-privilege matrix (kubectl auth can-i):\n" + "\n".join(lines))
    assert wrong == []


def test_operator_without_a_rule_fails_loudly(cluster, ops) -> None:
    """The chart's ClusterRole minus `patch dsamodels/status`: the operator logs the 403."""
    ops.stop()
    role = cluster.kubectl_json("get", "clusterrole", "ops-dsa-operator")
    rules = [r for r in role["rules"] if r["resources"] != ["dsamodels/status"]]
    assert len(rules) == len(role["rules"]) - 1
    broken = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "ops-broken"},
        "rules": rules,
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "ops-broken"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ops-broken"},
        "subjects": [{"kind": "ServiceAccount", "name": "broken", "namespace": "ops-system"}],
    }
    cluster.apply([broken, binding])
    op = Operator(
        cluster, cluster.sa_kubeconfig("ops-system", "broken"), "broken-operator", webhook=True, managed=False
    )
    op.start()
    try:
        op.wait_healthy()
        repoint_webhook(cluster, "ops-dsa-operator", op)
        ns = model_ns(cluster)
        cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "03-pure-tp.yaml"))

        def forbidden() -> bool:
            logs = op.logs()
            return f"reconcile of {ns}/dsv32-exp-tp" in logs and "403" in logs and "Forbidden" in logs

        cluster.wait_for(forbidden, timeout=60, what="a logged 403 (Forbidden) on the status patch")
        obj = cluster.kubectl_json("get", "dsamodel", "dsv32-exp-tp", "-n", ns)
        assert "phase" not in (obj.get("status") or {}), obj.get("status")
    finally:
        op.stop()
        cluster.kubectl("delete", "clusterrolebinding,clusterrole", "ops-broken", check=False)


def _ensure_yaml_used() -> None:  # keep the import for readers of manifests in failures
    yaml.safe_dump({})
