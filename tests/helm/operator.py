"""The operator as a local process (`python -m dsa_operator run`) with a given kubeconfig."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.cluster.harness import _free_ports
from tests.helm.chart import ROOT


class LocalOperator:
    def __init__(
        self, cluster, kubeconfig: Path, name: str, webhook: bool = False, extra: tuple[str, ...] = ()
    ):
        self.cluster, self.kubeconfig, self.webhook, self.extra = cluster, kubeconfig, webhook, extra
        self.log_file = cluster.workdir / f"{name}.log"
        self.liveness_port, self.webhook_port = _free_ports(2)
        self.proc: subprocess.Popen | None = None

    def start(self) -> LocalOperator:
        args = [
            sys.executable,
            "-m",
            "dsa_operator",
            "run",
            f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz",
        ]
        if self.webhook:  # like the chart (cert + key, no --webhook-managed), on loopback
            cert, key = self.cluster.mint_serving_cert("helm-webhook")
            args += [f"--webhook-port={self.webhook_port}", "--webhook-addr=127.0.0.1"]
            args += [f"--webhook-cert={cert}", f"--webhook-key={key}"]
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), PYTHONUNBUFFERED="1")
        self._out = open(self.log_file, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*args, *self.extra],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc:
            self._out.close()
            self.proc = None

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def wait_healthy(self, timeout: float = 60) -> None:
        import urllib.request

        def ok() -> bool:
            assert self.proc and self.proc.poll() is None, f"operator exited:\n{self.logs()[-3000:]}"
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                return r.status == 200

        self.cluster.wait_for(ok, timeout=timeout, what="operator /healthz")
