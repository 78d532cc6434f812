"""The planner's table of SGLang flags is what the pinned parsers say, and it checks extraArgs."""

from __future__ import annotations

import pytest

from dsa_operator.errors import PlanError
from dsa_operator.planner import plan
from dsa_operator.sglang_flags import FLAGS_FILE
from tests.conftest import ROOT, load
from tests.sglang_compat import envs, flags

pytestmark = pytest.mark.sglang


def test_flag_table_matches_the_parsers(sglang_0_5_12, sglang_0_5_16, sglang_0_5_23):
    assert FLAGS_FILE.read_text() == flags.render(), "stale: run python -m tests.sglang_compat.flags"


CASES = [
    (["--tokenizer-worker-num", "4"], True),
    (["--log-level=debug"], True),
    (["--schedule-policy", "lpm"], True),
    (["--schedule-policy", "fastest"], False),  # not one of its choices
    (["--no-such-flag"], False),
    (["--cuda-graph"], False),  # ambiguous prefix
]


@pytest.mark.parametrize("version", ["0.5.12", "0.5.23"])
def test_extra_args_planner_and_parser_agree(sglang_0_5_12, sglang_0_5_23, version):
    argvs, planned = [], []
    for extra, _ in CASES:
        m = load(ROOT / "examples" / "03-pure-tp.yaml")
        m["spec"]["runtime"] = {"extraArgs": extra}
        try:
            argvs.append(plan(m, sglang_version=version).pods[0].argv[3:])
            planned.append(True)
        except PlanError as e:
            assert all(x.path.startswith("spec.runtime.extraArgs[") for x in e.problems), e.problems
            argvs.append(["--model-path", "m", *extra])
            planned.append(False)
    parsed = [not isinstance(r, envs.ParseError) for r in envs.parse_many(version, argvs)]
    expected = [accepted for _, accepted in CASES]
    assert planned == expected and parsed == expected, (planned, parsed)
