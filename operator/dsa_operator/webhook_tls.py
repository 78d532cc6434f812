"""The webhook's own TLS, pure: make a CA and a serving certificate, judge whether a Secret's still serve.

An install without Helm (`kubectl apply -f deploy/`) has nobody to generate the webhook's TLS at
install time, so the operator provisions it itself when run with `--webhook-tls-secret`
(webhook_provision.py does the API calls). No CA key is kept: when the TLS must change, a new CA
signs a new certificate and the caBundle follows.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CRT, TLS_CRT, TLS_KEY = "ca.crt", "tls.crt", "tls.key"  # the keys of a kubernetes.io/tls Secret
RENEW_BEFORE = datetime.timedelta(days=30)  # a certificate closer than this to its end is replaced
CLOCK_SKEW = datetime.timedelta(minutes=5)  # backdated so that a slightly slow API server accepts it
DEFAULT_DAYS = 3650  # as the chart's webhook.certValidityDays


@dataclass(frozen=True)
class Tls:
    """PEM bytes: the CA (the webhook configuration's caBundle), the serving certificate and its key."""

    ca_crt: bytes
    tls_crt: bytes
    tls_key: bytes

    def secret_data(self) -> dict[str, bytes]:
        return {CA_CRT: self.ca_crt, TLS_CRT: self.tls_crt, TLS_KEY: self.tls_key}

    @classmethod
    def from_secret_data(cls, data: Mapping[str, bytes]) -> Tls:
        return cls(ca_crt=data[CA_CRT], tls_crt=data[TLS_CRT], tls_key=data[TLS_KEY])


def service_names(service: str, namespace: str) -> list[str]:
    """Every name a client in the cluster may dial the Service by (the API server uses `<svc>.<ns>.svc`)."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_tls(names: Sequence[str], now: datetime.datetime, days: int = DEFAULT_DAYS) -> Tls:
    """A fresh CA and a serving certificate for `names` (DNS names or IP addresses), valid `days` from now."""
    if not names:
        raise ValueError("a serving certificate needs at least one name")
    start, end = now - CLOCK_SKEW, now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{names[0]} webhook CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Tls(
        ca_crt=ca.public_bytes(serialization.Encoding.PEM),
        tls_crt=cert.public_bytes(serialization.Encoding.PEM),
        tls_key=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def problem(data: Mapping[str, bytes], names: Iterable[str], now: datetime.datetime) -> str | None:
    """Why the TLS in a Secret's data cannot serve `names` for the next RENEW_BEFORE; None when it can.

    The reason names keys and names only, never their content (it is logged).
    """
    missing = [k for k in (CA_CRT, TLS_CRT, TLS_KEY) if not data.get(k)]
    if missing:
        return f"it lacks {', '.join(missing)}"
    try:
        ca = x509.load_pem_x509_certificate(data[CA_CRT])
    except ValueError:
        return f"{CA_CRT} is not a PEM certificate"
    try:
        cert = x509.load_pem_x509_certificate(data[TLS_CRT])
    except ValueError:
        return f"{TLS_CRT} is not a PEM certificate"
    try:
        key = serialization.load_pem_private_key(data[TLS_KEY], password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return f"{TLS_KEY} is not an unencrypted PEM private key"
    if _spki(key.public_key()) != _spki(cert.public_key()):
        return f"{TLS_KEY} is not the key of {TLS_CRT}"
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        return f"{CA_CRT} is not a CA certificate"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return f"{CA_CRT} did not sign {TLS_CRT}"
    uncovered = sorted(set(names) - _covered(cert))
    if uncovered:
        return f"{TLS_CRT} does not cover {', '.join(uncovered)}"
    for key_name, c in ((CA_CRT, ca), (TLS_CRT, cert)):
        if now < c.not_valid_before_utc:
            return f"{key_name} is not valid before {c.not_valid_before_utc.isoformat()}"
        if c.not_valid_after_utc - now < RENEW_BEFORE:
            end = c.not_valid_after_utc.isoformat()
            return f"{key_name} expires {end} (renewed {RENEW_BEFORE.days} days ahead)"
    return None


def _spki(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _covered(cert: x509.Certificate) -> set[str]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    return set(sans.get_values_for_type(x509.DNSName)) | ips


def trust_bundle(ca_crt: bytes, retiring: bytes | None = None) -> bytes:
    """The caBundle for `ca_crt`; right after a rotation also the CA it replaces, since the webhook
    server serves the old certificate until it reloads its files (kopf checks them every minute).
    The next check, with no rotation, drops the old CA."""
    if retiring and retiring != ca_crt:
        try:
            x509.load_pem_x509_certificate(retiring)
        except ValueError:
            return ca_crt
        return ca_crt + retiring
    return ca_crt


def ca_bundle_patch(configuration: Mapping[str, Any], bundle: bytes) -> list[dict[str, Any]]:
    """JSON patch setting every webhook's caBundle of a webhook configuration to `bundle`; [] when all do.

    Each change is guarded by a test of the webhook's name, so a list that changed meanwhile fails
    the patch instead of giving the CA to another webhook.
    """
    want = base64.b64encode(bundle).decode("ascii")
    ops: list[dict[str, Any]] = []
    for i, hook in enumerate(configuration.get("webhooks") or []):
        if (hook.get("clientConfig") or {}).get("caBundle") != want:
            ops += [
                {"op": "test", "path": f"/webhooks/{i}/name", "value": hook["name"]},
                {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": want},
            ]
    return ops
