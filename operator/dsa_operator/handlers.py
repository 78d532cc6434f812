"""kopf wiring: events in, one serial reconcile loop per DSAModel, the admission webhook.

Each DSAModel gets a loop that reconciles whenever something of it changes (the object,
or one of its pods, StatefulSets or Deployments) — event-driven, so a pod change shows in
status within the time of one reconcile. Between events the loop only sleeps. An event only
wakes the loop: the reconcile reads the model itself, so no watch copy older than the
operator's own writes is ever acted on. No kopf
change-handlers, daemons or finalizers are used: those would write to the DSAModel.

Children and pods are cached: one kopf index per kind (one watch each, the children's filtered
by the API server on our managed-by label), keyed by (namespace, model). kopf fills every index
from a full list before any handler runs, and updates it before the handlers of each event, so
the snapshot a reconcile gets shows at least the event that woke it. The reconcile uses it when
it shows the model's own writes (``expectations``), and lists afresh otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import kopf
import urllib3
from kubernetes.client.rest import ApiException
from kubernetes.dynamic.exceptions import DynamicApiError

from dsa_operator import GROUP, PLURAL, VERSION, labels, webhook_provision
from dsa_operator.controller import Reconciler
from dsa_operator.errors import PlanError
from dsa_operator.evaluation import PLURAL as EVALUATION_PLURAL
from dsa_operator.evaluation_api import parse_evaluation
from dsa_operator.evaluation_controller import EvaluationReconciler
from dsa_operator.evaluation_job import CANARY_OF, EVALUATION
from dsa_operator.kube import CHILD_KINDS, Kube, load_client_config
from dsa_operator.planner import plan
from dsa_operator.webhook_provision import Provision

log = logging.getLogger(__name__)
RESYNC_SECONDS = 300.0
# A watch stream that delivers nothing, not even the API server's bookmarks (about one a minute),
# for this long is taken for dead and reopened from where it was: a connection dropped without a
# FIN or RST is found within this bound (and a reconcile's request within kube.READ_TIMEOUT).
WATCH_INACTIVITY_SECONDS = 70.0
WEBHOOK_ID = "dsamodel-planner"  # also the webhook's URL path
EVALUATION_WEBHOOK_ID = "dsaevaluation-check"


@dataclass
class Options:
    """Set by `dsa-operator run` before kopf starts."""

    webhook_addr: str | None = None
    webhook_port: int | None = None
    webhook_host: str | None = None
    webhook_cert: str | None = None
    webhook_key: str | None = None
    webhook_managed: str | None = None  # name of the ValidatingWebhookConfiguration kopf keeps
    webhook_tls: Provision | None = None  # the operator provisions the webhook's TLS itself


OPTIONS = Options()


class Reconciles(Protocol):
    kube: Kube

    def reconcile(self, ref: dict[str, Any], alive: Any) -> float | None: ...


@dataclass
class Loops:
    reconciler: Reconciles
    uids: dict[tuple[str, str], str] = field(default_factory=dict)  # the model each loop serves
    triggers: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    tasks: dict[tuple[str, str], asyncio.Task] = field(default_factory=dict)
    # kind -> kopf index of that kind's objects by (namespace, model); set once kopf hands them over
    indexes: dict[str, Any] | None = None

    def view(self, key: tuple[str, str]) -> dict[str, list[dict[str, Any]]] | None:
        """The model's children and pods as the cache holds them now: taken on the event loop,
        where kopf updates the indexes, so the reconcile's thread gets a consistent copy."""
        if self.indexes is None:
            return None
        return {kind: list(index.get(key, ())) for kind, index in self.indexes.items()}

    def submit(self, key: tuple[str, str], body: dict[str, Any]) -> None:
        self.uids[key] = body["metadata"].get("uid", "")
        if key not in self.tasks or self.tasks[key].done():
            self.triggers[key] = asyncio.Event()
            self.tasks[key] = asyncio.create_task(self._run(key), name=f"reconcile {key[0]}/{key[1]}")
        self.poke(key)

    def poke(self, key: tuple[str, str]) -> None:
        if key in self.triggers:
            self.triggers[key].set()

    def stop(self, key: tuple[str, str]) -> None:
        task = self.tasks.pop(key, None)
        if task:
            task.cancel()
        self.uids.pop(key, None)
        self.triggers.pop(key, None)
        forget = getattr(self.reconciler, "forget", None)
        if forget is not None:
            forget(key)

    def alive(self, key: tuple[str, str], uid: str) -> bool:
        """Called from the reconcile's thread before each write: dict reads are atomic."""
        return self.uids.get(key) == uid

    async def _run(self, key: tuple[str, str]) -> None:
        backoff = 1.0
        model = {"metadata": {"namespace": key[0], "name": key[1]}}
        while key in self.uids:
            trigger = self.triggers[key]
            trigger.clear()
            try:
                alive = lambda uid: self.alive(key, uid)  # noqa: E731
                args = (model, alive) if self.indexes is None else (model, alive, self.view(key))
                requeue = await asyncio.to_thread(self.reconciler.reconcile, *args)
                backoff = 1.0
            except (ApiException, DynamicApiError) as e:
                if getattr(e, "status", None) == 409:  # written since it was read: look again soon
                    log.debug("reconcile of %s/%s: conflict, reading again", *key)
                    requeue = 0.05
                else:  # the API said no: say why, retry with backoff
                    log.warning(
                        "reconcile of %s/%s: API error %s %s; retrying in %.0fs",
                        *key,
                        getattr(e, "status", "?"),
                        getattr(e, "reason", ""),
                        backoff,
                    )
                    requeue, backoff = backoff, min(backoff * 2, 60.0)
            except (urllib3.exceptions.HTTPError, OSError) as e:  # the API out of reach: retry
                log.warning("reconcile of %s/%s: API unreachable (%s); retrying in %.0fs", *key, e, backoff)
                self.reconciler.kube.reset_connections()
                requeue, backoff = backoff, min(backoff * 2, 30.0)
            except Exception:  # a bug: keep the traceback, keep the loop
                log.exception("reconcile of %s/%s failed", *key)
                requeue, backoff = backoff, min(backoff * 2, 60.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(trigger.wait(), timeout=requeue or RESYNC_SECONDS)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.peering.standalone = True  # HA is a Lease (see `dsa-operator run --leader-elect`)
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 270
    settings.watching.inactivity_timeout = WATCH_INACTIVITY_SECONDS
    settings.networking.request_timeout = 30  # kopf's own requests (lists, events, patches)
    for resource in CACHED_CHILDREN.values():  # only our children, filtered by the API server
        settings.watching.label_selectors[resource] = f"{labels.MANAGED_BY}=dsa-operator"
    kube = Kube(load_client_config())
    if OPTIONS.webhook_port and OPTIONS.webhook_tls:
        await _provision_webhook_tls(kube, OPTIONS.webhook_tls, memo)
    if OPTIONS.webhook_port:
        settings.admission.server = kopf.WebhookServer(
            addr=OPTIONS.webhook_addr,
            port=OPTIONS.webhook_port,
            host=OPTIONS.webhook_host,
            certfile=OPTIONS.webhook_cert,
            pkeyfile=OPTIONS.webhook_key,
        )
        settings.admission.managed = OPTIONS.webhook_managed
    memo.loops = Loops(Reconciler(kube))
    memo.evaluations = Loops(EvaluationReconciler(kube))
    memo.evaluated = {}  # (namespace, evaluation) -> the DSAModel it names, to wake it on model changes


async def _provision_webhook_tls(kube: Kube, p: Provision, memo: kopf.Memo) -> None:
    """The Secret, cert files and caBundle before the webhook server starts; then kept up to date."""
    try:
        await asyncio.to_thread(webhook_provision.ensure, kube, p)
    except ApiException as e:  # e.g. RBAC not there yet: kopf retries the startup handler
        raise kopf.TemporaryError(
            f"cannot provision the webhook TLS (Secret {p.namespace}/{p.secret}, "
            f"ValidatingWebhookConfiguration {p.configuration}): API error {e.status} {e.reason}",
            delay=5,
        ) from None
    if getattr(memo, "tls_keeper", None) is None:
        memo.tls_keeper = asyncio.create_task(webhook_provision.keep(kube, p), name="webhook TLS")


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    keeper = getattr(memo, "tls_keeper", None)
    if keeper is not None:
        keeper.cancel()


# The children kinds a reconcile reads, as kopf selects them (group, version, plural).
CACHED_CHILDREN: dict[str, tuple[str, str, str]] = {
    kind: (api_version.rpartition("/")[0] or "", api_version.rpartition("/")[2], kind.lower() + "s")
    for api_version, kind in CHILD_KINDS
}
POD_INDEX = "dsa_pods"


def _index_id(kind: str) -> str:
    return f"dsa_{kind.lower()}s"


def _slim(body: kopf.Body, api_version: str, kind: str) -> dict[str, Any]:
    """What a reconcile reads of an object, and no more: the cache holds every child and pod of
    every model (at 500 models, the pod templates alone took the operator past 250 MB).

    Dropped: managedFields; a ConfigMap's data; a StatefulSet's or Deployment's pod template (the
    cache decides a status, never a change: a changed child differs by its applied-hash
    annotation, and any write sends the reconcile to fresh lists, ``controller.ReadAfresh``);
    a pod's spec but for its node, scheduling gates and the ConfigMaps it mounts (the plan
    ConfigMaps still in use). Metadata and status are kept whole."""
    obj = _plain(body)
    obj["apiVersion"], obj["kind"] = api_version, kind
    obj.get("metadata", {}).pop("managedFields", None)
    spec = obj.get("spec")
    if kind == "ConfigMap":
        obj.pop("data", None)
        obj.pop("binaryData", None)
    elif kind in ("StatefulSet", "Deployment") and isinstance(spec, dict):
        spec.pop("template", None)
    elif kind == "Pod" and isinstance(spec, dict):
        obj["spec"] = {
            **{k: spec[k] for k in ("nodeName", "schedulingGates") if k in spec},
            "volumes": [v for v in spec.get("volumes") or [] if v.get("configMap")],
        }
    return obj


def _indexer(api_version: str, kind: str) -> Any:
    def index(body: kopf.Body, namespace: str, labels: kopf.Labels, **_: Any) -> Any:
        return {(namespace, labels[MODEL_LABEL]): _slim(body, api_version, kind)}

    return index


MODEL_LABEL = labels.MODEL
for _kind, (_group, _version, _plural) in CACHED_CHILDREN.items():
    kopf.index(
        _group,
        _version,
        _plural,
        id=_index_id(_kind),
        labels={labels.MODEL: kopf.PRESENT, labels.MANAGED_BY: "dsa-operator"},
    )(_indexer(f"{_group}/{_version}" if _group else _version, _kind))
kopf.index("pods", id=POD_INDEX, labels={labels.MODEL: kopf.PRESENT})(_indexer("v1", "Pod"))


def _indexes(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {kind: kwargs[_index_id(kind)] for kind in CACHED_CHILDREN}
    out["Pod"] = kwargs[POD_INDEX]
    return out


@kopf.on.event(GROUP, VERSION, PLURAL)
async def model_changed(event: dict, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    if memo.loops.indexes is None:
        memo.loops.indexes = _indexes(kwargs)
    key = (body.metadata.namespace, body.metadata.name)
    for (ns, ev), model in list(getattr(memo, "evaluated", {}).items()):
        if ns == key[0] and model == key[1]:  # an evaluation waits for it, or runs against it
            memo.evaluations.poke((ns, ev))
    if event.get("type") == "DELETED" or body.metadata.get("deletionTimestamp"):
        memo.loops.stop(key)  # the children go with their ownerReferences
        return
    memo.loops.submit(key, _plain(body))


@kopf.on.event(GROUP, VERSION, EVALUATION_PLURAL)
async def evaluation_changed(event: dict, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    key = (body.metadata.namespace, body.metadata.name)
    if event.get("type") == "DELETED" or body.metadata.get("deletionTimestamp"):
        memo.evaluations.stop(key)  # its Jobs go with their ownerReferences
        memo.evaluated.pop(key, None)
        return
    memo.evaluated[key] = (body.get("spec") or {}).get("model")
    memo.evaluations.submit(key, _plain(body))


def _poke_job_owner(body: kopf.Body, memo: kopf.Memo) -> None:
    """A Job (or its pod) of an evaluation wakes that evaluation; of a canary, its DSAModel."""
    lbl = body.metadata.labels
    ns = body.metadata.namespace
    if lbl.get(EVALUATION) and hasattr(memo, "evaluations"):
        memo.evaluations.poke((ns, lbl[EVALUATION]))
    if lbl.get(CANARY_OF) and hasattr(memo, "loops"):
        memo.loops.poke((ns, lbl[CANARY_OF]))


@kopf.on.event("batch", "v1", "jobs", labels={labels.MANAGED_BY: "dsa-operator"})
async def job_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _poke_job_owner(body, memo)


@kopf.on.event("pods", labels={EVALUATION: kopf.PRESENT})
async def evaluation_pod_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _poke_job_owner(body, memo)


@kopf.on.event("pods", labels={CANARY_OF: kopf.PRESENT})
async def canary_pod_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _poke_job_owner(body, memo)


def _poke(body: kopf.Body, memo: kopf.Memo) -> None:
    model = body.metadata.labels.get(labels.MODEL)
    if model and hasattr(memo, "loops"):
        memo.loops.poke((body.metadata.namespace, model))


@kopf.on.event("pods", labels={labels.MODEL: kopf.PRESENT})
async def pod_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _poke(body, memo)


@kopf.on.event("apps", "v1", "statefulsets", labels={labels.MODEL: kopf.PRESENT})
async def statefulset_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _poke(body, memo)


@kopf.on.event("apps", "v1", "deployments", labels={labels.MODEL: kopf.PRESENT})
async def deployment_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _poke(body, memo)


def validate(body: kopf.Body, **_: Any) -> None:
    """Refuse a DSAModel the planner refuses, with its field paths: nothing gets created for it."""
    try:
        plan(_plain(body))
    except PlanError as e:
        raise kopf.AdmissionError(
            "invalid DSAModel: " + "; ".join(str(p) for p in e.problems), code=422
        ) from None


def validate_evaluation(body: kopf.Body, **_: Any) -> None:
    """Refuse a DSAEvaluation whose spec breaks a rule, with its field paths."""
    try:
        parse_evaluation(_plain(body).get("spec"))
    except PlanError as e:
        raise kopf.AdmissionError(
            "invalid DSAEvaluation: " + "; ".join(str(p) for p in e.problems), code=422
        ) from None


def register_webhook() -> None:
    """Registered only when a webhook server is configured: kopf refuses admission handlers without one."""
    kopf.on.validate(GROUP, VERSION, PLURAL, id=WEBHOOK_ID, operations=["CREATE", "UPDATE"])(validate)
    kopf.on.validate(
        GROUP, VERSION, EVALUATION_PLURAL, id=EVALUATION_WEBHOOK_ID, operations=["CREATE", "UPDATE"]
    )(validate_evaluation)


def _plain(value: Any) -> Any:
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
