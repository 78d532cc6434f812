"""The DSAModel CustomResourceDefinition, rendered from the pydantic API model.

Kubernetes wants a structural OpenAPI v3 schema: no `$ref`, no `anyOf` of types, `nullable`
instead of a null type. This turns pydantic's JSON schema into one, keeping descriptions,
enums, bounds, scalar defaults and the CEL rules the models carry.
"""

from __future__ import annotations

from typing import Any

import yaml

from dsa_operator import GROUP, KIND, PLURAL, VERSION
from dsa_operator.api import DSAModelSpec, DSAModelStatus
from dsa_operator.evaluation import KIND as EVALUATION_KIND
from dsa_operator.evaluation import PLURAL as EVALUATION_PLURAL
from dsa_operator.evaluation_api import DSAEvaluationSpec, EvaluationStatus

_KEEP = {
    "type",
    "description",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields",
}


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        out = _structural({**options[0], **rest}, defs)
        if len(options) < len(node["anyOf"]):
            out.pop("default", None)  # null default: absent
        return out
    out: dict[str, Any] = {k: v for k, v in node.items() if k in _KEEP}
    if "const" in node:
        out["enum"] = [node["const"]]
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    # Exclusive bounds: OpenAPI v3.0 spells them as booleans next to the bound.
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in out and not isinstance(out[bound], bool):
            out[flag] = out.pop(bound)
            out[bound] = True
    default = node.get("default")
    if default is not None and not isinstance(default, (dict, list)):
        out["default"] = default
    kind = out.get("type")
    if kind == "object":
        if "properties" in node:
            out["properties"] = {k: _structural(v, defs) for k, v in node["properties"].items()}
            if node.get("required"):
                out["required"] = list(node["required"])
            # Nested objects get their defaulted value so the API server fills them in.
            # Optional (nullable) ones stay absent: `serving` vs `prefill`+`decode` needs that.
            for k, v in out["properties"].items():
                nullable = "anyOf" in node["properties"][k]
                required = k in out.get("required", [])
                if v.get("type") == "object" and "properties" in v and not (nullable or required):
                    # The fully defaulted object: its CEL rules are checked against this value.
                    v["default"] = {
                        pk: pv["default"] for pk, pv in v["properties"].items() if "default" in pv
                    }
        elif isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = _structural(node["additionalProperties"], defs)
        elif "x-kubernetes-preserve-unknown-fields" not in out:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        items = node.get("items", {})
        out["items"] = (
            _structural(items, defs)
            if items
            else {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        )
    return out


def openapi_schema(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}))


def _crd(
    kind: str,
    plural: str,
    short: str,
    description: str,
    spec: dict[str, Any],
    status: dict[str, Any],
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    status["description"] = "Observed state, written by the operator."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["all"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def build_crd() -> dict[str, Any]:
    """The DSAModel CRD."""
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": ".status.readyGroups",
            "description": "Ready / desired engine groups",
        },
        {"name": "Family", "type": "string", "jsonPath": ".spec.model.family", "priority": 1},
        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(
        KIND,
        PLURAL,
        "dsam",
        "A DeepSeek Sparse Attention model served by SGLang: "
        "prefill/decode groups, a router and one OpenAI-compatible endpoint.",
        openapi_schema(DSAModelSpec),
        openapi_schema(DSAModelStatus),
        columns,
    )


def build_evaluation_crd() -> dict[str, Any]:
    """The DSAEvaluation CRD."""
    columns = [
        {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
        {"name": "Suite", "type": "string", "jsonPath": ".spec.suite"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Progress", "type": "string", "jsonPath": ".status.progress", "priority": 1},
        {"name": "Score", "type": "number", "jsonPath": ".status.score"},
        {"name": "Reference", "type": "number", "jsonPath": ".status.reference"},
        {"name": "Verdict", "type": "string", "jsonPath": ".status.verdict"},
        {"name": "Job", "type": "string", "jsonPath": ".status.job", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(
        EVALUATION_KIND,
        EVALUATION_PLURAL,
        "dsaeval",
        "An accuracy suite of the SGLang usage page (gsm8k, GPQA-diamond, AIME 2025) run against a "
        "DSAModel, compared with the published figure.",
        openapi_schema(DSAEvaluationSpec),
        openapi_schema(EvaluationStatus),
        columns,
    )


CRDS = {KIND: build_crd, EVALUATION_KIND: build_evaluation_crd}
FILES = {KIND: f"{GROUP}_{PLURAL}.yaml", EVALUATION_KIND: f"{GROUP}_{EVALUATION_PLURAL}.yaml"}


def crd_yaml(kind: str = KIND) -> str:
    header = "# Generated by `dsa-operator crd` from dsa_operator/*api.py. Do not edit.\n"
    return header + yaml.safe_dump(CRDS[kind](), sort_keys=False, width=100)
