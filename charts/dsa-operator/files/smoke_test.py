"""`helm test` for dsa-operator: the DSAModel API is served, and the webhook judges DSAModels.

Runs in the operator image (python + the kubernetes client) under a ServiceAccount that may
only list and (dry-run) create DSAModels in the release namespace. Exit 0 means healthy.
"""

import json
import os
import sys

from kubernetes import client, config
from kubernetes.client.rest import ApiException

GROUP, VERSION, PLURAL = "serving.dsa.dev", "v1alpha1", "dsamodels"
NS = os.environ.get("TEST_NAMESPACE") or "default"
WEBHOOK = os.environ.get("WEBHOOK_ENABLED") == "true"


def model(name: str, parallelism: dict) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DSAModel",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": {"family": "deepseek-v3.2-exp"},
            "hardware": {"accelerator": "h200"},
            "serving": {"parallelism": parallelism},
        },
    }


def main() -> int:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    items = api.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
    print(f"ok: {GROUP}/{VERSION} {PLURAL} served; {len(items)} in {NS}")
    if not WEBHOOK:
        return 0
    good = model("helm-test-valid", {"tp": 8})
    api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, good, dry_run="All")
    print("ok: the webhook admits a valid DSAModel (server dry run)")
    cp = {"mode": "in-seq-split"}  # needs tp/dp > 1: the planner refuses, the CRD schema does not
    bad = model("helm-test-invalid", {"tp": 8, "dp": 8, "attention": "dp", "contextParallel": cp})
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, bad, dry_run="All")
    except ApiException as e:
        message = json.loads(e.body or "{}").get("message", "")
        if "invalid DSAModel" in message:
            print(f"ok: the webhook refuses an invalid DSAModel: {message[:200]}")
            return 0
        print(f"FAIL: refused, but not by the planner webhook ({e.status}): {message}", file=sys.stderr)
        return 1
    print("FAIL: an invalid DSAModel was admitted: is the webhook registered?", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
