"""The webhook's self-provisioned TLS, imperative shell: the Secret, the files kopf serves, the caBundle.

`dsa-operator run --webhook-tls-secret` (what deploy/ and the chart's webhook.tlsSource=operator
use): at startup, and every CHECK_SECONDS (5 minutes) after, the operator makes sure that
  1. the Secret holds a CA and a serving certificate usable for the webhook Service's names (else it
     makes new ones and creates the Secret, or replaces the unusable one at the version it read;
     a 409 means another replica wrote first, whose TLS is then used: replicas agree),
  2. the certificate and key kopf's webhook server loads are those (kopf reloads changed files),
  3. every webhook of the ValidatingWebhookConfiguration trusts that CA (caBundle, patched only
     when it differs; right after a rotation it trusts the old CA too, until the next check).
The judgement and the certificates are webhook_tls.py's; only names and reasons are logged.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kubernetes.client.rest import ApiException

from dsa_operator import webhook_tls
from dsa_operator.kube import Kube
from dsa_operator.webhook_tls import Tls

log = logging.getLogger(__name__)
# Two GETs per check. Renewal comes RENEW_BEFORE (30 days) ahead; the short period is for a caBundle
# or Secret someone else removed (e.g. `helm upgrade` from tlsSource=helm drops both).
CHECK_SECONDS = 300.0
WRITE_ATTEMPTS = 3


@dataclass(frozen=True)
class Provision:
    """What `dsa-operator run` was told: where the TLS lives, which names it serves, whom to tell."""

    secret: str
    namespace: str
    names: tuple[str, ...]  # the Service's DNS names (+ --webhook-host)
    cert_path: Path
    key_path: Path
    configuration: str | None = None  # the ValidatingWebhookConfiguration whose caBundle to keep
    days: int = webhook_tls.DEFAULT_DAYS


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def ensure(kube: Kube, p: Provision, at: datetime.datetime | None = None) -> Tls:
    """Steps 1-3 above; idempotent. Returns the TLS now served."""
    tls, retiring = _settle_secret(kube, p, at or now())
    _write_files(tls, p)
    if p.configuration:
        _trust(kube, p.configuration, webhook_tls.trust_bundle(tls.ca_crt, retiring))
    return tls


def _settle_secret(kube: Kube, p: Provision, at: datetime.datetime) -> tuple[Tls, bytes | None]:
    """The usable TLS, and the CA it replaced (None when nothing was replaced)."""
    for _ in range(WRITE_ATTEMPTS):
        current = kube.read_secret(p.namespace, p.secret)
        if current is not None:
            why = webhook_tls.problem(current.data, p.names, at)
            if why is None:
                log.info("webhook TLS Secret %s/%s is usable: serving it", p.namespace, p.secret)
                return Tls.from_secret_data(current.data), None
            log.info("webhook TLS Secret %s/%s is unusable (%s): replacing it", p.namespace, p.secret, why)
        fresh = webhook_tls.make_tls(p.names, at, p.days)
        try:
            kube.write_secret(p.namespace, p.secret, fresh.secret_data(), current)
        except ApiException as e:
            if e.status != 409:
                raise
            log.info(
                "webhook TLS Secret %s/%s was written by another replica: reading it", p.namespace, p.secret
            )
            continue
        log.info(
            "webhook TLS Secret %s/%s %s for %s",
            p.namespace,
            p.secret,
            "created" if current is None else "replaced",
            ", ".join(p.names),
        )
        return fresh, current.data.get(webhook_tls.CA_CRT) if current else None
    raise RuntimeError(
        f"webhook TLS Secret {p.namespace}/{p.secret}: {WRITE_ATTEMPTS} writes lost to other writers"
    )


def _write_files(tls: Tls, p: Provision) -> None:
    """Owner-only files, each replaced whole (rename), and only when changed: kopf restarts its server
    when the content changes."""
    for path, content in ((p.cert_path, tls.tls_crt), (p.key_path, tls.tls_key)):
        if path.exists() and path.read_bytes() == content:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _trust(kube: Kube, configuration: str, bundle: bytes) -> None:
    patch = webhook_tls.ca_bundle_patch(kube.read_webhook_configuration(configuration), bundle)
    if patch:
        kube.patch_webhook_configuration(configuration, patch)
        log.info(
            "ValidatingWebhookConfiguration %s: caBundle set (%d webhook(s))", configuration, len(patch) // 2
        )


async def keep(kube: Kube, p: Provision) -> None:
    """Run `ensure` every CHECK_SECONDS: renewal ahead of expiry, and a caBundle someone reset comes back."""
    while True:
        await asyncio.sleep(CHECK_SECONDS)
        try:
            await asyncio.to_thread(ensure, kube, p)
        except Exception as e:  # the next check retries; the served certificate stays meanwhile
            log.warning("webhook TLS check failed: %s: %s", type(e).__name__, getattr(e, "reason", e))
