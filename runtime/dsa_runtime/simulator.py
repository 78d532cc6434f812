"""The engine simulator: the part of SGLang's HTTP API that routers, probes and evaluation
harnesses use, with no model behind it. For demos and tests on clusters without GPUs.

It is chosen only explicitly (`spec.runtime.engine: simulator`, or `dsa-runtime serve --engine
simulator`) and never replaces SGLang on its own. Every reply says what it is: the header
`X-DSA-Simulator` and a `simulator` object in the JSON body; its log says so at start and for
every generation request. The text it returns is not model output.

It reads the same planned SGLang command line a real engine would (`--host`, `--port`,
`--model-path`/`--served-model-name`, `--nnodes`/`--node-rank`, `--disaggregation-mode`,
`--disaggregation-bootstrap-port`), so a simulated group is wired exactly like a real one. As
in SGLang, only rank 0 of a group serves the API; ranks > 0 answer the kubelet's probes only
(`dsa_runtime.health.PATHS`). In PD mode a prefill rank 0 also serves its bootstrap port, and a
decode server asks the prefill named by the request's `bootstrap_host`/`bootstrap_port` which
pod took the request's `bootstrap_room` (as SGLang's decode asks the prefill's bootstrap server
where the KV cache comes from); the reply's `simulator.served_by` lists both, so a client can
see that a completion went prefill rank 0 -> decode rank 0.

For accuracy runs it can answer from an answer book (`DSA_SIMULATOR_ANSWERS`: a JSON object,
question text -> reply text): a generation whose prompt contains known questions gets the reply of
the one that appears last (a few-shot prompt carries earlier questions with their answers). It
does not judge: whoever writes the book decides which replies are right, so a harness run against
it must score exactly the share the book answers correctly.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dsa_runtime.errors import ExitCode
from dsa_runtime.health import PATHS as RANK_PROBES  # what a rank > 0 pod answers, exactly
from dsa_runtime.plan import flag_value

log = logging.getLogger("dsa_runtime.simulator")

NOTE = "dsa-runtime engine simulator: not SGLang, no model loaded; answers are not model output"
HEADER = "X-DSA-Simulator"
OWNER = "dsa-runtime-simulator"
HEADER_VALUE = "true; not SGLang, answers are not model output"
LEADER_PROBES = frozenset({"/health", "/health_generate", "/ready", "/liveness"})
GENERATION_PATHS = frozenset({"/generate", "/v1/chat/completions", "/v1/completions"})
KV_PATH = "/simulator/kv/"  # on the prefill's bootstrap port: who took a bootstrap room
SGLANG_DEFAULT_BOOTSTRAP_PORT = 8998
ROOMS_KEPT = 10000


@dataclass(frozen=True)
class Identity:
    """Who served: the pod, its role, group and rank in the group."""

    pod: str
    role: str
    group: int
    rank: int


@dataclass(frozen=True)
class SimConfig:
    """One simulated engine: where it listens and who it is."""

    host: str
    port: int
    who: Identity
    model: str
    nnodes: int = 1
    bootstrap_port: int | None = None  # prefill only
    delay_s: float = 0.0  # how long a generation takes (keeps requests in flight in tests)
    kv_timeout_s: float = 5.0  # how long decode waits for the prefill to take a room
    answers: Mapping[str, str] | None = None  # the answer book: question text -> reply text


def _int(raw: str | None, default: int) -> int:
    return int(raw) if raw is not None and raw.isdigit() else default


def config_from_argv(argv: list[str], env: Mapping[str, str]) -> SimConfig:
    """The config for a planned SGLang command line (with or without `python3 -m ...`)."""
    mode = flag_value(argv, "--disaggregation-mode")
    role = env.get("DSA_ROLE") or (mode if mode in ("prefill", "decode") else "serving")
    bootstrap = None
    if role == "prefill":
        bootstrap = _int(flag_value(argv, "--disaggregation-bootstrap-port"), SGLANG_DEFAULT_BOOTSTRAP_PORT)
    model = flag_value(argv, "--served-model-name") or flag_value(argv, "--model-path") or "simulator"
    return SimConfig(
        host=flag_value(argv, "--host") or "127.0.0.1",  # SGLang's default
        port=_int(flag_value(argv, "--port"), 30000),
        who=Identity(
            pod=env.get("POD_NAME") or socket.gethostname(),
            role=role,
            group=_int(env.get("DSA_GROUP"), 0),
            rank=_int(flag_value(argv, "--node-rank"), 0),
        ),
        model=model,
        nnodes=_int(flag_value(argv, "--nnodes"), 1),
        bootstrap_port=bootstrap,
    )


def with_env_extras(cfg: SimConfig, env: Mapping[str, str]) -> SimConfig:
    """The test and evaluation settings a process takes from its environment: the answer book
    (`DSA_SIMULATOR_ANSWERS`, a path) and the time a generation takes (`DSA_SIMULATOR_DELAY_SECONDS`)."""
    extras: dict[str, Any] = {}
    if env.get("DSA_SIMULATOR_ANSWERS"):
        extras["answers"] = load_answer_book(env["DSA_SIMULATOR_ANSWERS"])
    if env.get("DSA_SIMULATOR_DELAY_SECONDS"):
        extras["delay_s"] = float(env["DSA_SIMULATOR_DELAY_SECONDS"])
    return replace(cfg, **extras) if extras else cfg


def reply_text(who: Identity) -> str:
    """The deterministic text of a completion (empty on prefill: its output goes to decode)."""
    if who.role == "prefill":
        return ""
    return f"simulated reply from {who.pod} ({who.role}, rank {who.rank}); not model output"


def load_answer_book(path: str) -> dict[str, str]:
    """The answer book at `path`: a JSON object of question text -> reply text (ValueError if not)."""
    with open(path, encoding="utf-8") as f:
        book = json.load(f)
    entries = book.items() if isinstance(book, dict) else [(None, None)]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in entries):
        raise ValueError(f"{path}: an answer book is a JSON object of question text -> reply text")
    return {k: v for k, v in book.items() if k}


def prompt_text(body: Mapping[str, Any]) -> str:
    """The text of a generation request: chat messages' text parts, `prompt` or `text`."""
    if isinstance(body.get("messages"), list):
        parts: list[str] = []
        for m in body["messages"]:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):  # OpenAI content parts: keep the text ones
                parts += [str(c.get("text", "")) for c in content if isinstance(c, dict)]
        return "\n".join(parts)
    raw = body.get("prompt", body.get("text", ""))
    return "\n".join(map(str, raw)) if isinstance(raw, list) else str(raw)


def book_reply(book: Mapping[str, str], prompt: str) -> str | None:
    """The reply to the known question that ends last in `prompt` (the longest on a tie), if any.

    A few-shot prompt holds the shots' questions (with their answers) before the one asked, and
    the one asked may itself be a shot: its last occurrence is the one that counts."""
    best: tuple[int, int] | None = None
    reply = None
    for question, answer in book.items():
        at = prompt.rfind(question)
        if at < 0:
            continue
        key = (at + len(question), len(question))
        if best is None or key > best:
            best, reply = key, answer
    return reply


@dataclass
class Seen:
    """One request the simulator received (path, and the JSON body for POSTs)."""

    method: str
    path: str
    body: dict[str, Any] | None
    at: float = field(default_factory=time.monotonic)


class _Server(ThreadingHTTPServer):
    """Also ends its open keep-alive connections when closed, as a process that exits would."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler]):
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(addr, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        with self._open_lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class EngineSimulator:
    """One pod's simulated engine: HTTP servers in daemon threads, and what they saw."""

    def __init__(self, config: SimConfig):
        self.config = config
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._rooms: OrderedDict[int, Identity] = OrderedDict()  # prefill: rooms it took
        self._room_added = threading.Condition(self._lock)
        self._servers: list[ThreadingHTTPServer] = []

    # ---- convenience for tests and the fleet ------------------------------------------------
    @property
    def host(self) -> str:
        return self.config.host

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def pod(self) -> str:
        return self.config.who.pod

    @property
    def role(self) -> str:
        return self.config.who.role

    @property
    def rank(self) -> int:
        return self.config.who.rank

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> EngineSimulator:
        """Bind (OSError when the address is taken) and serve in daemon threads."""
        cfg = self.config
        try:
            self._serve((cfg.host, cfg.port), self._api_handler(), "api")
            if cfg.bootstrap_port is not None and cfg.who.rank == 0:
                self._serve((cfg.host, cfg.bootstrap_port), self._bootstrap_handler(), "bootstrap")
        except OSError:
            self.stop()
            raise
        return self

    def _serve(self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler], name: str) -> None:
        server = _Server(addr, handler)
        self._servers.append(server)
        threading.Thread(
            target=server.serve_forever, name=f"sim-{name}-{self.config.who.pod}", daemon=True
        ).start()

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    # ---- what a test reads ------------------------------------------------------------------
    def paths(self) -> list[str]:
        with self._lock:
            return [s.path for s in self.seen]

    def rooms(self) -> list[int]:
        """The bootstrap rooms of the generation requests this simulator served."""
        with self._lock:
            return [s.body["bootstrap_room"] for s in self.seen if s.body and "bootstrap_room" in s.body]

    def generation_requests(self) -> Iterator[Seen]:
        with self._lock:
            items = list(self.seen)
        return (s for s in items if s.method == "POST")

    # ---- HTTP plumbing ----------------------------------------------------------------------
    def _api_handler(self) -> type[BaseHTTPRequestHandler]:
        sim = self

        class Handler(_Handler):
            def handle_request(self, body: dict[str, Any] | None) -> None:
                sim._handle(self, body)

        return Handler

    def _bootstrap_handler(self) -> type[BaseHTTPRequestHandler]:
        sim = self

        class Handler(_Handler):
            def handle_request(self, body: dict[str, Any] | None) -> None:
                path, _, query = self.path.partition("?")
                if self.command == "GET" and path.startswith(KV_PATH):
                    code, reply = sim._kv_lookup(path[len(KV_PATH) :], query)
                else:
                    code, reply = 404, {"error": f"the simulator's bootstrap port has no {path}"}
                self.send_json(code, sim._stamp(reply))

        return Handler

    def _stamp(self, reply: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
        out = dict(reply or {})
        out["simulator"] = {"note": NOTE, **asdict(self.config.who), **extra}
        return out

    def _handle(self, h: _Handler, body: dict[str, Any] | None) -> None:
        path = h.path.split("?", 1)[0]
        with self._lock:
            self.seen.append(Seen(h.command, path, body))
        if h.command == "POST" and path in GENERATION_PATHS and self.rank == 0:
            self._generate(h, path, body or {})
            return
        code, reply = self._reply(h.command, path)
        h.send_json(code, self._stamp(reply))

    def _reply(self, method: str, path: str) -> tuple[int, dict[str, Any] | None]:
        if path in (LEADER_PROBES if self.rank == 0 else RANK_PROBES):
            return 200, {"status": "ok"}
        if self.rank > 0:  # like SGLang: only rank 0 serves the API
            return 404, {"error": f"rank {self.rank} of a multi-node group serves probes only"}
        if method == "GET":
            return self._get(path)
        if path in ("/flush_cache", "/abort_request"):
            return 200, None
        return 404, {"error": f"the simulator does not serve POST {path}"}

    def _get(self, path: str) -> tuple[int, dict[str, Any]]:
        cfg, who = self.config, self.config.who
        # The router asks /server_info and /model_info first (newer SGLang), then the get_ forms.
        if path in ("/get_model_info", "/model_info"):
            return 200, {
                "model_path": cfg.model,
                "tokenizer_path": cfg.model,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": "default",
                "has_image_understanding": False,
                "has_audio_understanding": False,
                "model_type": "simulator",
                "architectures": ["SimulatorForCausalLM"],
            }
        if path in ("/get_server_info", "/server_info"):
            return 200, {
                "model_path": cfg.model,
                "served_model_name": cfg.model,
                "tp_size": 1,
                "dp_size": 1,
                "nnodes": cfg.nnodes,
                "node_rank": who.rank,
                "disaggregation_mode": who.role if who.role in ("prefill", "decode") else "null",
                "disaggregation_bootstrap_port": cfg.bootstrap_port,
                "version": "simulator",
            }
        if path == "/v1/models":
            return 200, {
                "object": "list",
                "data": [
                    {
                        "id": cfg.model,
                        "object": "model",
                        "owned_by": "dsa-runtime-simulator",
                        "root": cfg.model,
                    }
                ],
            }
        if path == "/get_load":
            return 200, {"load": 0, "num_reqs": 0, "num_waiting_reqs": 0}
        return 404, {"error": f"the simulator does not serve GET {path}"}

    # ---- generation -------------------------------------------------------------------------
    def _generate(self, h: _Handler, path: str, body: dict[str, Any]) -> None:
        who = self.config.who
        room = body.get("bootstrap_room")
        if who.role == "prefill" and isinstance(room, int):
            with self._room_added:
                self._rooms[room] = who
                while len(self._rooms) > ROOMS_KEPT:
                    self._rooms.popitem(last=False)
                self._room_added.notify_all()
        served_by = [asdict(who)]
        if who.role == "decode":
            code, prefill, problem = self._prefill_of(body)
            if problem:
                log.warning("SIMULATOR %s: %s %s: %s", who.pod, h.command, path, problem)
                h.send_json(code, self._stamp({"error": problem}, bootstrap_room=room))
                return
            served_by.insert(0, prefill)
        if self.config.delay_s:
            log.info("SIMULATOR %s: %s received, answering in %g s", who.pod, path, self.config.delay_s)
            time.sleep(self.config.delay_s)
        meta = {"bootstrap_room": room, "served_by": served_by}
        log.info(
            "SIMULATOR %s: %s, room %s, served by %s (not model output)",
            who.pod,
            path,
            room,
            " -> ".join(f"{s['pod']} ({s['role']} rank {s['rank']})" for s in served_by),
        )
        text = reply_text(who)
        if self.config.answers and who.role != "prefill":
            text = book_reply(self.config.answers, prompt_text(body)) or text
        if body.get("stream"):
            h.send_stream([self._stamp(e, **meta) for e in _stream_events(path, body, text, self.config)])
        else:
            h.send_json(200, self._stamp(_completion(path, body, text, self.config), **meta))

    def _prefill_of(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], str | None]:
        """Ask the prefill's bootstrap port which pod took this room (decode only): 200, the
        prefill's identity and no problem, or an error status and what went wrong."""
        host, port, room = body.get("bootstrap_host"), body.get("bootstrap_port"), body.get("bootstrap_room")
        if not host or not isinstance(port, int) or not isinstance(room, int):
            return (
                400,
                {},
                (
                    "a decode server needs bootstrap_host, bootstrap_port and bootstrap_room: send "
                    "requests through the router"
                ),
            )
        wait = self.config.kv_timeout_s
        try:
            conn = http.client.HTTPConnection(str(host), port, timeout=wait + 5)
            try:
                conn.request("GET", f"{KV_PATH}{room}?wait={wait}")
                resp = conn.getresponse()
                data = json.loads(resp.read() or b"{}")
            finally:
                conn.close()
        except (OSError, ValueError) as e:
            return 502, {}, f"simulated KV transfer failed: prefill bootstrap {host}:{port}: {e}"
        if resp.status != 200:
            why = f"prefill {host}:{port} took no request with room {room} within {wait:g} s"
            return 502, {}, f"simulated KV transfer failed: {why}"
        return 200, {k: data[k] for k in ("pod", "role", "group", "rank")}, None

    def _kv_lookup(self, raw_room: str, query: str) -> tuple[int, dict[str, Any]]:
        try:
            room = int(raw_room)
        except ValueError:
            return 400, {"error": f"room {raw_room!r} is not an integer"}
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        try:
            wait = min(float(params.get("wait", "0")), 60.0)
        except ValueError:
            wait = 0.0
        with self._room_added:
            self._room_added.wait_for(lambda: room in self._rooms, timeout=wait)
            who = self._rooms.get(room)
        if who is None:
            return 404, {"error": f"no request with bootstrap_room {room} reached this prefill"}
        return 200, asdict(who)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the router pools connections

    def handle_request(self, body: dict[str, Any] | None) -> None:
        raise NotImplementedError

    def do_GET(self) -> None:
        self.handle_request(None)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"_raw": raw.decode(errors="replace")}
        self.handle_request(body if isinstance(body, dict) else {"_raw": body})

    def send_json(self, code: int, reply: dict[str, Any]) -> None:
        data = json.dumps(reply).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header(HEADER, HEADER_VALUE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_stream(self, events: list[dict[str, Any]]) -> None:
        """Server-sent events, chunked, ending with `data: [DONE]` as SGLang's do."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header(HEADER, HEADER_VALUE)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for payload in [*(json.dumps(e) for e in events), "[DONE]"]:
            chunk = f"data: {payload}\n\n".encode()
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: object) -> None:  # generation is logged itself
        pass


def _prompt_tokens(body: dict[str, Any]) -> int:
    """A stand-in count: whitespace-separated words of the prompt (at least 1)."""
    return max(1, len(prompt_text(body).split()))


def _completion(path: str, body: dict[str, Any], text: str, cfg: SimConfig) -> dict[str, Any]:
    prompt, completion = _prompt_tokens(body), len(text.split())
    room = body.get("bootstrap_room")
    rid = f"sim-{cfg.who.pod}-{room if room is not None else time.monotonic_ns()}"
    if path == "/generate":
        meta = {
            "id": rid,
            "finish_reason": {"type": "stop"},
            "prompt_tokens": prompt,
            "completion_tokens": completion,
        }
        return {"text": text, "meta_info": meta}
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if path == "/v1/completions":
        choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
        obj = "text_completion"
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        obj = "chat.completion"
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": body.get("model") or cfg.model,
        "choices": [choice],
        "usage": usage,
    }


def _stream_events(path: str, body: dict[str, Any], text: str, cfg: SimConfig) -> list[dict[str, Any]]:
    """The whole text in one chunk, then the finishing chunk."""
    whole = _completion(path, body, text, cfg)
    if path == "/generate":
        return [whole]
    chat = path == "/v1/chat/completions"
    obj = "chat.completion.chunk" if chat else "text_completion"
    head = {k: whole[k] for k in ("id", "created", "model")} | {"object": obj}
    if chat:
        first = {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}
        last = {"index": 0, "delta": {}, "finish_reason": "stop"}
    else:
        first = {"index": 0, "text": text, "finish_reason": None, "logprobs": None}
        last = {"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}
    return [head | {"choices": [first]}, head | {"choices": [last]} | {"usage": whole["usage"]}]


def main(argv: list[str] | None = None) -> int:
    """`python -m dsa_runtime.simulator <planned SGLang arguments>`: serve until SIGTERM."""
    logging.basicConfig(
        level=os.environ.get("DSA_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s dsa-runtime-simulator %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    cfg = config_from_argv(list(sys.argv[1:] if argv is None else argv), os.environ)
    try:
        cfg = with_env_extras(cfg, os.environ)
    except (OSError, ValueError) as e:
        print(f"dsa-runtime-simulator: {e}", file=sys.stderr)
        return int(ExitCode.EXEC_FAILED)
    who = cfg.who
    log.warning("SIMULATOR: %s", NOTE)
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    try:
        sim = EngineSimulator(cfg).start()
    except OSError as e:
        print(f"dsa-runtime-simulator: cannot listen on {cfg.host}:{cfg.port}: {e}", file=sys.stderr)
        return int(ExitCode.EXEC_FAILED)
    log.info(
        "SIMULATOR %s: %s group %d, rank %d of %d, model %r, serving on %s:%d%s%s",
        who.pod,
        who.role,
        who.group,
        who.rank,
        cfg.nnodes,
        cfg.model,
        cfg.host,
        cfg.port,
        f", bootstrap port {cfg.bootstrap_port}" if cfg.bootstrap_port and who.rank == 0 else "",
        " (probes only: SGLang serves HTTP on rank 0)" if who.rank else "",
    )
    if cfg.answers:
        log.info("SIMULATOR %s: replies from an answer book of %d questions", who.pod, len(cfg.answers))
    stop.wait()
    log.info("SIMULATOR %s: stopping", who.pod)
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
