"""The DSAEvaluation API (`serving.dsa.dev/v1alpha1`): an accuracy suite run against a DSAModel.

Source of truth of its CustomResourceDefinition, as `api.py` is for the DSAModel's (`crd.py`
renders both). Which setting each suite's harness takes is one table (`SUITE_OPTIONS`); the
CEL rules the API server checks and the checks the webhook and the operator run both come from it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError

from dsa_operator.api import Base
from dsa_operator.errors import PlanError, Problem
from dsa_operator.suites import SuiteName

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# Setting (camelCase, as in the spec) -> the suites whose harness takes it. few_shot_gsm8k has no
# chat template (no thinking), no nucleus sampling and no repeats; sgl-eval prompts zero-shot.
SUITE_OPTIONS: dict[str, tuple[str, ...]] = {
    "numShots": ("gsm8k",),
    "thinking": ("gpqa-diamond", "aime25"),
    "topP": ("gpqa-diamond", "aime25"),
    "repeats": ("gpqa-diamond", "aime25"),
}


def _suite_rules() -> dict[str, Any]:
    """The API server's copy of SUITE_OPTIONS: one CEL rule per setting, reported at its field."""
    rules = []
    for opt, suites in SUITE_OPTIONS.items():
        allowed = " || ".join(f"self.suite == '{s}'" for s in suites)
        rules.append(
            {
                "rule": f"!has(self.settings) || !has(self.settings.{opt}) || {allowed}",
                "message": f"applies to {', '.join(suites)} only",
                "messageExpression": f"'applies to {', '.join(suites)} only, not ' + self.suite",
                "fieldPath": f".settings.{opt}",
            }
        )
    return {"x-kubernetes-validations": rules}


class EvaluationSettings(Base):
    """Harness settings; each one unset takes the usage page's value for the suite."""

    num_shots: int | None = Field(None, ge=0, le=64, description="Few-shot examples (gsm8k; page: 8).")
    questions: int | None = Field(
        None, ge=1, description="Questions asked (page: gsm8k 1319, gpqa-diamond 198, aime25 30)."
    )
    parallel: int | None = Field(
        None, ge=1, le=4096, description="Requests in flight (page: gsm8k 1319; sgl-eval's own ceiling)."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Tokens generated per answer (page: 512 / 120000 / 64000, Speciale 120000)."
    )
    repeats: int | None = Field(
        None, ge=1, le=64, description="Repeats; the score is their mean (page: 8 / 4)."
    )
    thinking: bool | None = Field(None, description="chat_template_kwargs.thinking (page: on).")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling (page: aime25 0.95).")


class ExpectedSpec(Base):
    """The figure to compare against."""

    score: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Reference score as a fraction. Default: the figure the usage page publishes for "
        "the model's family and this suite; required where it publishes none.",
    )
    tolerance: float | None = Field(
        None,
        ge=0,
        le=1,
        description="How far below the reference still passes (default per suite: gsm8k 0.02, "
        "gpqa-diamond 0.03, aime25 0.05, from the published spread).",
    )


class DatasetSpec(Base):
    """The questions, from a volume (default: what the harness downloads or bundles)."""

    volume: dict[str, Any] = Field(
        description="A Kubernetes volume source holding the data set (configMap, persistentVolumeClaim...).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    path: str = Field(
        min_length=1,
        pattern=r"^[^/].*",
        description="The file inside the volume: gsm8k JSONL {question, answer} as the harness reads "
        "it; gpqa-diamond and aime25 JSONL {problem, expected_answer} (sgl-eval --from-dataset).",
    )


class SecretKeyRef(Base):
    name: str = Field(min_length=1, pattern=DNS_LABEL, description="Secret in the evaluation's namespace.")
    key: str = Field("token", min_length=1, description="Key holding the token.")


class DSAEvaluationSpec(Base):
    """One accuracy suite against one DSAModel of the same namespace, run when it is Ready."""

    model_config = Base.model_config | {"json_schema_extra": _suite_rules()}

    model: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL, description="DSAModel name.")
    suite: SuiteName = Field(description="gsm8k | gpqa-diamond | aime25, as the usage page runs them.")
    settings: EvaluationSettings = Field(default_factory=EvaluationSettings, description="Harness settings.")
    expected: ExpectedSpec = Field(default_factory=ExpectedSpec, description="Reference and tolerance.")
    dataset: DatasetSpec | None = Field(None, description="Questions from a volume.")
    hf_token_secret: SecretKeyRef | None = Field(
        None, description="Hugging Face token for gated data sets (gpqa-diamond): HF_TOKEN of the Job."
    )
    endpoint: str | None = Field(
        None,
        pattern=r"^http://[A-Za-z0-9.-]+:[0-9]{1,5}/?$",
        description="Ask this http://host:port instead of the model's endpoint Service (a gateway "
        "in front of it, or a cluster whose Services have no ClusterIP routing). The model must "
        "still be Ready.",
    )
    image: str | None = Field(
        None, min_length=1, description="Harness image. Default: the model's runtime image."
    )
    timeout_seconds: int | None = Field(
        None, ge=60, description="The Job's deadline (default: gsm8k 2 h, gpqa-diamond and aime25 12 h)."
    )


class EvaluationStatus(Base):
    """What the operator observed; written by the operator only."""

    observed_generation: int | None = None
    phase: str | None = Field(None, description="WaitingForModel | Running | Succeeded | Failed | Invalid.")
    verdict: str | None = Field(None, description="Passed | Below: the score against reference - tolerance.")
    score: float | None = None
    scores: list[float] = Field(default_factory=list, description="Per repeat.")
    spread: float | None = Field(None, description="Standard deviation over repeats.")
    reference: float | None = None
    tolerance: float | None = None
    reference_source: str | None = None
    invalid: float | None = Field(None, description="Share of answers the harness could not read.")
    questions: int | None = None
    repeats: int | None = None
    progress: str | None = Field(None, description="Questions answered / asked, while running.")
    output_throughput: float | None = Field(None, description="Output tokens/s over the run.")
    duration_seconds: float | None = None
    start_time: str | None = None
    completion_time: str | None = None
    endpoint: str | None = Field(None, description="What the harness asked.")
    harness: str | None = None
    job: str | None = None
    pod: str | None = None
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="The settings the harness ran with.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    conditions: list[dict[str, Any]] = Field(
        default_factory=list,
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )


def _path(loc: tuple[Any, ...]) -> str:
    parts = ["spec"]
    for item in loc:
        if isinstance(item, int):
            parts[-1] += f"[{item}]"
        else:
            parts.append(str(item))
    return ".".join(parts)


def parse_evaluation(spec: Any) -> DSAEvaluationSpec:
    """Validate a DSAEvaluation's `spec`; every problem is reported with its field path."""
    if not isinstance(spec, dict):
        raise PlanError([Problem("spec", "must be an object")])
    problems: list[Problem] = []
    try:
        parsed = DSAEvaluationSpec.model_validate(spec)
    except ValidationError as e:
        for err in e.errors(include_url=False):
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            elif err["type"] == "literal_error":
                msg = f"must be one of {err['ctx']['expected']}"
            problems.append(Problem(_path(tuple(err["loc"])), msg))
        raise PlanError(problems) from None
    settings = parsed.settings.model_dump(by_alias=True, exclude_none=True)
    for opt, suites in SUITE_OPTIONS.items():
        if opt in settings and parsed.suite not in suites:
            problems.append(
                Problem(f"spec.settings.{opt}", f"applies to {', '.join(suites)} only, not {parsed.suite}",
                        "suite_settings")
            )  # fmt: skip
    if problems:
        raise PlanError(problems)
    return parsed
