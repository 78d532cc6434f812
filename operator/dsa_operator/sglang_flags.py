"""The pinned SGLang releases' server flags, generated from their real parsers.

`sglang_flags.json` (written by `python -m tests.sglang_compat.flags`) maps each pinned version
to its flags: `null` for a switch, `[]` for a flag taking any value, a list of choices
otherwise. `resolve_flag` answers as argparse does (`allow_abbrev=True`, as `prepare_server_args`
builds the parser): an exact name, else a unique prefix, else ambiguous or unknown.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

FLAGS_FILE = Path(__file__).with_name("sglang_flags.json")
PINNED = ("0.5.12", "0.5.16", "0.5.23")  # the releases whose parsers the tests install


@cache
def flags(version: str) -> dict[str, list[str] | None]:
    return json.loads(FLAGS_FILE.read_text())[version]


def pinned_for(version: str) -> str | None:
    """The pinned release whose parser is the given version's (`0.5.12.post1` -> 0.5.12)."""
    base = ".".join(version.split(".")[:3])
    return base if base in PINNED else None


def resolve_flag(version: str, flag: str) -> tuple[str | None, list[str]]:
    """(the flag argparse takes `flag` for, or None; the candidates when ambiguous)."""
    table = flags(version)
    if flag in table:
        return flag, []
    matches = [f for f in table if f.startswith(flag)]
    return (matches[0], []) if len(matches) == 1 else (None, matches)
