"""A reconcile on the watch cache: status from it, never a change to a child.

The cache (kopf indexes) lags the API. A reconcile that would change a child on its word starts
over on fresh lists, and one whose model wrote something the cache does not show yet lists
afresh from the start; a reconcile with nothing to change reads nothing but the model.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from kubernetes.client.rest import ApiException

from dsa_operator.controller import Reconciler
from tests.operator.test_restart_events import NS, MemoryApi, model, roll, settle

Obj = dict[str, Any]


def snapshot(api: MemoryApi) -> dict[str, list[Obj]]:
    """What the cache would hold: every object of the model, by kind, as it is now."""
    out: dict[str, list[Obj]] = {}
    for (kind, _), obj in sorted(api.objs.items()):
        out.setdefault(kind, []).append(copy.deepcopy(obj))
    return out


def ref(api: MemoryApi) -> Obj:
    return {"metadata": {"namespace": NS, "name": api.model["metadata"]["name"]}}


def counting(api: MemoryApi) -> list[str]:
    calls: list[str] = []
    for name in ("list", "delete_pods", "apply", "patch_annotation"):
        real = getattr(api, name)

        def wrapped(*a: Any, _real=real, _name=name, **kw: Any) -> Any:
            calls.append(_name)
            return _real(*a, **kw)

        setattr(api, name, wrapped)
    return calls


def test_a_settled_model_reconciles_on_the_cache_alone() -> None:
    api = MemoryApi(model())
    settle(api)
    calls = counting(api)
    Reconciler(api).reconcile(ref(api), view=snapshot(api))
    assert calls == []  # no list, no write: the status is unchanged too


def test_a_stale_cache_never_restarts_a_second_group() -> None:
    """The cache still shows every group old and Ready after the first restart: acting on it would
    restart the other group too (maxUnavailableGroups 1)."""
    api = MemoryApi(model())
    settle(api)
    stale = snapshot(api)
    roll(api)
    calls = counting(api)
    r = Reconciler(api)
    for _ in range(6):
        with contextlib.suppress(ApiException):  # a 409 on a record: the loop reconciles again
            r.reconcile(ref(api), view=stale)
        api.statefulset_controller()  # new revision; the restarted group's pods come back, not Ready
    assert calls.count("delete_pods") == 1
    assert "list" in calls  # the writes were decided on fresh lists


def test_a_change_decided_on_the_cache_is_made_on_fresh_lists() -> None:
    api = MemoryApi(model())
    settle(api)
    view = snapshot(api)
    roll(api)
    calls = counting(api)
    Reconciler(api).reconcile(ref(api), view=view)
    assert "apply" in calls and "list" in calls
    assert calls.index("list") < calls.index("apply")
