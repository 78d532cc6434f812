"""Runs the real operator (`python -m dsa_operator run`) against the test cluster, as a local process.

Why not in the cluster: the control plane's nodes are kwok's, which run no containers, so the
operator image cannot run there, and nothing would answer at its pod's address or behind its
Service (no kube-proxy either). A local process with a ServiceAccount's token
(cluster.sa_kubeconfig) has the pod's rights; its webhook listens on loopback, where the API
server can call it. The image itself runs in-cluster, on real nodes, in
tests/integration/test_real_serving.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.cluster.harness import _free_ports
from tests.processes import stop_group

ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_CONFIG = "dsa-operator.serving.dsa.dev"


class Operator:
    """One operator process; `logs()` reads what it printed."""

    def __init__(
        self,
        cluster,
        kubeconfig: Path,
        name: str = "operator",
        webhook: bool = True,
        extra: tuple[str, ...] = (),
        managed: bool = True,
        env: dict[str, str] | None = None,
    ):
        """`managed`: kopf keeps the webhook configuration itself (--webhook-managed); otherwise
        the operator only serves it, as under the Helm chart, which registers it. `env`: added to
        the process's environment (e.g. POD_NAMESPACE, which a pod gets from the downward API)."""
        self.cluster = cluster
        self.kubeconfig = kubeconfig
        self.log_file = cluster.workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.webhook, self.managed = webhook, managed
        self.extra = extra
        self.env = env or {}
        self.liveness_port, self.webhook_port = _free_ports(2)

    def start(self) -> Operator:
        args = [
            sys.executable,
            "-m",
            "dsa_operator",
            "run",
            f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz",
            *self.extra,
        ]
        if self.webhook:
            cert, key = self.cluster.mint_serving_cert("operator-webhook")
            args += [
                f"--webhook-port={self.webhook_port}",
                "--webhook-addr=127.0.0.1",
                "--webhook-host=127.0.0.1",
                f"--webhook-cert={cert}",
                f"--webhook-key={key}",
            ]
            if self.managed:
                args.append(f"--webhook-managed={WEBHOOK_CONFIG}")
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), PYTHONUNBUFFERED="1", **self.env)
        self.out = open(self.log_file, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, stdout=self.out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
        return self

    def wait_webhook(self, timeout: float = 60) -> None:
        """Until the API server has the webhook configuration kopf keeps (caBundle included)."""

        def configured():
            r = self.cluster.kubectl(
                "get", "validatingwebhookconfiguration", WEBHOOK_CONFIG, "-o", "json", check=False
            )
            return r.returncode == 0 and json.loads(r.stdout).get("webhooks")

        self.cluster.wait_for(configured, timeout=timeout, what="the operator's webhook configuration")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_group(self.proc, sig)
        if self.proc:
            self.out.close()
            self.proc = None

    def wait_healthy(self, timeout: float = 60) -> None:
        """Until kopf's liveness endpoint answers (the operator is up and watching)."""

        def ok() -> bool:
            assert self.alive(), f"operator exited:\n{self.logs()[-3000:]}"
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                return r.status == 200

        self.cluster.wait_for(ok, timeout=timeout, what="operator /healthz")

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def admin_operator(cluster, webhook: bool = True) -> Iterator[Operator]:
    """The CRDs installed and one operator running with cluster-admin rights (its webhook
    registered when `webhook`); stopped afterwards, and its log must hold no traceback."""
    install_crd(cluster)
    kubeconfig = cluster.mint_user("dsa-operator", groups=["system:masters"])
    o = Operator(cluster, kubeconfig, webhook=webhook).start()
    try:
        if webhook:
            o.wait_webhook()
        yield o
    finally:
        o.stop()
        assert "Traceback" not in o.logs(), o.logs()[-4000:]


def install_crd(cluster) -> None:
    """The DSAModel CRD from crds/, served."""
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    cluster.wait_established("dsamodels.serving.dsa.dev")


def wait_phase(cluster, name: str, ns: str, phase: str, timeout: float = 60) -> dict:
    def check():
        r = cluster.kubectl("get", "dsamodel", name, "-n", ns, "-o", "json", check=False)
        if r.returncode:
            return None
        obj = json.loads(r.stdout)
        status = obj.get("status", {})
        current = status.get("observedGeneration") == obj["metadata"].get("generation")
        return obj if current and status.get("phase") == phase else None

    try:
        return cluster.wait_for(check, timeout=timeout, interval=0.2, what=f"{ns}/{name} phase {phase}")
    except TimeoutError:
        r = cluster.kubectl("get", "dsamodel", name, "-n", ns, "-o", "yaml", check=False)
        raise TimeoutError(f"{ns}/{name} never reached {phase}:\n{r.stdout}") from None


def now() -> float:
    return time.monotonic()
