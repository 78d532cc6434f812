"""Problems found in a DSAModel, each tied to the field a user must change."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Problem:
    """One rule a spec breaks: `path` names the field (e.g. `spec.prefill.parallelism.tp`)."""

    path: str
    message: str
    rule: str = field(default="", compare=False)  # the planner rule that found it (`dsa-operator rules`)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class PlanError(ValueError):
    """Raised by the planner with every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        # In the order the rules found them: a combination's fields come first-to-change first.
        self.problems = list(dict.fromkeys(problems))
        super().__init__("\n".join(str(p) for p in self.problems))
