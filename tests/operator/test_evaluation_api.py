"""The DSAEvaluation API: every problem names its field, and the API server's CEL rules and the
operator's own checks say the same about which setting applies to which suite."""

from __future__ import annotations

import itertools
import re

import pytest

from dsa_operator.crd import build_evaluation_crd
from dsa_operator.errors import PlanError
from dsa_operator.evaluation_api import SUITE_OPTIONS, EvaluationSettings, parse_evaluation

SUITES = ("gsm8k", "gpqa-diamond", "aime25")
VALUES = {"numShots": 4, "thinking": False, "topP": 0.9, "repeats": 2}


def problems(spec) -> dict[str, str]:
    with pytest.raises(PlanError) as e:
        parse_evaluation(spec)
    return {p.path: p.message for p in e.value.problems}


def spec(**kw) -> dict:
    return {"model": "m", "suite": "gsm8k", **kw}


def test_a_minimal_spec_leaves_every_setting_to_the_page():
    parsed = parse_evaluation(spec())
    assert parsed.model == "m" and parsed.suite == "gsm8k"
    assert parsed.settings == EvaluationSettings()  # all None: settings_for fills in the page's
    assert parsed.expected.score is None and parsed.expected.tolerance is None
    assert parsed.dataset is None and parsed.hf_token_secret is None and parsed.timeout_seconds is None


def test_camel_case_fields_parse():
    parsed = parse_evaluation(
        spec(
            suite="aime25",
            settings={"maxTokens": 100, "topP": 0.5, "repeats": 2, "thinking": False},
            expected={"score": 0.5, "tolerance": 0.1},
            dataset={"volume": {"configMap": {"name": "q"}}, "path": "aime.jsonl"},
            hfTokenSecret={"name": "hf"},
            timeoutSeconds=600,
        )
    )
    assert (parsed.settings.max_tokens, parsed.settings.top_p, parsed.settings.thinking) == (100, 0.5, False)
    assert parsed.hf_token_secret.key == "token" and parsed.dataset.volume == {"configMap": {"name": "q"}}


@pytest.mark.parametrize(
    ("opt", "suite"), [(o, s) for o, ok in SUITE_OPTIONS.items() for s in SUITES if s not in ok]
)
def test_a_setting_the_suites_harness_does_not_take_is_a_problem_at_its_field(opt, suite):
    found = problems(spec(suite=suite, settings={opt: VALUES[opt]}))
    assert list(found) == [f"spec.settings.{opt}"]
    assert suite in found[f"spec.settings.{opt}"]
    assert all(s in found[f"spec.settings.{opt}"] for s in SUITE_OPTIONS[opt])  # says where it applies


def test_every_misplaced_setting_is_reported_at_once():
    found = problems(spec(suite="gsm8k", settings={"thinking": True, "topP": 0.9, "repeats": 3}))
    assert set(found) == {"spec.settings.thinking", "spec.settings.topP", "spec.settings.repeats"}


@pytest.mark.parametrize("opt", sorted(SUITE_OPTIONS))
def test_a_setting_is_accepted_by_the_suites_that_take_it(opt):
    for suite in SUITE_OPTIONS[opt]:
        parse_evaluation(spec(suite=suite, settings={opt: VALUES[opt]}))


@pytest.mark.parametrize(
    ("bad", "path", "says"),
    [
        (spec(bogus=1), "spec.bogus", "unknown field"),
        (spec(settings={"shots": 8}), "spec.settings.shots", "unknown field"),
        (spec(expected={"score": 0.9, "margin": 0.1}), "spec.expected.margin", "unknown field"),
        (spec(suite="mmlu"), "spec.suite", "must be one of"),
        (spec(model="Not_A_Name"), "spec.model", "pattern"),
        (spec(settings={"topP": 0}), "spec.settings.topP", "greater than 0"),
        (spec(settings={"numShots": 65}), "spec.settings.numShots", "64"),
        (spec(expected={"score": 95.6}), "spec.expected.score", "1"),  # a fraction, not a percent
        (spec(timeoutSeconds=10), "spec.timeoutSeconds", "60"),
        (spec(dataset={"volume": {}, "path": "/abs.jsonl"}), "spec.dataset.path", "pattern"),
        (spec(hfTokenSecret={"name": "HF"}), "spec.hfTokenSecret.name", "pattern"),
        ({"suite": "gsm8k"}, "spec.model", "required"),
    ],
)
def test_bad_fields_are_reported_with_their_path(bad, path, says):
    found = problems(bad)
    assert path in found and says in found[path], found


def test_several_problems_at_once_and_a_spec_that_is_not_an_object():
    found = problems({"model": "m", "suite": "nope", "extra": 1})
    assert {"spec.suite", "spec.extra"} <= set(found)
    assert problems(["not", "a", "dict"]) == {"spec": "must be an object"}


# ---- the CRD ---------------------------------------------------------------------------------
def _crd_spec() -> dict:
    return build_evaluation_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _cel(rule: str, obj: dict) -> bool:
    """The CEL subset the suite rules use (has, ==, ||, !), evaluated on `obj` as `self`."""

    def has(m: re.Match) -> str:
        node: object = obj
        for part in m.group(1).split("."):
            if not isinstance(node, dict) or part not in node:
                return "False"
            node = node[part]
        return "True"

    py = re.sub(r"has\(self\.([\w.]+)\)", has, rule)
    py = re.sub(r"self\.suite == '([\w-]+)'", lambda m: str(obj["suite"] == m.group(1)), py)
    py = py.replace("||", " or ").replace("&&", " and ").replace("!", " not ")
    assert re.fullmatch(r"[\sA-Za-z()]*", py), f"rule outside the tested subset: {rule}"
    return eval(py)  # only True/False/and/or/not/parens remain


def test_the_crds_cel_rules_match_suite_options_and_the_operators_check():
    rules = _crd_spec()["x-kubernetes-validations"]
    assert len(rules) == len(SUITE_OPTIONS)
    for (opt, value), suite in itertools.product(VALUES.items(), SUITES):
        obj = {"model": "m", "suite": suite, "settings": {opt: value}}
        admitted = all(_cel(r["rule"], obj) for r in rules)
        assert admitted == (suite in SUITE_OPTIONS[opt]), (opt, suite)
        try:
            parse_evaluation(obj)
            parsed = True
        except PlanError:
            parsed = False
        assert parsed == admitted, (opt, suite)
        if not admitted:
            (why,) = [r for r in rules if not _cel(r["rule"], obj)]
            # The API server reports it at the setting's own path: spec.settings.<opt>.
            assert why["fieldPath"] == f".settings.{opt}" and suite not in why["message"]
    for suite in SUITES:  # settings absent, or defaulted to {} by the API server
        assert all(_cel(r["rule"], {"suite": suite}) for r in rules)
        assert all(_cel(r["rule"], {"suite": suite, "settings": {}}) for r in rules)


def test_crd_names_columns_and_required_fields():
    crd = build_evaluation_crd()
    assert crd["spec"]["names"]["kind"] == "DSAEvaluation"
    assert crd["spec"]["names"]["shortNames"] == ["dsaeval"]
    assert crd["spec"]["group"] == "serving.dsa.dev"
    v = crd["spec"]["versions"][0]
    assert v["subresources"] == {"status": {}}
    cols = {c["name"]: c["jsonPath"] for c in v["additionalPrinterColumns"]}
    assert cols["Score"] == ".status.score" and cols["Verdict"] == ".status.verdict"
    assert cols["Reference"] == ".status.reference" and cols["Phase"] == ".status.phase"
    spec_schema = _crd_spec()
    assert set(spec_schema["required"]) == {"model", "suite"}
    assert spec_schema["properties"]["suite"]["enum"] == list(SUITES)
    settings = spec_schema["properties"]["settings"]["properties"]
    assert set(SUITE_OPTIONS) <= set(settings)
    assert all("default" not in s for s in settings.values())  # unset means the page's value
