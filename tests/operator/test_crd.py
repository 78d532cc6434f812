"""The CRD in crds/ is generated from the API model and stays structural."""

from __future__ import annotations

import pytest
import yaml

from dsa_operator.crd import CRDS, FILES, build_crd, crd_yaml
from tests.conftest import ROOT

CRD_FILE = ROOT / "crds" / "serving.dsa.dev_dsamodels.yaml"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_committed_crd_matches_the_model(kind):
    path = ROOT / "crds" / FILES[kind]
    assert path.read_text() == crd_yaml(kind), "crds/ drifted: run `make crd`"


def _walk(node, path="spec"):
    yield path, node
    for k, v in node.get("properties", {}).items():
        yield from _walk(v, f"{path}.{k}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def _schema():
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_structural_and_described():
    text = yaml.safe_dump(build_crd())
    assert "$ref" not in text and "anyOf" not in text and "'null'" not in text
    for path, node in _walk(_schema()["properties"]["spec"]):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        if not path.endswith(("[]", "}")):
            assert node.get("description"), f"{path} has no description (kubectl explain shows nothing)"


def test_enums_defaults_and_cel():
    spec = _schema()["properties"]["spec"]["properties"]
    assert spec["model"]["properties"]["family"]["enum"] == [
        "deepseek-v3.2-exp",
        "deepseek-v3.2",
        "deepseek-v3.2-speciale",
        "glm-5",
    ]
    assert spec["runtime"]["properties"]["sglangVersion"]["default"] == "0.5.23"
    assert "default" not in spec["serving"]  # serving vs prefill+decode relies on absence
    par = spec["serving"]["properties"]["parallelism"]
    rules = [v["rule"] for v in par["x-kubernetes-validations"]]
    assert "self.tp % self.dp == 0" in rules
    assert _schema()["properties"]["spec"]["x-kubernetes-validations"]


def test_names_columns_status():
    crd = build_crd()
    v = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["dsam"]
    assert v["subresources"] == {"status": {}}
    assert [c["name"] for c in v["additionalPrinterColumns"]] == [
        "Phase",
        "Ready",
        "Family",
        "Endpoint",
        "Age",
    ]
