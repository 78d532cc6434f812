"""The pinned SGLang releases' command-line flags, read off their real parsers.

Writes `operator/dsa_operator/sglang_flags.json`: per pinned version, every option string of
`ServerArgs.add_cli_args` and its choices (null when free). The planner checks extraArgs
against it (rules.py::extra_args_known_to_sglang) the way argparse will: exact names, unique
prefixes, choices. test_flags.py fails when the file and the parsers drift.

    python -m tests.sglang_compat.flags            # rewrite the file
"""

from __future__ import annotations

import json
import sys

from dsa_operator.sglang_flags import FLAGS_FILE, PINNED
from tests.sglang_compat import envs


def table(version: str) -> dict[str, list[str] | None]:
    out: dict[str, list[str] | None] = {}
    for action in envs.describe(version):
        if action["action"] == "_HelpAction":
            continue
        takes_value = action["action"] in ("_StoreAction", "LoRAPathAction", "DeprecatedAliasStoreAction")
        # sorted: some choice lists come from registries whose order varies between processes
        choices = sorted(str(c) for c in action["choices"]) if action["choices"] is not None else None
        for flag in action["option_strings"]:
            if flag.startswith("--"):
                out[flag] = choices if takes_value and choices else ([] if takes_value else None)
    return dict(sorted(out.items()))


def render() -> str:
    return json.dumps({v: table(v) for v in PINNED}, indent=0, sort_keys=True) + "\n"


def main() -> int:
    FLAGS_FILE.write_text(render())
    print(f"wrote {FLAGS_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
