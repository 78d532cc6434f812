"""The webhook's self-provisioned TLS: certificates, the judgement of a Secret, the caBundle patch, and
the provisioning steps against a fake API (a lost race, an unusable Secret)."""

from __future__ import annotations

import base64
import datetime
import ipaddress

import pytest
from cryptography import x509
from kubernetes.client.rest import ApiException

from dsa_operator import webhook_tls
from dsa_operator.kube import StoredSecret
from dsa_operator.webhook_provision import Provision, ensure
from dsa_operator.webhook_tls import (
    CA_CRT,
    TLS_CRT,
    TLS_KEY,
    ca_bundle_patch,
    make_tls,
    problem,
    service_names,
)

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
NAMES = service_names("dsa-operator-webhook", "dsa-system")
DAY = datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def tls() -> webhook_tls.Tls:
    return make_tls(NAMES, NOW, days=365)


def test_service_names() -> None:
    assert NAMES == [
        "dsa-operator-webhook",
        "dsa-operator-webhook.dsa-system",
        "dsa-operator-webhook.dsa-system.svc",
        "dsa-operator-webhook.dsa-system.svc.cluster.local",
    ]


def test_fresh_tls_is_usable_and_the_ca_signs_the_leaf(tls) -> None:
    assert problem(tls.secret_data(), NAMES, NOW) is None
    ca, cert = x509.load_pem_x509_certificate(tls.ca_crt), x509.load_pem_x509_certificate(tls.tls_crt)
    cert.verify_directly_issued_by(ca)  # raises when not
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == NAMES
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert cert.not_valid_after_utc == NOW + 365 * DAY
    assert cert.not_valid_before_utc < NOW  # backdated for clock skew
    assert b"PRIVATE KEY" in tls.tls_key and b"PRIVATE" not in tls.ca_crt + tls.tls_crt


def test_ip_names_become_ip_sans() -> None:
    t = make_tls([*NAMES, "127.0.0.1"], NOW)
    cert = x509.load_pem_x509_certificate(t.tls_crt)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert problem(t.secret_data(), [*NAMES, "127.0.0.1"], NOW) is None


def test_each_make_is_a_new_ca(tls) -> None:
    assert make_tls(NAMES, NOW).ca_crt != tls.ca_crt
    with pytest.raises(ValueError, match="at least one name"):
        make_tls([], NOW)


def test_expiry_is_judged_30_days_ahead(tls) -> None:
    end = NOW + 365 * DAY
    assert problem(tls.secret_data(), NAMES, end - 31 * DAY) is None
    assert "expires" in problem(tls.secret_data(), NAMES, end - 29 * DAY)
    assert "expires" in problem(tls.secret_data(), NAMES, end + DAY)  # expired
    assert "not valid before" in problem(tls.secret_data(), NAMES, NOW - DAY)


def test_wrong_names_are_unusable(tls) -> None:
    other = service_names("dsa-operator-webhook", "elsewhere")
    why = problem(tls.secret_data(), other, NOW)
    assert why is not None and "does not cover dsa-operator-webhook.elsewhere" in why
    assert "127.0.0.1" in problem(tls.secret_data(), [*NAMES, "127.0.0.1"], NOW)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({CA_CRT: b""}, "lacks ca.crt"),
        ({TLS_KEY: None}, "lacks tls.key"),
        ({TLS_CRT: b"garbage"}, "tls.crt is not a PEM certificate"),
        ({CA_CRT: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}, "ca.crt is not a PEM"),
        ({TLS_KEY: b"not a key"}, "tls.key is not an unencrypted PEM private key"),
    ],
)
def test_garbage_is_unusable(tls, change, reason) -> None:
    data = {k: v for k, v in {**tls.secret_data(), **change}.items() if v is not None}
    why = problem(data, NAMES, NOW)
    assert why is not None and reason in why
    assert "BEGIN" not in why  # reasons are logged: never the content


def test_mixed_pairs_are_unusable(tls) -> None:
    other = make_tls(NAMES, NOW)
    assert (
        problem({**tls.secret_data(), TLS_KEY: other.tls_key}, NAMES, NOW)
        == "tls.key is not the key of tls.crt"
    )
    assert problem({**tls.secret_data(), CA_CRT: other.ca_crt}, NAMES, NOW) == "ca.crt did not sign tls.crt"
    # A leaf offered as its own CA is no CA.
    assert problem({**tls.secret_data(), CA_CRT: tls.tls_crt}, NAMES, NOW) == "ca.crt is not a CA certificate"


def test_ca_bundle_patch_only_where_it_differs(tls) -> None:
    want = base64.b64encode(tls.ca_crt).decode()
    vwc = {
        "webhooks": [
            {"name": "a.dsa.dev", "clientConfig": {"service": {"name": "s"}}},
            {"name": "b.dsa.dev", "clientConfig": {"caBundle": want}},
            {"name": "c.dsa.dev", "clientConfig": {"caBundle": "b2xk"}},
        ]
    }
    assert ca_bundle_patch(vwc, tls.ca_crt) == [
        {"op": "test", "path": "/webhooks/0/name", "value": "a.dsa.dev"},
        {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": want},
        {"op": "test", "path": "/webhooks/2/name", "value": "c.dsa.dev"},
        {"op": "add", "path": "/webhooks/2/clientConfig/caBundle", "value": want},
    ]
    assert ca_bundle_patch({"webhooks": vwc["webhooks"][1:2]}, tls.ca_crt) == []
    assert ca_bundle_patch({}, tls.ca_crt) == []


# --------------------------------------------------------------------------- the shell, on a fake API
class FakeKube:
    """The Kube methods webhook_provision uses, over dicts; `rival` writes the Secret just before us."""

    def __init__(
        self,
        secret: dict[str, bytes] | None = None,
        rival: dict[str, bytes] | None = None,
        type: str = "Opaque",
    ):
        self.secret, self.version, self.rival = secret, (1 if secret is not None else 0), rival
        self.type = type
        self.writes: list[str | None] = []
        self.vwc = {"webhooks": [{"name": "dsamodel-planner.serving.dsa.dev", "clientConfig": {}}]}
        self.patches: list[list[dict]] = []

    def read_secret(self, namespace: str, name: str):
        return None if self.secret is None else StoredSecret(dict(self.secret), str(self.version), self.type)

    def write_secret(self, namespace: str, name: str, data: dict[str, bytes], current: StoredSecret | None):
        resource_version = current.resource_version if current else None
        self.writes.append(resource_version)
        if current is not None and current.type != self.type:
            raise ApiException(status=422, reason="Unprocessable Entity")  # type is immutable
        if self.rival is not None:  # another replica wins: our create/replace fails with 409
            self.secret, self.version, self.rival = self.rival, self.version + 1, None
            raise ApiException(status=409, reason="Conflict")
        if resource_version != (str(self.version) if self.secret is not None else None):
            raise ApiException(status=409, reason="Conflict")
        self.secret, self.version = dict(data), self.version + 1

    def read_webhook_configuration(self, name: str) -> dict:
        return self.vwc

    def patch_webhook_configuration(self, name: str, patch: list[dict]) -> None:
        self.patches.append(patch)
        for op in patch:
            if op["op"] == "add":
                i = int(op["path"].split("/")[2])
                self.vwc["webhooks"][i]["clientConfig"]["caBundle"] = op["value"]


def _provision(tmp_path) -> Provision:
    return Provision(
        secret="dsa-operator-webhook-tls",
        namespace="dsa-system",
        names=tuple(NAMES),
        cert_path=tmp_path / "tls.crt",
        key_path=tmp_path / "tls.key",
        configuration="dsa-operator",
    )


def test_ensure_creates_writes_and_trusts(tmp_path) -> None:
    kube, p = FakeKube(), _provision(tmp_path)
    tls = ensure(kube, p, NOW)  # type: ignore[arg-type]
    assert kube.writes == [None] and kube.secret == tls.secret_data()
    assert p.cert_path.read_bytes() == tls.tls_crt and p.key_path.read_bytes() == tls.tls_key
    assert p.key_path.stat().st_mode & 0o077 == 0  # owner only
    assert kube.vwc["webhooks"][0]["clientConfig"]["caBundle"] == base64.b64encode(tls.ca_crt).decode()
    # Again: nothing written, nothing patched.
    assert ensure(kube, p, NOW + DAY) == tls  # type: ignore[arg-type]
    assert kube.writes == [None] and len(kube.patches) == 1


def test_ensure_replaces_an_unusable_secret_at_its_version(tmp_path, tls) -> None:
    old = make_tls(NAMES, NOW - 400 * DAY, days=380)  # expires within 30 days of NOW
    kube, p = FakeKube(secret=old.secret_data()), _provision(tmp_path)
    fresh = ensure(kube, p, NOW)  # type: ignore[arg-type]
    assert kube.writes == ["1"] and fresh != old and kube.secret == fresh.secret_data()
    # Until the next check the old CA is trusted too (the server may still serve the old certificate).
    bundle = kube.vwc["webhooks"][0]["clientConfig"]["caBundle"]
    assert base64.b64decode(bundle) == fresh.ca_crt + old.ca_crt
    ensure(kube, p, NOW)  # type: ignore[arg-type]
    assert base64.b64decode(kube.vwc["webhooks"][0]["clientConfig"]["caBundle"]) == fresh.ca_crt


def test_trust_bundle(tls) -> None:
    other = make_tls(NAMES, NOW)
    assert webhook_tls.trust_bundle(tls.ca_crt) == tls.ca_crt
    assert webhook_tls.trust_bundle(tls.ca_crt, tls.ca_crt) == tls.ca_crt
    assert webhook_tls.trust_bundle(tls.ca_crt, b"garbage") == tls.ca_crt
    assert webhook_tls.trust_bundle(tls.ca_crt, other.ca_crt) == tls.ca_crt + other.ca_crt


def test_ensure_uses_the_winners_tls_after_a_lost_race(tmp_path, tls) -> None:
    kube = FakeKube(rival=tls.secret_data())
    got = ensure(kube, _provision(tmp_path), NOW)  # type: ignore[arg-type]
    assert got == tls and kube.writes == [None]
    assert (tmp_path / "tls.crt").read_bytes() == tls.tls_crt


def test_other_api_errors_propagate(tmp_path) -> None:
    class Forbidden(FakeKube):
        def read_secret(self, namespace: str, name: str):
            raise ApiException(status=403, reason="Forbidden")

    with pytest.raises(ApiException):
        ensure(Forbidden(), _provision(tmp_path), NOW)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- `dsa-operator run` options
def test_run_refuses_incomplete_tls_options(monkeypatch) -> None:
    from typer.testing import CliRunner

    from dsa_operator.cli import app

    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    cases = [
        (["--webhook-tls-secret=s"], "needs --webhook-port"),
        (["--webhook-tls-secret=s", "--webhook-port=9443"], "needs --webhook-service"),
        (["--webhook-tls-secret=s", "--webhook-port=9443", "--webhook-service=svc"], "needs POD_NAMESPACE"),
        (["--webhook-port=9443", "--webhook-configuration=c"], "go with --webhook-tls-secret"),
        (["--webhook-tls-secret=s", "--webhook-managed=c"], "choose one"),
    ]
    for args, message in cases:
        r = CliRunner().invoke(app, ["run", *args])
        assert r.exit_code == 2 and message in r.output, (args, r.output)


def test_run_options_resolve_names_and_files(monkeypatch, tmp_path) -> None:
    from dsa_operator.cli import _provision

    monkeypatch.setenv("POD_NAMESPACE", "dsa-system")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    p = _provision("sec", "dsa-operator-webhook", "vwc", "127.0.0.1", 9443, None, None, 90)
    assert p.names == (*NAMES, "127.0.0.1") and p.namespace == "dsa-system" and p.days == 90
    assert p.cert_path.parent == p.key_path.parent and p.cert_path.parent.parent == tmp_path
    p = _provision("sec", "dsa-operator-webhook", None, None, 9443, "/w/tls.crt", "/w/tls.key", 90)
    assert p.names == tuple(NAMES) and str(p.cert_path) == "/w/tls.crt" and p.configuration is None


def test_keep_restores_a_reset_ca_bundle_and_survives_errors(tmp_path, monkeypatch, caplog) -> None:
    import asyncio

    from dsa_operator import webhook_provision

    monkeypatch.setattr(webhook_provision, "CHECK_SECONDS", 0.01)
    kube, p = FakeKube(), _provision(tmp_path)
    tls = ensure(kube, p)  # type: ignore[arg-type]
    kube.vwc["webhooks"][0]["clientConfig"].pop("caBundle")  # someone reset it
    calls = {"n": 0}
    read = kube.read_secret

    def flaky(namespace: str, name: str):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ApiException(status=500, reason="Internal Server Error")
        return read(namespace, name)

    kube.read_secret = flaky  # type: ignore[method-assign]

    async def run() -> None:
        task = asyncio.create_task(webhook_provision.keep(kube, p))  # type: ignore[arg-type]
        while calls["n"] < 2 or "caBundle" not in kube.vwc["webhooks"][0]["clientConfig"]:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(run(), timeout=5))
    assert kube.vwc["webhooks"][0]["clientConfig"]["caBundle"] == base64.b64encode(tls.ca_crt).decode()
    assert "webhook TLS check failed: ApiException: Internal Server Error" in caplog.text
