"""Exit codes of dsa-runtime, one per problem, and the exception that carries them.

The codes sit in 64-95 so they cannot be confused with SGLang's own exit codes (passed on
unchanged, 0-2 in practice) or with death by signal (128 + N).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Why dsa-runtime stopped before (or instead of) SGLang finishing."""

    OK = 0
    PLAN_MISSING = 64
    PLAN_MALFORMED = 65
    IDENTITY_MISSING = 66
    POD_NOT_IN_PLAN = 67
    ROLE_MISMATCH = 68
    LEADER_UNRESOLVED = 69
    GPU_MISMATCH = 70
    KERNEL_UNSUPPORTED = 71
    KERNEL_MISSING = 72
    KERNEL_WRONG = 73
    SHM_TOO_SMALL = 74
    MODEL_MISSING = 75
    FETCH_FAILED = 76
    EXEC_FAILED = 77
    RENDEZVOUS_FAILED = 78
    ENGINE_MISSING = 79
    EVAL_ENDPOINT_UNREACHABLE = 80
    EVAL_HARNESS_FAILED = 81


EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success (or SGLang's own exit code, passed on)",
    ExitCode.PLAN_MISSING: "no plan file at DSA_PLAN_FILE / /etc/dsa/plan.json",
    ExitCode.PLAN_MALFORMED: "plan is not valid JSON or lacks required fields",
    ExitCode.IDENTITY_MISSING: "DSA_ROLE / DSA_GROUP / DSA_RANK missing or not valid",
    ExitCode.POD_NOT_IN_PLAN: "the plan has no entry for this role/group/rank",
    ExitCode.ROLE_MISMATCH: "serve run for the router, or route for an engine",
    ExitCode.LEADER_UNRESOLVED: "the group leader's DNS name did not resolve in time",
    ExitCode.GPU_MISMATCH: "fewer GPUs, another architecture, or no GPU vs the plan",
    ExitCode.KERNEL_UNSUPPORTED: "a planned kernel does not run on this GPU architecture",
    ExitCode.KERNEL_MISSING: "a planned kernel's Python module is not importable",
    ExitCode.KERNEL_WRONG: "the kernel's output is NaN or off the float32 reference",
    ExitCode.SHM_TOO_SMALL: "/dev/shm is smaller than the plan's shmSizeBytes",
    ExitCode.MODEL_MISSING: "the plan's local model path is absent",
    ExitCode.FETCH_FAILED: "the model snapshot could not be fetched",
    ExitCode.EXEC_FAILED: "the planned program could not be started",
    ExitCode.RENDEZVOUS_FAILED: "a rank could not join its group's torch.distributed rendezvous, "
    "or the all-reduce across the group was wrong (simulator)",
    ExitCode.ENGINE_MISSING: "the planned engine is not installed: SGLang, or torch for the simulator",
    ExitCode.EVAL_ENDPOINT_UNREACHABLE: "evaluate: the endpoint never answered /health or /v1/models",
    ExitCode.EVAL_HARNESS_FAILED: "evaluate: the harness failed, lost the endpoint or reported no "
    "result (or failed requests)",
}


class RuntimeFailure(Exception):
    """A problem reported as one line and a distinct exit code, never a traceback."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
