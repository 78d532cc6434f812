"""The operator's only door to the API server: list, apply, delete, post events and status, and
its webhook's TLS (one Secret, the caBundle of one webhook configuration).

Every write goes through here, so the field manager and the "skip unchanged" rule live in
one place. Objects are plain dicts in the API's own (camelCase) form.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError, NotFoundError

from dsa_operator import GROUP, KIND, PLURAL, VERSION

log = logging.getLogger(__name__)
FIELD_MANAGER = "dsa-operator"
Obj = dict[str, Any]

# The kinds the operator owns, in apply order (a group's ConfigMap before its StatefulSet).
CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ConfigMap"),
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("v1", "Service"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "Deployment"),
)


class StoredSecret(NamedTuple):
    """A Secret as read: its data decoded, the version a replace must match, its (immutable) type."""

    data: dict[str, bytes]
    resource_version: str
    type: str


# Every request of the reconcile's client gives up after this: a connection that died silently
# (no FIN, no RST: a node or middlebox lost) would otherwise hang a model's reconcile forever.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0


class _BoundedPool(urllib3.PoolManager):
    """The Kubernetes client sends timeout=None (no limit at all) unless a call names one: give
    every request the bounds above. A read timeout is not retried on another pooled connection
    (which may be just as dead): the reconcile fails, Kube.reset_connections drops the pool, and
    the next try dials afresh."""

    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any) -> Any:
        if kw.get("timeout") is None:
            kw["timeout"] = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT)
        kw.setdefault("retries", urllib3.Retry(total=3, read=0, redirect=0))
        return super().urlopen(method, url, redirect=redirect, **kw)


def load_client_config() -> client.ApiClient:
    """In a pod: its ServiceAccount; elsewhere: KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.ApiClient()
    pool = api.rest_client.pool_manager
    if type(pool) is urllib3.PoolManager:  # (a proxy's ProxyManager is left as it is)
        api.rest_client.pool_manager = _BoundedPool(**pool.connection_pool_kw)
    else:
        log.warning("API requests go through %s: no request timeouts", type(pool).__name__)
    return api


def _causes(body: Any) -> list:
    """The field errors of a 422 (an invalid object names them; a failed JSON Patch ``test`` op is
    a bare "the server rejected our request", no causes)."""
    try:
        return ((json.loads(body) or {}).get("details") or {}).get("causes") or []
    except (TypeError, ValueError, AttributeError):
        return []


@dataclass
class Kube:
    api: client.ApiClient
    _resources: dict[tuple[str, str], Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dyn = DynamicClient(self.api)
        self.core = client.CoreV1Api(self.api)

    def _res(self, api_version: str, kind: str) -> Any:
        key = (api_version, kind)
        if key not in self._resources:
            self._resources[key] = self.dyn.resources.get(api_version=api_version, kind=kind)
        return self._resources[key]

    def list(self, api_version: str, kind: str, namespace: str, selector: str) -> list[Obj]:
        """Plain dicts, parsed once (the dynamic client's wrappers cost more CPU than the request),
        each with its apiVersion and kind (a list's items carry neither)."""
        resp = self._res(api_version, kind).get(namespace=namespace, label_selector=selector, serialize=False)
        items = json.loads(resp.data)["items"] or []
        for i in items:
            i["apiVersion"], i["kind"] = api_version, kind
        return items

    def reset_connections(self) -> None:
        """Close every pooled connection: after a timeout, the others may have died silently too."""
        self.api.rest_client.pool_manager.clear()

    def get_model(self, namespace: str, name: str) -> Obj | None:
        """The DSAModel as the API holds it now, or None when it is gone."""
        return self.get_custom(PLURAL, namespace, name)

    def get_custom(
        self,
        plural: str,
        namespace: str,
        name: str,
        api: tuple[str, str] = (GROUP, VERSION),
        absent: tuple[int, ...] = (404,),
    ) -> Obj | None:
        """A custom object as the API holds it now (ours by default: dsamodels, dsaevaluations), or
        None when the API answers with a status in `absent`."""
        try:
            return client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                *api, namespace, plural, name
            )
        except ApiException as e:
            if e.status in absent:
                return None
            raise

    def pod_log_tail(self, namespace: str, name: str, lines: int) -> str:
        """The last lines of a pod's log ("" when it has none yet): an evaluation's progress."""
        try:
            return self.core.read_namespaced_pod_log(name, namespace, tail_lines=lines) or ""
        except ApiException as e:
            if e.status in (400, 404):  # not started yet, or gone
                return ""
            raise

    def get_node(self, name: str) -> Obj | None:
        """A Node as the API holds it, or None when it is gone."""
        try:
            return self.api.sanitize_for_serialization(self.core.read_node(name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def patch_annotation(self, obj: Obj, key: str, value: str) -> None:
        """Set one annotation, compare-and-swap on the value that was read: a JSON Patch whose
        ``test`` op fails (422, raised here as a 409) when anyone wrote the annotation since. A
        write to the rest of the object in between (the StatefulSet controller's status, at every
        pod change) is no conflict: it cannot change what the annotation decided. Where the
        annotation was absent, JSON Patch cannot test for absence: the write names the version
        that was read instead (409 when the object changed since), once per annotation."""
        meta = obj["metadata"]
        old = (meta.get("annotations") or {}).get(key)
        path = "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")  # RFC 6901
        if old is None:
            body: Any = {
                "metadata": {"resourceVersion": meta["resourceVersion"], "annotations": {key: value}}
            }
            content_type = "application/merge-patch+json"
        else:
            body = [
                {"op": "test", "path": path, "value": old},
                {"op": "replace", "path": path, "value": value},
            ]
            content_type = "application/json-patch+json"
        try:
            self._res(obj["apiVersion"], obj["kind"]).patch(
                body=body,
                name=meta["name"],
                namespace=meta["namespace"],
                content_type=content_type,
                field_manager=FIELD_MANAGER,
            )
        except DynamicApiError as e:
            if old is not None and e.status == 422 and not _causes(e.body):  # the test op failed
                raise ApiException(
                    status=409, reason=f"{key} of {meta['name']} changed since it was read"
                ) from e
            raise

    def apply(self, obj: Obj) -> Obj:
        """Server-side apply under the operator's one field manager; returns the object as stored."""
        return (
            self._res(obj["apiVersion"], obj["kind"])
            .server_side_apply(body=obj, field_manager=FIELD_MANAGER, force_conflicts=True)
            .to_dict()
        )

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFoundError):
            self._res(api_version, kind).delete(
                name=name, namespace=namespace, body={"propagationPolicy": "Background"}
            )

    def delete_pods(self, namespace: str, selector: str) -> None:
        """All pods of a group at once: one NCCL world goes down together."""
        self.core.delete_collection_namespaced_pod(namespace, label_selector=selector)

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """This pod if it is still the one with this uid (a successor of the same name is spared);
        one already gone is fine."""
        try:
            self.core.delete_namespaced_pod(
                name, namespace, body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
            )
        except ApiException as e:
            if e.status not in (404, 409):  # 409: the uid precondition failed, a successor stands
                raise

    def event(self, model: Obj, kind: str, reason: str, message: str, name: str | None = None) -> None:
        """An Event on a DSAModel or DSAEvaluation (`kubectl describe` shows it). With a `name`,
        posting it again is a no-op (the API refuses the name: 409), so something announced by one
        reconcile and announced again by the next one that finishes it shows once."""
        meta = model["metadata"]
        now = datetime.datetime.now(datetime.UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                name=name,
                generate_name=None if name else f"{meta['name']}.",
                namespace=meta["namespace"],
            ),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}",
                kind=model.get("kind") or KIND,
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid"),
            ),
            type=kind,
            reason=reason,
            message=message[:1024],
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component=FIELD_MANAGER),
            reporting_component=FIELD_MANAGER,
        )
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as e:  # an Event is evidence, not a reason to stop reconciling
            if name and e.status == 409:  # AlreadyExists: this one was posted before
                log.debug("event %s was posted already", name)
                return
            log.warning("could not record event %s: %s", reason, e.reason)

    def patch_status(self, model: Obj, status: Obj, plural: str = PLURAL) -> None:
        """Replaces the status of the version of `model` that was read: 409 when it changed since,
        so a status computed from an older view is never written."""
        meta = model["metadata"]
        client.CustomObjectsApi(self.api).patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            meta["namespace"],
            plural,
            meta["name"],
            {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status},
        )

    def read_secret(self, namespace: str, name: str) -> StoredSecret | None:
        """The Secret, or None when there is none."""
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        return StoredSecret(data, secret.metadata.resource_version, secret.type or "Opaque")

    def write_secret(
        self, namespace: str, name: str, data: dict[str, bytes], current: StoredSecret | None
    ) -> None:
        """Create a kubernetes.io/tls Secret (current None) or replace exactly the version read, keeping
        its type (a Secret's type cannot change).

        Raises ApiException 409 when another writer came first (AlreadyExists or Conflict).
        """
        resource_version = current.resource_version if current else None
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(
                name=name,
                namespace=namespace,
                resource_version=resource_version,
                labels={
                    "app.kubernetes.io/part-of": "dsa-operator",
                    "app.kubernetes.io/managed-by": FIELD_MANAGER,
                },
            ),
            type=current.type if current else "kubernetes.io/tls",
            data={k: base64.b64encode(v).decode("ascii") for k, v in data.items()},
        )
        if resource_version is None:
            self.core.create_namespaced_secret(namespace, body, field_manager=FIELD_MANAGER)
        else:
            self.core.replace_namespaced_secret(name, namespace, body, field_manager=FIELD_MANAGER)

    def read_webhook_configuration(self, name: str) -> Obj:
        api = client.AdmissionregistrationV1Api(self.api)
        return self.api.sanitize_for_serialization(api.read_validating_webhook_configuration(name))

    def patch_webhook_configuration(self, name: str, json_patch: list[Obj]) -> None:
        client.AdmissionregistrationV1Api(self.api).patch_validating_webhook_configuration(
            name, json_patch, field_manager=FIELD_MANAGER, _content_type="application/json-patch+json"
        )
