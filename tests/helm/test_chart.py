"""The chart without a cluster: lint, schema, rendering, RBAC shape, CRD copy, deploy/ freshness."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.helm.chart import CHART, DEPLOY, RENDER, ROOT, container, find, helm_path, one, render, run_helm

pytestmark = pytest.mark.skipif(helm_path() is None, reason="helm not built (tests/cluster/build.sh)")
RBAC_WRITE = {"create", "patch", "update", "delete", "deletecollection"}


def test_lint_strict() -> None:
    run_helm("lint", "--strict", str(CHART))
    for sets in (
        ["replicas=3", "watchNamespaces={a,b}"],
        ["webhook.enabled=false"],
        ["webhook.certManager.enabled=true"],
        ["webhook.tlsSource=certManager"],
        ["webhook.tlsSource=operator", "replicas=2", "watchNamespaces={a,b}"],
    ):
        run_helm("lint", "--strict", str(CHART), *[a for s in sets for a in ("--set", s)])


@pytest.mark.parametrize(
    "bad",
    [
        "nope=1",
        "image.nope=x",
        "webhook.failurePolicy=Maybe",
        "replicas=-1",
        "image.digest=latest",
        "webhook.tlsSource=vault",
    ],
)
def test_schema_refuses(bad: str) -> None:
    r = run_helm("template", "x", str(CHART), "--set", bad, check=False)
    assert r.returncode != 0 and "schema" in r.stderr.lower(), r.stderr


def test_crd_copy_equals_source() -> None:
    names = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert names == ["serving.dsa.dev_dsaevaluations.yaml", "serving.dsa.dev_dsamodels.yaml"]
    assert names == sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    for name in names:
        assert (CHART / "crds" / name).read_text() == (ROOT / "crds" / name).read_text(), (
            "charts/dsa-operator/crds is stale: make crd"
        )


def test_deploy_is_fresh(tmp_path) -> None:
    subprocess.run(["bash", str(RENDER), str(tmp_path)], check=True, capture_output=True, env=None)
    for name in ("crds.yaml", "dsa-operator.yaml"):
        assert (tmp_path / name).read_text() == (DEPLOY / name).read_text(), (
            f"deploy/{name} is stale: run charts/render-deploy.sh"
        )


def test_deploy_render_is_deterministic_and_has_the_webhook(tmp_path) -> None:
    """deploy/ carries no key or certificate (the operator makes them), yet registers the webhook."""
    text = (DEPLOY / "dsa-operator.yaml").read_text()
    assert "BEGIN" not in text and "caBundle" not in text
    docs = [d for d in yaml.safe_load_all(text) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds[0] == "Namespace" and "Deployment" in kinds and "helm.sh/hook" not in text
    assert "ValidatingWebhookConfiguration" in kinds and "Secret" not in kinds
    assert "--webhook-tls-secret=dsa-operator-webhook-tls" in container(docs)["args"]


def test_defaults() -> None:
    objs = render()
    c = container(objs)
    assert c["image"] == "ghcr.io/dsa-operator/dsa-operator:0.1.0"
    assert c["args"][0] == "run" and "--leader-elect" not in c["args"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in c["args"]
    assert not any(a.startswith("--webhook-managed") for a in c["args"])
    assert {"--webhook-port=9443", "--webhook-cert=/etc/dsa-operator/webhook/tls.crt"} <= set(c["args"])
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz?probe=liveness", "port": "healthz"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    sc, pod = c["securityContext"], one(objs, "Deployment")["spec"]["template"]["spec"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
    assert not sc["allowPrivilegeEscalation"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] and psc["runAsUser"] > 0 and psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert {e["name"] for e in c["env"]} >= {"POD_NAME", "POD_NAMESPACE"}
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert not find(objs, "Role", "dsa-operator-leader-election")  # no Lease rights without it


def test_image_overrides() -> None:
    digest = "sha256:" + "a" * 64
    c = container(render("image.repository=r.example/op", "image.tag=1.2.3", f"image.digest={digest}"))
    assert c["image"] == f"r.example/op:1.2.3@{digest}"


def test_replicas_turn_on_leader_election() -> None:
    objs = render("replicas=2")
    c = container(objs)
    assert "--leader-elect" in c["args"] and "--leader-namespace=dsa-system" in c["args"]
    # A standby answers the liveness query (alive) but not readiness: webhook traffic stays on the leader.
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz?probe=liveness"
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    role = one(objs, "Role", "dsa-operator-leader-election")
    assert role["metadata"]["namespace"] == "dsa-system"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["dsa-operator"],
            "verbs": ["get", "update"],
        },
    ]
    assert "strategy" not in one(objs, "Deployment")["spec"]


def _all_rules(objs: list[dict]) -> list[dict]:
    return [r for o in objs if o["kind"] in ("Role", "ClusterRole") for r in o["rules"]]


def test_rbac_is_exact_and_without_wildcards() -> None:
    for objs in (render(), render("watchNamespaces={llm}", "replicas=2")):
        for rule in _all_rules(objs):
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
    cluster_role = one(render(), "ClusterRole")
    grants = {
        (g, r, v)
        for rule in cluster_role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert ("serving.dsa.dev", "dsamodels/status", "patch") in grants
    # A group restarts as a whole (deletecollection); a restart recorded before the operator died is
    # finished pod by pod, by uid (delete). Pods are never created, updated or patched.
    assert ("", "pods", "deletecollection") in grants and ("", "pods", "delete") in grants
    assert not {("", "pods", v) for v in ("create", "update", "patch")} & grants
    # Nodes: read one by name (a pod's node, to tell a lost node), never list or change them.
    assert {v for g, r, v in grants if (g, r) == ("", "nodes")} == {"get"}
    assert ("", "namespaces", "list") not in grants  # cluster-wide kopf does not scan namespaces
    assert ("", "secrets", "get") not in {(g, r, v) for g, r, v in grants}
    # Evaluations: read them, write their status; their Jobs are created, patched (the result) and
    # deleted (a superseded run); a running one's progress is read from its pod's log.
    assert {v for g, r, v in grants if (g, r) == ("serving.dsa.dev", "dsaevaluations")} == {
        "get",
        "list",
        "watch",
    }
    assert ("serving.dsa.dev", "dsaevaluations/status", "patch") in grants
    assert {v for g, r, v in grants if (g, r) == ("batch", "jobs")} & RBAC_WRITE == {
        "create",
        "patch",
        "delete",
    }
    assert {v for g, r, v in grants if (g, r) == ("", "pods/log")} == {"get"}
    for group, resource in (
        ("", "configmaps"),
        ("rbac.authorization.k8s.io", "roles"),
        ("apps", "statefulsets"),
    ):
        assert {v for g, r, v in grants if (g, r) == (group, resource)} & RBAC_WRITE == {
            "create",
            "patch",
            "delete",
        }


def test_watch_namespaces_use_roles() -> None:
    objs = render("watchNamespaces={llm,batch}")
    cluster_role = one(objs, "ClusterRole")
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {
        "customresourcedefinitions",
        "namespaces",
        "nodes",
    }
    roles = {o["metadata"]["namespace"] for o in find(objs, "Role", "dsa-operator")}
    bindings = {o["metadata"]["namespace"] for o in find(objs, "RoleBinding", "dsa-operator")}
    assert roles == bindings == {"llm", "batch"}
    args = container(objs)["args"]
    assert "--namespace=llm" in args and "--namespace=batch" in args
    vwc = one(objs, "ValidatingWebhookConfiguration")
    assert vwc["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["llm", "batch"]


@pytest.mark.parametrize(
    "hook_id, plural", [("dsamodel-planner", "dsamodels"), ("dsaevaluation-check", "dsaevaluations")]
)
def test_webhook_matches_kopf(hook_id: str, plural: str) -> None:
    """Path, rules and failure policy are what kopf would register for each handler itself."""
    import kopf
    from kopf._cogs.structs import references
    from kopf._core.engines.admission import build_webhooks

    from dsa_operator import handlers

    registry = kopf.get_default_registry()

    def registered() -> list:
        return [h for h in registry._webhooks.get_all_handlers() if h.id == hook_id]

    if not registered() and hasattr(handlers, "register_webhook"):  # registered with a webhook port only
        handlers.register_webhook()
    webhook_handlers = registered()
    assert webhook_handlers, f"no kopf webhook handler with id {hook_id}"
    resource = references.Resource("serving.dsa.dev", "v1alpha1", plural, namespaced=True)
    client = {"service": {"name": "dsa-operator-webhook", "namespace": "dsa-system", "port": 443}}
    (kopf_hook,) = build_webhooks(
        webhook_handlers, resources=[resource], name_suffix="x", client_config=client
    )
    hooks = one(render(), "ValidatingWebhookConfiguration")["webhooks"]
    assert [h["name"] for h in hooks] == [
        "dsamodel-planner.serving.dsa.dev",
        "dsaevaluation-check.serving.dsa.dev",
    ]
    (hook,) = [h for h in hooks if h["name"] == f"{hook_id}.serving.dsa.dev"]
    assert hook["clientConfig"]["service"]["path"] == kopf_hook["clientConfig"]["service"]["path"]
    assert hook["failurePolicy"] == kopf_hook["failurePolicy"] == "Fail"
    assert hook["sideEffects"] == kopf_hook["sideEffects"]
    (rule,) = hook["rules"]
    (kopf_rule,) = kopf_hook["rules"]
    for key in ("apiGroups", "apiVersions", "resources"):
        assert rule[key] == kopf_rule[key]
    assert sorted(rule["operations"]) == sorted(kopf_rule["operations"]) == ["CREATE", "UPDATE"]
    assert set(hook["admissionReviewVersions"]) <= set(kopf_hook["admissionReviewVersions"])


def test_webhook_tls_is_consistent(tmp_path) -> None:
    import base64

    objs = render()
    secret = one(objs, "Secret", "dsa-operator-webhook-tls")
    vwc = one(objs, "ValidatingWebhookConfiguration")
    assert vwc["webhooks"][0]["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    for key in ("ca.crt", "tls.crt"):
        (tmp_path / key).write_bytes(base64.b64decode(secret["data"][key]))
    r = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "tls.crt")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(tmp_path / "tls.crt")],
        capture_output=True,
        text=True,
    )
    assert "DNS:dsa-operator-webhook.dsa-system.svc" in r.stdout, r.stdout


def test_cert_manager_mode() -> None:
    objs = render("webhook.certManager.enabled=true")
    assert not find(objs, "Secret")
    cert = one(objs, "Certificate")
    assert cert["spec"]["secretName"] == "dsa-operator-webhook-tls"
    assert one(objs, "Issuer")["spec"] == {"selfSigned": {}}
    vwc = one(objs, "ValidatingWebhookConfiguration")
    assert (
        vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "dsa-system/dsa-operator-webhook"
    )
    assert "caBundle" not in vwc["webhooks"][0]["clientConfig"]
    objs = render(
        "webhook.certManager.enabled=true",
        "webhook.certManager.issuerRef.name=corp",
        "webhook.certManager.issuerRef.kind=ClusterIssuer",
    )
    assert (
        not find(objs, "Issuer") and one(objs, "Certificate")["spec"]["issuerRef"]["kind"] == "ClusterIssuer"
    )


def test_webhook_disabled() -> None:
    objs = render("webhook.enabled=false")
    assert not find(objs, "ValidatingWebhookConfiguration") and not find(objs, "Secret")
    assert not find(objs, "Service")
    assert not any(a.startswith("--webhook") for a in container(objs)["args"])


def test_helm_test_hook() -> None:
    objs = render()
    pod = one(objs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = pod["spec"]["containers"][0]
    assert c["image"] == container(objs)["image"] and c["command"] == ["python", "-c"]
    assert c["args"][0] == (CHART / "files/smoke_test.py").read_text()
    (role,) = [o for o in find(objs, "Role") if o["metadata"]["name"].endswith("-test")]
    assert role["rules"] == [
        {"apiGroups": ["serving.dsa.dev"], "resources": ["dsamodels"], "verbs": ["list", "create"]}
    ]
    assert not find(render("tests.enabled=false"), "Pod")


def test_operator_tls_mode() -> None:
    """webhook.tlsSource=operator: no Secret content, the operator's flags, a writable in-memory
    volume for the cert files, and RBAC for exactly the one Secret and webhook configuration."""
    objs = render("webhook.tlsSource=operator")
    assert not find(objs, "Secret") and not find(objs, "Certificate") and not find(objs, "Issuer")
    one(objs, "Service", "dsa-operator-webhook")
    vwc = one(objs, "ValidatingWebhookConfiguration", "dsa-operator")
    client = vwc["webhooks"][0]["clientConfig"]
    assert "caBundle" not in client and "annotations" not in vwc["metadata"]
    assert client["service"] == {
        "name": "dsa-operator-webhook",
        "namespace": "dsa-system",
        "path": "/dsamodel-planner",
        "port": 443,
    }
    c = container(objs)
    assert {
        "--webhook-port=9443",
        "--webhook-cert=/etc/dsa-operator/webhook/tls.crt",
        "--webhook-key=/etc/dsa-operator/webhook/tls.key",
        "--webhook-tls-secret=dsa-operator-webhook-tls",
        "--webhook-service=dsa-operator-webhook",
        "--webhook-configuration=dsa-operator",
        "--webhook-cert-days=3650",
    } <= set(c["args"])
    assert not any(a.startswith("--webhook-managed") for a in c["args"])
    assert {"name": "webhook-tls", "mountPath": "/etc/dsa-operator/webhook"} in c["volumeMounts"]
    volumes = one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    (vol,) = [v for v in volumes if v["name"] == "webhook-tls"]
    assert vol == {"name": "webhook-tls", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}

    role = one(objs, "Role", "dsa-operator-webhook-tls")
    assert role["metadata"]["namespace"] == "dsa-system"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["dsa-operator-webhook-tls"],
            "verbs": ["get", "update"],
        },
    ]
    binding = one(objs, "RoleBinding", "dsa-operator-webhook-tls")
    assert binding["roleRef"]["name"] == "dsa-operator-webhook-tls"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "dsa-operator", "namespace": "dsa-system"}
    ]
    vwc_rules = [
        r for r in one(objs, "ClusterRole")["rules"] if "validatingwebhookconfigurations" in r["resources"]
    ]
    assert vwc_rules == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["validatingwebhookconfigurations"],
            "resourceNames": ["dsa-operator"],
            "verbs": ["get", "patch"],
        }
    ]
    # No secret rights anywhere else; none of it in the other modes.
    assert [r for r in _all_rules(objs) if "secrets" in r["resources"]] == role["rules"]
    for other in (render(), render("webhook.tlsSource=certManager"), render("webhook.enabled=false")):
        assert not find(other, "Role", "dsa-operator-webhook-tls")
        assert not [r for r in _all_rules(other) if "validatingwebhookconfigurations" in r["resources"]]
        assert not any(a.startswith("--webhook-tls-secret") for a in container(other)["args"])
    # With watchNamespaces the Secret Role stays in the release namespace, the rule in the ClusterRole.
    objs = render("webhook.tlsSource=operator", "watchNamespaces={llm}")
    assert one(objs, "Role", "dsa-operator-webhook-tls")["metadata"]["namespace"] == "dsa-system"
    assert any("validatingwebhookconfigurations" in r["resources"] for r in one(objs, "ClusterRole")["rules"])


def test_tls_source_spellings() -> None:
    """certManager.enabled (older) and tlsSource=certManager render the same; a contradiction fails."""
    assert render("webhook.certManager.enabled=true") == render("webhook.tlsSource=certManager")
    r = run_helm(
        "template",
        "x",
        str(CHART),
        "--set",
        "webhook.certManager.enabled=true",
        "--set",
        "webhook.tlsSource=operator",
        check=False,
    )
    assert r.returncode != 0 and "contradicts" in r.stderr, r.stderr
    r = run_helm(
        "template",
        "x",
        str(CHART),
        "--set",
        "webhook.tlsSource=operator",
        "--set",
        "webhook.certValidityDays=7",
        check=False,
    )
    assert r.returncode != 0 and "at least 31" in r.stderr, r.stderr
