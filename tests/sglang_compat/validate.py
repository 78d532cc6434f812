"""SGLang's own verdict on a DSAModel: its post-parse validation, run on a CPU.

``verdicts(version, manifests)`` plans each manifest for ``version`` and runs every engine role's
rank-0 command through SGLang's validation (``_validate_worker.py``, one subprocess per call):
``ServerArgs.__post_init__`` + ``check_server_args`` in 0.5.12, ``resolve_once`` (the
argument-group hooks) + ``check_server_args`` in 0.5.23.  A spec the planner refuses is still
emitted (the same command builder, rules skipped) so SGLang can judge it too.

CLI (the agreement matrix for generated specs, see docs/sglang-compat.md)::

    python -m tests.sglang_compat.validate --specs 2000 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsa_operator.errors import PlanError, Problem
from dsa_operator.planner import check, emit
from tests.sglang_compat import envs

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_validate_worker.py"
VERSIONS = ("0.5.12", "0.5.23")

# Nominal memory (MiB) and the name CUDA/ROCm reports, per accelerator.
DEVICES: dict[str, tuple[int, str]] = {
    "h20": (96 * 1024, "NVIDIA H20"),
    "h100": (80 * 1024, "NVIDIA H100 80GB HBM3"),
    "h200": (141 * 1024, "NVIDIA H200"),
    "b200": (180 * 1024, "NVIDIA B200"),
    "b300": (288 * 1024, "NVIDIA B300"),
    "gb200": (186 * 1024, "NVIDIA GB200"),
    "gb300": (288 * 1024, "NVIDIA GB300"),
    "mi300x": (192 * 1024, "AMD Instinct MI300X"),
    "mi355x": (288 * 1024, "AMD Instinct MI355X"),
}


@dataclass
class Verdict:
    """One spec judged twice: by the planner (problems) and by SGLang (errors, per role)."""

    planner: list[Problem] | None  # None: accepted
    sglang: dict[str, str | None] = field(default_factory=dict)  # role -> error or None
    expressible: bool = True  # False: no SGLang command exists (the spec is not a DSAModel)

    @property
    def planner_ok(self) -> bool:
        return self.planner is None

    @property
    def sglang_ok(self) -> bool:
        return all(v is None for v in self.sglang.values())


def _cases(ctx, plan) -> list[tuple[str, dict[str, Any]]]:
    mem, name = DEVICES[ctx.accelerator.name]
    quant = ctx.spec.model.quantization
    out = []
    for pod in plan.pods:
        if pod.role == "router" or pod.group != 0 or pod.rank != 0:
            continue
        out.append(
            (
                pod.role,
                {
                    "argv": pod.argv[3:],
                    "env": pod.env,
                    "arch": ctx.accelerator.arch,
                    "memory_mib": mem,
                    "device_name": name,
                    "architecture": ctx.family.sglang_architecture,
                    "quantization": quant,
                },
            )
        )
    return out


def run_cases(version: str, cases: Sequence[dict[str, Any]]) -> list[str | None]:
    """SGLang's validation of each case: None when it accepts, else its error."""
    if not cases:
        return []
    raw = envs._run_worker(
        f"validate-{version}",
        "",
        None,
        timeout=3600,
        worker=WORKER,
        request={"version": version, "cases": list(cases)},
    )
    return [None if r["ok"] else r["error"] for r in raw]


def verdicts(version: str, manifests: Iterable[Any]) -> list[Verdict]:
    """Plan each manifest for `version` and let SGLang `version` judge every engine role."""
    out: list[Verdict] = []
    pending: list[tuple[Verdict, str, dict]] = []
    for m in manifests:
        try:
            ctx, problems = check(m, sglang_version=version)
        except PlanError as e:  # not a DSAModel at all (field errors): nothing to ask SGLang
            out.append(Verdict(planner=e.problems, expressible=False))
            continue
        v = Verdict(planner=problems or None)
        try:
            cases = _cases(ctx, emit(ctx))
        except Exception:  # a refused spec the command builder cannot express
            cases = []
        v.expressible = bool(cases) and len(cases) == len(ctx.roles)
        out.append(v)
        if v.expressible:
            pending += [(v, role, case) for role, case in cases]
    results = run_cases(version, [c for _, _, c in pending])
    for (v, role, _), err in zip(pending, results, strict=True):
        v.sglang[role] = err
    return out


def matrix(vs: Sequence[Verdict]) -> dict[str, int]:
    m = collections.Counter()
    for v in vs:
        if not v.expressible:
            m["not expressible"] += 1
            continue
        p = "planner accepts" if v.planner_ok else "planner refuses"
        s = "SGLang accepts" if v.sglang_ok else "SGLang refuses"
        m[f"{p} / {s}"] += 1
    return dict(m)


def disagreements(vs: Sequence[Verdict]) -> dict[str, collections.Counter]:
    """Disagreements grouped by cause: SGLang's error, or the planner rules that refused."""
    out: dict[str, collections.Counter] = {
        "planner accepts, SGLang refuses": collections.Counter(),
        "planner refuses, SGLang accepts": collections.Counter(),
    }
    for v in vs:
        if not v.expressible or v.planner_ok == v.sglang_ok:
            continue
        if v.planner_ok:
            for role, err in v.sglang.items():
                if err:
                    out["planner accepts, SGLang refuses"][f"{role}: {err}"] += 1
        else:
            out["planner refuses, SGLang accepts"][refusing_rules(v)] += 1
    return out


def refusing_rules(v: Verdict) -> str:
    return " + ".join(sorted({p.rule or p.path for p in v.planner or []}))


def by_rule(vs: Sequence[Verdict]) -> dict[str, collections.Counter]:
    """Per planner rule: how often SGLang agreed (refused too) or accepted the spec it refused."""
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for v in vs:
        if v.expressible and not v.planner_ok:
            for name in {p.rule for p in v.planner or []}:
                out[name]["SGLang refuses" if not v.sglang_ok else "SGLang accepts"] += 1
    return dict(out)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--specs", type=int, default=2000, help="generated specs per version")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--version", action="append", choices=VERSIONS)
    ap.add_argument("--json", type=Path, help="write the verdicts' summary here")
    args = ap.parse_args(argv)
    from tests.sglang_compat.specs import generated

    summary = {}
    for version in args.version or VERSIONS:
        t0 = time.monotonic()
        specs = generated(args.specs, seed_value=args.seed, version=version)
        vs = verdicts(version, specs)
        m, d, rules = matrix(vs), disagreements(vs), by_rule(vs)
        summary[version] = {
            "matrix": m,
            "disagreements": {k: dict(c) for k, c in d.items()},
            "by_rule": {k: dict(c) for k, c in rules.items()},
        }
        print(f"\nSGLang {version}: {len(specs)} specs in {time.monotonic() - t0:.0f} s")
        for k, n in sorted(m.items()):
            print(f"  {k}: {n}")
        for kind, c in d.items():
            for msg, n in c.most_common():
                print(f"  [{kind}] x{n}: {msg}")
        print("  per refusing rule (SGLang refuses too / SGLang accepts):")
        for name, c in sorted(rules.items()):
            print(f"    {name}: {c['SGLang refuses']} / {c['SGLang accepts']}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
