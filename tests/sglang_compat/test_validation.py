"""Agreement with SGLang's own validation, run on a CPU (see validate.py and docs/sglang-compat.md).

The target: no spec the planner accepts is refused by SGLang 0.5.12's `ServerArgs.__post_init__` +
`check_server_args`, or by 0.5.23's argument-group hooks + `check_server_args`. Where the planner
refuses a spec that SGLang's validation lets through, the refusing rule must be one whose reason
lies beyond what validation checks (a documented restriction, a failure at load or run time, an
explicit value SGLang would silently replace, or the operator's own need): JUSTIFIED lists them.

The full measurement (2,000 generated specs per version) is `python -m tests.sglang_compat.validate`;
this test runs the examples and SPECS generated specs per version.
"""

from __future__ import annotations

import pytest

from dsa_operator.rules import RULES
from tests.conftest import ROOT, load
from tests.sglang_compat import validate
from tests.sglang_compat.specs import generated

pytestmark = pytest.mark.sglang

SPECS = 500  # per version; about 40 s for both on 2 cores (the 2,000 of the docs take about 3 min)

# Rules that may refuse what SGLang's start-up validation accepts, and why (docs/sglang-compat.md).
JUSTIFIED = {
    # the operator's own
    **{r.name: "operator" for r in RULES if r.action == "operator"},
    # SGLang silently replaces the value: the explicit one would be ignored
    **{r.name: "override" for r in RULES if r.action == "override"},
    # documented restrictions
    "nvfp4_on_blackwell": "cookbook: NVFP4 requires Blackwell",
    "mxfp4_on_amd": "cookbook: MXFP4 requires MI300X/MI355X",
    "quantized_checkpoint_source": "no published checkpoint in that format to fetch: set model.source",
    "kernels_fit_gpu": "usage page kernel table (the kernels are compiled for those GPUs)",
    "in_seq_split_limits": "usage page: in-seq-split restrictions",
    "index_cache_on_glm5": "usage page: IndexCache is GLM-5's; 0.5.12 indexes the pattern per layer",
    # failures after validation
    "kernel_reads_kv_cache": "nsa_backend: no path from an fp8 cache to fa3 / flashmla_sparse decode",
    "moe_runner_fits": "the runner's own quantization assert, which validation runs only on SM100",
}


def _by_version():
    examples = [load(p) for p in sorted((ROOT / "examples").glob("*.yaml"))]
    return {v: examples + generated(SPECS, seed_value=1, version=v) for v in validate.VERSIONS}


@pytest.fixture(scope="module")
def verdicts():
    for v in validate.VERSIONS:
        validate.envs.ensure(f"validate-{v}")
    return {v: validate.verdicts(v, specs) for v, specs in _by_version().items()}


@pytest.mark.parametrize("version", validate.VERSIONS)
def test_sglang_accepts_every_spec_the_planner_accepts(verdicts, version):
    vs = verdicts[version]
    bad = validate.disagreements(vs)["planner accepts, SGLang refuses"]
    assert not bad, dict(bad)
    accepted = sum(1 for v in vs if v.expressible and v.planner_ok)
    assert accepted > SPECS // 3, f"too few accepted specs to say much: {validate.matrix(vs)}"
    print(f"\nSGLang {version}: {validate.matrix(vs)}")


@pytest.mark.parametrize("version", validate.VERSIONS)
def test_every_refusal_sglang_lets_through_is_justified(verdicts, version):
    unjustified = []
    for v in verdicts[version]:
        if v.expressible and not v.planner_ok and v.sglang_ok:
            rules = {p.rule for p in v.planner or []}
            if not rules & set(JUSTIFIED):
                unjustified.append(validate.refusing_rules(v))
    assert not unjustified, sorted(set(unjustified))


def test_examples_agree_with_sglang(verdicts):
    """Every example is accepted by both, except in-seq-split on 0.5.23, which both refuse."""
    n = len(list((ROOT / "examples").glob("*.yaml")))
    for version, vs in verdicts.items():
        for v in vs[:n]:
            assert v.expressible and v.planner_ok == v.sglang_ok, (version, v)
