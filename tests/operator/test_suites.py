"""The usage page's suites: an unset setting is the page's command, the reference its published figure."""

from __future__ import annotations

import pytest

from dsa_operator.suites import SUITES, USAGE_PAGE, Settings, published, settings_for

FAMILIES = ("deepseek-v3.2-exp", "deepseek-v3.2", "deepseek-v3.2-speciale", "glm-5")


def test_gsm8k_defaults_are_the_pages_command():
    # `--num-shots 8 --num-questions 1319 --parallel 1319`, the harness's 512 tokens, greedy.
    s = settings_for("gsm8k", "deepseek-v3.2-exp", Settings())
    assert s == Settings(num_shots=8, questions=1319, parallel=1319, max_tokens=512, temperature=0.0)
    assert s.thinking is None and s.repeats is None and s.top_p is None  # not gsm8k harness options


def test_gpqa_diamond_defaults_are_the_pages_command():
    # `--num-examples 198 --max-tokens 120000 --repeat 8 --thinking-mode deepseek-v3`
    s = settings_for("gpqa-diamond", "deepseek-v3.2-exp", Settings())
    assert (s.questions, s.max_tokens, s.repeats, s.thinking) == (198, 120000, 8, True)
    assert s.num_shots is None


@pytest.mark.parametrize("family", ["deepseek-v3.2-exp", "deepseek-v3.2"])
def test_aime25_defaults_are_the_pages_command(family):
    # `aime25:4 ++inference.temperature=1.0 ++inference.top_p=0.95 ++tokens_to_generate=64000 thinking`
    s = settings_for("aime25", family, Settings())
    assert (s.repeats, s.temperature, s.top_p, s.max_tokens, s.thinking) == (4, 1.0, 0.95, 64000, True)
    assert s.questions == 30


def test_speciale_generates_120000_tokens_on_aime25_only():
    assert settings_for("aime25", "deepseek-v3.2-speciale", Settings()).max_tokens == 120000
    assert settings_for("gsm8k", "deepseek-v3.2-speciale", Settings()).max_tokens == 512
    assert settings_for("aime25", None, Settings()).max_tokens == 64000  # family unknown: the suite's


def test_a_spec_setting_overrides_the_page_and_the_family():
    s = settings_for("gsm8k", "deepseek-v3.2-exp", Settings(num_shots=5, questions=50))
    assert (s.num_shots, s.questions, s.parallel) == (5, 50, 1319)
    speciale = settings_for("aime25", "deepseek-v3.2-speciale", Settings(max_tokens=1000, repeats=1))
    assert (speciale.max_tokens, speciale.repeats, speciale.top_p) == (1000, 1, 0.95)
    # a falsy value set in the spec is still set: zero shots, thinking off, temperature 0
    zero = settings_for("aime25", "deepseek-v3.2", Settings(thinking=False, temperature=0.0))
    assert zero.thinking is False and zero.temperature == 0.0
    assert settings_for("gsm8k", None, Settings(num_shots=0)).num_shots == 0


@pytest.mark.parametrize(
    ("suite", "family", "score"),
    [
        ("gsm8k", "deepseek-v3.2-exp", 0.956),
        ("gpqa-diamond", "deepseek-v3.2-exp", 0.797),
        ("aime25", "deepseek-v3.2-exp", 0.875),
        ("aime25", "deepseek-v3.2", 0.925),
        ("aime25", "deepseek-v3.2-speciale", 0.95),
    ],
)
def test_published_figures_with_their_source(suite, family, score):
    pub = published(suite, family)
    assert pub is not None and pub.score == pytest.approx(score)
    assert pub.source.startswith(USAGE_PAGE)


@pytest.mark.parametrize(
    ("suite", "family"),
    [
        ("gsm8k", "glm-5"),
        ("gsm8k", "deepseek-v3.2"),
        ("gpqa-diamond", "deepseek-v3.2-speciale"),
        ("aime25", "glm-5"),
    ],
)
def test_no_figure_where_the_page_publishes_none(suite, family):
    assert published(suite, family) is None


def test_tolerances_and_deadlines_per_suite():
    assert {n: s.tolerance for n, s in SUITES.items()} == {
        "gsm8k": 0.02,
        "gpqa-diamond": 0.03,
        "aime25": 0.05,
    }
    assert SUITES["gsm8k"].timeout_seconds == 2 * 3600
    assert SUITES["gpqa-diamond"].timeout_seconds == SUITES["aime25"].timeout_seconds == 12 * 3600
    for s in SUITES.values():
        assert s.tolerance_why and s.dataset
        assert set(s.published) <= set(FAMILIES)
        assert all(0 < p.score <= 1 for p in s.published.values())  # fractions, not percents
