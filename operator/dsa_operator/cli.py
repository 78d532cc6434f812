"""`dsa-operator` command line: plan a DSAModel offline, print the CRD."""

from __future__ import annotations

import json
import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml

from dsa_operator.errors import PlanError
from dsa_operator.plan import Plan
from dsa_operator.planner import plan as make_plan

if TYPE_CHECKING:
    from dsa_operator.webhook_provision import Provision

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)


class Output(StrEnum):
    text = "text"
    json = "json"
    yaml = "yaml"


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _load(path: Path) -> object:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as e:
        _fail(f"cannot read {path}: {e.strerror}")
    try:
        return yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as e:
        _fail(f"{path} is not valid YAML or JSON: {e}".replace("\n", " "))


def render_text(p: Plan) -> str:
    """Per group, the command each pod runs: for people."""
    lines = [
        f"DSAModel {p.namespace}/{p.name}: {p.family} on {p.hardware.accelerator} "
        f"({p.hardware.arch}), SGLang {p.sglang_version} ({p.dialect} dialect)"
    ]
    for r in p.roles:
        k = r.kernels
        lines.append(
            f"\n{r.role}: {r.replicas} group(s) x {r.nodes_per_group} node(s) x "
            f"{r.gpus_per_node} GPUs; attention {r.attention}; CP {r.context_parallel}; "
            f"kernels prefill={k.prefill} decode={k.decode} kv={k.kv_cache_dtype}"
        )
        if r.sglang_overrides:
            sets = " ".join(f"{key}={value}" for key, value in sorted(r.sglang_overrides.items()))
            lines.append(f"  SGLang sets itself: {sets}")
        for g in r.groups:
            lines.append(f"  group {g.group} (StatefulSet {g.stateful_set}):")
            for pod in p.pods:
                if pod.role == r.role and pod.group == g.group:
                    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in pod.env.items())
                    lines.append(f"    rank {pod.rank}: {env + ' ' if env else ''}{shlex.join(pod.argv)}")
    if p.router:
        lines.append(f"\nrouter ({p.router.replicas} replica(s)): {shlex.join(p.router.argv)}")
    lines.append(f"\nendpoint: {p.endpoint.url}")
    lines += [f"warning: {w}" for w in p.warnings]
    return "\n".join(lines)


@app.command("plan")
def plan_cmd(
    file: Annotated[
        Path, typer.Option("-f", "--file", help="DSAModel manifest (YAML or JSON; - for stdin).")
    ],
    sglang_version: Annotated[str | None, typer.Option(help="Plan for this SGLang version.")] = None,
    output: Annotated[Output, typer.Option("-o", "--output", help="text, json or yaml.")] = Output.text,
) -> None:
    """Print the plan of a DSAModel: every pod's command line and environment."""
    try:
        p = make_plan(_load(file), sglang_version=sglang_version)
    except PlanError as e:
        typer.echo(f"invalid DSAModel {file}:", err=True)
        for problem in e.problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(1) from None
    if output is Output.json:
        typer.echo(json.dumps(p.to_json_dict(), indent=2))
    elif output is Output.yaml:
        typer.echo(yaml.safe_dump(p.to_json_dict(), sort_keys=False))
    else:
        typer.echo(render_text(p))


def render_rules(version: str | None = None) -> list[dict[str, object]]:
    """Every planner rule (or those applying to one SGLang version), as listed by `dsa-operator rules`."""
    from dsa_operator.rules import RULES

    return [
        {
            "rule": r.name,
            "protects": r.protects,
            "action": r.action,
            "sglangVersions": r.version_range,
            "sources": list(r.sources),
        }
        for r in RULES
        if version is None or r.applies(version)
    ]


ACTION_WORDS = {
    "refuse": "refuses (SGLang refuses it, or a cited source says it fails)",
    "override": "plans SGLang's own value; refuses an explicit other one",
    "warn": "warns (SGLang runs it)",
    "operator": "refuses (the operator's own requirement)",
}


@app.command("rules")
def rules_cmd(
    sglang_version: Annotated[
        str | None, typer.Option(help="Only the rules that apply to this SGLang version.")
    ] = None,
    output: Annotated[Output, typer.Option("-o", "--output", help="text, json or yaml.")] = Output.text,
) -> None:
    """Print every rule the planner applies: what it protects, its source, the SGLang versions, its action."""
    from dsa_operator.dialects import parse_version

    if sglang_version is not None:
        try:
            parse_version(sglang_version)
        except ValueError as e:
            _fail(str(e))
    rows = render_rules(sglang_version)
    if output is Output.json:
        typer.echo(json.dumps(rows, indent=2))
    elif output is Output.yaml:
        typer.echo(yaml.safe_dump(rows, sort_keys=False))
    else:
        for row in rows:
            typer.echo(f"{row['rule']}  [{row['action']}, SGLang {row['sglangVersions']}]")
            typer.echo(f"  protects: {row['protects']}")
            typer.echo(f"  planner:  {ACTION_WORDS[str(row['action'])]}")
            for s in row["sources"]:  # type: ignore[attr-defined]
                typer.echo(f"  source:   {s}")
            typer.echo("")


@app.command("crd")
def crd_cmd(
    kind: Annotated[str, typer.Option(help="DSAModel or DSAEvaluation.")] = "DSAModel",
) -> None:
    """Print a CustomResourceDefinition (the source of crds/)."""
    from dsa_operator.crd import CRDS, crd_yaml

    if kind not in CRDS:
        _fail(f"--kind: one of {', '.join(CRDS)}, not {kind!r}")
    typer.echo(crd_yaml(kind), nl=False)


@app.command("run")
def run_cmd(
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Watch these namespaces (default: all).")
    ] = None,
    liveness: Annotated[str, typer.Option(help="kopf liveness endpoint.")] = "http://0.0.0.0:8080/healthz",
    leader_elect: Annotated[
        bool, typer.Option(help="Act only while holding a Lease (replicas > 1).")
    ] = False,
    leader_lease: Annotated[str, typer.Option(help="Lease name.")] = "dsa-operator",
    leader_namespace: Annotated[
        str | None, typer.Option(help="Lease namespace (default: POD_NAMESPACE).")
    ] = None,
    webhook_port: Annotated[
        int | None, typer.Option(help="Serve the validating webhook on this port.")
    ] = None,
    webhook_addr: Annotated[str | None, typer.Option(help="Webhook listen address.")] = None,
    webhook_host: Annotated[str | None, typer.Option(help="Host name the API server dials.")] = None,
    webhook_cert: Annotated[
        str | None,
        typer.Option(
            help="TLS certificate file (self-signed when absent); "
            "with --webhook-tls-secret, where it is written."
        ),
    ] = None,
    webhook_key: Annotated[
        str | None, typer.Option(help="TLS key file; with --webhook-tls-secret, where it is written.")
    ] = None,
    webhook_managed: Annotated[
        str | None,
        typer.Option(
            help="Name of a ValidatingWebhookConfiguration kopf keeps whole (no chart, no deploy/)."
        ),
    ] = None,
    webhook_tls_secret: Annotated[
        str | None,
        typer.Option(
            help="Provision the webhook's TLS in this Secret of the operator's namespace (POD_NAMESPACE): "
            "use it when usable, else create or renew it."
        ),
    ] = None,
    webhook_service: Annotated[
        str | None,
        typer.Option(help="The webhook's Service: the names the provisioned certificate covers."),
    ] = None,
    webhook_configuration: Annotated[
        str | None,
        typer.Option(help="ValidatingWebhookConfiguration whose caBundle follows the provisioned CA."),
    ] = None,
    webhook_cert_days: Annotated[
        int, typer.Option(min=31, help="Validity of a provisioned certificate (renewed 30 days ahead).")
    ] = 3650,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the operator (kopf): reconcile DSAModels into groups, router and endpoint."""
    import logging
    import os
    import socket

    import kopf

    from dsa_operator import handlers

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:  # kopf says "Handler ... succeeded" at INFO for every watch event: one line per
        # pod change, which at a few hundred models costs more CPU than the reconciles do
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    provision = None
    if webhook_tls_secret and webhook_managed:
        _fail("--webhook-managed (kopf keeps the configuration) and --webhook-tls-secret: choose one")
    if webhook_tls_secret:
        provision = _provision(
            webhook_tls_secret,
            webhook_service,
            webhook_configuration,
            webhook_host,
            webhook_port,
            webhook_cert,
            webhook_key,
            webhook_cert_days,
        )
        webhook_cert, webhook_key = str(provision.cert_path), str(provision.key_path)
    elif webhook_service or webhook_configuration:
        _fail("--webhook-service and --webhook-configuration go with --webhook-tls-secret")
    handlers.OPTIONS = handlers.Options(
        webhook_addr=webhook_addr,
        webhook_port=webhook_port,
        webhook_host=webhook_host,
        webhook_cert=webhook_cert,
        webhook_key=webhook_key,
        webhook_managed=webhook_managed,
        webhook_tls=provision,
    )

    if webhook_port:
        handlers.register_webhook()

    def work() -> None:
        kopf.run(
            standalone=True,
            clusterwide=not namespace,
            namespaces=namespace or (),
            liveness_endpoint=liveness,
            # kopf's default identity asks the passwd database for the user name, which the
            # image's non-root uid (65532) has no entry in; the pod name says more anyway.
            identity=os.environ.get("POD_NAME") or socket.gethostname(),
        )

    if leader_elect:
        from dsa_operator.kube import load_client_config
        from dsa_operator.leader import run_as_leader

        load_client_config()
        ns = leader_namespace or os.environ.get("POD_NAMESPACE") or "default"
        run_as_leader(leader_lease, ns, work, liveness_url=liveness)
    else:
        work()


def _provision(
    secret: str,
    service: str | None,
    configuration: str | None,
    host: str | None,
    port: int | None,
    cert: str | None,
    key: str | None,
    days: int,
) -> Provision:
    """--webhook-tls-* checked and resolved: names for the certificate, where its files go."""
    import os
    import tempfile

    from dsa_operator.webhook_provision import Provision
    from dsa_operator.webhook_tls import service_names

    if not port:
        _fail("--webhook-tls-secret needs --webhook-port (it provisions the webhook server's TLS)")
    if not service:
        _fail("--webhook-tls-secret needs --webhook-service (the certificate's names are the Service's)")
    namespace = os.environ.get("POD_NAMESPACE")
    if not namespace:
        _fail(
            "--webhook-tls-secret needs POD_NAMESPACE: the namespace of the operator, its Secret and Service"
        )
    names = service_names(service, namespace)
    if host and host not in names:
        names.append(host)  # the API server dials --webhook-host: the certificate must cover it too
    if not (cert and key):
        folder = Path(tempfile.mkdtemp(prefix="dsa-operator-webhook-"))
        cert, key = cert or str(folder / "tls.crt"), key or str(folder / "tls.key")
    return Provision(
        secret=secret,
        namespace=namespace,
        names=tuple(names),
        cert_path=Path(cert),
        key_path=Path(key),
        configuration=configuration,
        days=days,
    )


def main() -> None:
    app()
