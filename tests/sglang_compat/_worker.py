"""Subprocess side of envs.py: build the real parser, parse a batch of argvs, write JSON.

Run as ``python -S _worker.py IN.json OUT.json`` with PYTHONPATH = one env's dirs.  Only the
standard library and the env's packages are importable here.

The parser is built exactly as the launcher builds it:
- SGLang (every version 0.5.12-0.5.23): ``sglang.srt.server_args.prepare_server_args`` does
  ``parser = argparse.ArgumentParser(prog="sglang serve"); ServerArgs.add_cli_args(parser);
  parser.parse_args(argv)`` -- default ``allow_abbrev=True``, so unique prefixes such as
  ``--tp`` are accepted and non-unique ones are "ambiguous option" errors.  We stop after
  ``parse_args`` (``ServerArgs.from_cli_args``/``__post_init__`` needs a GPU up to 0.5.16).
- Routers: ``launch_router.parse_router_args`` does ``RouterArgs.add_cli_args(parser,
  use_router_prefix=False)``, ``parse_args`` and ``RouterArgs.from_cli_args(...)``; we do the
  same, without ``launch_router``'s imports (setproctitle, the Rust Router).

The only change is a subclass whose ``error()`` raises instead of printing usage and exiting,
so one process can parse many argvs.  A fresh parser is built for every argv.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import io
import json
import os
import sys
import traceback


class _Rejected(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse calls this for every user error
        raise _Rejected(message)

    def exit(self, status=0, message=None):  # --help / --version
        raise _Rejected(f"parser exited with status {status}: {message or ''}".strip())


def _jsonable(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, enum.Enum):
        return _jsonable(v.value)
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _jsonable(dataclasses.asdict(v))
    return str(v)


def _server_parser():
    from sglang.srt.server_args import ServerArgs

    parser = _Parser(prog="sglang serve")
    ServerArgs.add_cli_args(parser)
    return parser, None


def _router_parser(pkg):
    mod = __import__(f"{pkg}.router_args", fromlist=["RouterArgs"])
    RouterArgs = mod.RouterArgs
    parser = _Parser(prog=f"{pkg}.launch_router")
    RouterArgs.add_cli_args(parser, use_router_prefix=False)
    return parser, RouterArgs


def _parse_one(build, argv):
    parser, router_cls = build()
    ns = parser.parse_args(argv)
    if router_cls is not None:
        # from_cli_args turns --prefill URL PORT pairs / selectors into typed fields and raises
        # on malformed ones, as launch_router would at start-up.
        ra = router_cls.from_cli_args(ns, use_router_prefix=False)
        ra._validate_router_args()  # launch_router runs it before starting the Rust router
        out = {"namespace": _jsonable(vars(ns)), "router_args": _jsonable(dataclasses.asdict(ra))}
        return out
    return _jsonable(vars(ns))


def _describe(build):
    parser, _ = build()
    acts = []
    for a in parser._actions:
        acts.append(
            {
                "option_strings": list(a.option_strings),
                "dest": a.dest,
                "nargs": _jsonable(a.nargs),
                "choices": _jsonable(list(a.choices)) if a.choices is not None else None,
                "default": _jsonable(a.default),
                "action": type(a).__name__,
                "required": a.required,
            }
        )
    return acts


def main(inp, outp):
    with open(inp) as fh:
        req = json.load(fh)
    mode, payload = req["mode"], req["payload"]
    # Keep library chatter off our stdout (the caller only reads OUT.json anyway).
    real_stdout = sys.stdout
    sys.stdout = io.StringIO()
    try:
        if mode.startswith("describe:"):
            what = mode[len("describe:") :]
            build = _server_parser if what == "server" else (lambda: _router_parser(what.split(":")[1]))
            result = _describe(build)
        else:
            if mode == "server":
                build = _server_parser
            elif mode.startswith("router:"):
                pkg = mode.split(":", 1)[1]
                build = lambda: _router_parser(pkg)  # noqa: E731
            else:
                raise SystemExit(f"bad mode {mode}")
            build()  # import once up front so an import failure is an EnvError, not a result
            result = []
            for argv in payload:
                try:
                    result.append({"ok": True, "args": _parse_one(build, argv)})
                except _Rejected as e:
                    result.append({"ok": False, "error": str(e)})
                except Exception as e:  # a custom action or from_cli_args raising
                    result.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
    finally:
        sys.stdout = real_stdout
    with open(outp, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2])
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
    os._exit(0)  # skip slow interpreter teardown of torch & co.
