"""The accuracy suites of the usage page, their default settings and the published figures. Pure.

One table, one source: SGLang's DeepSeek-V3.2 usage page, section "Benchmarking Results"
(the commands and results are copied in the project's reference, seed-commands.md). A
DSAEvaluation leaves a setting unset to get the page's value; `expected.score` unset gets the
figure published for the model's family, and a family the page publishes no figure for must
set one (the webhook cannot know the family; the operator says so in the evaluation's status).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

SuiteName = Literal["gsm8k", "gpqa-diamond", "aime25"]
USAGE_PAGE = "SGLang DeepSeek-V3.2 usage page, Benchmarking Results"


@dataclass(frozen=True)
class Settings:
    """What the harness is asked to do; None: the harness's own default (not a page setting)."""

    num_shots: int | None = None
    questions: int | None = None
    parallel: int | None = None
    max_tokens: int | None = None
    repeats: int | None = None
    thinking: bool | None = None
    temperature: float | None = None
    top_p: float | None = None

    def merged(self, over: Settings) -> Settings:
        """`over`'s set values on top of these."""
        return Settings(**{f.name: v if (v := getattr(over, f.name)) is not None else getattr(self, f.name)
                           for f in fields(Settings)})  # fmt: skip


@dataclass(frozen=True)
class Published:
    score: float  # a fraction in [0, 1]
    source: str


@dataclass(frozen=True)
class Suite:
    name: str
    harness: str  # what the runtime runs (dsa-runtime evaluate --suite picks it)
    defaults: Settings
    tolerance: float  # default allowed shortfall below the reference, in score units
    tolerance_why: str
    published: dict[str, Published]  # family -> figure
    timeout_seconds: int  # the Job's activeDeadlineSeconds by default
    dataset: str  # where the harness gets its questions when spec.dataset is unset


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite(
            "gsm8k",
            "python -m sglang.test.few_shot_gsm8k (the page: benchmark/gsm8k/bench_sglang.py)",
            # `--num-shots 8 --num-questions 1319 --parallel 1319`; the harness's own
            # --max-new-tokens (512) and temperature (0).
            Settings(num_shots=8, questions=1319, parallel=1319, max_tokens=512, temperature=0.0),
            0.02,
            "1319 questions at 0.956: one standard error is 0.0056, so 0.02 is about 3.5 of them",
            {"deepseek-v3.2-exp": Published(0.956, f"{USAGE_PAGE}: gsm8k 8-shot, Accuracy 0.956 (8xH200)")},
            2 * 3600,
            "downloaded by the harness from github.com/openai/grade-school-math (test.jsonl)",
        ),
        Suite(
            "gpqa-diamond",
            "sgl-eval run gpqa (sglang 0.5.23's run_eval hands gpqa to sgl-eval)",
            # `--num-examples 198 --max-tokens 120000 --repeat 8 --thinking-mode deepseek-v3`
            Settings(questions=198, max_tokens=120000, repeats=8, thinking=True),
            0.03,
            "198 questions, mean of 8 repeats: the repeat-to-repeat spread is about 0.02",
            {
                "deepseek-v3.2-exp": Published(
                    0.797, f"{USAGE_PAGE}: GPQA-diamond, thinking, mean of 8 repeats 0.797"
                )
            },
            12 * 3600,
            "prepared by sgl-eval from Hugging Face Idavidrein/gpqa (gated: set spec.hfTokenSecret)",
        ),
        Suite(
            "aime25",
            "sgl-eval run aime25 (the NeMo-Skills AIME 2025 set and grader, vendored)",
            # `ns eval --benchmarks=aime25:4 ++inference.temperature=1.0 ++inference.top_p=0.95
            #  ++inference.tokens_to_generate=64000 ++chat_template_kwargs.thinking=true`
            Settings(questions=30, max_tokens=64000, repeats=4, thinking=True, temperature=1.0, top_p=0.95),
            0.05,
            "30 problems, pass@1 over 4 repeats: the page's own spread is 1.67-1.92 points",
            {
                "deepseek-v3.2-exp": Published(0.875, f"{USAGE_PAGE}: AIME 2025 pass@1[avg-of-4] 87.50 %"),
                "deepseek-v3.2": Published(0.925, f"{USAGE_PAGE}: AIME 2025 pass@1[avg-of-4] 92.50 %"),
                "deepseek-v3.2-speciale": Published(
                    0.950, f"{USAGE_PAGE}: AIME 2025 pass@1[avg-of-4] 95.00 % (tokens_to_generate 120000)"
                ),
            },
            12 * 3600,
            "bundled with sgl-eval (NeMo-Skills' aime25)",
        ),
    )
}

# Speciale's AIME run generates up to 120000 tokens (the page), the others 64000.
FAMILY_SETTINGS: dict[tuple[str, str], Settings] = {
    ("aime25", "deepseek-v3.2-speciale"): Settings(max_tokens=120000),
}


def settings_for(suite: str, family: str | None, asked: Settings) -> Settings:
    """The page's settings for this suite (and family), with what the spec sets on top."""
    base = SUITES[suite].defaults
    if family is not None:
        base = base.merged(FAMILY_SETTINGS.get((suite, family), Settings()))
    return base.merged(asked)


def published(suite: str, family: str) -> Published | None:
    return SUITES[suite].published.get(family)
